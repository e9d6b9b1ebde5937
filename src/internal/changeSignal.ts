/**
 * The change signal behind `LockBackendShape.subscribe`, shared by the
 * backends that keep their waiters in-process (memory, PostgreSQL).
 *
 * A change either wakes the listener's waiting deferred or is remembered as
 * pending for its next wait, never both, so no change is lost; an abandoned
 * wait disarms itself.
 */
import { Clock, Deferred, Effect } from "effect"

/** One subscription. */
export interface Listener {
  /** The waiter it belongs to, when known: a backend may then wake it only when it can proceed. */
  readonly owner: string | undefined
  pending: boolean
  deferred: Deferred.Deferred<void> | undefined
}

/** A fresh subscription. */
export const makeListener = (owner?: string): Listener => ({ owner, pending: false, deferred: undefined })

/** Signals a change: wakes the waiting deferred, or marks the change pending. */
export const signal = (listener: Listener): void => {
  const waiting = listener.deferred
  if (waiting !== undefined) {
    // Detach first: completing may resume the waiter inline, and it must not
    // find this (completed) deferred still armed.
    listener.deferred = undefined
    Deferred.doneUnsafe(waiting, Effect.void)
  } else {
    listener.pending = true
  }
}

/**
 * The wait of a subscription: completes on a signal, or once
 * `earliestExpiry()` (epoch millis by `Clock`) has passed, since an expiry is
 * a change nobody announces. An expiry that moved later meanwhile (a holder
 * extended) is waited for again.
 */
export const waitForChange = (listener: Listener, earliestExpiry: () => number): Effect.Effect<void> => {
  const disarm = (deferred: Deferred.Deferred<void>) =>
    Effect.sync(() => {
      if (listener.deferred === deferred) listener.deferred = undefined
    })
  return Effect.gen(function* () {
    while (true) {
      if (listener.pending) {
        listener.pending = false
        return
      }
      const deferred = listener.deferred ?? Deferred.makeUnsafe<void>()
      listener.deferred = deferred
      const earliest = earliestExpiry()
      const now = yield* Clock.currentTimeMillis
      const changed = yield* (
        earliest === Infinity
          ? Effect.as(Deferred.await(deferred), true)
          : Effect.raceFirst(
              Effect.as(Deferred.await(deferred), true),
              Effect.as(Effect.sleep(Math.max(0, earliest - now)), false)
            )
      ).pipe(Effect.onInterrupt(() => disarm(deferred)))
      // A signal may have completed the deferred while the race ended.
      if (changed || Deferred.isDoneUnsafe(deferred)) return
      yield* disarm(deferred)
      if (earliestExpiry() <= (yield* Clock.currentTimeMillis)) return
    }
  })
}
