/**
 * The Redis backend: every state change is one Lua script on one Redis
 * server, fencing tokens that survive a restart, FIFO waiting woken by
 * pub/sub.
 *
 * **When to use**
 *
 * Services that share a Redis server (or a primary with replicas) and need
 * locks with short, server-enforced leases and fast handover.
 *
 * **Details**
 *
 * - All commands go through effect's `Redis` service (`effect/persistence/Redis`),
 *   e.g. `NodeRedis.layer` of `@effect/platform-node`: no connection per lock
 *   or per waiter, just the service's client and one subscriber connection.
 * - Exclusive: a key set with the owner and `PX ttl` only when it is absent
 *   and the queue lets the owner in; extend and release compare the owner.
 *   Readers live in a sorted set scored by expiry, writers in the exclusive
 *   key, and waiting writers in a marker set that makes new readers queue
 *   behind them. Semaphore holders are stored with their permits and
 *   expiries. Expired entries are swept inside every script.
 * - Keys are `<prefix>{<name percent-encoded>}:<part>`: one Redis Cluster
 *   slot per name, and no name can collide with another or leave the prefix.
 * - Fencing tokens: `max(last + 1, server TIME in µs)`, taken in the granting
 *   script. They keep increasing after the counter expired or the server
 *   restarted without persistence, assuming the server's clock does not step
 *   back.
 * - Waiting: waiters queue on the server (FIFO across processes). A release
 *   publishes the owner of the first waiter that may proceed now; one
 *   subscription per process wakes just that waiter. The retry schedule only
 *   matters for holders that expired without releasing.
 *
 * **Gotchas**
 *
 * - Replication is asynchronous: after a failover to a replica the last grants
 *   (and token increments) may be lost, and two holders may overlap. The
 *   guarantees say so; use `RedlockBackend`, PostgreSQL or etcd if that
 *   matters, and fence the resource.
 * - A name is either a lock (exclusive and read-write) or a semaphore, with
 *   one limit, while anyone holds or waits for it.
 *
 * @since 0.1.0
 */
import { Config, Duration, Effect, Layer, Option, type Scope } from "effect"
import * as Redis from "effect/persistence/Redis"
import { type Guarantees, LockBackend, type LockBackendShape, registerProvider } from "../LockBackend.ts"
import { InvalidLockRequest, type LockBackendUnavailable } from "../LockError.ts"
import { defaultPrefix, makeStore, makeWaiters, redisLayer, resolveCommon } from "./internal/store.ts"
import * as Redlock from "./RedlockBackend.ts"

/**
 * Options of the Redis backend.
 *
 * @since 0.1.0
 */
export interface Options {
  /** Prefix of every key and of the change channel. Default `effect-locks:`; no `{` or `}`. */
  readonly prefix?: string | undefined
  /** Real-time deadline of every command; a command that misses it is `LockBackendUnavailable`. Default 2 seconds. */
  readonly commandTimeout?: Duration.Input | undefined
}

/**
 * What the Redis backend promises.
 *
 * @since 0.1.0
 */
export const guarantees: Guarantees = {
  fencing: "strict",
  scope: "all processes on one Redis server; not across an asynchronous failover",
  leaseEnds: "TTL (kept by the server) or scope",
  wakeUp: "pub/sub, one subscription per process",
  fairness: "fifo"
}

/**
 * Builds the backend on the `Redis` service in context; the subscription to
 * the change channel lives as long as the scope.
 *
 * @since 0.1.0
 */
export const make = (
  options: Options = {}
): Effect.Effect<LockBackendShape, InvalidLockRequest, Redis.Redis | Scope.Scope> =>
  Effect.gen(function* () {
    const settings = yield* resolveCommon(options)
    const redis = yield* Redis.Redis
    const store = makeStore(redis, settings)
    const waiters = makeWaiters()
    yield* store.listen(waiters.onChange, waiters.onGap)
    return LockBackend.of({
      kind: "redis",
      guarantees,
      tryAcquire: (request) =>
        Effect.map(
          store.grant(request, 0n),
          Option.map(({ token }) => ({ token }))
        ),
      extend: (name, owner, ttlMillis) => store.extend(name, owner, ttlMillis),
      release: (name, owner) => store.release(name, owner, true),
      subscribe: waiters.subscribe,
      inspect: store.inspect
    })
  })

/**
 * The backend as a layer over the `Redis` service in context (e.g.
 * `NodeRedis.layer({ url })` of `@effect/platform-node`).
 *
 * @since 0.1.0
 */
export const layer = (options: Options = {}): Layer.Layer<LockBackend, InvalidLockRequest, Redis.Redis> =>
  Layer.effect(LockBackend, make(options))

/**
 * Reads `LOCK_REDIS_URL` (one URL: this backend; three or more, comma
 * separated: `RedlockBackend`), `LOCK_REDIS_PREFIX`, `LOCK_REDLOCK_QUORUM` and
 * `LOCK_REDLOCK_DRIFT_FACTOR`. Used by `LockBackend.layerConfig` when
 * `LOCK_PROVIDER=redis`.
 *
 * @since 0.1.0
 */
export const layerConfig: Layer.Layer<LockBackend, Config.ConfigError | LockBackendUnavailable | InvalidLockRequest> =
  Layer.unwrap(
    Effect.gen(function* () {
      const urls = (yield* Config.String("LOCK_REDIS_URL"))
        .split(",")
        .map((url) => url.trim())
        .filter((url) => url.length > 0)
      const prefix = yield* Config.String("LOCK_REDIS_PREFIX").pipe(Config.withDefault(defaultPrefix))
      const quorum = yield* Config.Int("LOCK_REDLOCK_QUORUM").pipe(Config.option)
      const driftFactor = yield* Config.Number("LOCK_REDLOCK_DRIFT_FACTOR").pipe(Config.option)
      if (urls.length === 1) {
        return layer({ prefix }).pipe(Layer.provide(redisLayer(urls[0]!)))
      }
      if (urls.length < 3) {
        return yield* new InvalidLockRequest({
          field: "LOCK_REDIS_URL",
          reason: `one URL (Redis) or three or more (Redlock), got ${urls.length}`
        })
      }
      return Redlock.layerFromUrls(urls, {
        prefix,
        quorum: Option.getOrUndefined(quorum),
        driftFactor: Option.getOrUndefined(driftFactor)
      })
    })
  )

registerProvider("redis", () => layerConfig)

export {
  /** Default key prefix, `effect-locks:`. @since 0.1.0 */
  defaultPrefix,
  /** A `Redis` service for one URL, by `NodeRedis`; connection failures are `LockBackendUnavailable`. @since 0.1.0 */
  redisLayer
}
