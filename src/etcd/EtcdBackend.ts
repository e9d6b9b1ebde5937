/**
 * The etcd v3 backend: etcd's lock recipe with one lease per held lock,
 * fencing tokens from the store's revision, FIFO waiting by watch.
 *
 * **When to use**
 *
 * Services that run etcd (or Kubernetes' etcd-compatible stores) and need
 * linearizable locks whose tokens are safe under partitions and failover.
 *
 * **Details**
 *
 * - A request puts `<prefix><name>/<lease id>` (the name percent-encoded; the
 *   owner and the request in the value) with its own lease, in one
 *   transaction: the put alone when the name has no key (granted), else a put
 *   guarded on create revision 0 plus a read of the name's keys in
 *   create-revision order. The holder is the key with the lowest create
 *   revision (readers: no earlier writer; permits: the earlier keys' permits
 *   plus its own fit the limit). The fencing token is the key's own create
 *   revision: strictly increasing cluster-wide.
 * - Leases are whole seconds (the TTL is rounded up); a TTL below what the
 *   server grants is `InvalidLockRequest` naming the minimum. Spare leases
 *   are granted ahead, and a released lock's fresh lease is reused, so a free
 *   lock costs one transaction; a grant reports its lease's age
 *   (`Grant.leaseAge`), so the core counts the lease from its last refresh.
 * - Waiting is by watch: one watch per name per process, on deletions, keeps
 *   each queued request's view of the keys before it current; the request
 *   whose blockers are all gone is woken and granted from its view, without
 *   another read. FIFO, no herd, no polling.
 * - Extension is a lease keep-alive on one long-lived stream; a TTL of 0 in
 *   the answer means the lease expired (`expired`). Release deletes the key
 *   and keeps a fresh lease as a spare (else revokes it).
 *
 * **Gotchas**
 *
 * One lease per lock, not one per process as in etcd's own concurrency
 * package: a process-wide lease kept alive by any lock would also keep alive
 * the key of a holder whose own heartbeat stopped.
 *
 * @since 0.1.0
 */
import { Clock, Config, Effect, Layer, Option, type Scope } from "effect"
import { type Etcd3, Range } from "etcd3"
import {
  type ExtendOutcome,
  type Grant,
  type GrantRequest,
  type Guarantees,
  type HolderInfo,
  type Inspection,
  LockBackend,
  type LockBackendShape,
  type LockMode,
  registerProvider,
  type WaiterInfo
} from "../LockBackend.ts"
import { InvalidLockRequest, type LockBackendUnavailable } from "../LockError.ts"
import { type Listener, makeListener, signal, waitForChange } from "../internal/changeSignal.ts"
import * as EtcdClient from "./EtcdClient.ts"

/**
 * Options of the etcd backend.
 *
 * @since 0.1.0
 */
export interface Options {
  /** Prefix of every key. Default `effect-locks/`. */
  readonly prefix?: string | undefined
}

/**
 * What the etcd backend promises.
 *
 * @since 0.1.0
 */
export const guarantees: Guarantees = {
  fencing: "strict",
  scope: "an etcd cluster (linearizable, through failover)",
  leaseEnds: "lease TTL (kept by the cluster) or scope",
  wakeUp: "watch, one per name per process",
  fairness: "fifo"
}

/** Default key prefix. @since 0.1.0 */
export const defaultPrefix = "effect-locks/"

interface Record {
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  readonly limit: number
  readonly since: number
  readonly metadata: { readonly [key: string]: string }
}

interface Kv {
  readonly key: string
  readonly create: bigint
  readonly lease: string
  readonly record: Record
}

/** One request of this process: a key put under the name, queued or granted. */
interface Entry {
  readonly name: string
  readonly key: string
  readonly lease: string
  readonly ttlSeconds: number
  readonly own: Kv
  /** The grant, once granted (a repeated request gets it again). */
  grant: Grant | undefined
  /** When the lease was last granted or kept alive (`Date.now()` when that request was sent). */
  refreshedAt: number
  /** What blocks this queued request, kept current by the name's watch; undefined: unknown (read again). */
  view: View | undefined
  /** The own key was deleted (its lease expired or was revoked): nothing is queued any more. */
  gone: boolean
  /** Woken when the request may proceed, its key is gone, or its view is lost. */
  readonly wakers: Set<() => void>
}

/** The keys created before a queued request's own that still exist, as of `revision` plus the watch's deletions. */
interface View {
  readonly watch: NameWatch
  readonly revision: bigint
  readonly earlier: Map<string, Kv>
  /** Exclusive (writer) keys among `earlier`. */
  writers: number
  /** Permits of `earlier`. */
  permits: number
}

/**
 * The process's watch on the deletions under one name: it keeps the views
 * of the name's queued requests current, so a waiter learns that its turn
 * came without reading the queue again.
 */
interface NameWatch {
  readonly name: string
  readonly cancel: () => void
  /** Every deletion after this revision is delivered; undefined until the watch is created on the server. */
  start: bigint | undefined
  /** Disconnected, cancelled or closed: it delivers nothing more. */
  broken: boolean
  /** Recent deletions, for views read before they arrived. */
  readonly log: Array<{ readonly revision: bigint; readonly key: string }>
  /** Deletions at or below this revision may be missing from `log`. */
  logFloor: bigint
  /** Requests whose views it keeps. */
  readonly entries: Set<Entry>
  /** Subscriptions without a queued request: any deletion wakes them. */
  readonly listeners: Set<Listener>
  /** Waiting for the watch to be created (or to break). */
  readonly onReady: Set<() => void>
  /** Subscriptions using it. */
  users: number
  linger: ReturnType<typeof setTimeout> | undefined
}

const kindOf = (mode: LockMode) => (mode === "permits" ? "semaphore" : "lock")

const parseRecord = (text: string): Record | undefined => {
  try {
    const value = JSON.parse(text) as Partial<Record>
    if (typeof value.owner !== "string" || typeof value.mode !== "string") return undefined
    return {
      owner: value.owner,
      mode: value.mode,
      permits: Number(value.permits ?? 1),
      limit: Number(value.limit ?? 1),
      since: Number(value.since ?? 0),
      metadata: typeof value.metadata === "object" && value.metadata !== null ? value.metadata : {}
    }
  } catch {
    return undefined
  }
}

const kvsOf = (
  kvs: ReadonlyArray<{ key: Buffer; value: Buffer; create_revision: string; lease: string }> | undefined
): Array<Kv> => {
  const out: Array<Kv> = []
  for (const kv of kvs ?? []) {
    const record = parseRecord(kv.value.toString("utf8"))
    if (record !== undefined) {
      out.push({ key: kv.key.toString("utf8"), create: BigInt(kv.create_revision), lease: kv.lease, record })
    }
  }
  return out.toSorted((a, b) => (a.create < b.create ? -1 : a.create > b.create ? 1 : 0))
}

/** Whether `own` must wait for keys created before it with these totals. */
const blockedBy = (own: Record, earlier: number, writers: number, permits: number): boolean => {
  switch (own.mode) {
    case "exclusive":
      // Every earlier key (holder or waiter) comes first.
      return earlier > 0
    case "shared":
      // Readers wait only for earlier writers.
      return writers > 0
    case "permits":
      // The earlier keys' permits plus its own must fit the limit.
      return permits + own.permits > own.limit
  }
}

/** Whether `kvs[index]` must wait for the keys before it. */
const blockedAt = (kvs: ReadonlyArray<Kv>, index: number): boolean => {
  let writers = 0
  let permits = 0
  for (let i = 0; i < index; i++) {
    if (kvs[i]!.record.mode === "exclusive") writers++
    permits += kvs[i]!.record.permits
  }
  return blockedBy(kvs[index]!.record, index, writers, permits)
}

const blockedView = (entry: Entry, view: View): boolean =>
  blockedBy(entry.own.record, view.earlier.size, view.writers, view.permits)

/** A kind or limit that disagrees with another key of the name. */
const conflict = (request: GrantRequest, key: string, kvs: ReadonlyArray<Kv>): InvalidLockRequest | undefined => {
  const other = kvs.find((kv) => kv.key !== key && kindOf(kv.record.mode) !== kindOf(request.mode))
  if (other !== undefined) {
    return new InvalidLockRequest({
      field: "mode",
      reason: `"${request.name}" is in use as a ${kindOf(other.record.mode)}, not as a ${kindOf(request.mode)}`
    })
  }
  if (request.mode === "permits") {
    const mismatch = kvs.find((kv) => kv.key !== key && kv.record.limit !== request.limit)
    if (mismatch !== undefined) {
      return new InvalidLockRequest({
        field: "limit",
        reason: `"${request.name}" is in use with limit ${mismatch.record.limit}, not ${request.limit}`
      })
    }
  }
  return undefined
}

/** A new request: the guarded put and the read of the name's keys, in one transaction. */
/** The in-process key of a request: its name and owner. */
const entryKey = (name: string, owner: string) => `${name.length}:${name}${owner}`

const checkName = (name: string) =>
  name.isWellFormed()
    ? Effect.void
    : Effect.fail(new InvalidLockRequest({ field: "name", reason: "must be well-formed UTF-16 (no lone surrogates)" }))

/** Deletions kept for views read before they arrived. */
const LOG_SIZE = 1024
/** Spare leases kept per TTL (granted ahead, or kept from a release). */
const SPARES = 2
/** How long a name's watch outlives its last user. */
const LINGER_MILLIS = 1000

/**
 * Lease keep-alives over one long-lived stream (opened on first use), each
 * answer matched to the oldest unanswered request for its lease. An attempt
 * unanswered within `attemptMillis` discards the stream (failing every
 * request on it); each keep-alive is tried up to three times, so a stream to
 * a member that is down or stalled is replaced by one etcd3 opens elsewhere.
 */
const makeKeepAlives = (client: Etcd3, attemptMillis: number) => {
  interface Pending {
    readonly resolve: (ttl: number) => void
    readonly reject: (cause: unknown) => void
  }
  interface Channel {
    readonly pending: Map<string, Array<Pending>>
    closed: boolean
    stream: Promise<{ write: (item: { ID: string }) => void; cancel: () => void }> | undefined
  }
  let current: Channel | undefined
  const discard = (channel: Channel, cause: unknown) => {
    if (current === channel) current = undefined
    if (channel.closed) return
    channel.closed = true
    for (const queue of channel.pending.values()) for (const pending of queue) pending.reject(cause)
    channel.pending.clear()
    channel.stream?.then(
      (stream) => stream.cancel(),
      () => undefined
    )
  }
  const open = (): Channel => {
    const channel: Channel = { pending: new Map(), closed: false, stream: undefined }
    channel.stream = client.leaseClient.leaseKeepAlive().then((stream) => {
      stream.on("data", (response: { ID: string; TTL: string }) => {
        const queue = channel.pending.get(response.ID)
        const pending = queue?.shift()
        if (queue?.length === 0) channel.pending.delete(response.ID)
        pending?.resolve(Number(response.TTL))
      })
      stream.on("error", (error) => discard(channel, error))
      stream.on("end", () => discard(channel, new Error("the keep-alive stream ended")))
      if (channel.closed) stream.cancel()
      return stream
    })
    channel.stream.catch((error: unknown) => discard(channel, error))
    return channel
  }
  const once = (lease: string) =>
    new Promise<number>((resolve, reject) => {
      const channel = current ?? (current = open())
      const timer = setTimeout(
        () => discard(channel, new Error(`keep-alive unanswered after ${attemptMillis} ms`)),
        attemptMillis
      )
      const queue = channel.pending.get(lease) ?? []
      queue.push({
        resolve: (ttl) => {
          clearTimeout(timer)
          resolve(ttl)
        },
        reject: (cause) => {
          clearTimeout(timer)
          reject(cause)
        }
      })
      channel.pending.set(lease, queue)
      channel.stream!.then(
        (stream) => {
          if (!channel.closed) stream.write({ ID: lease })
        },
        () => undefined
      )
    })
  return {
    /** The lease's remaining TTL in seconds (0: it expired or is unknown). */
    keepAlive: (lease: string): Promise<number> =>
      once(lease)
        .catch(() => once(lease))
        .catch(() => once(lease)),
    close: () => {
      if (current !== undefined) discard(current, new Error("the etcd backend was closed"))
    }
  }
}

/**
 * Builds the backend on the `EtcdClient` in context; leases still held when
 * the scope closes are revoked.
 *
 * @since 0.1.0
 */
export const make = (
  options: Options = {}
): Effect.Effect<LockBackendShape, InvalidLockRequest, EtcdClient.EtcdClient | Scope.Scope> =>
  Effect.gen(function* () {
    const prefix = options.prefix ?? defaultPrefix
    if (prefix.length === 0 || !prefix.isWellFormed()) {
      return yield* new InvalidLockRequest({ field: "prefix", reason: "must be a non-empty, well-formed string" })
    }
    const etcd = yield* EtcdClient.EtcdClient
    const namePrefix = (name: string) => `${prefix}${encodeURIComponent(name)}/`
    /** A name's key range, as request bytes; the last few names' are kept (a name is usually locked again). */
    const ranges = new Map<string, Range>()
    const rangeOf = (name: string): Range => {
      let range = ranges.get(name)
      if (range === undefined) {
        if (ranges.size >= 256) ranges.clear()
        range = Range.prefix(namePrefix(name))
        ranges.set(name, range)
      }
      return range
    }
    // Keyed by lease, as in etcd's own recipe: leases are reused (spares), so
    // a busy name keeps a few key names instead of leaving one tombstone per
    // acquisition, which every range over the name would walk until compaction.
    const keyOf = (name: string, lease: string) => `${namePrefix(name)}${BigInt(lease).toString(16)}`
    const keepAlives = makeKeepAlives(etcd.client, Math.max(1, Math.floor(etcd.callMillis / 3)))
    const keepAlive = (lease: string) => etcd.call("extend", () => keepAlives.keepAlive(lease))
    const entries = new Map<string, Entry>()
    const watches = new Map<string, NameWatch>()
    /** Spare leases (granted ahead, or kept after a release), per TTL in seconds, with their last refresh. */
    const spares = new Map<number, Array<{ readonly id: string; readonly at: number }>>()
    /** The smallest lease TTL the server granted as asked, once known. */
    let minimumSeconds = 0

    const wake = (entry: Entry) => {
      const wakers = [...entry.wakers]
      entry.wakers.clear()
      for (const w of wakers) w()
    }

    // ---- The per-name watches ------------------------------------------------

    /** Stops a watch; the views it kept become unknown and everyone waiting on it is woken. */
    const breakWatch = (watch: NameWatch) => {
      if (watch.broken) return
      watch.broken = true
      if (watches.get(watch.name) === watch) watches.delete(watch.name)
      if (watch.linger !== undefined) clearTimeout(watch.linger)
      watch.cancel()
      const kept = [...watch.entries]
      watch.entries.clear()
      for (const entry of kept) {
        entry.view = undefined
        wake(entry)
      }
      for (const listener of watch.listeners) signal(listener)
    }

    /** Closes a watch nobody uses, after a short linger (a new waiter often follows). */
    const maybeClose = (watch: NameWatch) => {
      if (watch.broken || watch.users > 0 || watch.entries.size > 0 || watch.linger !== undefined) return
      watch.linger = setTimeout(() => {
        watch.linger = undefined
        if (watch.users === 0 && watch.entries.size === 0) breakWatch(watch)
      }, LINGER_MILLIS)
      watch.linger.unref()
    }

    const keep = (watch: NameWatch) => {
      if (watch.linger !== undefined) {
        clearTimeout(watch.linger)
        watch.linger = undefined
      }
    }

    /** A deletion under the watched name, at `revision`. */
    const onDeleted = (watch: NameWatch, key: string, revision: bigint) => {
      watch.log.push({ revision, key })
      if (watch.log.length > 2 * LOG_SIZE) {
        const dropped = watch.log.splice(0, watch.log.length - LOG_SIZE)
        watch.logFloor = dropped[dropped.length - 1]!.revision
      }
      for (const listener of watch.listeners) signal(listener)
      for (const entry of watch.entries) {
        if (applyDeletion(entry, key, revision)) wake(entry)
      }
    }

    /** Applies one deletion to `entry`'s view; true when that may let it proceed (or its key is gone). */
    const applyDeletion = (entry: Entry, key: string, revision: bigint): boolean => {
      const view = entry.view
      if (view === undefined || revision <= view.revision) return false
      if (key === entry.key) {
        entry.gone = true
        return true
      }
      const kv = view.earlier.get(key)
      if (kv === undefined) return false
      view.earlier.delete(key)
      if (kv.record.mode === "exclusive") view.writers--
      view.permits -= kv.record.permits
      return !blockedView(entry, view)
    }

    /** The process's watch on `name`'s deletions, started (from now) if there is none. */
    const watchOf = (name: string): NameWatch => {
      const existing = watches.get(name)
      if (existing !== undefined) return existing
      const watcher = etcd.client.watch().prefix(namePrefix(name)).only("delete").watcher()
      const watch: NameWatch = {
        name,
        cancel: () => void watcher.cancel().catch(() => undefined),
        start: undefined,
        broken: false,
        log: [],
        logFloor: 0n,
        entries: new Set(),
        listeners: new Set(),
        onReady: new Set(),
        users: 0,
        linger: undefined
      }
      watcher.on("connected", (response: { header: { revision: string } }) => {
        if (watch.start !== undefined) return
        watch.start = BigInt(response.header.revision)
        // A copy: each waiter removes itself.
        for (const ready of Array.from(watch.onReady)) ready()
        watch.onReady.clear()
      })
      watcher.on("delete", (kv: { key: Buffer; mod_revision: string }) =>
        onDeleted(watch, kv.key.toString("utf8"), BigInt(kv.mod_revision))
      )
      // A watch that lost its stream may have missed deletions: its views are dropped.
      watcher.on("disconnected", () => breakWatch(watch))
      watcher.on("error", () => breakWatch(watch))
      watcher.on("end", () => breakWatch(watch))
      watches.set(name, watch)
      maybeClose(watch)
      return watch
    }

    /**
     * Waits until `watch` is created on the server, or broke after that, or
     * one call deadline passed (a watch that cannot be created, e.g. while
     * the cluster is down, paces the waiters' attempts).
     */
    const ready = (watch: NameWatch): Effect.Effect<void> =>
      Effect.callback<void>((resume) => {
        if (watch.start !== undefined) return resume(Effect.void)
        let done = false
        const finish = () => {
          if (done) return
          done = true
          clearTimeout(timer)
          watch.onReady.delete(finish)
          resume(Effect.void)
        }
        const timer = setTimeout(finish, etcd.callMillis)
        watch.onReady.add(finish)
        return Effect.sync(() => {
          done = true
          clearTimeout(timer)
          watch.onReady.delete(finish)
        })
      })

    /**
     * Gives `entry` a view from a read of its name at `revision`, when the
     * name's watch delivers every deletion after that revision (else the
     * view stays unknown and the next attempt reads again).
     */
    const attachView = (entry: Entry, revision: bigint, kvs: ReadonlyArray<Kv>, index: number) => {
      detachView(entry)
      const watch = watches.get(entry.name)
      if (
        watch === undefined ||
        watch.broken ||
        watch.start === undefined ||
        revision < watch.start ||
        revision < watch.logFloor
      ) {
        return
      }
      const view: View = { watch, revision, earlier: new Map(), writers: 0, permits: 0 }
      for (let i = 0; i < index; i++) {
        const kv = kvs[i]!
        view.earlier.set(kv.key, kv)
        if (kv.record.mode === "exclusive") view.writers++
        view.permits += kv.record.permits
      }
      entry.view = view
      watch.entries.add(entry)
      keep(watch)
      // Deletions the watch delivered before this read's answer came back.
      let first = watch.log.length
      while (first > 0 && watch.log[first - 1]!.revision > revision) first--
      for (let i = first; i < watch.log.length; i++) applyDeletion(entry, watch.log[i]!.key, watch.log[i]!.revision)
    }

    const detachView = (entry: Entry) => {
      const view = entry.view
      if (view === undefined) return
      entry.view = undefined
      view.watch.entries.delete(entry)
      maybeClose(view.watch)
    }

    /** Drops a request's bookkeeping and its view. */
    const forget = (id: string) => {
      const entry = entries.get(id)
      if (entry === undefined) return
      entries.delete(id)
      detachView(entry)
      wake(entry)
    }

    // ---- Leases --------------------------------------------------------------

    const revoke = (lease: string) =>
      etcd
        .call("release", (c) => c.leaseClient.leaseRevoke({ ID: lease }))
        .pipe(
          Effect.asVoid,
          // An expired or unknown lease is already gone, with its keys.
          Effect.catch((error) =>
            String(error.cause).includes("requested lease not found") ? Effect.void : Effect.fail(error)
          )
        )

    const grantLease = (ttlSeconds: number): Effect.Effect<string, LockBackendUnavailable | InvalidLockRequest> =>
      Effect.gen(function* () {
        const response = yield* etcd.call("acquire", (c) => c.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }))
        const granted = Number(response.TTL)
        if (granted > ttlSeconds) {
          yield* Effect.ignore(revoke(response.ID))
          minimumSeconds = Math.max(minimumSeconds, granted)
          return yield* new InvalidLockRequest({
            field: "ttl",
            reason: `the etcd server grants leases of at least ${granted} s; asked for ${ttlSeconds} s`
          })
        }
        return response.ID
      })

    /**
     * A lease for a new key: a spare granted or kept alive less than a third
     * of its TTL ago (the grant reports its age), or a fresh one.
     */
    const leaseFor = (ttlSeconds: number) =>
      Effect.gen(function* () {
        if (ttlSeconds < minimumSeconds) {
          return yield* new InvalidLockRequest({
            field: "ttl",
            reason: `the etcd server grants leases of at least ${minimumSeconds} s; asked for ${ttlSeconds} s`
          })
        }
        const pool = spares.get(ttlSeconds) ?? []
        const now = Date.now()
        for (let spare = pool.pop(); spare !== undefined; spare = pool.pop()) {
          if (now - spare.at < (ttlSeconds * 1000) / 3) {
            if (pool.length === 0) yield* Effect.forkIn(refill(ttlSeconds), backendScope)
            return spare
          }
          yield* Effect.forkIn(Effect.uninterruptible(Effect.ignore(revoke(spare.id))), backendScope)
        }
        const at = Date.now()
        const id = yield* grantLease(ttlSeconds)
        yield* Effect.forkIn(refill(ttlSeconds), backendScope)
        return { id, at }
      })

    // Uninterruptible (each call has a deadline): a lease granted is always
    // recorded, so the finalizer revokes it.
    const refill = (ttlSeconds: number): Effect.Effect<void> =>
      Effect.ignore(
        Effect.gen(function* () {
          const pool = spares.get(ttlSeconds) ?? []
          spares.set(ttlSeconds, pool)
          if (pool.length >= SPARES) return
          const at = Date.now()
          const id = yield* grantLease(ttlSeconds)
          pool.push({ id, at })
        })
      ).pipe(Effect.uninterruptible)

    /** Keeps `entry`'s lease alive; false (and the request forgotten) when it expired. */
    const refresh = (id: string, entry: Entry) =>
      Effect.gen(function* () {
        const sent = Date.now()
        const ttl = yield* keepAlive(entry.lease)
        if (ttl <= 0) {
          forget(id)
          return false
        }
        entry.refreshedAt = Math.max(entry.refreshedAt, sent)
        return true
      })

    const backendScope = yield* Effect.scope
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        // A copy: each watch removes itself.
        for (const watch of Array.from(watches.values())) breakWatch(watch)
        keepAlives.close()
        const leases = [...entries.values()].map((entry) => entry.lease)
        for (const pool of spares.values()) for (const spare of pool) leases.push(spare.id)
        entries.clear()
        spares.clear()
        yield* Effect.forEach(leases, (lease) => Effect.ignore(revoke(lease)), {
          concurrency: 16,
          discard: true
        })
      })
    )

    // ---- Grants --------------------------------------------------------------

    const readName = (name: string) =>
      etcd.call("acquire", (c) => c.getAll().prefix(namePrefix(name)).sort("Create", "Ascend").exec())

    const granted = (entry: Entry, started: number): Option.Option<Grant> => {
      detachView(entry)
      const age = started - entry.refreshedAt
      entry.grant = age > 0 ? { token: entry.own.create, leaseAge: age } : { token: entry.own.create }
      return Option.some(entry.grant)
    }

    /**
     * A new request, in one transaction: when the name has no key at all, the
     * put alone (granted: its revision is the token); else a put guarded on
     * the key's create revision 0 (a retried call finds its own key) and the
     * read of the name's keys in create-revision order.
     */
    const first = (request: GrantRequest, id: string, started: number) =>
      Effect.gen(function* () {
        const ttlSeconds = Math.max(1, Math.ceil(request.ttlMillis / 1000))
        const leased = yield* leaseFor(ttlSeconds)
        const key = keyOf(request.name, leased.id)
        const record: Record = {
          owner: request.owner,
          mode: request.mode,
          permits: request.permits,
          limit: request.limit,
          since: yield* Clock.currentTimeMillis,
          metadata: request.metadata
        }
        const names = rangeOf(request.name)
        const keyBytes = Buffer.from(key)
        const put = { request_put: { key: keyBytes, value: Buffer.from(JSON.stringify(record)), lease: leased.id } }
        const range = {
          request_range: { key: names.start, range_end: names.end, sort_order: "Ascend", sort_target: "Create" }
        } as const
        const answer = yield* etcd
          .call("acquire", (c) =>
            c.kv.txn({
              compare: [
                { key: names.start, range_end: names.end, target: "Create", result: "Equal", create_revision: 0 }
              ],
              success: [put],
              failure: [
                {
                  request_txn: {
                    compare: [{ key: keyBytes, target: "Create", result: "Equal", create_revision: 0 }],
                    success: [put, range],
                    failure: [range]
                  }
                }
              ]
            })
          )
          .pipe(Effect.tapError(() => Effect.ignore(revoke(leased.id))))
        const entryOf = (own: Kv): Entry => {
          const entry: Entry = {
            name: request.name,
            key,
            lease: own.lease,
            ttlSeconds,
            own,
            grant: undefined,
            refreshedAt: leased.at,
            view: undefined,
            gone: false,
            wakers: new Set()
          }
          entries.set(id, entry)
          return entry
        }
        if (answer.succeeded) {
          // The name was free: granted.
          return granted(entryOf({ key, create: BigInt(answer.header.revision), lease: leased.id, record }), started)
        }
        const nested = answer.responses[0]?.response_txn
        const kvs = kvsOf(nested?.responses[nested.succeeded ? 1 : 0]?.response_range.kvs)
        const index = kvs.findIndex((kv) => kv.key === key)
        if (index === -1) {
          // Not put, and not there (cannot happen with a live lease): nothing is held.
          yield* Effect.ignore(revoke(leased.id))
          return Option.none<Grant>()
        }
        const entry = entryOf(kvs[index]!)
        return yield* decide(request, entry, started, BigInt(answer.header.revision), kvs, index)
      })

    /** The answer to a request whose keys were just read. */
    const decide = (
      request: GrantRequest,
      entry: Entry,
      started: number,
      revision: bigint,
      kvs: ReadonlyArray<Kv>,
      index: number
    ) =>
      Effect.gen(function* () {
        const invalid = conflict(request, entry.key, kvs)
        if (invalid !== undefined) {
          yield* release(request.name, request.owner)
          return yield* invalid
        }
        if (!blockedAt(kvs, index)) return granted(entry, started)
        if (!request.queue) {
          // A single attempt leaves nothing behind (its lease may serve the next request).
          yield* release(request.name, request.owner)
          return Option.none<Grant>()
        }
        attachView(entry, revision, kvs, index)
        return Option.none<Grant>()
      })

    /** A queued request asks again: its view answers, or a read when unknown (or due with the refresh). */
    const again = (request: GrantRequest, id: string, entry: Entry, started: number) =>
      Effect.gen(function* () {
        if (entry.gone) {
          forget(id)
          return Option.none<Grant>()
        }
        if (entry.grant !== undefined) return Option.some(entry.grant)
        const ttlMillis = entry.ttlSeconds * 1000
        // The core asks at least every ttl/3 while waiting: each such refresh
        // keeps the lease alive and reads the queue again (a watch on a
        // stalled member delivers nothing, and then only reads find a release).
        const due = started - entry.refreshedAt >= ttlMillis / 4
        const view = entry.view
        if (view !== undefined && !due) {
          if (blockedView(entry, view)) return Option.none<Grant>()
          return granted(entry, started)
        }
        const [alive, read] = yield* Effect.all(
          [due ? refresh(id, entry) : Effect.succeed(true), readName(entry.name)],
          {
            concurrency: 2
          }
        )
        if (!alive) return Option.none<Grant>()
        const kvs = kvsOf(read.kvs)
        const index = kvs.findIndex((kv) => kv.key === entry.key)
        if (index === -1) {
          // Its key is gone (the lease expired): nothing is queued.
          forget(id)
          yield* Effect.ignore(revoke(entry.lease))
          return Option.none<Grant>()
        }
        return yield* decide(request, entry, started, BigInt(read.header.revision), kvs, index)
      })

    const tryAcquire = (
      request: GrantRequest
    ): Effect.Effect<Option.Option<Grant>, LockBackendUnavailable | InvalidLockRequest> =>
      Effect.suspend(() => {
        if (!request.name.isWellFormed()) return checkName(request.name).pipe(Effect.as(Option.none<Grant>()))
        const started = Date.now()
        const id = entryKey(request.name, request.owner)
        const entry = entries.get(id)
        return entry === undefined ? first(request, id, started) : again(request, id, entry, started)
      }).pipe(
        // A lease granted or a key put is always recorded (or dropped) before
        // an interruption lands; every call has a deadline.
        Effect.uninterruptible
      )

    const extend = (
      name: string,
      owner: string,
      ttlMillis: number
    ): Effect.Effect<ExtendOutcome, LockBackendUnavailable | InvalidLockRequest> =>
      Effect.gen(function* () {
        const id = entryKey(name, owner)
        const entry = entries.get(id)
        if (entry === undefined || entry.grant === undefined) return "expired" as const
        if (Math.max(1, Math.ceil(ttlMillis / 1000)) !== entry.ttlSeconds) {
          return yield* new InvalidLockRequest({
            field: "ttl",
            reason: `an etcd lease keeps the TTL it was granted with (${entry.ttlSeconds} s)`
          })
        }
        return (yield* refresh(id, entry)) ? ("extended" as const) : ("expired" as const)
      })

    const release = (name: string, owner: string): Effect.Effect<boolean, LockBackendUnavailable> =>
      Effect.gen(function* () {
        if (!name.isWellFormed()) return false
        const id = entryKey(name, owner)
        const entry = entries.get(id)
        if (entry === undefined) {
          // Not known here (e.g. its lease expired): delete the owner's key if
          // one is left, guarded on the revision it was read at.
          const read = yield* etcd.call("release", (c) => c.getAll().prefix(namePrefix(name)).exec())
          yield* Effect.forEach(
            kvsOf(read.kvs).filter((kv) => kv.record.owner === owner),
            (kv) =>
              etcd.call("release", (c) =>
                c.if(kv.key, "Create", "==", kv.create.toString()).then(c.delete().key(kv.key)).commit()
              ),
            { discard: true }
          )
          return false
        }
        forget(id)
        const pool = spares.get(entry.ttlSeconds) ?? []
        if (!entry.gone && pool.length < SPARES && Date.now() - entry.refreshedAt < (entry.ttlSeconds * 1000) / 3) {
          // The lease is fresh: delete just the key and keep the lease as a spare
          // (one write now, and none for the next acquisition).
          const deleted = yield* etcd
            .call("release", (c) => c.kv.deleteRange({ key: Buffer.from(entry.key) }))
            .pipe(Effect.onError(() => Effect.ignore(revoke(entry.lease))))
          if (Number(deleted.deleted) === 0) {
            // The key was gone already (its lease expired, or was revoked): no spare.
            yield* Effect.ignore(revoke(entry.lease))
            return false
          }
          pool.push({ id: entry.lease, at: entry.refreshedAt })
          spares.set(entry.ttlSeconds, pool)
          return entry.grant !== undefined
        }
        yield* revoke(entry.lease)
        return entry.grant !== undefined && !entry.gone
      })

    /** A subscription starts or stops using a watch. */
    const use = (watch: NameWatch) => {
      watch.users++
      keep(watch)
    }
    const unuse = (watch: NameWatch) => {
      watch.users--
      maybeClose(watch)
    }

    /** Waits until `owner`'s request may proceed by its view, or at once when its view is unknown. */
    const waitTurn = (name: string, owner: string): Effect.Effect<void> =>
      Effect.suspend(() => {
        const entry = entries.get(entryKey(name, owner))
        if (entry === undefined || entry.gone || entry.grant !== undefined) return Effect.void
        const view = entry.view
        if (view === undefined) {
          // The next attempt reads; with the name's watch created first, that read gives a view.
          return ready(watchOf(name))
        }
        if (!blockedView(entry, view)) return Effect.void
        return Effect.callback<void>((resume) => {
          const w = () => resume(Effect.void)
          entry.wakers.add(w)
          return Effect.sync(() => {
            entry.wakers.delete(w)
          })
        })
      })

    const subscribe = (name: string, owner?: string) =>
      Effect.gen(function* () {
        // An ill-formed name is refused by the attempt that follows.
        if (!name.isWellFormed()) return Effect.void
        let current = watchOf(name)
        yield* Effect.acquireRelease(
          Effect.sync(() => use(current)),
          () => Effect.sync(() => unuse(current))
        )
        // The name's watch is created on the server before the attempt that follows a subscription.
        yield* ready(current)
        if (owner !== undefined && entries.has(entryKey(name, owner))) return waitTurn(name, owner)
        // Without a queued request: any deletion under the name.
        const listener: Listener = makeListener(owner)
        current.listeners.add(listener)
        yield* Effect.addFinalizer(() => Effect.sync(() => current.listeners.delete(listener)))
        return Effect.suspend(() => {
          if (!current.broken) return waitForChange(listener, () => Infinity)
          // Its watch broke (and signalled): move to the name's next one.
          current.listeners.delete(listener)
          unuse(current)
          current = watchOf(name)
          use(current)
          current.listeners.add(listener)
          return ready(current)
        })
      })

    const inspect = (name?: string): Effect.Effect<Inspection, LockBackendUnavailable> =>
      Effect.gen(function* () {
        if (name !== undefined && !name.isWellFormed()) return { holders: [], waiters: [] }
        const response = yield* etcd.call("inspect", (c) =>
          c
            .getAll()
            .prefix(name === undefined ? prefix : namePrefix(name))
            .sort("Create", "Ascend")
            .exec()
        )
        const byName = new Map<string, Array<Kv>>()
        for (const kv of kvsOf(response.kvs)) {
          const rest = kv.key.slice(prefix.length)
          const slash = rest.indexOf("/")
          if (slash === -1) continue
          let decoded: string
          try {
            decoded = decodeURIComponent(rest.slice(0, slash))
          } catch {
            continue
          }
          const list = byName.get(decoded) ?? []
          list.push(kv)
          byName.set(decoded, list)
        }
        const leases = new Set<string>()
        for (const list of byName.values()) for (const kv of list) leases.add(kv.lease)
        const ttls = new Map<string, number>()
        yield* Effect.forEach(
          leases,
          (lease) =>
            Effect.map(
              Effect.result(etcd.call("inspect", (c) => c.leaseClient.leaseTimeToLive({ ID: lease, keys: false }))),
              (result) => {
                if (result._tag === "Success") ttls.set(lease, Number(result.success.TTL))
              }
            ),
          { concurrency: 16, discard: true }
        )
        const now = yield* Clock.currentTimeMillis
        const holders: Array<HolderInfo> = []
        const waiters: Array<WaiterInfo> = []
        for (const [n, list] of byName) {
          list.forEach((kv, index) => {
            const { record } = kv
            if (!blockedAt(list, index)) {
              const ttl = ttls.get(kv.lease)
              holders.push({
                name: n,
                owner: record.owner,
                mode: record.mode,
                permits: record.permits,
                limit: record.mode === "permits" ? record.limit : 1,
                token: kv.create,
                acquiredAt: record.since,
                expiresAt: ttl === undefined || ttl < 0 ? undefined : now + ttl * 1000,
                metadata: record.metadata
              })
            } else {
              waiters.push({
                name: n,
                owner: record.owner,
                mode: record.mode,
                permits: record.permits,
                since: record.since,
                metadata: record.metadata
              })
            }
          })
        }
        return { holders, waiters }
      })

    return LockBackend.of({
      kind: "etcd",
      guarantees,
      // Every call has the client's deadline.
      boundedCalls: true,
      tryAcquire,
      extend,
      release,
      subscribe,
      inspect
    })
  })

/**
 * The backend as a layer over the `EtcdClient` in context.
 *
 * @since 0.1.0
 */
export const layer = (options: Options = {}): Layer.Layer<LockBackend, InvalidLockRequest, EtcdClient.EtcdClient> =>
  Layer.effect(LockBackend, make(options))

/**
 * Reads `LOCK_ETCD_ENDPOINTS` (comma-separated) and `LOCK_ETCD_PREFIX`. Used
 * by `LockBackend.layerConfig` when `LOCK_PROVIDER=etcd`.
 *
 * @since 0.1.0
 */
export const layerConfig: Layer.Layer<LockBackend, Config.ConfigError | InvalidLockRequest> = Layer.unwrap(
  Effect.gen(function* () {
    const endpoints = yield* Config.String("LOCK_ETCD_ENDPOINTS")
    const prefix = yield* Config.String("LOCK_ETCD_PREFIX").pipe(Config.withDefault(defaultPrefix))
    return layer({ prefix }).pipe(Layer.provide(EtcdClient.layer({ endpoints: endpoints.split(",") })))
  })
)

registerProvider("etcd", () => layerConfig)
