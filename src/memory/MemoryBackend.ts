/**
 * The in-process backend: the default, what `npm run demo` uses, and the test
 * double of the core logic.
 *
 * **Details**
 *
 * Exclusive, shared and permit holds per name, with TTLs on Effect's `Clock`
 * (so `TestClock` drives them), one fencing counter, FIFO waiters and push
 * wake-ups: a release, a withdrawn waiter or an expiry completes the waiters'
 * signals, no polling. Every operation is synchronous, so each one is atomic.
 *
 * **Gotchas**
 *
 * Mutual exclusion holds within one process only. Fencing tokens come from
 * one counter shared by all names: strictly increasing per name, as the
 * contract asks, and no per-name state outlives the last holder or waiter.
 *
 * @since 0.1.0
 */
import { Effect, Layer, Option } from "effect"
import {
  type Grant,
  type GrantRequest,
  type HolderInfo,
  type Inspection,
  LockBackend,
  type LockBackendShape,
  type LockMode,
  registerProvider,
  type WaiterInfo
} from "../LockBackend.ts"
import { type Listener, makeListener, signal, waitForChange } from "../internal/changeSignal.ts"
import { InvalidLockRequest } from "../LockError.ts"

interface Holder {
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  readonly token: bigint
  readonly acquiredAt: number
  expiresAt: number
  readonly metadata: Readonly<Record<string, string>>
}

interface Waiter {
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  readonly since: number
  /** A registration lives one TTL unless its owner attempts again (the core refreshes every ttl/3). */
  expiresAt: number
  readonly metadata: Readonly<Record<string, string>>
}

interface Entry {
  /** `lock` for exclusive and shared holds, `semaphore` for permits; fixed while anyone holds or waits. */
  kind: "lock" | "semaphore" | undefined
  limit: number
  readonly holders: Map<string, Holder>
  waiters: Array<Waiter>
  readonly listeners: Set<Listener>
}

const kindOf = (mode: LockMode) => (mode === "permits" ? "semaphore" : "lock")

/**
 * Creates a fresh in-memory store. Each call is an independent store: share
 * one service value (or one layer) between the fibers that must exclude
 * each other.
 *
 * @since 0.1.0
 */
export const make: Effect.Effect<LockBackendShape> = Effect.sync(() => {
  const entries = new Map<string, Entry>()
  let counter = 0n

  const entryFor = (name: string): Entry => {
    let entry = entries.get(name)
    if (entry === undefined) {
      entry = { kind: undefined, limit: 1, holders: new Map(), waiters: [], listeners: new Set() }
      entries.set(name, entry)
    }
    return entry
  }

  const notify = (entry: Entry) => {
    for (const listener of entry.listeners) signal(listener)
  }

  const gc = (name: string, entry: Entry) => {
    if (entry.holders.size === 0 && entry.waiters.length === 0) {
      entry.kind = undefined
      if (entry.listeners.size === 0) entries.delete(name)
    }
  }

  /** Drops expired holders and waiter registrations; wakes the waiters when any was dropped. */
  const sweep = (entry: Entry, now: number) => {
    let swept = false
    for (const [owner, holder] of entry.holders) {
      if (holder.expiresAt <= now) {
        entry.holders.delete(owner)
        swept = true
      }
    }
    const live = entry.waiters.filter((waiter) => waiter.expiresAt > now)
    if (live.length !== entry.waiters.length) {
      entry.waiters = live
      swept = true
    }
    if (swept) notify(entry)
  }

  const eligible = (entry: Entry, request: GrantRequest, position: number): boolean => {
    const ahead = entry.waiters.slice(0, position)
    switch (request.mode) {
      case "exclusive":
        return entry.holders.size === 0 && ahead.length === 0
      case "shared": {
        for (const holder of entry.holders.values()) if (holder.mode === "exclusive") return false
        // Readers queue behind an earlier waiting writer: writers never starve.
        return !ahead.some((waiter) => waiter.mode === "exclusive")
      }
      case "permits": {
        let held = 0
        for (const holder of entry.holders.values()) held += holder.permits
        return held + request.permits <= entry.limit && ahead.length === 0
      }
    }
  }

  const tryAcquire = (request: GrantRequest) =>
    Effect.clockWith((clock) => {
      const now = clock.currentTimeMillisUnsafe()
      const entry = entryFor(request.name)
      sweep(entry, now)
      const kind = kindOf(request.mode)
      const busy = entry.holders.size > 0 || entry.waiters.length > 0
      if (busy && entry.kind !== kind) {
        gc(request.name, entry)
        return Effect.fail(
          new InvalidLockRequest({
            field: "mode",
            reason: `"${request.name}" is in use as a ${entry.kind}, not as a ${kind}`
          })
        )
      }
      if (busy && kind === "semaphore" && entry.limit !== request.limit) {
        gc(request.name, entry)
        return Effect.fail(
          new InvalidLockRequest({
            field: "limit",
            reason: `"${request.name}" is in use with limit ${entry.limit}, not ${request.limit}`
          })
        )
      }
      const existing = entry.holders.get(request.owner)
      if (existing !== undefined) {
        // A repeated request (e.g. a retry after a lost answer) gets the same grant.
        existing.expiresAt = now + request.ttlMillis
        return Effect.succeed(Option.some<Grant>({ token: existing.token }))
      }
      entry.kind = kind
      entry.limit = request.limit
      const index = entry.waiters.findIndex((waiter) => waiter.owner === request.owner)
      const position = index === -1 ? entry.waiters.length : index
      if (!eligible(entry, request, position)) {
        if (request.queue && index === -1) {
          entry.waiters.push({
            owner: request.owner,
            mode: request.mode,
            permits: request.permits,
            since: now,
            expiresAt: now + request.ttlMillis,
            metadata: request.metadata
          })
        } else if (index !== -1) {
          entry.waiters[index]!.expiresAt = now + request.ttlMillis
        }
        gc(request.name, entry)
        return Effect.succeed(Option.none<Grant>())
      }
      if (index !== -1) entry.waiters.splice(index, 1)
      counter += 1n
      entry.holders.set(request.owner, {
        owner: request.owner,
        mode: request.mode,
        permits: request.permits,
        token: counter,
        acquiredAt: now,
        expiresAt: now + request.ttlMillis,
        metadata: request.metadata
      })
      const grant = Option.some<Grant>({ token: counter })
      // A queued permit holder left the queue with permits to spare: the next
      // waiter may fit now. Signalled from another fiber, after this answer,
      // since a signal resumes waiters at once.
      if (index !== -1 && request.mode === "permits" && entry.waiters.length > 0) {
        let held = 0
        for (const holder of entry.holders.values()) held += holder.permits
        if (held < entry.limit) return Effect.as(Effect.forkDetach(Effect.sync(() => notify(entry))), grant)
      }
      return Effect.succeed(grant)
    })

  const extend = (name: string, owner: string, ttlMillis: number) =>
    Effect.clockWith((clock) =>
      Effect.sync(() => {
        const now = clock.currentTimeMillisUnsafe()
        const entry = entries.get(name)
        if (entry === undefined) return "expired" as const
        sweep(entry, now)
        const holder = entry.holders.get(owner)
        if (holder === undefined) {
          const other = [...entry.holders.values()].some((h) => h.mode === "exclusive")
          gc(name, entry)
          return other ? ("stolen" as const) : ("expired" as const)
        }
        holder.expiresAt = now + ttlMillis
        return "extended" as const
      })
    )

  const release = (name: string, owner: string) =>
    Effect.clockWith((clock) =>
      Effect.sync(() => {
        const entry = entries.get(name)
        if (entry === undefined) return false
        sweep(entry, clock.currentTimeMillisUnsafe())
        const released = entry.holders.delete(owner)
        const index = entry.waiters.findIndex((waiter) => waiter.owner === owner)
        if (index !== -1) entry.waiters.splice(index, 1)
        if (released || index !== -1) notify(entry)
        gc(name, entry)
        return released
      })
    )

  const subscribe = (name: string) =>
    Effect.gen(function* () {
      const listener = makeListener()
      entryFor(name).listeners.add(listener)
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          const entry = entries.get(name)
          if (entry === undefined) return
          entry.listeners.delete(listener)
          gc(name, entry)
        })
      )
      // An expiry is a change nobody announces: the wait also ends at the
      // earliest expiry of a holder or a waiter registration.
      return waitForChange(listener, () => {
        const entry = entries.get(name)
        let earliest = Infinity
        if (entry !== undefined) {
          for (const holder of entry.holders.values()) earliest = Math.min(earliest, holder.expiresAt)
          for (const waiter of entry.waiters) earliest = Math.min(earliest, waiter.expiresAt)
        }
        return earliest
      })
    })

  const inspect = (name?: string) =>
    Effect.clockWith((clock) =>
      Effect.sync((): Inspection => {
        const now = clock.currentTimeMillisUnsafe()
        const holders: Array<HolderInfo> = []
        const waiters: Array<WaiterInfo> = []
        const names = name === undefined ? [...entries.keys()] : [name]
        for (const n of names) {
          const entry = entries.get(n)
          if (entry === undefined) continue
          sweep(entry, now)
          for (const h of entry.holders.values()) {
            holders.push({
              name: n,
              owner: h.owner,
              mode: h.mode,
              permits: h.permits,
              limit: entry.limit,
              token: h.token,
              acquiredAt: h.acquiredAt,
              expiresAt: h.expiresAt,
              metadata: h.metadata
            })
          }
          for (const w of entry.waiters) {
            waiters.push({
              name: n,
              owner: w.owner,
              mode: w.mode,
              permits: w.permits,
              since: w.since,
              metadata: w.metadata
            })
          }
          gc(n, entry)
        }
        return { holders, waiters }
      })
    )

  return LockBackend.of({
    kind: "memory",
    guarantees: {
      fencing: "strict",
      scope: "one process",
      leaseEnds: "TTL or scope",
      wakeUp: "Deferred",
      fairness: "fifo"
    },
    // Every call answers at once.
    boundedCalls: true,
    tryAcquire,
    extend,
    release,
    subscribe,
    inspect
  })
})

/**
 * A layer with a fresh in-memory store.
 *
 * @since 0.1.0
 */
export const layer: Layer.Layer<LockBackend> = Layer.effect(LockBackend, make)

registerProvider("memory", () => layer)
