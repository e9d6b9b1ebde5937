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
import { EtcdBackend, EtcdClient } from "../../src/etcd/index.ts"
import {
  type FencedSummary,
  type FencedWorkerOptions,
  type FenceStep,
  fencedWorker,
  parseOptions,
  runWorker
} from "../support/childWorker.ts"

/** What the parent passes. */
export interface ChildOptions extends FencedWorkerOptions {
  readonly endpoints: ReadonlyArray<string>
  /** The lock backend's key prefix. */
  readonly prefix: string
  /** The fenced resource's key prefix (outside the backend's): `<fence>state` and `<fence>log/...`. */
  readonly fence: string
}

/** What the child prints at the end of `contend`. */
export type ChildSummary = FencedSummary

/** The fenced resource's state: the highest token admitted, the token inside ("" for nobody), the writes accepted. */
export interface FenceState {
  readonly highest: string
  readonly inside: string
  readonly writes: number
}

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

const options = parseOptions<ChildOptions>(process.argv[2])

const fence = Effect.gen(function* () {
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

  // Stay inside a little: a round trip after entering.
  return { step, afterEnter: etcd.call("fence", (c) => c.get(stateKey).exec()), beforeExit: Effect.void }
})

const client = EtcdClient.layer({ endpoints: options.endpoints })
const layer = EtcdBackend.layer({ prefix: options.prefix }).pipe(Layer.provideMerge(client))

runWorker(fencedWorker(options, "60 seconds", fence).pipe(Effect.provide(layer)))
