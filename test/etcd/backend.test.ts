/**
 * The etcd backend's own promises, against a private etcd (no mocks): seed
 * 002's contention through a fenced resource, a real network partition of
 * the holder (a TCP proxy that blackholes its client), waiting by watch
 * rather than by retry, FIFO hand-over, try-locks and interruptions that
 * leave nothing behind, typed errors for bad input (and for a TTL below the
 * server's minimum lease), inspection with hostile names, and the
 * configuration from the environment (`LOCK_PROVIDER=etcd`).
 *
 * One private etcd for the file (its leases and keys are this file's alone:
 * the tests run one after the other), plus short-lived ones where a test
 * needs other server settings. Every test ends, once its layers closed, with
 * the server-side check: no key under its prefix and no lease beyond those
 * that existed before it. The tests wait on signals and on the server's
 * state, not on fixed sleeps, except where a duration is the scenario.
 *
 * The last block ("bugs found") holds regression tests of bugs found while
 * writing them: a grant made on a lease refreshed before the request was sent
 * (a spare, or a queued waiter's) expired on the server before the lease's
 * own `expiresAt` (now the lease is kept alive with the grant); and a
 * heartbeat of ttl/2, which the options accepted, lost every lease at its
 * first beat (now refused).
 */
import { assert, describe, it } from "@effect/vitest"
import {
  ConfigProvider,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  References,
  Schedule,
  Scope
} from "effect"
import { afterAll } from "vitest"
import {
  DistributedSemaphore,
  type Lease,
  Lock,
  LockBackend,
  LockConfig,
  type LockError,
  ReadWriteLock
} from "../../src/index.ts"
import { EtcdBackend } from "../../src/etcd/index.ts"
import { FaultyBackend, FencedResource } from "../../src/testing/index.ts"
import * as Checks from "../support/backendChecks.ts"
import { type EtcdCluster, startEtcd } from "../support/EtcdServer.ts"
import { holdInFiber, insideWithLock, lockLostOf, watchLastGood } from "../support/leases.ts"
import * as TcpProxy from "../support/TcpProxy.ts"
import { assertNothingLeft, backendLayer, eventually, freshPrefix, keysUnder, leasesOf } from "./harness.ts"

/** This file's private etcd (one member, 500 ms election timeout: leases of 1 s and more are granted as asked). */
const server = await startEtcd()
const endpoints = server.endpoints
/** Every other server started here, stopped after the file in case a test did not get to it. */
const extraServers: Array<EtcdCluster> = []
afterAll(() => Promise.all([server, ...extraServers].map((cluster) => cluster.stop())))

/** A waiter with it only moves on a change signal (or its refresh every ttl/3). */
const hourRetry = LockConfig.retryExponential({ initial: "1 hour", max: "1 hour", jitter: false })

/** A loaded machine may run a timer this much late. */
const marginMillis = 300

/** Fails (for `eventually`) until `condition` holds. */
const check = (condition: boolean, message: string) => (condition ? Effect.void : Effect.fail(new Error(message)))

/** The documented key of a holder or waiter: `<prefix><encodeURIComponent(name)>/<its lease id in hex>`. */
const keyOf = (prefix: string, name: string, lease: string) =>
  `${prefix}${encodeURIComponent(name)}/${BigInt(lease).toString(16)}`

/** The owner recorded in a key's value. */
const ownerOf = (kv: RawKv): unknown => (JSON.parse(kv.value) as { owner?: unknown }).owner

const base64 = (value: string | Buffer) => Buffer.from(value).toString("base64")
const fromBase64 = (value: unknown) => Buffer.from(typeof value === "string" ? value : "", "base64").toString("utf8")

/** The first key after every key starting with `prefix`. */
const prefixEnd = (prefix: string): Buffer => {
  const end = Buffer.from(prefix)
  for (let index = end.length - 1; index >= 0; index--) {
    if (end[index]! < 0xff) {
      end[index] = end[index]! + 1
      return end.subarray(0, index + 1)
    }
  }
  return Buffer.from([0])
}

/** A key as the server stores it. */
interface RawKv {
  readonly key: string
  readonly value: string
  readonly create: bigint
  /** The lease id (decimal), "0" for none. */
  readonly lease: string
}

/** The keys under `prefix` on the server (linearizable read on the JSON gateway), by create revision. */
const rawRange = (cluster: EtcdCluster, prefix: string) =>
  Effect.promise(async (): Promise<ReadonlyArray<RawKv>> => {
    const reply = await cluster.request("/v3/kv/range", { key: base64(prefix), range_end: base64(prefixEnd(prefix)) })
    const kvs = Array.isArray(reply["kvs"]) ? (reply["kvs"] as Array<Record<string, unknown>>) : []
    return kvs
      .map((kv) => ({
        key: fromBase64(kv["key"]),
        value: fromBase64(kv["value"]),
        create: BigInt(String(kv["create_revision"])),
        lease: String(kv["lease"] ?? "0")
      }))
      .toSorted((a, b) => (a.create < b.create ? -1 : a.create > b.create ? 1 : 0))
  })

/** One key on the server, or undefined. */
const rawKey = (cluster: EtcdCluster, key: string) =>
  Effect.map(rawRange(cluster, key), (kvs) => kvs.find((kv) => kv.key === key))

/**
 * The key holding `owner`'s record under `name` (undefined if none); it must
 * have the documented name, from its own lease.
 */
const ownKv = (cluster: EtcdCluster, prefix: string, name: string, owner: string) =>
  Effect.map(rawRange(cluster, `${prefix}${encodeURIComponent(name)}/`), (kvs) => {
    const own = kvs.filter((kv) => ownerOf(kv) === owner)
    assert.isAtMost(own.length, 1, `one key per request (${owner})`)
    if (own[0] !== undefined) assert.strictEqual(own[0].key, keyOf(prefix, name, own[0].lease), "the key's name")
    return own[0]
  })

/** A lease's remaining and granted TTL in whole seconds (etcd truncates), or undefined once it is gone. */
const leaseTtl = (cluster: EtcdCluster, id: string) =>
  Effect.promise(async () => {
    const reply = await cluster.request("/v3/lease/timetolive", { ID: id })
    const ttl = Number(reply["TTL"] ?? 0)
    return ttl < 0 ? undefined : { ttl, granted: Number(reply["grantedTTL"] ?? 0) }
  })

/**
 * The keys attached to a lease, or undefined once the lease is gone. A lease
 * the layer keeps after a release (a spare for the next grant) has none: it
 * keeps nothing alive, and the layer revokes it when it closes.
 */
const leaseKeys = (cluster: EtcdCluster, id: string) =>
  Effect.promise(async () => {
    const reply = await cluster.request("/v3/lease/timetolive", { ID: id, keys: true })
    if (Number(reply["TTL"] ?? 0) < 0) return undefined
    return (Array.isArray(reply["keys"]) ? (reply["keys"] as Array<unknown>) : []).map(fromBase64)
  })

/** Runs `body` on a fresh backend (on this file's server) under a fresh prefix, then checks the server. */
const onServer = <A, E>(
  label: string,
  body: (prefix: string) => Effect.Effect<A, E, LockBackend | Scope.Scope>,
  options: { readonly callTimeout?: Duration.Input } = {}
) =>
  Effect.gen(function* () {
    const prefix = freshPrefix(label)
    const before = yield* leasesOf(server)
    const result = yield* Effect.scoped(body(prefix)).pipe(Effect.provide(backendLayer(prefix, endpoints, options)))
    yield* assertNothingLeft(server, prefix, before)
    return result
  })

/** The failure of `effect` (fails the test when it succeeds). */
const failureOf = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.flip(effect)

/** The etcd3 client logs nothing, but the core logs unhandled detached failures: expected in the fault tests. */
const quiet = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, References.MinimumLogLevel, "Error")

/** Waits until `name` has exactly `count` waiters registered on the server. */
const waitersReach = (name: string, count: number) =>
  eventually(
    Effect.flatMap(LockBackend.inspect(name), (inspection) =>
      check(inspection.waiters.length === count, `${inspection.waiters.length} waiters, not ${count}`)
    )
  )

/**
 * A waiter on the backend in context, through a wrapper that counts its
 * backend calls. `registered` completes once its second grant attempt (the
 * one right after subscribing) has answered: it is queued and about to wait
 * for its watch. `granted` gives the token and the moment of the grant; the
 * lease is then released at once.
 */
const countedWaiter = (acquire: Effect.Effect<Lease.Lease, LockError, LockBackend | Scope.Scope>) =>
  Effect.gen(function* () {
    const { backend, control } = yield* FaultyBackend.make(yield* LockBackend)
    const answered = { tryAcquire: 0 }
    yield* control.setHook((call) =>
      Effect.sync(() => {
        if (call.phase === "after" && call.operation === "tryAcquire") answered.tryAcquire++
      })
    )
    const granted = yield* Deferred.make<{ readonly token: bigint; readonly at: number }>()
    const fiber = yield* Effect.forkChild(
      Effect.scoped(
        Effect.flatMap(acquire, (lease) => Deferred.succeed(granted, { token: lease.token, at: Date.now() }))
      ).pipe(Effect.provideService(LockBackend, backend))
    )
    yield* eventually(Effect.suspend(() => check(answered.tryAcquire >= 2, "the waiter is not queued yet")))
    return { granted: Deferred.await(granted), fiber, calls: control.calls }
  })

/** `LockBackend.layerConfig` reading the given variables only. */
const fromEnv = (env: Record<string, string>) =>
  LockBackend.layerConfig.pipe(Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))))

/** The error of building `LockBackend.layerConfig` from these variables. */
const buildFailure = (env: Record<string, string>) =>
  failureOf(Effect.asVoid(LockBackend.use(Effect.succeed)).pipe(Effect.provide(fromEnv(env))))

const millis = (input: Duration.Input) => Duration.toMillis(Duration.fromInputUnsafe(input))

describe("EtcdBackend: contention", () => {
  it.live(
    "seed 002: 50 fibers x 3 rounds on one name through a fenced resource: no overlap, no token issued twice, tokens strictly increasing; inside, the holder's key is the first and its create revision is the token",
    () =>
      onServer("hot", (prefix) =>
        Effect.gen(function* () {
          const name = "hot"
          const fibers = 50
          const rounds = 3
          const resource = yield* FencedResource.make()
          const perFiber = Array.from({ length: fibers }, () => [] as Array<bigint>)
          const notFirst: Array<string> = []
          const started = Date.now()
          yield* Effect.forEach(
            Array.from({ length: fibers }, (_, i) => i),
            (fiber) =>
              Effect.repeat(
                Effect.scoped(
                  Effect.flatMap(Lock.scoped(name, { timeout: "60 seconds" }), (lease) =>
                    resource.use(
                      lease.token,
                      Effect.gen(function* () {
                        perFiber[fiber]!.push(lease.token)
                        // On the server, the holder's key is the oldest of the name, with the token as revision.
                        const [first] = yield* rawRange(server, `${prefix}${encodeURIComponent(name)}/`)
                        if (
                          first === undefined ||
                          ownerOf(first) !== lease.owner ||
                          first.key !== keyOf(prefix, name, first.lease) ||
                          first.create !== lease.token
                        ) {
                          notFirst.push(`${lease.token}: first is ${first?.key} at ${first?.create}`)
                        }
                        yield* Effect.yieldNow
                      })
                    )
                  )
                ),
                Schedule.recurs(rounds - 1)
              ),
            { concurrency: "unbounded", discard: true }
          )
          const elapsed = Date.now() - started
          const report = yield* resource.report
          assert.strictEqual(report.entries.length, fibers * rounds)
          assert.strictEqual(report.accepted, fibers * rounds)
          assert.deepStrictEqual(report.overlaps, [])
          assert.deepStrictEqual(report.rejected, [])
          assert.strictEqual(report.maxConcurrent, 1)
          assert.isTrue(report.strictlyIncreasing, "tokens must strictly increase in entry order")
          assert.strictEqual(new Set(report.entries).size, report.entries.length, "no token issued twice")
          assert.deepStrictEqual(notFirst, [], "the holder was not the name's first key")
          for (const tokens of perFiber) assert.strictEqual(tokens.length, rounds)
          assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
          console.log(`etcd seed 002: ${fibers * rounds} critical sections in ${elapsed} ms`)
        })
      ),
    60_000
  )

  it.live(
    "FIFO: 10 waiters queued one after the other are served in that order, by watch (one-hour retry), with increasing tokens",
    () =>
      onServer("fifo", () =>
        Effect.gen(function* () {
          const name = "fifo"
          const holder = yield* Lock.scoped(name, { ttl: "30 seconds" })
          const served: Array<{ readonly index: number; readonly token: bigint }> = []
          const waiters: Array<Fiber.Fiber<void, LockError>> = []
          for (let index = 0; index < 10; index++) {
            waiters.push(
              yield* Effect.forkChild(
                Effect.scoped(
                  Effect.flatMap(
                    Lock.scoped(name, {
                      ttl: "30 seconds",
                      retry: hourRetry,
                      timeout: "20 seconds",
                      metadata: { index: String(index) }
                    }),
                    (lease) =>
                      Effect.andThen(
                        Effect.yieldNow,
                        Effect.sync(() => {
                          served.push({ index, token: lease.token })
                        })
                      )
                  )
                )
              )
            )
            // Registered on the server before the next one starts.
            yield* waitersReach(name, index + 1)
          }
          const queued = (yield* LockBackend.inspect(name)).waiters
          assert.deepStrictEqual(
            queued.map((waiter) => waiter.metadata["index"]),
            Array.from({ length: 10 }, (_, i) => String(i)),
            "queue order on the server"
          )
          const started = Date.now()
          yield* holder.release
          yield* Fiber.joinAll(waiters)
          const elapsed = Date.now() - started
          assert.deepStrictEqual(
            served.map((entry) => entry.index),
            Array.from({ length: 10 }, (_, i) => i),
            "served in queue order"
          )
          for (const [k, entry] of served.entries()) {
            assert.isTrue(entry.token > (k === 0 ? holder.token : served[k - 1]!.token), `token of waiter ${k}`)
          }
          // Ten hand-overs, each by the watch on the key just before (the retry interval is an hour).
          assert.isBelow(elapsed, 5_000, `10 hand-overs took ${elapsed} ms`)
          console.log(`etcd FIFO: 10 hand-overs in ${elapsed} ms`)
        })
      )
  )
})

describe("EtcdBackend: partition", () => {
  it.live(
    "the holder's link blackholed: LockLost (unreachable) while the lease still lives on the server; a rival on a direct link gets the name only after the lease expired; the fenced resource refuses the old holder's late write",
    () => {
      const prefix = freshPrefix("partition")
      const name = "job"
      const ttlMillis = 3_000
      const ttl = Duration.millis(ttlMillis)
      const callTimeout = "300 millis"
      return Effect.gen(function* () {
        const before = yield* leasesOf(server)
        const target = new URL(endpoints[0]!)
        const proxy = yield* Effect.acquireRelease(
          Effect.promise(() => TcpProxy.start({ targetHost: target.hostname, targetPort: Number(target.port) })),
          (p) => Effect.promise(() => p.close())
        )
        const proxied = [`http://${proxy.host}:${proxy.port}`]
        const direct = backendLayer(prefix, endpoints, { callTimeout })
        const resource = yield* FencedResource.make()
        yield* Effect.gen(function* () {
          const { holder, lease } = yield* holdInFiber(name, ttl)
          const kv = yield* ownKv(server, prefix, name, lease.owner)
          assert.isDefined(kv, "the holder's key")
          assert.strictEqual(kv!.create, lease.token, "the token is the key's create revision")
          assert.notStrictEqual(kv!.lease, "0")
          assert.isTrue(yield* resource.write(lease.token), "the holder's write while it holds")

          // Count from an extension (a keep-alive that went through the proxy), not from the grant.
          const { seen, fiber: watcher } = yield* watchLastGood(lease, ttlMillis)
          yield* eventually(
            Effect.suspend(() => check(seen.extensions >= 1, "no extension yet")),
            ttlMillis
          )
          const loss = yield* Effect.forkChild(
            Effect.flatMap(lease.lost, (error) => Effect.sync(() => ({ error, at: Date.now() })))
          )

          proxy.mode("blackhole")
          const cutAt = Date.now()
          const { error, at } = yield* Fiber.join(loss)
          // Right after the loss: the server still has the key, with its lease and some whole seconds left.
          const askedAt = Date.now()
          const left = yield* leaseTtl(server, kv!.lease)
          const still = yield* rawKey(server, kv!.key)
          yield* Fiber.join(watcher)
          assert.deepInclude(error, { _tag: "LockLost", name, token: lease.token, reason: "unreachable" })
          assert.isAtMost(seen.lastGood, cutAt)
          assert.isAtMost(
            at - seen.lastGood,
            ttlMillis / 2 + marginMillis,
            `lost ${at - seen.lastGood} ms after the last good moment (cut ${cutAt - seen.lastGood} ms after it)`
          )
          assert.isDefined(left, "the lease had expired on the server when the loss was reported")
          assert.isAtLeast(left!.ttl, 1, "at least one whole second left on the server")
          assert.strictEqual(left!.granted, ttlMillis / 1000)
          assert.strictEqual(still?.create, lease.token, "the key still lives on the server")
          // The critical section was stopped with the loss.
          assert.deepInclude(lockLostOf(yield* Fiber.await(holder)), { _tag: "LockLost", reason: "unreachable" })

          // A rival on a direct link queues behind the dead holder's key and is woken by its deletion.
          const rival = yield* Effect.forkChild(
            Effect.scoped(
              Effect.gen(function* () {
                const next = yield* Lock.scoped(name, { ttl, retry: hourRetry, timeout: "15 seconds" })
                const grantedAt = Date.now()
                yield* resource.use(next.token, Effect.void)
                return { token: next.token, grantedAt }
              })
            ).pipe(Effect.provide(direct))
          )
          // Watch the lease on the server until it is gone.
          const goneSeenAt = yield* eventually(
            Effect.flatMap(leaseTtl(server, kv!.lease), (found) =>
              found === undefined ? Effect.sync(() => Date.now()) : Effect.fail(new Error("the lease lives on"))
            ),
            ttlMillis * 2
          )
          const { token: rivalToken, grantedAt } = yield* Fiber.join(rival)
          // The lease had at least `left.ttl` seconds to live when asked: nobody got the name before that.
          assert.isAtLeast(
            grantedAt,
            askedAt + left!.ttl * 1000,
            "the rival got the name before the lease could expire on the server"
          )
          assert.isAbove(grantedAt, at, "the rival got the name before the holder knew it lost it")
          assert.isTrue(rivalToken > lease.token, `rival token ${rivalToken} after ${lease.token}`)
          assert.isAtMost(grantedAt - goneSeenAt, 1_000, "the rival was woken by the deletion")

          // The old holder's late write is refused.
          const stale = yield* failureOf(resource.use(lease.token, Effect.void))
          assert.deepInclude(stale, { _tag: "StaleToken", token: lease.token, highest: rivalToken })
          const report = yield* resource.report
          assert.strictEqual(report.accepted, 2)
          assert.deepStrictEqual(report.rejected, [{ token: lease.token, highest: rivalToken }])
          assert.deepStrictEqual(report.overlaps, [])

          // Heal (dropping the dark connections) before the old holder's layer closes; its client's circuit
          // breaker may still fail its last calls fast: what it held has expired on the server anyway.
          proxy.reset()
          proxy.mode("pass")
          console.log(
            `etcd partition: lost ${at - cutAt} ms after the cut with ${left!.ttl} s left on the server; ` +
              `the rival got the name ${grantedAt - at} ms after the loss, ${grantedAt - goneSeenAt} ms after the lease was seen gone`
          )
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, proxied, { callTimeout })))
        yield* assertNothingLeft(server, prefix, before)
      }).pipe(Effect.scoped, quiet)
    },
    40_000
  )
})

/** The server's count of key-value operations (its `/metrics`): ranges (reads and transaction compares), transactions, puts, deletes. */
const mvccCounts = (cluster: EtcdCluster) =>
  Effect.promise(async () => {
    const text = await (await fetch(`${cluster.endpoints[0]}/metrics`)).text()
    const count = (metric: string) => Number(new RegExp(`^${metric} (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN)
    return {
      range: count("etcd_mvcc_range_total"),
      txn: count("etcd_mvcc_txn_total"),
      put: count("etcd_mvcc_put_total"),
      delete: count("etcd_mvcc_delete_total")
    }
  })

/**
 * Checks that since `before` the server saw no read (range), transaction or
 * put, and one of `deletes` deletes: a hand-over by watch is the holder's
 * delete (and perhaps already the new holder's own release), nothing else.
 */
const assertOnlyDeletes = (
  before: Effect.Success<ReturnType<typeof mvccCounts>>,
  deletes: ReadonlyArray<number>,
  what: string
) =>
  Effect.map(mvccCounts(server), (after) => {
    assert.deepStrictEqual(
      { range: after.range - before.range, txn: after.txn - before.txn, put: after.put - before.put },
      { range: 0, txn: 0, put: 0 },
      `${what}: the waiter read nothing to be granted`
    )
    assert.include(deletes, after.delete - before.delete, `${what}: deletes`)
  })

describe("EtcdBackend: waiting is by watch", () => {
  it.live(
    "with a one-hour retry, a release hands over by watch, the server seeing only the holder's delete (no read): exclusive, a writer behind two readers, a semaphore permit",
    () =>
      onServer("watch", () =>
        Effect.gen(function* () {
          const ttl = "30 seconds"
          const timings: Record<string, number> = {}
          // A round trip for scale: one uncontended try-lock and its release.
          const rtStarted = Date.now()
          yield* Effect.scoped(Lock.tryScoped("scale", { ttl }))
          timings["try-lock"] = Date.now() - rtStarted

          // Exclusive.
          const holder = yield* Lock.scoped("ex", { ttl })
          const exWaiter = yield* countedWaiter(Lock.scoped("ex", { ttl, retry: hourRetry, timeout: "20 seconds" }))
          let counts = yield* mvccCounts(server)
          let started = Date.now()
          yield* holder.release
          const ex = yield* exWaiter.granted
          yield* assertOnlyDeletes(counts, [1, 2], "exclusive")
          timings["exclusive"] = ex.at - started
          assert.isTrue(ex.token > holder.token)
          yield* Fiber.join(exWaiter.fiber)
          assert.deepInclude(yield* exWaiter.calls, { tryAcquire: 3, subscribe: 1 })

          // A writer behind two readers: the first reader's release does not let it in, the second's does.
          const r1 = yield* ReadWriteLock.read("rw", { ttl })
          const r2 = yield* ReadWriteLock.read("rw", { ttl })
          const writer = yield* countedWaiter(
            ReadWriteLock.write("rw", { ttl, retry: hourRetry, timeout: "20 seconds" })
          )
          yield* r1.release
          const { holders, waiters } = yield* LockBackend.inspect("rw")
          assert.deepStrictEqual([holders.map((h) => h.owner), waiters.map((w) => w.mode)], [[r2.owner], ["exclusive"]])
          counts = yield* mvccCounts(server)
          started = Date.now()
          yield* r2.release
          const w = yield* writer.granted
          yield* assertOnlyDeletes(counts, [1, 2], "writer")
          timings["writer"] = w.at - started
          assert.isTrue(w.token > r2.token)
          yield* Fiber.join(writer.fiber)
          // Woken once: by the release of the reader just before it, not by the other one.
          assert.deepInclude(yield* writer.calls, { tryAcquire: 3, subscribe: 1 })

          // A semaphore of 2, both permits taken: one release lets the waiter in.
          const s1 = yield* DistributedSemaphore.scoped("sem", { limit: 2, ttl })
          const s2 = yield* DistributedSemaphore.scoped("sem", { limit: 2, ttl })
          const semWaiter = yield* countedWaiter(
            DistributedSemaphore.scoped("sem", { limit: 2, ttl, retry: hourRetry, timeout: "20 seconds" })
          )
          counts = yield* mvccCounts(server)
          started = Date.now()
          yield* s1.release
          const s = yield* semWaiter.granted
          yield* assertOnlyDeletes(counts, [1, 2], "semaphore")
          timings["semaphore"] = s.at - started
          assert.isTrue(s.token > s2.token)
          yield* Fiber.join(semWaiter.fiber)
          assert.deepInclude(yield* semWaiter.calls, { tryAcquire: 3, subscribe: 1 })
          yield* s2.release

          for (const kind of ["exclusive", "writer", "semaphore"]) {
            assert.isBelow(timings[kind]!, 500, `${kind} hand-over took ${timings[kind]} ms`)
          }
          console.log(`etcd hand-over by watch (ms): ${JSON.stringify(timings)}`)
        })
      )
  )
})

describe("EtcdBackend: a broken watch", () => {
  it.live(
    "the name's watch breaks (the waiter's connections reset): the waiter drops its view, reads again under a new watch, and a release still reaches it by watch (one-hour retry, refresh only every 20 s)",
    () =>
      onServer("rewatch", (prefix) =>
        Effect.gen(function* () {
          const ttl = "60 seconds"
          const target = new URL(endpoints[0]!)
          const proxy = yield* Effect.acquireRelease(
            Effect.promise(() => TcpProxy.start({ targetHost: target.hostname, targetPort: Number(target.port) })),
            (p) => Effect.promise(() => p.close())
          )
          const holder = yield* Lock.scoped("job", { ttl })
          // The waiter runs on its own layer, through the proxy.
          const waiterLayer = backendLayer(prefix, [`http://${proxy.host}:${proxy.port}`])
          const waiterScope = yield* Scope.make()
          yield* Effect.addFinalizer(() => Scope.close(waiterScope, Exit.void))
          const waiterContext = yield* Layer.buildWithScope(waiterLayer, waiterScope)
          const waiter = yield* countedWaiter(
            Lock.scoped("job", { ttl, retry: hourRetry, timeout: "30 seconds" })
          ).pipe(Effect.provideContext(waiterContext))
          assert.deepInclude(yield* waiter.calls, { tryAcquire: 2, subscribe: 1 })

          // Every connection of the waiter's client is reset: its watch stream ends.
          proxy.reset()
          yield* eventually(
            Effect.flatMap(waiter.calls, (calls) =>
              check((calls["tryAcquire"] ?? 0) >= 4, `${calls["tryAcquire"]} attempts: the view was not dropped`)
            )
          )
          const started = Date.now()
          yield* holder.release
          const granted = yield* waiter.granted.pipe(Effect.timeout("10 seconds"))
          assert.isTrue(granted.token > holder.token)
          console.log(`etcd hand-over after the watch broke: ${granted.at - started} ms`)
          yield* Fiber.join(waiter.fiber)
        })
      ),
    60_000
  )
})

describe("EtcdBackend: nothing left behind", () => {
  it.live(
    "try-lock: on a free name exactly one key (with its own lease) while held, none after release; on a held name None, no key, and no lease per attempt left behind",
    () =>
      onServer("try", (prefix) =>
        Effect.gen(function* () {
          const name = "try"
          const first = Option.getOrThrow(yield* Lock.tryScoped(name, { ttl: "10 seconds" }))
          const keys = yield* rawRange(server, prefix)
          assert.deepStrictEqual(
            keys.map((kv) => [kv.key, ownerOf(kv), kv.create]),
            [[keyOf(prefix, name, keys[0]!.lease), first.owner, first.token]]
          )
          const firstLease = keys[0]!.lease
          assert.deepInclude(yield* leaseTtl(server, firstLease), { granted: 10 })
          const stored = JSON.parse(keys[0]!.value) as { owner: string; mode: string }
          assert.deepInclude(stored, { owner: first.owner, mode: "exclusive" })

          // A held name: None each time, no key left, and no lease per attempt left behind (the layer keeps at
          // most two spare leases per TTL, without keys, for its next grants; a refused attempt's lease is one).
          const leasesBefore = yield* leasesOf(server)
          for (let attempt = 1; attempt <= 30; attempt++) {
            const other = yield* Effect.scoped(Lock.tryScoped(name, { ttl: "10 seconds" }))
            assert.isTrue(Option.isNone(other), `attempt ${attempt} got the name`)
            assert.deepStrictEqual(
              (yield* rawRange(server, prefix)).map((kv) => [kv.key, kv.lease]),
              [[keyOf(prefix, name, firstLease), firstLease]],
              `attempt ${attempt} left a key`
            )
          }
          assert.isTrue(Option.isNone(yield* Lock.withLockIfAvailable(name)(Effect.succeed(1))))
          const leasesAfter = yield* leasesOf(server)
          const added = leasesAfter.filter((lease) => !leasesBefore.includes(lease))
          // The holder's lease, and at most two spares for each of the two TTLs used (10 s and the default 30 s).
          assert.isAtMost(
            leasesAfter.length,
            1 + 2 * 2,
            `31 refused attempts: ${leasesBefore.length} leases before, ${leasesAfter.length} after`
          )
          for (const lease of added) assert.deepStrictEqual(yield* leaseKeys(server, lease), [], `new lease ${lease}`)

          yield* first.release
          assert.deepStrictEqual(yield* keysUnder(server, prefix), [], "the key outlived the release")
          assert.deepStrictEqual((yield* leaseKeys(server, firstLease)) ?? [], [], "the released lease keeps a key")
          // Free again.
          const again = Option.getOrThrow(yield* Lock.tryScoped(name, { ttl: "10 seconds" }))
          assert.isTrue(again.token > first.token)
          yield* again.release
          assert.deepStrictEqual(yield* keysUnder(server, prefix), [])
        })
      )
  )

  it.live(
    "interrupted while waiting and while holding: the key is gone, and its lease keeps nothing alive, when the interruption returns",
    () =>
      onServer("interrupt", (prefix) =>
        Effect.gen(function* () {
          const name = "job"
          const holder = yield* Lock.scoped(name, { ttl: "10 seconds" })
          const holderKv = (yield* ownKv(server, prefix, name, holder.owner))!

          // Waiting.
          const waiter = yield* Effect.forkChild(
            Lock.withLock(name, { ttl: "10 seconds", retry: hourRetry, metadata: { role: "waiter" } })(
              Effect.succeed("ran")
            )
          )
          yield* waitersReach(name, 1)
          const queued = (yield* rawRange(server, prefix)).filter((kv) => kv.key !== holderKv.key)
          assert.strictEqual(queued.length, 1)
          const waiterLease = queued[0]!.lease
          assert.notStrictEqual(waiterLease, holderKv.lease, "a waiter's key has a lease of its own")
          yield* Fiber.interrupt(waiter)
          assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(waiter)))
          assert.deepStrictEqual(
            (yield* rawRange(server, prefix)).map((kv) => kv.key),
            [holderKv.key],
            "the waiter's key outlived the interruption"
          )
          assert.deepStrictEqual(
            (yield* leaseKeys(server, waiterLease)) ?? [],
            [],
            "the waiter's lease keeps a key after the interruption"
          )
          assert.deepStrictEqual((yield* LockBackend.inspect(name)).waiters, [])
          assert.strictEqual((yield* holder.state)._tag, "Held")
          yield* holder.release

          // Holding.
          const inside = yield* insideWithLock(name, { ttl: "10 seconds" })
          const held = yield* rawRange(server, prefix)
          assert.strictEqual(held.length, 1)
          yield* inside.interrupt
          assert.deepStrictEqual(yield* keysUnder(server, prefix), [], "the key outlived the interruption")
          assert.deepStrictEqual(
            (yield* leaseKeys(server, held[0]!.lease)) ?? [],
            [],
            "the holder's lease keeps a key after the interruption"
          )
          assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))), "the name is free at once")
        })
      )
  )
})

describe("EtcdBackend: bad input", () => {
  it.live(
    "bad names, TTLs, heartbeats and semaphore sizes are InvalidLockRequest, and nothing reaches the server",
    () =>
      onServer("bad", (prefix) =>
        Effect.gen(function* () {
          const leasesBefore = yield* leasesOf(server)
          const invalid = Checks.invalidChecker(keysUnder(server, prefix))
          yield* Checks.badNames(invalid)
          yield* invalid("name", Effect.scoped(Lock.tryScoped("")))
          yield* invalid("name", Effect.scoped(ReadWriteLock.read("ok-\uDC00")))
          yield* invalid("name", Effect.scoped(DistributedSemaphore.scoped("", { limit: 2 })))
          yield* Checks.badTtls(invalid)
          yield* invalid("heartbeat", Checks.lock("t", { ttl: "2 seconds", heartbeat: "1001 millis" }))
          yield* Checks.badSizesAndDirectName(invalid)
          // None of them reached the server: not even a lease was granted.
          assert.deepStrictEqual(
            (yield* leasesOf(server)).filter((lease) => !leasesBefore.includes(lease)),
            [],
            "leases granted for bad input"
          )
          // The bounds themselves are fine.
          const edge = yield* Effect.scoped(Lock.tryScoped("x".repeat(1024)))
          assert.isTrue(Option.isSome(edge))
        })
      )
  )

  it.live(
    "release of what is not held, double release, release after expiry: false or LockNotHeld, never another holder's key",
    () =>
      onServer("release", (prefix) =>
        Effect.gen(function* () {
          const backend = yield* LockBackend
          // Never held, by anyone: nothing to release, nothing written.
          assert.isFalse(yield* backend.release("never-held", "nobody/1"))
          assert.deepStrictEqual(yield* keysUnder(server, prefix), [])
          // Held by someone else: an impostor's release changes nothing.
          const real = yield* Lock.scoped("someone-elses")
          assert.isFalse(yield* backend.release("someone-elses", "impostor/1"))
          assert.isFalse(yield* backend.release("someone-elses", `${real.owner}x`))
          const realKv = (yield* ownKv(server, prefix, "someone-elses", real.owner))!
          assert.deepStrictEqual(
            (yield* rawRange(server, prefix)).map((kv) => kv.key),
            [realKv.key]
          )
          yield* real.release
          assert.deepInclude(yield* failureOf(real.extend()), { _tag: "LockNotHeld", state: "released" })

          // Twice.
          yield* Checks.assertReleasedTwice("twice")
          assert.deepStrictEqual(yield* keysUnder(server, prefix), [])

          // After expiry: no heartbeat, the lease runs out on the server, and someone else takes the name.
          const expiring = yield* Lock.scoped("expiring", { ttl: "1 second", heartbeat: false, onLost: "ignore" })
          const expiringKv = (yield* ownKv(server, prefix, "expiring", expiring.owner))!
          const lost = yield* expiring.lost
          assert.deepInclude(lost, { _tag: "LockLost", reason: "expired", token: expiring.token })
          const next = yield* Lock.scoped("expiring", { timeout: "5 seconds" })
          assert.isTrue(next.token > expiring.token)
          assert.isUndefined(yield* leaseTtl(server, expiringKv.lease), "the expired lease is gone on the server")
          assert.deepInclude(yield* failureOf(expiring.release), {
            _tag: "LockNotHeld",
            owner: expiring.owner,
            state: "lost"
          })
          // The stale owner's release (the lease's, and a direct one) and extension left the new holder alone.
          assert.isFalse(yield* backend.release("expiring", expiring.owner))
          assert.strictEqual(yield* backend.extend("expiring", expiring.owner, 1_000), "expired")
          assert.deepStrictEqual(
            (yield* LockBackend.inspect("expiring")).holders.map((h) => [h.owner, h.token]),
            [[next.owner, next.token]]
          )
          const nextKv = (yield* ownKv(server, prefix, "expiring", next.owner))!
          assert.deepStrictEqual(
            (yield* rawRange(server, prefix)).map((kv) => kv.key),
            [nextKv.key]
          )
          yield* next.release
        })
      )
  )

  it.live(
    "a TTL below the server's minimum lease: InvalidLockRequest (ttl) naming the minimum, no lease left; a TTL at the minimum works",
    () =>
      Effect.gen(function* () {
        // etcd grants at least 3/2 election timeouts, rounded up to whole seconds: with 1 s, 2 s.
        const slow = yield* Effect.acquireRelease(
          Effect.promise(async () => {
            const cluster = await startEtcd({ electionTimeoutMs: 1_000 })
            extraServers.push(cluster)
            return cluster
          }),
          (cluster) => Effect.promise(() => cluster.stop())
        )
        // What the server answers to a grant of 1 s (then revoked).
        const probe = yield* Effect.promise(() => slow.request("/v3/lease/grant", { TTL: 1 }))
        const minimum = Number(probe["TTL"])
        yield* Effect.promise(() => slow.request("/v3/lease/revoke", { ID: probe["ID"] }))
        assert.strictEqual(minimum, 2, "the server's minimum lease TTL")
        // This file's server (500 ms election timeout) grants 1 s as asked.
        const fast = yield* Effect.promise(() => server.request("/v3/lease/grant", { TTL: 1 }))
        yield* Effect.promise(() => server.request("/v3/lease/revoke", { ID: fast["ID"] }))
        assert.strictEqual(Number(fast["TTL"]), 1)

        const prefix = freshPrefix("min-ttl")
        const before = yield* leasesOf(slow)
        yield* Effect.gen(function* () {
          const attempts: ReadonlyArray<readonly [string, Effect.Effect<unknown, LockError, LockBackend>]> = [
            ["scoped", Effect.scoped(Lock.scoped("short", { ttl: "1 second" }))],
            ["tryScoped", Effect.scoped(Lock.tryScoped("short", { ttl: "800 millis" }))],
            ["semaphore", Effect.scoped(DistributedSemaphore.scoped("short-sem", { limit: 2, ttl: "1 second" }))]
          ]
          for (const [label, attempt] of attempts) {
            const error = yield* failureOf(attempt)
            assert.deepInclude(error as object, { _tag: "InvalidLockRequest", field: "ttl" }, label)
            assert.include((error as { reason: string }).reason, `at least ${minimum} s`, label)
            assert.deepStrictEqual(yield* keysUnder(slow, prefix), [], `${label}: keys left`)
            assert.deepStrictEqual(
              (yield* leasesOf(slow)).filter((lease) => !before.includes(lease)),
              [],
              `${label}: leases left`
            )
          }
          // 1.5 s rounds up to the minimum: granted, with a lease of 2 s.
          const lease = yield* Lock.scoped("short", { ttl: "1500 millis" })
          const kv = (yield* ownKv(slow, prefix, "short", lease.owner))!
          assert.deepInclude(yield* leaseTtl(slow, kv.lease), { granted: minimum })
          yield* lease.release
        }).pipe(Effect.scoped, Effect.provide(backendLayer(prefix, slow.endpoints)))
        yield* assertNothingLeft(slow, prefix, before)
      }).pipe(Effect.scoped),
    40_000
  )
})

describe("EtcdBackend: inspection", () => {
  it.live(
    "holders (owner, mode, token = create revision, lease expiry, metadata) and queued waiters of exclusive, read-write and semaphore names",
    () =>
      onServer("inspect", (prefix) =>
        Effect.gen(function* () {
          const before = Date.now()
          const odd = { "a/b": "c%2Fd e", role: "holder", "🔒": "é" }
          const ex = yield* Lock.scoped("ex", { ttl: "30 seconds", metadata: odd })
          Checks.assertExclusiveHolder((yield* LockBackend.inspect("ex")).holders, "ex", ex, odd, before)

          // A waiter shows up while it waits, and is the one granted next.
          const exWaiter = yield* Checks.forkWaiter("ex", hourRetry)
          yield* waitersReach("ex", 1)
          const queued = (yield* LockBackend.inspect("ex")).waiters[0]!
          assert.deepInclude(queued, { name: "ex", mode: "exclusive", permits: 1, metadata: { role: "waiter" } })
          assert.notStrictEqual(queued.owner, ex.owner)
          assert.isAtLeast(queued.since!, before - 1_000)
          yield* Checks.assertHandedToQueued("ex", ex, exWaiter, queued)

          // Read-write: two readers hold, a writer waits, a later reader queues behind it.
          const { r1, r2, writer } = yield* Checks.readersAndWriter(hourRetry)
          yield* waitersReach("rw", 1)
          const late = yield* Checks.forkLateReader(hourRetry)
          yield* waitersReach("rw", 2)
          const rw = yield* LockBackend.inspect("rw")
          Checks.assertReadWriteView(rw.holders, rw.waiters, r1, r2)

          // Semaphore: permits per holder, the agreed limit, a waiter for more than is left.
          const { s1, s2, semWaiter } = yield* Checks.semaphoreWithWaiter(hourRetry)
          yield* waitersReach("sem", 1)
          const sem = yield* LockBackend.inspect("sem")
          Checks.assertSemaphoreView(sem.holders, sem.waiters, s1, s2)
          assert.strictEqual(yield* DistributedSemaphore.available("sem"), 0)

          // Every token is its key's create revision, strictly increasing in the order of the grants.
          const held = [r1, r2, s1, s2]
          for (const lease of held) {
            const kv = yield* ownKv(server, prefix, lease.name, lease.owner)
            assert.strictEqual(kv?.create, lease.token, `${lease.name} token`)
          }
          const tokens = [ex.token, ...held.map((lease) => lease.token)]
          for (let k = 1; k < tokens.length; k++) assert.isTrue(tokens[k]! > tokens[k - 1]!, `token ${k}`)

          // inspect() lists every name under this prefix, holders and waiters alike.
          const all = yield* LockBackend.inspect()
          assert.deepStrictEqual([...new Set(all.holders.map((x) => x.name))].toSorted(), ["rw", "sem"])
          assert.deepStrictEqual(all.waiters.map((w) => [w.name, w.metadata["role"]]).toSorted(), [
            ["rw", "late"],
            ["rw", "w"],
            ["sem", "s3"]
          ])

          yield* r1.release
          yield* r2.release
          yield* Fiber.join(writer)
          yield* Fiber.join(late)
          yield* s1.release
          yield* Fiber.join(semWaiter)
          yield* s2.release
          assert.deepStrictEqual(yield* LockBackend.inspect(), { holders: [], waiters: [] })
        })
      )
  )

  it.live(
    "hostile names (`/`, `%`, spaces, emoji, ...) and a hostile owner id: one key per name, no collision, names and owners come back exactly, waiters woken by the right watch",
    () => {
      const hostile = [
        "/",
        "//",
        "a/b",
        "a",
        "a/",
        "%",
        "%2F",
        "a%2Fb",
        " ",
        "a b",
        "🔒",
        "emoji 🚀/x%y",
        "é",
        "..",
        "?#&=+",
        "\\0*"
      ]
      return onServer("hostile", (prefix) =>
        Effect.gen(function* () {
          const leases = yield* Effect.forEach(hostile, (name) =>
            Lock.scoped(name, { ttl: "30 seconds", metadata: { name } })
          )
          for (const lease of leases) assert.isTrue(lease.owner.startsWith("hôst/%2F 🔒:1/"), lease.owner)

          // One key per name, under the encoded name, ending in its lease id; the owner is in the value.
          const kvs = yield* rawRange(server, prefix)
          assert.strictEqual(kvs.length, hostile.length)
          assert.deepStrictEqual(
            kvs.map((kv) => kv.key).toSorted(),
            (yield* Effect.forEach(hostile, (name, i) => ownKv(server, prefix, name, leases[i]!.owner)))
              .map((kv) => kv?.key)
              .toSorted()
          )
          for (const [i, name] of hostile.entries()) {
            const own = yield* rawRange(server, `${prefix}${encodeURIComponent(name)}/`)
            assert.deepStrictEqual(
              own.map((kv) => [kv.key, ownerOf(kv), kv.create]),
              [[keyOf(prefix, name, own[0]!.lease), leases[i]!.owner, leases[i]!.token]],
              JSON.stringify(name)
            )
          }

          // Inspection returns the names and owners exactly as given.
          yield* Checks.assertNamesComeBack(hostile, leases)

          // A waiter on each name (one-hour retry) is woken by the release of that name's holder.
          const waiters = yield* Checks.forkTokenWaiters(hostile, hourRetry)
          yield* eventually(
            Effect.flatMap(LockBackend.inspect(), ({ waiters: queued }) =>
              check(queued.length === hostile.length, `${queued.length} queued`)
            )
          )
          const queued = (yield* LockBackend.inspect()).waiters
          assert.deepStrictEqual(queued.map((w) => w.name).toSorted(), [...hostile].toSorted())
          yield* Checks.assertEachWaiterWoken(hostile, leases, waiters)
        }).pipe(
          Effect.provideService(LockConfig.LockDefaults, {
            ttl: Duration.seconds(30),
            retry: LockConfig.retryExponential(),
            ownerId: "hôst/%2F 🔒:1"
          })
        )
      )
    }
  )
})

describe("EtcdBackend: configuration (LOCK_PROVIDER=etcd)", () => {
  it.live(
    "LOCK_ETCD_ENDPOINTS and LOCK_ETCD_PREFIX: the etcd backend, its keys under the prefix, the defaults applied",
    () => {
      const prefix = freshPrefix("env")
      const name = "configured"
      return Effect.gen(function* () {
        const before = yield* leasesOf(server)
        yield* Effect.gen(function* () {
          const backend = yield* LockBackend
          assert.strictEqual(backend.kind, "etcd")
          assert.strictEqual(backend.guarantees, EtcdBackend.guarantees)
          assert.strictEqual(backend.guarantees.fencing, "strict")
          const lease = yield* Lock.scoped(name)
          const kvs = yield* rawRange(server, prefix)
          assert.deepStrictEqual(
            kvs.map((kv) => [kv.key, ownerOf(kv)]),
            [[keyOf(prefix, name, kvs[0]!.lease), lease.owner]]
          )
          // LOCK_DEFAULT_TTL reached the lease; LOCK_OWNER_ID the owner.
          assert.deepInclude(yield* leaseTtl(server, kvs[0]!.lease), { granted: 5 })
          assert.isTrue(lease.owner.startsWith("configured-owner/"), lease.owner)
          // Not under the default prefix.
          assert.deepStrictEqual(yield* keysUnder(server, `${EtcdBackend.defaultPrefix}${name}/`), [])
          yield* Checks.assertSoleHolderThenRelease(name, lease)
        }).pipe(
          Effect.scoped,
          Effect.provide(
            fromEnv({
              LOCK_PROVIDER: "etcd",
              // Spaces and an empty entry around the commas are ignored.
              LOCK_ETCD_ENDPOINTS: ` ${endpoints.join(" , ")} ,`,
              LOCK_ETCD_PREFIX: prefix,
              LOCK_DEFAULT_TTL: "5 seconds",
              LOCK_OWNER_ID: "configured-owner"
            })
          )
        )
        yield* assertNothingLeft(server, prefix, before)
      })
    }
  )

  it.live("bad settings: no endpoints, only blanks, a prefix that is not well-formed", () =>
    Effect.gen(function* () {
      const before = yield* leasesOf(server)
      assert.strictEqual((yield* buildFailure({ LOCK_PROVIDER: "etcd" }))._tag, "ConfigError")
      assert.deepInclude(yield* buildFailure({ LOCK_PROVIDER: "etcd", LOCK_ETCD_ENDPOINTS: " , " }), {
        _tag: "InvalidLockRequest",
        field: "endpoints"
      })
      assert.deepInclude(
        yield* buildFailure({
          LOCK_PROVIDER: "etcd",
          LOCK_ETCD_ENDPOINTS: endpoints.join(","),
          LOCK_ETCD_PREFIX: `${freshPrefix("env-bad")}\uD800`
        }),
        { _tag: "InvalidLockRequest", field: "prefix" }
      )
      assert.deepStrictEqual(
        (yield* leasesOf(server)).filter((lease) => !before.includes(lease)),
        []
      )
    })
  )
})

/**
 * A rival (one-hour retry, woken by the deletion of the holder's key) takes
 * `name`; it must not get it before `lease`'s own `expiresAt`, and its token
 * must be greater. `before` runs once the rival has the name (e.g. to stop
 * the holder's fiber), and `what` names the holder in the message.
 */
const rivalNotBeforeExpiry = (
  name: string,
  ttl: Duration.Input,
  lease: Lease.Lease,
  what: string,
  before: Effect.Effect<void> = Effect.void
) =>
  Effect.gen(function* () {
    const state = yield* lease.state
    assert.strictEqual(state._tag, "Held")
    const expiresAt = state._tag === "Held" ? state.expiresAt : 0
    const rival = yield* Effect.scoped(
      Effect.map(Lock.scoped(name, { ttl, retry: hourRetry, timeout: "10 seconds" }), (l) => ({
        token: l.token,
        at: Date.now()
      }))
    )
    assert.isTrue(rival.token > lease.token)
    const after = (yield* lease.state)._tag
    yield* before
    assert.isAtLeast(
      rival.at,
      expiresAt,
      `a rival got the name ${expiresAt - rival.at} ms before ${what} said it expires (its state then: ${after})`
    )
  })

describe("EtcdBackend: bugs found (regressions)", () => {
  it.live(
    "a lock granted on a spare lease, without heartbeat: the server must not give the name away before the lease's own expiresAt",
    () =>
      onServer("spare", () =>
        Effect.gen(function* () {
          const ttl = "3 seconds"
          // A first grant of this TTL leaves a spare lease of 3 s in the pool...
          yield* Effect.scoped(Lock.scoped("warm", { ttl }))
          // ...which the next grant within ttl/3 takes: the scenario is its age.
          yield* Effect.sleep("900 millis")
          const lease = yield* Lock.scoped("job", { ttl, heartbeat: false, onLost: "ignore" })
          yield* rivalNotBeforeExpiry("job", ttl, lease, "the holder's lease")
        })
      ),
    20_000
  )

  it.live(
    "a queued waiter granted without heartbeat: the server must not give the name away before the lease's own expiresAt",
    () =>
      onServer("queued", () =>
        Effect.gen(function* () {
          const ttl = "3 seconds"
          const holder = yield* Lock.scoped("job", { ttl })
          const granted = yield* Deferred.make<Lease.Lease>()
          const waiter = yield* Effect.forkChild(
            Effect.scoped(
              Effect.flatMap(
                Lock.scoped("job", {
                  ttl,
                  heartbeat: false,
                  retry: hourRetry,
                  timeout: "10 seconds",
                  onLost: "ignore"
                }),
                (lease) => Effect.andThen(Deferred.succeed(granted, lease), Effect.never)
              )
            )
          )
          yield* waitersReach("job", 1)
          // The scenario: the holder lets go a little before the waiter's registration would be refreshed (ttl/3).
          yield* Effect.sleep("900 millis")
          yield* holder.release
          const lease = yield* Deferred.await(granted)
          yield* rivalNotBeforeExpiry("job", ttl, lease, "the granted waiter's lease", Fiber.interrupt(waiter))
        })
      ),
    20_000
  )

  it.live(
    "a heartbeat of ttl/2 is refused (its beat would be due when the lease is lost); just below keeps the lease",
    () =>
      onServer("heartbeat", () =>
        Effect.gen(function* () {
          const refused = yield* Effect.flip(
            Effect.scoped(Lock.scoped("job", { ttl: "2 seconds", heartbeat: "1 second", onLost: "ignore" }))
          )
          assert.deepInclude(refused, { _tag: "InvalidLockRequest", field: "heartbeat" })
          const lease = yield* Lock.scoped("job", { ttl: "2 seconds", heartbeat: "900 millis", onLost: "ignore" })
          // The scenario: one TTL and a half, i.e. past the first heartbeat and into the second TTL.
          yield* Effect.sleep(Duration.millis(millis("2 seconds") * 1.5))
          const state = yield* lease.state
          assert.strictEqual(state._tag, "Held", `after 3 s: ${state._tag === "Lost" ? state.reason : state._tag}`)
          yield* lease.release
        })
      )
  )
})
