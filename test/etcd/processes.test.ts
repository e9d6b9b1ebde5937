/**
 * OS processes contending for one lock name on the etcd backend
 * (`child.ts`), against a private etcd. Each critical section goes through a
 * fenced resource kept in etcd itself: every step is a transaction guarded on
 * the state key's mod revision, which admits a token only when nobody is
 * inside and the token is above every token admitted before, and logs the
 * step (`enter`, the fenced `write`, `exit`, or the refusal) as a key whose
 * create revision orders it among all steps of all processes. The log must
 * show sections that never overlap, across processes, with strictly
 * increasing fencing tokens and no stale operation accepted.
 *
 * After every test, once the children exited and the parent's layer closed:
 * no key under the backend's prefix and no lease beyond those that existed
 * before (a killed child's leases expire by their TTL).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { afterAll } from "vitest"
import { LockConfig } from "../../src/index.ts"
import * as ChildProcesses from "../support/childProcesses.ts"
import { startEtcd } from "../support/EtcdServer.ts"
import * as Fenced from "../support/fencedSections.ts"
import type { ChildOptions, ChildSummary, FenceState } from "./child.ts"
import { assertNothingLeft, backendLayer, freshPrefix, keysUnder, leasesOf } from "./harness.ts"

const server = await startEtcd()
const endpoints = server.endpoints
afterAll(() => server.stop())

/** Starts a worker process (`child.ts`). */
const startWorker = ChildProcesses.childStarter<ChildOptions, ChildSummary>(new URL("./child.ts", import.meta.url))

const base64 = (value: string | Buffer) => Buffer.from(value).toString("base64")
const fromBase64 = (value: unknown) => Buffer.from(typeof value === "string" ? value : "", "base64").toString("utf8")

/** The first key after every key starting with `prefix` (prefixes here end in `/`). */
const prefixEnd = (prefix: string): Buffer => {
  const end = Buffer.from(prefix)
  end[end.length - 1] = end[end.length - 1]! + 1
  return end
}

/** A fence's key prefix outside the backend's; its keys are deleted when the scope closes. */
const fencePrefix = (label: string) =>
  Effect.gen(function* () {
    const fence = freshPrefix(`fence-${label}`)
    yield* Effect.addFinalizer(() =>
      Effect.promise(() =>
        server.request("/v3/kv/deleterange", { key: base64(fence), range_end: base64(prefixEnd(fence)) })
      )
    )
    return fence
  })

interface LogEntry {
  readonly event: string
  readonly worker: string
  readonly token: bigint
  readonly revision: bigint
}

/** The fence's log, in the order the server applied the steps (their create revisions). */
const readLog = (fence: string) =>
  Effect.promise(async (): Promise<ReadonlyArray<LogEntry>> => {
    const prefix = `${fence}log/`
    const reply = await server.request("/v3/kv/range", { key: base64(prefix), range_end: base64(prefixEnd(prefix)) })
    const kvs = Array.isArray(reply["kvs"]) ? (reply["kvs"] as Array<Record<string, unknown>>) : []
    return kvs
      .map((kv): LogEntry => {
        const [event = "", worker = "", token = "0"] = fromBase64(kv["value"]).split("|")
        return { event, worker, token: BigInt(token), revision: BigInt(String(kv["create_revision"])) }
      })
      .toSorted((a, b) => (a.revision < b.revision ? -1 : a.revision > b.revision ? 1 : 0))
  })

const readFence = (fence: string) =>
  Effect.promise(async () => {
    const value = await server.get(`${fence}state`)
    return value === undefined ? undefined : (JSON.parse(value) as FenceState)
  })

describe("etcd: several processes", () => {
  it.live(
    "seed 002 across processes: 2 processes x 25 fibers contend for one name; sections never overlap, no token twice, no stale write, tokens strictly increase across both",
    () => {
      const prefix = freshPrefix("procs")
      const name = "procs/fenced %🔒"
      const fibers = 25
      const iterations = 2
      const workers = ["a", "b"]
      return Effect.gen(function* () {
        const before = yield* leasesOf(server)
        const fence = yield* fencePrefix("procs")
        const started = Date.now()
        const children = yield* Effect.forEach(workers, (worker) =>
          startWorker({
            endpoints,
            prefix,
            fence,
            name,
            worker,
            mode: "contend",
            fibers,
            iterations,
            ttlMillis: 10_000
          })
        )
        const { results, goAt: going } = yield* ChildProcesses.runTogether(children)
        const elapsed = Date.now() - going

        const perWorker = fibers * iterations
        const { sections, total } = yield* Fenced.checkContention(results, workers, perWorker, "refused", {
          read: readLog(fence),
          what: "entries",
          expected: { write: "write", refused: "a stale operation came in" },
          where: (k, enter, exit) => `section ${k} (revisions ${enter.revision}..${exit.revision})`
        })
        assert.strictEqual(new Set(sections.map((s) => s.token)).size, total, "no token issued twice")
        const switches = Fenced.assertTurnsTaken(sections)
        Fenced.assertOwnRecords(sections, workers, perWorker, (i) => Fenced.byToken(results[i]!.summary!.tokens))
        assert.deepStrictEqual(
          yield* readFence(fence),
          { highest: sections.at(-1)!.token.toString(), inside: "", writes: total },
          "the fence's final state"
        )
        // Both processes exited through their layers' finalizers: nothing of theirs is left on the server.
        yield* assertNothingLeft(server, prefix, before)
        console.log(
          `etcd processes: ${total} sections by 2 x ${fibers} fibers in ${elapsed} ms ` +
            `(${switches} switches between the processes; ${going - started} ms to start them)`
        )
      }).pipe(Effect.scoped)
    },
    90_000
  )

  it.live(
    "a process killed while it holds the name: the name frees at the lease's TTL (no release), the next holder's token is greater, and the dead process's leases expire",
    () => {
      const prefix = freshPrefix("killed")
      const name = "killed-holder"
      const ttlMillis = 2_000
      return Effect.gen(function* () {
        const before = yield* leasesOf(server)
        const fence = yield* fencePrefix("killed")
        yield* Effect.gen(function* () {
          const victim = yield* startWorker({ endpoints, prefix, fence, ...Fenced.victimOptions(name, ttlMillis) })
          // The waiter is woken by the key's deletion when the victim's lease expires (one-hour retry).
          const waited = yield* Fenced.killedHolderFreesAtTtl(
            victim,
            name,
            LockConfig.retryExponential({ initial: "1 hour", max: "1 hour", jitter: false }),
            ttlMillis + 1_500
          )
          assert.deepStrictEqual(yield* keysUnder(server, prefix), [])
          console.log(`etcd killed holder: the name was free ${waited} ms after the kill (TTL ${ttlMillis} ms)`)
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, endpoints)))
        // The killed process's spare leases were never revoked: they expire within a TTL of their last refresh.
        yield* assertNothingLeft(server, prefix, before)
      }).pipe(Effect.scoped)
    },
    30_000
  )
})
