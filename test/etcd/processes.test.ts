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
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Deferred, Effect, Option } from "effect"
import { afterAll } from "vitest"
import { Lock, LockBackend, LockConfig } from "../../src/index.ts"
import { startEtcd } from "../support/EtcdServer.ts"
import type { ChildOptions, ChildSummary, FenceState } from "./child.ts"
import { assertNothingLeft, backendLayer, freshPrefix, keysUnder, leasesOf } from "./harness.ts"

const server = await startEtcd()
const endpoints = server.endpoints
afterAll(() => server.stop())

const repoRoot = fileURLToPath(new URL("../../", import.meta.url))
const childScript = fileURLToPath(new URL("./child.ts", import.meta.url))

/**
 * A Node that runs `.ts` files (type stripping is on by default from 22.18):
 * the one running the tests, else the project's pinned one.
 */
const nodeBinary = (() => {
  const [major = 0, minor = 0] = process.versions.node.split(".").map(Number)
  return major > 22 || (major === 22 && minor >= 18)
    ? process.execPath
    : fileURLToPath(new URL("../../node_modules/.bin/node", import.meta.url))
})()

interface ChildResult {
  readonly code: number | null
  readonly signal: string | null
  readonly stderr: string
  readonly summary: ChildSummary | undefined
}

/** The JSON lines a child printed so far. */
const jsonLines = (stdout: string): Array<Record<string, unknown>> =>
  stdout
    .split("\n")
    .filter((line) => line.trim().startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)

/**
 * Starts a child; `ready` completes once its backend is up, `held` once it
 * printed the token it holds (`hold` mode). It starts work when `go` runs.
 * `kill` sends SIGKILL. Killed (by its pid) if the test ends first.
 */
const startChild = (options: ChildOptions) =>
  Effect.gen(function* () {
    const ready = yield* Deferred.make<void, Error>()
    const held = yield* Deferred.make<bigint, Error>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(nodeBinary, [childScript, JSON.stringify(options)], { cwd: repoRoot, stdio: ["pipe", "pipe", "pipe"] })
      ),
      (spawned) =>
        Effect.sync(() => {
          if (spawned.exitCode === null && spawned.signalCode === null) spawned.kill("SIGKILL")
        })
    )
    let stdout = ""
    let stderr = ""
    // A child that died early must not make the parent's write fail the process.
    child.stdin.on("error", () => {})
    child.stdout.setEncoding("utf8")
    child.stderr.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      stdout += chunk
      for (const line of jsonLines(stdout)) {
        if (line["ready"] === true) Deferred.doneUnsafe(ready, Effect.void)
        if (typeof line["held"] === "string") Deferred.doneUnsafe(held, Effect.succeed(BigInt(line["held"])))
      }
    })
    child.stderr.on("data", (chunk: string) => {
      stderr += chunk
    })
    const exited = Effect.callback<ChildResult>((resume) => {
      const finish = (code: number | null, signal: string | null) => {
        const last = jsonLines(stdout).at(-1)
        const summary = last?.["worker"] === undefined ? undefined : (last as unknown as ChildSummary)
        const early = new Error(`${options.worker} exited (${code} ${signal}) too early: ${stderr}`)
        Deferred.doneUnsafe(ready, Effect.fail(early))
        Deferred.doneUnsafe(held, Effect.fail(early))
        resume(Effect.succeed({ code, signal, stderr, summary }))
      }
      if (child.exitCode !== null || child.signalCode !== null) finish(child.exitCode, child.signalCode)
      else child.once("close", finish)
    })
    const go = Effect.sync(() => child.stdin.end("go\n"))
    const kill = Effect.sync(() => child.kill("SIGKILL"))
    return { ready: Deferred.await(ready), held: Deferred.await(held), go, kill, exited }
  })

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
          startChild({ endpoints, prefix, fence, name, worker, mode: "contend", fibers, iterations, ttlMillis: 10_000 })
        )
        // Both backends up before either starts: the processes contend from the first section.
        yield* Effect.forEach(children, (child) => child.ready, { concurrency: "unbounded" })
        const going = Date.now()
        yield* Effect.forEach(children, (child) => child.go)
        const results = yield* Effect.forEach(children, (child) => child.exited, { concurrency: "unbounded" })
        const elapsed = Date.now() - going

        const perWorker = fibers * iterations
        for (const [i, result] of results.entries()) {
          const worker = workers[i]!
          assert.strictEqual(
            result.code,
            0,
            `worker ${worker} exited with ${result.code} ${result.signal}: ${result.stderr}`
          )
          const summary = result.summary
          assert.isDefined(summary, `worker ${worker} printed its summary`)
          assert.strictEqual(summary!.worker, worker)
          assert.strictEqual(summary!.sections, perWorker)
          assert.strictEqual(summary!.accepted, perWorker)
          assert.strictEqual(summary!.refused, 0)
        }

        const log = yield* readLog(fence)
        const total = perWorker * workers.length
        assert.strictEqual(log.length, total * 3, "three log entries per critical section")
        // Sections in log order: enter, the fenced write, exit; never another step in between.
        const sections: Array<{ readonly worker: string; readonly token: bigint }> = []
        for (let k = 0; k < total; k++) {
          const [enter, write, exit] = [log[3 * k]!, log[3 * k + 1]!, log[3 * k + 2]!]
          const at = `section ${k} (revisions ${enter.revision}..${exit.revision})`
          assert.deepStrictEqual(
            [enter.event, write.event, exit.event],
            ["enter", "write", "exit"],
            `${at}: sections overlap or a stale operation came in`
          )
          assert.deepStrictEqual(
            [write.worker, exit.worker, write.token, exit.token],
            [enter.worker, enter.worker, enter.token, enter.token],
            `${at}: another holder wrote inside the section`
          )
          sections.push({ worker: enter.worker, token: enter.token })
        }
        for (let k = 1; k < sections.length; k++) {
          assert.isTrue(
            sections[k]!.token > sections[k - 1]!.token,
            `tokens must strictly increase in entry order: ${sections[k - 1]!.token} then ${sections[k]!.token}`
          )
        }
        assert.strictEqual(new Set(sections.map((s) => s.token)).size, total, "no token issued twice")
        // The processes took turns: they contended, rather than one finishing before the other started.
        const switches = sections.filter((section, k) => k > 0 && section.worker !== sections[k - 1]!.worker).length
        assert.isAtLeast(switches, 2, "holder switches between the processes")
        for (const [i, worker] of workers.entries()) {
          const mine = sections.filter((section) => section.worker === worker).map((s) => s.token.toString())
          assert.strictEqual(mine.length, perWorker, `sections of worker ${worker}`)
          assert.deepStrictEqual(
            mine,
            results[i]!.summary!.tokens.toSorted((x, y) => (BigInt(x) < BigInt(y) ? -1 : 1)),
            `worker ${worker}'s own record matches the log`
          )
        }
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
          const victim = yield* startChild({
            endpoints,
            prefix,
            fence,
            name,
            worker: "victim",
            mode: "hold",
            fibers: 1,
            iterations: 1,
            ttlMillis
          })
          yield* victim.ready
          yield* victim.go
          const victimToken = yield* victim.held
          const { holders } = yield* LockBackend.inspect(name)
          assert.deepStrictEqual(
            holders.map((h) => [h.token, h.metadata]),
            [[victimToken, { worker: "victim" }]]
          )
          assert.isTrue(Option.isNone(yield* Effect.scoped(Lock.tryScoped(name))), "held by the other process")
          yield* victim.kill
          const exit = yield* victim.exited
          assert.strictEqual(exit.signal, "SIGKILL")
          const killedAt = Date.now()
          // Nobody released: the dead process's grant is still on the server...
          assert.deepStrictEqual(
            (yield* LockBackend.inspect(name)).holders.map((h) => h.token),
            [victimToken]
          )
          // ...until its lease expires; the waiter is woken by the key's deletion (one-hour retry).
          const lease = yield* Lock.scoped(name, {
            ttl: "10 seconds",
            timeout: "10 seconds",
            retry: LockConfig.retryExponential({ initial: "1 hour", max: "1 hour", jitter: false }),
            metadata: { worker: "next" }
          })
          const waited = Date.now() - killedAt
          assert.isAtMost(waited, ttlMillis + 1_500, "freed by the TTL")
          assert.isTrue(lease.token > victimToken, `${lease.token} > ${victimToken}`)
          assert.deepStrictEqual(
            (yield* LockBackend.inspect(name)).holders.map((h) => [h.owner, h.token, h.metadata]),
            [[lease.owner, lease.token, { worker: "next" }]]
          )
          yield* lease.release
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
