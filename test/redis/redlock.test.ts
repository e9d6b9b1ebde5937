/**
 * Fault tests of the Redlock backend on five private `redis-server`
 * processes, no mocks: instances killed (SIGKILL), paused (SIGSTOP) or
 * stalled (`DEBUG SLEEP`), a slow link and a partition through the TCP fault
 * proxy, and a restart without persistence. Each test reads the instances'
 * keys directly to check what a grant left where: a majority grants, a
 * minority cannot, a grant slower than its validity is undone everywhere, the
 * token is the highest of the instances' tokens and is written back to every
 * granting instance. A negative control shows what Redlock does not promise:
 * after a restart of a majority-making instance, two clients hold the lock at
 * once. A test marked `fails` pins down a known bug (an acquisition that
 * times out in the middle of an attempt can leave a grant behind on the
 * instances that were unreachable): it fails while the bug is there.
 *
 * Every client layer is opened by `open`, which closes it only once the
 * faults are healed (paused instances resumed, killed ones restarted, proxies
 * back to pass) and the layer has been granted a probe lock on all five
 * instances again: closing a client waits for the replies to what it sent,
 * which a paused or partitioned instance holds up. The close is also
 * watched: a close that hangs fails the test instead of the run.
 *
 * After every test: no key under the test's prefix and no subscriber of its
 * change channel on any of the five instances.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Option, References, Schedule, Scope } from "effect"
import { afterAll, afterEach } from "vitest"
import {
  InvalidLockRequest,
  Lock,
  LockBackend,
  type LockBackendShape,
  LockBackendUnavailable,
  LockLost,
  LockTimeout
} from "../../src/index.ts"
import type { RedlockBackend } from "../../src/redis/index.ts"
import { FencedResource } from "../../src/testing/index.ts"
import * as RedisServer from "../support/RedisServer.ts"
import * as TcpProxy from "../support/TcpProxy.ts"
import { assertNothingLeft, eventually, freshPrefix, keysUnder, redlockLayer } from "./harness.ts"

const servers = await RedisServer.startMany(5)
const urls = servers.map((server) => server.url)
/** One proxy per server (in pass mode unless a test says otherwise), and the URLs through them. */
const proxies = await Promise.all(
  servers.map((server) => TcpProxy.start({ targetHost: server.host, targetPort: server.port }))
)
const proxied = proxies.map((proxy) => `redis://${proxy.host}:${proxy.port}`)
const all = [0, 1, 2, 3, 4] as const

afterAll(async () => {
  await Promise.all(proxies.map((proxy) => proxy.close()))
  await Promise.all(servers.map((server) => server.stop()))
})

type Options = Omit<RedlockBackend.Options, "prefix" | "instances">

/**
 * Per-instance and command deadlines far above a loaded machine's latency
 * (the defaults, 50 ms and 2 s, are for production), for the tests whose
 * subject is not the deadlines.
 */
const base: Options = { perInstanceTimeout: "250 millis", commandTimeout: "500 millis" }

// ---------------------------------------------------------------------------
// Faults, healed by every layer's close and after every test.

const paused = new Set<number>()
const killed = new Set<number>()

const pause = (i: number) =>
  Effect.sync(() => {
    servers[i]!.pause()
    paused.add(i)
  })

const kill = (i: number) =>
  Effect.promise(async () => {
    killed.add(i)
    await servers[i]!.kill()
  })

/** Resumes the paused instances, restarts the killed ones (empty), and puts every proxy back to pass. */
const heal = Effect.promise(async () => {
  for (const i of paused) servers[i]!.resume()
  paused.clear()
  const down = [...killed]
  killed.clear()
  await Promise.all(down.map((i) => servers[i]!.restart()))
  for (const proxy of proxies) {
    const blackholed = proxy.currentMode() === "blackhole"
    proxy.mode("pass")
    // What was sent during the blackhole is lost for good: the clients must reconnect.
    if (blackholed) proxy.reset()
  }
})

let current: string | undefined

/** The prefix of the running test, checked on every instance after it. */
const fresh = (label: string) => (current = freshPrefix(`redlock-${label}`))

afterEach(() =>
  Effect.runPromise(
    Effect.gen(function* () {
      yield* heal
      const prefix = current
      current = undefined
      if (prefix !== undefined) yield* Effect.forEach(urls, (url) => assertNothingLeft(prefix, url), { discard: true })
    })
  )
)

// ---------------------------------------------------------------------------
// What the instances hold.

const keyOf = (prefix: string, name: string, part: string) => `${prefix}{${encodeURIComponent(name)}}:${part}`

/** The owner holding `name` exclusively on instance `i` (`<#owner>:<owner>|...`), or undefined. */
const holderOn = (i: number, prefix: string, name: string) =>
  Effect.map(
    Effect.promise(() => servers[i]!.command("GET", keyOf(prefix, name, "x"))),
    (reply): string | undefined => {
      if (reply === "$-1") return undefined
      const colon = reply.indexOf(":")
      return reply.slice(colon + 1, colon + 1 + Number(reply.slice(0, colon)))
    }
  )

/** The holders of `name` on the given instances, in order. */
const holdersOn = (indices: ReadonlyArray<number>, prefix: string, name: string) =>
  Effect.forEach(indices, (i) => holderOn(i, prefix, name))

/** The fencing counter of `name` on instance `i`, or undefined. */
const counterOn = (i: number, prefix: string, name: string) =>
  Effect.map(
    Effect.promise(() => servers[i]!.command("GET", keyOf(prefix, name, "c"))),
    (reply): bigint | undefined => (reply === "$-1" ? undefined : BigInt(reply))
  )

/**
 * Stalls instance `i` for `seconds` (`DEBUG SLEEP`, like a long command or a
 * slow fork) and returns once it has stopped answering, with the promise of
 * its waking up.
 */
const stall = (i: number, seconds: number) =>
  Effect.promise(async () => {
    const server = servers[i]!
    const woken = server.command("DEBUG", "SLEEP", String(seconds))
    for (;;) {
      const answered = await RedisServer.command(server.host, server.port, ["PING"], 100).then(
        () => true,
        () => false
      )
      if (!answered) return { woken }
    }
  })

/** Fails unless no instance has a key of `name` (counters included). */
const nameGone = (prefix: string, name: string) =>
  Effect.forEach(
    urls,
    (url) =>
      Effect.flatMap(keysUnder(`${prefix}{${encodeURIComponent(name)}}`, url), (keys) =>
        keys.length === 0 ? Effect.void : Effect.fail(new Error(`keys left on ${url}: ${keys.join(", ")}`))
      ),
    { discard: true }
  )

// ---------------------------------------------------------------------------
// Clients: one Redlock layer each, like separate processes.

interface Client {
  readonly backend: LockBackendShape
  readonly run: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, Exclude<R, LockBackend>>
}

const provider =
  (backend: LockBackendShape) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.provideService(effect, LockBackend, backend)

/**
 * Granted a probe lock on all five instances at once (each through the
 * client's own connection): every connection is up and has sent everything
 * queued before.
 */
const grantedEverywhere = (client: Client, prefix: string) =>
  eventually(
    Effect.scoped(
      Effect.gen(function* () {
        const lease = yield* client.run(Lock.tryScoped("probe", { ttl: "5 seconds" }))
        if (Option.isNone(lease)) return yield* Effect.fail(new Error("the probe was not granted"))
        const holders = yield* holdersOn(all, prefix, "probe")
        if (holders.some((holder) => holder !== lease.value.owner)) {
          return yield* Effect.fail(new Error(`the probe is not held on every instance: ${holders.join(", ")}`))
        }
      })
    ),
    10_000
  )

/** The client library logs every dropped connection as a warning: expected here, so kept out of the output. */
const quiet = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, References.MinimumLogLevel, "Error")

/**
 * A client on `targets` under `prefix`, closed with the scope once the faults
 * are healed and it was granted the probe on every instance.
 */
const open = (prefix: string, targets: ReadonlyArray<string>, options: Options = base) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(redlockLayer(prefix, targets, options), scope).pipe(
          Effect.onError(() => Scope.close(scope, Exit.void)),
          quiet
        )
        const backend = Context.get(context, LockBackend)
        const client: Client = { backend, run: provider(backend) }
        return { scope, client }
      }),
      ({ client, scope }) =>
        Effect.gen(function* () {
          yield* heal
          const probe = yield* Effect.exit(grantedEverywhere(client, prefix))
          const closing = yield* Effect.forkDetach(Scope.close(scope, Exit.void))
          const closed = yield* Effect.timeoutOption(Fiber.await(closing), "10 seconds")
          if (Exit.isFailure(probe)) {
            return yield* Effect.die(new Error("the healed instances were not all granting again", { cause: probe }))
          }
          if (Option.isNone(closed)) return yield* Effect.die(new Error("closing the Redlock layer hung"))
        })
    ),
    ({ client }) => client
  )

/** Real elapsed milliseconds of `effect`. */
const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const started = performance.now()
    return Effect.map(effect, (a) => ({ value: a, millis: performance.now() - started }))
  })

const millis = (input: Duration.Input) => Duration.toMillis(Duration.fromInputUnsafe(input))

describe("redlock faults (5 instances)", () => {
  it.live("one instance killed: granted by the other four, which hold it; a second client is refused", () => {
    const prefix = fresh("one-down")
    const name = "res"
    return Effect.gen(function* () {
      const a = yield* open(prefix, urls)
      const b = yield* open(prefix, urls)
      yield* kill(4)

      const lease = yield* a.run(Lock.scoped(name, { ttl: "3 seconds" }))
      assert.deepStrictEqual(yield* holdersOn([0, 1, 2, 3], prefix, name), Array(4).fill(lease.owner))
      // The token was written back to every granting instance.
      for (const i of [0, 1, 2, 3]) {
        const counter = yield* counterOn(i, prefix, name)
        assert.isTrue(counter !== undefined && counter >= lease.token, `counter on ${i}: ${counter} < ${lease.token}`)
      }

      const other = yield* b.run(Lock.tryScoped(name, { ttl: "3 seconds" }))
      assert.isTrue(Option.isNone(other), "a second client is refused")
      assert.strictEqual((yield* lease.state)._tag, "Held")
      // The refused attempt took nothing from the holder.
      assert.deepStrictEqual(yield* holdersOn([0, 1, 2, 3], prefix, name), Array(4).fill(lease.owner))
    })
  })

  it.live("two instances down (one killed, one paused): granted by the other three; a second client is refused", () => {
    const prefix = fresh("two-down")
    const name = "res"
    return Effect.gen(function* () {
      const a = yield* open(prefix, urls)
      const b = yield* open(prefix, urls)
      yield* kill(4)
      yield* pause(3)

      const lease = yield* a.run(Lock.scoped(name, { ttl: "3 seconds" }))
      assert.deepStrictEqual(yield* holdersOn([0, 1, 2], prefix, name), Array(3).fill(lease.owner))
      for (const i of [0, 1, 2]) {
        const counter = yield* counterOn(i, prefix, name)
        assert.isTrue(counter !== undefined && counter >= lease.token, `counter on ${i}: ${counter} < ${lease.token}`)
      }

      const other = yield* b.run(Lock.tryScoped(name, { ttl: "3 seconds" }))
      assert.isTrue(Option.isNone(other), "a second client is refused")
      // Still held by a bare majority: the next extension needs all three.
      yield* lease.extend()
      assert.strictEqual((yield* lease.state)._tag, "Held")
      assert.deepStrictEqual(yield* holdersOn([0, 1, 2], prefix, name), Array(3).fill(lease.owner))
    })
  })

  it.live(
    "three of five down: a single attempt fails with LockBackendUnavailable, a wait with LockTimeout once its retry schedule ends; each attempt is undone on the live two",
    () => {
      const prefix = fresh("three-down")
      const name = "res"
      // Far longer than the test: what the live two granted is gone only if it was undone.
      const ttl = "10 seconds"
      const liveHolders = holdersOn([0, 1], prefix, name)
      return Effect.gen(function* () {
        const a = yield* open(prefix, urls, { perInstanceTimeout: "100 millis", commandTimeout: "200 millis" })
        yield* kill(4)
        yield* kill(3)
        yield* pause(2)

        const single = yield* Effect.flip(Effect.scoped(a.run(Lock.tryScoped(name, { ttl }))))
        assert.instanceOf(single, LockBackendUnavailable)
        assert.strictEqual((single as LockBackendUnavailable).operation, "acquire")
        assert.deepStrictEqual(yield* liveHolders, [undefined, undefined])

        // The retry schedule gives up: every attempt's failure is kept.
        const retried = yield* Effect.flip(Effect.scoped(a.run(Lock.scoped(name, { ttl, retry: Schedule.recurs(3) }))))
        assert.instanceOf(retried, LockTimeout)
        const timeout = retried as LockTimeout
        assert.strictEqual(timeout.attempts, 4, "the first attempt and three retries")
        assert.strictEqual(timeout.failures.length, 4)
        for (const failure of timeout.failures) assert.instanceOf(failure, LockBackendUnavailable)
        assert.deepStrictEqual(yield* liveHolders, [undefined, undefined])

        // A `timeout` ends the wait with LockTimeout too, but it may interrupt an attempt in
        // flight, which can leave a grant behind on the instances that were down: the KNOWN BUG test.

        // Nothing else either, once the counters' grace has passed. (What was sent to the paused
        // instance reaches it once it is resumed: the check after the test covers it.)
        yield* eventually(
          Effect.forEach(
            [0, 1],
            (i) =>
              Effect.flatMap(keysUnder(prefix, urls[i]), (keys) =>
                keys.length === 0 ? Effect.void : Effect.fail(new Error(`keys left on ${i}: ${keys.join(", ")}`))
              ),
            { discard: true }
          )
        )
      })
    }
  )

  it.live("a slow instance (1 s each way) does not hold a grant up past the per-instance timeout", () => {
    const prefix = fresh("slow")
    const name = "res"
    const delay = 1000
    return Effect.gen(function* () {
      const targets = [urls[0]!, urls[1]!, urls[2]!, urls[3]!, proxied[4]!]
      const options: Options = { perInstanceTimeout: "100 millis", commandTimeout: "300 millis" }
      const a = yield* open(prefix, targets, options)
      const b = yield* open(prefix, targets, options)
      proxies[4]!.mode({ delay })

      // A long TTL: were the release not sent to the slow instance too, its late grant would outlive the leak check.
      const { value: lease, millis: acquireMillis } = yield* timed(a.run(Lock.scoped(name, { ttl: "10 seconds" })))
      assert.isBelow(acquireMillis, delay / 2, `granted after ${acquireMillis} ms`)
      assert.deepStrictEqual(yield* holdersOn([0, 1, 2, 3], prefix, name), Array(4).fill(lease.owner))

      // A refused attempt is bounded too (the per-instance timeout, then the undo's command timeout).
      const { value: other, millis: refuseMillis } = yield* timed(b.run(Lock.tryScoped(name, { ttl: "10 seconds" })))
      assert.isTrue(Option.isNone(other))
      assert.isBelow(refuseMillis, delay, `refused after ${refuseMillis} ms`)
    })
  })

  it.live(
    "a grant gathered slower than its validity is refused and undone everywhere, on the slow instances too",
    () => {
      const prefix = fresh("validity")
      const name = "res"
      const ttl = "300 millis"
      return Effect.gen(function* () {
        // The majority (2, 3, 4) answers only after ~700 ms (350 ms each way), well within the
        // per-instance timeout but past the TTL: every instance grants, too late.
        const targets = [urls[0]!, urls[1]!, proxied[2]!, proxied[3]!, proxied[4]!]
        const a = yield* open(prefix, targets, { perInstanceTimeout: "2 seconds", commandTimeout: "3 seconds" })
        for (const i of [2, 3, 4]) proxies[i]!.mode({ delay: 350 })

        const { value: granted, millis: attemptMillis } = yield* timed(
          Effect.scoped(a.run(Lock.tryScoped(name, { ttl })))
        )
        assert.isTrue(Option.isNone(granted), "no grant past its validity")
        assert.isAbove(attemptMillis, millis(ttl), `the attempt took ${attemptMillis} ms`)
        // Undone on every instance, once the slow ones have received the grant and its undo.
        yield* eventually(nameGone(prefix, name))

        // The same client is granted once the links are fast again: the refusal was the slowness.
        for (const i of [2, 3, 4]) proxies[i]!.mode("pass")
        yield* eventually(
          Effect.scoped(
            Effect.flatMap(a.run(Lock.tryScoped(name, { ttl: "2 seconds" })), (lease) =>
              Option.isSome(lease) ? Effect.void : Effect.fail(new Error("not granted"))
            )
          )
        )
      })
    }
  )

  it.live("a grant that comes too late is undone at once on every instance, not left to expire", () => {
    const prefix = fresh("too-late")
    const name = "res"
    const ttl = "300 millis"
    return Effect.gen(function* () {
      const a = yield* open(prefix, urls, { perInstanceTimeout: "2 seconds", commandTimeout: "2 seconds" })
      // A majority stalls for 500 ms, then grants at once, each with a full TTL from its waking.
      const stalled = yield* Effect.forEach([2, 3, 4], (i) => stall(i, 0.5), { concurrency: "unbounded" })
      const { value: granted, millis: attemptMillis } = yield* timed(
        Effect.scoped(a.run(Lock.tryScoped(name, { ttl })))
      )
      assert.isTrue(Option.isNone(granted), "no grant past its validity")
      assert.isAtLeast(attemptMillis, millis(ttl), `the attempt took ${attemptMillis} ms: it waited for the majority`)
      // The majority's grants would live ~300 ms more: they are gone because they were undone.
      assert.deepStrictEqual(yield* holdersOn(all, prefix, name), Array(5).fill(undefined))
      yield* Effect.promise(() => Promise.all(stalled.map(({ woken }) => woken)))
    })
  })

  it.live("tokens strictly increase across the grants of two clients; each is written back to every instance", () => {
    const prefix = fresh("tokens")
    const name = "res"
    return Effect.gen(function* () {
      const clients = [yield* open(prefix, urls), yield* open(prefix, urls)]
      const tokens: Array<bigint> = []
      for (let i = 0; i < 8; i++) {
        yield* Effect.scoped(
          Effect.gen(function* () {
            const lease = yield* clients[i % 2]!.run(Lock.scoped(name, { ttl: "2 seconds" }))
            tokens.push(lease.token)
            // Each instance granted its own token; all now hold the highest of them.
            for (const j of all) {
              const counter = yield* counterOn(j, prefix, name)
              assert.isTrue(counter !== undefined && counter >= lease.token, `grant ${i}, instance ${j}: ${counter}`)
            }
          })
        )
      }
      for (let i = 1; i < tokens.length; i++) {
        assert.isTrue(tokens[i]! > tokens[i - 1]!, `token ${i} (${tokens[i]}) after ${tokens[i - 1]}`)
      }
    })
  })

  it.live(
    "the token is the highest of the granting instances' tokens, and it lifts the other instances' counters",
    () => {
      const prefix = fresh("write-back")
      const name = "res"
      return Effect.gen(function* () {
        const a = yield* open(prefix, urls)
        // Instance 2's counter is 5 s of microseconds ahead of every clock (it expires by itself).
        const time = JSON.parse(yield* Effect.promise(() => servers[2]!.command("TIME"))) as [string, string]
        const ahead = BigInt(time[0]) * 1_000_000n + BigInt(time[1]) + 5_000_000n
        yield* Effect.promise(() => servers[2]!.command("SET", keyOf(prefix, name, "c"), String(ahead), "PX", "10000"))

        yield* Effect.scoped(
          Effect.gen(function* () {
            const lease = yield* a.run(Lock.scoped(name, { ttl: "2 seconds" }))
            assert.strictEqual(lease.token, ahead + 1n, "instance 2's token, the highest")
            for (const j of all) assert.strictEqual(yield* counterOn(j, prefix, name), lease.token, `instance ${j}`)
          })
        )
      })
    }
  )

  it.live("requireFencing is refused (best-effort fencing); bad options fail the layer with InvalidLockRequest", () => {
    const prefix = fresh("invalid")
    return Effect.gen(function* () {
      const a = yield* open(prefix, urls)
      assert.strictEqual(a.backend.kind, "redlock")
      assert.strictEqual(a.backend.guarantees.fencing, "best-effort")
      for (const attempt of [
        Lock.scoped("res", { requireFencing: true }),
        Effect.map(Lock.tryScoped("res", { requireFencing: true }), Option.getOrThrow)
      ]) {
        const error = yield* Effect.flip(Effect.scoped(a.run(attempt)))
        assert.instanceOf(error, InvalidLockRequest)
        assert.strictEqual((error as InvalidLockRequest).field, "requireFencing")
      }
      // Refused before anything was sent.
      assert.deepStrictEqual(yield* Effect.forEach(urls, (url) => keysUnder(prefix, url)), [[], [], [], [], []])

      const bad: ReadonlyArray<readonly [string, ReadonlyArray<string>, Options]> = [
        ["instances", urls.slice(0, 2), {}],
        ["quorum", urls, { quorum: 2 }],
        ["quorum", urls, { quorum: 6 }],
        ["quorum", urls, { quorum: 3.5 }],
        ["quorum", urls.slice(0, 4), { quorum: 2 }],
        ["driftFactor", urls, { driftFactor: 0.7 }],
        ["driftFactor", urls, { driftFactor: -0.01 }],
        ["driftFactor", urls, { driftFactor: Number.NaN }],
        ["perInstanceTimeout", urls, { perInstanceTimeout: 0 }],
        ["commandTimeout", urls, { commandTimeout: "-1 millis" }]
      ]
      for (const [field, targets, options] of bad) {
        const error = yield* Effect.flip(Effect.scoped(Layer.build(redlockLayer(prefix, targets, options))))
        assert.instanceOf(error, InvalidLockRequest, `${field}: ${JSON.stringify(options)}`)
        assert.strictEqual((error as InvalidLockRequest).field, field, JSON.stringify(options))
      }

      // A quorum of all five is a valid majority: granted while all are up.
      const strict = yield* open(prefix, urls, { ...base, quorum: 5 })
      const lease = yield* Effect.scoped(strict.run(Lock.tryScoped("res", { ttl: "2 seconds" })))
      assert.isTrue(Option.isSome(lease))
    })
  })

  it.live(
    "negative control: after a restart without persistence of a majority-making instance, two clients hold the lock at once",
    () => {
      // Redlock's documented weakness (RedlockBackend's Gotchas, and its guarantees' scope): an
      // instance that restarts without persistence forgets the grants it gave. Client A is granted
      // by a bare majority {0, 1, 2}: a partition (the proxies' blackhole) keeps it from 3 and 4.
      // Instance 2 then restarts empty, and client B gathers {2, 3, 4}, a majority too, while A's
      // lease is still valid. Nothing in the protocol can tell; only persistence (fsync on every
      // write) or restarting instances no sooner than the longest TTL prevents it.
      const prefix = fresh("restart")
      const name = "res"
      // Long enough that A's first heartbeat (ttl / 3) comes after the test has looked.
      const ttl = "30 seconds"
      return Effect.gen(function* () {
        const a = yield* open(prefix, [urls[0]!, urls[1]!, urls[2]!, proxied[3]!, proxied[4]!])
        proxies[3]!.mode("blackhole")
        proxies[4]!.mode("blackhole")

        const leaseA = yield* a.run(Lock.scoped(name, { ttl, onLost: "ignore" }))
        const lostA = yield* Effect.forkChild(leaseA.lost)
        assert.deepStrictEqual(yield* holdersOn(all, prefix, name), [
          leaseA.owner,
          leaseA.owner,
          leaseA.owner,
          undefined,
          undefined
        ])
        // A enters the protected resource.
        const resource = yield* FencedResource.make()
        const entered = yield* Deferred.make<void>()
        const leave = yield* Deferred.make<void>()
        const insideA = yield* Effect.forkChild(
          resource.use(leaseA.token, Effect.andThen(Deferred.succeed(entered, undefined), Deferred.await(leave)))
        )
        yield* Deferred.await(entered)

        yield* Effect.promise(() => servers[2]!.restart())
        assert.isUndefined(yield* holderOn(2, prefix, name), "instance 2 forgot A's grant")

        const b = yield* open(prefix, urls)
        const grantedB = yield* b.run(Lock.tryScoped(name, { ttl, onLost: "ignore" }))
        assert.isTrue(Option.isSome(grantedB), "B gathered a majority too")
        const leaseB = Option.getOrThrow(grantedB)

        // The overlap: both leases held, and A has not been told anything.
        assert.strictEqual((yield* leaseA.state)._tag, "Held")
        assert.strictEqual((yield* leaseB.state)._tag, "Held")
        assert.isUndefined(lostA.pollUnsafe(), "A's lost has not completed")
        assert.deepStrictEqual(yield* holdersOn(all, prefix, name), [
          leaseA.owner,
          leaseA.owner,
          leaseB.owner,
          leaseB.owner,
          leaseB.owner
        ])
        yield* resource.use(leaseB.token, Effect.void)
        const report = yield* resource.report
        assert.strictEqual(report.maxConcurrent, 2, "both inside the resource at once")
        assert.strictEqual(report.overlaps.length, 1)
        // The tokens come from the instances' clocks, so here they still order the grants: a resource
        // that checks them refuses A's later writes. That is the "best-effort" of the fencing.
        assert.isTrue(leaseB.token > leaseA.token)
        assert.isFalse(yield* resource.write(leaseA.token), "A's write after B's is stale")
        yield* Deferred.succeed(leave, undefined)
        yield* Fiber.join(insideA)

        // A finds out at its next extension (here a manual one), once it reaches a majority again.
        yield* heal
        const error = yield* leaseA.extend().pipe(
          Effect.retry({
            while: (e) => e._tag === "LockBackendUnavailable",
            schedule: Schedule.spaced("50 millis"),
            times: 200
          }),
          Effect.flip
        )
        assert.instanceOf(error, LockLost)
        assert.strictEqual((error as LockLost).reason, "stolen")
        assert.strictEqual((yield* Fiber.join(lostA)).reason, "stolen")
        assert.strictEqual((yield* leaseB.state)._tag, "Held")
      })
    }
  )

  it.live(
    "an acquisition that times out while unreachable instances still owe an answer leaves no grant on them once they answer",
    () => {
      // Regression: withDeadline (src/internal/deadline.ts) used to interrupt an instance's call only
      // when its own deadline passed; when the caller was interrupted first (the core's `timeout`, or
      // any interruption of the acquiring fiber), the call went on with no deadline. On an instance
      // that had not loaded the acquire script yet (first use, or any use after a restart: NOSCRIPT),
      // that call was still waiting for SCRIPT LOAD when the core's undo was sent; once the instance
      // answered, the orphaned call sent the EVALSHA: a grant of an owner nobody holds, on a majority,
      // for the whole TTL. The Redis store now interrupts its calls with their caller.
      const prefix = fresh("orphan")
      const name = "res"
      const ttl = "10 seconds"
      return Effect.gen(function* () {
        // Whatever happens, the name's keys do not outlive the test.
        yield* Effect.addFinalizer(() =>
          Effect.promise(() =>
            Promise.all(
              servers.map((server) =>
                server.command(
                  "DEL",
                  ...["x", "r", "ri", "q", "qe", "qi", "w", "m", "c"].map((part) => keyOf(prefix, name, part))
                )
              )
            )
          )
        )
        const a = yield* open(prefix, urls, { perInstanceTimeout: "5 seconds", commandTimeout: "200 millis" })
        // Down before their first command: the scripts are not loaded there.
        for (const i of [2, 3, 4]) yield* pause(i)
        // The timeout comes while the first attempt waits for the paused three.
        const error = yield* Effect.flip(Effect.scoped(a.run(Lock.scoped(name, { ttl, timeout: "300 millis" }))))
        assert.instanceOf(error, LockTimeout)
        assert.deepStrictEqual(yield* holdersOn([0, 1], prefix, name), [undefined, undefined], "undone on the live two")

        yield* heal
        // Nothing may appear once the three answer what they were sent.
        const phantom = yield* Effect.option(
          eventually(
            Effect.flatMap(holdersOn([2, 3, 4], prefix, name), (holders) =>
              holders.some((holder) => holder !== undefined)
                ? Effect.succeed(holders)
                : Effect.fail(new Error("no grant"))
            ),
            2000
          )
        )
        assert.isTrue(
          Option.isNone(phantom),
          `a grant nobody holds appeared: ${JSON.stringify(Option.getOrUndefined(phantom))}`
        )
      })
    }
  )
})
