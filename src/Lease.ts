/**
 * The value a successful acquisition returns.
 *
 * **Details**
 *
 * A lease is held from its grant until its scope closes, `release` runs, or
 * it is lost. Its `token` is the fencing token to hand to the protected
 * resource: the resource should refuse any operation carrying a token lower
 * than the highest it has seen.
 *
 * @since 0.1.0
 */
import type { Duration, Effect } from "effect"
import type { LockMode } from "./LockBackend.ts"
import type { InvalidLockRequest, LockBackendUnavailable, LockLost, LockNotHeld, LostReason } from "./LockError.ts"

/**
 * The state of a lease: `Held`, `Lost` with a reason, or `Released`.
 *
 * @since 0.1.0
 */
export type LeaseState =
  | { readonly _tag: "Held"; readonly expiresAt: number }
  | { readonly _tag: "Lost"; readonly reason: LostReason; readonly error: LockLost }
  | { readonly _tag: "Released" }

/**
 * A held lock, read lock or set of semaphore permits.
 *
 * @since 0.1.0
 */
export interface Lease {
  readonly name: string
  /** Unique per acquisition and unguessable: `<owner id>/<128 random bits>`. */
  readonly owner: string
  /** Fencing token, strictly greater than every earlier token for this name. */
  readonly token: bigint
  readonly mode: LockMode
  readonly permits: number
  /** Epoch milliseconds by `Clock`. */
  readonly acquiredAt: number
  /** The current state. `expiresAt` of `Held` is by the local `Clock`, conservative. */
  readonly state: Effect.Effect<LeaseState>
  /**
   * Extends the lease now, to `ttl` (default: the acquisition's TTL). Fails
   * with `LockLost` if the lease is lost (and marks it lost), `LockNotHeld`
   * after release, `LockBackendUnavailable` if the store did not answer.
   */
  readonly extend: (
    ttl?: Duration.Input
  ) => Effect.Effect<void, LockLost | LockNotHeld | LockBackendUnavailable | InvalidLockRequest>
  /**
   * Releases the lease now (stops the heartbeat, compare-and-delete on the
   * backend). The lock is released once: a second call changes nothing and
   * fails with `LockNotHeld` (`released`); after a loss it fails with
   * `LockNotHeld` (`lost`).
   */
  readonly release: Effect.Effect<void, LockNotHeld>
  /** Completes with the `LockLost` when the lease is lost; never completes otherwise. */
  readonly lost: Effect.Effect<LockLost>
}
