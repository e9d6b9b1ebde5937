/**
 * `npm run bench`: each backend's section, in one process, printed as a table
 * and written to bench/results/latest.json. Ratios are against the backend's
 * own raw round trip measured in the same run (never absolute thresholds).
 *
 *   BENCH_SECTIONS=memory,postgres,redis,etcd npm run bench   (default: all four)
 *   LOCK_BENCH_POSTGRES_URL=postgres://... (default: the local server)
 *   LOCK_BENCH_REDIS_URL=redis://...       (default: the local server)
 *   LOCK_BENCH_ETCD_ENDPOINTS=http://...   (default: a private etcd started for the run)
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Exit, Layer, Redacted, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { mkdirSync, writeFileSync } from "node:fs"
import { MemoryBackend } from "../src/index.ts"
import { PostgresBackend } from "../src/postgres/index.ts"
import { RedisBackend } from "../src/redis/index.ts"
import { EtcdBackend, EtcdClient } from "../src/etcd/index.ts"
import { startEtcd } from "../test/support/EtcdServer.ts"
import * as Redis from "effect/persistence/Redis"
import { Redis as IORedis } from "ioredis"
import Redlock from "redlock"
import { Mutex } from "redis-semaphore"
import {
  backendFloor,
  type ContendedResult,
  measure,
  onBackend,
  peerContended,
  type UncontendedResult
} from "./harness.ts"

const sections = (process.env["BENCH_SECTIONS"] ?? "memory,postgres,redis,etcd").split(",").map((s) => s.trim())
const contendedMillis = Number(process.env["BENCH_CONTENDED_MS"] ?? 2000)

const memory = onBackend(
  MemoryBackend.layer,
  measure({
    section: "memory",
    iterations: 2000,
    contendedMillis,
    floor: (backend) => backendFloor(backend, "bench-floor")
  })
)

const postgresUrl = process.env["LOCK_BENCH_POSTGRES_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"
const pgClient = PgClient.layer({ url: Redacted.make(postgresUrl), applicationName: "effect-locks-bench" })

// The floor is the fewest round trips a PostgreSQL lock needs: a try-lock and
// an unlock on one reserved connection, with the raw driver.
const postgres = Effect.gen(function* () {
  const sql = yield* SqlClient
  const scope = yield* Scope.make()
  const conn = yield* Scope.provide(scope)(sql.reserve)
  const key = PostgresBackend.keyOf("bench-floor", "bench-floor").toString()
  const floor = Effect.asVoid(
    Effect.andThen(
      conn.execute("SELECT pg_try_advisory_lock($1::int8) AS ok", [key], undefined),
      conn.execute("SELECT pg_advisory_unlock($1::int8) AS ok", [key], undefined)
    )
  )
  const pg = yield* PgClient.PgClient
  const result = yield* onBackend(
    PostgresBackend.layer().pipe(Layer.provide(Layer.succeed(PgClient.PgClient, pg))),
    measure({ section: "postgres", iterations: 300, contendedMillis, floor: () => floor })
  )
  yield* Scope.close(scope, Exit.void)
  return result
}).pipe(Effect.provide(Layer.fresh(pgClient)))

const redisUrl = process.env["LOCK_BENCH_REDIS_URL"] ?? "redis://127.0.0.1:6379"

// The floor is the fewest round trips a Redis lock needs: `SET NX PX`, then a
// compare-and-delete script, on the same client the backend uses.
const compareAndDelete = Redis.script((key: string, owner: string) => [key, owner], {
  lua: "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
  numberOfKeys: 1
})

const redis = Effect.gen(function* () {
  const client = yield* Redis.Redis
  const cad = client.eval(compareAndDelete)
  let n = 0
  const floor = Effect.suspend(() => {
    const owner = `floor-${n++}`
    return Effect.asVoid(
      Effect.andThen(
        client.send("SET", "effect-locks-bench:floor", owner, "NX", "PX", "30000"),
        cad("effect-locks-bench:floor", owner)
      )
    )
  })
  const ours = yield* onBackend(
    RedisBackend.layer({ prefix: "effect-locks-bench:" }).pipe(Layer.provide(Layer.succeed(Redis.Redis, client))),
    measure({ section: "redis", iterations: 1000, contendedMillis, floor: () => floor })
  )
  // The same handover run through the peers, with their default retry settings.
  const peers = yield* Effect.acquireUseRelease(
    Effect.sync(() => new IORedis(redisUrl)),
    (io) =>
      Effect.gen(function* () {
        const redlock = new Redlock([io], { retryCount: -1 })
        const viaRedlock = yield* peerContended({
          section: "redis: redlock (peer)",
          fibers: 32,
          millis: contendedMillis,
          acquire: async () => {
            const lock = await redlock.acquire(["effect-locks-bench:peer-redlock"], 30_000)
            return () => lock.release()
          }
        })
        const viaSemaphore = yield* peerContended({
          section: "redis: redis-semaphore Mutex (peer)",
          fibers: 32,
          millis: contendedMillis,
          acquire: async () => {
            const mutex = new Mutex(io, "effect-locks-bench:peer-mutex", {
              lockTimeout: 30_000,
              acquireTimeout: 600_000
            })
            await mutex.acquire()
            return () => mutex.release()
          }
        })
        return [viaRedlock, viaSemaphore]
      }),
    (io) => Effect.promise(() => io.quit())
  )
  return { u: ours.u, c: [ours.c, ...peers] }
}).pipe(Effect.provide(RedisBackend.redisLayer(redisUrl)))

// The floor is the fewest round trips an etcd lock needs: a put guarded on
// create revision 0 with an already granted lease, then a delete.
const etcd = Effect.gen(function* () {
  const given = process.env["LOCK_BENCH_ETCD_ENDPOINTS"]
  const server = given === undefined ? yield* Effect.promise(() => startEtcd()) : undefined
  const endpoints = given?.split(",") ?? server!.endpoints
  return yield* Effect.gen(function* () {
    const { client } = yield* EtcdClient.EtcdClient
    const lease = yield* Effect.promise(() => client.leaseClient.leaseGrant({ TTL: 60, ID: 0 }))
    const floor = Effect.promise(async () => {
      await client
        .if("effect-locks-bench/floor", "Create", "==", 0)
        .then(client.put("effect-locks-bench/floor").value("x").lease(lease.ID))
        .commit()
      await client.delete().key("effect-locks-bench/floor").exec()
    })
    const client2 = yield* EtcdClient.EtcdClient
    const ours = yield* onBackend(
      EtcdBackend.layer({ prefix: "effect-locks-bench/" }).pipe(
        Layer.provide(Layer.succeed(EtcdClient.EtcdClient, client2))
      ),
      measure({ section: "etcd", iterations: 300, contendedMillis, floor: () => floor })
    )
    // etcd3's own Lock: a failed acquire rejects at once, so its waiters retry every 10 ms.
    const peer = yield* peerContended({
      section: "etcd: etcd3 Lock (peer)",
      fibers: 32,
      millis: contendedMillis,
      acquire: async () => {
        while (true) {
          const lock = client.lock("effect-locks-bench/peer").ttl(30)
          try {
            await lock.acquire()
            return () => lock.release()
          } catch {
            await new Promise((resolve) => setTimeout(resolve, 10))
          }
        }
      }
    })
    return { u: ours.u, c: [ours.c, peer] }
  }).pipe(
    Effect.provide(EtcdClient.layer({ endpoints })),
    Effect.ensuring(server === undefined ? Effect.void : Effect.promise(() => server.stop()))
  )
})

const f = (n: number, d = 1) => n.toFixed(d)

const program = Effect.gen(function* () {
  const uncontendedRows: Array<UncontendedResult> = []
  const contendedRows: Array<ContendedResult> = []
  if (sections.includes("memory")) {
    const { u, c } = yield* memory
    uncontendedRows.push(u)
    contendedRows.push(c)
  }
  if (sections.includes("postgres")) {
    const { u, c } = yield* postgres
    uncontendedRows.push(u)
    contendedRows.push(c)
  }
  if (sections.includes("redis")) {
    const { u, c } = yield* redis
    uncontendedRows.push(u)
    contendedRows.push(...c)
  }
  if (sections.includes("etcd")) {
    const { u, c } = yield* etcd
    uncontendedRows.push(u)
    contendedRows.push(...c)
  }
  console.log("\nUncontended acquire + release (median per operation over interleaved rounds)")
  console.log("| backend | library (µs) | floor (µs) | ratio |")
  console.log("| --- | --- | --- | --- |")
  for (const r of uncontendedRows) {
    console.log(`| ${r.section} | ${f(r.libraryMicros)} | ${f(r.floorMicros)} | ${f(r.ratio, 2)}x |`)
  }
  console.log("\nContended: fibers handing one name around")
  console.log("| backend | fibers | acq/s | handovers/s | wait p50 (ms) | wait p99 (ms) | fairness max/min | starved |")
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for (const r of contendedRows) {
    console.log(
      `| ${r.section} | ${r.fibers} | ${f(r.acquisitionsPerSecond, 0)} | ${f(r.handoversPerSecond, 0)} | ${f(
        r.waitP50Millis,
        2
      )} | ${f(r.waitP99Millis, 2)} | ${f(r.fairness, 2)} | ${r.starved} |`
    )
  }
  mkdirSync("bench/results", { recursive: true })
  writeFileSync(
    "bench/results/latest.json",
    JSON.stringify({ date: new Date().toISOString(), node: process.version, uncontendedRows, contendedRows }, null, 2)
  )
  console.log("\nwritten: bench/results/latest.json")
})

Effect.runPromise(program).catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
