/**
 * An Effect service over the `etcd3` client: every call has a real-time
 * deadline, and transport errors become `LockBackendUnavailable`.
 *
 * @since 0.1.0
 */
import { Config, Context, Duration, Effect, Layer } from "effect"
import { Etcd3, type IOptions } from "etcd3"
import { InvalidLockRequest, LockBackendUnavailable } from "../LockError.ts"
import { StatementTimeout } from "../internal/deadline.ts"

/**
 * The client and its guarded call.
 *
 * @since 0.1.0
 */
export interface EtcdClientShape {
  /** The underlying `etcd3` client (its own pool of gRPC channels to the endpoints). */
  readonly client: Etcd3
  /** Deadline of each call, in milliseconds. */
  readonly callMillis: number
  /**
   * Runs one call with the deadline (or `millis`); a rejection or a missed
   * deadline is `LockBackendUnavailable` naming `operation`.
   */
  readonly call: <A>(
    operation: string,
    f: (client: Etcd3) => Promise<A>,
    millis?: number
  ) => Effect.Effect<A, LockBackendUnavailable>
}

/**
 * The etcd client in context.
 *
 * @since 0.1.0
 */
export class EtcdClient extends Context.Service<EtcdClient, EtcdClientShape>()("effect-locks/EtcdClient") {}

/**
 * Options of the client.
 *
 * @since 0.1.0
 */
export interface Options {
  /** `http://host:port` of one or more members. */
  readonly endpoints: ReadonlyArray<string>
  /** Deadline of each call. Default 2 seconds. */
  readonly callTimeout?: Duration.Input | undefined
  /** More `etcd3` options (auth, credentials, ...). */
  readonly etcd3?: Omit<IOptions, "hosts"> | undefined
}

/**
 * A client for `endpoints`, closed with the layer.
 *
 * @since 0.1.0
 */
export const layer = (options: Options): Layer.Layer<EtcdClient, InvalidLockRequest> =>
  Layer.effect(
    EtcdClient,
    Effect.gen(function* () {
      const endpoints = options.endpoints.map((e) => e.trim()).filter((e) => e.length > 0)
      if (endpoints.length === 0) {
        return yield* new InvalidLockRequest({ field: "endpoints", reason: "at least one etcd endpoint is needed" })
      }
      const callMillis =
        options.callTimeout === undefined ? 2000 : Duration.toMillis(Duration.fromInputUnsafe(options.callTimeout))
      if (!(callMillis > 0) || !Number.isFinite(callMillis)) {
        return yield* new InvalidLockRequest({ field: "callTimeout", reason: "must be a positive, finite duration" })
      }
      // gRPC's own per-call deadline too (half of ours): a call to a stalled
      // member then fails inside etcd3 in time to be retried on another member,
      // and that member's circuit breaker opens. A retried call is safe: the
      // guarded put finds its own key, a delete is idempotent, and a lease
      // granted twice expires unused.
      const client = yield* Effect.acquireRelease(
        Effect.sync(
          () =>
            new Etcd3({
              defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + callMillis / 2 }),
              ...options.etcd3,
              hosts: [...endpoints]
            })
        ),
        (c) => Effect.sync(() => c.close())
      )
      // A promise and a timer, no fiber: this is on every lock's path. The
      // promise cannot be cancelled; an answer after the deadline is dropped.
      const call: EtcdClientShape["call"] = <A>(operation: string, f: (c: Etcd3) => Promise<A>, millis = callMillis) =>
        Effect.callback<A, LockBackendUnavailable>((resume) => {
          let done = false
          const settle = (effect: Effect.Effect<A, LockBackendUnavailable>) => {
            if (done) return
            done = true
            clearTimeout(timer)
            resume(effect)
          }
          const failed = (cause: unknown) => settle(Effect.fail(new LockBackendUnavailable({ operation, cause })))
          const timer = setTimeout(() => failed(new StatementTimeout(millis)), millis)
          try {
            f(client).then((value) => settle(Effect.succeed(value)), failed)
          } catch (cause) {
            failed(cause)
          }
          return Effect.sync(() => {
            done = true
            clearTimeout(timer)
          })
        })
      return { client, callMillis, call }
    })
  )

/**
 * Reads `LOCK_ETCD_ENDPOINTS` (comma-separated).
 *
 * @since 0.1.0
 */
export const layerConfig: Layer.Layer<EtcdClient, Config.ConfigError | InvalidLockRequest> = Layer.unwrap(
  Effect.map(Config.String("LOCK_ETCD_ENDPOINTS"), (endpoints) => layer({ endpoints: endpoints.split(",") }))
)
