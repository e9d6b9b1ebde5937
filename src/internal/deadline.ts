/**
 * Real-time deadlines for backend I/O, shared by the backends that talk to a
 * server (PostgreSQL, Redis).
 */
import { Effect } from "effect"

/** A backend call that missed its deadline. */
export class StatementTimeout extends Error {
  readonly _tag = "StatementTimeout"
  readonly millis: number
  constructor(millis: number) {
    super(`statement missed its ${millis} ms deadline`)
    this.millis = millis
  }
}

/**
 * Runs `effect` in its own fiber and waits for it at most `millis`. The
 * caller never waits for an interrupted statement to drain: on a dead
 * network that could take for ever.
 *
 * The deadline is a real-time timer, not the `Clock`: it bounds network I/O,
 * which a `TestClock` does not move. One fiber and one timer per statement,
 * no race fibers: this is on every lock's path.
 */
export const withDeadline = <A, E>(
  millis: number,
  effect: Effect.Effect<A, E>,
  options: {
    /**
     * Interrupt the call when the caller is interrupted (default false: the
     * call runs on, unobserved). Redis commands are atomic on the server, so
     * interrupting one that has not been sent yet only keeps it from being
     * sent after its caller gave up.
     */
    readonly interruptWithCaller?: boolean
  } = {}
): Effect.Effect<A, E | StatementTimeout> =>
  Effect.flatMap(Effect.forkDetach(effect), (fiber) =>
    Effect.callback<A, E | StatementTimeout>((resume) => {
      let done = false
      const timer = setTimeout(() => {
        if (done) return
        done = true
        removeObserver()
        fiber.interruptUnsafe()
        resume(Effect.fail(new StatementTimeout(millis)))
      }, millis)
      const removeObserver = fiber.addObserver((exit) => {
        if (done) return
        done = true
        clearTimeout(timer)
        resume(exit)
      })
      return Effect.sync(() => {
        done = true
        clearTimeout(timer)
        removeObserver()
        if (options.interruptWithCaller === true) fiber.interruptUnsafe()
      })
    })
  )
