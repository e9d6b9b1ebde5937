/**
 * Two OS processes contend for one lock name on the PostgreSQL backend
 * (`child.ts`). Each critical section logs `enter`, the outcome of a fenced
 * write (`accepted` or `stale`) and `exit` to a shared table; the log must
 * show sections that never overlap, across processes, with strictly
 * increasing fencing tokens, and every fenced write accepted.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Schedule } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Lock, LockBackend, LockConfig } from "../../src/index.ts"
import { FaultyBackend } from "../../src/testing/index.ts"
import * as ChildProcesses from "../support/childProcesses.ts"
import * as Fenced from "../support/fencedSections.ts"
import type { ChildOptions, ChildSummary } from "./child.ts"
import { admin, advisoryLocksOf, assertNothingLeft, backendLayer, freshAppName, url } from "./harness.ts"

/** Starts a worker process (`child.ts`). */
const startWorker = ChildProcesses.childStarter<ChildOptions, ChildSummary>(new URL("./child.ts", import.meta.url))

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
          startWorker({ url, applicationName, name, worker, fibers, iterations, fencedTable, logTable })
        )
        const { results } = yield* ChildProcesses.runTogether(children)

        const names = workers.map(({ worker }) => worker)
        const perWorker = fibers * iterations
        // Sections in log order: enter, the fenced write's outcome, exit; never another section in between.
        const { sections } = yield* Fenced.checkContention(results, names, perWorker, "stale", {
          read: sql<{
            readonly log_id: string
            readonly worker: string
            readonly token: string
            readonly event: string
          }>`SELECT id::text AS log_id, worker, token::text AS token, event FROM ${sql(logTable)}
             WHERE name = ${name} ORDER BY id`,
          what: "rows",
          expected: { write: "accepted", refused: "a fenced write was refused" },
          where: (k, enter, exit) => `section ${k} (log ids ${enter.log_id}..${exit.log_id})`
        })
        Fenced.assertOwnRecords(sections, names, perWorker, (i) => results[i]!.summary!.tokens)
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
