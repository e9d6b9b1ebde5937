/**
 * Regression tests from a review of the core: each failed on the code before
 * its fix (holders gauge after a loss, manual extend vs heartbeat, lost
 * wake-ups after an abandoned wait, semaphore FIFO wake-ups, stale waiter
 * registrations, maxHold during an in-flight extension, the heartbeat option
 * honoured). TestClock only, no real sleeps.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Metric, Option } from "effect"
import { TestClock } from "effect/testing"
import {
  DistributedSemaphore,
  type Lease,
  Lock,
  LockBackend,
  LockConfig,
  LockMetrics,
  MemoryBackend
} from "../src/index.ts"
import { FaultyBackend } from "../src/testing/index.ts"

const faulty = Effect.gen(function* () {
  const inner = yield* LockBackend
  const { backend, control } = yield* FaultyBackend.make(inner)
  return { inner, backend, control }
})

const gauge = Effect.map(Metric.value(LockMetrics.holders), (state) => state.value)

const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

describe("regression: holders gauge", () => {
  it.effect("heartbeat loss with onLost interrupt (Lock.scoped): the holders gauge returns to its start", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const start = yield* gauge
      const leased = yield* Deferred.make<Lease.Lease>()
      const fiber = yield* Effect.forkChild(
        Effect.scoped(
          Effect.gen(function* () {
            const lease = yield* Lock.scoped("g1", { ttl: "3 seconds" })
            yield* Deferred.succeed(leased, lease)
            return yield* Effect.never
          })
        ).pipe(Effect.provideService(LockBackend, backend))
      )
      const lease = yield* Deferred.await(leased)
      assert.strictEqual(yield* gauge, start + 1)
      yield* control.partition("fail")
      yield* TestClock.adjust("3 seconds")
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      assert.strictEqual((yield* lease.state)._tag, "Lost")
      yield* control.heal
      assert.strictEqual(yield* gauge, start, "effect_locks_holders leaked")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("heartbeat loss under withLock: the holders gauge returns to its start", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const start = yield* gauge
      const fiber = yield* Effect.forkChild(
        Lock.withLock("g2", { ttl: "3 seconds" })(Effect.never).pipe(Effect.provideService(LockBackend, backend))
      )
      yield* TestClock.adjust(1)
      assert.strictEqual(yield* gauge, start + 1)
      yield* control.partition("fail")
      yield* TestClock.adjust("3 seconds")
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      yield* control.heal
      assert.strictEqual(yield* gauge, start, "effect_locks_holders leaked")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect(
    "lease.extend that finds the lease expired (onLost interrupt): the holders gauge returns to its start",
    () =>
      Effect.gen(function* () {
        const { backend, control } = yield* faulty
        const start = yield* gauge
        // Extensions answer "extended" but never reach the store: it expires the grant at 3 s.
        yield* control.dropExtensions(true)
        const fiber = yield* Effect.forkChild(
          Effect.scoped(
            Effect.gen(function* () {
              const lease = yield* Lock.scoped("g3", { ttl: "3 seconds" })
              yield* Effect.sleep("3500 millis")
              yield* control.dropExtensions(false)
              // The holder checks its lease itself: the store answers "expired".
              return yield* lease.extend()
            })
          ).pipe(Effect.provideService(LockBackend, backend))
        )
        yield* TestClock.adjust("3500 millis")
        const exit = yield* Fiber.await(fiber)
        assert.isTrue(Exit.isFailure(exit))
        assert.strictEqual(yield* gauge, start, "effect_locks_holders leaked")
      }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("regression: manual extend vs heartbeat", () => {
  it.effect("extend to a shorter TTL: the lease is lost (or kept) before the store can grant it to a rival", () =>
    Effect.gen(function* () {
      const lease = yield* Lock.scoped("short", { ttl: "30 seconds", onLost: "ignore" })
      yield* TestClock.adjust("1 second")
      // Shorten the lease: the store now expires it at 4 s.
      yield* lease.extend("3 seconds")
      assert.deepStrictEqual(yield* lease.state, { _tag: "Held", expiresAt: 4_000 })
      yield* TestClock.adjust("3 seconds")
      const rival = yield* Effect.scoped(Lock.tryScoped("short"))
      const state = yield* lease.state
      // Never both: a rival holding the name while this lease still says Held.
      assert.isFalse(
        Option.isSome(rival) && state._tag === "Held",
        `rival granted at 4 s while the lease is ${JSON.stringify(state)}`
      )
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("heartbeat: false, extend to a shorter TTL: the lease is lost at the new expiry", () =>
    Effect.gen(function* () {
      const lease = yield* Lock.scoped("short2", { ttl: "30 seconds", heartbeat: false, onLost: "ignore" })
      yield* TestClock.adjust("1 second")
      yield* lease.extend("3 seconds")
      yield* TestClock.adjust("3 seconds")
      assert.strictEqual((yield* lease.state)._tag, "Lost", "still Held after the store expired it")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("regression: memory backend wake-ups", () => {
  it.effect("a release while the waiter's attempt is in flight, after a wait lost to the retry timer, wakes it", () =>
    Effect.gen(function* () {
      const { backend, control, inner } = yield* faulty
      // A plain grant on the store (long TTL): the current holder.
      yield* inner.tryAcquire({
        name: "wk",
        owner: "holder",
        mode: "exclusive",
        permits: 1,
        limit: 1,
        ttlMillis: 10 * 3_600_000,
        metadata: {},
        queue: false
      })
      // Retry delays: 1 s, then 1 h + 1 s: after the first delay, only a change signal can wake the waiter in time.
      const retry = LockConfig.retryLinear({ initial: "1 second", step: "1 hour", max: "2 hours", jitter: false })
      let tries = 0
      // The holder releases while the waiter's third attempt (at 1 s) is answering "taken".
      yield* control.setHook((call) =>
        call.operation === "tryAcquire" && call.phase === "after" && ++tries === 3
          ? Effect.ignore(inner.release("wk", "holder"))
          : Effect.void
      )
      const granted = yield* Deferred.make<void>()
      yield* Effect.forkChild(
        Effect.scoped(Effect.andThen(Lock.scoped("wk", { retry }), Deferred.succeed(granted, undefined))).pipe(
          Effect.provideService(LockBackend, backend)
        )
      )
      yield* TestClock.adjust("1 second")
      assert.isAtLeast(tries, 3)
      assert.isFalse(
        (yield* LockBackend.inspect("wk")).holders.some((h) => h.owner === "holder"),
        "the holder released at 1 s"
      )
      yield* TestClock.adjust("1 minute")
      assert.isTrue(yield* Deferred.isDone(granted), "the only waiter of a free lock was not woken by the release")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("subscribe: a change after an abandoned wait is reported by the next wait (contract)", () =>
    Effect.gen(function* () {
      const backend = yield* MemoryBackend.make
      const changed = yield* backend.subscribe("c")
      // A wait abandoned before any change (e.g. it lost a race against a retry timer).
      const abandoned = yield* Effect.forkChild(changed)
      yield* Effect.yieldNow
      yield* Fiber.interrupt(abandoned)
      // A change while nobody waits.
      const request = {
        name: "c",
        owner: "o",
        mode: "exclusive" as const,
        permits: 1,
        limit: 1,
        ttlMillis: 60_000,
        metadata: {},
        queue: false
      }
      yield* backend.tryAcquire(request)
      assert.isTrue(yield* backend.release("c", "o"))
      // LockBackend: "completes once something changed since the previous time it completed".
      const next = yield* Effect.forkChild(changed)
      yield* TestClock.adjust("1 second")
      assert.isDefined(next.pollUnsafe(), "the change was lost")
    }).pipe(Effect.scoped)
  )
})

/** Holds 1 of the 2 permits of "sem" until interrupted; `done` once granted. */
const semaphoreWaiter = (done: Deferred.Deferred<void>) =>
  Effect.scoped(
    Effect.andThen(
      DistributedSemaphore.scoped("sem", { limit: 2, permits: 1, retry: hourRetry }),
      Effect.andThen(Deferred.succeed(done, undefined), Effect.never)
    )
  )

describe("regression: semaphore FIFO wake-ups", () => {
  it.effect("the waiter behind a granted waiter is woken when permits remain free", () =>
    Effect.gen(function* () {
      const inner = yield* LockBackend
      // W1 reaches the store through a slower link (50 ms per call).
      const slow = yield* FaultyBackend.make(inner)
      yield* slow.control.setDelay("50 millis")
      // A holds both permits.
      yield* inner.tryAcquire({
        name: "sem",
        owner: "A",
        mode: "permits",
        permits: 2,
        limit: 2,
        ttlMillis: 10 * 3_600_000,
        metadata: {},
        queue: false
      })
      const w1 = yield* Deferred.make<void>()
      const w2 = yield* Deferred.make<void>()
      yield* Effect.forkChild(semaphoreWaiter(w1).pipe(Effect.provideService(LockBackend, slow.backend)))
      yield* TestClock.adjust(200)
      yield* Effect.forkChild(semaphoreWaiter(w2))
      yield* TestClock.adjust(1)
      assert.deepStrictEqual(
        (yield* LockBackend.inspect("sem")).waiters.map((w) => w.permits),
        [1, 1],
        "W1 then W2 queued"
      )
      yield* inner.release("sem", "A")
      yield* TestClock.adjust(100)
      assert.isTrue(yield* Deferred.isDone(w1), "W1 granted")
      yield* TestClock.adjust("1 minute")
      // (No delayed cleanup calls on TestClock at the end of the test.)
      yield* slow.control.setDelay(undefined)
      const { waiters } = yield* LockBackend.inspect("sem")
      assert.isTrue(
        yield* Deferred.isDone(w2),
        `W2 still waiting (${waiters.length} waiter) with a free permit: not woken when W1 left the queue`
      )
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("regression: stale waiter registrations", () => {
  it.effect("a waiter whose withdrawal failed (transient partition) does not block the name forever", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const holder = yield* Lock.scoped("stale")
      const waiter = yield* Effect.forkChild(
        Effect.scoped(Lock.scoped("stale", { timeout: "1 second" })).pipe(Effect.provideService(LockBackend, backend))
      )
      yield* TestClock.adjust(500)
      // The store is unreachable when the waiter gives up: its withdrawal fails.
      yield* control.partition("fail")
      yield* TestClock.adjust(1_000)
      assert.isTrue(Exit.isFailure(yield* Fiber.await(waiter)))
      yield* control.heal
      yield* holder.release
      // A day later, nobody holds the name, its only waiter is long gone.
      yield* TestClock.adjust("1 day")
      const { holders, waiters } = yield* LockBackend.inspect("stale")
      assert.deepStrictEqual(holders, [])
      const attempt = yield* Effect.scoped(Lock.tryScoped("stale"))
      assert.isTrue(
        Option.isSome(attempt),
        `the name is blocked for good by ${waiters.length} dead waiter registration(s) (since ${waiters[0]?.since})`
      )
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("regression: maxHold", () => {
  it.effect("maxHold: the lease is lost at acquiredAt + maxHold even while an extension is in flight", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const lease = yield* Lock.scoped("mh", { ttl: "3 seconds", maxHold: "2200 millis", onLost: "ignore" }).pipe(
        Effect.provideService(LockBackend, backend)
      )
      assert.strictEqual(lease.acquiredAt, 0)
      // A slow store from now on: every call takes 400 ms.
      yield* control.setDelay("400 millis")
      // Beats sent at 1 s and 2 s; the second is still in flight at the 2.2 s budget.
      yield* TestClock.adjust(2_200)
      const state = yield* lease.state
      yield* control.setDelay(undefined)
      assert.isTrue(
        state._tag === "Lost" && state.reason === "expired",
        `at acquiredAt + maxHold the lease is ${JSON.stringify(state, (_, v) => (typeof v === "bigint" ? `${v}` : v))}`
      )
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("regression: options", () => {
  it.effect("an accepted heartbeat interval is honored (or rejected), not silently shortened", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      // LockOptions: "Extension interval, at most ttl / 2". 1.4 s < 3 s / 2, and inside the 1.5 s loss deadline.
      const exit = yield* Effect.exit(
        Lock.scoped("hbopt", { ttl: "3 seconds", heartbeat: "1400 millis" }).pipe(
          Effect.provideService(LockBackend, backend)
        )
      )
      if (Exit.isFailure(exit)) {
        const error = Cause.findErrorOption(exit.cause)
        assert.isTrue(Option.isSome(error) && error.value._tag === "InvalidLockRequest")
        return
      }
      yield* TestClock.adjust(1_000)
      assert.strictEqual((yield* control.calls).extend, 0, "extended at 1 s, not at the 1.4 s asked for")
      yield* TestClock.adjust(400)
      assert.strictEqual((yield* control.calls).extend, 1)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})
