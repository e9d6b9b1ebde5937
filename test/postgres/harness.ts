/**
 * Shared pieces of the PostgreSQL backend tests: the server URL, a backend
 * layer whose connections are recognisable on the server (a unique
 * `application_name` per layer), and the server-side leak checks.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Layer, Redacted, Schedule } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { LockBackend } from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import { postgresUrl } from "../support/servers.ts"

/** The test server's URL (env `LOCK_TEST_POSTGRES_URL`, else the local server, else a container). */
export const url = await postgresUrl()

let counter = 0
const runId = Math.random().toString(36).slice(2, 8)

/** A unique application name: every connection of one test layer carries it. */
export const freshAppName = (label = "t") => `el-${label}-${runId}-${counter++}`

/** A `PgClient` layer for `url` (or another URL, e.g. through a proxy) with an application name. */
export const client = (applicationName: string, options: { readonly url?: string } = {}) =>
  PgClient.layer({ url: Redacted.make(options.url ?? url), applicationName })

/** An independent client for the test's own checks (not through any proxy). */
export const admin = client("el-admin")

/** The backend with short deadlines, on its own client named `applicationName`. */
export const backendLayer = (
  applicationName: string,
  options: PostgresBackend.Options & { readonly url?: string } = {}
): Layer.Layer<LockBackend, unknown> =>
  PostgresBackend.layer({
    statementTimeout: "2 seconds",
    healthCheckInterval: "500 millis",
    applicationName,
    ...options
  }).pipe(Layer.provide(client(applicationName, options.url === undefined ? {} : { url: options.url })))

/** Advisory locks held or awaited on the server by sessions with this application name. */
export const advisoryLocksOf = (applicationName: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const rows = yield* sql<{ readonly n: number }>`
      SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND a.application_name = ${applicationName}`
    return Number(rows[0]?.n ?? 0)
  })

/** Server connections with this application name. */
export const connectionsOf = (applicationName: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const rows = yield* sql<{ readonly n: number }>`
      SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${applicationName}`
    return Number(rows[0]?.n ?? 0)
  })

/**
 * Waits (polling the server, at most ~5 s) until `check` returns `expected`,
 * then returns the last value: a closed connection leaves
 * `pg_stat_activity` a moment after the client closed it.
 */
export const eventually = <E, R>(check: Effect.Effect<number, E, R>, expected: number) =>
  check.pipe(
    Effect.repeat({
      schedule: Schedule.spaced("20 millis"),
      until: (n) => n === expected,
      times: 250
    })
  )

/**
 * The server-side leak check after a test whose layer used `applicationName`
 * and has been closed: no advisory lock and no connection of it is left.
 */
export const assertNothingLeft = (applicationName: string) =>
  Effect.gen(function* () {
    const locks = yield* eventually(advisoryLocksOf(applicationName), 0)
    const connections = yield* eventually(connectionsOf(applicationName), 0)
    if (locks !== 0 || connections !== 0) {
      return yield* Effect.die(
        new Error(`${applicationName} left ${locks} advisory locks and ${connections} connections on the server`)
      )
    }
  }).pipe(Effect.provide(admin))

/** An advisory lock on the server, held or awaited. */
export interface KeyLock {
  readonly pid: number
  readonly application_name: string | null
  readonly mode: string
  readonly granted: boolean
}

/** Every advisory lock held or awaited on the server for `key` (rebuilt from classid and objid). */
export const locksOnKey = (key: bigint) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    return yield* sql<KeyLock>`
      SELECT l.pid, a.application_name, l.mode, l.granted
      FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.objsubid = 1
        AND ((l.classid::int8 << 32) | l.objid::int8) = ${key.toString()}::int8`
  }).pipe(Effect.provide(admin))

/** Advisory-lock keys held (granted) by sessions with this application name. */
export const heldKeys = (applicationName: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const rows = yield* sql<{ readonly key: string }>`
      SELECT ((l.classid::int8 << 32) | l.objid::int8)::text AS key
      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = ${applicationName}`
    return rows.map((row) => BigInt(row.key)).toSorted((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  }).pipe(Effect.provide(admin))
