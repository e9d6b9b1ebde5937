/**
 * The acquire loop and the lease state machine, shared by every backend.
 *
 * Acquire: validate, one attempt; when contended, subscribe to the name's
 * change signal, attempt again (a release between the first attempt and the
 * subscription is not missed), then wait for the signal raced against the
 * retry schedule. The wait runs under `restore` inside `uninterruptibleMask`;
 * the lease scope and its release finalizer are set up with no interruption
 * point after the grant. Any exit of the wait other than a grant removes
 * whatever the owner might hold or have queued (a compare-and-delete on the
 * owner id, safe when nothing was granted).
 *
 * Lease: Held -> Lost(reason) | Released. A heartbeat fiber extends every
 * `heartbeat` by compare-and-swap; transient failures are retried with capped
 * backoff until half the TTL has passed since the last successful extension
 * was sent, then the lease is lost (`unreachable`) before the store could
 * grant it to anyone else. A failed CAS means `expired` or `stolen`.
 */
import {
  Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Metric,
  Option,
  Pull,
  Schedule,
  Scope,
  Tracer
} from "effect"
import type { Lease, LeaseState } from "../Lease.ts"
import { LockBackend, type LockBackendShape, type LockMode } from "../LockBackend.ts"
import * as LockConfig from "../LockConfig.ts"
import {
  InvalidLockRequest,
  type LockBackendUnavailable,
  type LockError,
  LockLost,
  LockNotHeld,
  LockTimeout,
  type LostReason
} from "../LockError.ts"
import * as LockMetrics from "../LockMetrics.ts"

/** What is being acquired. */
export interface Spec {
  readonly name: string
  readonly mode: LockMode
  readonly permits: number
  readonly limit: number
}

/** How it is being acquired. */
export interface How {
  /** Wait (queue, retry) until granted, or a single attempt. */
  readonly wait: boolean
  /** Interrupt the acquiring fiber on loss when `onLost` is `"interrupt"`. */
  readonly interruptHolder: boolean
  /** Overrides the options' timeout (used by multi-lock for its overall deadline). */
  readonly timeoutMillis?: number | undefined
}

// Attributed metric handles, made once per attribute set (they are on the hot path).
const handles = new Map<string, Metric.Metric<number, unknown>>()
const counted = (metric: Metric.Metric<number, unknown>, attributes: Record<string, string>) => {
  const key = `${metric.id}|${Object.values(attributes).join("|")}`
  let handle = handles.get(key)
  if (handle === undefined) {
    handle = Metric.withAttributes(metric, attributes)
    handles.set(key, handle)
  }
  return Metric.update(handle, 1)
}

// Owner ids take 16 bytes each from a pool filled by the CSPRNG 4 KiB at a
// time: one `getRandomValues` call per acquisition costs more than the rest
// of an uncontended in-memory grant.
const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"))
const pool = new Uint8Array(4096)
let poolOffset = pool.length

/** `<owner id>/<128 random bits>`: unique per acquisition and unguessable. */
export const makeOwner = (ownerId: string): string => {
  if (poolOffset + 16 > pool.length) {
    crypto.getRandomValues(pool)
    poolOffset = 0
  }
  let id = ""
  for (let i = poolOffset; i < poolOffset + 16; i++) id += HEX[pool[i]!]
  // Never hand out the same bytes twice.
  pool.fill(0, poolOffset, poolOffset + 16)
  poolOffset += 16
  return `${ownerId}/${id}`
}

/** A validated request: what to acquire, with which options. */
export interface Prepared {
  readonly spec: Spec
  readonly resolved: LockConfig.ResolvedOptions
}

/** Validates the name and the options of a one-permit hold (exclusive or shared). */
export const prepare = (
  name: string,
  mode: "exclusive" | "shared",
  options: LockConfig.LockOptions | undefined
): Effect.Effect<Prepared, InvalidLockRequest> =>
  Effect.map(Effect.all([LockConfig.validateName(name), LockConfig.resolve(options)]), ([valid, resolved]) => ({
    spec: { name: valid, mode, permits: 1, limit: 1 },
    resolved
  }))

/** Waits for the hold; released when the scope closes. */
export const held = (prepared: Effect.Effect<Prepared, InvalidLockRequest>) =>
  Effect.flatMap(prepared, ({ resolved, spec }) =>
    Effect.map(acquire(spec, resolved, { wait: true, interruptHolder: true }), Option.getOrThrow)
  )

/** One attempt at the hold. */
export const attemptOnce = (prepared: Effect.Effect<Prepared, InvalidLockRequest>) =>
  Effect.flatMap(prepared, ({ resolved, spec }) => acquire(spec, resolved, { wait: false, interruptHolder: true }))

/**
 * Runs `effect` inside the lease: interrupted if the lease is lost (unless
 * `onLost: "ignore"`), in which case the result fails with `LockLost`.
 */
export const runHeld = <A, E, R>(
  lease: Lease,
  effect: Effect.Effect<A, E, R>,
  onLost: LockConfig.OnLost | undefined
): Effect.Effect<A, E | LockLost, R> =>
  onLost === "ignore" ? effect : Effect.raceFirst(effect, Effect.flatMap(lease.lost, Effect.fail))

/** Runs `effect` holding the lease, waiting for it first. */
export const withWaiting =
  (prepared: Effect.Effect<Prepared, InvalidLockRequest>) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Effect.map(withHeld(prepared, true)(effect), Option.getOrThrow)

/** Runs `effect` holding the lease (waiting for it first, or only if free now). */
export const withHeld =
  (prepared: Effect.Effect<Prepared, InvalidLockRequest>, wait: boolean) =>
  <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ): Effect.Effect<Option.Option<A>, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Effect.scoped(
      Effect.flatMap(prepared, ({ resolved, spec }) =>
        Effect.flatMap(
          acquire(spec, resolved, { wait, interruptHolder: false }),
          Option.match({
            onNone: () => Effect.succeedNone,
            onSome: (lease) => Effect.asSome(runHeld(lease, effect, resolved.onLost))
          })
        )
      )
    )

/**
 * Runs an effect in a span named `name`, unless the tracer in use is Effect's
 * built-in one: without a tracer installed the span would reach nobody, and
 * it costs on every lease's path.
 */
const traced =
  (name: string, attributes: () => Record<string, unknown>) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.withFiber((fiber) =>
      fiber.getRef(Tracer.Tracer) === Tracer.nativeTracer
        ? effect
        : Effect.withSpan(effect, name, { attributes: attributes(), captureStackTrace: false })
    )

/** Upper bound of a best-effort cleanup call in a finalizer. */
const cleanupBound = (ttlMillis: number) => Math.min(ttlMillis, 5_000)

// After a failed release: again after 10 ms, then after 20 and 40 ms.
const releaseFirstRetry = Duration.millis(10)
const releaseRetry = Schedule.max([Schedule.exponential(Duration.millis(20)), Schedule.recurs(2)])

/**
 * Releases (compare-and-delete) what `owner` holds or has queued. A few quick
 * retries, bounded; if the store still cannot be reached, a detached fiber
 * keeps trying once a second for one TTL, after which the store has expired
 * the grant or registration by itself.
 */
const bestEffortRelease = (backend: LockBackendShape, name: string, owner: string, ttlMillis: number) => {
  const bound = Duration.millis(cleanupBound(ttlMillis))
  // The retry schedule is built only after a failure (this is on every lease's path).
  const retries = Effect.retry(Effect.delay(backend.release(name, owner), releaseFirstRetry), releaseRetry)
  // A backend whose calls end by their own deadlines needs no timeout of
  // ours around the first call (a race of two fibers, on every lease's path);
  // the retries after a failure are bounded either way.
  const bounded =
    backend.boundedCalls === true
      ? Effect.catch(backend.release(name, owner), () => Effect.timeout(retries, bound))
      : Effect.timeout(
          Effect.catch(backend.release(name, owner), () => retries),
          bound
        )
  return bounded.pipe(
    Effect.asVoid,
    Effect.catch(() =>
      Effect.asVoid(
        Effect.forkDetach(
          backend
            .release(name, owner)
            .pipe(
              Effect.retry(
                Schedule.max([Schedule.spaced(Duration.seconds(1)), Schedule.during(Duration.millis(ttlMillis))])
              )
            )
        )
      )
    )
  )
}

/**
 * Acquires `spec` into the current scope. `None` only when `how.wait` is
 * false and the lock was taken.
 */
export const acquire = (
  spec: Spec,
  options: LockConfig.ResolvedOptions,
  how: How
): Effect.Effect<Option.Option<Lease>, LockError, LockBackend | Scope.Scope> =>
  Effect.gen(function* () {
    const backend = yield* LockBackend
    if (options.requireFencing && backend.guarantees.fencing !== "strict") {
      return yield* new InvalidLockRequest({
        field: "requireFencing",
        reason: `the ${backend.kind} backend's fencing is ${backend.guarantees.fencing}, not strict`
      })
    }
    const scope = yield* Scope.Scope
    const owner = makeOwner(options.ownerId)
    const holder = how.interruptHolder && options.onLost === "interrupt" ? Fiber.getCurrent() : undefined
    const startedAt = yield* Clock.currentTimeMillis
    const modeAttr = { mode: spec.mode }

    return yield* Effect.uninterruptibleMask((restore) =>
      Effect.gen(function* () {
        const obtained = yield* restore(obtain(backend, spec, owner, options, how)).pipe(
          // A success is a grant (now owned by the lease) or a clean "taken"
          // answer to a single attempt (nothing queued). Any other exit may
          // have left a grant or a waiter registration on the store.
          Effect.onExit((exit) =>
            Exit.isSuccess(exit) ? Effect.void : bestEffortRelease(backend, spec.name, owner, options.ttlMillis)
          ),
          Effect.tapCause((cause) => {
            const failure = Cause.findErrorOption(cause)
            const result = Option.isNone(failure)
              ? "interrupted"
              : failure.value._tag === "LockTimeout"
                ? "timeout"
                : failure.value._tag === "InvalidLockRequest"
                  ? "invalid"
                  : "unavailable"
            return counted(LockMetrics.acquisitions, { ...modeAttr, result })
          })
        )
        if (Option.isNone(obtained)) {
          yield* counted(LockMetrics.acquisitions, { ...modeAttr, result: "contended" })
          return Option.none()
        }
        const now = yield* Clock.currentTimeMillis
        yield* counted(LockMetrics.acquisitions, { ...modeAttr, result: "acquired" })
        yield* Metric.update(LockMetrics.waitTime, now - startedAt)
        const lease = yield* makeLease(backend, scope, spec, owner, options, obtained.value, holder)
        return Option.some(lease)
      })
    )
  }).pipe(
    traced(LockMetrics.spans.acquire, () => ({
      "lock.name": spec.name,
      "lock.mode": spec.mode,
      "lock.permits": spec.permits
    }))
  )

interface Obtained {
  readonly token: bigint
  /** The backend's own loss signal for this grant, if it has one. */
  readonly lost: Effect.Effect<LostReason> | undefined
  /** When the granting request was sent (less the grant's `leaseAge`): the lease's TTL counts from here. */
  readonly sentAt: number
}

/** The attempt / subscribe / wait loop. Runs interruptibly. */
const obtain = (
  backend: LockBackendShape,
  spec: Spec,
  owner: string,
  options: LockConfig.ResolvedOptions,
  how: How
): Effect.Effect<Option.Option<Obtained>, LockError> => {
  let attempts = 0
  const failures: Array<LockBackendUnavailable> = []
  let lastFailure: LockBackendUnavailable | undefined
  const request = {
    name: spec.name,
    owner,
    mode: spec.mode,
    permits: spec.permits,
    limit: spec.limit,
    ttlMillis: options.ttlMillis,
    metadata: options.metadata,
    queue: how.wait
  }
  const attempt: Effect.Effect<Option.Option<Obtained>, InvalidLockRequest> = Effect.flatMap(
    Clock.currentTimeMillis,
    (sentAt) => {
      attempts++
      return backend.tryAcquire(request).pipe(
        Effect.map(
          Option.map((grant): Obtained => ({
            token: grant.token,
            lost: grant.lost,
            sentAt: sentAt - Math.max(0, grant.leaseAge ?? 0)
          }))
        ),
        Effect.tap(() => Effect.sync(() => (lastFailure = undefined))),
        Effect.catchTag("LockBackendUnavailable", (error) =>
          Effect.sync(() => {
            failures.push(error)
            lastFailure = error
            return Option.none<Obtained>()
          })
        )
      )
    }
  )

  return Effect.gen(function* () {
    const startedAt = yield* Clock.currentTimeMillis
    const timeout = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const error = new LockTimeout({
        name: spec.name,
        attempts,
        waitedMillis: now - startedAt,
        failures: [...failures]
      })
      // Keep every backend failure met on the way in the Cause, after the
      // timeout itself (`fromReasons` keeps equal failures, `combine` would not).
      const cause = Cause.fromReasons<LockError>([error, ...failures].map((e) => Cause.makeFailReason(e)))
      return yield* Effect.failCause(cause)
    })

    const loop = Effect.gen(function* () {
      const first = yield* attempt
      if (Option.isSome(first)) return first
      if (!how.wait) {
        if (lastFailure !== undefined) return yield* Effect.fail(lastFailure)
        return Option.none<Obtained>()
      }
      return yield* Effect.scoped(
        Effect.gen(function* () {
          const changed = yield* backend.subscribe(spec.name, owner).pipe(
            Effect.catch((error) =>
              Effect.sync(() => {
                failures.push(error)
                return Effect.never
              })
            )
          )
          const step = yield* Schedule.toStep(options.retry)
          const nextDelay = Effect.flatMap(Clock.currentTimeMillis, (now) =>
            step(now, lastFailure).pipe(
              Effect.map(([, duration]) => Option.some(duration)),
              Pull.catchDone(() => Effect.succeedNone)
            )
          )
          // The attempt right after subscribing is the schedule's first retry
          // (made at once: a release may have come before the subscription);
          // each later retry waits for a change signal or the previous delay.
          // Waits for a change signal or `delay`. A waiter's registration on
          // the store lives one TTL unless refreshed, so a long wait makes a
          // refresh attempt every ttl/3 (which may also be granted).
          const refreshMillis = Math.max(1, Math.floor(options.ttlMillis / 3))
          const waitFor = (delay: Duration.Duration) =>
            Effect.gen(function* () {
              const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(delay)
              while (true) {
                const remaining = deadline - (yield* Clock.currentTimeMillis)
                if (remaining <= 0) return Option.none<Obtained>()
                const signalled = yield* Effect.raceFirst(
                  Effect.as(changed, true),
                  Effect.as(Effect.sleep(Math.min(remaining, refreshMillis)), false)
                )
                if (signalled || (yield* Clock.currentTimeMillis) >= deadline) return Option.none<Obtained>()
                const refreshed = yield* attempt
                if (Option.isSome(refreshed)) return refreshed
              }
            })
          let pending = yield* nextDelay
          if (Option.isNone(pending)) return yield* timeout
          while (true) {
            const next = yield* attempt
            if (Option.isSome(next)) return next
            const following = yield* nextDelay
            if (Option.isNone(following)) return yield* timeout
            const woken = yield* waitFor(pending.value)
            if (Option.isSome(woken)) return woken
            pending = following
          }
        })
      )
    })

    const timeoutMillis = how.timeoutMillis ?? options.timeoutMillis
    return timeoutMillis === undefined || !how.wait
      ? yield* loop
      : yield* Effect.timeoutOrElse(loop, { duration: Duration.millis(timeoutMillis), orElse: () => timeout })
  })
}

const makeLease = (
  backend: LockBackendShape,
  parent: Scope.Scope,
  spec: Spec,
  owner: string,
  options: LockConfig.ResolvedOptions,
  obtained: Obtained,
  holder: Fiber.Fiber<unknown, unknown> | undefined
): Effect.Effect<Lease> =>
  Effect.gen(function* () {
    const { name } = spec
    const token = obtained.token
    const scope = yield* Scope.fork(parent, "sequential")
    const acquiredAt = yield* Clock.currentTimeMillis
    let lastOk = obtained.sentAt
    let ttlMillis = options.ttlMillis
    let status: "Held" | "Released" | (LeaseState & { readonly _tag: "Lost" }) = "Held"
    let closed = false
    // Read through a function: the status changes from other fibers, so
    // TypeScript's narrowing of the variable would be wrong.
    const readStatus = (): typeof status => status
    const lostSignal = Deferred.makeUnsafe<LockLost>()
    const modeAttr = { mode: spec.mode }
    yield* Metric.modify(LockMetrics.holders, 1)

    const leaveHeld = (now: number) =>
      Effect.all([Metric.modify(LockMetrics.holders, -1), Metric.update(LockMetrics.holdTime, now - acquiredAt)], {
        discard: true
      })

    // Bookkeeping first, then wake whoever waits on the loss: completing the
    // signal or interrupting the holder may run their continuations at once
    // (closing this lease's scope and interrupting this very fiber).
    const declareLost = (reason: LostReason) =>
      Effect.suspend(() => {
        if (status !== "Held") return Effect.void
        const error = new LockLost({ name, token, reason })
        status = { _tag: "Lost", reason, error }
        return Effect.flatMap(Clock.currentTimeMillis, leaveHeld).pipe(
          Effect.andThen(counted(LockMetrics.losses, { ...modeAttr, reason })),
          Effect.withSpan(
            LockMetrics.spans.lost,
            {
              attributes: { "lock.name": name, "lock.token": token.toString(), "lock.reason": reason }
            },
            { captureStackTrace: false }
          ),
          Effect.andThen(
            Effect.sync(() => {
              Deferred.doneUnsafe(lostSignal, Effect.succeed(error))
              if (holder !== undefined) holder.interruptUnsafe()
            })
          ),
          Effect.uninterruptible
        )
      })

    const extendOnce = (ttl: number) =>
      Effect.flatMap(Clock.currentTimeMillis, (sentAt) =>
        backend.extend(name, owner, ttl).pipe(
          Effect.tap((outcome) =>
            Effect.sync(() => {
              if (outcome === "extended") {
                lastOk = Math.max(lastOk, sentAt)
                ttlMillis = ttl
              }
            })
          ),
          Effect.tap((outcome) =>
            counted(LockMetrics.extensions, { ...modeAttr, result: outcome === "extended" ? "extended" : "lost" })
          ),
          Effect.tapError(() => counted(LockMetrics.extensions, { ...modeAttr, result: "failed" }))
        )
      )

    // Transient failures are retried with capped exponential backoff; the
    // caller bounds the whole by the loss deadline.
    const extendRetrying = (ttl: number) =>
      extendOnce(ttl).pipe(
        Effect.retry({
          schedule: Schedule.min([
            Schedule.exponential(Duration.millis(Math.max(1, Math.min(10, ttl / 100)))),
            Schedule.spaced(Duration.millis(Math.max(1, ttl / 20)))
          ]),
          while: (error) => error._tag === "LockBackendUnavailable"
        }),
        // The TTL passed the backend's checks when it was granted (or set by a
        // successful manual extend): a refusal now means the lease cannot go on.
        Effect.catchTag("InvalidLockRequest", () => Effect.succeed("expired" as const))
      )

    // The heartbeat sleeps plainly (no race per sleep: this is on every
    // lease's path); a successful manual `extend(ttl)` restarts it, so that it
    // recomputes its schedule.
    const heartbeat = Effect.gen(function* () {
      const maxHoldDeadline = options.maxHoldMillis === undefined ? Infinity : acquiredAt + options.maxHoldMillis
      while (readStatus() === "Held") {
        const now = yield* Clock.currentTimeMillis
        if (options.heartbeatMillis === undefined) {
          // No heartbeat: the lease ends at its expiry (manual `extend` moves it).
          const until = Math.min(lastOk + ttlMillis, maxHoldDeadline)
          if (now >= until) return yield* declareLost("expired")
          yield* Effect.sleep(until - now)
          continue
        }
        // The configured interval; after a manual extend to another TTL, ttl/3 of it at most.
        const interval =
          ttlMillis === options.ttlMillis
            ? options.heartbeatMillis
            : Math.min(options.heartbeatMillis, Math.max(1, Math.floor(ttlMillis / 3)))
        const nextBeat = lastOk + interval
        if (nextBeat >= maxHoldDeadline) {
          if (now < maxHoldDeadline) {
            yield* Effect.sleep(maxHoldDeadline - now)
            continue
          }
          return yield* declareLost("expired")
        }
        if (nextBeat > now) {
          yield* Effect.sleep(nextBeat - now)
          continue
        }
        // Bounded by the loss deadline, and by maxHold: the budget ends the
        // lease even while an extension is in flight.
        const lossDeadline = lastOk + ttlMillis / 2
        const deadline = Math.min(lossDeadline, maxHoldDeadline)
        const outcome = yield* extendRetrying(ttlMillis).pipe(
          Effect.timeoutOrElse({
            duration: Duration.millis(Math.max(0, deadline - now)),
            orElse: () =>
              Effect.succeed(maxHoldDeadline <= lossDeadline ? ("expired" as const) : ("unreachable" as const))
          })
        )
        if ((yield* Clock.currentTimeMillis) >= maxHoldDeadline) return yield* declareLost("expired")
        if (outcome !== "extended") return yield* declareLost(outcome)
      }
    })

    const finalize = Effect.gen(function* () {
      closed = true
      if (status === "Held") {
        status = "Released"
        yield* leaveHeld(yield* Clock.currentTimeMillis)
      }
      if (heartbeatFiber !== undefined) yield* Fiber.interrupt(heartbeatFiber)
      if (lossWatcher !== undefined) yield* Fiber.interrupt(lossWatcher)
      yield* bestEffortRelease(backend, name, owner, options.ttlMillis)
    }).pipe(
      traced(LockMetrics.spans.release, () => ({ "lock.name": name, "lock.token": token.toString() })),
      Effect.ensuring(Effect.sync(() => Deferred.doneUnsafe(finished, Effect.void)))
    )
    // Completed once the finalizer's release on the store is done: a second
    // `release` waits for it, so that after any `release` returns the store
    // holds nothing of this lease.
    const finished = Deferred.makeUnsafe<void>()

    let heartbeatFiber: Fiber.Fiber<unknown, unknown> | undefined
    let lossWatcher: Fiber.Fiber<unknown, unknown> | undefined
    yield* Scope.addFinalizer(scope, finalize)
    // After a loss the grant is not released here: the holder may still be
    // running until its interruption lands, and the store's remaining TTL is
    // exactly the margin that keeps a rival out meanwhile. The finalizer
    // releases once the scope closes, i.e. once the critical section stopped.
    heartbeatFiber = yield* Effect.forkDetach(heartbeat)
    const restartHeartbeat = Effect.suspend(() => {
      if (readStatus() !== "Held" || closed) return Effect.void
      heartbeatFiber?.interruptUnsafe()
      return Effect.map(Effect.forkDetach(heartbeat), (fiber) => {
        heartbeatFiber = fiber
      })
    })
    // A backend that learns of a loss by itself (a database session that
    // ended) reports it at once instead of at the next heartbeat.
    const backendLost = obtained.lost
    if (backendLost !== undefined) lossWatcher = yield* Effect.forkDetach(Effect.flatMap(backendLost, declareLost))

    const lease: Lease = {
      name,
      owner,
      token,
      mode: spec.mode,
      permits: spec.permits,
      acquiredAt,
      state: Effect.sync((): LeaseState =>
        status === "Held"
          ? { _tag: "Held", expiresAt: lastOk + ttlMillis }
          : status === "Released"
            ? { _tag: "Released" }
            : status
      ),
      lost: Deferred.await(lostSignal),
      extend: (ttl) =>
        Effect.suspend(
          (): Effect.Effect<void, LockLost | LockNotHeld | LockBackendUnavailable | InvalidLockRequest> => {
            const current = readStatus()
            if (current === "Released") return Effect.fail(new LockNotHeld({ name, owner, state: "released" }))
            if (current !== "Held") return Effect.fail(current.error)
            const millis = ttl === undefined ? ttlMillis : Duration.toMillis(Duration.fromInputUnsafe(ttl))
            if (!(millis > 0) || !Number.isFinite(millis)) {
              return Effect.fail(
                new InvalidLockRequest({ field: "ttl", reason: "must be a finite duration greater than zero" })
              )
            }
            return Effect.flatMap(extendOnce(millis), (outcome) => {
              if (outcome === "extended") return restartHeartbeat
              return Effect.andThen(
                declareLost(outcome),
                Effect.suspend(() => {
                  const after = readStatus()
                  return after !== "Held" && after !== "Released" ? Effect.fail(after.error) : Effect.void
                })
              )
            })
          }
        ),
      release: Effect.suspend(() => {
        // A release already under way (or done) is waited for.
        const close = closed ? Deferred.await(finished) : Scope.close(scope, Exit.void)
        if (status === "Released") {
          return Effect.andThen(close, Effect.fail(new LockNotHeld({ name, owner, state: "released" })))
        }
        const wasLost = status !== "Held"
        return wasLost ? Effect.andThen(close, Effect.fail(new LockNotHeld({ name, owner, state: "lost" }))) : close
      })
    }
    return lease
  })
