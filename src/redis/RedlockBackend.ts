/**
 * Redlock: the Redis backend's scripts on N >= 3 independent Redis servers; a
 * grant needs a majority of them within the lease's validity.
 *
 * **When to use**
 *
 * When one Redis server (or an asynchronously replicated primary) is not
 * available enough, and best-effort fencing is acceptable.
 *
 * **Details**
 *
 * - An attempt runs the acquire script on every instance at once, each call
 *   bounded by `perInstanceTimeout` (far below the TTL). It is granted only
 *   when a majority (`quorum`, default `floor(N/2) + 1`) granted and the
 *   validity `ttl - elapsed - drift` is positive, with
 *   `drift = ttl * driftFactor + 2 ms`. Otherwise the attempt is released on
 *   every instance, including those that timed out, and the core retries.
 * - Extension needs a majority within validity; release goes to every
 *   instance.
 * - The token is the highest of the granting instances' tokens, written back
 *   to them. It orders grants only while Redlock's timing assumptions hold
 *   (bounded pauses, clock drift and network delay), so `guarantees.fencing`
 *   is `"best-effort"` and `requireFencing: true` refuses this backend.
 * - Waiters queue on every instance and are woken by any instance's
 *   publication. Within one process, attempts on a name take turns, so the
 *   instances see the process's waiters in one order.
 *
 * **Gotchas**
 *
 * An instance restarted without persistence forgets its grants: right after
 * a restart of a majority member, two clients can both win (the guarantees
 * table says so, and a test shows it). Restart members with a delay of at
 * least the longest TTL, or run them with persistence.
 *
 * @since 0.1.0
 */
import {
  Clock,
  Context,
  type Duration,
  Effect,
  Layer,
  Option,
  Queue,
  Result,
  Schedule,
  type Scope,
  Semaphore
} from "effect"
import * as Redis from "effect/persistence/Redis"

const RedisService = Redis.Redis
import {
  type ExtendOutcome,
  type Guarantees,
  type HolderInfo,
  type Inspection,
  LockBackend,
  type LockBackendShape,
  type WaiterInfo
} from "../LockBackend.ts"
import { InvalidLockRequest, LockBackendUnavailable } from "../LockError.ts"
import { makeStore, makeWaiters, millisOf, redisLayer, resolveCommon, type Store } from "./internal/store.ts"

/**
 * Options of Redlock.
 *
 * @since 0.1.0
 */
export interface Options<E = never, R = never> {
  /** The independent Redis servers, at least three, e.g. `RedlockBackend.instancesFromUrls(urls)`. */
  readonly instances: ReadonlyArray<Layer.Layer<Redis.Redis, E, R>>
  /** Grants needed. Default `floor(N / 2) + 1`; must be a majority and at most N. */
  readonly quorum?: number | undefined
  /** Clock drift per millisecond of TTL. Default 0.01. */
  readonly driftFactor?: number | undefined
  /** Deadline of each instance's call. Default: 50 ms, or a tenth of the TTL when that is shorter. */
  readonly perInstanceTimeout?: Duration.Input | undefined
  /** Prefix of every key and of the change channel. Default `effect-locks:`. */
  readonly prefix?: string | undefined
  /** Deadline of the calls without a TTL (release, inspection). Default 2 seconds. */
  readonly commandTimeout?: Duration.Input | undefined
}

/**
 * What Redlock promises.
 *
 * @since 0.1.0
 */
export const guarantees: Guarantees = {
  fencing: "best-effort",
  scope: "a majority of N independent Redis servers, while pauses and clock drift stay within the drift allowance",
  leaseEnds: "validity (TTL minus elapsed time and drift) or scope",
  wakeUp: "pub/sub on every instance",
  fairness: "best-effort"
}

/** One call's outcome on one instance. */
type Answer<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly error: unknown }

const settle = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<Answer<A>> =>
  Effect.match(effect, {
    onSuccess: (value): Answer<A> => ({ ok: true, value }),
    onFailure: (error): Answer<A> => ({ ok: false, error })
  })

/**
 * Builds Redlock over `Redis` services; each gets one subscription to the
 * change channel for the life of the scope.
 *
 * @since 0.1.0
 */
export const make = (options: {
  readonly instances: ReadonlyArray<Redis.Redis["Service"]>
  readonly quorum?: number | undefined
  readonly driftFactor?: number | undefined
  readonly perInstanceTimeout?: Duration.Input | undefined
  readonly prefix?: string | undefined
  readonly commandTimeout?: Duration.Input | undefined
}): Effect.Effect<LockBackendShape, InvalidLockRequest, Scope.Scope> =>
  Effect.gen(function* () {
    const settings = yield* resolveCommon(options)
    const n = options.instances.length
    const { quorum, driftFactor, perInstanceMillis } = yield* validate(n, options)
    const stores: ReadonlyArray<Store> = options.instances.map((redis) => makeStore(redis, settings))
    const waiters = makeWaiters(n)
    const backendScope = yield* Effect.scope
    for (const store of stores) yield* store.listen(waiters.onChange, waiters.onGap)

    const callMillis = (ttlMillis: number) => perInstanceMillis ?? Math.max(1, Math.min(50, Math.floor(ttlMillis / 10)))
    const driftOf = (ttlMillis: number) => ttlMillis * driftFactor + 2
    const all = <A, E>(f: (store: Store) => Effect.Effect<A, E>) =>
      Effect.forEach(stores, (store) => settle(f(store)), { concurrency: "unbounded" })

    // Attempts on one name take turns within the process, so that every
    // instance sees this process's waiters in the same order.
    const gates = new Map<string, { readonly semaphore: Semaphore.Semaphore; users: number }>()
    const gated = <A, E>(name: string, effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
      Effect.suspend(() => {
        let gate = gates.get(name)
        if (gate === undefined) {
          gate = { semaphore: Semaphore.makeUnsafe(1), users: 0 }
          gates.set(name, gate)
        }
        const current = gate
        current.users++
        return current.semaphore
          .withPermits(1)(effect)
          .pipe(
            Effect.ensuring(
              Effect.sync(() => {
                current.users--
                if (current.users === 0 && gates.get(name) === current) gates.delete(name)
              })
            )
          )
      })

    const releaseEverywhere = (name: string, owner: string) =>
      all((store) => store.release(name, owner, true, settings.commandMillis))

    const tryAcquire: LockBackendShape["tryAcquire"] = (request) =>
      gated(
        request.name,
        Effect.gen(function* () {
          const millis = callMillis(request.ttlMillis)
          const started = yield* Clock.currentTimeMillis
          const answers = yield* all((store) => store.grant(request, 0n, millis))
          const elapsed = (yield* Clock.currentTimeMillis) - started
          const invalid = answers.find(
            (answer): answer is { ok: false; error: InvalidLockRequest } =>
              !answer.ok && answer.error instanceof InvalidLockRequest
          )
          const tokens: Array<bigint> = []
          const granted: Array<Store> = []
          answers.forEach((answer, i) => {
            if (answer.ok && Option.isSome(answer.value)) {
              tokens.push(answer.value.value.token)
              granted.push(stores[i]!)
            }
          })
          const validity = request.ttlMillis - elapsed - driftOf(request.ttlMillis)
          if (invalid === undefined && granted.length >= quorum && validity > 0) {
            const token = tokens.reduce((a, b) => (a > b ? a : b))
            // Written back, so that the next grant on these instances is greater.
            yield* Effect.forEach(
              granted,
              (store) => settle(store.fence(request.name, token, request.ttlMillis, millis)),
              { concurrency: "unbounded" }
            )
            return Option.some({ token })
          }
          // The core releases everything after a failed attempt.
          if (invalid !== undefined) return yield* invalid.error
          // Not granted: undo the grants, keeping the request's place in each
          // queue. An instance that did not answer may have granted too: it is
          // undone in the background (it may be slow, and this holds the gate).
          yield* Effect.forEach(
            answers,
            (answer, i) => {
              const store = stores[i]!
              if (answer.ok) {
                return Option.isSome(answer.value)
                  ? settle(store.ungrant(request, answer.value.value.arrival, millis))
                  : Effect.void
              }
              return Effect.asVoid(Effect.forkIn(settle(store.ungrant(request, undefined)), backendScope))
            },
            { concurrency: "unbounded", discard: true }
          )
          const failures = answers.filter((answer) => !answer.ok).length
          if (failures > n - quorum) {
            const first = answers.find((answer): answer is { ok: false; error: unknown } => !answer.ok)
            return yield* new LockBackendUnavailable({
              operation: "acquire",
              cause: new Error(
                `${failures} of ${n} Redis instances failed; a quorum of ${quorum} is out of reach (first: ${
                  first?.error instanceof Error ? first.error.message : String(first?.error)
                })`
              )
            })
          }
          return Option.none()
        })
      )

    const extend: LockBackendShape["extend"] = (name, owner, ttlMillis) =>
      Effect.gen(function* () {
        const started = yield* Clock.currentTimeMillis
        const answers = yield* all((store) => store.extend(name, owner, ttlMillis, callMillis(ttlMillis)))
        const elapsed = (yield* Clock.currentTimeMillis) - started
        const count = (outcome: ExtendOutcome) =>
          answers.filter((answer) => answer.ok && answer.value === outcome).length
        if (count("extended") >= quorum && ttlMillis - elapsed - driftOf(ttlMillis) > 0) return "extended" as const
        const answered = answers.filter((answer) => answer.ok).length
        if (answered < quorum) {
          return yield* new LockBackendUnavailable({
            operation: "extend",
            cause: new Error(`${answered} of ${n} Redis instances answered; a quorum of ${quorum} is needed`)
          })
        }
        return count("stolen") > 0 ? ("stolen" as const) : ("expired" as const)
      })

    const release: LockBackendShape["release"] = (name, owner) =>
      Effect.gen(function* () {
        const answers = yield* releaseEverywhere(name, owner)
        if (answers.every((answer) => !answer.ok)) {
          const first = answers[0]
          return yield* new LockBackendUnavailable({
            operation: "release",
            cause: first !== undefined && !first.ok ? first.error : new Error("no instance answered")
          })
        }
        return answers.some((answer) => answer.ok && answer.value)
      })

    const inspect: LockBackendShape["inspect"] = (name) =>
      Effect.gen(function* () {
        const answers = yield* all((store) => store.inspect(name))
        const views = answers.flatMap((answer) => (answer.ok ? [answer.value] : []))
        if (views.length < quorum) {
          return yield* new LockBackendUnavailable({
            operation: "inspect",
            cause: new Error(`${views.length} of ${n} Redis instances answered; a quorum of ${quorum} is needed`)
          })
        }
        return merge(views, quorum)
      })

    return LockBackend.of({
      kind: "redlock",
      guarantees,
      tryAcquire,
      extend,
      release,
      subscribe: waiters.subscribe,
      inspect
    })
  })

/** Checks the instance count, quorum, drift factor and per-instance timeout. */
const validate = (
  n: number,
  options: {
    readonly quorum?: number | undefined
    readonly driftFactor?: number | undefined
    readonly perInstanceTimeout?: Duration.Input | undefined
  }
) =>
  Effect.gen(function* () {
    if (n < 3) {
      return yield* new InvalidLockRequest({ field: "instances", reason: `Redlock needs at least 3, got ${n}` })
    }
    const quorum = options.quorum ?? Math.floor(n / 2) + 1
    if (!Number.isInteger(quorum) || quorum <= n / 2 || quorum > n) {
      return yield* new InvalidLockRequest({
        field: "quorum",
        reason: `must be an integer majority of ${n} (${Math.floor(n / 2) + 1}..${n}), got ${quorum}`
      })
    }
    const driftFactor = options.driftFactor ?? 0.01
    if (!Number.isFinite(driftFactor) || driftFactor < 0 || driftFactor >= 0.5) {
      return yield* new InvalidLockRequest({ field: "driftFactor", reason: "must be at least 0 and below 0.5" })
    }
    const perInstanceMillis =
      options.perInstanceTimeout === undefined
        ? undefined
        : yield* millisOf(options.perInstanceTimeout, 50, "perInstanceTimeout")
    return { quorum, driftFactor, perInstanceMillis }
  })

/** Holders and waiters seen on at least `quorum` instances; a holder's token is the highest seen. */
const merge = (views: ReadonlyArray<Inspection>, quorum: number): Inspection => {
  const holders = new Map<string, { info: HolderInfo; seen: number }>()
  const waiters = new Map<string, { info: WaiterInfo; seen: number }>()
  for (const view of views) {
    for (const info of view.holders) {
      const key = `${info.name}\u0000${info.owner}`
      const entry = holders.get(key)
      if (entry === undefined) holders.set(key, { info, seen: 1 })
      else {
        entry.seen++
        if (info.token > entry.info.token) entry.info = { ...entry.info, token: info.token }
      }
    }
    for (const info of view.waiters) {
      const key = `${info.name}\u0000${info.owner}`
      const entry = waiters.get(key)
      if (entry === undefined) waiters.set(key, { info, seen: 1 })
      else entry.seen++
    }
  }
  return {
    holders: [...holders.values()].filter((entry) => entry.seen >= quorum).map((entry) => entry.info),
    waiters: [...waiters.values()].filter((entry) => entry.seen >= quorum).map((entry) => entry.info)
  }
}

/**
 * Redlock as a layer over the given instances' layers (each built once, for
 * the layer's life). It starts when at least a quorum of them connect; an
 * instance that cannot be built yet answers every call with an error and is
 * built again every second in the background.
 *
 * @since 0.1.0
 */
export const layer = <E, R>(
  options: Options<E, R>
): Layer.Layer<LockBackend, E | InvalidLockRequest | LockBackendUnavailable, R> =>
  Layer.effect(
    LockBackend,
    Effect.gen(function* () {
      const n = options.instances.length
      const { quorum } = yield* validate(n, options)
      yield* resolveCommon(options)
      const built = yield* Effect.forEach(options.instances, (instance) => Effect.result(buildRedis(instance)), {
        concurrency: "unbounded"
      })
      const up = built.filter(Result.isSuccess).length
      if (up < quorum) {
        const failure = built.find(Result.isFailure)
        return yield* new LockBackendUnavailable({
          operation: "connect",
          cause: new Error(
            `${up} of ${n} Redis instances connected; a quorum of ${quorum} is needed (first failure: ${
              failure === undefined ? "none" : String(failure.failure)
            })`
          )
        })
      }
      const instances = yield* Effect.forEach(options.instances, (instance, i) => {
        const first = built[i]!
        return Result.isSuccess(first) ? Effect.succeed(first.success) : reconnecting(buildRedis(instance))
      })
      return yield* make({ ...options, instances })
    })
  )

const buildRedis = <E, R>(instance: Layer.Layer<Redis.Redis, E, R>) =>
  Effect.map(Layer.build(instance), (context) => Context.get(context, RedisService))

/**
 * A `Redis` service for an instance that is down at start: every call fails
 * until a background fiber (retrying every second) has built it.
 */
const reconnecting = <E, R>(
  build: Effect.Effect<Redis.Redis["Service"], E, R | Scope.Scope>
): Effect.Effect<Redis.Redis["Service"], never, R | Scope.Scope> =>
  Effect.gen(function* () {
    let current: Redis.Redis["Service"] | undefined
    const down = new Redis.RedisError({ cause: new Error("Redis instance not connected yet") })
    yield* Effect.forkScoped(
      Effect.retry(
        Effect.flatMap(build, (service) => Effect.sync(() => (current = service))),
        Schedule.spaced("1 second")
      )
    )
    const service: Redis.Redis["Service"] = {
      send: (command, ...args) =>
        Effect.suspend(() => (current === undefined ? Effect.fail(down) : current.send(command, ...args))),
      eval:
        (script) =>
        (...params) =>
          Effect.suspend(() => (current === undefined ? Effect.fail(down) : current.eval(script)(...params))),
      subscribe: (channel) =>
        Effect.suspend(() => {
          if (current !== undefined) return current.subscribe(channel)
          return Effect.tap(Queue.make<Redis.RedisMessage, Redis.RedisError>(), (queue) => Queue.fail(queue, down))
        }),
      reserve: Effect.suspend(() => (current === undefined ? Effect.fail(down) : current.reserve))
    }
    return service
  })

/**
 * One `Redis` layer per URL, by `NodeRedis`.
 *
 * @since 0.1.0
 */
export const instancesFromUrls = (
  urls: ReadonlyArray<string>
): ReadonlyArray<Layer.Layer<Redis.Redis, LockBackendUnavailable>> => urls.map(redisLayer)

/**
 * Redlock over Redis servers given by URL.
 *
 * @since 0.1.0
 */
export const layerFromUrls = (
  urls: ReadonlyArray<string>,
  options: Omit<Options<LockBackendUnavailable>, "instances"> = {}
): Layer.Layer<LockBackend, LockBackendUnavailable | InvalidLockRequest> => {
  // The same server twice would answer for two "independent" instances.
  const seen = new Set<string>()
  for (const url of urls) {
    const key = url.trim().toLowerCase().replace(/\/+$/, "")
    if (seen.has(key)) {
      return Layer.effect(
        LockBackend,
        Effect.fail(new InvalidLockRequest({ field: "instances", reason: `the URL ${url} is given twice` }))
      )
    }
    seen.add(key)
  }
  return layer({ ...options, instances: instancesFromUrls(urls) })
}
