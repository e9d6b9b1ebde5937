/**
 * The Redis backend's own promises, against real servers: many locks on one
 * client connection and one subscriber, inspection, the key layout under
 * hostile names, typed errors for bad input, a name's kind and limit, and
 * the configuration from the environment (`LOCK_PROVIDER=redis`).
 *
 * Every test checks, after its backend layer closed, that nothing is left
 * under its prefix: no key and no subscriber of its change channel.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Fiber, Layer, Option, type Scope } from "effect"
import { afterAll } from "vitest"
import { DistributedSemaphore, Lock, LockBackend, LockConfig, ReadWriteLock } from "../../src/index.ts"
import { RedisBackend } from "../../src/redis/index.ts"
import * as Checks from "../support/backendChecks.ts"
import * as RedisServer from "../support/RedisServer.ts"
import { assertNothingLeft, backendLayer, eventually, freshPrefix, keysUnder, redis, url } from "./harness.ts"

/**
 * Private servers: one for the 100,000 locks (so that its client list is
 * exactly this test's), one for the hostile names (so that every key on it
 * is this test's), three for Redlock through the configuration.
 */
const servers = await RedisServer.startMany(5)
const [manyServer, hostileServer, ...redlockServers] = servers as [
  RedisServer.RedisServer,
  RedisServer.RedisServer,
  ...Array<RedisServer.RedisServer>
]
const redlockUrls = redlockServers.map((server) => server.url)
afterAll(() => Promise.all(servers.map((server) => server.stop())))

const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

/** Runs `body` with a fresh backend under `prefix`, then checks the server for leftovers once the layer closed. */
const withBackend = <A, E>(
  prefix: string,
  body: Effect.Effect<A, E, LockBackend | Scope.Scope>,
  options: { readonly url?: string } = {}
) =>
  Effect.scoped(body).pipe(
    Effect.provide(backendLayer(prefix, options)),
    Effect.andThen(assertNothingLeft(prefix, options.url ?? url))
  )

/** The failure of `effect` (fails the test when it succeeds). */
const failureOf = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.flip(effect)

/** One line of `CLIENT LIST`, as its `field=value` pairs. */
const clientList = (server: RedisServer.RedisServer) =>
  Effect.map(
    Effect.promise(() => server.command("CLIENT", "LIST")),
    (text) =>
      text
        .split("\n")
        .map((line) => line.trim())
        .filter((line) => line.length > 0)
        .map((line) => Object.fromEntries(line.split(" ").map((pair) => pair.split("=", 2) as [string, string])))
        // Not the connection asking.
        .filter((client) => client["cmd"] !== "client|list")
  )

const isSubscriber = (client: Record<string, string>) => client["sub"] !== "0" || client["cmd"] === "subscribe"

/** Every key on a server matching `pattern`, by `SCAN` on `RedisServer.command`. */
const scanAll = (server: RedisServer.RedisServer, pattern: string) =>
  Effect.promise(async () => {
    const keys: Array<string> = []
    let cursor = "0"
    do {
      const [next, found] = JSON.parse(await server.command("SCAN", cursor, "MATCH", pattern, "COUNT", "10000")) as [
        string,
        Array<string>
      ]
      cursor = next
      keys.push(...found)
    } while (cursor !== "0")
    return keys
  })

const dbSize = (server: RedisServer.RedisServer) =>
  Effect.map(
    Effect.promise(() => server.command("DBSIZE")),
    (reply) => Number(reply.slice(1))
  )

/** The error of building the backend on the shared server with these options. */
const build = (options: RedisBackend.Options) =>
  failureOf(
    Effect.asVoid(LockBackend.use(Effect.succeed)).pipe(
      Effect.provide(RedisBackend.layer(options).pipe(Layer.provide(redis())))
    )
  )

/** `LockBackend.layerConfig` reading the given variables only. */
const fromEnv = (env: Record<string, string>) =>
  LockBackend.layerConfig.pipe(Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))))

/** The error of building `LockBackend.layerConfig` from these variables. */
const buildFailure = (env: Record<string, string>) =>
  failureOf(Effect.asVoid(LockBackend.use(Effect.succeed)).pipe(Effect.provide(fromEnv(env))))

/** The documented hash tag of a name: `{<encodeURIComponent(name)>}`. */
const tagOf = (name: string) => `{${encodeURIComponent(name)}}`

describe("RedisBackend: many locks, few connections", () => {
  it.live(
    "100,000 exclusive locks held at once by one process: one command connection and one subscriber, all released after",
    () => {
      const prefix = freshPrefix("many")
      const count = 100_000
      const names = Array.from({ length: count }, (_, i) => `many-${i}`)
      const timings: Record<string, number> = {}
      return Effect.gen(function* () {
        const started = Date.now()
        yield* Effect.gen(function* () {
          const leases = yield* Effect.forEach(
            names,
            (name) => Lock.scoped(name, { ttl: "10 minutes", onLost: "ignore" }),
            { concurrency: 200 }
          )
          timings["acquire"] = Date.now() - started
          assert.strictEqual(leases.length, count)

          // No connection per lock: the client's command connection, and one subscriber for the whole process.
          const clients = yield* clientList(manyServer)
          const subscribers = clients.filter(isSubscriber)
          const commands = clients.filter((client) => !isSubscriber(client))
          assert.strictEqual(subscribers.length, 1, `subscribers: ${JSON.stringify(subscribers)}`)
          assert.isAtLeast(commands.length, 1)
          assert.isAtMost(commands.length, 3, `command connections: ${JSON.stringify(commands)}`)

          // Every lock is held on the server, each by its own key.
          const held = yield* scanAll(manyServer, `${prefix}{many-*}:x`)
          assert.strictEqual(held.length, count)
          assert.strictEqual(new Set(held).size, count)
          for (const i of [0, 4_242, count - 1]) {
            const { holders } = yield* LockBackend.inspect(names[i]!)
            assert.deepStrictEqual(
              holders.map((h) => [h.name, h.owner, h.token]),
              [[names[i], leases[i]!.owner, leases[i]!.token]]
            )
          }

          // Released concurrently: closing the scope would release them one at a time, one round trip each.
          const releasing = Date.now()
          yield* Effect.forEach(leases, (lease) => lease.release, { concurrency: 200, discard: true })
          timings["release"] = Date.now() - releasing
          const states = yield* Effect.forEach(leases, (lease) => lease.state)
          assert.isTrue(states.every((state) => state._tag === "Released"))
          // Every lock key is gone at once (the counters follow a few milliseconds later, checked below).
          assert.strictEqual((yield* scanAll(manyServer, `${prefix}{many-*}:x`)).length, 0)
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, { url: manyServer.url })))
        timings["total"] = Date.now() - started

        yield* assertNothingLeft(prefix, manyServer.url)
        assert.strictEqual(yield* dbSize(manyServer), 0)
        // The layer's connections are closed (the leak check's own clients too, eventually).
        yield* eventually(
          Effect.flatMap(clientList(manyServer), (clients) =>
            clients.length === 0 ? Effect.void : Effect.fail(new Error(`clients left: ${JSON.stringify(clients)}`))
          )
        )
        console.log(
          `100,000 locks on redis: acquired in ${timings["acquire"]} ms, released in ${timings["release"]} ms, ` +
            `${timings["total"]} ms with the layer's start and stop`
        )
      })
    },
    180_000
  )
})

describe("RedisBackend: inspection", () => {
  it.live(
    "holders (owner, mode, token, expiry, metadata) and queued waiters of exclusive, read-write and semaphore names",
    () => {
      const prefix = freshPrefix("inspect")
      return withBackend(
        prefix,
        Effect.gen(function* () {
          const before = Date.now()
          const odd = { "a|b": "c|d:e{f}", role: "holder" }
          const ex = yield* Lock.scoped("ex", { ttl: "30 seconds", metadata: odd })
          Checks.assertExclusiveHolder((yield* LockBackend.inspect("ex")).holders, "ex", ex, odd, before)

          // A waiter shows up while it waits, in queue order, and is gone once granted.
          const exWaiter = yield* Checks.forkWaiter("ex", hourRetry)
          const queued = yield* eventually(
            Effect.flatMap(LockBackend.inspect("ex"), ({ waiters }) =>
              waiters.length === 1 ? Effect.succeed(waiters[0]!) : Effect.fail(new Error("no waiter yet"))
            )
          )
          assert.deepInclude(queued, { name: "ex", mode: "exclusive", permits: 1, metadata: { role: "waiter" } })
          assert.notStrictEqual(queued.owner, ex.owner)
          assert.isTrue(queued.owner.startsWith(`${ex.owner.split("/")[0]}/`), queued.owner)
          assert.isAtLeast(queued.since!, before - 1_000)
          yield* Checks.assertHandedToQueued("ex", ex, exWaiter, queued)

          // Read-write: two readers hold, a writer waits, a later reader queues behind it.
          const { r1, r2, writer } = yield* Checks.readersAndWriter(hourRetry)
          yield* eventually(
            Effect.flatMap(LockBackend.inspect("rw"), ({ waiters }) =>
              waiters.length === 1 ? Effect.void : Effect.fail(new Error("writer not queued yet"))
            )
          )
          const late = yield* Checks.forkLateReader(hourRetry)
          const rw = yield* eventually(
            Effect.flatMap(LockBackend.inspect("rw"), (view) =>
              view.waiters.length === 2 ? Effect.succeed(view) : Effect.fail(new Error("late reader not queued yet"))
            )
          )
          Checks.assertReadWriteView(rw.holders.toSorted(Checks.byRole), rw.waiters, r1, r2)
          yield* r1.release
          yield* r2.release
          yield* Fiber.join(writer)
          yield* Fiber.join(late)

          // Semaphore: permits per holder, the agreed limit, a waiter for more than is left.
          const { s1, s2, semWaiter } = yield* Checks.semaphoreWithWaiter(hourRetry)
          const sem = yield* eventually(
            Effect.flatMap(LockBackend.inspect("sem"), (view) =>
              view.waiters.length === 1 ? Effect.succeed(view) : Effect.fail(new Error("semaphore waiter not queued"))
            )
          )
          Checks.assertSemaphoreView(sem.holders.toSorted(Checks.byRole), sem.waiters, s1, s2)

          // inspect() lists every name under this prefix: the three names, holders and waiters alike.
          const all = yield* LockBackend.inspect()
          assert.deepStrictEqual([...new Set(all.holders.map((x) => x.name))].toSorted(), ["sem"])
          assert.deepStrictEqual(
            all.waiters.map((w) => w.name),
            ["sem"]
          )
          const ex2 = yield* Lock.scoped("ex")
          const everything = yield* LockBackend.inspect()
          assert.deepStrictEqual([...new Set(everything.holders.map((x) => x.name))].toSorted(), ["ex", "sem"])
          yield* ex2.release
          yield* s1.release
          yield* Fiber.join(semWaiter)
          yield* s2.release
        })
      )
    }
  )

  it.live("inspect() without a name lists the names under its own prefix only, also with glob characters in it", () => {
    const base = freshPrefix("glob")
    // Unescaped, the first prefix's SCAN pattern would match the second prefix's keys.
    const globbing = `${base}[x]*?:`
    const other = `${base}x-other:`
    const plain = base
    return Effect.gen(function* () {
      const a = yield* Layer.build(backendLayer(globbing))
      const b = yield* Layer.build(backendLayer(other))
      const c = yield* Layer.build(backendLayer(plain))
      yield* Lock.scoped("mine", { metadata: { who: "a" } }).pipe(Effect.provide(a))
      yield* Lock.scoped("theirs", { metadata: { who: "b" } }).pipe(Effect.provide(b))
      yield* ReadWriteLock.read("plain", { metadata: { who: "c" } }).pipe(Effect.provide(c))
      const namesOf = (context: typeof a) =>
        Effect.map(LockBackend.inspect().pipe(Effect.provide(context)), ({ holders }) =>
          holders.map((h) => [h.name, h.metadata["who"]])
        )
      assert.deepStrictEqual(yield* namesOf(a), [["mine", "a"]])
      assert.deepStrictEqual(yield* namesOf(b), [["theirs", "b"]])
      // `base` is a prefix of the other two prefixes' keys, but their keys are not `<base>{name}:...`.
      assert.deepStrictEqual(yield* namesOf(c), [["plain", "c"]])
      // A name is only found through its own prefix.
      assert.deepStrictEqual((yield* LockBackend.inspect("theirs").pipe(Effect.provide(a))).holders, [])
    }).pipe(
      Effect.scoped,
      Effect.andThen(Effect.forEach([globbing, other, plain], (prefix) => assertNothingLeft(prefix)))
    )
  })
})

describe("RedisBackend: names and keys", () => {
  const hostile = [
    "a{b}c",
    "{",
    "}",
    "{}",
    "}{",
    "a:b",
    "a:b:x",
    ":x",
    "*",
    "a*",
    "?",
    "[a-z]",
    "[",
    "a b",
    " ",
    "a\nb",
    "\r\n",
    "a|b",
    "%",
    "%41",
    "A",
    "%%41",
    "a\u0000b",
    // Composed and decomposed é: different strings, different names.
    "\u00e9",
    "e\u0301",
    "🔒",
    "锁",
    "名前:{x}*",
    "12:x3:y",
    // Another name's encoded form.
    encodeURIComponent("🔒"),
    encodeURIComponent("a:b"),
    encodeURIComponent("{"),
    // 1,024 UTF-8 bytes, the longest name allowed.
    "n".repeat(1024),
    "é".repeat(512),
    `${"🔒".repeat(255)}abcd`
  ]

  it.live(
    "hostile names lock independently, keep every key inside the prefix under the name's own hash tag, and come back exactly from inspection",
    () => {
      const prefix = freshPrefix("hostile")
      const server = hostileServer
      return Effect.gen(function* () {
        assert.strictEqual(new Set(hostile).size, hostile.length)
        for (const name of hostile) assert.isAtMost(new TextEncoder().encode(name).length, 1024, name)
        // Every name held at once: no two share a lock.
        const leases = yield* Effect.forEach(hostile, (name) =>
          Effect.map(Lock.tryScoped(name, { metadata: { name } }), (lease) => {
            assert.isTrue(Option.isSome(lease), `${JSON.stringify(name)} was free`)
            return Option.getOrThrow(lease)
          })
        )
        for (const lease of leases) assert.isTrue(lease.owner.startsWith("hôst|:{x}🔒 12:3/"), lease.owner)
        // ...and each one is really locked.
        for (const name of hostile) {
          const again = yield* Effect.scoped(Lock.tryScoped(name))
          assert.isTrue(Option.isNone(again), `${JSON.stringify(name)} is held`)
        }

        // Every key on the server is under the prefix: `<prefix>{<encoded name>}:<part>`.
        const keys = yield* keysUnder(prefix, server.url)
        assert.strictEqual(yield* dbSize(server), keys.length, "a key outside the prefix")
        const tags = new Map<string, Array<string>>()
        for (const key of keys) {
          assert.isTrue(key.startsWith(`${prefix}{`), key)
          const rest = key.slice(prefix.length)
          // Redis Cluster's hash tag: from the first `{` to the first `}` after it.
          const tag = rest.slice(0, rest.indexOf("}") + 1)
          assert.match(rest.slice(tag.length), /^:[a-z]+$/, key)
          tags.set(tag, [...(tags.get(tag) ?? []), key])
        }
        assert.deepStrictEqual([...tags.keys()].toSorted(), hostile.map(tagOf).toSorted())
        for (const name of hostile) {
          const own = tags.get(tagOf(name))!
          assert.include(own, `${prefix}${tagOf(name)}:x`, `the lock key of ${JSON.stringify(name)}`)
          // No other key mentions the tag: a name's keys all share it, and only its keys.
          assert.strictEqual(keys.filter((key) => key.startsWith(`${prefix}${tagOf(name)}:`)).length, own.length)
        }

        // Inspection returns the names exactly as given.
        yield* Checks.assertNamesComeBack(hostile, leases)

        // A waiter on each name is woken by the release's publication (its retry interval is an hour):
        // the published change carries the exact name.
        const waiters = yield* Checks.forkTokenWaiters(hostile, hourRetry)
        yield* eventually(
          Effect.flatMap(LockBackend.inspect(), ({ waiters: queued }) =>
            queued.length === hostile.length ? Effect.void : Effect.fail(new Error(`${queued.length} queued`))
          )
        )
        yield* Checks.assertEachWaiterWoken(hostile, leases, waiters)
      }).pipe(
        Effect.scoped,
        // A hostile owner id as well: it is stored in the grants and published to wake a waiter.
        Effect.provideService(LockConfig.LockDefaults, {
          ttl: Duration.seconds(30),
          retry: LockConfig.retryExponential(),
          ownerId: "hôst|:{x}🔒 12:3"
        }),
        Effect.provide(backendLayer(prefix, { url: server.url })),
        Effect.andThen(assertNothingLeft(prefix, server.url)),
        Effect.andThen(Effect.map(dbSize(server), (size) => assert.strictEqual(size, 0)))
      )
    }
  )

  it.live("bad names, TTLs and semaphore sizes are InvalidLockRequest, and nothing reaches the server", () => {
    const prefix = freshPrefix("bad")
    const invalid = Checks.invalidChecker(keysUnder(prefix))
    return withBackend(
      prefix,
      Effect.gen(function* () {
        yield* Checks.badNames(invalid)
        yield* invalid("name", Checks.lock("ok-\uDC00"))
        yield* invalid("name", Effect.scoped(Lock.tryScoped("")))
        yield* invalid("name", Effect.scoped(ReadWriteLock.read("\uDFFF")))
        yield* invalid("name", Effect.scoped(DistributedSemaphore.scoped("", { limit: 2 })))
        yield* Checks.badTtls(invalid)
        yield* Checks.badSizesAndDirectName(invalid)
        // The bounds themselves are fine.
        const edge = yield* Effect.scoped(Lock.tryScoped("x".repeat(1024)))
        assert.isTrue(Option.isSome(edge))
      })
    )
  })

  it.live("a prefix with `{` or `}`, or a bad command timeout, fails the layer with InvalidLockRequest", () =>
    Effect.gen(function* () {
      const base = freshPrefix("brace")
      for (const prefix of [`${base}{`, `${base}}`, `{${base}}`, `${base}\uD800`]) {
        assert.deepInclude(yield* build({ prefix }), { _tag: "InvalidLockRequest", field: "prefix" })
      }
      assert.deepInclude(yield* build({ prefix: base, commandTimeout: 0 }), {
        _tag: "InvalidLockRequest",
        field: "commandTimeout"
      })
      yield* assertNothingLeft(base)
      // Nothing was subscribed under any of them.
      for (const prefix of [`${base}{`, `${base}}`, `{${base}}`]) yield* assertNothingLeft(prefix)
    })
  )

  it.live(
    "double release, release after expiry and release of what is not held: typed errors or false, never another holder's grant",
    () => {
      const prefix = freshPrefix("release")
      return withBackend(
        prefix,
        Effect.gen(function* () {
          const backend = yield* LockBackend
          // Twice.
          yield* Checks.assertReleasedTwice("twice")

          // After expiry: no heartbeat, the TTL runs out on the server, and someone else takes the name.
          const expiring = yield* Lock.scoped("expiring", { ttl: "300 millis", heartbeat: false, onLost: "ignore" })
          const lost = yield* expiring.lost
          assert.deepInclude(lost, { _tag: "LockLost", reason: "expired", token: expiring.token })
          const next = yield* Lock.scoped("expiring", { timeout: "5 seconds" })
          assert.isTrue(next.token > expiring.token)
          assert.deepInclude(yield* failureOf(expiring.release), {
            _tag: "LockNotHeld",
            owner: expiring.owner,
            state: "lost"
          })
          // The stale owner's release (the lease's, and a direct one) left the new holder alone.
          assert.isFalse(yield* backend.release("expiring", expiring.owner))
          assert.deepStrictEqual(
            (yield* LockBackend.inspect("expiring")).holders.map((h) => [h.owner, h.token]),
            [[next.owner, next.token]]
          )
          assert.strictEqual(yield* backend.extend("expiring", expiring.owner, 1_000), "stolen")
          yield* next.release

          // Never held, by anyone: nothing to release, nothing written.
          assert.isFalse(yield* backend.release("never-held", "nobody/1"))
          assert.deepStrictEqual(yield* keysUnder(`${prefix}${tagOf("never-held")}`), [])
          // Held by someone else: an impostor's release changes nothing.
          const real = yield* Lock.scoped("someone-elses")
          assert.isFalse(yield* backend.release("someone-elses", "impostor/1"))
          assert.isFalse(yield* backend.release("someone-elses", `${real.owner}x`))
          assert.deepStrictEqual(
            (yield* LockBackend.inspect("someone-elses")).holders.map((h) => h.owner),
            [real.owner]
          )
          yield* real.release
          assert.deepInclude(yield* failureOf(real.extend()), { _tag: "LockNotHeld", state: "released" })
        })
      )
    }
  )

  it.live(
    "one name is a lock or a semaphore, with one limit, while in use: otherwise InvalidLockRequest (mode, limit)",
    () => {
      const prefix = freshPrefix("kind")
      return withBackend(
        prefix,
        Effect.gen(function* () {
          const held = yield* Lock.scoped("dual")
          const asSemaphore = yield* failureOf(Effect.scoped(DistributedSemaphore.scoped("dual", { limit: 2 })))
          assert.deepInclude(asSemaphore, { _tag: "InvalidLockRequest", field: "mode" })
          const trySemaphore = yield* failureOf(Effect.scoped(DistributedSemaphore.tryScoped("dual", { limit: 2 })))
          assert.deepInclude(trySemaphore, { _tag: "InvalidLockRequest", field: "mode" })
          // The refused request left nothing queued; the lock is untouched.
          assert.deepStrictEqual(
            yield* Effect.map(LockBackend.inspect("dual"), ({ holders, waiters }) => [
              holders.map((h) => h.owner),
              waiters.length
            ]),
            [[held.owner], 0]
          )
          // The read side of the same name is the same kind: it just waits.
          assert.isTrue(Option.isNone(yield* Effect.scoped(ReadWriteLock.tryRead("dual"))))
          yield* held.release

          // Free again: the name may become a semaphore.
          const permits = yield* DistributedSemaphore.scoped("dual", { limit: 3 })
          assert.deepInclude(yield* failureOf(Effect.scoped(Lock.scoped("dual"))), {
            _tag: "InvalidLockRequest",
            field: "mode"
          })
          assert.deepInclude(yield* failureOf(Effect.scoped(ReadWriteLock.read("dual"))), {
            _tag: "InvalidLockRequest",
            field: "mode"
          })
          const otherLimit = yield* failureOf(Effect.scoped(DistributedSemaphore.scoped("dual", { limit: 4 })))
          assert.deepInclude(otherLimit, { _tag: "InvalidLockRequest", field: "limit" })
          assert.include((otherLimit as { reason: string }).reason, "3")
          // The agreed limit still works.
          const more = yield* DistributedSemaphore.scoped("dual", { limit: 3, permits: 2 })
          yield* more.release

          yield* permits.release
          // Nobody holds or waits: a lock again.
          const again = yield* Lock.scoped("dual")
          yield* again.release
        })
      )
    }
  )
})

describe("RedisBackend: configuration (LOCK_PROVIDER=redis)", () => {
  it.live("one URL: the Redis backend, under LOCK_REDIS_PREFIX", () => {
    const prefix = freshPrefix("env")
    const name = `configured-${prefix}`
    return Effect.gen(function* () {
      const backend = yield* LockBackend
      assert.strictEqual(backend.kind, "redis")
      assert.strictEqual(backend.guarantees, RedisBackend.guarantees)
      const lease = yield* Lock.scoped(name)
      const keys = yield* keysUnder(prefix)
      assert.include(keys, `${prefix}${tagOf(name)}:x`)
      assert.isTrue(
        keys.every((key) => key.startsWith(`${prefix}${tagOf(name)}:`)),
        keys.join()
      )
      // Not under the default prefix.
      assert.deepStrictEqual(yield* keysUnder(`${RedisBackend.defaultPrefix}${tagOf(name)}`), [])
      yield* Checks.assertSoleHolderThenRelease(name, lease)
    }).pipe(
      Effect.scoped,
      Effect.provide(fromEnv({ LOCK_PROVIDER: "redis", LOCK_REDIS_URL: url, LOCK_REDIS_PREFIX: prefix })),
      Effect.andThen(assertNothingLeft(prefix))
    )
  })

  it.live("three URLs: Redlock on the three servers, under LOCK_REDIS_PREFIX", () => {
    const prefix = freshPrefix("env-redlock")
    return Effect.gen(function* () {
      const backend = yield* LockBackend
      assert.strictEqual(backend.kind, "redlock")
      assert.strictEqual(backend.guarantees.fencing, "best-effort")
      const lease = yield* Lock.scoped("configured")
      for (const target of redlockUrls) {
        assert.include(yield* keysUnder(prefix, target), `${prefix}${tagOf("configured")}:x`, target)
      }
      yield* lease.release
      for (const target of redlockUrls) assert.deepStrictEqual(yield* keysUnder(prefix, target), [])
    }).pipe(
      Effect.scoped,
      Effect.provide(
        fromEnv({
          LOCK_PROVIDER: "redis",
          // Spaces and an empty entry around the commas are ignored.
          LOCK_REDIS_URL: ` ${redlockUrls.join(" , ")} ,`,
          LOCK_REDIS_PREFIX: prefix,
          LOCK_REDLOCK_QUORUM: "3"
        })
      ),
      Effect.andThen(Effect.forEach(redlockUrls, (target) => assertNothingLeft(prefix, target)))
    )
  })

  it.live("bad settings: two URLs, a quorum that is no majority, a bad drift factor, a braced prefix, no URL", () =>
    Effect.gen(function* () {
      const prefix = freshPrefix("env-bad")
      const base = { LOCK_PROVIDER: "redis", LOCK_REDIS_PREFIX: prefix }
      const two = yield* buildFailure({ ...base, LOCK_REDIS_URL: `${redlockUrls[0]},${redlockUrls[1]}` })
      assert.deepInclude(two, { _tag: "InvalidLockRequest", field: "LOCK_REDIS_URL" })
      const three = redlockUrls.join(",")
      assert.deepInclude(yield* buildFailure({ ...base, LOCK_REDIS_URL: three, LOCK_REDLOCK_QUORUM: "1" }), {
        _tag: "InvalidLockRequest",
        field: "quorum"
      })
      assert.deepInclude(yield* buildFailure({ ...base, LOCK_REDIS_URL: three, LOCK_REDLOCK_QUORUM: "4" }), {
        _tag: "InvalidLockRequest",
        field: "quorum"
      })
      assert.deepInclude(yield* buildFailure({ ...base, LOCK_REDIS_URL: three, LOCK_REDLOCK_DRIFT_FACTOR: "0.5" }), {
        _tag: "InvalidLockRequest",
        field: "driftFactor"
      })
      assert.deepInclude(yield* buildFailure({ ...base, LOCK_REDIS_URL: url, LOCK_REDIS_PREFIX: `${prefix}{x}` }), {
        _tag: "InvalidLockRequest",
        field: "prefix"
      })
      assert.deepInclude(yield* buildFailure({ ...base, LOCK_REDIS_URL: " , " }), {
        _tag: "InvalidLockRequest",
        field: "LOCK_REDIS_URL"
      })
      assert.strictEqual((yield* buildFailure({ LOCK_PROVIDER: "redis" }))._tag, "ConfigError")
      // A server that is not there.
      const dead = yield* buildFailure({ ...base, LOCK_REDIS_URL: "redis://127.0.0.1:1" })
      assert.strictEqual(dead._tag, "LockBackendUnavailable")
      for (const target of [url, ...redlockUrls]) yield* assertNothingLeft(prefix, target)
    })
  )
})
