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
import { Lock } from "../../src/index.ts"
import { RedisBackend } from "../../src/redis/index.ts"

/** What the parent passes. */
export interface ChildOptions {
  readonly url: string
  /** The lock backend's key prefix. */
  readonly prefix: string
  /** The fenced resource's keys (outside the backend's prefix). */
  readonly fence: FenceKeys
  readonly name: string
  readonly worker: string
  readonly mode: "contend" | "hold"
  readonly fibers: number
  readonly iterations: number
  /** Lease TTL in milliseconds. */
  readonly ttlMillis: number
}

/** The fenced resource: a hash with `highest` (highest token admitted) and `inside` (token inside, or ""), and an event log. */
export interface FenceKeys {
  readonly state: string
  readonly log: string
}

/** What the child prints at the end of `contend`. */
export interface ChildSummary {
  readonly worker: string
  readonly pid: number
  readonly sections: number
  readonly accepted: number
  readonly refused: number
  /** Tokens of this worker's critical sections, as decimal strings, in the order they entered. */
  readonly tokens: ReadonlyArray<string>
}

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

const parse = (raw: string | undefined): ChildOptions => {
  if (raw === undefined) throw new Error("usage: child.ts <json options>")
  return JSON.parse(raw) as ChildOptions
}

const options = parse(process.argv[2])

/** Waits for the parent's go (a line on stdin, or its end). */
const awaitGo = Effect.callback<void>((resume) => {
  const go = () => {
    process.stdin.off("data", go)
    process.stdin.off("end", go)
    process.stdin.pause()
    resume(Effect.void)
  }
  process.stdin.on("data", go)
  process.stdin.on("end", go)
})

const contend = Effect.gen(function* () {
  const redis = yield* Redis.Redis
  const step = (script: string, token: bigint) =>
    redis.send<string>("EVAL", script, "2", options.fence.state, options.fence.log, token.toString(), options.worker)
  const tokens: Array<string> = []
  let accepted = 0
  let refused = 0

  const section = Effect.scoped(
    Effect.gen(function* () {
      // The loss signal is watched by runHeld below, as Lock.withLock does: a lost lease fails the section.
      const lease = yield* Lock.scoped(options.name, {
        ttl: options.ttlMillis,
        timeout: "30 seconds",
        onLost: "ignore",
        metadata: { worker: options.worker }
      })
      const token = lease.token
      yield* Lock.runHeld(
        lease,
        Effect.gen(function* () {
          tokens.push(token.toString())
          const entered = yield* step(fence.enter, token)
          // Stay inside a little, yielding to the other fibers and (through the round trips) to the other process.
          yield* redis.send("PING")
          yield* Effect.yieldNow
          const written = yield* step(fence.write, token)
          if (entered === "enter" && written === "write") accepted++
          else refused++
          yield* redis.send("PING")
          yield* step(fence.exit, token)
        }),
        "interrupt"
      )
    })
  )

  yield* Effect.forEach(
    Array.from({ length: options.fibers }, (_, i) => i),
    () => Effect.repeat(section, { times: options.iterations - 1 }),
    { concurrency: "unbounded", discard: true }
  )
  const summary: ChildSummary = {
    worker: options.worker,
    pid: process.pid,
    sections: tokens.length,
    accepted,
    refused,
    tokens
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`)
})

const hold = Effect.scoped(
  Effect.gen(function* () {
    const lease = yield* Lock.scoped(options.name, {
      ttl: options.ttlMillis,
      timeout: "30 seconds",
      onLost: "ignore",
      metadata: { worker: options.worker }
    })
    process.stdout.write(`${JSON.stringify({ held: lease.token.toString() })}\n`)
    // Held (and extended by the heartbeat) until the parent kills the process.
    return yield* Effect.never
  })
)

const program = Effect.gen(function* () {
  // The layer is up (subscribed to the change channel): tell the parent, and start when every process is.
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`)
  yield* awaitGo
  yield* options.mode === "hold" ? hold : contend
})

const client = RedisBackend.redisLayer(options.url)
const layer = RedisBackend.layer({ prefix: options.prefix }).pipe(Layer.provideMerge(client))

Effect.runPromise(program.pipe(Effect.provide(layer))).then(
  () => {},
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
    process.exitCode = 1
  }
)
