import { Effect, Layer, Redacted } from "effect"
import * as PgClient from "@effect/sql-pg/PgClient"
import { PostgresBackend } from "../../src/postgres/index.ts"
import { conformance } from "../conformance/suite.ts"
import { postgresUrl } from "../support/servers.ts"

const url = await postgresUrl()

conformance({
  name: "postgres",
  layer: PostgresBackend.layer({ statementTimeout: "2 seconds", healthCheckInterval: "500 millis" }).pipe(
    Layer.provide(PgClient.layer({ url: Redacted.make(url) }))
  )
})
void Effect
