/**
 * The PostgreSQL backend's own promises, against a real server: the key
 * derivation (pinned by vectors), keys in `pg_locks`, collisions, many locks
 * on few connections, waiters without connections, tokens across two
 * independent backends, configuration from the environment, bad options.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Fiber, Layer, Option, Schedule, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DistributedSemaphore, Lock, LockBackend, LockConfig, ReadWriteLock } from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import {
  admin,
  advisoryLocksOf,
  assertNothingLeft,
  backendLayer,
  client,
  connectionsOf,
  eventually,
  freshAppName,
  heldKeys,
  url
} from "./harness.ts"

/** Builds the backend and does nothing with it. */
const backendService = Effect.asVoid(LockBackend.use(Effect.succeed))

/** The error of building a backend with these options. */
const build = (options: PostgresBackend.Options) =>
  Effect.flip(Effect.provide(backendService, backendLayer(freshAppName("bad"), options)))

const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

/** Runs `body` with a fresh backend layer, then checks the server for leftovers. */
const withBackend = <A, E>(
  label: string,
  body: (appName: string) => Effect.Effect<A, E, LockBackend | Scope.Scope>,
  options: PostgresBackend.Options = {}
) => {
  const appName = freshAppName(label)
  return Effect.scoped(body(appName)).pipe(
    Effect.provide(backendLayer(appName, options)),
    Effect.andThen(assertNothingLeft(appName))
  )
}

describe("PostgresBackend.keyOf", () => {
  it("is pinned by test vectors (a change would let two versions hold one lock twice)", () => {
    // Computed once, and checked against an independent implementation of the
    // documented algorithm (Python hashlib); they must never change.
    const vectors: ReadonlyArray<readonly [string, string, number | undefined, bigint]> = [
      ["default", "a", undefined, 7745519767669693094n],
      ["default", "orders:42", undefined, 7983414387395463023n],
      ["tenant-1", "orders:42", undefined, 271395911360228078n],
      ["default", "é🔒", undefined, -8362288514260022493n],
      ["default", "sem", 0, -6958871463002085623n],
      ["default", "sem", 1, -5181898962069883312n],
      ["default", "", undefined, 6710495295459600039n]
    ]
    for (const [namespace, name, slot, key] of vectors) {
      assert.strictEqual(PostgresBackend.keyOf(namespace, name, slot), key, `${namespace}/${name}/${slot}`)
    }
    // Writer intents: a 0x02 byte after the name.
    assert.strictEqual(PostgresBackend.intentKeyOf("default", "a"), -2166069196230107152n)
    assert.strictEqual(PostgresBackend.intentKeyOf("tenant-1", "orders:42"), 8464613175208421895n)
  })

  it("separates namespace, name and slot unambiguously", () => {
    const keys = [
      PostgresBackend.keyOf("ab", "c"),
      PostgresBackend.keyOf("a", "bc"),
      PostgresBackend.keyOf("a", "bc", 0),
      PostgresBackend.keyOf("a\u0000b", "c"),
      PostgresBackend.keyOf("a", "b\u0000c")
    ]
    assert.strictEqual(new Set(keys).size, keys.length)
  })
})

describe("PostgresBackend on a real server", () => {
  it.live("a held lock is the key keyOf(namespace, name) in pg_locks; a semaphore holds one slot key per permit", () =>
    withBackend(
      "keys",
      (appName) =>
        Effect.gen(function* () {
          const lease = yield* Lock.scoped("orders:42")
          assert.deepStrictEqual(yield* heldKeys(appName), [PostgresBackend.keyOf("tenant-7", "orders:42")])
          yield* lease.release
          const permits = yield* DistributedSemaphore.scoped("pool", { limit: 3, permits: 2 })
          const slots = [0, 1, 2].map((slot) => PostgresBackend.keyOf("tenant-7", "pool", slot))
          const held = yield* heldKeys(appName)
          assert.strictEqual(held.length, 2)
          for (const key of held) assert.include(slots, key)
          yield* permits.release
          assert.deepStrictEqual(yield* heldKeys(appName), [])
        }),
      { namespace: "tenant-7" }
    )
  )

  it.live("two names whose keys collide in one process fail with a typed error, never share a lock", () =>
    withBackend(
      "collide",
      () =>
        Effect.gen(function* () {
          const first = yield* Lock.scoped("first")
          const error = yield* Effect.flip(Effect.scoped(Lock.scoped("second")))
          assert.deepInclude(error, { _tag: "InvalidLockRequest", field: "name" })
          yield* first.release
          // Once the first name is free again, the second one may use the key.
          assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped("second"))))
        }),
      { key: () => 42n }
    )
  )

  it.live("10,000 locks held at once by one process on at most 4 server connections, all released after", () => {
    const appName = freshAppName("many")
    const count = 10_000
    return Effect.gen(function* () {
      yield* Effect.scoped(
        Effect.gen(function* () {
          const leases = yield* Effect.forEach(
            Array.from({ length: count }, (_, i) => `many-${i}`),
            (name) => Lock.scoped(name),
            { concurrency: 64 }
          )
          assert.strictEqual(leases.length, count)
          const connections = yield* connectionsOf(appName).pipe(Effect.provide(admin))
          assert.isAtLeast(connections, 1)
          assert.isAtMost(connections, 4)
          assert.strictEqual(yield* advisoryLocksOf(appName).pipe(Effect.provide(admin)), count)
        }).pipe(Effect.provide(backendLayer(appName)))
      )
      yield* assertNothingLeft(appName)
    })
  })

  it.live("waiters hold no connections: 200 fibers waiting on one name use the same few connections", () =>
    withBackend("waiters", (appName) =>
      Effect.gen(function* () {
        const holder = yield* Lock.scoped("busy")
        const waiting = yield* Effect.forEach(
          Array.from({ length: 200 }, (_, i) => i),
          // Sequential forks: children of the test's fiber, not of a forEach worker.
          () => Effect.forkChild(Effect.scoped(Lock.scoped("busy", { retry: hourRetry, timeout: "30 seconds" })))
        )
        const queued = yield* eventually(
          Effect.map(LockBackend.inspect("busy"), ({ waiters }) => waiters.length),
          200
        )
        assert.strictEqual(queued, 200)
        assert.isAtMost(yield* connectionsOf(appName).pipe(Effect.provide(admin)), 4)
        yield* holder.release
        // Every waiter gets its turn, by notification (their retry interval is one hour).
        yield* Fiber.joinAll(waiting)
      })
    )
  )

  it.live("tokens strictly increase across two independent backends (two processes' view)", () => {
    const a = freshAppName("tok-a")
    const b = freshAppName("tok-b")
    return Effect.gen(function* () {
      const backendA = yield* Layer.build(backendLayer(a))
      const backendB = yield* Layer.build(backendLayer(b))
      const tokens: Array<bigint> = []
      for (let i = 0; i < 20; i++) {
        const context = i % 2 === 0 ? backendA : backendB
        const lease = yield* Lock.scoped("shared-name").pipe(Effect.provide(context))
        tokens.push(lease.token)
        yield* lease.release
      }
      for (let i = 1; i < tokens.length; i++) assert.isTrue(tokens[i]! > tokens[i - 1]!, `token ${i}`)
    }).pipe(Effect.scoped, Effect.andThen(assertNothingLeft(a)), Effect.andThen(assertNothingLeft(b)))
  })

  it.live("serverLocks and serverLockCount show held and awaited advisory locks with pid and application name", () => {
    const appName = freshAppName("inspect")
    const waiterApp = freshAppName("inspect-tx")
    const name = "inspected"
    return Effect.gen(function* () {
      const lease = yield* Lock.scoped(name)
      // A transaction lock of the same name blocks on the server: an awaited lock in pg_locks.
      const waiting = yield* PostgresBackend.withTransactionLock([name], { timeout: "30 seconds" })(Effect.void).pipe(
        Effect.provide(client(waiterApp)),
        Effect.forkChild
      )
      const locks = yield* PostgresBackend.serverLocks({ names: [name] }).pipe(
        Effect.provide(admin),
        Effect.repeat({
          schedule: Schedule.spaced("20 millis"),
          until: (all) => all.some((l) => l.name === name && !l.granted),
          times: 250
        })
      )
      const mine = locks.filter((l) => l.name === name)
      const held = mine.find((l) => l.granted)
      const awaited = mine.find((l) => !l.granted)
      assert.deepInclude(held, {
        applicationName: appName,
        mode: "ExclusiveLock",
        key: PostgresBackend.keyOf("default", name)
      })
      assert.deepInclude(awaited, { applicationName: waiterApp, granted: false })
      assert.isDefined(awaited?.since)
      assert.notStrictEqual(held?.pid, awaited?.pid)
      const count = yield* PostgresBackend.serverLockCount.pipe(Effect.provide(admin))
      assert.isAtLeast(count.held, 1)
      assert.isAtLeast(count.awaited, 1)
      yield* lease.release
      yield* Fiber.join(waiting)
    }).pipe(
      Effect.scoped,
      Effect.provide(backendLayer(appName)),
      Effect.andThen(assertNothingLeft(appName)),
      Effect.andThen(assertNothingLeft(waiterApp))
    )
  })

  it.live("a writer waiting in one process is not starved by readers of other processes", () => {
    const apps = [freshAppName("rw-a"), freshAppName("rw-b"), freshAppName("rw-c")]
    const name = "writer-preference"
    return Effect.gen(function* () {
      const [a, b, c] = yield* Effect.forEach(apps, (app) => Layer.build(backendLayer(app)))
      const order: Array<string> = []
      const reader = yield* ReadWriteLock.read(name).pipe(Effect.provide(b!))
      // A's writer waits (its retry interval is one hour: it proceeds by notification).
      const writer = yield* Effect.forkChild(
        ReadWriteLock.withWrite(name, { retry: hourRetry, timeout: "20 seconds" })(
          Effect.sync(() => order.push("writer"))
        ).pipe(Effect.provide(a!))
      )
      // Its intent is on the server...
      const intent = PostgresBackend.intentKeyOf("default", name)
      yield* eventually(
        Effect.map(heldKeys(apps[0]!), (keys) => (keys.includes(intent) ? 1 : 0)),
        1
      )
      // ...so new readers of other processes (and of the reader's own process) do not start.
      assert.isTrue(Option.isNone(yield* Effect.scoped(ReadWriteLock.tryRead(name)).pipe(Effect.provide(b!))))
      assert.isTrue(Option.isNone(yield* Effect.scoped(ReadWriteLock.tryRead(name)).pipe(Effect.provide(c!))))
      const late = yield* Effect.forkChild(
        ReadWriteLock.withRead(name, { retry: hourRetry, timeout: "20 seconds" })(
          Effect.sync(() => order.push("late reader"))
        ).pipe(Effect.provide(c!))
      )
      yield* reader.release
      yield* Fiber.join(writer)
      yield* Fiber.join(late)
      assert.deepStrictEqual(order, ["writer", "late reader"])
      // The intent went with the grant.
      assert.notInclude(yield* heldKeys(apps[0]!), intent)
    }).pipe(Effect.scoped, Effect.andThen(Effect.forEach(apps, assertNothingLeft)))
  })

  it.live("a waiting writer that gives up drops its intent: readers of other processes proceed", () => {
    const apps = [freshAppName("rwq-a"), freshAppName("rwq-b")]
    const name = "writer-gives-up"
    return Effect.gen(function* () {
      const [a, b] = yield* Effect.forEach(apps, (app) => Layer.build(backendLayer(app)))
      const reader = yield* ReadWriteLock.read(name).pipe(Effect.provide(b!))
      const writer = yield* Effect.forkChild(
        Effect.scoped(ReadWriteLock.write(name, { retry: hourRetry })).pipe(Effect.provide(a!))
      )
      const intent = PostgresBackend.intentKeyOf("default", name)
      yield* eventually(
        Effect.map(heldKeys(apps[0]!), (keys) => (keys.includes(intent) ? 1 : 0)),
        1
      )
      yield* Fiber.interrupt(writer)
      assert.notInclude(yield* heldKeys(apps[0]!), intent)
      assert.isTrue(Option.isSome(yield* Effect.scoped(ReadWriteLock.tryRead(name)).pipe(Effect.provide(b!))))
      yield* reader.release
    }).pipe(Effect.scoped, Effect.andThen(Effect.forEach(apps, assertNothingLeft)))
  })

  it.live("LOCK_PROVIDER=postgres with LOCK_POSTGRES_URL through LockBackend.layerConfig", () => {
    const env = { LOCK_PROVIDER: "postgres", LOCK_POSTGRES_URL: url, LOCK_POSTGRES_NAMESPACE: "from-env" }
    const layer = LockBackend.layerConfig.pipe(Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))))
    return Effect.gen(function* () {
      const backend = yield* LockBackend
      assert.strictEqual(backend.kind, "postgres")
      const lease = yield* Lock.scoped("configured")
      const rows = yield* Effect.gen(function* () {
        const sql = yield* SqlClient
        return yield* sql<{ readonly n: number }>`
          SELECT count(*)::int AS n FROM pg_locks
          WHERE locktype = 'advisory' AND granted
            AND ((classid::int8 << 32) | objid::int8) = ${PostgresBackend.keyOf("from-env", "configured").toString()}::int8`
      }).pipe(Effect.provide(admin))
      assert.strictEqual(Number(rows[0]?.n), 1)
      yield* lease.release
    }).pipe(Effect.scoped, Effect.provide(layer))
  })

  it.live(
    "LOCK_PROVIDER=postgres without LOCK_POSTGRES_URL is a config error; a dead server is LockBackendUnavailable",
    () =>
      Effect.gen(function* () {
        const missing = LockBackend.layerConfig.pipe(
          Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown({ LOCK_PROVIDER: "postgres" })))
        )
        const error = yield* Effect.flip(Effect.provide(backendService, missing))
        assert.strictEqual(error._tag, "ConfigError")
        const dead = PostgresBackend.layer().pipe(
          Layer.provide(client("el-dead", { url: "postgres://postgres@127.0.0.1:1/postgres" }))
        )
        const unreachable = yield* Effect.flip(Effect.provide(backendService, dead))
        assert.strictEqual(unreachable._tag, "LockBackendUnavailable")
      })
  )

  it.live("bad options and TTLs beyond what the session timeout covers are typed errors", () =>
    Effect.gen(function* () {
      assert.deepInclude(yield* build({ sessions: 0 }), { _tag: "InvalidLockRequest", field: "sessions" })
      assert.deepInclude(yield* build({ statementTimeout: 0 }), {
        _tag: "InvalidLockRequest",
        field: "statementTimeout"
      })
      assert.deepInclude(yield* build({ sequence: { name: "Bad-Name" } }), {
        _tag: "InvalidLockRequest",
        field: "sequence.name"
      })
      assert.deepInclude(yield* build({ namespace: "" }), { _tag: "InvalidLockRequest", field: "namespace" })
      const appName = freshAppName("ttl")
      yield* Effect.gen(function* () {
        // 2-minute idle timeout: a 2-minute TTL would let a cut-off holder outlive its session's locks.
        const error = yield* Effect.flip(Effect.scoped(Lock.scoped("long", { ttl: "2 minutes" })))
        assert.deepInclude(error, { _tag: "InvalidLockRequest", field: "ttl" })
      }).pipe(Effect.provide(backendLayer(appName)))
      yield* assertNothingLeft(appName)
    })
  )
})
