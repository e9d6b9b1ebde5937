/**
 * Regression tests of the PostgreSQL backend's review findings: each one
 * failed before its fix (shown in the test's title).
 */
import { assert, describe, it } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Context, Effect, Fiber, Layer, Option, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DistributedSemaphore, Lock, LockBackend, LockConfig, ReadWriteLock } from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import * as TcpProxy from "../support/TcpProxy.ts"
import { admin, assertNothingLeft, backendLayer, eventually, freshAppName, heldKeys, url } from "./harness.ts"

const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

/** The backend of `context`, with its `tryAcquire` calls counted. */
const counted = (context: Context.Context<LockBackend>) => {
  const real = Context.get(context, LockBackend)
  const counter = { calls: 0 }
  const backend = LockBackend.of({
    ...real,
    tryAcquire: (request) => {
      counter.calls++
      return real.tryAcquire(request)
    }
  })
  return { counter, backend }
}

describe("PostgreSQL backend review findings", () => {
  it.live("two concurrent permit grants in one process never take the same slot (limit 2 admitted 3)", () => {
    const appA = freshAppName("sem-a")
    const appB = freshAppName("sem-b")
    const name = "review-sem"
    return Effect.gen(function* () {
      const a = yield* Layer.build(backendLayer(appA, { sessions: 1 }))
      const b = yield* Layer.build(backendLayer(appB))
      const [p1, p2] = yield* Effect.all(
        [1, 2].map(() => DistributedSemaphore.scoped(name, { limit: 2, permits: 1 })),
        { concurrency: "unbounded" }
      ).pipe(Effect.provide(a))
      const slots = [0, 1].map((slot) => PostgresBackend.keyOf("default", name, slot))
      assert.sameMembers(yield* heldKeys(appA), slots, "two different slots on the server")
      const third = yield* Effect.scoped(DistributedSemaphore.tryScoped(name, { limit: 2, permits: 1 })).pipe(
        Effect.provide(b)
      )
      assert.isTrue(Option.isNone(third), "a third holder of a limit-2 semaphore")
      yield* p1!.release
      // A health check now matches the session's bookkeeping: the other lease lives on.
      yield* p2!.extend()
      assert.strictEqual((yield* p2!.state)._tag, "Held")
      yield* p2!.release
    }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(appA)), Effect.andThen(assertNothingLeft(appB)))
  })

  it.live("queued readers do not wake each other while another process holds the writer (they ping-ponged)", () => {
    const appA = freshAppName("pp-a")
    const appB = freshAppName("pp-b")
    const name = "review-readers"
    return Effect.gen(function* () {
      const a = counted(yield* Layer.build(backendLayer(appA)))
      const b = yield* Layer.build(backendLayer(appB))
      const writer = yield* ReadWriteLock.write(name).pipe(Effect.provide(b))
      const readers = yield* Effect.forEach([1, 2, 3], () =>
        Effect.forkChild(
          Effect.scoped(ReadWriteLock.read(name, { retry: hourRetry })).pipe(
            Effect.provideService(LockBackend, a.backend)
          )
        )
      )
      yield* eventually(
        Effect.map(LockBackend.inspect(name), (i) => i.waiters.length).pipe(
          Effect.provideService(LockBackend, a.backend)
        ),
        3
      )
      // Nothing changes on the server for a while: nobody may retry (their schedule says one hour).
      const before = a.counter.calls
      yield* Effect.sleep("500 millis")
      assert.strictEqual(a.counter.calls - before, 0, "attempts while nothing changed")
      yield* writer.release
      yield* Fiber.joinAll(readers)
    }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(appA)), Effect.andThen(assertNothingLeft(appB)))
  })

  it.live("a refused semaphore attempt neither keeps slots nor notifies (two processes ping-ponged)", () => {
    const apps = [freshAppName("ps-a"), freshAppName("ps-b"), freshAppName("ps-c")]
    const name = "review-slots"
    return Effect.gen(function* () {
      const a = counted(yield* Layer.build(backendLayer(apps[0]!)))
      const b = counted(yield* Layer.build(backendLayer(apps[1]!)))
      const c = yield* Layer.build(backendLayer(apps[2]!))
      const held = yield* DistributedSemaphore.scoped(name, { limit: 2, permits: 1 }).pipe(Effect.provide(c))
      const waiting = yield* Effect.forEach([a, b], (p) =>
        Effect.forkChild(
          Effect.scoped(
            DistributedSemaphore.scoped(name, { limit: 2, permits: 2, retry: hourRetry, timeout: "20 seconds" })
          ).pipe(Effect.provideService(LockBackend, p.backend))
        )
      )
      yield* eventually(
        Effect.sync(() => Math.min(a.counter.calls, b.counter.calls, 2)),
        2
      )
      const before = a.counter.calls + b.counter.calls
      yield* Effect.sleep("500 millis")
      assert.isAtMost(a.counter.calls + b.counter.calls - before, 2, "attempts while nothing changed")
      assert.deepStrictEqual(yield* heldKeys(apps[0]!), [], "a refused attempt keeps no slot")
      yield* held.release
      yield* Fiber.joinAll(waiting)
    }).pipe(Effect.scoped, Effect.andThen(Effect.forEach(apps, assertNothingLeft)))
  })

  it.live("waiters do not spin while an expired hold's unlock is on its way (they did, over a slow link)", () => {
    const appName = freshAppName("spin")
    const name = "review-expiry"
    return Effect.gen(function* () {
      const target = new URL(url)
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() => TcpProxy.start({ targetHost: target.hostname, targetPort: Number(target.port || 5432) })),
        (p) => Effect.promise(() => p.close())
      )
      const proxied = new URL(url)
      proxied.hostname = proxy.host
      proxied.port = String(proxy.port)
      const a = counted(
        yield* Layer.build(
          backendLayer(appName, { url: proxied.toString(), statementTimeout: "5 seconds", sessions: 1 })
        )
      )
      const use = Effect.provideService(LockBackend, a.backend)
      yield* Lock.scoped(name, { ttl: "1500 millis", heartbeat: false, onLost: "ignore" }).pipe(use)
      const waiters = yield* Effect.forEach([1, 2, 3], () =>
        Effect.forkChild(Effect.scoped(Lock.scoped(name, { retry: hourRetry, timeout: "20 seconds" })).pipe(use))
      )
      yield* eventually(
        Effect.map(LockBackend.inspect(name).pipe(use), (i) => i.waiters.length),
        3
      )
      const before = a.counter.calls
      // The expiry's unlock now takes 2 x 100 ms on the wire.
      proxy.mode({ delay: 100 })
      yield* Fiber.joinAll(waiters)
      proxy.mode("pass")
      // Each waiter: woken when the unlock is done, and again when it reaches the front.
      assert.isAtMost(a.counter.calls - before, 12, "attempts around one expiry")
    }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(appName)))
  })

  it.live("extend refuses a TTL the session timeout does not cover (it was accepted)", () => {
    const appName = freshAppName("ext")
    return Effect.gen(function* () {
      const lease = yield* Lock.scoped("review-extend", { ttl: "1 second", onLost: "ignore" })
      const error = yield* Effect.flip(lease.extend("30 seconds"))
      assert.deepInclude(error, { _tag: "InvalidLockRequest", field: "ttl" })
      assert.strictEqual((yield* lease.state)._tag, "Held")
      yield* lease.extend("2 seconds")
    }).pipe(
      Effect.scoped,
      Effect.provide(backendLayer(appName, { sessionIdleTimeout: "3 seconds", statementTimeout: "500 millis" })),
      Effect.andThen(assertNothingLeft(appName))
    )
  })

  it.live("lock sessions go back to the user's pool unlocked and without the backend's settings (they did not)", () => {
    const poolApp = freshAppName("pool")
    return Effect.gen(function* () {
      const pool = yield* Layer.build(
        PgClient.layer({ url: Redacted.make(url), applicationName: poolApp, maxConnections: 3 })
      )
      yield* Effect.scoped(
        Effect.gen(function* () {
          const backend = yield* Layer.build(PostgresBackend.layer({ applicationName: "effect-locks-review" }))
          // Still held when the backend closes: the backend must unlock it before giving the session back.
          yield* Lock.scoped("review-pool", { onLost: "ignore" }).pipe(Effect.provide(backend))
        })
      ).pipe(Effect.provide(pool))
      const sql = Context.get(pool, SqlClient)
      const rows = yield* Effect.forEach(
        [1, 2, 3],
        () =>
          sql<{ readonly app: string; readonly idle: string }>`
            SELECT current_setting('application_name') AS app, current_setting('idle_session_timeout') AS idle,
                   pg_sleep(0.2)::text`,
        { concurrency: 3 }
      )
      for (const row of rows.map((r) => r[0]!)) {
        assert.strictEqual(row.app, poolApp)
        assert.strictEqual(row.idle, "0")
      }
      assert.deepStrictEqual(yield* heldKeys(poolApp), [], "a pooled connection holds an advisory lock")
    }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(poolApp)))
  })

  it.live("when a session dies, waiters in other processes are woken (nobody released, so nobody notified)", () => {
    const appA = freshAppName("dead-a")
    const appB = freshAppName("dead-b")
    const name = "review-dead"
    return Effect.gen(function* () {
      const a = yield* Layer.build(backendLayer(appA, { sessions: 1 }))
      const b = yield* Layer.build(backendLayer(appB))
      const lease = yield* Lock.scoped(name, { onLost: "ignore" }).pipe(Effect.provide(a))
      // B waits with a one-hour retry, and its first refresh attempt comes after ttl/3 = 10 s: only a
      // notification can wake it within the 5 s timeout.
      const waiter = yield* Effect.forkChild(
        Effect.scoped(Lock.scoped(name, { retry: hourRetry, ttl: "30 seconds", timeout: "5 seconds" })).pipe(
          Effect.provide(b)
        )
      )
      yield* eventually(
        Effect.map(LockBackend.inspect(name).pipe(Effect.provide(b)), (i) => i.waiters.length),
        1
      )
      const sql = Context.get(yield* Layer.build(admin), SqlClient)
      yield* sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = ${appA} AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')`
      const lost = yield* lease.lost
      assert.strictEqual(lost.reason, "connection-closed")
      yield* Fiber.join(waiter)
    }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(appA)), Effect.andThen(assertNothingLeft(appB)))
  })
})
