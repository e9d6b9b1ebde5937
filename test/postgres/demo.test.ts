/**
 * `LOCK_PROVIDER=postgres npm run demo`: the demo, as a separate process,
 * against the real database through `LockBackend.layerConfig`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { LOCK_NAMES, RW_NAME, SEMAPHORE_LIMIT, SEMAPHORE_NAME } from "../../demo/demo.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import { assertCleanSummary, runDemoProcess } from "../support/demoProcess.ts"
import { admin, eventually, url } from "./harness.ts"

/** Advisory locks on the server for the demo's names. */
const demoLocks = Effect.gen(function* () {
  const sql = yield* SqlClient
  const keys = [
    ...[...LOCK_NAMES, RW_NAME].map((name) => PostgresBackend.keyOf("default", name)),
    ...Array.from({ length: SEMAPHORE_LIMIT }, (_, slot) => PostgresBackend.keyOf("default", SEMAPHORE_NAME, slot))
  ].map(String)
  const rows = yield* sql<{ readonly n: number }>`
    SELECT count(*)::int AS n FROM pg_locks
    WHERE locktype = 'advisory' AND ((classid::int8 << 32) | objid::int8)::text IN ${sql.in(keys)}`
  return Number(rows[0]?.n ?? 0)
}).pipe(Effect.provide(admin))

describe("demo on PostgreSQL", () => {
  it.live("LOCK_PROVIDER=postgres npm run demo: no violation, tokens increasing, nothing left on the server", () =>
    Effect.gen(function* () {
      const run = yield* runDemoProcess({
        LOCK_PROVIDER: "postgres",
        LOCK_POSTGRES_URL: url,
        DEMO_DURATION_MS: "1500"
      })
      assertCleanSummary("postgres", run)
      assert.strictEqual(yield* eventually(demoLocks, 0), 0)
    })
  )
})
