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
import { runHeld } from "./Lock.ts"
import type { LockBackend, LockMode } from "./LockBackend.ts"
import type { LockOptions } from "./LockConfig.ts"
import type { LockError } from "./LockError.ts"

const spec = (name: string, mode: LockMode): Internal.Spec => ({ name, mode, permits: 1, limit: 1 })

const scopedMode = (mode: LockMode) => (name: string, options?: LockOptions) =>
  Effect.flatMap(Internal.prepare(name, options), ([valid, resolved]) =>
    Effect.map(Internal.acquire(spec(valid, mode), resolved, { wait: true, interruptHolder: true }), Option.getOrThrow)
  )

const withMode =
  (mode: LockMode) =>
  (name: string, options?: LockOptions) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> =>
    Effect.scoped(
      Effect.flatMap(Internal.prepare(name, options), ([valid, resolved]) =>
        Effect.flatMap(Internal.acquire(spec(valid, mode), resolved, { wait: true, interruptHolder: false }), (lease) =>
          runHeld(Option.getOrThrow(lease), effect, resolved.onLost)
        )
      )
    )

/**
 * Waits for a read (shared) lease held until the scope closes.
 *
 * @since 0.1.0
 */
export const read: (name: string, options?: LockOptions) => Effect.Effect<Lease, LockError, LockBackend | Scope.Scope> =
  scopedMode("shared")

/**
 * Waits for the write (exclusive) lease held until the scope closes.
 *
 * @since 0.1.0
 */
export const write: (
  name: string,
  options?: LockOptions
) => Effect.Effect<Lease, LockError, LockBackend | Scope.Scope> = scopedMode("exclusive")

/**
 * One attempt at a read lease: `None` if a writer holds or waits.
 *
 * @since 0.1.0
 */
export const tryRead = (
  name: string,
  options?: LockOptions
): Effect.Effect<Option.Option<Lease>, LockError, LockBackend | Scope.Scope> =>
  Effect.flatMap(Internal.prepare(name, options), ([valid, resolved]) =>
    Internal.acquire(spec(valid, "shared"), resolved, { wait: false, interruptHolder: true })
  )

/**
 * Runs `effect` holding a read lease.
 *
 * @since 0.1.0
 */
export const withRead: (
  name: string,
  options?: LockOptions
) => <A, E, R>(
  effect: Effect.Effect<A, E, R>
) => Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> = withMode("shared")

/**
 * Runs `effect` holding the write lease.
 *
 * @since 0.1.0
 */
export const withWrite: (
  name: string,
  options?: LockOptions
) => <A, E, R>(
  effect: Effect.Effect<A, E, R>
) => Effect.Effect<A, E | LockError, Exclude<R, Scope.Scope> | LockBackend> = withMode("exclusive")
