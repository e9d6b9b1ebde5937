import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Option, Schedule } from "effect"
import { TestClock } from "effect/testing"
import { Lock, LockBackend, LockConfig, MemoryBackend } from "../src/index.ts"
import { FaultyBackend } from "../src/testing/index.ts"

describe("MemoryBackend", () => {
  it.live("a handover costs about one attempt per waiter, not a spin", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* FaultyBackend.make(yield* LockBackend)
      const fibers = 10
      const rounds = 15
      yield* Effect.forEach(
        Array.from({ length: fibers }),
        () =>
          Effect.repeat(
            Effect.scoped(
              Effect.andThen(
                Lock.scoped("hot", { retry: LockConfig.retryLinear({ initial: "1 hour", max: "1 hour" }) }),
                Effect.yieldNow
              )
            ),
            Schedule.recurs(rounds - 1)
          ),
        { concurrency: "unbounded", discard: true }
      ).pipe(Effect.provideService(LockBackend, backend))
      const calls = yield* control.calls
      const grants = fibers * rounds
      assert.strictEqual(calls.release, grants)
      // Every release wakes each waiter at most once (and each acquisition makes two
      // attempts around its subscription).
      assert.isAtMost(calls.tryAcquire, grants * (fibers + 2))
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("waiters are granted in arrival order", () =>
    Effect.gen(function* () {
      const holder = yield* Lock.scoped("fifo")
      const order: Array<number> = []
      const fibers: Array<Fiber.Fiber<unknown, unknown>> = []
      for (let i = 0; i < 5; i++) {
        fibers.push(yield* Effect.forkChild(Lock.withLock("fifo")(Effect.sync(() => order.push(i)))))
        // Let waiter i register before waiter i+1 arrives.
        yield* Effect.yieldNow
        yield* Effect.yieldNow
      }
      const { waiters } = yield* LockBackend.inspect("fifo")
      assert.strictEqual(waiters.length, 5)
      yield* holder.release
      yield* Fiber.joinAll(fibers)
      assert.deepStrictEqual(order, [0, 1, 2, 3, 4])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("a grant expires at its TTL on the Clock, and the expiry wakes waiters", () =>
    Effect.gen(function* () {
      const inner = yield* LockBackend
      const { backend, control } = yield* FaultyBackend.make(inner)
      yield* control.dropExtensions(true)
      yield* Lock.scoped("ttl", { ttl: "1 second", onLost: "ignore" }).pipe(Effect.provideService(LockBackend, backend))
      const granted = yield* Deferred.make<void>()
      const waiter = yield* Effect.forkChild(
        Lock.withLock("ttl", { retry: LockConfig.retryLinear({ initial: "1 hour", max: "1 hour" }) })(
          Deferred.succeed(granted, undefined)
        )
      )
      yield* TestClock.adjust(999)
      assert.isFalse(yield* Deferred.isDone(granted))
      assert.strictEqual((yield* LockBackend.inspect("ttl")).holders.length, 1)
      yield* TestClock.adjust(1)
      yield* Fiber.join(waiter)
      assert.isTrue(yield* Deferred.isDone(granted))
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("separate layers are separate stores", () =>
    Effect.gen(function* () {
      const a = yield* Effect.scoped(Lock.tryScoped("x")).pipe(Effect.provide(MemoryBackend.layer))
      const b = yield* Effect.scoped(Lock.tryScoped("x")).pipe(Effect.provide(MemoryBackend.layer))
      assert.isTrue(Option.isSome(a) && Option.isSome(b))
    })
  )
})
