/**
 * Counting semaphores: at most `limit` permits held per name, across every
 * process that shares the backend.
 *
 * **Details**
 *
 * Waiters are served in order (FIFO), so a request for many permits is not
 * starved by a stream of small ones. Every holder of a name must agree on its
 * `limit`; a disagreeing request fails with `InvalidLockRequest`.
 *
 * @since 0.1.0
 */
import { Effect, Option, type Scope } from "effect"
import * as Internal from "./internal/lease.ts"
import type { Lease } from "./Lease.ts"
import { LockBackend } from "./LockBackend.ts"
import * as LockConfig from "./LockConfig.ts"
import { InvalidLockRequest, type LockBackendUnavailable, type LockError } from "./LockError.ts"

const prepare = (
  name: string,
  options: LockConfig.SemaphoreOptions
): Effect.Effect<Internal.Prepared, InvalidLockRequest> =>
  Effect.all([
    LockConfig.validateName(name),
    LockConfig.validatePermits(options?.limit, options?.permits),
    LockConfig.resolve(options)
  ]).pipe(
    Effect.map(([valid, { limit, permits }, resolved]) => ({
      spec: { name: valid, mode: "permits", permits, limit },
      resolved
    }))
  )

/**
 * Waits for `permits` (default 1) of the semaphore's `limit`, held until the
 * scope closes.
 *
 * @since 0.1.0
 */
export const scoped = (
  name: string,
  options: LockConfig.SemaphoreOptions
): Effect.Effect<Lease, LockError, LockBackend | Scope.Scope> => Internal.held(prepare(name, options))

/**
 * One attempt: `Some(lease)` if the permits are free now, else `None`.
 *
 * @since 0.1.0
 */
export const tryScoped = (
  name: string,
  options: LockConfig.SemaphoreOptions
): Effect.Effect<Option.Option<Lease>, LockError, LockBackend | Scope.Scope> =>
  Internal.attemptOnce(prepare(name, options))

/**
 * Runs `effect` holding the permits; a lost lease interrupts it and the
 * result fails with `LockLost`.
 *
 * @since 0.1.0
 */
export const withPermits =
  (name: string, options: LockConfig.SemaphoreOptions) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Internal.withWaiting(prepare(name, options))(effect)

/**
 * Permits free now. The limit is the one the current holders agreed on;
 * when nobody holds the semaphore it is `limit` (required then).
 *
 * @since 0.1.0
 */
export const available = (
  name: string,
  limit?: number
): Effect.Effect<number, LockBackendUnavailable | InvalidLockRequest, LockBackend> =>
  Effect.gen(function* () {
    yield* LockConfig.validateName(name)
    if (limit !== undefined) yield* LockConfig.validatePermits(limit, 1)
    const { holders } = yield* LockBackend.inspect(name)
    const permits = holders.filter((h) => h.mode === "permits")
    if (holders.length > permits.length) {
      return yield* new InvalidLockRequest({ field: "name", reason: `"${name}" is in use as a lock, not a semaphore` })
    }
    const known = permits[0]?.limit ?? limit
    if (known === undefined) {
      return yield* new InvalidLockRequest({ field: "limit", reason: "nobody holds the semaphore: pass its limit" })
    }
    return known - permits.reduce((sum, h) => sum + h.permits, 0)
  })
