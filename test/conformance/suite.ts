/**
 * The conformance suite: one backend-agnostic set of tests that every backend
 * runs, unchanged. A backend adds one call:
 *
 * ```ts
 * conformance({ name: "memory", layer: MemoryBackend.layer })
 * ```
 *
 * Most tests run on the live clock with short TTLs and wait on signals, never
 * on fixed sleeps; the partition test runs on `TestClock`. After every test the
 * suite checks that nothing under the test's names is held or queued, plus
 * the backend's own server-side check (`leakCheck`).
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Layer, Option, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import {
  DistributedSemaphore,
  type Lease,
  Lock,
  LockBackend,
  type LockBackendShape,
  LockConfig,
  ReadWriteLock
} from "../../src/index.ts"
import { FaultyBackend, FencedResource } from "../../src/testing/index.ts"
import { grantRequest } from "../support/grantRequest.ts"

export interface ConformanceOptions {
  readonly name: string
  /** The backend under test; built afresh for every test. */
  readonly layer: Layer.Layer<LockBackend, unknown>
  /** TTL of the expiry tests (default 600 ms). Backends with a TTL floor raise it. */
  readonly ttlMillis?: number
  /** A server-side leak check run after every test (pg_locks, Redis keys, etcd leases...). */
  readonly leakCheck?: (prefix: string) => Effect.Effect<void, unknown, LockBackend>
}

const runId = Math.random().toString(36).slice(2, 8)
let counter = 0

/** A unique name per test, under a per-run prefix. */
const freshPrefix = () => `conf-${runId}-${counter++}`

/** A long retry: any handover that happens is a signal, not a retry. */
const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

/**
 * A view of the backend that reports its calls, to await "the waiter is now
 * registered and subscribed" instead of sleeping.
 */
const observed = (inner: LockBackendShape) =>
  Effect.gen(function* () {
    const { backend, control } = yield* FaultyBackend.make(inner)
    const pending: Array<{
      readonly match: (call: FaultyBackend.CallInfo) => boolean
      readonly done: Deferred.Deferred<void>
    }> = []
    yield* control.setHook((call) =>
      Effect.sync(() => {
        for (let i = pending.length - 1; i >= 0; i--) {
          const entry = pending[i]!
          if (entry.match(call)) {
            Deferred.doneUnsafe(entry.done, Effect.void)
            pending.splice(i, 1)
          }
        }
      })
    )
    /** Completes after the n-th (1-based, counted from now) call of `operation` has answered. */
    const afterCalls = (operation: FaultyBackend.Operation, n: number) =>
      Effect.sync(() => {
        const done = Deferred.makeUnsafe<void>()
        let seen = 0
        pending.push({
          match: (call) => call.operation === operation && call.phase === "after" && ++seen === n,
          done
        })
        return Deferred.await(done)
      })
    return { backend, control, afterCalls }
  })

/** The contended waiter is registered: its attempt after subscribing has answered. */
const waitingRegistered = (
  afterCalls: (op: FaultyBackend.Operation, n: number) => Effect.Effect<Effect.Effect<void>>
) => afterCalls("tryAcquire", 2)

const expectInvalid = (field: string, effect: Effect.Effect<unknown, unknown, LockBackend | Scope.Scope>) =>
  Effect.gen(function* () {
    const error = yield* Effect.flip(Effect.scoped(effect))
    assert.deepInclude(error as object, { _tag: "InvalidLockRequest", field })
  })

/** A grant request for the contract checks. */
const request = grantRequest

const nothingLeft = (prefix: string, options: ConformanceOptions) =>
  Effect.gen(function* () {
    const { holders, waiters } = yield* LockBackend.inspect()
    const mine = (n: string) => n.startsWith(prefix)
    assert.deepStrictEqual(
      holders.filter((h) => mine(h.name)).map((h) => h.name),
      [],
      "holders left behind"
    )
    assert.deepStrictEqual(
      waiters.filter((w) => mine(w.name)).map((w) => w.name),
      [],
      "waiters left behind"
    )
    if (options.leakCheck !== undefined) yield* options.leakCheck(prefix)
  })

export const conformance = (options: ConformanceOptions): void => {
  const ttl = options.ttlMillis ?? 600

  /** A live-clock test with a fresh backend, a unique name prefix, and the leak check after it. */
  const live = (title: string, body: (prefix: string) => Effect.Effect<void, unknown, LockBackend | Scope.Scope>) =>
    it.live(title, () => {
      const prefix = freshPrefix()
      return Effect.scoped(body(prefix)).pipe(
        Effect.andThen(nothingLeft(prefix, options)),
        Effect.provide(options.layer)
      )
    })

  describe(`conformance: ${options.name}`, () => {
    describe("backend contract (primitive operations)", () => {
      live("grants are idempotent per owner; release and extend are compare-and-swap on the owner", (prefix) =>
        Effect.gen(function* () {
          const backend = yield* LockBackend
          const name = `${prefix}-cas`
          const first = yield* backend.tryAcquire(request(name, "owner-a", { metadata: { job: "x" } }))
          assert.isTrue(Option.isSome(first))
          const again = yield* backend.tryAcquire(request(name, "owner-a"))
          assert.deepStrictEqual(again, first, "a repeated request gets the same grant")
          assert.isTrue(Option.isNone(yield* backend.tryAcquire(request(name, "owner-b"))))
          assert.isFalse(yield* backend.release(name, "owner-b"), "another owner's release removes nothing")
          assert.include(["expired", "stolen"], yield* backend.extend(name, "owner-b", 10_000))
          const { holders } = yield* backend.inspect(name)
          assert.strictEqual(holders.length, 1)
          assert.deepInclude(holders[0]!, { owner: "owner-a", mode: "exclusive", metadata: { job: "x" } })
          assert.strictEqual(holders[0]!.token, Option.getOrThrow(first).token)
          assert.strictEqual(yield* backend.extend(name, "owner-a", 10_000), "extended")
          assert.isTrue(yield* backend.release(name, "owner-a"))
          assert.isFalse(yield* backend.release(name, "owner-a"), "a second release removes nothing")
          assert.strictEqual(yield* backend.extend(name, "owner-a", 10_000), "expired")
        })
      )

      live("subscribe reports a change made while nobody waited, and after an abandoned wait", (prefix) =>
        Effect.gen(function* () {
          const backend = yield* LockBackend
          const name = `${prefix}-sub`
          const changed = yield* backend.subscribe(name)
          yield* backend.tryAcquire(request(name, "a"))
          yield* backend.release(name, "a")
          // The release happened before anyone waited: the next wait completes at once.
          yield* changed.pipe(Effect.timeout("5 seconds"))
          // An abandoned wait must not swallow the next change.
          assert.isTrue(Option.isNone(yield* changed.pipe(Effect.timeoutOption("20 millis"))))
          yield* backend.tryAcquire(request(name, "b"))
          yield* backend.release(name, "b")
          yield* changed.pipe(Effect.timeout("5 seconds"))
        })
      )

      live("a waiter registration that is not refreshed expires and stops blocking the name", (prefix) =>
        Effect.gen(function* () {
          const backend = yield* LockBackend
          const name = `${prefix}-stale`
          yield* backend.tryAcquire(request(name, "holder", { ttlMillis: 60_000 }))
          // A waiter that registers once and then goes silent (its process died).
          assert.isTrue(
            Option.isNone(yield* backend.tryAcquire(request(name, "ghost", { queue: true, ttlMillis: ttl })))
          )
          assert.isTrue(yield* backend.release(name, "holder"))
          const changed = yield* backend.subscribe(name)
          // Newcomers queue behind the ghost until its registration expires.
          yield* Effect.repeat(
            Effect.flatMap(backend.tryAcquire(request(name, "next", { queue: true, ttlMillis: ttl })), (grant) =>
              Option.isSome(grant) ? Effect.succeed(true) : Effect.as(changed.pipe(Effect.timeoutOption(ttl)), false)
            ),
            { until: (granted) => granted, times: 20 }
          )
          const { holders, waiters } = yield* backend.inspect(name)
          assert.deepStrictEqual(
            holders.map((h) => h.owner),
            ["next"]
          )
          assert.deepStrictEqual(waiters, [])
          yield* backend.release(name, "next")
        })
      )
    })

    describe("exclusive lock", () => {
      live("50 fibers compete for one name: no overlap, tokens strictly increasing", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-hot`
          const resource = yield* FencedResource.make()
          const rounds = 3
          yield* Effect.forEach(
            Array.from({ length: 50 }, (_, i) => i),
            () =>
              Effect.repeat(
                Effect.scoped(
                  Effect.flatMap(Lock.scoped(name, { timeout: "20 seconds" }), (lease) =>
                    resource.use(lease.token, Effect.yieldNow)
                  )
                ),
                Schedule.recurs(rounds - 1)
              ),
            { concurrency: "unbounded", discard: true }
          )
          const report = yield* resource.report
          assert.strictEqual(report.entries.length, 50 * rounds)
          assert.deepStrictEqual(report.overlaps, [])
          assert.deepStrictEqual(report.rejected, [])
          assert.strictEqual(report.maxConcurrent, 1)
          assert.isTrue(report.strictlyIncreasing, "tokens must strictly increase")
          assert.strictEqual(new Set(report.entries).size, report.entries.length, "no token issued twice")
        })
      )

      live("try-lock returns none while held, some after release", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-try`
          const first = yield* Lock.scoped(name)
          assert.isTrue(Option.isNone(yield* Lock.tryScoped(name)))
          assert.isTrue(Option.isNone(yield* Lock.withLockIfAvailable(name)(Effect.succeed(1))))
          yield* first.release
          const second = yield* Effect.scoped(Lock.tryScoped(name))
          assert.isTrue(Option.isSome(second))
          assert.isTrue(Option.getOrThrow(second).token > first.token)
          assert.deepStrictEqual(yield* Lock.withLockIfAvailable(name)(Effect.succeed(7)), Option.some(7))
        })
      )

      live("timeout fails with LockTimeout while held", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-timeout`
          yield* Lock.scoped(name)
          const exit = yield* Effect.exit(Effect.scoped(Lock.scoped(name, { timeout: "150 millis" })))
          assert.isTrue(Exit.isFailure(exit))
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
          assert.isTrue(Option.isSome(error))
          const value = Option.getOrThrow(error)
          assert.strictEqual(value._tag, "LockTimeout")
          if (value._tag === "LockTimeout") {
            assert.strictEqual(value.name, name)
            assert.isAtLeast(value.attempts, 1)
            assert.isAtLeast(value.waitedMillis, 150)
          }
        })
      )

      live("a release wakes a waiter by signal, not by the retry interval", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-wake`
          const inner = yield* LockBackend
          const view = yield* observed(inner)
          const holder = yield* Lock.scoped(name)
          const registered = yield* waitingRegistered(view.afterCalls)
          // The waiter's retry interval is one hour; only the release's signal can wake it in time.
          const waiter = yield* Lock.withLock(name, { retry: hourRetry, timeout: "10 seconds" })(
            Effect.succeed("woken")
          ).pipe(Effect.provideService(LockBackend, view.backend), Effect.forkChild)
          yield* registered
          yield* holder.release
          assert.strictEqual(yield* Fiber.join(waiter), "woken")
        })
      )

      live("scopedAll([a,b]) racing scopedAll([b,a]) does not deadlock", (prefix) =>
        Effect.gen(function* () {
          const a = `${prefix}-a`
          const b = `${prefix}-b`
          const resource = yield* FencedResource.make()
          const take = (names: ReadonlyArray<string>) =>
            Effect.scoped(
              Effect.flatMap(Lock.scopedAll(names, { timeout: "10 seconds" }), (leases) =>
                resource.use(leases[0]!.token, Effect.yieldNow)
              )
            )
          yield* Effect.forEach(
            Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? [a, b] : [b, a])),
            take,
            { concurrency: "unbounded", discard: true }
          )
          const report = yield* resource.report
          assert.strictEqual(report.entries.length, 20)
          assert.deepStrictEqual(report.overlaps, [])
        })
      )

      live("scopedAll is all or nothing: a timeout releases the names already taken", (prefix) =>
        Effect.gen(function* () {
          const a = `${prefix}-a`
          const b = `${prefix}-b`
          yield* Lock.scoped(b)
          const exit = yield* Effect.exit(Effect.scoped(Lock.scopedAll([b, a], { timeout: "150 millis" })))
          assert.isTrue(Exit.isFailure(exit))
          // a was taken first (sorted order) and must be free again.
          const again = yield* Effect.scoped(Lock.tryScoped(a))
          assert.isTrue(Option.isSome(again))
        })
      )
    })

    describe("read-write lock", () => {
      live("readers share, a writer excludes everyone", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-rw`
          const r1 = yield* ReadWriteLock.read(name)
          const r2 = yield* Effect.scoped(ReadWriteLock.tryRead(name))
          assert.isTrue(Option.isSome(r2), "a second reader shares")
          assert.isTrue(Option.isNone(yield* Effect.scoped(Lock.tryScoped(name))), "a writer waits for readers")
          yield* r1.release
          const w = yield* ReadWriteLock.write(name)
          assert.isTrue(
            Option.isNone(yield* Effect.scoped(ReadWriteLock.tryRead(name))),
            "a reader waits for the writer"
          )
          yield* w.release
          assert.isTrue(Option.isSome(yield* Effect.scoped(ReadWriteLock.tryRead(name))))
        })
      )

      live("a waiting writer is not starved by a stream of readers", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-starve`
          const inner = yield* LockBackend
          const view = yield* observed(inner)
          const r1 = yield* ReadWriteLock.read(name)
          const writerRegistered = yield* waitingRegistered(view.afterCalls)
          const order: Array<string> = []
          const writer = yield* ReadWriteLock.withWrite(name, { retry: hourRetry, timeout: "10 seconds" })(
            Effect.sync(() => order.push("writer"))
          ).pipe(Effect.provideService(LockBackend, view.backend), Effect.forkChild)
          yield* writerRegistered
          // New readers arrive while the writer waits: none of them may overtake it.
          assert.isTrue(
            Option.isNone(yield* Effect.scoped(ReadWriteLock.tryRead(name))),
            "tryRead must queue behind the writer"
          )
          const readers = yield* Effect.forEach(
            Array.from({ length: 10 }, (_, i) => i),
            (i) =>
              ReadWriteLock.withRead(name, { retry: hourRetry, timeout: "10 seconds" })(
                Effect.sync(() => order.push(`reader-${i}`))
              ).pipe(Effect.forkChild)
          )
          yield* r1.release
          yield* Fiber.join(writer)
          yield* Fiber.joinAll(readers)
          assert.strictEqual(order[0], "writer")
          assert.strictEqual(order.length, 11)
        })
      )
    })

    describe("semaphore", () => {
      live("never more than limit permits held", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-sem`
          const limit = 3
          const resource = yield* FencedResource.make({ capacity: limit })
          yield* Effect.forEach(
            Array.from({ length: 12 }, (_, i) => i),
            () =>
              Effect.scoped(
                Effect.flatMap(
                  DistributedSemaphore.scoped(name, { limit, permits: 1, timeout: "20 seconds" }),
                  (lease) => resource.use(lease.token, Effect.yieldNow)
                )
              ),
            { concurrency: "unbounded", discard: true }
          )
          const report = yield* resource.report
          assert.strictEqual(report.entries.length, 12)
          assert.deepStrictEqual(report.overlaps, [])
          assert.isAtMost(report.maxConcurrent, limit)
          const two = yield* DistributedSemaphore.scoped(name, { limit, permits: 2 })
          assert.strictEqual(yield* DistributedSemaphore.available(name), 1)
          assert.isTrue(
            Option.isNone(yield* Effect.scoped(DistributedSemaphore.tryScoped(name, { limit, permits: 2 })))
          )
          yield* two.release
          assert.strictEqual(yield* DistributedSemaphore.available(name, limit), limit)
        })
      )

      live("permits > limit and limit 0 are typed errors", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-sem-bad`
          const tooMany = yield* Effect.flip(Effect.scoped(DistributedSemaphore.scoped(name, { limit: 2, permits: 3 })))
          assert.strictEqual(tooMany._tag, "InvalidLockRequest")
          if (tooMany._tag === "InvalidLockRequest") assert.strictEqual(tooMany.field, "permits")
          const zero = yield* Effect.flip(Effect.scoped(DistributedSemaphore.scoped(name, { limit: 0 })))
          assert.strictEqual(zero._tag, "InvalidLockRequest")
          if (zero._tag === "InvalidLockRequest") assert.strictEqual(zero.field, "limit")
        })
      )
    })

    describe("interruption", () => {
      live("while waiting: nothing held or queued afterwards", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-int-wait`
          const inner = yield* LockBackend
          const view = yield* observed(inner)
          const holder = yield* Lock.scoped(name)
          const registered = yield* waitingRegistered(view.afterCalls)
          const waiter = yield* Effect.scoped(Lock.scoped(name, { retry: hourRetry })).pipe(
            Effect.provideService(LockBackend, view.backend),
            Effect.forkChild
          )
          yield* registered
          yield* Fiber.interrupt(waiter)
          const { waiters } = yield* LockBackend.inspect(name)
          assert.deepStrictEqual(waiters, [])
          yield* holder.release
        })
      )

      live("while holding: released when the holder is interrupted", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-int-hold`
          const held = yield* Deferred.make<void>()
          const fiber = yield* Lock.withLock(name)(
            Effect.andThen(Deferred.succeed(held, undefined), Effect.never)
          ).pipe(Effect.forkChild)
          yield* Deferred.await(held)
          assert.strictEqual((yield* LockBackend.inspect(name)).holders.length, 1)
          yield* Fiber.interrupt(fiber)
          assert.deepStrictEqual((yield* LockBackend.inspect(name)).holders, [])
        })
      )

      live("interruption injected at every backend operation leaks nothing", (prefix) =>
        Effect.gen(function* () {
          const inner = yield* LockBackend
          // Scenario: a rival holds the name; the target waits, is granted
          // when the rival releases, works, releases. The target is
          // interrupted at call k (before or after the call reaches the
          // store), for every k until a run completes without interruption.
          for (const phase of ["before", "after"] as const) {
            let completed = false
            for (let k = 0; !completed && k < 40; k++) {
              const name = `${prefix}-inject-${phase}-${k}`
              const { backend, control } = yield* FaultyBackend.make(inner)
              // Held in the test's scope; released by the hook below, or at the end of the iteration.
              const rival = yield* Lock.tryScoped(name).pipe(Effect.map(Option.getOrThrow))
              const go = yield* Deferred.make<void>()
              let target: Fiber.Fiber<unknown, unknown> | undefined
              let tries = 0
              yield* control.setHook((call) =>
                Effect.gen(function* () {
                  if (call.operation === "tryAcquire" && call.phase === "after" && ++tries === 2) {
                    // The target is registered and subscribed: let the rival go.
                    yield* Effect.forkDetach(Effect.ignore(rival.release))
                  }
                  if (call.index === k && call.phase === phase && target !== undefined) target.interruptUnsafe()
                })
              )
              target = yield* Deferred.await(go).pipe(
                Effect.andThen(
                  Effect.scoped(
                    Effect.flatMap(Lock.scoped(name, { retry: hourRetry, timeout: "10 seconds" }), (lease) =>
                      lease.extend()
                    )
                  )
                ),
                Effect.provideService(LockBackend, backend),
                Effect.forkChild
              )
              yield* Deferred.succeed(go, undefined)
              const exit = yield* Fiber.await(target)
              completed = Exit.isSuccess(exit)
              if (Exit.isFailure(exit)) {
                assert.isTrue(Cause.hasInterruptsOnly(exit.cause), `k=${k}: ${Cause.pretty(exit.cause)}`)
              }
              yield* Effect.ignore(rival.release)
              const { holders, waiters } = yield* LockBackend.inspect(name)
              assert.deepStrictEqual([holders.length, waiters.length], [0, 0], `k=${k} ${phase}: leaked`)
            }
            assert.isTrue(completed, `the ${phase} scenario never ran to completion`)
          }
        })
      )
    })

    describe("lease loss", () => {
      live(
        "a holder that stops heartbeating loses the lease at TTL; its CAS then fails; the new holder is untouched",
        (prefix) =>
          Effect.gen(function* () {
            const name = `${prefix}-expire`
            const inner = yield* LockBackend
            const { backend, control } = yield* FaultyBackend.make(inner)
            // The holder's extensions never reach the store.
            yield* control.dropExtensions(true)
            const lease = yield* Lock.scoped(name, { ttl: Duration.millis(ttl), onLost: "ignore" }).pipe(
              Effect.provideService(LockBackend, backend)
            )
            const rival = yield* Lock.scoped(name, {
              ttl: Duration.millis(ttl * 10),
              timeout: Duration.millis(ttl * 10)
            })
            assert.isTrue(rival.token > lease.token)
            yield* control.dropExtensions(false)
            const lost = yield* lease.lost
            assert.strictEqual(lost.name, name)
            assert.strictEqual(lost.token, lease.token)
            assert.include(["expired", "stolen"], lost.reason)
            assert.strictEqual((yield* lease.state)._tag, "Lost")
            const { holders } = yield* LockBackend.inspect(name)
            assert.deepStrictEqual(
              holders.map((h) => h.owner),
              [rival.owner]
            )
            assert.strictEqual((yield* rival.state)._tag, "Held")
            // Releasing the lost lease must not touch the rival's grant.
            const release = yield* Effect.flip(lease.release)
            assert.strictEqual(release._tag, "LockNotHeld")
            assert.deepStrictEqual(
              (yield* LockBackend.inspect(name)).holders.map((h) => h.owner),
              [rival.owner]
            )
          })
      )

      it.effect("partition: the holder is interrupted with LockLost before the TTL would have expired", () => {
        const prefix = freshPrefix()
        return Effect.gen(function* () {
          const name = `${prefix}-partition`
          const inner = yield* LockBackend
          const { backend, control } = yield* FaultyBackend.make(inner)
          const ttlMillis = 3_000
          const grantedAt = yield* Deferred.make<number>()
          const interruptedAt = yield* Deferred.make<number>()
          const now = Clock.currentTimeMillis
          const holder = yield* Lock.withLock(name, { ttl: Duration.millis(ttlMillis) })(
            Effect.andThen(
              Effect.flatMap(now, (t) => Deferred.succeed(grantedAt, t)),
              Effect.never
            ).pipe(Effect.onInterrupt(() => Effect.flatMap(now, (t) => Deferred.succeed(interruptedAt, t))))
          ).pipe(Effect.provideService(LockBackend, backend), Effect.forkChild)
          const start = yield* Deferred.await(grantedAt)
          yield* control.partition("hang")
          // Move the clock in small steps until the critical section is interrupted.
          const step = 50
          while (!(yield* Deferred.isDone(interruptedAt)) && (yield* now) - start < ttlMillis) {
            yield* TestClock.adjust(step)
          }
          yield* control.heal
          const exit = yield* Fiber.await(holder)
          assert.isTrue(yield* Deferred.isDone(interruptedAt), "the critical section was not interrupted")
          const lostAfter = (yield* Deferred.await(interruptedAt)) - start
          assert.isAtMost(lostAfter, ttlMillis / 2 + step, `lost after ${lostAfter} ms`)
          assert.isTrue(Exit.isFailure(exit))
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
          assert.isTrue(Option.isSome(error))
          assert.deepInclude(Option.getOrThrow(error), { _tag: "LockLost", reason: "unreachable", name })
        }).pipe(Effect.andThen(nothingLeft(prefix, options)), Effect.provide(options.layer))
      })
    })

    describe("bad input", () => {
      live("bad names, TTLs, heartbeats, limits and permits are typed errors; nothing is locked", (prefix) =>
        Effect.gen(function* () {
          yield* expectInvalid("name", Lock.scoped(""))
          yield* expectInvalid("name", Lock.scoped("x".repeat(1025)))
          yield* expectInvalid("name", Lock.scoped("é".repeat(513)))
          yield* expectInvalid("name", Lock.scoped(`${prefix}-\uD800`))
          yield* expectInvalid("ttl", Lock.scoped(`${prefix}-a`, { ttl: 0 }))
          yield* expectInvalid("ttl", Lock.scoped(`${prefix}-a`, { ttl: -5 }))
          yield* expectInvalid("heartbeat", Lock.scoped(`${prefix}-a`, { ttl: "1 second", heartbeat: "1 second" }))
          yield* expectInvalid("heartbeat", Lock.scoped(`${prefix}-a`, { ttl: "1 second", heartbeat: "501 millis" }))
          yield* expectInvalid("limit", DistributedSemaphore.scoped(`${prefix}-s`, { limit: 0 }))
          yield* expectInvalid("permits", DistributedSemaphore.scoped(`${prefix}-s`, { limit: 2, permits: 0 }))
          yield* expectInvalid("permits", DistributedSemaphore.scoped(`${prefix}-s`, { limit: 2, permits: 3 }))
          yield* expectInvalid("names", Lock.scopedAll([]))
          // A name of exactly 1,024 bytes is fine.
          const edge = `${prefix}-`.padEnd(1024, "x")
          assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(edge))))
        })
      )

      live("release twice, release after loss, extend after loss: typed errors, nothing locked", (prefix) =>
        Effect.gen(function* () {
          const name = `${prefix}-twice`
          const lease = yield* Lock.scoped(name)
          yield* lease.release
          const second = yield* Effect.flip(lease.release)
          assert.deepInclude(second, { _tag: "LockNotHeld", state: "released" })
          const extendAfterRelease = yield* Effect.flip(lease.extend())
          assert.strictEqual(extendAfterRelease._tag, "LockNotHeld")

          const inner = yield* LockBackend
          const { backend, control } = yield* FaultyBackend.make(inner)
          yield* control.dropExtensions(true)
          const doomed: Lease.Lease = yield* Lock.scoped(`${prefix}-lost`, {
            ttl: Duration.millis(ttl),
            heartbeat: false,
            onLost: "ignore"
          }).pipe(Effect.provideService(LockBackend, backend))
          const lost = yield* doomed.lost
          assert.strictEqual(lost.reason, "expired")
          const extendAfterLoss = yield* Effect.flip(doomed.extend())
          assert.deepInclude(extendAfterLoss, { _tag: "LockLost", reason: "expired" })
          const releaseAfterLoss = yield* Effect.flip(doomed.release)
          assert.deepInclude(releaseAfterLoss, { _tag: "LockNotHeld", state: "lost" })
        })
      )
    })
  })
}
