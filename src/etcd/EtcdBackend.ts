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
 * - A request puts `<prefix><name>/<owner>` (both percent-encoded) with its
 *   own lease, in a transaction guarded on create revision 0 that also reads
 *   the name's keys in create-revision order: one round trip. The holder is
 *   the key with the lowest create revision (readers: no earlier writer;
 *   permits: the earlier keys' permits plus its own fit the limit). The
 *   fencing token is the key's own create revision: strictly increasing
 *   cluster-wide.
 * - Leases are whole seconds (the TTL is rounded up); a TTL below what the
 *   server grants is `InvalidLockRequest` naming the minimum. Spare leases
 *   are granted ahead, so a free lock costs one transaction.
 * - A waiter watches only the deletion of the key that blocks it (the one
 *   just before it, or the last earlier writer), from the revision it read:
 *   no missed event, no herd, FIFO.
 * - Extension is a lease keep-alive; a TTL of 0 in the answer means the lease
 *   expired (`expired`). Release deletes the key and keeps a fresh lease as a
 *   spare (else revokes it); a grant on a lease not granted in that very call
 *   keeps it alive in parallel, so the server never expires a grant before
 *   its holder expects.
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
import type { Etcd3 } from "etcd3"
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
  wakeUp: "watch on the blocking key",
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

interface Entry {
  readonly key: string
  readonly lease: string
  readonly ttlSeconds: number
  createRevision: bigint
  granted: boolean
  /** When the lease was last granted or kept alive (`Date.now()`). */
  refreshedAt: number
  /** The name's keys as the last attempt read them, at `revision`; a wait starts from there. */
  lastRead: { readonly revision: bigint; readonly kvs: ReadonlyArray<Kv> } | undefined
  /** The watch on what blocks this queued request, once it waited. */
  watch: BlockerWatch | undefined
}

/** A watch on the key(s) that block a queued request. */
interface BlockerWatch {
  /** The blocker was deleted (or the watch broke): the request may proceed, or must look again. */
  gone: boolean
  readonly wakers: Set<() => void>
  cancel: () => void
}

interface Kv {
  readonly key: string
  readonly create: bigint
  readonly lease: string
  readonly record: Record
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

/** The keys before `index` that keep `kvs[index]` from being granted now (empty: it may be granted). */
const blockers = (kvs: ReadonlyArray<Kv>, index: number): Array<Kv> => {
  const own = kvs[index]!.record
  const earlier = kvs.slice(0, index)
  switch (own.mode) {
    case "exclusive":
      return earlier.slice(-1)
    case "shared": {
      const writers = earlier.filter((kv) => kv.record.mode === "exclusive")
      return writers.slice(-1)
    }
    case "permits": {
      const taken = earlier.reduce((sum, kv) => sum + kv.record.permits, 0)
      return taken + own.permits <= own.limit ? [] : earlier
    }
  }
}

/** The in-process key of a request: its name and owner. */
const entryKey = (name: string, owner: string) => `${name.length}:${name}${owner}`

const checkName = (name: string) =>
  name.isWellFormed()
    ? Effect.void
    : Effect.fail(new InvalidLockRequest({ field: "name", reason: "must be well-formed UTF-16 (no lone surrogates)" }))

/**
 * One keep-alive of `lease`, tried up to three times: each try opens a stream
 * on a member etcd3 picks, and a stream to a member that is down fails
 * without etcd3 retrying it elsewhere.
 */
const keepAlive = (client: Etcd3, lease: string): Promise<number> =>
  keepAliveOnce(client, lease)
    .catch(() => keepAliveOnce(client, lease))
    .catch(() => keepAliveOnce(client, lease))

const keepAliveOnce = (client: Etcd3, lease: string): Promise<number> =>
  client.leaseClient.leaseKeepAlive().then(
    (stream) =>
      new Promise<number>((resolve, reject) => {
        stream.on("data", (response: { TTL: string }) => {
          stream.end()
          resolve(Number(response.TTL))
        })
        stream.on("error", reject)
        stream.write({ ID: lease })
      })
  )

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
    const keyOf = (name: string, owner: string) => `${namePrefix(name)}${encodeURIComponent(owner)}`
    const entries = new Map<string, Entry>()
    /** Drops a request's bookkeeping and its watch. */
    const forget = (id: string) => {
      entries.get(id)?.watch?.cancel()
      entries.delete(id)
    }
    /** Spare leases (granted ahead, or kept after a release), per TTL in seconds, with their last refresh. */
    const spares = new Map<number, Array<{ readonly id: string; readonly at: number }>>()
    /** The smallest lease TTL the server granted as asked, once known. */
    let minimumSeconds = 0

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

    /** A lease for a new key: a spare granted less than a third of its TTL ago, or a fresh one. */
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
          if (pool.length >= 2) return
          const at = Date.now()
          const id = yield* grantLease(ttlSeconds)
          pool.push({ id, at })
        })
      ).pipe(Effect.uninterruptible)

    const backendScope = yield* Effect.scope
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        for (const entry of entries.values()) entry.watch?.cancel()
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

    const readName = (name: string) =>
      etcd.call("acquire", (c) => c.getAll().prefix(namePrefix(name)).sort("Create", "Ascend").exec())

    const tryAcquire = (
      request: GrantRequest
    ): Effect.Effect<Option.Option<Grant>, LockBackendUnavailable | InvalidLockRequest> =>
      Effect.gen(function* () {
        yield* checkName(request.name)
        const started = Date.now()
        const ttlSeconds = Math.max(1, Math.ceil(request.ttlMillis / 1000))
        const id = entryKey(request.name, request.owner)
        const key = keyOf(request.name, request.owner)
        let entry = entries.get(id)
        if (
          entry !== undefined &&
          !entry.granted &&
          request.queue &&
          entry.watch !== undefined &&
          !entry.watch.gone &&
          Date.now() - entry.refreshedAt < (entry.ttlSeconds * 1000) / 3
        ) {
          // Still blocked: the watch on what blocks it has seen no deletion.
          return Option.none()
        }
        const leased = entry === undefined ? yield* leaseFor(ttlSeconds) : undefined
        const lease = entry?.lease ?? leased!.id
        const now = yield* Clock.currentTimeMillis
        const record: Record = {
          owner: request.owner,
          mode: request.mode,
          permits: request.permits,
          limit: request.limit,
          since: now,
          metadata: request.metadata
        }
        // A queued request's key exists: a (linearizable) read of the queue is
        // enough, and cheaper than a transaction, which etcd commits through raft.
        const read =
          entry !== undefined
            ? readName(request.name)
            : etcd
                .call("acquire", (c) =>
                  c
                    .if(key, "Create", "==", 0)
                    .then(
                      c.put(key).value(JSON.stringify(record)).lease(lease),
                      c.getAll().prefix(namePrefix(request.name)).sort("Create", "Ascend")
                    )
                    .else(c.getAll().prefix(namePrefix(request.name)).sort("Create", "Ascend"))
                    .commit()
                )
                .pipe(
                  Effect.tapError(() => Effect.ignore(revoke(lease))),
                  Effect.map((answer) => {
                    const response = answer.responses[answer.succeeded ? 1 : 0]?.response_range
                    return { kvs: response?.kvs ?? [], header: answer.header }
                  })
                )
        // The core counts the lease from when it sent this request: a lease
        // not granted within this call is kept alive now (in parallel), so
        // that the server never expires a grant before the holder expects.
        const fresh = leased !== undefined && leased.at >= started
        const [ttlLeft, range] = yield* Effect.all(
          [fresh ? Effect.succeed(ttlSeconds) : etcd.call("extend", (c) => keepAlive(c, lease)), read],
          { concurrency: 2 }
        )
        if (ttlLeft <= 0) {
          // The lease expired (and its key with it): nothing is held or queued.
          forget(id)
          return Option.none()
        }
        const kvs = kvsOf(range.kvs)
        const index = kvs.findIndex((kv) => kv.key === key)
        if (index === -1) {
          // Our key vanished between put and read (its lease expired): nothing is held.
          forget(id)
          return Option.none()
        }
        const own = kvs[index]!
        if (entry === undefined) {
          entry = {
            key,
            lease: own.lease,
            ttlSeconds,
            createRevision: own.create,
            granted: false,
            refreshedAt: fresh ? leased!.at : started,
            lastRead: undefined,
            watch: undefined
          }
          entries.set(id, entry)
        } else {
          entry.refreshedAt = started
        }
        const drop = Effect.suspend(() => {
          forget(id)
          return revoke(entry!.lease)
        })
        const other = kvs.find((kv) => kv.key !== key && kindOf(kv.record.mode) !== kindOf(request.mode))
        if (other !== undefined) {
          yield* drop
          return yield* new InvalidLockRequest({
            field: "mode",
            reason: `"${request.name}" is in use as a ${kindOf(other.record.mode)}, not as a ${kindOf(request.mode)}`
          })
        }
        if (request.mode === "permits") {
          const mismatch = kvs.find((kv) => kv.key !== key && kv.record.limit !== request.limit)
          if (mismatch !== undefined) {
            yield* drop
            return yield* new InvalidLockRequest({
              field: "limit",
              reason: `"${request.name}" is in use with limit ${mismatch.record.limit}, not ${request.limit}`
            })
          }
        }
        entry.lastRead = { revision: BigInt(range.header.revision), kvs }
        if (entry.watch?.gone === true) entry.watch = undefined
        if (blockers(kvs, index).length === 0) {
          entry.watch?.cancel()
          entry.watch = undefined
          entry.granted = true
          return Option.some<Grant>({ token: own.create })
        }
        if (!request.queue && !entry.granted) {
          // A single attempt leaves nothing behind.
          yield* drop
        }
        return Option.none()
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
        const entry = entries.get(entryKey(name, owner))
        if (entry === undefined || !entry.granted) return "expired" as const
        if (Math.max(1, Math.ceil(ttlMillis / 1000)) !== entry.ttlSeconds) {
          return yield* new InvalidLockRequest({
            field: "ttl",
            reason: `an etcd lease keeps the TTL it was granted with (${entry.ttlSeconds} s)`
          })
        }
        const sent = Date.now()
        const ttl = yield* etcd.call("extend", (c) => keepAlive(c, entry.lease))
        if (ttl <= 0) {
          forget(entryKey(name, owner))
          return "expired" as const
        }
        entry.refreshedAt = sent
        return "extended" as const
      })

    const release = (name: string, owner: string): Effect.Effect<boolean, LockBackendUnavailable> =>
      Effect.gen(function* () {
        if (!name.isWellFormed()) return false
        const id = entryKey(name, owner)
        const entry = entries.get(id)
        if (entry === undefined) {
          // Not ours to know: delete the key if it exists (a compare-and-delete on the owner's own key).
          yield* etcd.call("release", (c) => c.delete().key(keyOf(name, owner)).exec())
          return false
        }
        forget(id)
        const pool = spares.get(entry.ttlSeconds) ?? []
        if (pool.length < 4 && Date.now() - entry.refreshedAt < (entry.ttlSeconds * 1000) / 3) {
          // The lease is fresh: delete just the key and keep the lease as a spare
          // (one write now, and none for the next acquisition).
          const deleted = yield* etcd
            .call("release", (c) => c.delete().key(entry.key).exec())
            .pipe(Effect.onError(() => Effect.ignore(revoke(entry.lease))))
          pool.push({ id: entry.lease, at: entry.refreshedAt })
          spares.set(entry.ttlSeconds, pool)
          return entry.granted && Number(deleted.deleted) > 0
        }
        yield* revoke(entry.lease)
        return entry.granted
      })

    /**
     * Starts watching what blocks `entry` now (from the revision its last
     * read saw): the key just before it, the last earlier writer, or (for
     * permits) the deletion of any earlier key.
     */
    const watchBlocker = (
      name: string,
      entry: Entry,
      last: NonNullable<Entry["lastRead"]>
    ): BlockerWatch | undefined => {
      const kvs = last.kvs
      const index = kvs.findIndex((kv) => kv.key === entry.key)
      if (index === -1) return undefined
      const blocking = blockers(kvs, index)
      if (blocking.length === 0) return undefined
      const own = kvs[index]!.create
      const single = blocking.length === 1 ? blocking[0]!.key : undefined
      const watch: BlockerWatch = { gone: false, wakers: new Set(), cancel: () => {} }
      let cancelled = false
      const fire = () => {
        if (watch.gone) return
        watch.gone = true
        watch.cancel()
        for (const wake of watch.wakers) wake()
        watch.wakers.clear()
      }
      watch.cancel = () => {
        cancelled = true
      }
      // Watched from now (a watch from an older revision is replayed by etcd's
      // slower catch-up loop), then the name read again: a deletion between
      // the last read and the watch is found by the read, any later one by
      // the watch.
      const builder = etcd.client.watch().withPreviousKV()
      ;(single !== undefined ? builder.key(single) : builder.prefix(namePrefix(name)))
        .create()
        .then((watcher) => {
          const stop = () => void watcher.cancel().catch(() => undefined)
          if (cancelled || watch.gone) return stop()
          watch.cancel = stop
          watcher.on("delete", (_kv, previous) => {
            if (single !== undefined || previous === undefined || BigInt(previous.create_revision) < own) fire()
          })
          // A broken watch may have missed the deletion: the next attempt reads.
          watcher.on("disconnected", fire)
          watcher.on("error", fire)
          return etcd.client
            .getAll()
            .prefix(namePrefix(name))
            .sort("Create", "Ascend")
            .exec()
            .then((response) => {
              const now = kvsOf(response.kvs)
              const at = now.findIndex((kv) => kv.key === entry.key)
              const still =
                at !== -1 && (single !== undefined ? now.some((kv) => kv.key === single) : blockers(now, at).length > 0)
              if (!still) fire()
            })
        })
        .catch(fire)
      return watch
    }

    /** Waits until what blocks `owner` is gone (or at once, if nothing blocks it now). */
    const waitTurn = (name: string, owner: string): Effect.Effect<void> =>
      Effect.gen(function* () {
        const entry = entries.get(entryKey(name, owner))
        if (entry === undefined) return
        if (entry.watch === undefined || entry.watch.gone) {
          let last = entry.lastRead
          if (last === undefined) {
            const read = yield* Effect.result(readName(name))
            if (read._tag === "Failure") return
            last = { revision: BigInt(read.success.header.revision), kvs: kvsOf(read.success.kvs) }
          }
          entry.watch = watchBlocker(name, entry, last)
        }
        const watch = entry.watch
        if (watch === undefined || watch.gone) return
        yield* Effect.callback<void>((resume) => {
          const wake = () => resume(Effect.void)
          watch.wakers.add(wake)
          return Effect.sync(() => {
            watch.wakers.delete(wake)
          })
        })
      })

    const subscribe = (name: string, owner?: string) =>
      Effect.gen(function* () {
        if (owner !== undefined && entries.has(entryKey(name, owner))) {
          return waitTurn(name, owner)
        }
        // Without a queued key: any key of the name deleted since now.
        const read = yield* readName(name)
        const listener: Listener = makeListener(owner)
        const watcher = yield* Effect.acquireRelease(
          etcd.call("acquire", (c) =>
            c
              .watch()
              .prefix(namePrefix(name))
              .startRevision((BigInt(read.header.revision) + 1n).toString())
              .create()
          ),
          (w) => Effect.promise(() => w.cancel().catch(() => undefined))
        )
        // Only a deletion (a release, a withdrawal, an expired lease) can let a waiter proceed.
        watcher.on("delete", () => signal(listener))
        watcher.on("disconnected", () => signal(listener))
        return waitForChange(listener, () => Infinity)
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
            if (blockers(list, index).length === 0) {
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
