/**
 * A worker process for `processes.test.ts`: contends for one lock name with
 * other processes, and inside each critical section writes to a shared
 * PostgreSQL table through a fencing check, logging every step.
 *
 * Run as `node test/postgres/child.ts <json options>` (Node >= 22.18 runs
 * `.ts` files directly). Options: `url`, `applicationName`, `name`,
 * `worker`, `fibers`, `iterations`, `fencedTable`, `logTable`. It prints
 * `{"ready":true}` once its backend is up and starts on the first input (or
 * end of input) on stdin, so that both processes contend from the start. At
 * the end it prints one JSON summary line and exits 0 when every critical
 * section ran, or exits 1 with the failure on stderr.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Lock } from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import { parseOptions, printLine, readyThenGo, runSections, runWorker, summaryOf } from "../support/childWorker.ts"

/** What the parent passes. */
export interface ChildOptions {
  readonly url: string
  readonly applicationName: string
  readonly name: string
  readonly worker: string
  readonly fibers: number
  readonly iterations: number
  readonly fencedTable: string
  readonly logTable: string
}

/** What the child prints at the end. */
export interface ChildSummary {
  readonly worker: string
  readonly pid: number
  readonly sections: number
  readonly accepted: number
  readonly stale: number
  /** Tokens of this worker's critical sections, as decimal strings, in the order they ran. */
  readonly tokens: ReadonlyArray<string>
}

const identifier = /^[a-z_][a-z0-9_]{0,62}$/

const parse = (raw: string | undefined): ChildOptions => {
  const options = parseOptions<ChildOptions>(raw)
  for (const table of [options.fencedTable, options.logTable]) {
    if (!identifier.test(table)) throw new Error(`not a plain table name: ${table}`)
  }
  return options
}

const options = parse(process.argv[2])

const program = Effect.gen(function* () {
  const sql = yield* SqlClient
  const fenced = sql(options.fencedTable)
  const log = sql(options.logTable)
  const tokens: Array<string> = []
  let accepted = 0
  let stale = 0

  const logEvent = (token: bigint, event: string) =>
    sql`INSERT INTO ${log} (name, worker, token, event)
        VALUES (${options.name}, ${options.worker}, ${token.toString()}::int8, ${event})`

  const section = Effect.scoped(
    Effect.gen(function* () {
      // The loss signal is watched by runHeld below, as Lock.withLock does: a lost lease fails the section.
      const lease = yield* Lock.scoped(options.name, { ttl: "10 seconds", timeout: "20 seconds", onLost: "ignore" })
      const token = lease.token
      yield* Lock.runHeld(
        lease,
        Effect.gen(function* () {
          yield* logEvent(token, "enter")
          // The fenced write: only a token above the last one written is accepted.
          const written = yield* sql<{ readonly token: string }>`
            UPDATE ${fenced} SET token = ${token.toString()}::int8
            WHERE name = ${options.name} AND token < ${token.toString()}::int8
            RETURNING token::text AS token`
          const ok = written.length === 1
          if (ok) accepted++
          else stale++
          yield* logEvent(token, ok ? "accepted" : "stale")
          // Stay inside a little, yielding to the other fibers and processes.
          yield* sql`SELECT 1`
          yield* Effect.yieldNow
          yield* sql`SELECT 1`
          tokens.push(token.toString())
          yield* logEvent(token, "exit")
        }),
        "interrupt"
      )
    })
  )

  // The layer is up (sequence checked, LISTEN running): tell the parent, and start when both processes are.
  yield* readyThenGo

  yield* runSections(options.fibers, options.iterations, section)

  const summary: ChildSummary = summaryOf(options.worker, tokens, { accepted, stale })
  return summary
})

const client = PgClient.layer({ url: Redacted.make(options.url), applicationName: options.applicationName })
const backend = PostgresBackend.layer({ applicationName: options.applicationName }).pipe(Layer.provide(client))

runWorker(program.pipe(Effect.provide(Layer.merge(backend, client))), printLine)
