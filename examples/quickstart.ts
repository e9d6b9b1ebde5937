// The README's example, type-checked by `npm run typecheck`.
import { Effect } from "effect"
import { Lock, MemoryBackend } from "effect-locks"

const program = Lock.withLock("invoices:2026-11", { ttl: "10 seconds", timeout: "5 seconds" })(
  Effect.gen(function* () {
    yield* Effect.log("only one process runs this at a time")
    return "done"
  })
)

Effect.runPromise(program.pipe(Effect.provide(MemoryBackend.layer))).then(console.log)
