import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option, Scope } from "effect"
import { TestClock } from "effect/testing"
import { Lock, LockBackend, MemoryBackend } from "../src/index.ts"

describe("smoke", () => {
  it.effect("acquire release", () =>
    Effect.gen(function*() {
      const lease = yield* Lock.scoped("a")
      assert.strictEqual(lease.token, 1n)
      const none = yield* Lock.tryScoped("a")
      assert.isTrue(Option.isNone(none))
      yield* lease.release
      const again = yield* Effect.exit(lease.release)
      console.log(again)
      const some = yield* Lock.tryScoped("a")
      assert.isTrue(Option.isSome(some))
      const fiber = yield* Effect.forkChild(Lock.withLock("a", { timeout: "1 second" })(Effect.succeed(1)))
      yield* TestClock.adjust("2 seconds")
      const exit = yield* Fiber.await(fiber)
      console.log(exit)
      const s = yield* Scope.make()
      yield* Scope.close(s, Exit.void)
      yield* Scope.close(s, Exit.void)
      console.log(yield* LockBackend.inspect())
    }).pipe(Effect.provide(MemoryBackend.layer)))
})
