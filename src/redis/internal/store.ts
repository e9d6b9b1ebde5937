/**
 * One Redis server as a lock store: the scripts bound to its `Redis` service,
 * with deadlines and typed errors, plus the process's one subscription to its
 * change channel. `RedisBackend` uses one store, `RedlockBackend` several.
 */
import { Deferred, Duration, Effect, Layer, Option, Queue, type Scope } from "effect"
import * as Redis from "effect/persistence/Redis"
import * as NodeRedis from "@effect/platform-node/NodeRedis"
import type { ExtendOutcome, GrantRequest, HolderInfo, Inspection, LockMode, WaiterInfo } from "../../LockBackend.ts"
import { InvalidLockRequest, LockBackendUnavailable } from "../../LockError.ts"
import { type Listener, makeListener, signal, waitForChange } from "../../internal/changeSignal.ts"
import { withDeadline } from "../../internal/deadline.ts"
import { type Change, channelOf, counterOf, keysOf, nameOfKey, namesPattern, parseChange } from "./keys.ts"
import * as Scripts from "./scripts.ts"

/** Settings of a store. */
export interface StoreOptions {
  readonly prefix: string
  /** Real-time deadline of every command, in milliseconds. */
  readonly commandMillis: number
}

/** A grant by one server. */
export interface Granted {
  readonly token: bigint
  /** The owner's arrival in the queue the grant took it from (µs, as stored), if any. */
  readonly arrival: string | undefined
}

/** The longest TTL the scripts accept: beyond it, times in milliseconds lose precision as Lua numbers. */
export const MAX_TTL_MILLIS = 2 ** 40

const ttlArg = (ttlMillis: number): Effect.Effect<string, InvalidLockRequest> =>
  Number.isFinite(ttlMillis) && ttlMillis > 0 && ttlMillis <= MAX_TTL_MILLIS
    ? Effect.succeed(String(Math.ceil(ttlMillis)))
    : Effect.fail(
        new InvalidLockRequest({ field: "ttl", reason: `must be greater than zero and at most ${MAX_TTL_MILLIS} ms` })
      )

const checkName = (name: string): Effect.Effect<string, InvalidLockRequest> =>
  name.isWellFormed()
    ? Effect.succeed(name)
    : Effect.fail(new InvalidLockRequest({ field: "name", reason: "must be well-formed UTF-16 (no lone surrogates)" }))

/** One Redis server's primitive operations. */
export interface Store {
  /** One attempt; a grant taken from the queue says where the owner stood (`arrival`, µs). */
  readonly grant: (
    request: GrantRequest,
    floor: bigint,
    commandMillis?: number
  ) => Effect.Effect<Option.Option<Granted>, LockBackendUnavailable | InvalidLockRequest>
  /**
   * Undoes a grant that did not reach Redlock's quorum: the grant goes, and a
   * queued request stays queued (at `arrival` when the grant took it from the
   * queue).
   */
  readonly ungrant: (
    request: GrantRequest,
    arrival: string | undefined,
    commandMillis?: number
  ) => Effect.Effect<boolean, LockBackendUnavailable | InvalidLockRequest>
  readonly extend: (
    name: string,
    owner: string,
    ttlMillis: number,
    commandMillis?: number
  ) => Effect.Effect<ExtendOutcome, LockBackendUnavailable | InvalidLockRequest>
  readonly release: (
    name: string,
    owner: string,
    idleToo: boolean,
    commandMillis?: number
  ) => Effect.Effect<boolean, LockBackendUnavailable>
  readonly fence: (
    name: string,
    token: bigint,
    ttlMillis: number,
    commandMillis?: number
  ) => Effect.Effect<bigint, LockBackendUnavailable>
  readonly inspect: (name?: string) => Effect.Effect<Inspection, LockBackendUnavailable>
  /**
   * Keeps one subscription to the change channel for the life of the scope
   * (re-subscribing after a failure) and hands each change to `onChange`;
   * `onGap` is called after every (re)subscription, since changes may have
   * been missed meanwhile.
   */
  readonly listen: (onChange: (change: Change) => void, onGap: () => void) => Effect.Effect<void, never, Scope.Scope>
}

/** Default key prefix. */
export const defaultPrefix = "effect-locks:"

const millisOf = (input: Duration.Input | undefined, fallback: number, field: string) => {
  const millis = input === undefined ? fallback : Duration.toMillis(Duration.fromInputUnsafe(input))
  return Number.isFinite(millis) && millis > 0
    ? Effect.succeed(millis)
    : Effect.fail(new InvalidLockRequest({ field, reason: "must be a positive, finite duration" }))
}

/** Validates the options every Redis-based backend shares. */
export const resolveCommon = (options: {
  readonly prefix?: string | undefined
  readonly commandTimeout?: Duration.Input | undefined
}): Effect.Effect<StoreOptions, InvalidLockRequest> =>
  Effect.gen(function* () {
    const prefix = yield* validatePrefix(options.prefix ?? defaultPrefix)
    const commandMillis = yield* millisOf(options.commandTimeout, 2000, "commandTimeout")
    return { prefix, commandMillis }
  })

/** A duration option in milliseconds: positive and finite, or `fallback` when absent. */
export { millisOf }

/**
 * A `Redis` service for `url`, by `NodeRedis`; connection failures are
 * `LockBackendUnavailable`. Commands fail at once while the client is
 * disconnected (`disableOfflineQueue`), so the core retries them, and no
 * command outlives its deadline in the client's offline queue (where it would
 * keep `client.close()`, and so the layer's finalizer, waiting).
 */
export const redisLayer = (url: string): Layer.Layer<Redis.Redis, LockBackendUnavailable> =>
  NodeRedis.layer({ url, disableOfflineQueue: true }).pipe(
    Layer.catchTag("RedisError", (error) =>
      Layer.effect(Redis.Redis, Effect.fail(new LockBackendUnavailable({ operation: "connect", cause: error.cause })))
    )
  )

/** Checks the prefix: no hash-tag braces (the name's tag must be the key's first). */
export const validatePrefix = (prefix: string): Effect.Effect<string, InvalidLockRequest> =>
  /[{}]/.test(prefix) || !prefix.isWellFormed()
    ? Effect.fail(new InvalidLockRequest({ field: "prefix", reason: "must be well-formed and contain no `{` or `}`" }))
    : Effect.succeed(prefix)

const unavailable = (operation: string) => (cause: unknown) => new LockBackendUnavailable({ operation, cause })

const kindOf = (mode: LockMode) => (mode === "permits" ? "semaphore" : "lock")

const parseMetadata = (text: string): Readonly<Record<string, string>> => {
  try {
    const value: unknown = JSON.parse(text)
    if (typeof value !== "object" || value === null) return {}
    const metadata: Record<string, string> = {}
    for (const [key, entry] of Object.entries(value)) if (typeof entry === "string") metadata[key] = entry
    return metadata
  } catch {
    return {}
  }
}

const pairs = (value: unknown): Array<readonly [string, string]> => {
  const list = Array.isArray(value) ? value.map(String) : []
  const out: Array<readonly [string, string]> = []
  for (let i = 0; i + 1 < list.length; i += 2) out.push([list[i]!, list[i + 1]!])
  return out
}

/** Splits `a|b|c|rest` into `count` fields, the last keeping any further `|`. */
const fields = (text: string, count: number): Array<string> => {
  const out: Array<string> = []
  let from = 0
  for (let i = 0; i < count - 1; i++) {
    const bar = text.indexOf("|", from)
    if (bar === -1) break
    out.push(text.slice(from, bar))
    from = bar + 1
  }
  out.push(text.slice(from))
  return out
}

const call = <A>(operation: string, millis: number, effect: Effect.Effect<A, Redis.RedisError>) =>
  Effect.mapError(withDeadline(millis, effect, { interruptWithCaller: true }), unavailable(operation))

/** Builds a store on one `Redis` service. */
export const makeStore = (redis: Redis.Redis["Service"], options: StoreOptions): Store => {
  const { prefix, commandMillis } = options
  const channel = channelOf(prefix)
  const acquireScript = redis.eval(Scripts.acquire)
  const extendScript = redis.eval(Scripts.extend)
  const releaseScript = redis.eval(Scripts.release)
  const fenceScript = redis.eval(Scripts.fence)
  const inspectScript = redis.eval(Scripts.inspect)

  const grant: Store["grant"] = (request, floor, millis = commandMillis) =>
    Effect.all([checkName(request.name), ttlArg(request.ttlMillis)]).pipe(
      Effect.flatMap(([name, ttl]) =>
        call(
          "acquire",
          millis,
          acquireScript(
            keysOf(prefix, name),
            channel,
            name,
            request.owner,
            request.mode,
            String(request.permits),
            String(request.limit),
            ttl,
            JSON.stringify(request.metadata),
            request.queue ? "1" : "0",
            floor.toString()
          )
        )
      ),
      Effect.flatMap((reply) => {
        const status = Number(reply[0])
        if (status === 1) {
          const arrival = reply[2]
          return Effect.succeed(
            Option.some<Granted>({
              token: BigInt(reply[1] as number | string),
              arrival: typeof arrival === "string" || typeof arrival === "number" ? String(arrival) : undefined
            })
          )
        }
        if (status === 0) return Effect.succeed(Option.none<Granted>())
        const field = String(reply[1])
        const kind = kindOf(request.mode)
        return Effect.fail(
          new InvalidLockRequest({
            field,
            reason:
              field === "limit"
                ? `"${request.name}" is in use with limit ${String(reply[3])}, not ${request.limit}`
                : `"${request.name}" is in use as a ${String(reply[2])}, not as a ${kind}`
          })
        )
      })
    )

  const ungrant: Store["ungrant"] = (request, arrival, millis = commandMillis) =>
    Effect.all([checkName(request.name), ttlArg(request.ttlMillis)]).pipe(
      Effect.flatMap(([name, ttl]) =>
        call(
          "release",
          millis,
          releaseScript(
            keysOf(prefix, name),
            channel,
            name,
            request.owner,
            "1",
            "1",
            arrival ?? "",
            request.queue ? "1" : "0",
            request.mode,
            String(request.permits),
            String(request.limit),
            ttl,
            JSON.stringify(request.metadata)
          )
        )
      ),
      Effect.map((reply) => Number(reply) === 1)
    )

  const extend: Store["extend"] = (name, owner, ttlMillis, millis = commandMillis) =>
    Effect.all([checkName(name), ttlArg(ttlMillis)]).pipe(
      Effect.flatMap(([checked, ttl]) =>
        call("extend", millis, extendScript(keysOf(prefix, checked), channel, checked, owner, ttl))
      ),
      Effect.map((reply): ExtendOutcome => (reply === "extended" || reply === "stolen" ? reply : "expired"))
    )

  const release: Store["release"] = (name, owner, idleToo, millis = commandMillis) =>
    name.isWellFormed()
      ? call(
          "release",
          millis,
          releaseScript(keysOf(prefix, name), channel, name, owner, idleToo ? "1" : "0", "0")
        ).pipe(Effect.map((reply) => Number(reply) === 1))
      : Effect.succeed(false)

  const fence: Store["fence"] = (name, token, ttlMillis, millis = commandMillis) =>
    call("fence", millis, fenceScript(counterOf(prefix, name), token.toString(), String(ttlMillis))).pipe(
      Effect.map((reply) => BigInt(reply))
    )

  const inspectName = (name: string) =>
    call("inspect", commandMillis, inspectScript(keysOf(prefix, name))).pipe(
      Effect.map((reply): Inspection => {
        const now = Number(reply[0])
        const holders: Array<HolderInfo> = []
        const waiters: Array<WaiterInfo> = []
        const limit = reply[8] === null || reply[8] === undefined ? 1 : Number(reply[8])
        const x = reply[1]
        if (typeof x === "string") {
          const colon = x.indexOf(":")
          const bytes = Number(x.slice(0, colon))
          const rest = Buffer.from(x.slice(colon + 1), "utf8")
          const owner = rest.subarray(0, bytes).toString("utf8")
          const [token, acquiredAt, metadata] = fields(rest.subarray(bytes + 1).toString("utf8"), 3)
          const pttl = Number(reply[2])
          holders.push({
            name,
            owner,
            mode: "exclusive",
            permits: 1,
            limit: 1,
            token: BigInt(token ?? "0"),
            acquiredAt: Number(acquiredAt),
            expiresAt: pttl >= 0 ? now + pttl : undefined,
            metadata: parseMetadata(metadata ?? "{}")
          })
        }
        const records = new Map(pairs(reply[4]))
        for (const [owner, expiry] of pairs(reply[3])) {
          const record = records.get(owner)
          if (record === undefined) continue
          const [permits, token, acquiredAt, mode, metadata] = fields(record, 5)
          holders.push({
            name,
            owner,
            mode: mode === "shared" ? "shared" : "permits",
            permits: Number(permits),
            limit: mode === "shared" ? 1 : limit,
            token: BigInt(token ?? "0"),
            acquiredAt: Number(acquiredAt),
            expiresAt: Number(expiry),
            metadata: parseMetadata(metadata ?? "{}")
          })
        }
        const live = new Set(pairs(reply[6]).map(([owner]) => owner))
        const waiting = new Map(pairs(reply[7]))
        for (const [owner] of pairs(reply[5])) {
          const record = waiting.get(owner)
          if (record === undefined || !live.has(owner)) continue
          const [permits, since, mode, metadata] = fields(record, 4)
          waiters.push({
            name,
            owner,
            mode: mode === "exclusive" ? "exclusive" : mode === "shared" ? "shared" : "permits",
            permits: Number(permits),
            since: Number(since),
            metadata: parseMetadata(metadata ?? "{}")
          })
        }
        return { holders, waiters }
      })
    )

  const names = Effect.gen(function* () {
    const found = new Set<string>()
    let cursor = "0"
    do {
      const reply = yield* call(
        "inspect",
        commandMillis,
        redis.send<[string, Array<string>]>("SCAN", cursor, "MATCH", namesPattern(prefix), "COUNT", "1000")
      )
      cursor = String(reply[0])
      for (const key of reply[1]) {
        const name = nameOfKey(prefix, key)
        if (name !== undefined) found.add(name)
      }
    } while (cursor !== "0")
    return [...found].toSorted()
  })

  const inspect: Store["inspect"] = (name) =>
    Effect.gen(function* () {
      if (name !== undefined && !name.isWellFormed()) return { holders: [], waiters: [] }
      const list = name === undefined ? yield* names : [name]
      const parts = yield* Effect.forEach(list, inspectName, { concurrency: 16 })
      return {
        holders: parts.flatMap((part) => part.holders),
        waiters: parts.flatMap((part) => part.waiters)
      }
    })

  const listen: Store["listen"] = (onChange, onGap) =>
    Effect.gen(function* () {
      const subscribed = Deferred.makeUnsafe<void>()
      const once = Effect.scoped(
        Effect.gen(function* () {
          const queue = yield* redis.subscribe(channel)
          // Changes may have been missed before this (re)subscription.
          if (!Deferred.doneUnsafe(subscribed, Effect.void)) onGap()
          while (true) {
            const messages = yield* Queue.takeAll(queue)
            for (const message of messages) {
              const change = parseChange(message.message)
              if (change !== undefined) onChange(change)
            }
          }
        })
      )
      yield* Effect.forkScoped(
        Effect.forever(
          Effect.andThen(Effect.ignore(once), Effect.sleep(Duration.millis(250 + Math.floor(Math.random() * 250))))
        )
      )
      // Subscribed before the backend is used (bounded: a server that is
      // down is found by the first command).
      yield* Effect.ignore(withDeadline(commandMillis, Deferred.await(subscribed)))
    })

  return { grant, ungrant, extend, release, fence, inspect, listen }
}

/**
 * The in-process side of waiting: listeners per name, woken by the changes
 * a store's subscription delivers.
 */
export interface Waiters {
  /** `LockBackendShape.subscribe`. */
  readonly subscribe: (name: string, owner?: string) => Effect.Effect<Effect.Effect<void>, never, Scope.Scope>
  /** A change: wakes its owner's listener, or every listener of the name when the owner is empty. */
  readonly onChange: (change: Change) => void
  /** Wakes every listener (after a subscription gap). */
  readonly onGap: () => void
  /** Listeners registered now (for tests of leaks). */
  readonly size: () => number
}

/**
 * A fresh registry of waiting listeners. With `instances > 1` (Redlock), a
 * change published by several instances wakes once: changes seen in the
 * last second are remembered.
 */
export const makeWaiters = (instances = 1): Waiters => {
  const byName = new Map<string, Set<Listener>>()
  const recent = new Map<string, number>()
  const isRepeat = (change: Change): boolean => {
    if (instances <= 1) return false
    const now = Date.now()
    // Oldest first (a key seen again moves to the end): prune from the front.
    for (const [key, at] of recent) {
      if (now - at <= 1000) break
      recent.delete(key)
    }
    const key = `${change.name.length}:${change.name}${change.cause.length}:${change.cause}${change.owner}`
    const seen = recent.has(key)
    recent.delete(key)
    recent.set(key, now)
    return seen
  }
  const subscribe: Waiters["subscribe"] = (name, owner) =>
    Effect.gen(function* () {
      const listener = makeListener(owner)
      let set = byName.get(name)
      if (set === undefined) {
        set = new Set()
        byName.set(name, set)
      }
      set.add(listener)
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          const current = byName.get(name)
          if (current === undefined) return
          current.delete(listener)
          if (current.size === 0) byName.delete(name)
        })
      )
      // Expiries are nobody's change to announce: the core's refresh attempts
      // (every ttl/3) and its retry schedule find them.
      return waitForChange(listener, () => Infinity)
    })
  const onChange: Waiters["onChange"] = (change) => {
    const set = byName.get(change.name)
    if (set === undefined || isRepeat(change)) return
    const owner = change.owner
    for (const listener of set) {
      if (owner === "" || listener.owner === undefined || listener.owner === owner) signal(listener)
    }
  }
  const onGap = () => {
    for (const set of byName.values()) for (const listener of set) signal(listener)
  }
  const size = () => {
    let total = 0
    for (const set of byName.values()) total += set.size
    return total
  }
  return { subscribe, onChange, onGap, size }
}
