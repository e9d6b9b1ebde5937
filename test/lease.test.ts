/**
 * Unit tests of the acquire loop and the lease state machine
 * (src/internal/lease.ts), on the memory backend and the fault wrapper, driven
 * by `TestClock`: heartbeats, partitions, failed compare-and-swaps, `maxHold`,
 * `onLost`, the lease's own operations, timeouts, retry exhaustion, wake-ups,
 * multi-locks and fencing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Deferred, Effect, Exit, Fiber, Option } from "effect"
import { TestClock } from "effect/testing"
import { type Lease, Lock, LockBackend, type LockBackendShape, LockConfig, MemoryBackend } from "../src/index.ts"
import { FaultyBackend } from "../src/testing/index.ts"

/** The store's healthy backend, and a faulty view of the same store. */
const faulty = Effect.gen(function* () {
  const inner = yield* LockBackend
  const { backend, control } = yield* FaultyBackend.make(inner)
  return { inner, backend, control }
})

/** The typed error of a failed exit (fails the test otherwise). */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail(`expected a failure, got success ${String(exit.value)}`)
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

const holdersOf = (name: string) =>
  Effect.map(LockBackend.inspect(name), ({ holders }) => holders.map((h) => ({ owner: h.owner, token: h.token })))

/** Asserts the store holds and queues nothing under any name. */
const assertNothingLocked = Effect.gen(function* () {
  const { holders, waiters } = yield* LockBackend.inspect()
  assert.deepStrictEqual(holders, [], "holders left")
  assert.deepStrictEqual(waiters, [], "waiters left")
})

/**
 * A retry that never fires within a test: any progress is a wake-up signal.
 * (`max` is given explicitly so that no default cap can turn this into polling.)
 */
const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

describe("lease: heartbeat", () => {
  it.effect("with ttl 3 s the default heartbeat extends every 1 s and holds the lease past several TTLs", () =>
    Effect.gen(function* () {
      const { backend, control, inner } = yield* faulty
      const lease = yield* Lock.scoped("hb", { ttl: "3 seconds" }).pipe(Effect.provideService(LockBackend, backend))
      assert.strictEqual(lease.acquiredAt, 0)
      const first = yield* LockBackend.inspect("hb")
      assert.strictEqual(first.holders[0]?.expiresAt, 3_000)

      yield* TestClock.adjust(999)
      assert.strictEqual((yield* control.calls).extend, 0, "no extension before the first interval")
      yield* TestClock.adjust(1)
      assert.strictEqual((yield* control.calls).extend, 1, "one extension at 1 s")

      // Three and a half TTLs later.
      yield* TestClock.adjust(9_500)
      assert.strictEqual(yield* Clock.currentTimeMillis, 10_500)
      assert.strictEqual((yield* control.calls).extend, 10, "one extension per second")
      assert.deepStrictEqual(yield* lease.state, { _tag: "Held", expiresAt: 13_000 })
      const { holders } = yield* LockBackend.inspect("hb")
      assert.strictEqual(holders.length, 1)
      assert.strictEqual(holders[0]?.owner, lease.owner)
      assert.strictEqual(holders[0]?.token, lease.token)
      assert.strictEqual(holders[0]?.expiresAt, 13_000, "the store's expiry moved forward")
      // Nobody else can take it.
      const rival = yield* Effect.scoped(Lock.tryScoped("hb")).pipe(Effect.provideService(LockBackend, inner))
      assert.isTrue(Option.isNone(rival))
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("transient extension failures are retried: the lease survives, still Held", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const lease = yield* Lock.scoped("transient", { ttl: "3 seconds" }).pipe(
        Effect.provideService(LockBackend, backend)
      )
      yield* control.failNext(2, ["extend"])
      yield* TestClock.adjust(1_000)
      // The retries (after 10 ms, then 20 ms more) run inside the loss deadline.
      yield* TestClock.adjust(100)
      assert.strictEqual((yield* control.calls).extend, 3, "two failures, then a success")
      const state = yield* lease.state
      assert.strictEqual(state._tag, "Held")
      // The TTL counts from when the successful extension was sent (1,030 ms).
      assert.deepStrictEqual(state, { _tag: "Held", expiresAt: 4_030 })
      assert.strictEqual((yield* LockBackend.inspect("transient")).holders[0]?.expiresAt, 4_030)
      yield* TestClock.adjust(10_000)
      assert.strictEqual((yield* lease.state)._tag, "Held")
      assert.strictEqual((yield* control.calls).extend, 13)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("lease: partition", () => {
  for (const mode of ["hang", "fail"] as const) {
    it.effect(`partition("${mode}"): the holder fails with LockLost unreachable before the TTL could expire`, () =>
      Effect.gen(function* () {
        const { backend, control, inner } = yield* faulty
        const ttlMillis = 3_000
        const grantedAt = yield* Deferred.make<number>()
        const interruptedAt = yield* Deferred.make<number>()
        const now = Clock.currentTimeMillis
        const holder = yield* Lock.withLock("part", { ttl: ttlMillis })(
          Effect.andThen(
            Effect.flatMap(now, (t) => Deferred.succeed(grantedAt, t)),
            Effect.never
          ).pipe(Effect.onInterrupt(() => Effect.flatMap(now, (t) => Deferred.succeed(interruptedAt, t))))
        ).pipe(Effect.provideService(LockBackend, backend), Effect.forkChild)
        const start = yield* Deferred.await(grantedAt)
        const [granted] = yield* holdersOf("part")
        yield* control.partition(mode)

        // Step the clock until the critical section is interrupted (at most one TTL).
        const step = 10
        while (!(yield* Deferred.isDone(interruptedAt)) && (yield* now) - start < ttlMillis) {
          yield* TestClock.adjust(step)
        }
        assert.isTrue(yield* Deferred.isDone(interruptedAt), "the critical section was not interrupted")
        const lostAt = yield* Deferred.await(interruptedAt)
        // Loss deadline: half the TTL after the last successful extension (the
        // grant), plus at most one capped retry interval (ttl / 20).
        assert.isAtMost(lostAt - start, ttlMillis / 2 + ttlMillis / 20, `lost after ${lostAt - start} ms`)
        assert.isBelow(lostAt - start, ttlMillis)
        assert.isAtLeast((yield* control.calls).extend, 1, "a heartbeat was attempted")

        if (mode === "fail") {
          // The store still holds the grant (the release failed too) until
          // its TTL: the holder stopped strictly before anyone else could get in.
          assert.deepStrictEqual(yield* holdersOf("part"), [granted])
          yield* TestClock.adjust(start + ttlMillis - 1 - (yield* now))
          const early = yield* Effect.scoped(Lock.tryScoped("part")).pipe(Effect.provideService(LockBackend, inner))
          assert.isTrue(Option.isNone(early), "granted to a rival before the TTL")
          yield* TestClock.adjust(1)
          const rival = yield* Effect.scoped(Lock.tryScoped("part")).pipe(Effect.provideService(LockBackend, inner))
          assert.isTrue(Option.isSome(rival) && rival.value.token > granted!.token)
        }
        yield* control.heal
        const error = errorOf(yield* Fiber.await(holder))
        assert.deepInclude(error, { _tag: "LockLost", name: "part", reason: "unreachable", token: granted!.token })
        yield* assertNothingLocked
      }).pipe(Effect.provide(MemoryBackend.layer))
    )
  }
})

describe("lease: failed compare-and-swap", () => {
  it.effect("store expired, a rival took it: the holder's next heartbeat loses it, the rival is untouched", () =>
    Effect.gen(function* () {
      const { backend, control, inner } = yield* faulty
      yield* control.dropExtensions(true)
      const holder = yield* Lock.scoped("cas", { ttl: "3 seconds", onLost: "ignore" }).pipe(
        Effect.provideService(LockBackend, backend)
      )
      // Extensions answer "extended" but never reach the store.
      yield* TestClock.adjust(2_999)
      assert.strictEqual((yield* holdersOf("cas")).length, 1)
      yield* TestClock.adjust(1)
      assert.deepStrictEqual(yield* holdersOf("cas"), [], "the store expired the grant at its TTL")
      assert.strictEqual((yield* holder.state)._tag, "Held", "the holder believes it holds")

      yield* TestClock.adjust(200)
      const rival = yield* Lock.scoped("cas", { ttl: "3 seconds" }).pipe(Effect.provideService(LockBackend, inner))
      assert.isTrue(rival.token > holder.token)

      yield* control.dropExtensions(false)
      // The holder's next heartbeat (at 4 s) reaches the store.
      yield* TestClock.adjust(800)
      const lost = yield* holder.lost
      assert.strictEqual(lost._tag, "LockLost")
      assert.include(["expired", "stolen"], lost.reason)
      assert.strictEqual(lost.token, holder.token)
      const state = yield* holder.state
      assert.isTrue(state._tag === "Lost" && state.reason === lost.reason)
      // The holder's cleanup did not touch the rival's grant.
      assert.deepStrictEqual(yield* rival.state, { _tag: "Held", expiresAt: 6_200 })
      assert.deepStrictEqual(yield* holdersOf("cas"), [{ owner: rival.owner, token: rival.token }])
      yield* TestClock.adjust(5_000)
      assert.strictEqual((yield* rival.state)._tag, "Held")
      assert.deepStrictEqual(yield* holdersOf("cas"), [{ owner: rival.owner, token: rival.token }])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("lease: no heartbeat, maxHold", () => {
  it.effect("heartbeat: false: the lease is lost (expired) at its TTL", () =>
    Effect.gen(function* () {
      const lease = yield* Lock.scoped("nohb", { ttl: "3 seconds", heartbeat: false, onLost: "ignore" })
      yield* TestClock.adjust(2_999)
      assert.deepStrictEqual(yield* lease.state, { _tag: "Held", expiresAt: 3_000 })
      yield* TestClock.adjust(1)
      const state = yield* lease.state
      assert.isTrue(state._tag === "Lost" && state.reason === "expired", JSON.stringify(state._tag))
      assert.deepInclude(yield* lease.lost, { _tag: "LockLost", reason: "expired", token: lease.token })
      yield* assertNothingLocked
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("heartbeat: false: a manual extend before the TTL postpones the loss", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const lease = yield* Lock.scoped("manual", { ttl: "3 seconds", heartbeat: false, onLost: "ignore" }).pipe(
        Effect.provideService(LockBackend, backend)
      )
      yield* TestClock.adjust(2_000)
      yield* lease.extend()
      assert.strictEqual((yield* control.calls).extend, 1)
      assert.deepStrictEqual(yield* lease.state, { _tag: "Held", expiresAt: 5_000 })
      assert.strictEqual((yield* LockBackend.inspect("manual")).holders[0]?.expiresAt, 5_000)
      yield* TestClock.adjust(2_999)
      assert.strictEqual((yield* lease.state)._tag, "Held")
      assert.strictEqual((yield* control.calls).extend, 1, "no automatic extension")
      yield* TestClock.adjust(1)
      assert.deepInclude(yield* lease.lost, { reason: "expired" })
      // A longer manual extension is kept as the lease's TTL.
      const second = yield* Lock.scoped("manual2", { ttl: "1 second", heartbeat: false, onLost: "ignore" })
      yield* second.extend("10 seconds")
      yield* TestClock.adjust(9_999)
      assert.strictEqual((yield* second.state)._tag, "Held")
      yield* TestClock.adjust(1)
      assert.strictEqual((yield* second.state)._tag, "Lost")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect(
    "maxHold: extensions stop, the lease is lost (expired) at acquiredAt + maxHold, released when its scope ends",
    () =>
      Effect.gen(function* () {
        const { backend, control } = yield* faulty
        yield* TestClock.adjust(500)
        const lease = yield* Lock.scoped("maxhold", { ttl: "3 seconds", maxHold: "5 seconds", onLost: "ignore" }).pipe(
          Effect.provideService(LockBackend, backend)
        )
        assert.strictEqual(lease.acquiredAt, 500)
        yield* TestClock.adjust(4_999)
        assert.strictEqual((yield* lease.state)._tag, "Held")
        assert.strictEqual((yield* control.calls).extend, 4, "extended at 1, 2, 3 and 4 s")
        // The store would keep it until 4.5 s + 3 s = 7.5 s.
        assert.strictEqual((yield* LockBackend.inspect("maxhold")).holders[0]?.expiresAt, 7_500)
        yield* TestClock.adjust(1)
        assert.strictEqual(yield* Clock.currentTimeMillis, lease.acquiredAt + 5_000)
        const state = yield* lease.state
        assert.isTrue(state._tag === "Lost" && state.reason === "expired")
        assert.strictEqual((yield* control.calls).extend, 4, "no extension past the budget")
        // The holder may still be running until it stops: the store keeps the
        // grant (no rival gets in) until the holder's scope closes.
        assert.strictEqual((yield* LockBackend.inspect("maxhold")).holders.length, 1)
        assert.strictEqual((yield* control.calls).release, 0)
        const release = yield* Effect.flip(lease.release)
        assert.deepInclude(release, { _tag: "LockNotHeld", state: "lost" })
        assert.strictEqual((yield* control.calls).release, 1)
        yield* assertNothingLocked
      }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("lease: onLost", () => {
  it.effect(`onLost: "interrupt" (default) with Lock.scoped interrupts the acquiring fiber`, () =>
    Effect.gen(function* () {
      const leased = yield* Deferred.make<Lease.Lease>()
      const fiber = yield* Effect.forkChild(
        Effect.scoped(
          Effect.gen(function* () {
            const lease = yield* Lock.scoped("oi", { ttl: "3 seconds", heartbeat: false })
            yield* Deferred.succeed(leased, lease)
            return yield* Effect.never
          })
        )
      )
      const lease = yield* Deferred.await(leased)
      yield* TestClock.adjust(2_999)
      assert.isUndefined(fiber.pollUnsafe(), "interrupted too early")
      yield* TestClock.adjust(1)
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause), String(exit))
      assert.deepInclude(yield* lease.lost, { _tag: "LockLost", name: "oi", reason: "expired" })
      yield* assertNothingLocked
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect(`onLost: "ignore" leaves the fiber running; lease.lost completes with the LockLost`, () =>
    Effect.gen(function* () {
      const leased = yield* Deferred.make<Lease.Lease>()
      const fiber = yield* Effect.forkChild(
        Effect.scoped(
          Effect.gen(function* () {
            const lease = yield* Lock.scoped("ig", { ttl: "3 seconds", heartbeat: false, onLost: "ignore" })
            yield* Deferred.succeed(leased, lease)
            const lost = yield* lease.lost
            // Still running after the loss: it can act on it.
            yield* Effect.sleep(1_000)
            return lost
          })
        )
      )
      const lease = yield* Deferred.await(leased)
      yield* TestClock.adjust(3_000)
      assert.strictEqual((yield* lease.state)._tag, "Lost")
      assert.isUndefined(fiber.pollUnsafe(), "the fiber was interrupted")
      yield* TestClock.adjust(1_000)
      const lost = yield* Fiber.join(fiber)
      assert.deepInclude(lost, { _tag: "LockLost", name: "ig", reason: "expired", token: lease.token })
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect(`withLock with onLost: "ignore" lets the effect finish after a loss`, () =>
    Effect.gen(function* () {
      const fiber = yield* Effect.forkChild(
        Lock.withLock("wl", { ttl: "1 second", heartbeat: false, onLost: "ignore" })(
          Effect.as(Effect.sleep("2 seconds"), "finished")
        )
      )
      yield* TestClock.adjust(1_000)
      assert.deepStrictEqual(yield* holdersOf("wl"), [])
      yield* TestClock.adjust(1_000)
      assert.strictEqual(yield* Fiber.join(fiber), "finished")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("lease: release and extend", () => {
  it.effect("release twice: the second fails LockNotHeld released; extend after release: LockNotHeld", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const lease = yield* Lock.scoped("twice").pipe(Effect.provideService(LockBackend, backend))
      yield* lease.release
      assert.deepStrictEqual(yield* lease.state, { _tag: "Released" })
      assert.deepStrictEqual(yield* holdersOf("twice"), [])
      const releases = (yield* control.calls).release
      const second = yield* Effect.flip(lease.release)
      assert.deepInclude(second, { _tag: "LockNotHeld", name: "twice", owner: lease.owner, state: "released" })
      assert.strictEqual((yield* control.calls).release, releases, "the second release reached the backend")
      const extend = yield* Effect.flip(lease.extend())
      assert.deepInclude(extend, { _tag: "LockNotHeld", name: "twice", state: "released" })
      assert.strictEqual((yield* control.calls).extend, 0)
      // The lock is free again.
      const again = yield* Effect.scoped(Lock.tryScoped("twice"))
      assert.isTrue(Option.isSome(again) && again.value.token > lease.token)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect(
    "a second release while the first is still on its way to the store waits for it, then fails LockNotHeld released: after either returns, the store holds nothing",
    () =>
      Effect.gen(function* () {
        const { backend, control } = yield* faulty
        const lease = yield* Lock.scoped("in-flight").pipe(Effect.provideService(LockBackend, backend))
        // The first release takes 100 ms (TestClock) to reach the store.
        yield* control.setDelay("100 millis")
        const first = yield* Effect.forkChild(lease.release)
        yield* TestClock.adjust(10)
        const second = yield* Effect.forkChild(Effect.flip(lease.release))
        yield* TestClock.adjust(10)
        assert.isUndefined(second.pollUnsafe(), "the second release returned while the first was on its way")
        assert.strictEqual((yield* holdersOf("in-flight")).length, 1, "still held on the store")
        yield* TestClock.adjust(100)
        const error = yield* Fiber.join(second)
        assert.deepInclude(error, { _tag: "LockNotHeld", state: "released" })
        yield* Fiber.join(first)
        assert.deepStrictEqual(yield* holdersOf("in-flight"), [])
        assert.strictEqual((yield* control.calls).release, 1, "one release reached the store")
      }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect(
    "a release slower than the cleanup bound (5 s): cut at the bound for a backend that does not declare bounded calls, waited for when it does (its own deadline bounds it)",
    () =>
      Effect.gen(function* () {
        const inner = yield* LockBackend
        // Every release takes 7 s (TestClock) to reach the store.
        const slow = (boundedCalls: boolean): LockBackendShape => ({
          ...inner,
          boundedCalls,
          release: (name, owner) => Effect.andThen(Effect.sleep("7 seconds"), inner.release(name, owner))
        })
        for (const boundedCalls of [false, true]) {
          const name = `slow-${boundedCalls}`
          const closing = yield* Effect.forkChild(
            Effect.scoped(Lock.scoped(name, { ttl: "30 seconds" })).pipe(
              Effect.provideService(LockBackend, slow(boundedCalls))
            )
          )
          yield* TestClock.adjust(5_000)
          assert.strictEqual(closing.pollUnsafe() !== undefined, !boundedCalls, `boundedCalls ${boundedCalls} at 5 s`)
          yield* TestClock.adjust(2_000)
          yield* Fiber.join(closing)
          // Bounded: the release itself reached the store at 7 s. Cut: the
          // detached retry that went on from 5 s reaches it at 12 s.
          assert.strictEqual(
            (yield* holdersOf(name)).length,
            boundedCalls ? 0 : 1,
            `boundedCalls ${boundedCalls} at 7 s`
          )
          yield* TestClock.adjust(5_000)
          assert.deepStrictEqual(yield* holdersOf(name), [], `boundedCalls ${boundedCalls} at 12 s`)
        }
      }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("after a loss: release fails LockNotHeld lost, extend fails with the LockLost", () =>
    Effect.gen(function* () {
      const lease = yield* Lock.scoped("afterloss", { ttl: "1 second", heartbeat: false, onLost: "ignore" })
      yield* TestClock.adjust(1_000)
      const lost = yield* lease.lost
      const extend = yield* Effect.flip(lease.extend())
      assert.strictEqual(extend, lost)
      assert.deepInclude(extend, { _tag: "LockLost", reason: "expired", token: lease.token })
      const release = yield* Effect.flip(lease.release)
      assert.deepInclude(release, { _tag: "LockNotHeld", name: "afterloss", owner: lease.owner, state: "lost" })
      // Still lost (not Released) after the failed release.
      assert.strictEqual((yield* lease.state)._tag, "Lost")
      yield* assertNothingLocked
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("extend with a bad TTL is InvalidLockRequest; an extend that finds a rival marks the lease lost", () =>
    Effect.gen(function* () {
      const { backend, control, inner } = yield* faulty
      const lease = yield* Lock.scoped("ext", { ttl: "1 second", heartbeat: false, onLost: "ignore" }).pipe(
        Effect.provideService(LockBackend, backend)
      )
      assert.deepInclude(yield* Effect.flip(lease.extend(0)), { _tag: "InvalidLockRequest", field: "ttl" })
      assert.strictEqual((yield* control.calls).extend, 0)
      // The grant expires in the store, a rival takes it; the heartbeat-less
      // holder's clock-based loss is raced by an explicit extend.
      yield* control.dropExtensions(true)
      yield* lease.extend("5 seconds")
      yield* TestClock.adjust(1_000)
      assert.strictEqual((yield* lease.state)._tag, "Held")
      const rival = yield* Lock.scoped("ext").pipe(Effect.provideService(LockBackend, inner))
      yield* control.dropExtensions(false)
      const error = yield* Effect.flip(lease.extend())
      assert.deepInclude(error, { _tag: "LockLost", reason: "stolen", token: lease.token })
      const state = yield* lease.state
      assert.isTrue(state._tag === "Lost" && state.reason === "stolen")
      assert.deepStrictEqual(yield* holdersOf("ext"), [{ owner: rival.owner, token: rival.token }])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

/** A waiter for "tof" (held) through `backend`, with a deterministic 100, 200, 300... ms retry. */
const timedOutWaiter = (backend: LockBackendShape) =>
  Effect.gen(function* () {
    const retry = LockConfig.retryLinear({ initial: "100 millis", jitter: false })
    const waiter = yield* Effect.forkChild(
      Effect.scoped(Lock.scoped("tof", { timeout: "900 millis", retry })).pipe(
        Effect.provideService(LockBackend, backend)
      )
    )
    yield* TestClock.adjust(900)
    const exit = yield* Fiber.await(waiter)
    const error = errorOf(exit)
    if (error._tag !== "LockTimeout" || Exit.isSuccess(exit)) {
      return assert.fail(`expected LockTimeout, got ${error._tag}`)
    }
    const fails = exit.cause.reasons.filter(Cause.isFailReason).map((reason) => reason.error)
    return { error, fails }
  })

describe("acquire: timeout, retry, wake-up", () => {
  it.effect("timeout: LockTimeout with attempts >= 1 and waitedMillis equal to the timeout", () =>
    Effect.gen(function* () {
      yield* Lock.scoped("to")
      const waiter = yield* Effect.forkChild(Effect.scoped(Lock.scoped("to", { timeout: "1 second" })))
      yield* TestClock.adjust(999)
      assert.isUndefined(waiter.pollUnsafe())
      assert.strictEqual((yield* LockBackend.inspect("to")).waiters.length, 1)
      yield* TestClock.adjust(1)
      const error = errorOf(yield* Fiber.await(waiter))
      assert.strictEqual(error._tag, "LockTimeout")
      if (error._tag !== "LockTimeout") return
      assert.strictEqual(error.name, "to")
      assert.isAtLeast(error.attempts, 1)
      assert.strictEqual(error.waitedMillis, 1_000)
      assert.deepStrictEqual(error.failures, [])
      // The waiter's queue registration is gone.
      assert.deepStrictEqual((yield* LockBackend.inspect("to")).waiters, [])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("timeout after backend failures: they are in error.failures and in the Cause", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      yield* Lock.scoped("tof")
      // The first attempt fails, then the subscription (the waiter falls back on its retry schedule).
      yield* control.failNext(2, ["tryAcquire", "subscribe"])
      const { error, fails } = yield* timedOutWaiter(backend)
      assert.strictEqual(error.waitedMillis, 900)
      // Attempts at 0 (failed), 0 after subscribing, 100, 300 and 600 ms.
      assert.strictEqual(error.attempts, 5)
      assert.deepStrictEqual(
        error.failures.map((f) => (f as { operation: string }).operation),
        ["tryAcquire", "subscribe"]
      )
      for (const failure of error.failures) assert.deepInclude(failure, { _tag: "LockBackendUnavailable" })
      // The timeout first, then every failure, as Fail reasons of the Cause.
      assert.isAbove(fails.length, 1)
      assert.strictEqual(fails[0], error)
      assert.deepStrictEqual(fails.slice(1), [...error.failures])
      assert.deepStrictEqual((yield* LockBackend.inspect("tof")).waiters, [])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("timeout after two identical backend failures: both are kept in the Cause", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      yield* Lock.scoped("tof")
      yield* control.failNext(2, ["tryAcquire"])
      const { error, fails } = yield* timedOutWaiter(backend)
      assert.strictEqual(error.waitedMillis, 900)
      // Attempts at 0 (failed), 0 after subscribing (failed), 100, 300 and 600 ms.
      assert.strictEqual(error.attempts, 5)
      assert.strictEqual(error.failures.length, 2)
      for (const failure of error.failures) {
        assert.deepInclude(failure, { _tag: "LockBackendUnavailable", operation: "tryAcquire" })
      }
      // LockTimeout docs: "Every backend failure met on the way is kept: in
      // `failures` and as further `Fail` reasons of the effect's `Cause`".
      assert.strictEqual(fails[0], error)
      assert.strictEqual(
        fails.length,
        1 + error.failures.length,
        `the Cause has ${fails.length - 1} of the ${error.failures.length} failures`
      )
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("retry exhaustion: retryExponential({ maxAttempts: 3 }) against a held lock makes 3 attempts", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      yield* Lock.scoped("exhaust")
      const waiter = yield* Effect.forkChild(
        Effect.scoped(
          Lock.scoped("exhaust", { retry: LockConfig.retryExponential({ maxAttempts: 3, jitter: false }) }).pipe(
            Effect.provideService(LockBackend, backend)
          )
        )
      )
      yield* TestClock.adjust(10_000)
      const error = errorOf(yield* Fiber.await(waiter))
      assert.strictEqual(error._tag, "LockTimeout")
      if (error._tag !== "LockTimeout") return
      const tryAcquires = (yield* control.calls).tryAcquire
      assert.strictEqual(error.attempts, tryAcquires, "attempts counts the grant attempts made")
      // maxAttempts counts attempts (LockConfig: "maxAttempts counts attempts").
      assert.strictEqual(error.attempts, 3, `maxAttempts 3 made ${error.attempts} attempts`)
      assert.deepStrictEqual((yield* LockBackend.inspect("exhaust")).waiters, [])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("a waiter is granted on the release signal, not on its (1 hour) retry", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const holder = yield* Lock.scoped("wake")
      const granted = yield* Deferred.make<bigint>()
      const waiter = yield* Effect.forkChild(
        Effect.scoped(
          Effect.flatMap(Lock.scoped("wake", { retry: hourRetry }), (lease) => Deferred.succeed(granted, lease.token))
        ).pipe(Effect.provideService(LockBackend, backend))
      )
      // The holder's heartbeat keeps it (TTL 30 s); the waiter's only other
      // attempts are the refreshes of its registration, one per ttl/3.
      yield* TestClock.adjust("25 seconds")
      assert.isFalse(yield* Deferred.isDone(granted))
      assert.strictEqual(
        (yield* control.calls).tryAcquire,
        4,
        "attempt, subscribe, attempt, refreshes at 10 s and 20 s"
      )
      yield* holder.release
      yield* Fiber.join(waiter)
      assert.isTrue((yield* Deferred.await(granted)) > holder.token)
      assert.strictEqual(yield* Clock.currentTimeMillis, 25_000, "no clock movement was needed")
      assert.strictEqual((yield* control.calls).tryAcquire, 5)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("Lock.scopedAll", () => {
  it.effect("sorts and de-duplicates the names", () =>
    Effect.gen(function* () {
      const leases = yield* Lock.scopedAll(["b", "a", "a"])
      assert.deepStrictEqual(
        leases.map((l) => l.name),
        ["a", "b"]
      )
      assert.isTrue(leases[0]!.token < leases[1]!.token, "acquired in sorted order")
      const { holders } = yield* LockBackend.inspect()
      assert.deepStrictEqual(holders.map((h) => h.name).toSorted(), ["a", "b"])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect('all or nothing: a timeout on "b" leaves "a" not held', () =>
    Effect.gen(function* () {
      const rival = yield* Lock.scoped("b")
      const fiber = yield* Effect.forkChild(Effect.scoped(Lock.scopedAll(["b", "a"], { timeout: "1 second" })))
      yield* TestClock.adjust(500)
      // Meanwhile "a" is held by the multi-lock and it waits for "b".
      const midway = yield* LockBackend.inspect()
      assert.deepStrictEqual(midway.holders.map((h) => h.name).toSorted(), ["a", "b"])
      assert.deepStrictEqual(
        midway.waiters.map((w) => w.name),
        ["b"]
      )
      yield* TestClock.adjust(500)
      const error = errorOf(yield* Fiber.await(fiber))
      assert.deepInclude(error, { _tag: "LockTimeout", name: "b" })
      const after = yield* LockBackend.inspect()
      assert.deepStrictEqual(
        after.holders.map((h) => h.owner),
        [rival.owner]
      )
      assert.deepStrictEqual(after.waiters, [])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("requireFencing", () => {
  it.effect("works on memory (strict fencing)", () =>
    Effect.gen(function* () {
      const lease = yield* Lock.scoped("fence", { requireFencing: true })
      assert.deepStrictEqual(yield* holdersOf("fence"), [{ owner: lease.owner, token: lease.token }])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("fails with InvalidLockRequest on a best-effort backend, nothing locked", () =>
    Effect.gen(function* () {
      const inner = yield* LockBackend
      const bestEffort: LockBackendShape = { ...inner, guarantees: { ...inner.guarantees, fencing: "best-effort" } }
      const error = yield* Effect.flip(
        Effect.scoped(Lock.scoped("fence", { requireFencing: true })).pipe(
          Effect.provideService(LockBackend, bestEffort)
        )
      )
      assert.deepInclude(error, { _tag: "InvalidLockRequest", field: "requireFencing" })
      // Without the requirement the same backend grants.
      const lease = yield* Lock.scoped("fence").pipe(Effect.provideService(LockBackend, bestEffort))
      assert.strictEqual(lease.name, "fence")
      yield* lease.release
      yield* assertNothingLocked
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("lease: after a loss", () => {
  it.effect("no rival is granted while the lost holder's critical section still runs", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* faulty
      const entered = yield* Deferred.make<void>()
      const finish = yield* Deferred.make<void>()
      // A critical section that cannot stop at once (uninterruptible until told).
      const holder = yield* Effect.forkChild(
        Lock.withLock("safe", { ttl: "3 seconds" })(
          Effect.uninterruptible(Effect.andThen(Deferred.succeed(entered, undefined), Deferred.await(finish)))
        ).pipe(Effect.provideService(LockBackend, backend))
      )
      yield* Deferred.await(entered)
      yield* control.partition("fail")
      yield* TestClock.adjust(1_500)
      // Lost (unreachable) at ttl/2; the store becomes reachable again at once.
      yield* control.heal
      yield* TestClock.adjust(100)
      // The holder is still inside; the store must still refuse a rival.
      const rival = yield* Effect.scoped(Lock.tryScoped("safe")).pipe(
        // Let the holder finish whatever the check finds, so a failure cannot hang.
        Effect.ensuring(Deferred.succeed(finish, undefined))
      )
      assert.isTrue(Option.isNone(rival), "a rival got in while the old holder was still running")
      const exit = yield* Fiber.await(holder)
      assert.deepInclude(errorOf(exit), { _tag: "LockLost", reason: "unreachable" })
      // Once the critical section stopped, the scope released the grant.
      assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped("safe"))))
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})
