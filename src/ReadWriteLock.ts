/**
 * Read-write locks: many readers or one writer per name.
 *
 * **Details**
 *
 * A reader that arrives while a writer waits queues behind that writer, so a
 * constant stream of readers never starves writers. The write lock of a name
 * is the exclusive `Lock` of that name.
 *
 * @since 0.1.0
 */
import { Effect, Option, type Scope } from "effect"
import * as Internal from "./internal/lease.ts"
import type { Lease } from "./Lease.ts"
import type { LockBackend } from "./LockBackend.ts"
import type { LockOptions } from "./LockConfig.ts"
import type { LockError } from "./LockError.ts"

const shared = (name: string, options: LockOptions | undefined) => Internal.prepare(name, "shared", options)
const exclusive = (name: string, options: LockOptions | undefined) => Internal.prepare(name, "exclusive", options)

/**
 * Waits for a read (shared) lease held until the scope closes.
 *
 * @since 0.1.0
 */
export const read = (name: string, options?: LockOptions): Effect.Effect<Lease, LockError, LockBackend | Scope.Scope> =>
  Internal.held(shared(name, options))

/**
 * Waits for the write (exclusive) lease held until the scope closes.
 *
 * @since 0.1.0
 */
export const write = (
  name: string,
  options?: LockOptions
): Effect.Effect<Lease, LockError, LockBackend | Scope.Scope> => Internal.held(exclusive(name, options))

/**
 * One attempt at a read lease: `None` if a writer holds or waits.
 *
 * @since 0.1.0
 */
export const tryRead = (
  name: string,
  options?: LockOptions
): Effect.Effect<Option.Option<Lease>, LockError, LockBackend | Scope.Scope> =>
  Internal.attemptOnce(shared(name, options))

/**
 * Runs `effect` holding a read lease.
 *
 * @since 0.1.0
 */
export const withRead =
  (name: string, options?: LockOptions) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Internal.withWaiting(shared(name, options))(effect)

/**
 * Runs `effect` holding the write lease.
 *
 * @since 0.1.0
 */
export const withWrite =
  (name: string, options?: LockOptions) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Internal.withWaiting(exclusive(name, options))(effect)
