/**
 * The typed errors of effect-locks.
 *
 * **Details**
 *
 * Every error is a `Schema.TaggedError` with fields, so callers match on
 * `_tag` and fields, never on message text. Ordinary contention is not an
 * error: `tryScoped` answers `Option.none()` instead.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * Why a lease was lost.
 *
 * - `expired`: the TTL passed without an extension (or `maxHold` was reached).
 * - `stolen`: the store answered an extension with a different owner.
 * - `unreachable`: no extension succeeded for half the TTL.
 * - `connection-closed`: the session that held the lock ended.
 *
 * @since 0.1.0
 */
export const LostReason = Schema.Literals(["expired", "stolen", "unreachable", "connection-closed"])

/**
 * @since 0.1.0
 */
export type LostReason = typeof LostReason.Type

/**
 * The lock could not be acquired before the `timeout` or before the retry
 * schedule gave up.
 *
 * **Details**
 *
 * `attempts` counts grant attempts, `waitedMillis` the time spent waiting.
 * Every backend failure met on the way is kept: in `failures` and as further
 * `Fail` reasons of the effect's `Cause`, the way Go's `errors.Join` keeps them.
 *
 * @since 0.1.0
 */
export class LockTimeout extends Schema.TaggedError<LockTimeout>()("LockTimeout", {
  name: Schema.String,
  attempts: Schema.Number,
  waitedMillis: Schema.Number,
  failures: Schema.Array(Schema.Defect())
}) {
  override get message(): string {
    return (
      `lock "${this.name}" not acquired after ${this.attempts} attempt(s) in ${this.waitedMillis} ms` +
      (this.failures.length > 0 ? ` (${this.failures.length} backend failure(s) on the way)` : "")
    )
  }
}

/**
 * A held lease was lost: the critical section must stop.
 *
 * @since 0.1.0
 */
export class LockLost extends Schema.TaggedError<LockLost>()("LockLost", {
  name: Schema.String,
  token: Schema.BigInt,
  reason: LostReason
}) {
  override get message(): string {
    return `lease on "${this.name}" (token ${this.token}) lost: ${this.reason}`
  }
}

/**
 * An operation needed a lease that is not held (never held, already released,
 * or lost).
 *
 * @since 0.1.0
 */
export class LockNotHeld extends Schema.TaggedError<LockNotHeld>()("LockNotHeld", {
  name: Schema.String,
  owner: Schema.String,
  state: Schema.Literals(["released", "lost", "unknown"])
}) {
  override get message(): string {
    return `lock "${this.name}" is not held by ${this.owner} (${this.state})`
  }
}

/**
 * The backend could not be reached or failed. Transient: acquisitions and
 * heartbeats retry it.
 *
 * @since 0.1.0
 */
export class LockBackendUnavailable extends Schema.TaggedError<LockBackendUnavailable>()("LockBackendUnavailable", {
  operation: Schema.String,
  cause: Schema.Defect()
}) {
  override get message(): string {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `lock backend unavailable during ${this.operation}: ${cause}`
  }
}

/**
 * The request itself is wrong (bad name, TTL, limit, ...). Never retried.
 *
 * @since 0.1.0
 */
export class InvalidLockRequest extends Schema.TaggedError<InvalidLockRequest>()("InvalidLockRequest", {
  field: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `invalid lock request: ${this.field}: ${this.reason}`
  }
}

/**
 * Every error an effect-locks operation can fail with.
 *
 * @since 0.1.0
 */
export type LockError = LockTimeout | LockLost | LockNotHeld | LockBackendUnavailable | InvalidLockRequest
