/**
 * Turns any lock backend into a faulty one, for tests.
 *
 * **When to use**
 *
 * To prove that holders learn of partitions, failed extensions and slow
 * stores in time, and that interruption at any backend call leaks nothing.
 *
 * **Details**
 *
 * Faults, all controlled at run time through `FaultControl`:
 * - `failNext(n)`: the next `n` calls (of the listed operations) fail with
 *   `LockBackendUnavailable` without reaching the store.
 * - `setDelay(d)`: every call waits `d` (on `Clock`) before reaching the store.
 * - `partition("hang" | "fail", d?)`: every call hangs until the partition
 *   heals (then goes through) or fails at once; it heals after `d` on
 *   `Clock`, or on `heal`.
 * - `dropExtensions(true)`: extensions answer `extended` but never reach the
 *   store, so the store expires the grant while the holder believes it holds.
 * - `setHook(f)`: `f` runs before and after every call with the call's index,
 *   e.g. to interrupt a fiber at operation N.
 *
 * @since 0.1.0
 */
import { Clock, Context, Deferred, Duration, Effect, Layer } from "effect"
import { LockBackend, type LockBackendShape } from "../LockBackend.ts"
import { LockBackendUnavailable } from "../LockError.ts"

/**
 * The backend operations a fault can target.
 *
 * @since 0.1.0
 */
export type Operation = "tryAcquire" | "extend" | "release" | "subscribe" | "inspect"

/**
 * What a hook sees of a call.
 *
 * @since 0.1.0
 */
export interface CallInfo {
  /** 0-based index of the call among every call through this wrapper. */
  readonly index: number
  readonly operation: Operation
  readonly phase: "before" | "after"
}

/**
 * Controls of a faulty backend.
 *
 * @since 0.1.0
 */
export interface FaultControlShape {
  readonly failNext: (n: number, operations?: ReadonlyArray<Operation>) => Effect.Effect<void>
  readonly setDelay: (delay: Duration.Input | undefined) => Effect.Effect<void>
  readonly partition: (mode: "hang" | "fail", duration?: Duration.Input) => Effect.Effect<void>
  readonly heal: Effect.Effect<void>
  readonly dropExtensions: (drop: boolean) => Effect.Effect<void>
  readonly setHook: (hook: ((call: CallInfo) => Effect.Effect<void>) | undefined) => Effect.Effect<void>
  /** Calls made so far, by operation. */
  readonly calls: Effect.Effect<Readonly<Record<Operation, number>>>
}

/**
 * The controls of the faulty backend in context.
 *
 * @since 0.1.0
 */
export class FaultControl extends Context.Service<FaultControl, FaultControlShape>()(
  "effect-locks/testing/FaultControl"
) {}

/**
 * Wraps a backend; returns the faulty backend and its controls.
 *
 * @since 0.1.0
 */
export const make = (
  inner: LockBackendShape
): Effect.Effect<{ readonly backend: LockBackendShape; readonly control: FaultControlShape }> =>
  Effect.sync(() => {
    let failRemaining = 0
    let failOps: ReadonlySet<Operation> | undefined
    let delayMillis = 0
    let partition: { mode: "hang" | "fail"; until: number; healed: Deferred.Deferred<void> } | undefined
    let drop = false
    let hook: ((call: CallInfo) => Effect.Effect<void>) | undefined
    let index = 0
    const counts: Record<Operation, number> = { tryAcquire: 0, extend: 0, release: 0, subscribe: 0, inspect: 0 }

    const unavailable = (operation: Operation, why: string) =>
      new LockBackendUnavailable({ operation, cause: new Error(`injected fault: ${why}`) })

    const healNow = () => {
      if (partition !== undefined) Deferred.doneUnsafe(partition.healed, Effect.void)
      partition = undefined
    }

    const guard = <A, E, R>(
      operation: Operation,
      call: Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | LockBackendUnavailable, R> =>
      Effect.gen(function* () {
        const i = index++
        counts[operation]++
        if (hook !== undefined) yield* hook({ index: i, operation, phase: "before" })
        if (failRemaining > 0 && (failOps === undefined || failOps.has(operation))) {
          failRemaining--
          return yield* unavailable(operation, "failNext")
        }
        const now = yield* Clock.currentTimeMillis
        if (partition !== undefined && now >= partition.until) healNow()
        if (partition !== undefined) {
          const current = partition
          if (current.mode === "fail") return yield* unavailable(operation, "partition")
          const remaining = current.until - now
          const wait = Deferred.await(current.healed)
          yield* Number.isFinite(remaining) ? Effect.raceFirst(wait, Effect.sleep(remaining)) : wait
        }
        if (delayMillis > 0) yield* Effect.sleep(delayMillis)
        const result = yield* call
        if (hook !== undefined) yield* hook({ index: i, operation, phase: "after" })
        return result
      })

    const backend: LockBackendShape = {
      kind: inner.kind,
      guarantees: inner.guarantees,
      tryAcquire: (request) => guard("tryAcquire", inner.tryAcquire(request)),
      extend: (name, owner, ttl) =>
        drop ? guard("extend", Effect.succeed("extended" as const)) : guard("extend", inner.extend(name, owner, ttl)),
      release: (name, owner) => guard("release", inner.release(name, owner)),
      subscribe: (name, owner) => guard("subscribe", inner.subscribe(name, owner)),
      inspect: (name) => guard("inspect", inner.inspect(name))
    }

    const control: FaultControlShape = {
      failNext: (n, operations) =>
        Effect.sync(() => {
          failRemaining = n
          failOps = operations === undefined ? undefined : new Set(operations)
        }),
      setDelay: (delay) => Effect.sync(() => (delayMillis = delay === undefined ? 0 : Duration.toMillis(delay))),
      partition: (mode, duration) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.sync(() => {
            healNow()
            partition = {
              mode,
              until: duration === undefined ? Infinity : now + Duration.toMillis(duration),
              healed: Deferred.makeUnsafe<void>()
            }
          })
        ),
      heal: Effect.sync(healNow),
      dropExtensions: (value) => Effect.sync(() => (drop = value)),
      setHook: (value) => Effect.sync(() => (hook = value)),
      calls: Effect.sync(() => ({ ...counts }))
    }
    return { backend, control }
  })

/**
 * Replaces the `LockBackend` in context by a faulty wrapper of it, and
 * provides its `FaultControl`.
 *
 * @since 0.1.0
 */
export const layer: Layer.Layer<LockBackend | FaultControl, never, LockBackend> = Layer.effectContext(
  Effect.gen(function* () {
    const { backend, control } = yield* make(yield* LockBackend)
    return Context.make(LockBackend, backend).pipe(Context.add(FaultControl, control))
  })
)
