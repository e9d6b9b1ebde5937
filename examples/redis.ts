// Locks on Redis: one server, or Redlock over several independent servers.
import { Effect, Layer } from "effect"
import { Lock, ReadWriteLock } from "effect-locks"
import { RedisBackend, RedlockBackend } from "effect-locks/redis"

const url = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379"
const LocksLive = RedisBackend.layer({ prefix: "billing:" }).pipe(Layer.provide(RedisBackend.redisLayer(url)))

// One process at a time runs the job; the token is strictly increasing per name.
export const nightlyJob = Lock.withLock("reports:nightly", { ttl: "10 seconds", requireFencing: true })(
  Effect.log("building reports")
).pipe(Effect.provide(LocksLive))

// Readers share, a waiting writer holds back new readers.
export const readPrices = ReadWriteLock.withRead("prices")(Effect.log("reading prices")).pipe(Effect.provide(LocksLive))

// Redlock: granted by a majority of independent servers; fencing is best-effort.
export const RedlockLive = RedlockBackend.layerFromUrls(
  ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"],
  { prefix: "billing:" }
)
