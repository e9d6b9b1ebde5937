/**
 * OS processes contending for one lock name on the Redis backend
 * (`child.ts`). Each critical section goes through a fenced resource kept
 * in Redis itself: an atomic script admits a token only when nobody is
 * inside and the token is above every token admitted before, and logs every
 * step (`enter`, the fenced `write`, `exit`, or the refusal). The log must
 * show sections that never overlap, across processes, with strictly
 * increasing fencing tokens and no stale operation accepted.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { LockConfig } from "../../src/index.ts"
import * as ChildProcesses from "../support/childProcesses.ts"
import * as Fenced from "../support/fencedSections.ts"
import type { ChildOptions, ChildSummary, FenceKeys } from "./child.ts"
import { assertNothingLeft, backendLayer, freshPrefix, send, url } from "./harness.ts"

/** Starts a worker process (`child.ts`). */
const startWorker = ChildProcesses.childStarter<ChildOptions, ChildSummary>(new URL("./child.ts", import.meta.url))

/** Keys of a fenced resource outside any backend prefix; deleted when the scope closes. */
const fenceKeys = (label: string) =>
  Effect.gen(function* () {
    const base = freshPrefix(`fence-${label}`)
    const keys: FenceKeys = { state: `${base}state`, log: `${base}log` }
    yield* Effect.addFinalizer(() => Effect.ignore(send("DEL", [keys.state, keys.log])))
    return keys
  })

interface LogEntry {
  readonly event: string
  readonly worker: string
  readonly token: bigint
}

const readLog = (keys: FenceKeys) =>
  Effect.map(send<Array<string>>("LRANGE", [keys.log, "0", "-1"]), (lines) =>
    lines.map((line): LogEntry => {
      const [event = "", worker = "", token = "0"] = line.split("|")
      return { event, worker, token: BigInt(token) }
    })
  )

describe("redis: several processes", () => {
  it.live(
    "two processes of 4 fibers each contend for one name: sections never overlap, no stale write, tokens strictly increase",
    () => {
      const prefix = freshPrefix("procs")
      const name = `procs:{fenced}*`
      const fibers = 4
      const iterations = 6
      const workers = ["a", "b"]
      return Effect.gen(function* () {
        const fence = yield* fenceKeys("procs")
        const children = yield* Effect.forEach(workers, (worker) =>
          startWorker({ url, prefix, fence, name, worker, mode: "contend", fibers, iterations, ttlMillis: 10_000 })
        )
        const { results } = yield* ChildProcesses.runTogether(children)

        const perWorker = fibers * iterations
        const { sections, total } = yield* Fenced.checkContention(results, workers, perWorker, "refused", {
          read: readLog(fence),
          what: "entries",
          expected: { write: "write", refused: "a stale operation came in" },
          where: (k) => `section ${k}`
        })
        Fenced.assertTurnsTaken(sections)
        Fenced.assertOwnRecords(sections, workers, perWorker, (i) => Fenced.byToken(results[i]!.summary!.tokens))
        const state = yield* send<Array<string | null>>("HMGET", [fence.state, "highest", "inside", "writes"])
        assert.deepStrictEqual(state, [sections.at(-1)!.token.toString(), "", String(total)], "highest, inside, writes")
      }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(prefix)))
    },
    60_000
  )

  it.live(
    "a process killed while it holds the name: the name frees at the TTL (no release), the next holder's token is greater",
    () => {
      const prefix = freshPrefix("killed")
      const name = "killed-holder"
      const ttlMillis = 3_000
      return Effect.gen(function* () {
        const fence = yield* fenceKeys("killed")
        const victim = yield* startWorker({ url, prefix, fence, ...Fenced.victimOptions(name, ttlMillis) })
        yield* Fenced.killedHolderFreesAtTtl(
          victim,
          name,
          LockConfig.retryLinear({ initial: "50 millis", max: "50 millis", jitter: false }),
          ttlMillis + 3_000
        )
      }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix)), Effect.andThen(assertNothingLeft(prefix)))
    },
    30_000
  )
})
