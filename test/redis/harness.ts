/**
 * Shared pieces of the Redis backend tests: the server URL, a unique key
 * prefix per test layer, and the server-side leak checks (keys under the
 * prefix by `SCAN`, subscribers of the change channel by `PUBSUB NUMSUB`).
 */
import { Context, Effect, Layer } from "effect"
import * as Redis from "effect/persistence/Redis"
import type { LockBackend } from "../../src/index.ts"
import { RedisBackend, RedlockBackend } from "../../src/redis/index.ts"
import { redisUrl } from "../support/servers.ts"
import { eventually } from "../support/eventually.ts"

/** The shared test server's URL (env `LOCK_TEST_REDIS_URL`, else the local server, else a container). */
export const url = await redisUrl()

let counter = 0
const runId = Math.random().toString(36).slice(2, 8)

/** A unique key prefix: every key and the change channel of one test layer start with it. */
export const freshPrefix = (label = "t") => `el-test:${label}-${runId}-${counter++}:`

/** A `Redis` service for a URL (default: the shared test server). */
export const redis = (target: string = url): Layer.Layer<Redis.Redis, unknown> => RedisBackend.redisLayer(target)

/** The single-instance backend under `prefix` on its own client. */
export const backendLayer = (
  prefix: string,
  options: Omit<RedisBackend.Options, "prefix"> & { readonly url?: string } = {}
): Layer.Layer<LockBackend, unknown> =>
  RedisBackend.layer({ commandTimeout: "2 seconds", ...options, prefix }).pipe(Layer.provide(redis(options.url ?? url)))

/** Redlock over `urls` under `prefix`. */
export const redlockLayer = (
  prefix: string,
  urls: ReadonlyArray<string>,
  options: Omit<RedlockBackend.Options, "prefix" | "instances"> = {}
): Layer.Layer<LockBackend, unknown> =>
  RedlockBackend.layer({ ...options, prefix, instances: urls.map((u) => redis(u)) })

/** Runs one command on a server (a fresh client, closed afterwards). */
export const send = <A = unknown>(command: string, args: ReadonlyArray<string>, target: string = url) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Layer.build(redis(target))
      const service = Context.get(client, Redis.Redis)
      return yield* service.send<A>(command, ...args)
    })
  )

/** Every key under `prefix` on a server. */
export const keysUnder = (prefix: string, target: string = url) =>
  Effect.gen(function* () {
    const keys: Array<string> = []
    let cursor = "0"
    do {
      const [next, found] = yield* send<[string, Array<string>]>(
        "SCAN",
        [cursor, "MATCH", `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`, "COUNT", "1000"],
        target
      )
      cursor = next
      keys.push(...found)
    } while (cursor !== "0")
    return keys
  })

/** Subscribers of the change channel of `prefix`. */
export const subscribersOf = (prefix: string, target: string = url) =>
  Effect.map(send<[string, number]>("PUBSUB", ["NUMSUB", `${prefix}changes`], target), (reply) => Number(reply[1]))

export { eventually }

/**
 * Nothing under `prefix` on the server: no key (counters expire a few
 * milliseconds after the last release) and, once the layer closed, no
 * subscriber of its channel.
 */
export const assertNothingLeft = (
  prefix: string,
  target: string = url,
  options: { readonly subscribers?: boolean } = {}
) =>
  eventually(
    Effect.gen(function* () {
      const keys = yield* keysUnder(prefix, target)
      if (keys.length > 0)
        return yield* Effect.fail(new Error(`keys left under ${prefix}: ${keys.slice(0, 10).join(", ")}`))
      if (options.subscribers !== false) {
        const subscribers = yield* subscribersOf(prefix, target)
        if (subscribers > 0)
          return yield* Effect.fail(new Error(`${subscribers} subscriber(s) left on ${prefix}changes`))
      }
    })
  )
