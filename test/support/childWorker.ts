/**
 * The child side of the multi-process tests: what the worker scripts (`test/<backend>/child.ts`, started by
 * `childProcesses.ts`) share. A worker reads its options from its only argument (JSON), prints `{"ready":true}`
 * once its backend is up, starts on the first input (or end of input) on stdin, and reports on stdout in JSON
 * lines; a failure goes to stderr with exit code 1.
 *
 * `fencedWorker` is the whole program of a worker that goes through a fenced resource kept on the lock's own
 * server (etcd, Redis): `contend` runs critical sections in several fibers and prints a summary, `hold` takes the
 * lock once, prints `{"held":"<token>"}` and keeps it until the process is killed.
 */
import { type Duration, Effect } from "effect"
import { Lock } from "../../src/index.ts"

/** The options the parent passed (the script's only argument, as JSON). */
export const parseOptions = <Options>(raw: string | undefined): Options => {
  if (raw === undefined) throw new Error("usage: child.ts <json options>")
  return JSON.parse(raw) as Options
}

/** Prints `value` as one JSON line on stdout, for the parent. */
export const printLine = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value)}\n`)
}

/** Tells the parent the backend is up, and waits for its go (a line on stdin, or its end). */
export const readyThenGo = Effect.suspend(() => {
  printLine({ ready: true })
  return Effect.callback<void>((resume) => {
    const go = () => {
      process.stdin.off("data", go)
      process.stdin.off("end", go)
      process.stdin.pause()
      resume(Effect.void)
    }
    process.stdin.on("data", go)
    process.stdin.on("end", go)
  })
})

/** Runs `section` `iterations` times over in each of `fibers` concurrent fibers. */
export const runSections = <E, R>(fibers: number, iterations: number, section: Effect.Effect<void, E, R>) =>
  Effect.forEach(
    Array.from({ length: fibers }, (_, i) => i),
    () => Effect.repeat(section, { times: iterations - 1 }),
    { concurrency: "unbounded", discard: true }
  )

/**
 * Runs the worker's program (its layers provided): `onDone` gets its result; a failure is written to stderr and
 * makes the process exit with code 1.
 */
export const runWorker = <A, E>(program: Effect.Effect<A, E>, onDone: (result: A) => void = () => {}): void => {
  Effect.runPromise(program).then(onDone, (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
    process.exitCode = 1
  })
}

/**
 * A worker's summary, printed at the end: its name and pid, how many sections it ran (one token each, in `tokens`)
 * and the counts of how they went (`counts`, e.g. `{ accepted, refused }`).
 */
export const summaryOf = <Counts extends Readonly<Record<string, number>>>(
  worker: string,
  tokens: ReadonlyArray<string>,
  counts: Counts
) => ({ worker, pid: process.pid, sections: tokens.length, ...counts, tokens })

/** What a worker going through a fenced resource is given (besides where its servers are). */
export interface FencedWorkerOptions {
  readonly name: string
  readonly worker: string
  readonly mode: "contend" | "hold"
  readonly fibers: number
  readonly iterations: number
  /** Lease TTL in milliseconds. */
  readonly ttlMillis: number
}

/** What a fenced worker prints at the end of `contend`. */
export interface FencedSummary {
  readonly worker: string
  readonly pid: number
  readonly sections: number
  readonly accepted: number
  readonly refused: number
  /** Tokens of this worker's critical sections, as decimal strings, in the order they entered. */
  readonly tokens: ReadonlyArray<string>
}

/** A step of a critical section through the fence. */
export type FenceStep = "enter" | "write" | "exit"

/** A fenced resource on the lock's server, as a worker goes through it. */
export interface Fence<E, R> {
  /** One step, checked and logged atomically on the server: the event it logged (`enter`, `write`, `exit` if admitted). */
  readonly step: (kind: FenceStep, token: bigint) => Effect.Effect<string, E, R>
  /** A round trip to the server while inside, after entering (yielding to the other fibers and processes). */
  readonly afterEnter: Effect.Effect<unknown, E, R>
  /** A round trip to the server while inside, before exiting. */
  readonly beforeExit: Effect.Effect<unknown, E, R>
}

/**
 * The program of a fenced worker: ready, wait for the go, then `contend` (critical sections through the fence
 * made by `makeFence`, each lock acquisition waiting at most `timeout`) or `hold`.
 */
export const fencedWorker = <E, R>(
  options: FencedWorkerOptions,
  timeout: Duration.Input,
  makeFence: Effect.Effect<Fence<E, R>, E, R>
) => {
  const contend = Effect.gen(function* () {
    const fence = yield* makeFence
    const tokens: Array<string> = []
    let accepted = 0
    let refused = 0

    const section = Effect.scoped(
      Effect.gen(function* () {
        // The loss signal is watched by runHeld below, as Lock.withLock does: a lost lease fails the section.
        const lease = yield* Lock.scoped(options.name, {
          ttl: options.ttlMillis,
          timeout,
          onLost: "ignore",
          metadata: { worker: options.worker }
        })
        const token = lease.token
        yield* Lock.runHeld(
          lease,
          Effect.gen(function* () {
            tokens.push(token.toString())
            const entered = yield* fence.step("enter", token)
            // Stay inside a little, yielding to the other fibers and (through the round trips) to the other process.
            yield* fence.afterEnter
            yield* Effect.yieldNow
            const written = yield* fence.step("write", token)
            if (entered === "enter" && written === "write") accepted++
            else refused++
            yield* fence.beforeExit
            yield* fence.step("exit", token)
          }),
          "interrupt"
        )
      })
    )

    yield* runSections(options.fibers, options.iterations, section)
    const summary: FencedSummary = summaryOf(options.worker, tokens, { accepted, refused })
    printLine(summary)
  })

  const hold = Effect.scoped(
    Effect.gen(function* () {
      const lease = yield* Lock.scoped(options.name, {
        ttl: options.ttlMillis,
        timeout: "30 seconds",
        onLost: "ignore",
        metadata: { worker: options.worker }
      })
      printLine({ held: lease.token.toString() })
      // Held (and extended by the heartbeat) until the parent kills the process.
      return yield* Effect.never
    })
  )

  return Effect.gen(function* () {
    // The layer is up: tell the parent, and start when every process is.
    yield* readyThenGo
    yield* options.mode === "hold" ? hold : contend
  })
}
