/**
 * A worker process for `processes.test.ts`: contends for one lock name on the
 * etcd backend with other processes, and inside each critical section goes
 * through a fenced resource kept in etcd itself (`fence` below: every step is
 * one transaction guarded on the state key's mod revision, so every check and
 * write is atomic on the server, and leaves a log key whose create revision
 * orders it among every step of every process).
 *
 * Run as `node test/etcd/child.ts <json options>` (Node >= 22.18 runs `.ts`
 * files directly). It prints `{"ready":true}` once its backend is up and
 * starts on the first input (or end of input) on stdin, so that both
 * processes contend from the start.
 *
 * - `mode: "contend"`: `fibers` fibers each run `iterations` critical
 *   sections; at the end it prints one JSON summary line and exits 0, or
 *   exits 1 with the failure on stderr.
 * - `mode: "hold"`: takes the lock once, prints `{"held":"<token>"}` and
 *   keeps it (heartbeat running) until it is killed.
 */
import { Effect, Layer } from "effect"
import { Lock } from "../../src/index.ts"
import { EtcdBackend, EtcdClient } from "../../src/etcd/index.ts"

/** What the parent passes. */
export interface ChildOptions {
  readonly endpoints: ReadonlyArray<string>
  /** The lock backend's key prefix. */
  readonly prefix: string
  /** The fenced resource's key prefix (outside the backend's): `<fence>state` and `<fence>log/...`. */
  readonly fence: string
  readonly name: string
  readonly worker: string
  readonly mode: "contend" | "hold"
  readonly fibers: number
  readonly iterations: number
  /** Lease TTL in milliseconds. */
  readonly ttlMillis: number
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

/** The fenced resource's state: the highest token admitted, the token inside ("" for nobody), the writes accepted. */
export interface FenceState {
  readonly highest: string
  readonly inside: string
  readonly writes: number
}

/** A step of a critical section through the fence. */
export type FenceStep = "enter" | "write" | "exit"

/**
 * The fence's rules. Each step is logged as `<event>|<worker>|<token>`.
 *
 * - enter: `enter` when nobody is inside and the token is above every token admitted before (then it is inside and
 *   the highest); `overlap` when another token is inside; `stale` when the token is not above the highest.
 * - write: `write` when the token is the one inside and still the highest; `stale-write` otherwise.
 * - exit: `exit` when the token is the one inside (then nobody is); `foreign-exit` otherwise.
 */
const decide = (
  step: FenceStep,
  state: FenceState,
  token: bigint
): { readonly event: string; readonly next: FenceState } => {
  switch (step) {
    case "enter":
      if (token <= BigInt(state.highest)) return { event: "stale", next: state }
      if (state.inside !== "") return { event: "overlap", next: state }
      return { event: "enter", next: { ...state, inside: token.toString(), highest: token.toString() } }
    case "write":
      return state.inside === token.toString() && state.highest === token.toString()
        ? { event: "write", next: { ...state, writes: state.writes + 1 } }
        : { event: "stale-write", next: state }
    case "exit":
      return state.inside === token.toString()
        ? { event: "exit", next: { ...state, inside: "" } }
        : { event: "foreign-exit", next: state }
  }
}

/** The fence before its first step. */
const initialFence: FenceState = { highest: "0", inside: "", writes: 0 }

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
  const etcd = yield* EtcdClient.EtcdClient
  const stateKey = `${options.fence}state`
  let logged = 0

  /** One fence step: read the state, decide, and commit state and log entry if nobody changed the state meanwhile. */
  const step = (kind: FenceStep, token: bigint) =>
    Effect.gen(function* () {
      while (true) {
        const current = yield* etcd.call("fence", (c) => c.get(stateKey).exec())
        const kv = current.kvs[0]
        const state = kv === undefined ? initialFence : (JSON.parse(kv.value.toString("utf8")) as FenceState)
        const { event, next } = decide(kind, state, token)
        const logKey = `${options.fence}log/${options.worker}/${String(logged++).padStart(6, "0")}`
        const answer = yield* etcd.call("fence", (c) =>
          c
            .if(stateKey, "Mod", "==", kv?.mod_revision ?? "0")
            .then(
              c.put(stateKey).value(JSON.stringify(next)),
              c.put(logKey).value(`${event}|${options.worker}|${token}`)
            )
            .commit()
        )
        if (answer.succeeded) return event
      }
    })

  const tokens: Array<string> = []
  let accepted = 0
  let refused = 0

  const section = Effect.scoped(
    Effect.gen(function* () {
      // The loss signal is watched by runHeld below, as Lock.withLock does: a lost lease fails the section.
      const lease = yield* Lock.scoped(options.name, {
        ttl: options.ttlMillis,
        timeout: "60 seconds",
        onLost: "ignore",
        metadata: { worker: options.worker }
      })
      const token = lease.token
      yield* Lock.runHeld(
        lease,
        Effect.gen(function* () {
          tokens.push(token.toString())
          const entered = yield* step("enter", token)
          // Stay inside a little, yielding to the other fibers and (through the round trip) to the other process.
          yield* etcd.call("fence", (c) => c.get(stateKey).exec())
          yield* Effect.yieldNow
          const written = yield* step("write", token)
          if (entered === "enter" && written === "write") accepted++
          else refused++
          yield* step("exit", token)
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
  // The layer is up: tell the parent, and start when every process is.
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`)
  yield* awaitGo
  yield* options.mode === "hold" ? hold : contend
})

const client = EtcdClient.layer({ endpoints: options.endpoints })
const layer = EtcdBackend.layer({ prefix: options.prefix }).pipe(Layer.provideMerge(client))

Effect.runPromise(program.pipe(Effect.provide(layer))).then(
  () => {},
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
    process.exitCode = 1
  }
)
