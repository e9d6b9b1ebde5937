/**
 * `PostgresBackend.withTransactionLock`: transaction-scoped advisory locks
 * (`pg_advisory_xact_lock`) taken in sorted key order under a local
 * `lock_timeout`, released by the commit or the rollback, on the same keys as
 * the backend's session locks.
 *
 * Every test uses clients (and backend layers) with fresh application names
 * and, once they closed, checks on the server that none of their connections
 * or advisory locks is left.
 */
import { assert, describe, it } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Schema, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Lock, ReadWriteLock } from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import {
  admin,
  advisoryLocksOf,
  assertNothingLeft,
  backendLayer,
  client,
  eventually,
  freshAppName,
  locksOnKey,
  url
} from "./harness.ts"

const { withTransactionLock, keyOf } = PostgresBackend

// ---------------------------------------------------------------------------
// Helpers

class Boom extends Schema.TaggedError<Boom>()("Boom", { detail: Schema.String }) {}

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

/** How many sessions wait on the server for `key`. */
const awaitingOn = (key: bigint) => Effect.map(locksOnKey(key), (rows) => rows.filter((row) => !row.granted).length)

/** Polls until `awaitingOn(key)` is `expected`, and fails the test otherwise. */
const untilAwaiting = (key: bigint, expected: number) =>
  Effect.tap(eventually(awaitingOn(key), expected), (n) =>
    Effect.sync(() => assert.strictEqual(n, expected, "sessions waiting on the server"))
  )

/** Advisory locks held by the connection that runs the statement (inside a transaction: its own). */
const ownAdvisoryLocks = Effect.gen(function* () {
  const sql = yield* SqlClient
  const rows = yield* sql<{ readonly n: number }>`
    SELECT count(*)::int AS n FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted`
  return Number(rows[0]?.n ?? 0)
})

/** Two names, ordered by their keys in the default namespace. */
const orderedPair = (prefix: string): readonly [string, string] => {
  const x = `${prefix}-x`
  const y = `${prefix}-y`
  return keyOf("default", x) < keyOf("default", y) ? [x, y] : [y, x]
}

const expectInvalid = (field: string, effect: Effect.Effect<unknown, unknown, SqlClient>) =>
  Effect.gen(function* () {
    const exit = yield* Effect.exit(effect)
    const error = Exit.findErrorOption(exit)
    assert.isTrue(Option.isSome(error), `expected InvalidLockRequest (field ${field}), got ${String(exit)}`)
    assert.deepInclude(Option.getOrThrow(error) as object, { _tag: "InvalidLockRequest", field })
  })

// ---------------------------------------------------------------------------

describe("PostgresBackend.withTransactionLock", () => {
  it.live("released at commit: the effect runs inside the locking transaction, and commit frees every key", () => {
    const app = freshAppName("tx-commit")
    const [a, b] = orderedPair(`tx-commit-${app}`)
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        const result = yield* withTransactionLock([b, a], { timeout: "2 seconds" })(
          Effect.gen(function* () {
            // The effect's statements run on the connection that holds both locks.
            assert.strictEqual(yield* ownAdvisoryLocks, 2)
            for (const name of [a, b]) {
              const rows = yield* locksOnKey(keyOf("default", name))
              assert.strictEqual(rows.length, 1)
              assert.deepInclude(rows[0]!, { application_name: app, mode: "ExclusiveLock", granted: true })
            }
            return 42
          })
        )
        assert.strictEqual(result, 42)
        assert.deepStrictEqual(yield* locksOnKey(keyOf("default", a)), [])
        assert.deepStrictEqual(yield* locksOnKey(keyOf("default", b)), [])
        assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
        // Another transaction takes them at once (a short lock_timeout would fail if they were still held).
        assert.strictEqual(
          yield* withTransactionLock([a, b], { timeout: "100 millis" })(Effect.succeed("again")),
          "again"
        )
      })
    )
  })

  it.live("released at rollback: the effect's own error propagates unchanged and the locks are gone", () => {
    const app = freshAppName("tx-rollback")
    const [a, b] = orderedPair(`tx-rollback-${app}`)
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        const boom = new Boom({ detail: "inside the transaction" })
        let held = 0
        const error = yield* Effect.flip(
          withTransactionLock([a, b], { timeout: "2 seconds" })(
            Effect.gen(function* () {
              held = yield* ownAdvisoryLocks
              return yield* boom
            })
          )
        )
        assert.strictEqual(held, 2, "the locks were held when the effect failed")
        assert.strictEqual(error, boom, "the very same error")
        assert.deepStrictEqual(yield* locksOnKey(keyOf("default", a)), [])
        assert.deepStrictEqual(yield* locksOnKey(keyOf("default", b)), [])
        assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
        assert.strictEqual(yield* withTransactionLock([a, b], { timeout: "100 millis" })(Effect.succeed(1)), 1)
      })
    )
  })

  it.live("released when the transaction's fiber is interrupted inside the effect", () => {
    const app = freshAppName("tx-interrupt")
    const name = `tx-interrupt-${app}`
    const key = keyOf("default", name)
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        const inside = yield* Deferred.make<void>()
        const fiber = yield* Effect.forkChild(
          withTransactionLock([name], { timeout: "2 seconds" })(
            Effect.andThen(Deferred.succeed(inside, undefined), Effect.never)
          )
        )
        yield* Deferred.await(inside)
        assert.strictEqual((yield* locksOnKey(key)).length, 1)
        yield* Fiber.interrupt(fiber)
        assert.deepStrictEqual(yield* locksOnKey(key), [])
        assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
      })
    )
  })

  it.live(
    "[a,b] and [b,a] at the same time: both complete without a deadlock (both wait behind a third holder first)",
    () => {
      const txApp = freshAppName("tx-dl")
      const sessionApp = freshAppName("tx-dls")
      const [lo, hi] = orderedPair(`tx-deadlock-${txApp}`)
      const loKey = keyOf("default", lo)
      return runWith(
        Layer.merge(client(txApp), backendLayer(sessionApp)),
        [txApp, sessionApp],
        Effect.gen(function* () {
          // A session lock on the first key makes both transactions start waiting before either proceeds.
          const blocker = yield* Lock.scoped(lo)
          const first = yield* Effect.forkChild(
            withTransactionLock([lo, hi], { timeout: "20 seconds" })(Effect.succeed("lo,hi"))
          )
          yield* untilAwaiting(loKey, 1)
          // In the given order this one would take `hi` and then wait for `lo`: with the first
          // transaction getting `lo` and then waiting for `hi`, PostgreSQL would report a deadlock.
          const second = yield* Effect.forkChild(
            withTransactionLock([hi, lo], { timeout: "20 seconds" })(Effect.succeed("hi,lo"))
          )
          yield* untilAwaiting(loKey, 2)
          yield* blocker.release
          assert.strictEqual(yield* Fiber.join(first), "lo,hi")
          assert.strictEqual(yield* Fiber.join(second), "hi,lo")
          assert.deepStrictEqual(yield* locksOnKey(loKey), [])
          assert.deepStrictEqual(yield* locksOnKey(keyOf("default", hi)), [])
        })
      )
    }
  )

  it.live("[a,b] and [b,a]: one inside holding both while the other starts; the other gets in after the commit", () => {
    const app = freshAppName("tx-hold")
    const [a, b] = orderedPair(`tx-hold-${app}`)
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        const inside = yield* Deferred.make<void>()
        const leave = yield* Deferred.make<void>()
        const order: Array<string> = []
        const first = yield* Effect.forkChild(
          withTransactionLock([a, b], { timeout: "20 seconds" })(
            Effect.gen(function* () {
              order.push("first in")
              yield* Deferred.succeed(inside, undefined)
              yield* Deferred.await(leave)
              order.push("first out")
            })
          )
        )
        yield* Deferred.await(inside)
        const second = yield* Effect.forkChild(
          withTransactionLock([b, a], { timeout: "20 seconds" })(Effect.sync(() => order.push("second in")))
        )
        // The second transaction waits on the server for a key the first holds.
        const waiting = yield* Effect.map(
          Effect.all([awaitingOn(keyOf("default", a)), awaitingOn(keyOf("default", b))]).pipe(
            Effect.repeat({ until: ([x, y]) => x + y === 1, times: 250 })
          ),
          ([x, y]) => x + y
        )
        assert.strictEqual(waiting, 1)
        yield* Deferred.succeed(leave, undefined)
        yield* Fiber.join(first)
        yield* Fiber.join(second)
        assert.deepStrictEqual(order, ["first in", "first out", "second in"])
      })
    )
  })

  it.live("20 transactions locking [a,b] or [b,a], released together: all complete, no deadlock error", () => {
    const app = freshAppName("tx-many")
    const [a, b] = orderedPair(`tx-many-${app}`)
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        const go = yield* Deferred.make<void>()
        let inside = 0
        let most = 0
        const fibers = yield* Effect.forEach(
          Array.from({ length: 20 }, (_, i) => i),
          (i) =>
            Effect.forkChild(
              Effect.andThen(
                Deferred.await(go),
                withTransactionLock(i % 2 === 0 ? [a, b] : [b, a], { timeout: "20 seconds" })(
                  Effect.gen(function* () {
                    inside++
                    most = Math.max(most, inside)
                    assert.strictEqual(yield* ownAdvisoryLocks, 2)
                    inside--
                    return i
                  })
                )
              )
            )
        )
        yield* Deferred.succeed(go, undefined)
        const results = yield* Fiber.joinAll(fibers)
        assert.deepStrictEqual(
          results.toSorted((x, y) => x - y),
          Array.from({ length: 20 }, (_, i) => i)
        )
        assert.strictEqual(most, 1, "the locks excluded each other")
        assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
      })
    )
  })

  it.live("shared: [a,b] and [b,a] are inside at the same time, and exclude an exclusive session lock", () => {
    const txApp = freshAppName("tx-shared")
    const sessionApp = freshAppName("tx-shs")
    const [a, b] = orderedPair(`tx-shared-${txApp}`)
    return runWith(
      Layer.merge(client(txApp), backendLayer(sessionApp)),
      [txApp, sessionApp],
      Effect.gen(function* () {
        const firstIn = yield* Deferred.make<void>()
        const secondIn = yield* Deferred.make<void>()
        const checked = yield* Deferred.make<void>()
        const first = yield* Effect.forkChild(
          withTransactionLock([a, b], { timeout: "5 seconds", shared: true })(
            Effect.andThen(Deferred.succeed(firstIn, undefined), Deferred.await(checked))
          )
        )
        const second = yield* Effect.forkChild(
          withTransactionLock([b, a], { timeout: "5 seconds", shared: true })(
            Effect.andThen(Deferred.succeed(secondIn, undefined), Deferred.await(checked))
          )
        )
        yield* Deferred.await(firstIn)
        yield* Deferred.await(secondIn)
        const rows = yield* locksOnKey(keyOf("default", a))
        assert.strictEqual(rows.length, 2)
        for (const row of rows) assert.deepInclude(row, { mode: "ShareLock", granted: true })
        // A writer (exclusive session lock) is excluded, a reader is not.
        assert.isTrue(Option.isNone(yield* Effect.scoped(Lock.tryScoped(a))))
        assert.isTrue(Option.isSome(yield* Effect.scoped(ReadWriteLock.tryRead(b))))
        yield* Deferred.succeed(checked, undefined)
        yield* Fiber.join(second)
        yield* Fiber.join(first)
        assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(a))))
      })
    )
  })

  it.live(
    "lock_timeout: a session lock (Lock.scoped, namespace default) on the name fails the transaction with LockTimeout before the effect runs",
    () => {
      const txApp = freshAppName("tx-lt")
      const sessionApp = freshAppName("tx-lts")
      const name = `tx-lock-timeout-${txApp}`
      return runWith(
        Layer.merge(client(txApp), backendLayer(sessionApp)),
        [txApp, sessionApp],
        Effect.gen(function* () {
          yield* Lock.scoped(name)
          let ran = false
          const error = yield* Effect.flip(
            withTransactionLock([name], { timeout: "200 millis" })(Effect.sync(() => (ran = true)))
          )
          assert.strictEqual(error._tag, "LockTimeout")
          if (error._tag === "LockTimeout") {
            assert.strictEqual(error.name, name)
            assert.strictEqual(error.attempts, 1)
          }
          assert.isFalse(ran, "the effect never ran")
          assert.strictEqual(yield* advisoryLocksOf(txApp).pipe(Effect.provide(admin)), 0)
          assert.strictEqual(
            yield* advisoryLocksOf(sessionApp).pipe(Effect.provide(admin)),
            1,
            "the session lock stays"
          )
        })
      )
    }
  )

  it.live(
    "lock_timeout: a name held by another transaction fails with LockTimeout naming it; the names taken before it are released",
    () => {
      const app = freshAppName("tx-lt2")
      const [lo, hi] = orderedPair(`tx-lt2-${app}`)
      return runWith(
        client(app),
        [app],
        Effect.gen(function* () {
          const inside = yield* Deferred.make<void>()
          const leave = yield* Deferred.make<void>()
          // The other transaction holds the second key of the sorted order.
          const other = yield* Effect.forkChild(
            withTransactionLock([hi], { timeout: "5 seconds" })(
              Effect.andThen(Deferred.succeed(inside, undefined), Deferred.await(leave))
            )
          )
          yield* Deferred.await(inside)
          let ran = false
          const error = yield* Effect.flip(
            withTransactionLock([hi, lo], { timeout: "200 millis" })(Effect.sync(() => (ran = true)))
          )
          assert.deepInclude(error as object, { _tag: "LockTimeout", name: hi })
          assert.isFalse(ran)
          assert.deepStrictEqual(yield* locksOnKey(keyOf("default", lo)), [], "the first name was rolled back")
          assert.strictEqual((yield* locksOnKey(keyOf("default", hi))).length, 1, "the other transaction still holds")
          yield* Deferred.succeed(leave, undefined)
          yield* Fiber.join(other)
        })
      )
    }
  )

  it.live("lock_timeout is local to the transaction: the pooled connection keeps its own setting", () => {
    const app = freshAppName("tx-local")
    const name = `tx-local-${app}`
    // One connection: every statement below runs on the connection the transactions used.
    const single = PgClient.layer({ url: Redacted.make(url), applicationName: app, maxConnections: 1 })
    return runWith(
      single,
      [app],
      Effect.gen(function* () {
        const sql = yield* SqlClient
        const show = Effect.map(
          sql<{ readonly lock_timeout: string }>`SHOW lock_timeout`,
          (rows) => rows[0]?.lock_timeout
        )
        const initial = yield* show
        const during = yield* withTransactionLock([name], { timeout: "1234 millis" })(show)
        assert.strictEqual(during, "1234ms")
        assert.strictEqual(yield* show, initial)
        yield* Effect.flip(
          withTransactionLock([name], { timeout: "1234 millis" })(Effect.fail(new Boom({ detail: "x" })))
        )
        assert.strictEqual(yield* show, initial)
      })
    )
  })

  it.live("a transaction lock and a session lock of the same name exclude each other", () => {
    const txApp = freshAppName("tx-ex")
    const sessionApp = freshAppName("tx-exs")
    const name = `tx-exclusion-${txApp}`
    const key = keyOf("default", name)
    return runWith(
      Layer.merge(client(txApp), backendLayer(sessionApp)),
      [txApp, sessionApp],
      Effect.gen(function* () {
        // Transaction first: the session lock is refused, and times out when waiting.
        yield* withTransactionLock([name], { timeout: "2 seconds" })(
          Effect.gen(function* () {
            assert.isTrue(Option.isNone(yield* Effect.scoped(Lock.tryScoped(name))))
            const error = yield* Effect.flip(Effect.scoped(Lock.scoped(name, { timeout: "200 millis" })))
            assert.strictEqual(error._tag, "LockTimeout")
          })
        )
        // After the commit, the session lock is granted.
        const lease = yield* Lock.scoped(name, { timeout: "5 seconds" })

        // Session lock first: a waiting transaction gets in only after the release.
        let entered = false
        const waiting = yield* Effect.forkChild(
          withTransactionLock([name], { timeout: "20 seconds" })(Effect.sync(() => (entered = true)))
        )
        yield* untilAwaiting(key, 1)
        assert.isFalse(entered)
        yield* lease.release
        yield* Fiber.join(waiting)
        assert.isTrue(entered)
        assert.deepStrictEqual(yield* locksOnKey(key), [])
      })
    )
  })

  it.live("interrupting a transaction that waits for its lock ends the wait on the server", () => {
    const txApp = freshAppName("tx-int")
    const sessionApp = freshAppName("tx-ints")
    const name = `tx-wait-interrupt-${txApp}`
    const key = keyOf("default", name)
    return runWith(
      Layer.merge(client(txApp), backendLayer(sessionApp)),
      [txApp, sessionApp],
      Effect.gen(function* () {
        const lease = yield* Lock.scoped(name)
        let entered = false
        const waiting = yield* Effect.forkChild(
          withTransactionLock([name], { timeout: "60 seconds" })(Effect.sync(() => (entered = true)))
        )
        yield* untilAwaiting(key, 1)
        yield* Fiber.interrupt(waiting)
        assert.isFalse(entered)
        yield* untilAwaiting(key, 0)
        assert.strictEqual(yield* lease.state.pipe(Effect.map((state) => state._tag)), "Held")
        assert.strictEqual((yield* locksOnKey(key)).length, 1, "only the session lock is left")
      })
    )
  })

  it.live("bad input: empty names, an empty name, a zero or infinite timeout are InvalidLockRequest", () => {
    const app = freshAppName("tx-bad")
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        let ran = 0
        const effect = Effect.sync(() => ran++)
        yield* expectInvalid("names", withTransactionLock([])(effect))
        yield* expectInvalid("name", withTransactionLock([""])(effect))
        yield* expectInvalid("name", withTransactionLock(["fine", ""])(effect))
        yield* expectInvalid("timeout", withTransactionLock(["fine"], { timeout: 0 })(effect))
        yield* expectInvalid("timeout", withTransactionLock(["fine"], { timeout: "0 millis" })(effect))
        yield* expectInvalid("timeout", withTransactionLock(["fine"], { timeout: Number.POSITIVE_INFINITY })(effect))
        assert.strictEqual(ran, 0, "the effect never ran")
        assert.strictEqual(yield* advisoryLocksOf(app).pipe(Effect.provide(admin)), 0)
      })
    )
  })

  it.live("bad input: a namespace the backend rejects (empty, ill-formed) is InvalidLockRequest", () => {
    const app = freshAppName("tx-ns")
    return runWith(
      client(app),
      [app],
      Effect.gen(function* () {
        // PostgresBackend.layer rejects these namespaces (field "namespace"); two different ill-formed
        // namespaces even encode to the same UTF-8 bytes, hence to the same keys.
        assert.strictEqual(keyOf("\uD800", "n"), keyOf("\uDBFF", "n"))
        const backendRefuses = yield* Effect.flip(
          Effect.scoped(Layer.build(backendLayer(`${app}-b`, { namespace: "" })))
        )
        assert.deepInclude(backendRefuses as object, { _tag: "InvalidLockRequest", field: "namespace" })
        let ran = 0
        const effect = Effect.sync(() => ran++)
        yield* expectInvalid("namespace", withTransactionLock(["n"], { namespace: "" })(effect))
        yield* expectInvalid("namespace", withTransactionLock(["n"], { namespace: "\uD800" })(effect))
        assert.strictEqual(ran, 0)
      })
    )
  })
})
