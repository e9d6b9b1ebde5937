// Holding a lock for a scope, and passing the fencing token to the resource.
import { Effect } from "effect"
import { Lock, LockBackend } from "effect-locks"

declare const writeWithToken: (token: bigint, row: string) => Effect.Effect<void>

export const job = Effect.scoped(
  Effect.gen(function* () {
    const lease = yield* Lock.scoped("reports:nightly", { ttl: "30 seconds", metadata: { job: "nightly" } })
    // The store refuses writes whose token is lower than one it has seen.
    yield* writeWithToken(lease.token, "report")
    yield* Effect.log(yield* LockBackend.inspect("reports:nightly"))
  })
).pipe(Effect.provide(LockBackend.layerConfig))
