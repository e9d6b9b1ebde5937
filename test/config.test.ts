/**
 * Unit tests of option validation (`LockConfig`), of `LockBackend.layerConfig`
 * read through a `ConfigProvider`, and of the retry schedules' delays.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, ConfigProvider, Duration, Effect, Exit, Fiber, Layer, Option, Pull, Schedule } from "effect"
import { TestClock } from "effect/testing"
import {
  DistributedSemaphore,
  Lock,
  LockBackend,
  LockConfig,
  type LockError,
  MemoryBackend,
  ReadWriteLock
} from "../src/index.ts"
import { FaultyBackend } from "../src/testing/index.ts"

/** The typed error of a failed exit (fails the test otherwise). */
const errorOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail(`expected a failure, got success ${String(exit.value)}`)
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isNone(error)) return assert.fail(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return error.value
}

/**
 * Runs `acquire` through a call-counting wrapper: it must fail with
 * `InvalidLockRequest` naming `field`, without a call to the backend, and
 * leave nothing locked.
 */
const expectInvalid = <A>(field: string, acquire: Effect.Effect<A, LockError, LockBackend>) =>
  Effect.gen(function* () {
    const inner = yield* LockBackend
    const { backend, control } = yield* FaultyBackend.make(inner)
    const exit = yield* Effect.exit(Effect.provideService(acquire, LockBackend, backend))
    const error = errorOf(exit)
    assert.strictEqual(error._tag, "InvalidLockRequest", `${field}: got ${error._tag}`)
    assert.strictEqual((error as { field?: string }).field, field)
    const calls = yield* control.calls
    assert.deepStrictEqual([calls.tryAcquire, calls.subscribe], [0, 0], `${field}: the backend was called`)
    const { holders, waiters } = yield* inner.inspect()
    assert.deepStrictEqual([holders, waiters], [[], []], `${field}: something is locked`)
  })

const lock = (name: string, options?: LockConfig.LockOptions) => Effect.scoped(Lock.scoped(name, options))
const semaphore = (name: string, options: LockConfig.SemaphoreOptions) =>
  Effect.scoped(DistributedSemaphore.scoped(name, options))

/** `LockBackend.layerConfig` reading the given variables only. */
const fromEnv = (env: Record<string, string>) =>
  LockBackend.layerConfig.pipe(Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))))

const holderOf = (name: string) => Effect.map(LockBackend.inspect(name), ({ holders }) => holders[0])

/** Builds the layer from `env` and returns the backend (or the failure). */
const build = (env: Record<string, string>) =>
  Effect.exit(Effect.provide(LockBackend.use(Effect.succeed), fromEnv(env)))

/** The first `n` delays (ms) of `schedule`, or "done" once it stops. */
const delays = (schedule: LockConfig.RetrySchedule, n: number) =>
  Effect.gen(function* () {
    const step = yield* Schedule.toStep(schedule)
    const out: Array<number | "done"> = []
    let now = 0
    for (let i = 0; i < n; i++) {
      const next = yield* step(now, undefined).pipe(
        Effect.map(([, delay]) => Duration.toMillis(delay)),
        Pull.catchDone(() => Effect.succeed("done" as const))
      )
      out.push(next)
      if (next === "done") break
      now += next
    }
    return out
  })

describe("option validation", () => {
  it.effect("bad names", () =>
    Effect.gen(function* () {
      yield* expectInvalid("name", lock(""))
      yield* expectInvalid("name", lock("x".repeat(1025)))
      // 513 two-byte characters: 1,026 UTF-8 bytes, though only 513 UTF-16 units.
      yield* expectInvalid("name", lock("é".repeat(513)))
      yield* expectInvalid("name", lock("\uD800"))
      yield* expectInvalid("name", lock("ok-\uDC00-ok"))
      yield* expectInvalid("name", lock(42 as unknown as string))
      yield* expectInvalid("name", Effect.scoped(Lock.tryScoped("")))
      yield* expectInvalid("name", Lock.withLock("")(Effect.die("must not run")))
      yield* expectInvalid("name", Effect.scoped(ReadWriteLock.read("\uD800")))
      yield* expectInvalid("name", semaphore("", { limit: 1 }))
      // scopedAll validates every name before taking any.
      yield* expectInvalid("name", Effect.scoped(Lock.scopedAll(["a", "b", ""])))
      yield* expectInvalid("names", Effect.scoped(Lock.scopedAll([])))
      // Edges that are fine: exactly 1,024 bytes, a well-formed surrogate pair.
      const edge = yield* Effect.scoped(Lock.tryScoped("x".repeat(1024)))
      assert.isTrue(Option.isSome(edge))
      const emoji = yield* Effect.scoped(Lock.tryScoped("lock-\uD83D\uDD12"))
      assert.isTrue(Option.isSome(emoji))
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("bad TTL, heartbeat, timeout, maxHold, onLost", () =>
    Effect.gen(function* () {
      yield* expectInvalid("ttl", lock("t", { ttl: 0 }))
      yield* expectInvalid("ttl", lock("t", { ttl: -5 }))
      yield* expectInvalid("ttl", lock("t", { ttl: Duration.millis(-1) }))
      yield* expectInvalid("ttl", lock("t", { ttl: Duration.infinity }))
      yield* expectInvalid("ttl", lock("t", { ttl: "soon" as Duration.Input }))
      yield* expectInvalid("heartbeat", lock("t", { ttl: "1 second", heartbeat: "1 second" }))
      yield* expectInvalid("heartbeat", lock("t", { ttl: "1 second", heartbeat: "501 millis" }))
      // A beat at ttl/2 is due exactly when the lease is declared lost.
      yield* expectInvalid("heartbeat", lock("t", { ttl: "1 second", heartbeat: "500 millis" }))
      yield* expectInvalid("heartbeat", lock("t", { ttl: "1 second", heartbeat: 0 }))
      yield* expectInvalid("timeout", lock("t", { timeout: -1 }))
      yield* expectInvalid("maxHold", lock("t", { maxHold: 0 }))
      yield* expectInvalid("onLost", lock("t", { onLost: "retry" as LockConfig.OnLost }))
      // The bounds themselves are fine.
      const lease = yield* Lock.scoped("t", { ttl: "1 second", heartbeat: "499 millis", timeout: 0 })
      assert.deepStrictEqual(yield* lease.state, { _tag: "Held", expiresAt: 1_000 })
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("bad limits, permits and metadata", () =>
    Effect.gen(function* () {
      yield* expectInvalid("limit", semaphore("s", { limit: 0 }))
      yield* expectInvalid("limit", semaphore("s", { limit: -1 }))
      yield* expectInvalid("limit", semaphore("s", { limit: 1.5 }))
      yield* expectInvalid("limit", semaphore("s", { limit: Number.NaN }))
      yield* expectInvalid("permits", semaphore("s", { limit: 2, permits: 0 }))
      yield* expectInvalid("permits", semaphore("s", { limit: 2, permits: 3 }))
      yield* expectInvalid("permits", semaphore("s", { limit: 2, permits: 0.5 }))
      yield* expectInvalid("metadata", lock("m", { metadata: { a: "ok", b: 1 as unknown as string } }))
      yield* expectInvalid("metadata", lock("m", { metadata: { big: "x".repeat(8_192) } }))
      // Metadata within bounds is stored with the grant.
      yield* Lock.scoped("m", { metadata: { job: "nightly" } })
      assert.deepStrictEqual((yield* LockBackend.inspect("m")).holders[0]?.metadata, { job: "nightly" })
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})

describe("LockBackend.layerConfig", () => {
  it.effect("defaults: the memory backend, a 30 s TTL, the host:pid owner id", () =>
    Effect.gen(function* () {
      const backend = yield* LockBackend
      assert.strictEqual(backend.kind, "memory")
      const lease = yield* Lock.scoped("cfg")
      assert.isTrue(lease.owner.startsWith(`${LockConfig.defaultOwnerId()}/`), lease.owner)
      const holder = yield* holderOf("cfg")
      assert.strictEqual(holder!.expiresAt! - holder!.acquiredAt, 30_000)
      // The default heartbeat (ttl / 3) keeps it.
      yield* TestClock.adjust("2 minutes")
      assert.strictEqual((yield* lease.state)._tag, "Held")
    }).pipe(Effect.provide(fromEnv({})))
  )

  it.effect("LOCK_PROVIDER is trimmed and case-insensitive", () =>
    Effect.gen(function* () {
      assert.strictEqual((yield* LockBackend).kind, "memory")
    }).pipe(Effect.provide(fromEnv({ LOCK_PROVIDER: " Memory " })))
  )

  it.effect("an unknown LOCK_PROVIDER fails with InvalidLockRequest naming LOCK_PROVIDER", () =>
    Effect.gen(function* () {
      const exit = yield* build({ LOCK_PROVIDER: "nope" })
      const error = errorOf(exit)
      assert.deepInclude(error, { _tag: "InvalidLockRequest", field: "LOCK_PROVIDER" })
      assert.include((error as { reason: string }).reason, "nope")
      assert.include((error as { reason: string }).reason, "memory", "the available providers are listed")
    })
  )

  it.effect("bad defaults fail with InvalidLockRequest or ConfigError", () =>
    Effect.gen(function* () {
      assert.deepInclude(errorOf(yield* build({ LOCK_DEFAULT_TTL: "0 millis" })), {
        _tag: "InvalidLockRequest",
        field: "LOCK_DEFAULT_TTL"
      })
      assert.deepInclude(errorOf(yield* build({ LOCK_RETRY_MAX_ATTEMPTS: "0" })), {
        _tag: "InvalidLockRequest",
        field: "LOCK_RETRY_MAX_ATTEMPTS"
      })
      assert.strictEqual(errorOf(yield* build({ LOCK_RETRY_MAX_ATTEMPTS: "many" }))._tag, "ConfigError")
      assert.strictEqual(errorOf(yield* build({ LOCK_DEFAULT_TTL: "soon" }))._tag, "ConfigError")
    })
  )

  it.effect("LOCK_DEFAULT_TTL and LOCK_OWNER_ID take effect", () =>
    Effect.gen(function* () {
      const lease = yield* Lock.scoped("cfg")
      assert.isTrue(lease.owner.startsWith("svc-a/"), lease.owner)
      assert.match(lease.owner, /^svc-a\/[0-9a-f]{32}$/)
      const holder = yield* holderOf("cfg")
      assert.strictEqual(holder?.owner, lease.owner)
      assert.strictEqual(holder!.expiresAt! - holder!.acquiredAt, 5_000)
      assert.deepStrictEqual(yield* lease.state, { _tag: "Held", expiresAt: lease.acquiredAt + 5_000 })
      // An explicit ttl still wins over the default.
      yield* Lock.scoped("cfg2", { ttl: "2 seconds" })
      const other = yield* holderOf("cfg2")
      assert.strictEqual(other!.expiresAt! - other!.acquiredAt, 2_000)
    }).pipe(Effect.provide(fromEnv({ LOCK_DEFAULT_TTL: "5 seconds", LOCK_OWNER_ID: "svc-a" })))
  )

  it.effect("LOCK_RETRY_MAX_ATTEMPTS=2: a contended Lock.scoped fails with LockTimeout after 2 attempts", () =>
    Effect.gen(function* () {
      const inner = yield* LockBackend
      const { backend, control } = yield* FaultyBackend.make(inner)
      yield* Lock.scoped("contended")
      const waiter = yield* Effect.forkChild(
        Effect.scoped(Lock.scoped("contended")).pipe(Effect.provideService(LockBackend, backend))
      )
      yield* TestClock.adjust("10 seconds")
      const error = errorOf(yield* Fiber.await(waiter))
      assert.strictEqual(error._tag, "LockTimeout")
      if (error._tag !== "LockTimeout") return
      assert.strictEqual(error.attempts, (yield* control.calls).tryAcquire)
      assert.strictEqual(error.attempts, 2, `LOCK_RETRY_MAX_ATTEMPTS=2 made ${error.attempts} attempts`)
    }).pipe(Effect.provide(fromEnv({ LOCK_RETRY_MAX_ATTEMPTS: "2", LOCK_RETRY_JITTER: "false" })))
  )

  it.effect("LOCK_RETRY_INITIAL_DELAY, LOCK_RETRY_MAX_DELAY, LOCK_RETRY_JITTER shape the waits", () =>
    Effect.gen(function* () {
      const inner = yield* LockBackend
      const { backend, control } = yield* FaultyBackend.make(inner)
      const times: Array<number> = []
      yield* control.setHook((call) =>
        call.operation === "tryAcquire" && call.phase === "before"
          ? Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => times.push(now)))
          : Effect.void
      )
      yield* Lock.scoped("waits")
      const waiter = yield* Effect.forkChild(
        Effect.scoped(Lock.scoped("waits", { timeout: "1 second" })).pipe(Effect.provideService(LockBackend, backend))
      )
      yield* TestClock.adjust("1 second")
      assert.deepInclude(errorOf(yield* Fiber.await(waiter)), { _tag: "LockTimeout", waitedMillis: 1_000 })
      // Two attempts around the subscription, then waits of 100, 200, 300 (capped), 300 ms.
      assert.deepStrictEqual(times, [0, 0, 100, 300, 600, 900])
    }).pipe(
      Effect.provide(
        fromEnv({
          LOCK_RETRY_INITIAL_DELAY: "100 millis",
          LOCK_RETRY_MAX_DELAY: "300 millis",
          LOCK_RETRY_JITTER: "false"
        })
      )
    )
  )

  it.effect("layerConfig builds a fresh store per build", () =>
    Effect.gen(function* () {
      const a = yield* Effect.scoped(Lock.tryScoped("x")).pipe(Effect.provide(fromEnv({})))
      const b = yield* Effect.scoped(Lock.tryScoped("x")).pipe(Effect.provide(fromEnv({})))
      assert.isTrue(Option.isSome(a) && Option.isSome(b))
    })
  )
})

describe("retry schedules", () => {
  it.effect("retryExponential: 25, 50, 100 ... doubling, capped at max (1 s by default)", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(
        yield* delays(LockConfig.retryExponential({ jitter: false }), 9),
        [25, 50, 100, 200, 400, 800, 1_000, 1_000, 1_000]
      )
      assert.deepStrictEqual(
        yield* delays(LockConfig.retryExponential({ initial: "10 millis", max: "100 millis", jitter: false }), 7),
        [10, 20, 40, 80, 100, 100, 100]
      )
    })
  )

  it.effect("retryLinear: initial + step * (n - 1), capped at max", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* delays(LockConfig.retryLinear({ jitter: false }), 5), [25, 50, 75, 100, 125])
      assert.deepStrictEqual(
        yield* delays(
          LockConfig.retryLinear({ initial: "100 millis", step: "50 millis", max: "300 millis", jitter: false }),
          7
        ),
        [100, 150, 200, 250, 300, 300, 300]
      )
      // The step defaults to the initial delay.
      assert.deepStrictEqual(
        yield* delays(LockConfig.retryLinear({ initial: "40 millis", max: "1 hour", jitter: false }), 4),
        [40, 80, 120, 160]
      )
    })
  )

  it.effect("maxAttempts: the schedule allows maxAttempts - 1 retries", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* delays(LockConfig.retryExponential({ maxAttempts: 3, jitter: false }), 10), [
        25,
        50,
        "done"
      ])
      assert.deepStrictEqual(yield* delays(LockConfig.retryLinear({ maxAttempts: 4, jitter: false }), 10), [
        25,
        50,
        75,
        "done"
      ])
      assert.deepStrictEqual(yield* delays(LockConfig.retryExponential({ maxAttempts: 1, jitter: false }), 10), [
        "done"
      ])
    })
  )

  it.effect("jitter (the default) scales each delay by 0.8 to 1.2", () =>
    Effect.gen(function* () {
      const bases = [25, 50, 100, 200, 400, 800, 1_000, 1_000]
      for (let run = 0; run < 20; run++) {
        const exponential = yield* delays(LockConfig.retryExponential(), bases.length)
        exponential.forEach((delay, i) => {
          assert.isNumber(delay)
          assert.isAtLeast(delay as number, bases[i]! * 0.8 - 1e-9)
          assert.isAtMost(delay as number, bases[i]! * 1.2 + 1e-9)
        })
        const [linear] = yield* delays(LockConfig.retryLinear({ initial: "100 millis" }), 1)
        assert.isAtLeast(linear as number, 80 - 1e-9)
        assert.isAtMost(linear as number, 120 + 1e-9)
      }
    })
  )

  it.effect("the default retry of LockDefaults is the jittered exponential", () =>
    Effect.gen(function* () {
      const defaults = yield* LockConfig.LockDefaults
      assert.strictEqual(Duration.toMillis(defaults.ttl), 30_000)
      const [first, second] = yield* delays(defaults.retry, 2)
      assert.isAtLeast(first as number, 20 - 1e-9)
      assert.isAtMost(first as number, 30 + 1e-9)
      assert.isAtLeast(second as number, 40 - 1e-9)
      assert.isAtMost(second as number, 60 + 1e-9)
    })
  )
})
