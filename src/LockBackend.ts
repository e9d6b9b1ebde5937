/**
 * The service contract every lock backend implements, and the layer that
 * picks a backend from the environment.
 *
 * **Details**
 *
 * A backend answers primitive questions and nothing more: try to grant (an
 * exclusive, shared, or `n` of `limit` permits hold), extend a grant with a
 * compare-and-swap on the owner, release a grant, signal that something changed
 * for a name, and list holders and waiters. Retry, waiting, heartbeats, loss
 * handling, metrics and spans live once, in the core.
 *
 * **Gotchas**
 *
 * - `tryAcquire` with `queue: true` registers the owner as a waiter when it is
 *   not granted, so later requests cannot overtake it (FIFO, and no writer
 *   starvation). The core always removes that registration with `release`
 *   when it stops waiting. A registration lives `ttlMillis` unless the owner
 *   attempts again (the core re-attempts every ttl/3 while it waits), so the
 *   registration of a process that died does not block the name for ever.
 * - `tryAcquire` is idempotent per owner: a repeated request from an owner
 *   that holds the name (a retry after a lost answer) returns the same grant.
 * - `release` is a compare-and-delete on the owner id: it never touches
 *   another owner's grant, so it is safe after expiry and safe to repeat.
 *
 * @since 0.1.0
 */
import { Config, Context, Duration, Effect, Layer, Option, type Scope } from "effect"
import * as LockConfig from "./LockConfig.ts"
import { InvalidLockRequest, type LockBackendUnavailable, type LostReason } from "./LockError.ts"

/**
 * How a grant holds a name: alone, shared with other readers, or as permits
 * of a counting semaphore.
 *
 * @since 0.1.0
 */
export type LockMode = "exclusive" | "shared" | "permits"

/**
 * One grant attempt.
 *
 * @since 0.1.0
 */
export interface GrantRequest {
  readonly name: string
  /** Unique per acquisition: the compare-and-swap key of extend and release. */
  readonly owner: string
  readonly mode: LockMode
  /** Permits taken: 1 for exclusive and shared holds. */
  readonly permits: number
  /** Total permits of the semaphore: 1 for exclusive and shared holds. */
  readonly limit: number
  readonly ttlMillis: number
  readonly metadata: Readonly<Record<string, string>>
  /** Register as a waiter (FIFO) when not granted. */
  readonly queue: boolean
}

/**
 * What a successful grant returns.
 *
 * @since 0.1.0
 */
export interface Grant {
  /** Fencing token: strictly greater than every earlier token for this name. */
  readonly token: bigint
  /**
   * Completes when the backend learns that this grant is gone before anyone
   * released it (e.g. the database session that held it ended). Backends
   * whose grants end only by TTL leave it out; the heartbeat finds out then.
   */
  readonly lost?: Effect.Effect<LostReason> | undefined
  /**
   * Milliseconds the store had already been counting this grant's TTL when
   * the granting request was sent: a grant made on a lease granted or kept
   * alive earlier (etcd). The core then counts the lease, its heartbeat and
   * its loss deadline from that much earlier. Default 0.
   */
  readonly leaseAge?: number | undefined
}

/**
 * The answer to an extension: still held, or why not.
 *
 * @since 0.1.0
 */
export type ExtendOutcome = "extended" | LostReason

/**
 * A current holder, as inspection shows it.
 *
 * @since 0.1.0
 */
export interface HolderInfo {
  readonly name: string
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  readonly limit: number
  readonly token: bigint
  /** Epoch milliseconds by the backend's clock. */
  readonly acquiredAt: number
  /** Epoch milliseconds by the backend's clock; undefined for session-bound locks. */
  readonly expiresAt: number | undefined
  readonly metadata: Readonly<Record<string, string>>
}

/**
 * A registered waiter, as inspection shows it.
 *
 * @since 0.1.0
 */
export interface WaiterInfo {
  readonly name: string
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  /** Epoch milliseconds when it started waiting, where known. */
  readonly since: number | undefined
  readonly metadata: Readonly<Record<string, string>>
}

/**
 * Who holds what, and who waits.
 *
 * @since 0.1.0
 */
export interface Inspection {
  readonly holders: ReadonlyArray<HolderInfo>
  readonly waiters: ReadonlyArray<WaiterInfo>
}

/**
 * What a backend promises; the guarantees table in the README is made of these.
 *
 * @since 0.1.0
 */
export interface Guarantees {
  /** `strict`: tokens strictly increase per name under every failure the backend survives. */
  readonly fencing: "strict" | "best-effort"
  /** Where mutual exclusion holds. */
  readonly scope: string
  /** What ends a lease besides release. */
  readonly leaseEnds: string
  /** How waiters learn of a release. */
  readonly wakeUp: string
  /** Order in which waiters are served. */
  readonly fairness: "fifo" | "best-effort"
}

/**
 * The primitive operations of a backend.
 *
 * @since 0.1.0
 */
export interface LockBackendShape {
  /** Short name: `memory`, `postgres`, `redis`, `redlock`, `etcd`. */
  readonly kind: string
  readonly guarantees: Guarantees
  /**
   * Every call ends within a deadline of its own (or at once). The core then
   * puts no timeout of its own around the first call of a release; without
   * it, each release is raced against one. Default false.
   */
  readonly boundedCalls?: boolean | undefined
  /** One grant attempt; `None` when contended. Never blocks on contention. */
  readonly tryAcquire: (
    request: GrantRequest
  ) => Effect.Effect<Option.Option<Grant>, LockBackendUnavailable | InvalidLockRequest>
  /**
   * Compare-and-swap extension of the owner's grant to `ttlMillis` from now.
   * `InvalidLockRequest` when the backend cannot keep a lease that long.
   */
  readonly extend: (
    name: string,
    owner: string,
    ttlMillis: number
  ) => Effect.Effect<ExtendOutcome, LockBackendUnavailable | InvalidLockRequest>
  /** Compare-and-delete of the owner's grant or waiter registration; `true` if a grant was released. */
  readonly release: (name: string, owner: string) => Effect.Effect<boolean, LockBackendUnavailable>
  /**
   * Subscribes to changes of a name for the life of the scope. The returned
   * effect completes once something changed since the previous time it
   * completed (or since the subscription was made), so no change is missed.
   *
   * With `owner` (the waiter's owner id), a backend may signal only the
   * changes that can let that waiter proceed: a queued waiter is then woken
   * when it reaches the front of the queue, not by every release.
   */
  readonly subscribe: (
    name: string,
    owner?: string
  ) => Effect.Effect<Effect.Effect<void>, LockBackendUnavailable, Scope.Scope>
  /** Holders and waiters of one name, or of every name. */
  readonly inspect: (name?: string) => Effect.Effect<Inspection, LockBackendUnavailable>
}

/**
 * The lock backend in context. Every lock kind asks it for grants.
 *
 * @since 0.1.0
 */
export class LockBackend extends Context.Service<LockBackend, LockBackendShape>()("effect-locks/LockBackend") {
  /**
   * Holders (owner, token, mode, expiry, metadata) and waiters of one name, or
   * of every name.
   */
  static readonly inspect = (name?: string): Effect.Effect<Inspection, LockBackendUnavailable, LockBackend> =>
    LockBackend.use((backend) => backend.inspect(name))

  /**
   * Picks the backend and the defaults from the environment:
   * `LOCK_PROVIDER` (default `memory`), `LOCK_DEFAULT_TTL`,
   * `LOCK_RETRY_MAX_ATTEMPTS`, `LOCK_RETRY_INITIAL_DELAY`,
   * `LOCK_RETRY_MAX_DELAY`, `LOCK_RETRY_JITTER`, `LOCK_OWNER_ID`.
   *
   * Providers are registered by the backend modules (`registerProvider`); an
   * unknown or unregistered provider fails with `InvalidLockRequest` naming
   * `LOCK_PROVIDER` and the providers available.
   */
  static readonly layerConfig: Layer.Layer<
    LockBackend,
    Config.ConfigError | InvalidLockRequest | LockBackendUnavailable
  > = Layer.unwrap(
    Effect.gen(function* () {
      const provider = (yield* Config.String("LOCK_PROVIDER").pipe(Config.withDefault("memory"))).trim().toLowerCase()
      const defaults = yield* defaultsConfig
      const make = providers.get(provider)
      if (make === undefined) {
        return yield* new InvalidLockRequest({
          field: "LOCK_PROVIDER",
          reason: `unknown lock provider "${provider}"; available: ${[...providers.keys()].toSorted().join(", ")}`
        })
      }
      return Layer.merge(make(), Layer.succeed(LockConfig.LockDefaults, defaults))
    })
  )
}

const defaultsConfig = Effect.gen(function* () {
  const ttl = yield* Config.Duration("LOCK_DEFAULT_TTL").pipe(Config.withDefault(Duration.seconds(30)))
  const maxAttempts = yield* Config.Int("LOCK_RETRY_MAX_ATTEMPTS").pipe(Config.option)
  const initial = yield* Config.Duration("LOCK_RETRY_INITIAL_DELAY").pipe(Config.withDefault(Duration.millis(25)))
  const max = yield* Config.Duration("LOCK_RETRY_MAX_DELAY").pipe(Config.withDefault(Duration.seconds(1)))
  const jitter = yield* Config.Boolean("LOCK_RETRY_JITTER").pipe(Config.withDefault(true))
  const ownerId = yield* Config.String("LOCK_OWNER_ID").pipe(Config.withDefault(LockConfig.defaultOwnerId()))
  if (Duration.toMillis(ttl) <= 0) {
    return yield* new InvalidLockRequest({ field: "LOCK_DEFAULT_TTL", reason: "must be greater than zero" })
  }
  if (Option.isSome(maxAttempts) && maxAttempts.value < 1) {
    return yield* new InvalidLockRequest({ field: "LOCK_RETRY_MAX_ATTEMPTS", reason: "must be at least 1" })
  }
  const retry = LockConfig.retryExponential({
    initial,
    max,
    jitter,
    maxAttempts: Option.getOrUndefined(maxAttempts)
  })
  return { ttl, retry, ownerId } satisfies LockConfig.LockDefaultsShape
})

/**
 * Builds a backend layer for `LockBackend.layerConfig`, reading its own
 * settings from `Config`.
 *
 * @since 0.1.0
 */
export type ProviderLayer = () => Layer.Layer<
  LockBackend,
  Config.ConfigError | InvalidLockRequest | LockBackendUnavailable
>

const providers = new Map<string, ProviderLayer>()

/**
 * Makes a provider name available to `LockBackend.layerConfig`. Backend
 * modules call it when imported; the memory backend is always registered.
 *
 * @since 0.1.0
 */
export const registerProvider = (name: string, layer: ProviderLayer): void => {
  providers.set(name, layer)
}
