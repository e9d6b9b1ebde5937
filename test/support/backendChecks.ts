/**
 * Checks shared by the backend tests of etcd and Redis (`test/etcd/backend.test.ts`, `test/redis/backend.test.ts`),
 * run on the backend in context: what inspection shows of exclusive holders, read-write and semaphore holders and
 * their waiters, names that come back exactly, bad input refused with `InvalidLockRequest` (before anything reaches
 * the server), and a double release.
 */
import { assert } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import {
  DistributedSemaphore,
  type HolderInfo,
  type Lease,
  Lock,
  LockBackend,
  type LockConfig,
  ReadWriteLock,
  type WaiterInfo
} from "../../src/index.ts"

/** A retry schedule for the waiters below (an hour long: only a change signal wakes them). */
type Retry = NonNullable<LockConfig.LockOptions["retry"]>

/** Lock metadata. */
type Metadata = Readonly<Record<string, string>>

/** One exclusive acquisition, released at once. */
export const lock = (name: string, options?: LockConfig.LockOptions) => Effect.scoped(Lock.scoped(name, options))

/** Holders (or their leases) in the order of their `role` metadata. */
export const byRole = (a: { readonly metadata: Metadata }, b: { readonly metadata: Metadata }) =>
  a.metadata["role"]!.localeCompare(b.metadata["role"]!)

/** Inspection's holders as rows: name, owner, mode, permits, limit, token, metadata. */
const holderRows = (holders: ReadonlyArray<HolderInfo>) =>
  holders.map((x) => [x.name, x.owner, x.mode, x.permits, x.limit, x.token, x.metadata])

/** Inspection's waiters as rows: name, mode, permits, metadata. */
const waiterRows = (waiters: ReadonlyArray<WaiterInfo>) => waiters.map((w) => [w.name, w.mode, w.permits, w.metadata])

/**
 * `holders` is one exclusive holder of `name`: `lease`, with `metadata`, acquired since `before` (ms, within a
 * second) and expiring within 31 seconds.
 */
export const assertExclusiveHolder = (
  holders: ReadonlyArray<HolderInfo>,
  name: string,
  lease: Lease.Lease,
  metadata: Metadata,
  before: number
): void => {
  assert.strictEqual(holders.length, 1)
  const h = holders[0]!
  assert.deepInclude(h, {
    name,
    owner: lease.owner,
    mode: "exclusive",
    permits: 1,
    limit: 1,
    token: lease.token,
    metadata
  })
  assert.isAtLeast(h.acquiredAt, before - 1_000)
  assert.isAtMost(h.acquiredAt, Date.now() + 1_000)
  assert.isDefined(h.expiresAt)
  assert.isAbove(h.expiresAt!, Date.now())
  assert.isAtMost(h.expiresAt!, Date.now() + 31_000)
}

/** A forked waiter for `name` (metadata `{ role: "waiter" }`), which gives its owner once granted. */
export const forkWaiter = (name: string, retry: Retry) =>
  Effect.forkChild(
    Effect.scoped(
      Effect.map(
        Lock.scoped(name, { retry, timeout: "20 seconds", metadata: { role: "waiter" } }),
        (lease) => lease.owner
      )
    )
  )

/** Releases `holder` of `name`: `waiter` (the fiber of `queued`) is the one granted next, then `name` is free. */
export const assertHandedToQueued = (
  name: string,
  holder: Lease.Lease,
  waiter: Fiber.Fiber<string, unknown>,
  queued: WaiterInfo
) =>
  Effect.gen(function* () {
    yield* holder.release
    assert.strictEqual(yield* Fiber.join(waiter), queued.owner, "the waiter shown is the one granted next")
    assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
  })

/** Two readers (`r1`, `r2`) hold `"rw"`, and a writer (`w`) is forked to wait for it. */
export const readersAndWriter = (retry: Retry) =>
  Effect.gen(function* () {
    const r1 = yield* ReadWriteLock.read("rw", { metadata: { role: "r1" } })
    const r2 = yield* ReadWriteLock.read("rw", { metadata: { role: "r2" } })
    const writer = yield* Effect.forkChild(
      Effect.scoped(ReadWriteLock.write("rw", { retry, timeout: "20 seconds", metadata: { role: "w" } }))
    )
    return { r1, r2, writer }
  })

/** A reader (`late`) forked to wait for `"rw"`, behind the writer. */
export const forkLateReader = (retry: Retry) =>
  Effect.forkChild(
    Effect.scoped(ReadWriteLock.read("rw", { retry, timeout: "20 seconds", metadata: { role: "late" } }))
  )

/** `"rw"`'s holders are the readers `r1` and `r2` (in this order), expiring within 31 s; the writer and `late` wait. */
export const assertReadWriteView = (
  holders: ReadonlyArray<HolderInfo>,
  waiters: ReadonlyArray<WaiterInfo>,
  r1: Lease.Lease,
  r2: Lease.Lease
): void => {
  assert.deepStrictEqual(holderRows(holders), [
    ["rw", r1.owner, "shared", 1, 1, r1.token, { role: "r1" }],
    ["rw", r2.owner, "shared", 1, 1, r2.token, { role: "r2" }]
  ])
  for (const reader of holders) {
    assert.isAbove(reader.expiresAt!, Date.now())
    assert.isAtMost(reader.expiresAt!, Date.now() + 31_000)
  }
  assert.deepStrictEqual(waiterRows(waiters), [
    ["rw", "exclusive", 1, { role: "w" }],
    ["rw", "shared", 1, { role: "late" }]
  ])
}

/** `s1` (2 permits) and `s2` (1) hold `"sem"` (limit 3), and `s3` is forked to wait for 2 permits. */
export const semaphoreWithWaiter = (retry: Retry) =>
  Effect.gen(function* () {
    const s1 = yield* DistributedSemaphore.scoped("sem", { limit: 3, permits: 2, metadata: { role: "s1" } })
    const s2 = yield* DistributedSemaphore.scoped("sem", { limit: 3, metadata: { role: "s2" } })
    const semWaiter = yield* Effect.forkChild(
      Effect.scoped(
        DistributedSemaphore.scoped("sem", {
          limit: 3,
          permits: 2,
          retry,
          timeout: "20 seconds",
          metadata: { role: "s3" }
        })
      )
    )
    return { s1, s2, semWaiter }
  })

/** `"sem"`'s holders are `s1` and `s2` (in this order), and `s3` waits for 2 permits. */
export const assertSemaphoreView = (
  holders: ReadonlyArray<HolderInfo>,
  waiters: ReadonlyArray<WaiterInfo>,
  s1: Lease.Lease,
  s2: Lease.Lease
): void => {
  assert.deepStrictEqual(holderRows(holders), [
    ["sem", s1.owner, "permits", 2, 3, s1.token, { role: "s1" }],
    ["sem", s2.owner, "permits", 1, 3, s2.token, { role: "s2" }]
  ])
  assert.deepStrictEqual(waiterRows(waiters), [["sem", "permits", 2, { role: "s3" }]])
}

/**
 * Inspection returns the names exactly as given: `leases[i]` holds `names[i]` (with metadata `{ name }`), and
 * nothing else is held.
 */
export const assertNamesComeBack = (names: ReadonlyArray<string>, leases: ReadonlyArray<Lease.Lease>) =>
  Effect.gen(function* () {
    const { holders } = yield* LockBackend.inspect()
    assert.deepStrictEqual(holders.map((h) => h.name).toSorted(), [...names].toSorted())
    for (const [i, name] of names.entries()) {
      const one = (yield* LockBackend.inspect(name)).holders
      assert.deepStrictEqual(
        one.map((h) => [h.name, h.owner, h.token, h.metadata]),
        [[name, leases[i]!.owner, leases[i]!.token, { name }]]
      )
    }
  })

/** A forked waiter on each of `names`, each giving its token once granted. */
export const forkTokenWaiters = (names: ReadonlyArray<string>, retry: Retry) =>
  Effect.forEach(names, (name) =>
    Effect.forkChild(Effect.scoped(Effect.map(Lock.scoped(name, { retry, timeout: "10 seconds" }), (l) => l.token)))
  )

/** Releases every `leases[i]`: each `waiters[i]` is woken and granted `names[i]` with a greater token. */
export const assertEachWaiterWoken = (
  names: ReadonlyArray<string>,
  leases: ReadonlyArray<Lease.Lease>,
  waiters: ReadonlyArray<Fiber.Fiber<bigint, unknown>>
) =>
  Effect.gen(function* () {
    yield* Effect.forEach(leases, (lease) => lease.release, { concurrency: "unbounded", discard: true })
    const tokens = yield* Fiber.joinAll(waiters)
    for (const [i, token] of tokens.entries()) assert.isTrue(token > leases[i]!.token, names[i])
  })

/** `lease` is the only holder of anything (on `name`); then it is released. */
export const assertSoleHolderThenRelease = (name: string, lease: Lease.Lease) =>
  Effect.gen(function* () {
    assert.deepStrictEqual(
      (yield* LockBackend.inspect()).holders.map((h) => [h.name, h.owner]),
      [[name, lease.owner]]
    )
    yield* lease.release
  })

/** Takes `name`, releases it, and releases it again: `LockNotHeld` (released), and nothing is left on `name`. */
export const assertReleasedTwice = (name: string) =>
  Effect.gen(function* () {
    const once = yield* Lock.scoped(name)
    yield* once.release
    assert.deepInclude(yield* Effect.flip(once.release), {
      _tag: "LockNotHeld",
      name,
      owner: once.owner,
      state: "released"
    })
    assert.deepStrictEqual(yield* LockBackend.inspect(name), { holders: [], waiters: [] })
  })

/**
 * Checks that an effect fails with `InvalidLockRequest` on `field`, and that nothing was written (`keysLeft` is
 * empty): made by `invalidChecker`.
 */
export type Invalid<RX> = <A, E, R>(
  field: string,
  effect: Effect.Effect<A, E, R>
) => Effect.Effect<void, unknown, R | RX>

/** The `invalid` check of the bad-input tests, with `keysLeft` reading the keys written under the test's prefix. */
export const invalidChecker =
  <RX>(keysLeft: Effect.Effect<ReadonlyArray<string>, unknown, RX>): Invalid<RX> =>
  (field, effect) =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(effect)
      assert.deepInclude(error as object, { _tag: "InvalidLockRequest", field })
      assert.deepStrictEqual(yield* keysLeft, [], `${field}: keys written`)
    })

/** Names refused for their length (empty, over 1024 bytes) or for a lone surrogate. */
export const badNames = <RX>(invalid: Invalid<RX>) =>
  Effect.gen(function* () {
    yield* invalid("name", lock(""))
    yield* invalid("name", lock("x".repeat(1025)))
    yield* invalid("name", lock("é".repeat(513)))
    yield* invalid("name", lock("\uD800"))
  })

/** TTLs refused: zero and negative. */
export const badTtls = <RX>(invalid: Invalid<RX>) =>
  Effect.gen(function* () {
    yield* invalid("ttl", lock("t", { ttl: 0 }))
    yield* invalid("ttl", lock("t", { ttl: -1 }))
    yield* invalid("ttl", lock("t", { ttl: "-5 seconds" }))
  })

/**
 * Semaphore sizes refused (a limit of 0 or 1.5, more permits than the limit, none), and a lone surrogate in a name
 * given to the backend directly (it cannot be sent as UTF-8).
 */
export const badSizesAndDirectName = <RX>(invalid: Invalid<RX>) =>
  Effect.gen(function* () {
    yield* invalid("limit", Effect.scoped(DistributedSemaphore.scoped("s", { limit: 0 })))
    yield* invalid("limit", Effect.scoped(DistributedSemaphore.scoped("s", { limit: 1.5 })))
    yield* invalid("permits", Effect.scoped(DistributedSemaphore.scoped("s", { limit: 2, permits: 3 })))
    yield* invalid("permits", Effect.scoped(DistributedSemaphore.scoped("s", { limit: 2, permits: 0 })))
    // The backend refuses a lone surrogate itself (it cannot be sent as UTF-8), also when called directly.
    const backend = yield* LockBackend
    yield* invalid(
      "name",
      backend.tryAcquire({
        name: "\uD83D",
        owner: "direct/1",
        mode: "exclusive",
        permits: 1,
        limit: 1,
        ttlMillis: 1_000,
        metadata: {},
        queue: false
      })
    )
  })
