/**
 * Options, defaults and validation for every lock kind, and the retry
 * schedules they wait with.
 *
 * **Details**
 *
 * Options are validated before anything is sent to a backend: bad input fails
 * with `InvalidLockRequest` naming the field, and nothing is locked. Defaults
 * (TTL, retry schedule, owner id) come from the `LockDefaults` reference, which
 * `LockBackend.layerConfig` fills from the environment.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Option, Schedule } from "effect"
import { InvalidLockRequest } from "./LockError.ts"

/**
 * A retry schedule for waiting acquisitions. Its input is the outcome of the
 * last attempt (`undefined` for contention, or the backend error met).
 *
 * @since 0.1.0
 */
export type RetrySchedule = Schedule.Schedule<unknown, unknown>

/**
 * What to do with the holder when its lease is lost.
 *
 * - `"interrupt"` (default): interrupt the fiber that acquired the lease.
 * - `"ignore"`: leave the holder running; it watches `lease.lost` itself.
 *
 * @since 0.1.0
 */
export type OnLost = "interrupt" | "ignore"

/**
 * Options shared by every acquisition.
 *
 * @since 0.1.0
 */
export interface LockOptions {
  /** Lease time to live. Default 30 seconds (or `LOCK_DEFAULT_TTL`). */
  readonly ttl?: Duration.Input | undefined
  /**
   * Extension interval, below `ttl / 2` (a lease is declared lost when half
   * its TTL passed without an extension, so a beat at ttl/2 could never land
   * in time); `false` for no heartbeat. Default `ttl / 3`.
   */
  readonly heartbeat?: Duration.Input | false | undefined
  /** Retry schedule while contended or while the backend fails. Default: exponential from 25 ms, capped at 1 s, jittered. */
  readonly retry?: RetrySchedule | undefined
  /** Give up with `LockTimeout` after waiting this long. Default: wait as long as `retry` goes on. */
  readonly timeout?: Duration.Input | undefined
  /** What happens to the holder when the lease is lost. Default `"interrupt"`. */
  readonly onLost?: OnLost | undefined
  /** A string map stored with the grant, visible to inspection. */
  readonly metadata?: Readonly<Record<string, string>> | undefined
  /** Extension budget: stop extending and lose the lease (`expired`) after holding it this long. */
  readonly maxHold?: Duration.Input | undefined
  /** Fail with `InvalidLockRequest` unless the backend hands out strictly increasing fencing tokens. */
  readonly requireFencing?: boolean | undefined
}

/**
 * Options of a semaphore acquisition.
 *
 * @since 0.1.0
 */
export interface SemaphoreOptions extends LockOptions {
  /** How many permits the semaphore has in all. Every holder must agree on it. */
  readonly limit: number
  /** How many permits this acquisition takes. Default 1. */
  readonly permits?: number | undefined
}

/**
 * Process-wide defaults, read from the context (see `LockBackend.layerConfig`).
 *
 * @since 0.1.0
 */
export interface LockDefaultsShape {
  readonly ttl: Duration.Duration
  readonly retry: RetrySchedule
  /** Prefix of every owner id: names the process in inspection. */
  readonly ownerId: string
}

/**
 * The default retry schedule: exponential from `initial` (25 ms), doubling,
 * capped at `max` (default 1 s, or `initial` if longer), jittered (each delay
 * scaled by 0.8 to 1.2). `maxAttempts` counts every attempt, the first included.
 *
 * @since 0.1.0
 */
export const retryExponential = (options?: {
  readonly initial?: Duration.Input | undefined
  readonly max?: Duration.Input | undefined
  readonly jitter?: boolean | undefined
  readonly maxAttempts?: number | undefined
}): RetrySchedule => {
  const initial = options?.initial ?? Duration.millis(25)
  const capped = Schedule.min([Schedule.exponential(initial, 2), Schedule.spaced(options?.max ?? defaultMax(initial))])
  return finishRetry(capped, options)
}

/**
 * A linear retry schedule: `initial`, `initial + step`, `initial + 2 step`, ...
 * capped at `max` (default 1 s, or `initial` if longer), jittered unless
 * `jitter: false`.
 *
 * @since 0.1.0
 */
export const retryLinear = (options?: {
  readonly initial?: Duration.Input | undefined
  readonly step?: Duration.Input | undefined
  readonly max?: Duration.Input | undefined
  readonly jitter?: boolean | undefined
  readonly maxAttempts?: number | undefined
}): RetrySchedule => {
  const initial = Duration.toMillis(options?.initial ?? Duration.millis(25))
  const step = Duration.toMillis(options?.step ?? options?.initial ?? Duration.millis(25))
  const max = Duration.toMillis(options?.max ?? defaultMax(initial))
  const linear = Schedule.forever.pipe(
    Schedule.modifyDelay(({ attempt }) =>
      Effect.succeed(Duration.millis(Math.min(max, initial + step * (attempt - 1))))
    )
  )
  return finishRetry(linear, options)
}

/** The default cap: 1 s, or the initial delay when that is longer (never cap below it). */
const defaultMax = (initial: Duration.Input): Duration.Duration =>
  Duration.max(Duration.seconds(1), Duration.fromInputUnsafe(initial))

const finishRetry = (
  schedule: Schedule.Schedule<unknown, unknown>,
  options?: { readonly jitter?: boolean | undefined; readonly maxAttempts?: number | undefined }
): RetrySchedule => {
  const jittered = options?.jitter === false ? schedule : Schedule.jittered(schedule)
  // maxAttempts counts attempts, the schedule counts recurrences after the first.
  return options?.maxAttempts !== undefined
    ? Schedule.max([jittered, Schedule.recurs(Math.max(0, options.maxAttempts - 1))])
    : jittered
}

/**
 * Defaults used when an option is not given. Override with
 * `Layer.succeed(LockDefaults, ...)` or through `LockBackend.layerConfig`.
 *
 * @since 0.1.0
 */
export const LockDefaults = Context.Reference<LockDefaultsShape>("effect-locks/LockDefaults", {
  defaultValue: () => ({
    ttl: Duration.seconds(30),
    retry: retryExponential(),
    ownerId: defaultOwnerId()
  })
})

/**
 * `host:pid` when running on Node, `effect-locks` elsewhere.
 *
 * @since 0.1.0
 */
export function defaultOwnerId(): string {
  const proc = (globalThis as { process?: { pid?: number; env?: Record<string, string | undefined> } }).process
  const host = proc?.env?.["HOSTNAME"] ?? "local"
  return proc?.pid !== undefined ? `${host}:${proc.pid}` : "effect-locks"
}

/** Longest accepted lock name, in UTF-8 bytes. */
export const MAX_NAME_BYTES = 1024
/** Longest accepted metadata (keys and values together), in UTF-8 bytes. */
export const MAX_METADATA_BYTES = 8192

/**
 * Options after validation and defaulting: what the acquire loop works with.
 *
 * @since 0.1.0
 */
export interface ResolvedOptions {
  readonly ttlMillis: number
  readonly heartbeatMillis: number | undefined
  readonly retry: RetrySchedule
  readonly timeoutMillis: number | undefined
  readonly onLost: OnLost
  readonly metadata: Readonly<Record<string, string>>
  readonly maxHoldMillis: number | undefined
  readonly requireFencing: boolean
  readonly ownerId: string
}

const encoder = new TextEncoder()

const invalid = (field: string, reason: string) => Effect.fail(new InvalidLockRequest({ field, reason }))

/**
 * Validates a lock name: non-empty, well-formed UTF-16, at most 1,024 UTF-8 bytes.
 *
 * @since 0.1.0
 */
export const validateName = (name: unknown): Effect.Effect<string, InvalidLockRequest> => {
  if (typeof name !== "string") return invalid("name", "must be a string")
  if (name.length === 0) return invalid("name", "must not be empty")
  if (!name.isWellFormed()) return invalid("name", "must be well-formed UTF-16 (no lone surrogates)")
  const bytes = encoder.encode(name).length
  if (bytes > MAX_NAME_BYTES) return invalid("name", `must be at most ${MAX_NAME_BYTES} UTF-8 bytes, got ${bytes}`)
  return Effect.succeed(name)
}

const durationMillis = (field: string, input: unknown): Effect.Effect<number, InvalidLockRequest> => {
  const decoded = Duration.isDuration(input) ? Option.some(input) : Duration.fromInput(input as Duration.Input)
  if (Option.isNone(decoded)) return invalid(field, "is not a duration")
  const millis = Duration.toMillis(decoded.value)
  if (!Number.isFinite(millis)) return invalid(field, "must be finite")
  if (millis <= 0) return invalid(field, "must be greater than zero")
  return Effect.succeed(millis)
}

/**
 * Validates options against the defaults in context.
 *
 * @since 0.1.0
 */
export const resolve = (options: LockOptions | undefined): Effect.Effect<ResolvedOptions, InvalidLockRequest> =>
  Effect.gen(function* () {
    const defaults = yield* LockDefaults
    const opts = options ?? {}
    const ttlMillis = yield* durationMillis("ttl", opts.ttl ?? defaults.ttl)
    let heartbeatMillis: number | undefined
    if (opts.heartbeat === false) {
      heartbeatMillis = undefined
    } else if (opts.heartbeat === undefined) {
      heartbeatMillis = Math.max(1, Math.floor(ttlMillis / 3))
    } else {
      heartbeatMillis = yield* durationMillis("heartbeat", opts.heartbeat)
      if (heartbeatMillis >= ttlMillis / 2) {
        return yield* invalid("heartbeat", `must be below ttl / 2 (${ttlMillis / 2} ms), got ${heartbeatMillis} ms`)
      }
    }
    let timeoutMillis: number | undefined
    if (opts.timeout !== undefined) {
      const decoded = Duration.fromInput(opts.timeout)
      if (Option.isNone(decoded)) return yield* invalid("timeout", "is not a duration")
      timeoutMillis = Duration.toMillis(decoded.value)
      if (!(timeoutMillis >= 0)) return yield* invalid("timeout", "must not be negative")
    }
    const maxHoldMillis = opts.maxHold === undefined ? undefined : yield* durationMillis("maxHold", opts.maxHold)
    if (opts.onLost !== undefined && opts.onLost !== "interrupt" && opts.onLost !== "ignore") {
      return yield* invalid("onLost", `must be "interrupt" or "ignore"`)
    }
    const metadata = opts.metadata ?? {}
    let metadataBytes = 0
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") return yield* invalid("metadata", `value of "${key}" must be a string`)
      metadataBytes += encoder.encode(key).length + encoder.encode(value).length
    }
    if (metadataBytes > MAX_METADATA_BYTES) {
      return yield* invalid("metadata", `must be at most ${MAX_METADATA_BYTES} UTF-8 bytes, got ${metadataBytes}`)
    }
    return {
      ttlMillis,
      heartbeatMillis,
      retry: opts.retry ?? defaults.retry,
      timeoutMillis,
      onLost: opts.onLost ?? "interrupt",
      metadata: { ...metadata },
      maxHoldMillis,
      requireFencing: opts.requireFencing ?? false,
      ownerId: defaults.ownerId
    }
  })

/**
 * Validates a semaphore's `limit` and `permits`.
 *
 * @since 0.1.0
 */
export const validatePermits = (
  limit: unknown,
  permits: unknown
): Effect.Effect<{ readonly limit: number; readonly permits: number }, InvalidLockRequest> => {
  if (typeof limit !== "number" || !Number.isSafeInteger(limit) || limit < 1) {
    return invalid("limit", `must be a positive integer, got ${String(limit)}`)
  }
  const p = permits ?? 1
  if (typeof p !== "number" || !Number.isSafeInteger(p) || p < 1) {
    return invalid("permits", `must be a positive integer, got ${String(p)}`)
  }
  if (p > limit) return invalid("permits", `must be at most limit (${limit}), got ${p}`)
  return Effect.succeed({ limit, permits: p })
}
