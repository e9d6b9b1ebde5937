/**
 * Exclusive distributed locks: one holder at a time per name.
 *
 * **When to use**
 *
 * - `withLock` to run an effect while holding a lock; a lost lease interrupts
 *   it and the result fails with `LockLost`.
 * - `scoped` to hold a lock for the life of a `Scope`.
 * - `tryScoped` / `withLockIfAvailable` to do the work only if nobody holds it.
 * - `scopedAll` to hold several names at once without deadlocks.
 *
 * **Details**
 *
 * An exclusive lock on a name is the write side of the read-write lock of the
 * same name (see `ReadWriteLock`).
 *
 * @since 0.1.0
 */
import { Clock, Effect, Exit, Option, Scope } from "effect"
import * as Internal from "./internal/lease.ts"
import type { Lease } from "./Lease.ts"
import type { LockBackend } from "./LockBackend.ts"
import type { LockOptions } from "./LockConfig.ts"
import * as LockConfig from "./LockConfig.ts"
import { InvalidLockRequest, type LockError, LockLost } from "./LockError.ts"

const exclusive = (name: string, options: LockOptions | undefined) => Internal.prepare(name, "exclusive", options)

/**
 * Waits until the lock is held; the scope's finalizer releases it.
 *
 * **Gotchas**
 *
 * - With `onLost: "interrupt"` (the default) a lost lease interrupts the fiber
 *   that ran `Lock.scoped`; `lease.lost` says why. Prefer `withLock` to get the
 *   loss as a typed `LockLost` failure of the critical section.
 * - That fiber must be the one that goes on to use the lease. Wrapped in
 *   `Effect.timeout`, `Effect.race` or a concurrent `Effect.all`, the
 *   acquisition runs in a short-lived fiber of its own, which a later loss
 *   cannot usefully interrupt: use the `timeout` option instead, or
 *   `onLost: "ignore"` and watch `lease.lost`.
 *
 * @since 0.1.0
 */
export const scoped = (
  name: string,
  options?: LockOptions
): Effect.Effect<Lease, LockError, LockBackend | Scope.Scope> => Internal.held(exclusive(name, options))

/**
 * One attempt, no waiting: `Some(lease)` if granted, `None` if held by
 * someone else.
 *
 * @since 0.1.0
 */
export const tryScoped = (
  name: string,
  options?: LockOptions
): Effect.Effect<Option.Option<Lease>, LockError, LockBackend | Scope.Scope> =>
  Internal.attemptOnce(exclusive(name, options))

/**
 * Runs `effect` inside the lease: interrupted if the lease is lost (unless
 * `onLost: "ignore"`), in which case the result fails with `LockLost`.
 *
 * @since 0.1.0
 */
export const runHeld: <A, E, R>(
  lease: Lease,
  effect: Effect.Effect<A, E, R>,
  onLost: LockConfig.OnLost | undefined
) => Effect.Effect<A, E | LockLost, R> = Internal.runHeld

/**
 * Runs `effect` while holding the lock, waiting for it first. A lost lease
 * interrupts `effect` and the result fails with `LockLost` (unless
 * `onLost: "ignore"`). Resources `effect` opens in its `Scope` are closed
 * before the lock is released.
 *
 * @since 0.1.0
 */
export const withLock =
  (name: string, options?: LockOptions) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Internal.withWaiting(exclusive(name, options))(effect)

/**
 * Runs `effect` only if the lock is free now: `Some(result)`, or `None`
 * without running it.
 *
 * @since 0.1.0
 */
export const withLockIfAvailable =
  (name: string, options?: LockOptions) =>
  <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ): Effect.Effect<Option.Option<A>, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Internal.withHeld(exclusive(name, options), false)(effect)

/**
 * Holds several names at once, all or nothing. Names are acquired one by one
 * in a canonical (sorted, de-duplicated) order, so two callers locking
 * overlapping sets in any order cannot deadlock. On failure every name taken
 * so far is released before the error returns. `timeout` bounds the whole.
 *
 * @since 0.1.0
 */
export const scopedAll = (
  names: Iterable<string>,
  options?: LockOptions
): Effect.Effect<ReadonlyArray<Lease>, LockError, LockBackend | Scope.Scope> =>
  Effect.gen(function* () {
    const sorted = [...new Set(names)].toSorted()
    if (sorted.length === 0) return yield* new InvalidLockRequest({ field: "names", reason: "must not be empty" })
    for (const name of sorted) yield* LockConfig.validateName(name)
    const resolved = yield* LockConfig.resolve(options)
    const parent = yield* Scope.Scope
    const child = yield* Scope.fork(parent, "sequential")
    const started = yield* Clock.currentTimeMillis
    const acquireAll = Effect.forEach(sorted, (name) =>
      Effect.gen(function* () {
        const elapsed = (yield* Clock.currentTimeMillis) - started
        const timeoutMillis =
          resolved.timeoutMillis === undefined ? undefined : Math.max(0, resolved.timeoutMillis - elapsed)
        const lease = yield* Internal.acquire({ name, mode: "exclusive", permits: 1, limit: 1 }, resolved, {
          wait: true,
          interruptHolder: true,
          timeoutMillis
        })
        return Option.getOrThrow(lease)
      })
    )
    return yield* Scope.provide(acquireAll, child).pipe(
      Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : Scope.close(child, exit)))
    )
  })
