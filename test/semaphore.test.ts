/**
 * Unit tests of `DistributedSemaphore` on the memory backend, driven by
 * `TestClock`: the limit, `available`, limit agreement, FIFO fairness for
 * large requests, and a name used as a lock and a semaphore at once.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Deferred, Effect, Exit, Fiber, Option } from "effect"
import { TestClock } from "effect/testing"
import { DistributedSemaphore, Lock, LockBackend, MemoryBackend, ReadWriteLock } from "../src/index.ts"
import { FencedResource } from "../src/testing/index.ts"

/** The typed error of a failed exit (fails the test otherwise). */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail(`expected a failure, got success ${String(exit.value)}`)
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

/** Yields until `done` holds (other fibers make progress), at most a bounded number of times. */
const settle = <E, R>(done: Effect.Effect<boolean, E, R>) =>
  Effect.gen(function* () {
    for (let i = 0; i < 100; i++) {
      if (yield* done) return
      yield* Effect.yieldNow
    }
    assert.fail("the fibers did not settle")
  })

const waitersOf = (name: string) =>
  Effect.map(LockBackend.inspect(name), ({ waiters }) => waiters.map((w) => ({ owner: w.owner, permits: w.permits })))

const heldPermits = (name: string) =>
  Effect.map(LockBackend.inspect(name), ({ holders }) => holders.reduce((sum, h) => sum + h.permits, 0))

describe("DistributedSemaphore", () => {
  it.effect("never more holders than the limit (FencedResource), and the limit is used in full", () =>
    Effect.gen(function* () {
      const limit = 3
      const workers = 10
      const resource = yield* FencedResource.make({ capacity: limit })
      const fibers = yield* Effect.forEach(
        Array.from({ length: workers }, (_, i) => i),
        (i) =>
          Effect.forkChild(
            Effect.scoped(
              Effect.flatMap(DistributedSemaphore.scoped("sem", { limit }), (lease) =>
                resource.use(lease.token, Effect.sleep(100 + 10 * i))
              )
            )
          )
      )
      let maxHeld = 0
      for (let step = 0; step < 100 && fibers.some((f) => f.pollUnsafe() === undefined); step++) {
        const held = yield* heldPermits("sem")
        maxHeld = Math.max(maxHeld, held)
        assert.isAtMost(held, limit)
        assert.strictEqual(yield* DistributedSemaphore.available("sem", limit), limit - held)
        yield* TestClock.adjust(10)
      }
      yield* Fiber.joinAll(fibers)
      const report = yield* resource.report
      assert.deepStrictEqual(report.overlaps, [])
      assert.deepStrictEqual(report.rejected, [])
      assert.strictEqual(report.accepted, workers)
      assert.strictEqual(report.maxConcurrent, limit, "the permits were not used in full")
      assert.strictEqual(maxHeld, limit)
      assert.strictEqual(yield* DistributedSemaphore.available("sem", limit), limit)
      const { holders, waiters } = yield* LockBackend.inspect()
      assert.deepStrictEqual([holders, waiters], [[], []])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("mixed permit counts: the held permits never exceed the limit", () =>
    Effect.gen(function* () {
      const limit = 4
      const sizes = [1, 3, 2, 2, 4, 1, 1, 3, 2, 1]
      let inUse = 0
      let maxInUse = 0
      const fibers = yield* Effect.forEach(sizes, (permits, i) =>
        Effect.forkChild(
          DistributedSemaphore.withPermits("mixed", { limit, permits })(
            Effect.acquireUseRelease(
              Effect.sync(() => {
                inUse += permits
                maxInUse = Math.max(maxInUse, inUse)
              }),
              () => Effect.sleep(50 + 7 * i),
              () => Effect.sync(() => (inUse -= permits))
            )
          )
        )
      )
      for (let step = 0; step < 200 && fibers.some((f) => f.pollUnsafe() === undefined); step++) {
        assert.isAtMost(yield* heldPermits("mixed"), limit)
        yield* TestClock.adjust(10)
      }
      yield* Fiber.joinAll(fibers)
      assert.isAtMost(maxInUse, limit)
      assert.strictEqual(maxInUse, limit, "the permits were not used in full")
      assert.strictEqual(inUse, 0)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("available: free permits; the limit is required when nobody holds the semaphore", () =>
    Effect.gen(function* () {
      assert.deepInclude(yield* Effect.flip(DistributedSemaphore.available("av")), {
        _tag: "InvalidLockRequest",
        field: "limit"
      })
      assert.deepInclude(yield* Effect.flip(DistributedSemaphore.available("av", 0)), {
        _tag: "InvalidLockRequest",
        field: "limit"
      })
      assert.deepInclude(yield* Effect.flip(DistributedSemaphore.available("", 3)), {
        _tag: "InvalidLockRequest",
        field: "name"
      })
      assert.strictEqual(yield* DistributedSemaphore.available("av", 3), 3)
      const two = yield* DistributedSemaphore.scoped("av", { limit: 3, permits: 2 })
      assert.strictEqual(two.permits, 2)
      assert.strictEqual(two.mode, "permits")
      // The holders' limit is known now: no limit needed, and it wins over a different one.
      assert.strictEqual(yield* DistributedSemaphore.available("av"), 1)
      assert.strictEqual(yield* DistributedSemaphore.available("av", 3), 1)
      assert.strictEqual(yield* DistributedSemaphore.available("av", 10), 1)
      const one = yield* DistributedSemaphore.tryScoped("av", { limit: 3 })
      assert.isTrue(Option.isSome(one))
      assert.strictEqual(yield* DistributedSemaphore.available("av"), 0)
      assert.isTrue(Option.isNone(yield* Effect.scoped(DistributedSemaphore.tryScoped("av", { limit: 3 }))))
      yield* two.release
      assert.strictEqual(yield* DistributedSemaphore.available("av"), 2)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("holders must agree on the limit: a mismatch is InvalidLockRequest (limit), the holder untouched", () =>
    Effect.gen(function* () {
      const holder = yield* DistributedSemaphore.scoped("lim", { limit: 3 })
      const waiting = yield* Effect.flip(Effect.scoped(DistributedSemaphore.scoped("lim", { limit: 4 })))
      assert.deepInclude(waiting, { _tag: "InvalidLockRequest", field: "limit" })
      const trying = yield* Effect.flip(Effect.scoped(DistributedSemaphore.tryScoped("lim", { limit: 2 })))
      assert.deepInclude(trying, { _tag: "InvalidLockRequest", field: "limit" })
      const within = yield* Effect.flip(
        DistributedSemaphore.withPermits("lim", { limit: 1 })(Effect.die("must not run"))
      )
      assert.deepInclude(within, { _tag: "InvalidLockRequest", field: "limit" })
      const { holders, waiters } = yield* LockBackend.inspect("lim")
      assert.deepStrictEqual(
        holders.map((h) => [h.owner, h.limit]),
        [[holder.owner, 3]]
      )
      assert.deepStrictEqual(waiters, [])
      assert.strictEqual((yield* holder.state)._tag, "Held")
      // Once nobody holds it, a new limit is fine.
      yield* holder.release
      const fresh = yield* DistributedSemaphore.scoped("lim", { limit: 4, permits: 4 })
      assert.strictEqual((yield* LockBackend.inspect("lim")).holders[0]?.limit, 4)
      assert.strictEqual(fresh.permits, 4)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("FIFO: a request for many permits is not starved by a stream of 1-permit requests", () =>
    Effect.gen(function* () {
      const options = { limit: 3 }
      const small = yield* Effect.forEach([0, 1, 2], () => DistributedSemaphore.scoped("fifo", options))
      const order: Array<string> = []
      const bigGranted = yield* Deferred.make<void>()
      const bigDone = yield* Deferred.make<void>()
      const big = yield* Effect.forkChild(
        DistributedSemaphore.withPermits("fifo", { limit: 3, permits: 3 })(
          Effect.andThen(
            Effect.sync(() => order.push("big")),
            Effect.andThen(Deferred.succeed(bigGranted, undefined), Deferred.await(bigDone))
          )
        )
      )
      yield* settle(Effect.map(waitersOf("fifo"), (w) => w.length === 1))
      // One permit frees up: not enough for the big request.
      yield* small[0]!.release
      assert.strictEqual(yield* DistributedSemaphore.available("fifo"), 1)
      // A stream of 1-permit requests arrives: they queue behind the big one.
      const stream: Array<Fiber.Fiber<unknown, unknown>> = []
      for (let i = 0; i < 5; i++) {
        stream.push(
          yield* Effect.forkChild(
            DistributedSemaphore.withPermits("fifo", options)(Effect.sync(() => order.push(`small${i}`)))
          )
        )
        yield* settle(Effect.map(waitersOf("fifo"), (w) => w.length === i + 2))
      }
      assert.deepStrictEqual(
        (yield* waitersOf("fifo")).map((w) => w.permits),
        [3, 1, 1, 1, 1, 1]
      )
      assert.deepStrictEqual(order, [], "a 1-permit request overtook the waiting 3-permit request")
      // A single attempt does not jump the queue either.
      assert.isTrue(Option.isNone(yield* Effect.scoped(DistributedSemaphore.tryScoped("fifo", options))))
      yield* TestClock.adjust("1 minute")
      assert.deepStrictEqual(order, [])
      assert.strictEqual(yield* DistributedSemaphore.available("fifo"), 1)

      yield* small[1]!.release
      yield* small[2]!.release
      yield* Deferred.await(bigGranted)
      assert.deepStrictEqual(order, ["big"])
      assert.strictEqual(yield* DistributedSemaphore.available("fifo"), 0)
      yield* Deferred.succeed(bigDone, undefined)
      yield* Fiber.join(big)
      yield* Fiber.joinAll(stream)
      assert.deepStrictEqual(order, ["big", "small0", "small1", "small2", "small3", "small4"])
      const { holders, waiters } = yield* LockBackend.inspect()
      assert.deepStrictEqual([holders, waiters], [[], []])
      assert.strictEqual(yield* Clock.currentTimeMillis, 60_000)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("a name in use as a lock cannot be used as a semaphore, and the other way round", () =>
    Effect.gen(function* () {
      const lock = yield* Lock.scoped("both")
      const asSemaphore = yield* Effect.flip(Effect.scoped(DistributedSemaphore.scoped("both", { limit: 2 })))
      assert.deepInclude(asSemaphore, { _tag: "InvalidLockRequest", field: "mode" })
      const available = yield* Effect.flip(DistributedSemaphore.available("both", 2))
      assert.deepInclude(available, { _tag: "InvalidLockRequest", field: "name" })
      assert.deepStrictEqual(
        (yield* LockBackend.inspect("both")).holders.map((h) => h.owner),
        [lock.owner]
      )
      assert.deepStrictEqual(yield* waitersOf("both"), [])

      const semaphore = yield* DistributedSemaphore.scoped("both2", { limit: 2 })
      const asLock = yield* Effect.flip(Effect.scoped(Lock.scoped("both2")))
      assert.deepInclude(asLock, { _tag: "InvalidLockRequest", field: "mode" })
      const asRead = yield* Effect.flip(Effect.scoped(ReadWriteLock.read("both2")))
      assert.deepInclude(asRead, { _tag: "InvalidLockRequest", field: "mode" })
      const asTry = yield* Effect.flip(Effect.scoped(Lock.tryScoped("both2")))
      assert.deepInclude(asTry, { _tag: "InvalidLockRequest", field: "mode" })
      assert.deepStrictEqual(
        (yield* LockBackend.inspect("both2")).holders.map((h) => h.owner),
        [semaphore.owner]
      )
      assert.deepStrictEqual(yield* waitersOf("both2"), [])
      assert.strictEqual(yield* DistributedSemaphore.available("both2"), 1)

      // Free again: the name can change kind.
      yield* lock.release
      const now = yield* Effect.scoped(DistributedSemaphore.tryScoped("both", { limit: 2 }))
      assert.isTrue(Option.isSome(now))
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("a waiting semaphore request that times out leaves no waiter and its permits free", () =>
    Effect.gen(function* () {
      yield* DistributedSemaphore.scoped("tos", { limit: 2, permits: 2 })
      const exit = yield* Effect.forkChild(
        Effect.scoped(DistributedSemaphore.scoped("tos", { limit: 2, timeout: "1 second" }))
      ).pipe(
        Effect.tap(() => TestClock.adjust(1_000)),
        Effect.flatMap(Fiber.await)
      )
      assert.deepInclude(errorOf(exit), { _tag: "LockTimeout", name: "tos", waitedMillis: 1_000 })
      assert.deepStrictEqual(yield* waitersOf("tos"), [])
      assert.strictEqual(yield* heldPermits("tos"), 2)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})
