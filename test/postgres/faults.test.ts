/**
 * Fault tests of the PostgreSQL backend against a real server, no mocks: a
 * lock session terminated on the server, a network partition (blackhole)
 * and a slow link between the backend and the server (the TCP fault proxy),
 * and interruption of waiters and holders. Every test uses its own
 * `application_name` and ends with the server-side leak check once its
 * layer is closed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Option, Schedule } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Lock, LockBackend, LockConfig, type LockLost } from "../../src/index.ts"
import { PostgresBackend } from "../../src/postgres/index.ts"
import { FaultyBackend } from "../../src/testing/index.ts"
import { holdInFiber, insideWithLock, lossOf } from "../support/leases.ts"
import * as TcpProxy from "../support/TcpProxy.ts"
import { admin, advisoryLocksOf, assertNothingLeft, backendLayer, eventually, freshAppName, url } from "./harness.ts"

/** Distinct pids of the sessions of `applicationName` that hold advisory locks, ascending. */
const lockPids = (applicationName: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const rows = yield* sql<{ readonly pid: number }>`
      SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
      WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = ${applicationName}`
    return rows.map((row) => Number(row.pid)).toSorted((a, b) => a - b)
  })

/** Polls `effect` (at most ~5 s) until `check` holds for its value, and returns it; dies if it never does. */
const until = <A, E, R>(effect: Effect.Effect<A, E, R>, check: (a: A) => boolean) =>
  effect.pipe(
    Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: check, times: 500 }),
    Effect.flatMap((a) => (check(a) ? Effect.succeed(a) : Effect.die(new Error("the condition was never reached"))))
  )

/** A fault proxy to the test server, closed with the scope, and the URL that goes through it. */
const proxyToServer = Effect.gen(function* () {
  const target = new URL(url)
  const proxy = yield* Effect.acquireRelease(
    Effect.promise(() =>
      TcpProxy.start({ targetHost: target.hostname, targetPort: target.port === "" ? 5432 : Number(target.port) })
    ),
    (started) => Effect.promise(() => started.close())
  )
  const proxied = new URL(url)
  proxied.hostname = proxy.host
  proxied.port = String(proxy.port)
  return { proxy, url: proxied.toString() }
})

/** A retry so long that only a change signal can wake a waiter during a test. */
const hourRetry = LockConfig.retryLinear({ initial: "1 hour", max: "1 hour", jitter: false })

const millis = (input: Duration.Input) => Duration.toMillis(Duration.fromInputUnsafe(input))

describe("postgres faults", () => {
  it.live(
    "a lock session terminated on the server: every lease on it is lost at once (connection-closed), another process takes the names, the session is never reused",
    () => {
      const appName = freshAppName("kill")
      const otherApp = freshAppName("other")
      const options = { sessions: 1, healthCheckInterval: "300 millis", statementTimeout: "1 second" } as const
      // Far beyond the detection bound: the core's own heartbeat cannot be what notices.
      const ttl = Duration.seconds(10)
      // A noisy machine may run a timer that much late.
      const marginMillis = 500
      const bound = millis(options.healthCheckInterval) + millis(options.statementTimeout) + marginMillis
      const names = [0, 1, 2].map((i) => `${appName}-n${i}`)
      return Effect.gen(function* () {
        const sql = yield* SqlClient
        const leases = yield* Effect.forEach(names, (name) => Lock.scoped(name, { ttl, onLost: "ignore" }))
        // All three on the one lock session.
        const before = yield* lockPids(appName)
        assert.strictEqual(before.length, 1, "one lock session")
        assert.strictEqual(yield* advisoryLocksOf(appName), 3)
        const killed = before[0]!
        const losses = yield* Effect.forEach(leases, (lease) => Effect.forkChild(lossOf(lease)))

        const terminated = yield* sql<{ readonly ok: boolean }>`SELECT pg_terminate_backend(${killed}) AS ok`
        const terminatedAt = yield* Clock.currentTimeMillis
        assert.isTrue(terminated[0]?.ok, "the lock session was terminated")

        const lost = yield* Fiber.joinAll(losses)
        for (const [i, { error, at }] of lost.entries()) {
          assert.strictEqual(error.name, names[i])
          assert.strictEqual(error.token, leases[i]!.token)
          assert.strictEqual(error.reason, "connection-closed")
          assert.isAtMost(at - terminatedAt, bound, `lease ${i} reported lost ${at - terminatedAt} ms after`)
          const state = yield* leases[i]!.state
          assert.deepInclude(state, { _tag: "Lost", reason: "connection-closed" })
        }

        // The server dropped the terminated session's locks: another process gets every name at once.
        assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
        const otherTokens = yield* Effect.scoped(
          Effect.forEach(names, (name) =>
            Effect.map(Lock.tryScoped(name, { ttl }), (lease) => {
              assert.isTrue(Option.isSome(lease), `${name} is free for another process`)
              return Option.getOrThrow(lease).token
            })
          )
        ).pipe(Effect.provide(backendLayer(otherApp, options)))
        for (const [i, token] of otherTokens.entries()) assert.isTrue(token > leases[i]!.token)
        yield* assertNothingLeft(otherApp)

        // The first process goes on, on a new session: the terminated one is never used again.
        const fresh = yield* Lock.scoped(`${appName}-fresh`, { ttl, onLost: "ignore" })
        const after = yield* lockPids(appName)
        assert.strictEqual(after.length, 1)
        assert.notStrictEqual(after[0], killed, "a new lock session")
        assert.isTrue(fresh.token > otherTokens[2]!)
        yield* fresh.extend()
        assert.strictEqual((yield* fresh.state)._tag, "Held")

        // Once the lost leases are given up, their names can be taken again in this process too.
        for (const lease of leases) {
          const error = yield* Effect.flip(lease.release)
          assert.deepInclude(error, { _tag: "LockNotHeld", state: "lost" })
        }
        const again = yield* Effect.scoped(Lock.tryScoped(names[0]!, { ttl }))
        assert.isTrue(Option.isSome(again), "a lost and released name can be taken again")
        const pids = yield* lockPids(appName)
        assert.notInclude(pids, killed)
        yield* fresh.release
        assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName, options)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    }
  )

  it.live(
    "a terminated session takes only its own leases; a waiter of the same process is handed the name by signal once the lost holder stopped",
    () => {
      const appName = freshAppName("kill2")
      const options = { sessions: 2, healthCheckInterval: "300 millis", statementTimeout: "1 second" } as const
      const ttl = Duration.seconds(10)
      const first = `${appName}-first`
      const second = `${appName}-second`
      return Effect.gen(function* () {
        const sql = yield* SqlClient
        const entered = yield* Deferred.make<void>()
        const holder = yield* Effect.forkChild(
          Lock.withLock(first, { ttl })(Effect.andThen(Deferred.succeed(entered, undefined), Effect.never))
        )
        yield* Deferred.await(entered)
        // The first session has a hold and a second may be opened: the next lease goes there.
        const bystander = yield* Lock.scoped(second, { ttl, onLost: "ignore" })
        const held = yield* PostgresBackend.serverLocks({ names: [first, second] })
        const pidOf = (name: string) => held.find((lock) => lock.name === name && lock.granted)?.pid
        const killed = pidOf(first)
        assert.isDefined(killed)
        assert.isDefined(pidOf(second))
        assert.notStrictEqual(killed, pidOf(second), "two lock sessions")

        // A waiter that only a signal can wake in time: its retry interval is an hour, and its
        // refresh attempt (ttl/3) comes after its timeout.
        const waiter = yield* Effect.forkChild(
          Lock.withLock(first, { ttl, retry: hourRetry, timeout: Duration.divideUnsafe(ttl, 4) })(Effect.succeed("ran"))
        )
        yield* until(LockBackend.inspect(first), (inspection) => inspection.waiters.length === 1)

        yield* sql`SELECT pg_terminate_backend(${killed!})`
        const exit = yield* Fiber.await(holder)
        const failure = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
        assert.deepInclude(Option.getOrUndefined(failure) as LockLost, {
          _tag: "LockLost",
          name: first,
          reason: "connection-closed"
        })
        assert.strictEqual(yield* Fiber.join(waiter), "ran")

        // The lease on the other session is untouched: a fresh check of its session passes.
        yield* bystander.extend()
        assert.strictEqual((yield* bystander.state)._tag, "Held")
        const after = yield* PostgresBackend.serverLocks({ names: [first, second] })
        assert.deepStrictEqual(
          after.filter((lock) => lock.name === second).map((lock) => lock.pid),
          [pidOf(second)!]
        )
        yield* bystander.release
        assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName, options)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    }
  )

  it.live(
    "the LISTEN connection terminated: a waiter is still woken by another process's release (no notification is lost for good)",
    () => {
      const appName = freshAppName("listen")
      const otherApp = freshAppName("releaser")
      const name = `${appName}-name`
      const ttl = Duration.seconds(30)
      return Effect.gen(function* () {
        const sql = yield* SqlClient
        // Another process holds the name until told to release it.
        const release = yield* Deferred.make<void>()
        const taken = yield* Deferred.make<void>()
        const other = yield* Effect.forkChild(
          Effect.scoped(
            Effect.gen(function* () {
              const lease = yield* Lock.scoped(name, { ttl, onLost: "ignore" })
              yield* Deferred.succeed(taken, undefined)
              yield* Deferred.await(release)
              yield* lease.release
            })
          ).pipe(Effect.provide(backendLayer(otherApp)))
        )
        yield* Deferred.await(taken)
        // Observed through a wrapper: its attempt right after subscribing has answered, so it waits.
        const { backend, control } = yield* FaultyBackend.make(yield* LockBackend)
        const waiter = yield* Effect.forkChild(
          Lock.withLock(name, { ttl, retry: hourRetry, timeout: Duration.divideUnsafe(ttl, 6) })(
            Effect.succeed("ran")
          ).pipe(Effect.provideService(LockBackend, backend))
        )
        yield* until(control.calls, (calls) => calls.subscribe >= 1 && calls.tryAcquire >= 2)

        // This process's LISTEN connection dies and the release follows at once: its notification
        // may well come while nobody listens.
        const listeners = yield* sql<{ readonly pid: number }>`
          SELECT pid FROM pg_stat_activity WHERE application_name = ${appName} AND query ILIKE 'LISTEN%'`
        assert.strictEqual(listeners.length, 1, "one LISTEN connection")
        yield* sql`SELECT pg_terminate_backend(${listeners[0]!.pid})`
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(other)
        assert.strictEqual(yield* Fiber.join(waiter), "ran")
        yield* assertNothingLeft(otherApp)
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    }
  )

  it.live(
    "a network partition (blackhole): the holder loses the lease (unreachable) within ttl/2 of its last good moment; the server drops the lock once the link is reset",
    () => {
      const appName = freshAppName("partition")
      const ttl = Duration.seconds(2)
      const ttlMillis = millis(ttl)
      // Longer than ttl/2: the core's loss deadline must act, not the statement deadline.
      const statementTimeout = Duration.millis(1_500)
      const marginMillis = 300
      const name = `${appName}-held`
      return Effect.gen(function* () {
        const { proxy, url: proxied } = yield* proxyToServer
        yield* Effect.gen(function* () {
          const { holder, lease } = yield* holdInFiber(name, ttl)
          assert.strictEqual(yield* advisoryLocksOf(appName), 1)
          // The last moment the lease was known good, as the lease reports it (expiresAt - ttl),
          // recorded by a watcher until the lease is lost.
          let lastGood = lease.acquiredAt
          const watcher = yield* Effect.forkChild(
            Effect.gen(function* () {
              while (true) {
                const state = yield* lease.state
                if (state._tag !== "Held") return
                lastGood = state.expiresAt - ttlMillis
                yield* Effect.sleep("5 millis")
              }
            })
          )
          // Let one extension through first, so that the bound counts from an extension, not the grant.
          const grantedGood = lastGood
          yield* until(
            Effect.sync(() => lastGood),
            (good) => good > grantedGood
          )
          const loss = yield* Effect.forkChild(lossOf(lease))

          proxy.mode("blackhole")
          const cutAt = yield* Clock.currentTimeMillis
          const { error, at } = yield* Fiber.join(loss)
          yield* Fiber.join(watcher)
          assert.strictEqual(error.reason, "unreachable")
          assert.isAtMost(lastGood, cutAt)
          assert.isAtMost(
            at - lastGood,
            ttlMillis / 2 + marginMillis,
            `lost ${at - lastGood} ms after the last good moment (cut ${cutAt - lastGood} ms after it)`
          )
          // The holder's critical section was stopped with the loss.
          const exit = yield* Fiber.await(holder)
          assert.isTrue(Exit.isFailure(exit))
          const failure = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
          assert.deepInclude(Option.getOrUndefined(failure) as LockLost, {
            _tag: "LockLost",
            name,
            reason: "unreachable"
          })

          // Heal: the server-side socket of the cut-off session closes, and its lock goes with it.
          proxy.mode("pass")
          proxy.reset()
          assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
          // And the backend works again over the healed link.
          const again = yield* Effect.scoped(Lock.tryScoped(name, { ttl })).pipe(
            Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 50 })
          )
          assert.isTrue(Option.isSome(again), "the name can be taken again once the link is healthy")
        }).pipe(
          Effect.scoped,
          Effect.provide(
            backendLayer(appName, { url: proxied, sessionIdleTimeout: "4 seconds", statementTimeout, sessions: 1 })
          )
        )
        yield* assertNothingLeft(appName)
      }).pipe(Effect.scoped, Effect.provide(admin))
    }
  )

  it.live(
    "a lock session with nothing but a heartbeat-less lease on it is not ended by idle_session_timeout while the lease reports Held",
    () => {
      const appName = freshAppName("quiet")
      const otherApp = freshAppName("taker")
      const name = `${appName}-name`
      // Accepted options: ttl + statementTimeout is below sessionIdleTimeout, as the backend demands.
      // The health check is the only statement such a session sees, and the configured interval is
      // longer than the idle timeout: the backend must check more often than that on its own.
      const options = {
        sessionIdleTimeout: "2 seconds",
        healthCheckInterval: "3 seconds",
        statementTimeout: "200 millis"
      } as const
      const ttl = Duration.millis(1_500)
      return Effect.gen(function* () {
        const lease = yield* Lock.scoped(name, { ttl, heartbeat: false, onLost: "ignore" })
        // Another process tries the name again and again until the lease is no longer Held. Whenever it
        // gets it, the lease must already have stopped reporting Held.
        const violations = yield* Effect.gen(function* () {
          const found: Array<string> = []
          while ((yield* lease.state)._tag === "Held") {
            const other = yield* Effect.scoped(Lock.tryScoped(name, { ttl }))
            const after = yield* lease.state
            if (Option.isSome(other) && after._tag === "Held") {
              found.push(`${(yield* Clock.currentTimeMillis) - lease.acquiredAt} ms after the grant`)
            }
            yield* Effect.sleep("50 millis")
          }
          return found
        }).pipe(Effect.provide(backendLayer(otherApp)))
        assert.deepStrictEqual(
          violations,
          [],
          "another process was granted the name while the lease still reported Held"
        )
        yield* assertNothingLeft(otherApp)
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName, options)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    }
  )

  describe("interruption", () => {
    it.live("a waiter interrupted while waiting leaves nothing behind; the holder is untouched", () => {
      const appName = freshAppName("waiter")
      const name = `${appName}-name`
      return Effect.gen(function* () {
        const holder = yield* Lock.scoped(name, { onLost: "ignore" })
        const waiters = yield* Effect.forEach([0, 1, 2], () =>
          Effect.forkChild(Lock.withLock(name)(Effect.succeed("ran")))
        )
        yield* until(LockBackend.inspect(name), (inspection) => inspection.waiters.length === 3)
        yield* Fiber.interrupt(waiters[1]!)
        yield* Fiber.interrupt(waiters[0]!)
        const exits = yield* Effect.forEach(waiters.slice(0, 2), Fiber.await)
        for (const exit of exits) assert.isTrue(Exit.hasInterrupts(exit), "interrupted while waiting")
        const inspected = yield* LockBackend.inspect(name)
        assert.strictEqual(inspected.waiters.length, 1, "only the remaining waiter is queued")
        assert.strictEqual(inspected.holders.length, 1)
        assert.strictEqual(yield* advisoryLocksOf(appName), 1, "only the holder's lock on the server")
        assert.strictEqual((yield* holder.state)._tag, "Held")

        // The remaining waiter gets it; then nobody holds anything, on the server either.
        yield* holder.release
        assert.strictEqual(yield* Fiber.join(waiters[2]!), "ran")
        assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
        assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    })

    it.live(
      "a holder interrupted inside withLock releases the lock on the server before the interruption returns",
      () => {
        const appName = freshAppName("holder")
        const name = `${appName}-name`
        return Effect.gen(function* () {
          const inside = yield* insideWithLock(name)
          assert.strictEqual(yield* advisoryLocksOf(appName), 1)
          yield* inside.interrupt
          // The unlock has been answered by the server when the interruption returns.
          assert.strictEqual(yield* advisoryLocksOf(appName), 0)
          assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
          // And the name is free at once.
          assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))))
        }).pipe(
          Effect.scoped,
          Effect.provide(backendLayer(appName)),
          Effect.andThen(assertNothingLeft(appName)),
          Effect.provide(admin)
        )
      }
    )

    it.live("acquisitions interrupted at arbitrary points, contended or not, leave nothing on the server", () => {
      const appName = freshAppName("churn")
      const name = `${appName}-name`
      return Effect.gen(function* () {
        for (let i = 0; i < 40; i++) {
          // Interrupt after a varying amount of progress: before the grant statement, during it
          // (the grant is uninterruptible), while holding, or while waiting behind another fiber.
          const fibers = yield* Effect.forEach([0, 1], () =>
            Effect.forkChild(Lock.withLock(name, { ttl: "5 seconds" })(Effect.yieldNow))
          )
          yield* Effect.sleep(Duration.millis(i % 8))
          yield* Fiber.interrupt(fibers[i % 2]!)
          yield* Fiber.await(fibers[1 - (i % 2)]!)
        }
        assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
        assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
        // The name still works.
        assert.isTrue(Option.isSome(yield* Effect.scoped(Lock.tryScoped(name))))
      }).pipe(
        Effect.scoped,
        Effect.provide(backendLayer(appName)),
        Effect.andThen(assertNothingLeft(appName)),
        Effect.provide(admin)
      )
    })
  })

  it.live(
    "a statement deadline: on a link slower than statementTimeout, tryScoped fails with LockBackendUnavailable instead of hanging, with or without a lock session open",
    () => {
      const appName = freshAppName("slow")
      const name = `${appName}-name`
      const heldName = `${appName}-held`
      const options = {
        statementTimeout: Duration.millis(500),
        healthCheckInterval: "300 millis",
        sessions: 1
      } as const
      const statementMillis = millis(options.statementTimeout)
      const delayMillis = 3_000
      // The attempt may wait for one statement in flight on its session (a health check), then
      // runs its own: two deadlines, plus a margin for the noisy machine. Far below the delay.
      const bound = 2 * statementMillis + 500
      return Effect.gen(function* () {
        const { proxy, url: proxied } = yield* proxyToServer

        /** One attempt on the slow link: a typed LockBackendUnavailable, within the bound. */
        const attemptOnSlowLink = Effect.gen(function* () {
          const startedAt = yield* Clock.currentTimeMillis
          const exit = yield* Effect.exit(Effect.scoped(Lock.tryScoped(name)))
          const elapsed = (yield* Clock.currentTimeMillis) - startedAt
          assert.isTrue(Exit.isFailure(exit), "no grant over a link that answers too late")
          const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
          assert.strictEqual(Option.getOrUndefined(error)?._tag, "LockBackendUnavailable")
          assert.isAtMost(elapsed, bound, `failed after ${elapsed} ms`)
          assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
        })

        /** Back to a healthy link: the delayed connections are dropped, the server holds nothing of ours. */
        const heal = Effect.gen(function* () {
          proxy.mode("pass")
          proxy.reset()
          assert.strictEqual(yield* eventually(advisoryLocksOf(appName), 0), 0)
        })

        yield* Effect.gen(function* () {
          // No lock session yet: opening one misses the deadline.
          proxy.mode({ delay: delayMillis })
          yield* attemptOnSlowLink
          yield* heal

          // The backend works again on the healthy link; this lease keeps the (only) lock session open.
          const held = yield* Lock.scoped(heldName, { onLost: "ignore" }).pipe(
            Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 50 })
          )
          assert.strictEqual(yield* advisoryLocksOf(appName), 1)

          // The link slows down under an open session: the attempt misses the deadline on it, and
          // the session is given up, so the lease it carried is lost (unreachable) right away.
          proxy.mode({ delay: delayMillis })
          const slowAt = yield* Clock.currentTimeMillis
          yield* attemptOnSlowLink
          const lost = yield* held.lost
          assert.strictEqual(lost.reason, "unreachable")
          assert.isAtMost((yield* Clock.currentTimeMillis) - slowAt, bound)
          yield* heal

          // And once more it recovers.
          const again = yield* Effect.scoped(Lock.tryScoped(name)).pipe(
            Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 50 })
          )
          assert.isTrue(Option.isSome(again), "the backend works again once the link is healthy")
        }).pipe(Effect.scoped, Effect.provide(backendLayer(appName, { url: proxied, ...options })))
        yield* assertNothingLeft(appName)
      }).pipe(Effect.scoped, Effect.provide(admin))
    }
  )
})
