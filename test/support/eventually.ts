/**
 * Waiting for a server's state in tests: retries a check on real time, also
 * under `TestClock` (a server's expiries run on its own clock).
 */
import { Effect } from "effect"

/** Retries `check` (a failing effect) every 20 ms of real time for up to `millis`; then fails with its error. */
export const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, millis = 3000): Effect.Effect<A, E, R> =>
  Effect.suspend(() => {
    const deadline = Date.now() + millis
    const loop: Effect.Effect<A, E, R> = Effect.catch(check, (error) =>
      Date.now() >= deadline
        ? Effect.fail(error)
        : Effect.andThen(
            Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20))),
            loop
          )
    )
    return loop
  })
