/**
 * Two OS processes contend for one lock name on the PostgreSQL backend
 * (`child.ts`). Each critical section logs `enter`, the outcome of a fenced
 * write (`accepted` or `stale`) and `exit` to a shared table; the log must
 * show sections that never overlap, across processes, with strictly
 * increasing fencing tokens, and every fenced write accepted.
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Deferred, Duration, Effect, Fiber, Schedule } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Lock, LockBackend, LockConfig } from "../../src/index.ts"
import { FaultyBackend } from "../../src/testing/index.ts"
import type { ChildOptions, ChildSummary } from "./child.ts"
import { admin, advisoryLocksOf, assertNothingLeft, backendLayer, freshAppName, url } from "./harness.ts"

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

/**
 * Starts a child; `ready` completes once its backend is up. It starts work
 * when `go` runs. Killed (by its pid) if the test is interrupted first.
 */
const startChild = (options: ChildOptions) =>
  Effect.gen(function* () {
    const ready = yield* Deferred.make<void, Error>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(nodeBinary, [childScript, JSON.stringify(options)], {
          cwd: repoRoot,
          stdio: ["pipe", "pipe", "pipe"]
        })
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
      if (stdout.split("\n").some((line) => line.trim() === `{"ready":true}`)) {
        Deferred.doneUnsafe(ready, Effect.void)
      }
    })
    child.stderr.on("data", (chunk: string) => {
      stderr += chunk
    })
    const exited = Effect.callback<ChildResult>((resume) => {
      const finish = (code: number | null, signal: string | null) => {
        const lines = stdout.split("\n").filter((line) => line.trim().startsWith("{"))
        const last = lines.at(-1)
        const parsed = last === undefined ? undefined : (JSON.parse(last) as Partial<ChildSummary>)
        const summary = parsed?.worker === undefined ? undefined : (parsed as ChildSummary)
        Deferred.doneUnsafe(ready, Effect.fail(new Error(`${options.worker} exited before it was ready: ${stderr}`)))
        resume(Effect.succeed({ code, signal, stderr, summary }))
      }
      if (child.exitCode !== null || child.signalCode !== null) finish(child.exitCode, child.signalCode)
      else child.once("close", finish)
    })
    const go = Effect.sync(() => child.stdin.end("go\n"))
    return { ready: Deferred.await(ready), go, exited }
  })

describe("postgres: two processes", () => {
  it.live(
    "two processes contend for one name: sections never overlap, tokens strictly increase, every fenced write is accepted",
    () => {
      const run = Math.random().toString(36).slice(2, 8)
      const fencedTable = `el_fenced_${run}`
      const logTable = `el_cs_log_${run}`
      const name = `procs-${run}`
      const fibers = 5
      const iterations = 5
      const workers = ["a", "b"].map((worker) => ({ worker, applicationName: freshAppName(`proc-${worker}`) }))
      return Effect.gen(function* () {
        const sql = yield* SqlClient
        yield* Effect.acquireRelease(
          Effect.gen(function* () {
            yield* sql`CREATE TABLE IF NOT EXISTS ${sql(fencedTable)} (name text PRIMARY KEY, token bigint NOT NULL)`
            yield* sql`CREATE TABLE IF NOT EXISTS ${sql(logTable)}
              (id bigserial PRIMARY KEY, name text NOT NULL, worker text NOT NULL, token bigint NOT NULL, event text NOT NULL)`
          }),
          () => Effect.orDie(sql`DROP TABLE IF EXISTS ${sql(fencedTable)}, ${sql(logTable)}`)
        )
        yield* sql`INSERT INTO ${sql(fencedTable)} (name, token) VALUES (${name}, 0)`

        const children = yield* Effect.forEach(workers, ({ worker, applicationName }) =>
          startChild({ url, applicationName, name, worker, fibers, iterations, fencedTable, logTable })
        )
        // Both backends up before either starts: the processes contend from the first section.
        yield* Effect.forEach(children, (child) => child.ready, { concurrency: "unbounded" })
        yield* Effect.forEach(children, (child) => child.go)
        const results = yield* Effect.forEach(children, (child) => child.exited, { concurrency: "unbounded" })

        const perWorker = fibers * iterations
        for (const [i, result] of results.entries()) {
          const { worker } = workers[i]!
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
          assert.strictEqual(summary!.stale, 0)
        }

        const rows = yield* sql<{
          readonly log_id: string
          readonly worker: string
          readonly token: string
          readonly event: string
        }>`SELECT id::text AS log_id, worker, token::text AS token, event FROM ${sql(logTable)}
           WHERE name = ${name} ORDER BY id`
        const total = perWorker * workers.length
        assert.strictEqual(rows.length, total * 3, "three log rows per critical section")

        // Sections in log order: enter, the fenced write's outcome, exit; never another section in between.
        const sections: Array<{ readonly worker: string; readonly token: bigint }> = []
        for (let k = 0; k < total; k++) {
          const [enter, write, exit] = [rows[3 * k]!, rows[3 * k + 1]!, rows[3 * k + 2]!]
          const at = `section ${k} (log ids ${enter.log_id}..${exit.log_id})`
          assert.deepStrictEqual(
            [enter.event, write.event, exit.event],
            ["enter", "accepted", "exit"],
            `${at}: sections overlap or a fenced write was refused`
          )
          assert.deepStrictEqual(
            [write.worker, exit.worker, write.token, exit.token],
            [enter.worker, enter.worker, enter.token, enter.token],
            `${at}: another holder wrote inside the section`
          )
          sections.push({ worker: enter.worker, token: BigInt(enter.token) })
        }
        for (let k = 1; k < sections.length; k++) {
          assert.isTrue(
            sections[k]!.token > sections[k - 1]!.token,
            `tokens must strictly increase in entry order: ${sections[k - 1]!.token} then ${sections[k]!.token}`
          )
        }
        for (const [i, { worker }] of workers.entries()) {
          const mine = sections.filter((section) => section.worker === worker).map((s) => s.token.toString())
          assert.strictEqual(mine.length, perWorker, `sections of worker ${worker}`)
          assert.deepStrictEqual(mine, results[i]!.summary!.tokens, `worker ${worker}'s own record matches the log`)
        }
        const [last] = yield* sql<{ readonly token: string }>`
          SELECT token::text AS token FROM ${sql(fencedTable)} WHERE name = ${name}`
        assert.strictEqual(last?.token, sections.at(-1)!.token.toString(), "the last section's write is the one kept")

        // Both processes are gone, and so is everything they held on the server.
        for (const { applicationName } of workers) {
          assert.strictEqual(yield* advisoryLocksOf(applicationName), 0)
          yield* assertNothingLeft(applicationName)
        }
      }).pipe(Effect.scoped, Effect.provide(admin))
    },
    60_000
  )

  it.live(
    "a waiter whose rival holder is another process waits for the release's notification: it does not spin on the server",
    () => {
      const appName = freshAppName("spin")
      const rivalApp = freshAppName("rival")
      const name = `spin-${Math.random().toString(36).slice(2, 8)}`
      // The waiter's refresh attempt comes every ttl/3 (10 s) and its retry interval is an hour:
      // before the release only its first attempt and the one right after subscribing are due.
      const ttl = Duration.seconds(30)
      const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })
      const due = 2
      // How long the waiter is watched while the rival holds: a small part of the refresh interval.
      const window = Duration.divideUnsafe(ttl, 60)
      return Effect.gen(function* () {
        const release = yield* Deferred.make<void>()
        const taken = yield* Deferred.make<bigint>()
        const rival = yield* Effect.forkChild(
          Effect.scoped(
            Effect.gen(function* () {
              const lease = yield* Lock.scoped(name, { ttl, onLost: "ignore" })
              yield* Deferred.succeed(taken, lease.token)
              yield* Deferred.await(release)
              yield* lease.release
            })
          ).pipe(Effect.provide(backendLayer(rivalApp)))
        )
        const rivalToken = yield* Deferred.await(taken)

        const { backend, control } = yield* FaultyBackend.make(yield* LockBackend)
        const waiter = yield* Effect.forkChild(
          Lock.scoped(name, { ttl, retry: hourRetry, timeout: Duration.divideUnsafe(ttl, 6), onLost: "ignore" }).pipe(
            Effect.map((lease) => lease.token),
            Effect.scoped,
            Effect.provideService(LockBackend, backend)
          )
        )
        // Registered and subscribed: the attempt after subscribing has answered.
        yield* Effect.repeat(control.calls, {
          schedule: Schedule.spaced("5 millis"),
          until: (calls) => calls.subscribe >= 1 && calls.tryAcquire >= due
        })
        // Nothing is due during the window (no signal can mark the absence of attempts: it is watched).
        yield* Effect.sleep(window)
        const attempts = (yield* control.calls).tryAcquire
        assert.isAtMost(
          attempts,
          due + 1,
          `grant attempts by one waiter in ${Duration.toMillis(window)} ms while another process held the name`
        )

        // The release's NOTIFY wakes it, long before its retry or refresh would.
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(rival)
        const token = yield* Fiber.join(waiter)
        assert.isTrue(token > rivalToken)
        yield* assertNothingLeft(rivalApp)
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    }
  )
})
