/**
 * effect-locks/redis: the Redis backend (one server) and Redlock (N servers).
 * Importing it also makes `LOCK_PROVIDER=redis` available to
 * `LockBackend.layerConfig`.
 *
 * @since 0.1.0
 */

/** Lua scripts on one Redis server, with strict fencing. @since 0.1.0 */
export * as RedisBackend from "./RedisBackend.ts"
/** A majority of N independent Redis servers, with best-effort fencing. @since 0.1.0 */
export * as RedlockBackend from "./RedlockBackend.ts"
