/**
 * Lease helpers of the backend fault tests (`test/etcd/backend.test.ts`, `test/redis/faults.test.ts`,
 * `test/postgres/faults.test.ts`): a holder whose critical section runs until its lease is lost, a critical section
 * in `withLock` to interrupt, a watcher of the last moment a lease was known good, when a loss was reported, and the
 * `LockLost` a fiber failed with.
 */
import { assert } from "@effect/vitest"
import { Cause, Clock, Deferred, type Duration, Effect, Exit, Fiber, Option } from "effect"
import { type Lease, Lock, type LockConfig, type LockLost } from "../../src/index.ts"

/**
 * Holds `name` in a forked fiber whose critical section never ends on its
 * own: it fails with `LockLost` once the lease is lost. Returns the fiber and
 * the lease.
 */
export const holdInFiber = (name: string, ttl: Duration.Duration) =>
  Effect.gen(function* () {
    const published = yield* Deferred.make<Lease.Lease>()
    const holder = yield* Effect.forkChild(
      Effect.scoped(
        Effect.gen(function* () {
          const lease = yield* Lock.scoped(name, { ttl, onLost: "ignore" })
          yield* Deferred.succeed(published, lease)
          return yield* Lock.runHeld(lease, Effect.never, "interrupt")
        })
      )
    )
    return { holder, lease: yield* Deferred.await(published) }
  })

/**
 * Forks a critical section in `Lock.withLock(name, options)` that never ends
 * on its own, and waits until it is inside. `interrupt` interrupts it, and
 * checks that it ended by the interruption and that its finalizer ran.
 */
export const insideWithLock = (name: string, options?: LockConfig.LockOptions) =>
  Effect.gen(function* () {
    const entered = yield* Deferred.make<void>()
    const finalized = yield* Deferred.make<void>()
    const holder = yield* Effect.forkChild(
      Lock.withLock(
        name,
        options
      )(
        Effect.andThen(Deferred.succeed(entered, undefined), Effect.never).pipe(
          Effect.ensuring(Deferred.succeed(finalized, undefined))
        )
      )
    )
    yield* Deferred.await(entered)
    const interrupt = Effect.gen(function* () {
      yield* Fiber.interrupt(holder)
      assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(holder)))
      assert.isTrue(yield* Deferred.isDone(finalized), "the critical section was stopped")
    })
    return { holder, interrupt }
  })

/**
 * Records, until the lease is no longer held, the last moment it was known
 * good (`expiresAt - ttl`: when its last successful extension was sent).
 */
export const watchLastGood = (lease: Lease.Lease, ttlMillis: number) =>
  Effect.gen(function* () {
    const seen = { lastGood: lease.acquiredAt, extensions: 0 }
    const first = yield* lease.state
    if (first._tag === "Held") seen.lastGood = first.expiresAt - ttlMillis
    const fiber = yield* Effect.forkChild(
      Effect.gen(function* () {
        while (true) {
          const state = yield* lease.state
          if (state._tag !== "Held") return
          const good = state.expiresAt - ttlMillis
          if (good > seen.lastGood) {
            seen.lastGood = good
            seen.extensions++
          }
          yield* Effect.sleep("5 millis")
        }
      })
    )
    return { seen, fiber }
  })

/** When the lease's loss was reported, and the error. */
export const lossOf = (lease: Lease.Lease) =>
  Effect.flatMap(lease.lost, (error) => Effect.map(Clock.currentTimeMillis, (at) => ({ error, at })))

/** The `LockLost` a fiber failed with, if any. */
export const lockLostOf = (exit: Exit.Exit<unknown, unknown>): LockLost | undefined =>
  Exit.isFailure(exit) ? (Option.getOrUndefined(Cause.findErrorOption(exit.cause)) as LockLost | undefined) : undefined
