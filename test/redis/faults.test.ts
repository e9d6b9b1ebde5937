/**
 * Fault tests of the Redis backend against real `redis-server` processes, no
 * mocks: the holder's connection killed on the server (`CLIENT KILL`), with
 * and without a way back to the server (the TCP fault proxy), the server
 * frozen with SIGSTOP for longer than the TTL, extensions that never reach
 * the server (`FaultyBackend`), a restart without persistence between two
 * grants, and interruption of waiters, holders and acquisitions at every
 * backend call.
 *
 * The server faults run on private servers (`RedisServer`), stopped with the
 * test (and in `afterAll` if a test left one behind); the interruption tests
 * run on the shared server. Every test uses its own key prefix and ends, once
 * its layers are closed, with the server-side leak check: no key under the
 * prefix, no subscriber on its change channel. TTLs are short and the tests
 * wait on signals and on the servers' state, not on fixed sleeps, except for
 * the one duration that is the scenario itself (the SIGSTOP).
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect, Exit, Fiber, Layer, Option, References, Schedule, type Scope } from "effect"
import * as NodeRedis from "@effect/platform-node/NodeRedis"
import { Lock, LockBackend } from "../../src/index.ts"
import { RedisBackend } from "../../src/redis/index.ts"
import { FaultyBackend, FencedResource } from "../../src/testing/index.ts"
import { holdInFiber, insideWithLock, lockLostOf, lossOf, watchLastGood } from "../support/leases.ts"
import * as RedisServer from "../support/RedisServer.ts"
import * as TcpProxy from "../support/TcpProxy.ts"
import { assertNothingLeft, backendLayer, eventually, freshPrefix, keysUnder, send, subscribersOf } from "./harness.ts"

/** Every private server started here, stopped after the file in case a test did not get to it. */
const started: Array<RedisServer.RedisServer> = []

afterAll(async () => {
  await Promise.all(started.map((server) => server.stop()))
})

/** A private server for the test's scope: stopped when the test ends. */
const privateServer = Effect.acquireRelease(
  Effect.promise(async () => {
    const server = await RedisServer.start()
    started.push(server)
    return server
  }),
  (server) => Effect.promise(() => server.stop())
)

/** A fault proxy to `server`, closed with the scope, and the URL that goes through it. */
const proxyTo = (server: RedisServer.RedisServer) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.promise(() => TcpProxy.start({ targetHost: server.host, targetPort: server.port })),
      (proxy) => Effect.promise(() => proxy.close())
    ),
    (proxy) => ({ proxy, url: `redis://${proxy.host}:${proxy.port}` })
  )

/** One raw command on a private server, on a fresh connection of its own (not the backend's client). */
const command = (server: RedisServer.RedisServer, ...args: ReadonlyArray<string>) =>
  Effect.promise(() => server.command(...args))

/** The Redis key of one part of a name (see common.lua): `x` is the exclusive holder, `c` the token counter. */
const keyOf = (prefix: string, name: string, part: "x" | "c" | "q") => `${prefix}{${encodeURIComponent(name)}}:${part}`

/** The start of the `x` key's value while `owner` holds the name with `token`. */
const holderValue = (owner: string, token: bigint) => `${Buffer.byteLength(owner)}:${owner}|${token}|`

/** The real-time deadline of every Redis command in these tests: short, so that faults show quickly. */
const commandTimeout = Duration.millis(300)

/** A loaded machine may run a timer this much late. */
const marginMillis = 300

/** The backend on its own node-redis client named `clientName` (so `CLIENT LIST` tells its connections apart). */
const namedBackend = (prefix: string, url: string, clientName: string): Layer.Layer<LockBackend, unknown> =>
  RedisBackend.layer({ prefix, commandTimeout }).pipe(Layer.provide(NodeRedis.layer({ url, name: clientName })))

/** A connection of `CLIENT LIST`. */
interface ClientEntry {
  readonly id: string
  readonly name: string
  readonly flags: string
  readonly sub: number
  readonly cmd: string
}

/** The connections of the client named `clientName`, without its subscriber (`flags=P`, `sub=1`). */
const commandConnections = (server: RedisServer.RedisServer, clientName: string) =>
  Effect.map(command(server, "CLIENT", "LIST"), (list): ReadonlyArray<ClientEntry> =>
    list
      .split("\n")
      .filter((line) => line.trim().length > 0)
      .map((line) => {
        const fields = new Map<string, string>()
        for (const field of line.trim().split(" ")) {
          const eq = field.indexOf("=")
          if (eq > 0) fields.set(field.slice(0, eq), field.slice(eq + 1))
        }
        return {
          id: fields.get("id") ?? "",
          name: fields.get("name") ?? "",
          flags: fields.get("flags") ?? "",
          sub: Number(fields.get("sub") ?? "0"),
          cmd: fields.get("cmd") ?? ""
        }
      })
      .filter((entry) => entry.name === clientName && entry.sub === 0 && !entry.flags.includes("P"))
  )

/** Fails (for `eventually`) until `condition` holds. */
const check = (condition: boolean, message: string) => (condition ? Effect.void : Effect.fail(new Error(message)))

/** The keys under `prefix`, failing while there are any (for `eventually`). */
const keysUnderOrFail = (prefix: string) =>
  Effect.flatMap(keysUnder(prefix), (keys) =>
    keys.length === 0 ? Effect.succeed(keys) : Effect.fail(new Error(`keys left: ${keys.join(", ")}`))
  )

/** The client libraries log every dropped connection as a warning: expected here, so kept out of the output. */
const quiet = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, References.MinimumLogLevel, "Error")

const millis = (input: Duration.Input) => Duration.toMillis(Duration.fromInputUnsafe(input))

/** Runs `body` on a fresh backend under a fresh prefix, then checks the server once the layer closed. */
const onShared = (label: string, body: (prefix: string) => Effect.Effect<void, unknown, LockBackend | Scope.Scope>) => {
  const prefix = freshPrefix(label)
  return body(prefix).pipe(
    Effect.scoped,
    Effect.provide(backendLayer(prefix, { commandTimeout: "2 seconds" })),
    Effect.andThen(assertNothingLeft(prefix))
  )
}

/** Waits until `name` has exactly `count` waiters registered on the server. */
const waitersReach = (name: string, count: number) =>
  eventually(
    Effect.flatMap(LockBackend.inspect(name), (inspection) =>
      check(inspection.waiters.length === count, `${inspection.waiters.length} waiters`)
    )
  )

describe("redis faults", () => {
  describe("CLIENT KILL of the holder's connection", () => {
    it.live(
      "the client reconnects at once: the next extension succeeds within ttl/2, the lease survives on the same key and a rival gets nothing",
      () => {
        const prefix = freshPrefix("kill")
        const clientName = `el-holder-${prefix.split(":")[1]}`
        const name = "job"
        const ttl = Duration.millis(1_500)
        const ttlMillis = millis(ttl)
        return Effect.gen(function* () {
          const server = yield* privateServer
          yield* Effect.gen(function* () {
            const lease = yield* Lock.scoped(name, { ttl, onLost: "ignore" })
            const loss = yield* Effect.forkChild(lossOf(lease))
            const xKey = keyOf(prefix, name, "x")
            assert.isTrue((yield* command(server, "GET", xKey)).startsWith(holderValue(lease.owner, lease.token)))

            // One command connection (the one the grant went over) and one subscriber, both named.
            const before = yield* commandConnections(server, clientName)
            assert.strictEqual(before.length, 1, "one command connection of the holder's client")
            const killed = before[0]!.id
            assert.strictEqual(yield* command(server, "CLIENT", "KILL", "ID", killed), ":1")
            const killedAt = yield* Clock.currentTimeMillis

            // The client is back on a new connection...
            const after = yield* eventually(
              Effect.flatMap(commandConnections(server, clientName), (entries) =>
                Effect.as(
                  check(entries.length === 1 && entries[0]!.id !== killed, "no new connection yet"),
                  entries[0]!
                )
              )
            )
            assert.notStrictEqual(after.id, killed)
            // ...and an extension sent after the kill succeeded: the lease was known good after it.
            yield* eventually(
              Effect.flatMap(lease.state, (state) =>
                check(state._tag === "Held" && state.expiresAt - ttlMillis > killedAt, "no extension after the kill")
              ),
              ttlMillis
            )
            // And it keeps being extended: still held a full TTL after the kill.
            yield* Effect.sleep(Duration.millis(Math.max(0, killedAt + ttlMillis - (yield* Clock.currentTimeMillis))))
            const state = yield* lease.state
            assert.strictEqual(state._tag, "Held")
            assert.isUndefined(loss.pollUnsafe(), "the lease was never reported lost")
            // The same key, the same owner and token, alive on the server.
            assert.isTrue((yield* command(server, "GET", xKey)).startsWith(holderValue(lease.owner, lease.token)))
            const pttl = Number((yield* command(server, "PTTL", xKey)).slice(1))
            assert.isAbove(pttl, 0)
            assert.isAtMost(pttl, ttlMillis)
            // Only one connection was ever killed: the reconnected one is still the only one.
            assert.deepStrictEqual(
              (yield* commandConnections(server, clientName)).map((entry) => entry.id),
              [after.id]
            )

            // Another process (another client) cannot take the name.
            const rival = yield* Effect.scoped(Lock.tryScoped(name, { ttl })).pipe(
              Effect.provide(backendLayer(prefix, { url: server.url, commandTimeout }))
            )
            assert.isTrue(Option.isNone(rival), "a rival got the name while the holder's lease survived")
            assert.isUndefined(loss.pollUnsafe())

            yield* lease.release
            assert.strictEqual(yield* command(server, "GET", xKey), "$-1")
          }).pipe(Effect.scoped, Effect.provide(namedBackend(prefix, server.url, clientName)))
          yield* assertNothingLeft(prefix, server.url)
        }).pipe(quiet)
      }
    )

    it.live(
      "the connection killed and the server unreachable: the holder loses the lease (unreachable) within ttl/2, while the key still lives on the server",
      () => {
        const prefix = freshPrefix("cut")
        const clientName = `el-holder-${prefix.split(":")[1]}`
        const name = "job"
        const ttl = Duration.millis(1_200)
        const ttlMillis = millis(ttl)
        return Effect.gen(function* () {
          const server = yield* privateServer
          const { proxy, url: proxied } = yield* proxyTo(server)
          const xKey = keyOf(prefix, name, "x")
          yield* Effect.gen(function* () {
            const { holder, lease } = yield* holdInFiber(name, ttl)
            const { seen, fiber: watcher } = yield* watchLastGood(lease, ttlMillis)
            // Count from an extension, not from the grant.
            yield* eventually(
              Effect.suspend(() => check(seen.extensions >= 1, "no extension yet")),
              ttlMillis
            )
            const loss = yield* Effect.forkChild(lossOf(lease))
            const connections = yield* commandConnections(server, clientName)
            assert.strictEqual(connections.length, 1)

            // The link goes dark, the server kills the holder's connection, and the client's side of
            // every connection is reset: the client reconnects, but only into the blackhole.
            proxy.mode("blackhole")
            assert.strictEqual(yield* command(server, "CLIENT", "KILL", "ID", connections[0]!.id), ":1")
            proxy.reset()
            const cutAt = yield* Clock.currentTimeMillis

            const { error, at } = yield* Fiber.join(loss)
            // At the loss, the server still holds the key for the holder, and the client has no
            // connection to it.
            const value = yield* command(server, "GET", xKey)
            const pttl = Number((yield* command(server, "PTTL", xKey)).slice(1))
            const serverExpiresAt = (yield* Clock.currentTimeMillis) + pttl
            yield* Fiber.join(watcher)
            assert.deepInclude(error, { _tag: "LockLost", name, token: lease.token, reason: "unreachable" })
            assert.isTrue(value.startsWith(holderValue(lease.owner, lease.token)), `the key is ${value}`)
            assert.isAbove(pttl, 0, "the key had already expired on the server when the loss was reported")
            assert.isBelow(at, serverExpiresAt, "lost before the server's expiry")
            assert.isAtMost(seen.lastGood, cutAt)
            assert.isAtMost(
              at - seen.lastGood,
              ttlMillis / 2 + marginMillis,
              `lost ${at - seen.lastGood} ms after the last good moment (cut ${cutAt - seen.lastGood} ms after it)`
            )
            // The client did try again: it is connected to the proxy, which forwards nothing.
            yield* eventually(Effect.suspend(() => check(proxy.connections() > 0, "the client did not reconnect")))
            assert.deepStrictEqual(yield* commandConnections(server, clientName), [])
            // The critical section was stopped with the loss.
            assert.deepInclude(lockLostOf(yield* Fiber.await(holder)), { _tag: "LockLost", reason: "unreachable" })

            // The key expires on the server by itself; then another client gets the name, with a
            // greater token.
            yield* eventually(
              Effect.flatMap(command(server, "GET", xKey), (found) => check(found === "$-1", "not expired yet")),
              ttlMillis
            )
            const expiredBy = yield* Clock.currentTimeMillis
            assert.isAtLeast(expiredBy, at)
            const rivalToken = yield* Effect.scoped(
              Effect.map(Lock.tryScoped(name, { ttl }), (rival) => Option.getOrThrow(rival).token)
            ).pipe(Effect.provide(backendLayer(prefix, { url: server.url, commandTimeout })))
            assert.isTrue(rivalToken > lease.token)

            // Heal (drop the dark connections first, so that no reply is ever matched to the wrong
            // request): the client reconnects and works again. Wait for that before closing the
            // layer: node-redis's close() waits for the commands still queued, and never returns
            // when called while the client is disconnected (see the report).
            proxy.reset()
            proxy.mode("pass")
            const healed = yield* eventually(LockBackend.inspect(name), 5_000)
            assert.deepStrictEqual(healed, { holders: [], waiters: [] })
            assert.strictEqual((yield* commandConnections(server, clientName)).length, 1)
          }).pipe(Effect.scoped, Effect.provide(namedBackend(prefix, proxied, clientName)))
          yield* assertNothingLeft(prefix, server.url)
        }).pipe(quiet)
      }
    )
  })

  it.live(
    "SIGSTOP for 1.5 x TTL: the holder loses the lease before its expiry; after SIGCONT a rival acquires and the fenced resource rejects the old holder's late write",
    () => {
      const prefix = freshPrefix("stop")
      const name = "job"
      const ttl = Duration.millis(1_000)
      const ttlMillis = millis(ttl)
      return Effect.gen(function* () {
        const server = yield* privateServer
        const resource = yield* FencedResource.make()
        const xKey = keyOf(prefix, name, "x")
        yield* Effect.gen(function* () {
          const { holder, lease } = yield* holdInFiber(name, ttl)
          assert.isTrue(yield* resource.write(lease.token), "the holder's write while it holds")
          const { seen, fiber: watcher } = yield* watchLastGood(lease, ttlMillis)
          yield* eventually(
            Effect.suspend(() => check(seen.extensions >= 1, "no extension yet")),
            ttlMillis
          )
          const loss = yield* Effect.forkChild(lossOf(lease))

          server.pause()
          const pausedAt = yield* Clock.currentTimeMillis
          yield* Effect.gen(function* () {
            const { error, at } = yield* Fiber.join(loss)
            yield* Fiber.join(watcher)
            assert.deepInclude(error, { _tag: "LockLost", name, token: lease.token, reason: "unreachable" })
            assert.isAtMost(
              at - seen.lastGood,
              ttlMillis / 2 + marginMillis,
              `lost ${at - seen.lastGood} ms after the last good moment (paused ${pausedAt - seen.lastGood} ms after it)`
            )
            // The server could not expire the key before lastGood + ttl: it ran the last extension
            // no earlier than it was sent.
            assert.isBelow(at, seen.lastGood + ttlMillis, "lost before the key could expire on the server")
            assert.deepInclude(lockLostOf(yield* Fiber.await(holder)), { _tag: "LockLost", reason: "unreachable" })
            // The scenario's duration: frozen for 1.5 x TTL in all.
            const left = pausedAt + 1.5 * ttlMillis - (yield* Clock.currentTimeMillis)
            yield* Effect.sleep(Duration.millis(Math.max(0, left)))
          }).pipe(Effect.ensuring(Effect.sync(() => server.resume())))

          // Thawed: the key expired meanwhile, and what the old client had queued (extensions,
          // its release) did not bring it back.
          assert.strictEqual(yield* command(server, "GET", xKey), "$-1")

          // Another process takes the name and writes with its newer token...
          const rivalToken = yield* Effect.gen(function* () {
            const rival = yield* Lock.scoped(name, { ttl, timeout: "5 seconds" })
            assert.isTrue(rival.token > lease.token)
            yield* resource.use(rival.token, Effect.void)
            const token = rival.token
            yield* rival.release
            return token
          }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, { url: server.url, commandTimeout })))

          // ...and the old holder's late write is refused.
          const stale = yield* Effect.flip(resource.use(lease.token, Effect.void))
          assert.deepInclude(stale, { _tag: "StaleToken", token: lease.token, highest: rivalToken })
          const report = yield* resource.report
          assert.strictEqual(report.accepted, 2)
          assert.deepStrictEqual(report.rejected, [{ token: lease.token, highest: rivalToken }])
          assert.deepStrictEqual(report.overlaps, [])
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, { url: server.url, commandTimeout })))
        yield* assertNothingLeft(prefix, server.url)
      }).pipe(quiet)
    }
  )

  it.live(
    "extensions dropped: the key expires at TTL on the server, a rival acquires with a greater token, and the old holder's release leaves the rival's key alone",
    () => {
      const prefix = freshPrefix("drop")
      const name = "job"
      const ttl = Duration.millis(800)
      const ttlMillis = millis(ttl)
      const xKey = keyOf(prefix, name, "x")
      return Effect.gen(function* () {
        const inner = yield* LockBackend
        const { backend, control } = yield* FaultyBackend.make(inner)
        yield* control.dropExtensions(true)
        const sentBefore = yield* Clock.currentTimeMillis
        const lease = yield* Lock.scoped(name, { ttl, onLost: "ignore" }).pipe(
          Effect.provideService(LockBackend, backend)
        )
        assert.isTrue(String(yield* send("GET", [xKey])).startsWith(holderValue(lease.owner, lease.token)))

        // Nothing reaches the server: the key goes at its TTL, while the holder still believes it holds.
        yield* eventually(
          Effect.flatMap(send<number>("EXISTS", [xKey]), (exists) => check(Number(exists) === 0, "still there")),
          ttlMillis * 3
        )
        const goneAt = yield* Clock.currentTimeMillis
        assert.isAtLeast(goneAt - sentBefore, ttlMillis - 5, "the key went before its TTL")
        assert.isAtMost(goneAt - lease.acquiredAt, ttlMillis + marginMillis, "the key outlived its TTL")
        assert.isAtLeast((yield* control.calls).extend, 1, "heartbeats were made (and dropped)")
        assert.strictEqual((yield* lease.state)._tag, "Held")

        yield* Effect.gen(function* () {
          const rival = Option.getOrThrow(yield* Lock.tryScoped(name, { ttl: "10 seconds" }))
          assert.isTrue(rival.token > lease.token, `rival ${rival.token} after ${lease.token}`)

          // The old holder lets go: a compare-and-delete on its own owner, which is gone.
          const releasesBefore = (yield* control.calls).release
          yield* lease.release
          assert.strictEqual((yield* control.calls).release, releasesBefore + 1, "the release reached the store")
          assert.isFalse(yield* inner.release(name, lease.owner), "nothing of the old owner to release")

          const value = yield* send<string>("GET", [xKey])
          assert.isTrue(String(value).startsWith(holderValue(rival.owner, rival.token)), `the key is ${value}`)
          const { holders } = yield* LockBackend.inspect(name)
          assert.deepStrictEqual(
            holders.map((h) => [h.owner, h.token]),
            [[rival.owner, rival.token]]
          )
          yield* rival.release
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, { commandTimeout })))
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(prefix, { commandTimeout })),
        Effect.andThen(assertNothingLeft(prefix))
      )
    }
  )

  it.live(
    "a restart without persistence between two grants: the counter is gone, yet the second token is strictly greater; the first holder learns it lost the name",
    () => {
      const prefix = freshPrefix("restart")
      const name = "job"
      const cKey = keyOf(prefix, name, "c")
      return Effect.gen(function* () {
        const server = yield* privateServer
        yield* Effect.gen(function* () {
          // No heartbeat: only the explicit extension below talks to the server for this lease.
          const first = yield* Lock.scoped(name, { ttl: "10 seconds", heartbeat: false, onLost: "ignore" })
          assert.strictEqual(yield* command(server, "EXISTS", cKey), ":1")
          assert.strictEqual(yield* command(server, "GET", cKey), first.token.toString())

          yield* Effect.promise(() => server.restart())
          assert.strictEqual(yield* command(server, "EXISTS", cKey), ":0", "the counter survived the restart")
          assert.strictEqual(yield* command(server, "DBSIZE"), ":0", "the restart lost all data")

          const second = yield* Effect.gen(function* () {
            const lease = Option.getOrThrow(yield* Lock.tryScoped(name, { ttl: "10 seconds" }))
            assert.isTrue(lease.token > first.token, `second token ${lease.token} after ${first.token}`)
            assert.strictEqual(yield* command(server, "GET", cKey), lease.token.toString())

            // The first holder's client reconnects; its extension finds the name taken.
            const lost = yield* Effect.flip(
              first.extend().pipe(
                Effect.retry({
                  while: (error) => error._tag === "LockBackendUnavailable",
                  schedule: Schedule.spaced("50 millis"),
                  times: 100
                })
              )
            )
            assert.deepInclude(lost, { _tag: "LockLost", token: first.token, reason: "stolen" })
            assert.deepInclude(yield* first.state, { _tag: "Lost", reason: "stolen" })
            const token = lease.token
            yield* lease.release
            return token
          }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, { url: server.url, commandTimeout })))
          assert.isTrue(second > first.token)

          const released = yield* Effect.flip(first.release)
          assert.deepInclude(released, { _tag: "LockNotHeld", state: "lost" })
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, { url: server.url, commandTimeout })))
        yield* assertNothingLeft(prefix, server.url)
      }).pipe(quiet)
    }
  )

  describe("interruption (shared server)", () => {
    it.live(
      "waiters interrupted while waiting leave no registration; the holder and the last waiter are untouched",
      () =>
        onShared("waiters", (prefix) =>
          Effect.gen(function* () {
            const name = "job"
            assert.strictEqual(yield* subscribersOf(prefix), 1, "one subscription per backend")
            const holder = yield* Lock.scoped(name, { ttl: "5 seconds", onLost: "ignore" })
            const waiters = yield* Effect.forEach([0, 1, 2], () =>
              Effect.forkChild(Lock.withLock(name, { ttl: "5 seconds" })(Effect.succeed("ran")))
            )
            yield* waitersReach(name, 3)
            yield* Fiber.interrupt(waiters[0]!)
            yield* Fiber.interrupt(waiters[2]!)
            for (const fiber of [waiters[0]!, waiters[2]!]) assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(fiber)))
            // Withdrawn from the server's queue when the interruption returns.
            const inspection = yield* LockBackend.inspect(name)
            assert.strictEqual(inspection.waiters.length, 1)
            assert.deepStrictEqual(
              inspection.holders.map((h) => h.owner),
              [holder.owner]
            )
            assert.strictEqual(yield* send("ZCARD", [keyOf(prefix, name, "q")]), 1)
            assert.strictEqual((yield* holder.state)._tag, "Held")

            yield* holder.release
            assert.strictEqual(yield* Fiber.join(waiters[1]!), "ran")
            assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
            assert.deepStrictEqual(yield* eventually(keysUnderOrFail(prefix)), [])
          })
        )
    )

    it.live("a holder interrupted inside withLock has deleted its key when the interruption returns", () =>
      onShared("holder", (prefix) =>
        Effect.gen(function* () {
          const name = "job"
          const xKey = keyOf(prefix, name, "x")
          const inside = yield* insideWithLock(name, { ttl: "5 seconds" })
          assert.isNotNull(yield* send("GET", [xKey]))
          yield* inside.interrupt
          assert.isNull(yield* send("GET", [xKey]), "the key outlived the interruption")
          assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))), "the name is free at once")
        })
      )
    )

    it.live("acquisitions interrupted at random moments, contended or not, leave nothing on the server", () =>
      onShared("churn", (prefix) =>
        Effect.gen(function* () {
          const name = "job"
          const delays: Array<number> = []
          for (let i = 0; i < 30; i++) {
            // Before the grant, during it, while holding, or while waiting behind the other fiber.
            const fibers = yield* Effect.forEach([0, 1], () =>
              Effect.forkChild(Lock.withLock(name, { ttl: "5 seconds" })(Effect.yieldNow))
            )
            const delay = Math.floor(Math.random() * 12)
            delays.push(delay)
            yield* Effect.sleep(Duration.millis(delay))
            yield* Fiber.interrupt(fibers[i % 2]!)
            yield* Fiber.await(fibers[1 - (i % 2)]!)
          }
          assert.deepStrictEqual(
            yield* LockBackend.inspect(name),
            { holders: [], waiters: [] },
            `delays ${delays.join(",")}`
          )
          assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))), "the name still works")
          assert.deepStrictEqual(yield* eventually(keysUnderOrFail(prefix)), [])
        })
      )
    )

    it.live(
      "an acquisition interrupted before or after each of its backend calls (first attempt, subscribe, attempt after subscribing) leaves no grant and no registration",
      () =>
        onShared("points", (prefix) =>
          Effect.gen(function* () {
            const name = "job"
            const inner = yield* LockBackend
            const points: Array<{
              readonly contended: boolean
              readonly index: number
              readonly phase: string
              readonly operation: FaultyBackend.Operation
            }> = []
            for (const contended of [false, true]) {
              // Uncontended: one call (the granting attempt). Contended: attempt, subscribe, attempt.
              for (let index = 0; index < (contended ? 3 : 1); index++) {
                const operation = index === 1 ? "subscribe" : "tryAcquire"
                for (const phase of ["before", "after"] as const) points.push({ contended, index, phase, operation })
              }
            }
            for (const point of points) {
              const where = `${point.contended ? "contended" : "free"} call ${point.index} ${point.phase}`
              yield* Effect.scoped(
                Effect.gen(function* () {
                  const blocker = point.contended
                    ? yield* Lock.scoped(name, { ttl: "5 seconds", onLost: "ignore" })
                    : undefined
                  const { backend, control } = yield* FaultyBackend.make(inner)
                  const reached: { operation?: FaultyBackend.Operation } = {}
                  yield* control.setHook((call) =>
                    call.index === point.index && call.phase === point.phase
                      ? Effect.andThen(
                          Effect.sync(() => (reached.operation = call.operation)),
                          Effect.interrupt
                        )
                      : Effect.void
                  )
                  const fiber = yield* Effect.forkChild(
                    Lock.withLock(name, { ttl: "5 seconds" })(Effect.succeed("ran")).pipe(
                      Effect.provideService(LockBackend, backend)
                    )
                  )
                  const exit = yield* Fiber.await(fiber)
                  assert.strictEqual(reached.operation, point.operation, `${where}: the point was reached`)
                  assert.isTrue(Exit.hasInterrupts(exit), `${where}: interrupted`)
                  const { holders, waiters } = yield* inner.inspect(name)
                  assert.deepStrictEqual(waiters, [], `${where}: a waiter registration was left`)
                  assert.deepStrictEqual(
                    holders.map((h) => h.owner),
                    blocker === undefined ? [] : [blocker.owner],
                    `${where}: holders`
                  )
                  if (blocker !== undefined) yield* blocker.release
                })
              )
            }
            assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))), "the name still works")
            assert.deepStrictEqual(yield* eventually(keysUnderOrFail(prefix)), [])
          })
        )
    )
  })
})
