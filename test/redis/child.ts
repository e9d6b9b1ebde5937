/**
 * A worker process for `processes.test.ts`: contends for one lock name on the
 * Redis backend with other processes, and inside each critical section goes
 * through a fenced resource kept in Redis itself (`fence.*` below: one Lua
 * script per step, so every check and write is atomic on the server).
 *
 * Run as `node test/redis/child.ts <json options>` (Node >= 22.18 runs `.ts`
 * files directly). It prints `{"ready":true}` once its backend is up (and
 * subscribed to the change channel) and starts on the first input (or end of
 * input) on stdin, so that both processes contend from the start.
 *
 * - `mode: "contend"`: `fibers` fibers each run `iterations` critical
 *   sections; at the end it prints one JSON summary line and exits 0, or
 *   exits 1 with the failure on stderr.
 * - `mode: "hold"`: takes the lock once, prints `{"held":"<token>"}` and
 *   keeps it (heartbeat running) until it is killed.
 */
import { Effect, Layer } from "effect"
import * as Redis from "effect/persistence/Redis"
import { RedisBackend } from "../../src/redis/index.ts"
import {
  type FencedSummary,
  type FencedWorkerOptions,
  fencedWorker,
  parseOptions,
  runWorker
} from "../support/childWorker.ts"

/** What the parent passes. */
export interface ChildOptions extends FencedWorkerOptions {
  readonly url: string
  /** The lock backend's key prefix. */
  readonly prefix: string
  /** The fenced resource's keys (outside the backend's prefix). */
  readonly fence: FenceKeys
}

/** The fenced resource: a hash with `highest` (highest token admitted) and `inside` (token inside, or ""), and an event log. */
export interface FenceKeys {
  readonly state: string
  readonly log: string
}

/** What the child prints at the end of `contend`. */
export type ChildSummary = FencedSummary

/**
 * The fenced resource's steps. Each logs `<event>|<worker>|<token>` and returns the event.
 *
 * - enter: `enter` when nobody is inside and the token is above every token admitted before (then it is inside and
 *   the highest); `overlap` when another token is inside; `stale` when the token is not above the highest.
 * - write: `write` when the token is the one inside and still the highest; `stale-write` otherwise.
 * - exit: `exit` when the token is the one inside (then nobody is); `foreign-exit` otherwise.
 */
export const fence = {
  enter: `
local state, log, token, worker = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local inside = redis.call('HGET', state, 'inside')
local highest = redis.call('HGET', state, 'highest')
local event = 'enter'
if highest and tonumber(token) <= tonumber(highest) then
  event = 'stale'
elseif inside and inside ~= '' then
  event = 'overlap'
end
if event == 'enter' then
  redis.call('HSET', state, 'inside', token, 'highest', token)
end
redis.call('RPUSH', log, event .. '|' .. worker .. '|' .. token)
return event`,
  write: `
local state, log, token, worker = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local inside = redis.call('HGET', state, 'inside')
local highest = redis.call('HGET', state, 'highest')
local event = 'stale-write'
if inside == token and highest == token then
  event = 'write'
  redis.call('HINCRBY', state, 'writes', 1)
end
redis.call('RPUSH', log, event .. '|' .. worker .. '|' .. token)
return event`,
  exit: `
local state, log, token, worker = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local event = 'foreign-exit'
if redis.call('HGET', state, 'inside') == token then
  event = 'exit'
  redis.call('HSET', state, 'inside', '')
end
redis.call('RPUSH', log, event .. '|' .. worker .. '|' .. token)
return event`
} as const

const options = parseOptions<ChildOptions>(process.argv[2])

const fenceOnServer = Effect.gen(function* () {
  const redis = yield* Redis.Redis
  return {
    step: (kind: keyof typeof fence, token: bigint) =>
      redis.send<string>(
        "EVAL",
        fence[kind],
        "2",
        options.fence.state,
        options.fence.log,
        token.toString(),
        options.worker
      ),
    // Stay inside a little: a round trip after entering, and one before exiting.
    afterEnter: redis.send("PING"),
    beforeExit: redis.send("PING")
  }
})

const client = RedisBackend.redisLayer(options.url)
const layer = RedisBackend.layer({ prefix: options.prefix }).pipe(Layer.provideMerge(client))

// Ready is reported once the layer is up (subscribed to the change channel).
runWorker(fencedWorker(options, "30 seconds", fenceOnServer).pipe(Effect.provide(layer)))
