/**
 * The eight bugs of a naive PostgreSQL advisory-lock helper (seed 001: a Go
 * `DatabaseLockHelper` built on `sync.Once`, an `isLocked` flag set before the
 * database answered, `context.AfterFunc` per retry, `pg_advisory_xact_lock`
 * with an FNV key against `pg_advisory_unlock(hashtext(...))`,
 * `context.Background()`, an atomic flag racing a mutex, and connections
 * leaked by failed acquisitions), each turned into tests against the real
 * PostgreSQL backend.
 *
 * Every test builds its backend layers with fresh application names and, once
 * they closed, checks on the server that none of their connections or
 * advisory locks is left. Slow database calls are real: an `ALTER SEQUENCE`
 * held open in another transaction blocks the `nextval` of the grant
 * statement after `pg_try_advisory_lock` was granted, so the server holds the
 * lock while the backend still waits for the answer.
 */
import { assert, describe, it } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Option, Queue, Schedule, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { createHash } from "node:crypto"
import {
  type GrantRequest,
  Lock,
  LockBackend,
  type LockBackendShape,
  LockConfig,
  ReadWriteLock
} from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import { FaultyBackend } from "../../src/testing/index.ts"
import { freePort } from "../support/servers.ts"
import * as TcpProxy from "../support/TcpProxy.ts"
import {
  admin,
  advisoryLocksOf,
  locksOnKey,
  assertNothingLeft,
  backendLayer,
  client,
  connectionsOf,
  eventually,
  freshAppName,
  url
} from "./harness.ts"
import { grantRequest } from "../support/grantRequest.ts"

// ---------------------------------------------------------------------------
// Helpers

/** A long retry: a waiter with it only moves on a change signal. */
const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

/** A grant request for direct backend calls (ttl 30 s). */
const request = (name: string, owner: string, extra?: Partial<GrantRequest>) =>
  grantRequest(name, owner, { ttlMillis: 30_000, ...extra })

/** Builds a backend layer into the current scope and returns the backend (for tests with two processes). */
const backendIn = (appName: string, options: PostgresBackend.Options & { readonly url?: string } = {}) =>
  Effect.map(Layer.build(backendLayer(appName, options)), (context) => Context.get(context, LockBackend))

/** Runs `effect` on another backend than the one in context. */
const on =
  (backend: LockBackendShape) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, Exclude<R, LockBackend>> =>
    Effect.provideService(effect, LockBackend, backend)

/** The test body with the layer's services, then the server-side leak check of every application name. */
const runWith = <A, E, ROut>(
  layer: Layer.Layer<ROut, unknown>,
  appNames: ReadonlyArray<string>,
  body: Effect.Effect<A, E, ROut | Scope.Scope>
) =>
  Effect.scoped(body).pipe(
    Effect.provide(layer),
    Effect.andThen(Effect.forEach(appNames, assertNothingLeft, { discard: true }))
  )

/** A test body without a layer in context (it builds its own), then the leak check. */
const runScoped = <A, E>(appNames: ReadonlyArray<string>, body: Effect.Effect<A, E, Scope.Scope>) =>
  Effect.scoped(body).pipe(Effect.andThen(Effect.forEach(appNames, assertNothingLeft, { discard: true })))

/** Polls until the server shows `expected` advisory locks for `key`; returns the last count. */
const eventuallyLocksOnKey = (key: bigint, expected: number) =>
  eventually(
    Effect.map(locksOnKey(key), (rows) => rows.length),
    expected
  )

/** Statements of `appName` waiting for a relation lock on the server (a grant blocked on its `nextval`). */
const blockedStatementsOf = (appName: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const rows = yield* sql<{ readonly n: number }>`
      SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE a.application_name = ${appName} AND l.locktype = 'relation' AND NOT l.granted`
    return Number(rows[0]?.n ?? 0)
  })

/** Whether a server process is still there. */
const backendAlive = (pid: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const rows = yield* sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${pid}`
    return Number(rows[0]?.n ?? 0)
  }).pipe(Effect.provide(admin))

/** `pg_terminate_backend` from the admin connection: the session dies as if its connection failed. */
const terminate = (pid: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    yield* sql`SELECT pg_terminate_backend(${pid})`
  }).pipe(Effect.provide(admin))

/** A fencing sequence of the test's own, as a lower-case SQL identifier. */
const sequenceFor = (appName: string) => `el_seq_${appName.replaceAll("-", "_")}`

const dropSequence = (sequence: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    yield* sql.unsafe(`DROP SEQUENCE IF EXISTS public.${sequence}`)
  }).pipe(Effect.provide(admin), Effect.orDie)

/**
 * Holds `ALTER SEQUENCE` open in an admin transaction: every `nextval` of the
 * sequence (the second half of a grant statement, after
 * `pg_try_advisory_lock` succeeded) blocks until the returned effect commits.
 * The transaction is rolled back if the scope closes first.
 */
const blockSequence = (sequence: string) =>
  Effect.gen(function* () {
    const locked = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    const fiber = yield* Effect.gen(function* () {
      const sql = yield* SqlClient
      yield* sql.withTransaction(
        Effect.gen(function* () {
          yield* sql.unsafe(`ALTER SEQUENCE public.${sequence} INCREMENT BY 1`)
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(release)
        })
      )
    }).pipe(Effect.provide(admin), Effect.forkScoped)
    yield* Deferred.await(locked)
    return Effect.andThen(Deferred.succeed(release, undefined), Fiber.join(fiber))
  })

/**
 * Listens to the backend's release channel from now on: every unlock statement
 * also runs `pg_notify('effect_locks', key)`. The returned effect sends a
 * sentinel notification and counts the unlocks of `key` that reached the
 * server before it (notifications arrive in commit order).
 */
const unlocksOnServer = (key: bigint) =>
  Effect.gen(function* () {
    const pg = Context.get(yield* Layer.build(admin), PgClient.PgClient)
    const queue = yield* pg.listen("effect_locks")
    return Effect.gen(function* () {
      const sentinel = `sentinel-${key}-${Math.random()}`
      yield* pg.notify("effect_locks", sentinel)
      let unlocks = 0
      while (true) {
        const message = yield* Queue.take(queue)
        if (message.payload === sentinel) return unlocks
        if (message.payload === String(key)) unlocks++
      }
    })
  })

/** Polls the backend (at most ~5 s) until `name` has `count` waiters; fails the test otherwise. */
const waitersReach = (name: string, count: number) =>
  LockBackend.inspect(name).pipe(
    Effect.repeat({
      schedule: Schedule.spaced("10 millis"),
      until: (inspection) => inspection.waiters.length === count,
      times: 500
    }),
    Effect.tap((inspection) => Effect.sync(() => assert.strictEqual(inspection.waiters.length, count, "waiters")))
  )

/**
 * A view of a backend that reports its calls: `afterTries(n)` (taken before
 * the calls start) completes once `n` more `tryAcquire` calls have answered.
 * A waiter's second answered attempt is the one right after it subscribed:
 * from then on it waits for a signal or its retry schedule.
 */
const observed = (inner: LockBackendShape) =>
  Effect.gen(function* () {
    const { backend, control } = yield* FaultyBackend.make(inner)
    const pending: Array<{ remaining: number; readonly done: Deferred.Deferred<void> }> = []
    yield* control.setHook((call) =>
      Effect.sync(() => {
        if (call.operation !== "tryAcquire" || call.phase !== "after") return
        for (const entry of pending) if (--entry.remaining === 0) Deferred.doneUnsafe(entry.done, Effect.void)
      })
    )
    const afterTries = (n: number) =>
      Effect.sync(() => {
        const done = Deferred.makeUnsafe<void>()
        pending.push({ remaining: n, done })
        return Deferred.await(done)
      })
    return { backend, afterTries }
  })

/** The failure of an exit, or a failed assertion. */
const failureOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  const error = Exit.findErrorOption(exit)
  assert.isTrue(Option.isSome(error), `expected a typed failure, got ${String(exit)}`)
  return Option.getOrThrow(error)
}

const u32 = (n: number) => {
  const bytes = Buffer.alloc(4)
  bytes.writeUInt32BE(n)
  return bytes
}

/** The key derivation as `keyOf` documents it, computed independently. */
const documentedKey = (namespace: string, name: string): bigint => {
  const ns = Buffer.from(namespace, "utf8")
  const nm = Buffer.from(name, "utf8")
  return createHash("sha256")
    .update(Buffer.concat([Buffer.from("effect-locks/pg/v1\0", "utf8"), u32(ns.length), ns, u32(nm.length), nm]))
    .digest()
    .readBigInt64BE(0)
}

const tagOf = (error: unknown): unknown => (error as { readonly _tag?: unknown })._tag

// ---------------------------------------------------------------------------

describe("seed 001: eight bugs of a naive advisory-lock helper", () => {
  describe("1. sync.Once blocks reinitialization after connection failure", () => {
    it.live(
      "sync.Once blocks reinitialization after connection failure: a lock session terminated on the server loses its lease, and the same layer acquires again on a new session",
      () => {
        const app = freshAppName("s1kill")
        const name = `seed1-kill-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const first = yield* Lock.scoped(name, { onLost: "ignore" })
            const [held] = yield* locksOnKey(key)
            assert.isDefined(held)
            assert.strictEqual(held!.application_name, app)
            assert.isTrue(held!.granted)

            yield* terminate(held!.pid)
            const lost = yield* first.lost
            assert.strictEqual(lost.reason, "connection-closed")
            const notHeld = yield* Effect.flip(first.release)
            assert.deepInclude(notHeld as object, { _tag: "LockNotHeld", state: "lost" })

            // The helper is not stuck on its dead connection: a new session takes the lock.
            const second = yield* Lock.scoped(name, { onLost: "ignore", timeout: "10 seconds" })
            assert.isTrue(second.token > first.token, "tokens keep increasing across sessions")
            const now = yield* locksOnKey(key)
            assert.strictEqual(now.length, 1)
            assert.notStrictEqual(now[0]!.pid, held!.pid, "a new server session holds the lock")
            assert.strictEqual(now[0]!.application_name, app)
            yield* second.release
            assert.deepStrictEqual(yield* locksOnKey(key), [])
          })
        )
      }
    )

    it.live(
      "sync.Once blocks reinitialization after connection failure: after its idle lock session was terminated, at most one try fails and the next one succeeds",
      () => {
        const app = freshAppName("s1idle")
        const name = `seed1-idle-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const pid = yield* Effect.scoped(
              Effect.gen(function* () {
                assert.isTrue(Option.isSome(yield* Lock.tryScoped(name)))
                const [row] = yield* locksOnKey(key)
                assert.isDefined(row)
                return row!.pid
              })
            )
            yield* terminate(pid)
            assert.strictEqual(yield* eventually(backendAlive(pid), 0), 0)

            // The first try may meet the dead connection (a typed, transient failure)...
            const firstTry = yield* Effect.exit(Effect.scoped(Lock.tryScoped(name)))
            if (Exit.isFailure(firstTry)) {
              assert.strictEqual(tagOf(failureOf(firstTry)), "LockBackendUnavailable")
            } else {
              assert.isTrue(Option.isSome(firstTry.value), "nobody else holds the name")
            }
            // ...but the backend replaced it: the next try is granted on a new session.
            const granted = yield* Effect.scoped(
              Effect.gen(function* () {
                const lease = yield* Lock.tryScoped(name)
                const rows = yield* locksOnKey(key)
                return { lease, rows }
              })
            )
            assert.isTrue(Option.isSome(granted.lease))
            assert.strictEqual(granted.rows.length, 1)
            assert.notStrictEqual(granted.rows[0]!.pid, pid)
            assert.deepStrictEqual(yield* locksOnKey(key), [])
          })
        )
      }
    )

    it.live(
      "sync.Once blocks reinitialization after connection failure: every connection cut (TCP reset, server unreachable) fails attempts with a typed error, then the same layer acquires again",
      () => {
        const app = freshAppName("s1cut")
        const name = `seed1-cut-${app}`
        const key = PostgresBackend.keyOf("default", name)
        const target = new URL(url)
        return runScoped(
          [app],
          Effect.gen(function* () {
            const proxy = yield* Effect.acquireRelease(
              Effect.promise(() =>
                TcpProxy.start({ targetHost: target.hostname, targetPort: Number(target.port || "5432") })
              ),
              (p) => Effect.promise(() => p.close())
            )
            const viaProxy = new URL(url)
            viaProxy.hostname = proxy.host
            viaProxy.port = String(proxy.port)
            yield* Effect.scoped(
              Effect.gen(function* () {
                const pid = yield* Effect.scoped(
                  Effect.gen(function* () {
                    yield* Lock.scoped(name)
                    const [row] = yield* locksOnKey(key)
                    assert.isDefined(row)
                    return row!.pid
                  })
                )
                // The database becomes unreachable: every connection is reset, new ones get no answer.
                proxy.mode("blackhole")
                proxy.reset()
                const cut = yield* Effect.exit(Effect.scoped(Lock.tryScoped(name)))
                assert.strictEqual(tagOf(failureOf(cut)), "LockBackendUnavailable")

                // The database is back: the same layer opens new sessions and acquires.
                proxy.mode("pass")
                const lease = yield* Lock.scoped(name, { timeout: "25 seconds", onLost: "ignore" })
                const rows = yield* locksOnKey(key)
                assert.strictEqual(rows.length, 1)
                assert.strictEqual(rows[0]!.application_name, app)
                assert.notStrictEqual(rows[0]!.pid, pid)
                yield* lease.release
                assert.strictEqual(yield* eventuallyLocksOnKey(key, 0), 0)
              })
            ).pipe(Effect.provide(backendLayer(app, { url: viaProxy.toString() })))
          })
        )
      },
      60_000
    )

    it.live(
      "sync.Once blocks reinitialization after connection failure: a layer pointed at a port where nothing listens fails with a typed error and leaves nothing",
      () => {
        const app = freshAppName("s1dead")
        return runScoped(
          [app],
          Effect.gen(function* () {
            const port = yield* Effect.promise(() => freePort())
            const dead = new URL(url)
            dead.hostname = "127.0.0.1"
            dead.port = String(port)
            const exit = yield* Effect.exit(Effect.scoped(Layer.build(backendLayer(app, { url: dead.toString() }))))
            assert.strictEqual(tagOf(failureOf(exit)), "LockBackendUnavailable")
            // A fresh layer on the reachable server works right after.
            const lease = yield* Effect.scoped(Lock.tryScoped(`seed1-dead-${app}`)).pipe(
              Effect.provide(backendLayer(app))
            )
            assert.isTrue(Option.isSome(lease))
          })
        )
      }
    )
  })

  describe("2. state set before DB call", () => {
    it.live(
      "state set before DB call: while the grant statement waits for the server, inspect shows no holder (though the server already took the lock); the holder appears only with the answer",
      () => {
        const app = freshAppName("s2slow")
        const name = `seed2-slow-${app}`
        const key = PostgresBackend.keyOf("default", name)
        const sequence = sequenceFor(app)
        return runWith(
          backendLayer(app, { sequence: { name: sequence }, statementTimeout: "30 seconds" }),
          [app],
          Effect.gen(function* () {
            const unblock = yield* blockSequence(sequence)
            const attempt = yield* Effect.forkChild(Lock.tryScoped(name, { onLost: "ignore" }))
            assert.strictEqual(yield* eventually(blockedStatementsOf(app), 1).pipe(Effect.provide(admin)), 1)

            // The server granted pg_try_advisory_lock; the statement has not answered yet.
            const onServer = yield* locksOnKey(key)
            assert.strictEqual(onServer.length, 1)
            assert.isTrue(onServer[0]!.granted)
            assert.strictEqual(onServer[0]!.application_name, app)
            const during = yield* LockBackend.inspect(name)
            assert.deepStrictEqual(during.holders, [], "no holder before the database answered")
            assert.deepStrictEqual(during.waiters, [])
            assert.isUndefined(attempt.pollUnsafe(), "the attempt is still waiting for the answer")

            yield* unblock
            const lease = Option.getOrThrow(yield* Fiber.join(attempt))
            const after = yield* LockBackend.inspect(name)
            assert.strictEqual(after.holders.length, 1)
            assert.strictEqual(after.holders[0]!.token, lease.token)
            assert.strictEqual(after.holders[0]!.owner, lease.owner)
            yield* lease.release
            assert.deepStrictEqual(yield* locksOnKey(key), [])
            assert.deepStrictEqual((yield* LockBackend.inspect(name)).holders, [])
          })
        ).pipe(Effect.ensuring(dropSequence(sequence)))
      }
    )

    it.live(
      "state set before DB call: a grant statement that misses its deadline leaves no holder in inspect and no lock on the server (its session is ended)",
      () => {
        const app = freshAppName("s2hang")
        const name = `seed2-hang-${app}`
        const key = PostgresBackend.keyOf("default", name)
        const sequence = sequenceFor(app)
        return runWith(
          backendLayer(app, { sequence: { name: sequence }, statementTimeout: "1 second" }),
          [app],
          Effect.gen(function* () {
            const unblock = yield* blockSequence(sequence)
            const attempt = yield* Effect.forkChild(Effect.exit(Lock.tryScoped(name, { onLost: "ignore" })))
            assert.strictEqual(yield* eventually(blockedStatementsOf(app), 1).pipe(Effect.provide(admin)), 1)
            assert.deepStrictEqual((yield* LockBackend.inspect(name)).holders, [])

            const exit = yield* Fiber.join(attempt)
            assert.strictEqual(tagOf(failureOf(exit)), "LockBackendUnavailable")
            const after = yield* LockBackend.inspect(name)
            assert.deepStrictEqual(after.holders, [], "a failed grant leaves no holder")
            assert.deepStrictEqual(after.waiters, [])
            // The server's grant died with the session the backend ended.
            assert.strictEqual(yield* eventuallyLocksOnKey(key, 0), 0)
            assert.strictEqual(yield* eventually(advisoryLocksOf(app), 0).pipe(Effect.provide(admin)), 0)

            yield* unblock
            // The name is really free, and the layer still works.
            const again = yield* Effect.scoped(Lock.tryScoped(name))
            assert.isTrue(Option.isSome(again))
          })
        ).pipe(Effect.ensuring(dropSequence(sequence)))
      }
    )

    it.live(
      "state set before DB call: a refused try-lock and a timed-out wait leave no holder, no waiter and nothing in pg_locks",
      () => {
        const holderApp = freshAppName("s2h")
        const trierApp = freshAppName("s2t")
        const name = `seed2-refused-${trierApp}`
        return runScoped(
          [holderApp, trierApp],
          Effect.gen(function* () {
            const holder = yield* backendIn(holderApp)
            const trier = yield* backendIn(trierApp)
            yield* on(holder)(Lock.scoped(name))

            assert.isTrue(Option.isNone(yield* on(trier)(Effect.scoped(Lock.tryScoped(name)))))
            const error = yield* on(trier)(Effect.flip(Effect.scoped(Lock.scoped(name, { timeout: "200 millis" }))))
            assert.strictEqual(error._tag, "LockTimeout")
            const seen = yield* trier.inspect(name)
            assert.deepStrictEqual(seen.holders, [])
            assert.deepStrictEqual(seen.waiters, [])
            assert.strictEqual(yield* advisoryLocksOf(trierApp).pipe(Effect.provide(admin)), 0)
            // The holder is untouched.
            assert.strictEqual((yield* holder.inspect(name)).holders.length, 1)
          })
        )
      }
    )
  })

  describe("3. context.AfterFunc per retry leaks goroutines", () => {
    it.live(
      "context.AfterFunc per retry leaks goroutines: hundreds of retries against a held lock open no connection and leave nothing after LockTimeout",
      () => {
        const holderApp = freshAppName("s3h")
        const waiterApp = freshAppName("s3w")
        const name = `seed3-retry-${waiterApp}`
        return runScoped(
          [holderApp, waiterApp],
          Effect.gen(function* () {
            const holder = yield* backendIn(holderApp)
            const waiter = yield* backendIn(waiterApp)
            const held = yield* on(holder)(Lock.scoped(name))
            // One refused try opens the waiter's lock session: the baseline.
            assert.isTrue(Option.isNone(yield* on(waiter)(Effect.scoped(Lock.tryScoped(name)))))
            const before = yield* connectionsOf(waiterApp).pipe(Effect.provide(admin))
            assert.isAtLeast(before, 1)

            // Sample the waiter's connections on the server while it retries.
            const stop = yield* Deferred.make<void>()
            let most = before
            let samples = 0
            const sampler = yield* Effect.forkChild(
              Effect.gen(function* () {
                const sql = yield* SqlClient
                while (!(yield* Deferred.isDone(stop))) {
                  const rows = yield* sql<{ readonly n: number }>`
                    SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE ${`${waiterApp}%`}`
                  most = Math.max(most, Number(rows[0]?.n ?? 0))
                  samples++
                  yield* Effect.raceFirst(Deferred.await(stop), Effect.sleep("20 millis"))
                }
              }).pipe(Effect.provide(admin))
            )

            const error = yield* on(waiter)(
              Effect.flip(
                Effect.scoped(
                  Lock.scoped(name, {
                    retry: LockConfig.retryLinear({ initial: "2 millis", max: "2 millis", jitter: false }),
                    timeout: "1500 millis"
                  })
                )
              )
            )
            yield* Deferred.succeed(stop, undefined)
            yield* Fiber.join(sampler)

            assert.strictEqual(error._tag, "LockTimeout")
            if (error._tag === "LockTimeout") {
              assert.strictEqual(error.name, name)
              assert.isAbove(error.attempts, 20, "the waiter retried many times")
              assert.deepStrictEqual(error.failures, [])
            }
            assert.isAbove(samples, 0)
            assert.isAtMost(most, before, "retries must not open connections")
            const seen = yield* waiter.inspect(name)
            assert.deepStrictEqual(seen.holders, [])
            assert.deepStrictEqual(seen.waiters, [], "the timed-out waiter is gone")
            assert.strictEqual(yield* advisoryLocksOf(waiterApp).pipe(Effect.provide(admin)), 0)
            assert.isAtMost(yield* connectionsOf(waiterApp).pipe(Effect.provide(admin)), before)
            // The waiter's layer is not stuck on leftovers: once free, the name is granted at once.
            yield* held.release
            assert.isTrue(Option.isSome(yield* on(waiter)(Effect.scoped(Lock.tryScoped(name)))))
          })
        )
      }
    )

    it.live(
      "context.AfterFunc per retry leaks goroutines: a waiter on a name held by another process retries at the pace of its schedule, not in a busy loop",
      () => {
        const holderApp = freshAppName("s3sh")
        const waiterApp = freshAppName("s3sw")
        const name = `seed3-pace-${waiterApp}`
        return runScoped(
          [holderApp, waiterApp],
          Effect.gen(function* () {
            const holder = yield* backendIn(holderApp)
            const waiter = yield* backendIn(waiterApp)
            yield* on(holder)(Lock.scoped(name))
            // Retry once an hour: in one second nothing but the first attempt and the one right after
            // subscribing is due (the next refresh attempt is at ttl/3 = 10 s), and the holder never releases.
            const error = yield* on(waiter)(
              Effect.flip(Effect.scoped(Lock.scoped(name, { retry: hourRetry, timeout: "1 second" })))
            )
            assert.strictEqual(error._tag, "LockTimeout")
            if (error._tag === "LockTimeout") {
              assert.isAtMost(error.attempts, 5, `${error.attempts} attempts in one second with an hourly retry`)
            }
            const seen = yield* waiter.inspect(name)
            assert.deepStrictEqual(seen.waiters, [])
            assert.strictEqual(yield* advisoryLocksOf(waiterApp).pipe(Effect.provide(admin)), 0)
          })
        )
      }
    )
  })

  describe("4. asymmetric lock/unlock keys", () => {
    it.live(
      "asymmetric lock/unlock keys: the held key in pg_locks is keyOf(namespace, name), and release removes exactly that key while the session stays open",
      () => {
        const app = freshAppName("s4")
        const name = `seed4-key-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const lease = yield* Lock.scoped(name)
            const rows = yield* locksOnKey(key)
            assert.strictEqual(rows.length, 1)
            assert.deepInclude(rows[0]!, { application_name: app, mode: "ExclusiveLock", granted: true })
            const pid = rows[0]!.pid
            assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 1, "only that key is held")

            // serverLocks rebuilds the same key and resolves the name.
            const listed = yield* PostgresBackend.serverLocks({ names: [name] }).pipe(Effect.provide(admin))
            const mine = listed.filter((lock) => lock.key === key)
            assert.strictEqual(mine.length, 1)
            assert.deepInclude(mine[0]!, { name, pid, applicationName: app, granted: true })

            yield* lease.release
            assert.deepStrictEqual(yield* locksOnKey(key), [], "the unlock used the key of the lock")
            assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
            assert.strictEqual(yield* backendAlive(pid), 1, "released by unlock, not by the session ending")
          })
        )
      }
    )

    it.live(
      "asymmetric lock/unlock keys: shared holds take and give back the same key (ShareLock), one unlock per hold",
      () => {
        const app = freshAppName("s4r")
        const name = `seed4-shared-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const r1 = yield* ReadWriteLock.read(name)
            const r2 = yield* ReadWriteLock.read(name)
            const rows = yield* locksOnKey(key)
            assert.isAtLeast(rows.length, 1)
            for (const row of rows) assert.deepInclude(row, { application_name: app, mode: "ShareLock", granted: true })
            yield* r1.release
            const left = yield* locksOnKey(key)
            assert.isAtLeast(left.length, 1, "the other reader still holds the key")
            assert.isTrue(Option.isNone(yield* Effect.scoped(Lock.tryScoped(name))), "a writer is still excluded")
            yield* r2.release
            assert.deepStrictEqual(yield* locksOnKey(key), [])
            assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
          })
        )
      }
    )

    it.live(
      "asymmetric lock/unlock keys: the namespace is part of the key, so another namespace locks another key",
      () => {
        const defaultApp = freshAppName("s4d")
        const otherApp = freshAppName("s4o")
        const name = `seed4-ns-${defaultApp}`
        return runScoped(
          [defaultApp, otherApp],
          Effect.gen(function* () {
            const inDefault = yield* backendIn(defaultApp)
            const inOther = yield* backendIn(otherApp, { namespace: "seed4-other" })
            yield* on(inOther)(Lock.scoped(name))
            const otherKey = PostgresBackend.keyOf("seed4-other", name)
            const defaultKey = PostgresBackend.keyOf("default", name)
            assert.notStrictEqual(otherKey, defaultKey)
            const rows = yield* locksOnKey(otherKey)
            assert.strictEqual(rows.length, 1)
            assert.strictEqual(rows[0]!.application_name, otherApp)
            assert.deepStrictEqual(yield* locksOnKey(defaultKey), [])
            // Different keys: the default namespace is not blocked.
            assert.isTrue(Option.isSome(yield* on(inDefault)(Effect.scoped(Lock.tryScoped(name)))))
          })
        )
      }
    )

    it.live("asymmetric lock/unlock keys: keyOf is the documented SHA-256 derivation, not hashtext", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient
        for (const name of ["jobs", "seed-4", "ünïcødé/name", "a".repeat(300)]) {
          const key = PostgresBackend.keyOf("default", name)
          assert.strictEqual(key, documentedKey("default", name))
          const rows = yield* sql<{ readonly plain: string; readonly joined: string }>`
            SELECT hashtext(${name})::int8::text AS plain, hashtext(${`default${name}`})::int8::text AS joined`
          assert.notStrictEqual(key, BigInt(rows[0]!.plain))
          assert.notStrictEqual(key, BigInt(rows[0]!.joined))
        }
        // Stable and namespace-sensitive.
        assert.strictEqual(PostgresBackend.keyOf("default", "x"), PostgresBackend.keyOf("default", "x"))
        assert.notStrictEqual(PostgresBackend.keyOf("a", "bc"), PostgresBackend.keyOf("ab", "c"))
      }).pipe(Effect.provide(admin))
    )
  })

  describe("5. transaction-scoped lock released on commit makes explicit unlock fail", () => {
    it.live(
      "transaction-scoped lock released on commit makes explicit unlock fail: commits and rollbacks on other connections of the same pool leave the session lock held, and its explicit unlock succeeds",
      () => {
        const app = freshAppName("s5")
        const name = `seed5-session-${app}`
        const other = `seed5-other-${app}`
        const key = PostgresBackend.keyOf("default", name)
        // The backend and the test's SqlClient share one pool.
        const layer = PostgresBackend.layer({
          statementTimeout: "2 seconds",
          healthCheckInterval: "500 millis",
          applicationName: app
        }).pipe(Layer.provideMerge(client(app)))
        return runWith(
          layer,
          [app],
          Effect.gen(function* () {
            const backend = yield* LockBackend
            const sql = yield* SqlClient
            assert.isTrue(Option.isSome(yield* backend.tryAcquire(request(name, "owner-5"))))

            for (let i = 0; i < 5; i++) yield* sql.withTransaction(sql`SELECT 1`)
            yield* Effect.exit(sql.withTransaction(Effect.andThen(sql`SELECT 1`, Effect.fail("rollback" as const))))
            assert.strictEqual(
              yield* PostgresBackend.withTransactionLock([other], { timeout: "2 seconds" })(
                Effect.succeed("committed")
              ),
              "committed"
            )

            // Still held by the lock session, as the backend believes.
            const rows = yield* locksOnKey(key)
            assert.strictEqual(rows.length, 1)
            assert.deepInclude(rows[0]!, { application_name: app, granted: true })
            assert.strictEqual(yield* backend.extend(name, "owner-5", 30_000), "extended")
            // It excludes a transaction on another connection of the same pool.
            const blocked = yield* Effect.flip(
              PostgresBackend.withTransactionLock([name], { timeout: "200 millis" })(Effect.void)
            )
            assert.deepInclude(blocked as object, { _tag: "LockTimeout", name })

            // The explicit unlock finds the lock (pg_advisory_unlock answered true).
            assert.isTrue(yield* backend.release(name, "owner-5"))
            assert.deepStrictEqual(yield* locksOnKey(key), [])
            assert.isFalse(yield* backend.release(name, "owner-5"), "a second release removes nothing")
          })
        )
      }
    )

    it.live(
      "transaction-scoped lock released on commit makes explicit unlock fail: withTransactionLock locks end at commit with nothing to unlock",
      () => {
        const app = freshAppName("s5x")
        const name = `seed5-xact-${app}`
        const key = PostgresBackend.keyOf("default", name)
        const layer = PostgresBackend.layer({
          statementTimeout: "2 seconds",
          healthCheckInterval: "500 millis",
          applicationName: app
        }).pipe(Layer.provideMerge(client(app)))
        return runWith(
          layer,
          [app],
          Effect.gen(function* () {
            const backend = yield* LockBackend
            const result = yield* PostgresBackend.withTransactionLock([name], { timeout: "2 seconds" })(
              Effect.gen(function* () {
                const rows = yield* locksOnKey(key)
                assert.strictEqual(rows.length, 1)
                assert.deepInclude(rows[0]!, { application_name: app, granted: true })
                assert.isTrue(Option.isNone(yield* backend.tryAcquire(request(name, "owner-x"))))
                return "done"
              })
            )
            assert.strictEqual(result, "done")
            assert.deepStrictEqual(yield* locksOnKey(key), [], "released by the commit")
            assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
            assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))))
          })
        )
      }
    )
  })

  describe("6. context.Background ignores caller cancellation", () => {
    it.live(
      "context.Background ignores caller cancellation: interrupting a fiber waiting in Lock.scoped returns and leaves no waiter or lock",
      () => {
        const holderApp = freshAppName("s6h")
        const waiterApp = freshAppName("s6w")
        const name = `seed6-interrupt-${waiterApp}`
        return runScoped(
          [holderApp, waiterApp],
          Effect.gen(function* () {
            const holder = yield* backendIn(holderApp)
            const waiter = yield* backendIn(waiterApp)
            const held = yield* on(holder)(Lock.scoped(name))
            const view = yield* observed(waiter)
            const waiting = yield* view.afterTries(2)
            let entered = false
            const fiber = yield* on(view.backend)(
              Effect.forkChild(
                Effect.scoped(
                  Effect.andThen(
                    Lock.scoped(name, { retry: hourRetry }),
                    Effect.sync(() => (entered = true))
                  )
                )
              )
            )
            yield* waiting
            yield* Fiber.interrupt(fiber)
            const exit = yield* Fiber.await(fiber)
            assert.isTrue(Exit.hasInterrupts(exit))
            assert.isFalse(entered)
            const seen = yield* waiter.inspect(name)
            assert.deepStrictEqual(seen.waiters, [], "no waiter left behind")
            assert.deepStrictEqual(seen.holders, [])
            assert.strictEqual(yield* advisoryLocksOf(waiterApp).pipe(Effect.provide(admin)), 0)
            // No ghost registration: once the holder leaves, the waiter's layer gets the name at once.
            yield* held.release
            assert.isTrue(Option.isSome(yield* on(waiter)(Effect.scoped(Lock.tryScoped(name)))))
          })
        )
      }
    )

    it.live(
      "context.Background ignores caller cancellation: the timeout option and the caller's own deadline are both respected",
      () => {
        const holderApp = freshAppName("s6th")
        const waiterApp = freshAppName("s6tw")
        const name = `seed6-timeout-${waiterApp}`
        return runScoped(
          [holderApp, waiterApp],
          Effect.gen(function* () {
            const holder = yield* backendIn(holderApp)
            const waiter = yield* backendIn(waiterApp)
            yield* on(holder)(Lock.scoped(name))

            const error = yield* on(waiter)(Effect.flip(Effect.scoped(Lock.scoped(name, { timeout: "300 millis" }))))
            assert.strictEqual(error._tag, "LockTimeout")
            if (error._tag === "LockTimeout") {
              assert.strictEqual(error.name, name)
              assert.isAtLeast(error.attempts, 1)
              assert.isAtLeast(error.waitedMillis, 300)
            }

            let ran = false
            const cancelled = yield* on(waiter)(
              Lock.withLock(name, { retry: hourRetry })(Effect.sync(() => (ran = true))).pipe(
                Effect.timeoutOption("300 millis")
              )
            )
            assert.isTrue(Option.isNone(cancelled))
            assert.isFalse(ran)
            const seen = yield* waiter.inspect(name)
            assert.deepStrictEqual(seen.waiters, [])
            assert.deepStrictEqual(seen.holders, [])
            assert.strictEqual(yield* advisoryLocksOf(waiterApp).pipe(Effect.provide(admin)), 0)
          })
        )
      }
    )

    it.live(
      "context.Background ignores caller cancellation: an interrupt during a grant statement the database never answers completes (bounded by the statement deadline) and leaves no lock",
      () => {
        const app = freshAppName("s6db")
        const name = `seed6-db-${app}`
        const key = PostgresBackend.keyOf("default", name)
        const sequence = sequenceFor(app)
        return runWith(
          backendLayer(app, { sequence: { name: sequence }, statementTimeout: "1 second" }),
          [app],
          Effect.gen(function* () {
            yield* blockSequence(sequence)
            let entered = false
            const fiber = yield* Effect.forkChild(
              Effect.scoped(
                Effect.andThen(
                  Lock.scoped(name),
                  Effect.sync(() => (entered = true))
                )
              )
            )
            assert.strictEqual(yield* eventually(blockedStatementsOf(app), 1).pipe(Effect.provide(admin)), 1)
            // The database never answers (the sequence stays blocked): the interrupt still completes.
            yield* Fiber.interrupt(fiber)
            const exit = yield* Fiber.await(fiber)
            assert.isTrue(Exit.hasInterrupts(exit))
            assert.isFalse(entered)
            const seen = yield* LockBackend.inspect(name)
            assert.deepStrictEqual(seen.holders, [])
            assert.deepStrictEqual(seen.waiters, [])
            assert.strictEqual(yield* eventuallyLocksOnKey(key, 0), 0, "the server's grant ended with its session")
          })
        ).pipe(Effect.ensuring(dropSequence(sequence)))
      }
    )
  })

  describe("7. race between atomic check and mutex in ReleaseLock", () => {
    it.live(
      "race between atomic check and mutex in ReleaseLock: 20 concurrent lease.release calls make one release and 19 typed LockNotHeld errors",
      () => {
        const app = freshAppName("s7")
        const name = `seed7-lease-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const lease = yield* Lock.scoped(name)
            const unlocks = yield* unlocksOnServer(key)
            const exits = yield* Effect.forEach(
              Array.from({ length: 20 }, (_, i) => i),
              () => Effect.exit(lease.release),
              { concurrency: "unbounded" }
            )
            assert.strictEqual(yield* unlocks, 1, "one unlock statement reached the server")
            const released = exits.filter(Exit.isSuccess)
            const failed = exits.filter(Exit.isFailure).map(failureOf)
            assert.strictEqual(released.length, 1, "exactly one release")
            assert.strictEqual(failed.length, 19)
            for (const error of failed) assert.deepInclude(error as object, { _tag: "LockNotHeld", state: "released" })
            assert.deepInclude((yield* Effect.flip(lease.release)) as object, {
              _tag: "LockNotHeld",
              state: "released"
            })
            assert.deepStrictEqual(yield* lease.state, { _tag: "Released" })
            assert.deepStrictEqual(yield* locksOnKey(key), [])
            assert.deepStrictEqual((yield* LockBackend.inspect(name)).holders, [])
          })
        )
      }
    )

    it.live(
      "race between atomic check and mutex in ReleaseLock: 20 concurrent backend releases of one owner release once",
      () => {
        const app = freshAppName("s7b")
        const name = `seed7-backend-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const backend = yield* LockBackend
            assert.isTrue(Option.isSome(yield* backend.tryAcquire(request(name, "owner-7"))))
            const unlocks = yield* unlocksOnServer(key)
            const answers = yield* Effect.forEach(
              Array.from({ length: 20 }, (_, i) => i),
              () => backend.release(name, "owner-7"),
              { concurrency: "unbounded" }
            )
            assert.strictEqual(answers.filter((released) => released).length, 1)
            assert.strictEqual(yield* unlocks, 1, "one unlock statement reached the server")
            assert.deepStrictEqual(yield* locksOnKey(key), [])
          })
        )
      }
    )

    it.live(
      "race between atomic check and mutex in ReleaseLock: duplicate releases racing a new holder of the same name never unlock the new holder's grant",
      () => {
        const app = freshAppName("s7n")
        const name = `seed7-next-${app}`
        const key = PostgresBackend.keyOf("default", name)
        return runWith(
          backendLayer(app),
          [app],
          Effect.gen(function* () {
            const first = yield* Lock.scoped(name)
            const next = yield* Effect.forkChild(Lock.scoped(name, { retry: hourRetry, timeout: "20 seconds" }))
            yield* waitersReach(name, 1)
            const exits = yield* Effect.forEach(
              Array.from({ length: 20 }, (_, i) => i),
              () => Effect.exit(first.release),
              { concurrency: "unbounded" }
            )
            assert.strictEqual(exits.filter(Exit.isSuccess).length, 1)
            const second = yield* Fiber.join(next)
            assert.isTrue(second.token > first.token)
            // The new grant is on the server, and the session's lock count agrees with the backend (the
            // extension waits for a fresh health check, which ends a session whose count differs).
            yield* second.extend()
            assert.strictEqual((yield* second.state)._tag, "Held")
            const rows = yield* locksOnKey(key)
            assert.strictEqual(rows.length, 1)
            assert.isTrue(rows[0]!.granted)
            const seen = yield* LockBackend.inspect(name)
            assert.deepStrictEqual(
              seen.holders.map((h) => h.owner),
              [second.owner]
            )
            yield* second.release
            assert.deepStrictEqual(yield* locksOnKey(key), [])
          })
        )
      }
    )
  })

  describe("8. connection leak when acquisition fails", () => {
    it.live(
      "connection leak when acquisition fails: 1,000 failed try-locks leave the connection count unchanged and nothing in pg_locks",
      () => {
        const holderApp = freshAppName("s8h")
        const trierApp = freshAppName("s8t")
        const name = `seed8-leak-${trierApp}`
        return runScoped(
          [holderApp, trierApp],
          Effect.gen(function* () {
            const holder = yield* backendIn(holderApp)
            const trier = yield* backendIn(trierApp)
            yield* on(holder)(Lock.scoped(name))
            // The first refused try opens the trier's lock session: the baseline.
            assert.isTrue(Option.isNone(yield* on(trier)(Effect.scoped(Lock.tryScoped(name)))))
            const before = yield* connectionsOf(trierApp).pipe(Effect.provide(admin))
            assert.isAtLeast(before, 1)

            let refused = 0
            for (let i = 0; i < 1000; i++) {
              const attempt = yield* on(trier)(Effect.scoped(Lock.tryScoped(name)))
              if (Option.isNone(attempt)) refused++
            }
            assert.strictEqual(refused, 1000)

            assert.strictEqual(yield* connectionsOf(trierApp).pipe(Effect.provide(admin)), before)
            assert.strictEqual(yield* advisoryLocksOf(trierApp).pipe(Effect.provide(admin)), 0)
            const seen = yield* trier.inspect(name)
            assert.deepStrictEqual(seen.holders, [])
            assert.deepStrictEqual(seen.waiters, [])
            assert.strictEqual(yield* advisoryLocksOf(holderApp).pipe(Effect.provide(admin)), 1)
          })
        )
      },
      60_000
    )
  })
})
