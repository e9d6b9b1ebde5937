// Locks on PostgreSQL: a session lock for a job, a transaction lock around a write.
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Lock } from "effect-locks"
import { PostgresBackend } from "effect-locks/postgres"

const url = Redacted.make(process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres")
const Database = PgClient.layer({ url })
const LocksLive = PostgresBackend.layer({ namespace: "billing" }).pipe(Layer.provide(Database))

// One process at a time runs the invoice job; the token goes with every write.
export const invoiceJob = Lock.withLock("invoices:2026-11", { ttl: "30 seconds" })(
  Effect.log("generating invoices")
).pipe(Effect.provide(LocksLive))

// The row update and its lock commit (or roll back) together.
export const adjustBalance = PostgresBackend.withTransactionLock(["account:42"], {
  namespace: "billing",
  timeout: "2 seconds"
})(
  Effect.gen(function* () {
    const sql = yield* SqlClient
    yield* sql`UPDATE accounts SET balance = balance - 10 WHERE id = 42`
  })
).pipe(Effect.provide(Database))
