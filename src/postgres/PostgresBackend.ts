/**
 * The PostgreSQL backend: session-level advisory locks on a few connections
 * reserved from the user's `SqlClient` pool, fencing tokens from a sequence,
 * wake-ups by `LISTEN`/`NOTIFY`.
 *
 * **When to use**
 *
 * Services that already share a PostgreSQL database and need locks among
 * their processes, without another piece of infrastructure.
 *
 * **Details**
 *
 * - Every lock lives on one of a small bounded set of *lock sessions*
 *   (connections taken with `sql.reserve`, default 2 per process). Ten
 *   thousand held locks need two connections, and waiters hold none: they
 *   wait for a notification (one `LISTEN` connection per process) raced
 *   against the retry schedule.
 * - Advisory locks are re-entrant per session, so the backend guards every
 *   key in-process: a session never grants an exclusive key twice, and two
 *   names whose keys collide in one process fail with `InvalidLockRequest`.
 * - Exclusive locks and writers take `pg_try_advisory_lock`, readers
 *   `pg_try_advisory_lock_shared`, a semaphore of limit `n` is `n` permit
 *   slots (one key each). The fencing token is `nextval` of a sequence, read
 *   in the same statement as the grant.
 * - One health check per session (not per lock) checks the connection and
 *   that the session still holds its locks in `pg_locks`. A dead session
 *   marks every lease on it lost at once (`connection-closed`; `unreachable`
 *   when a statement missed its deadline) and is never used again.
 * - Lease TTLs are kept by the holder's process: a grant that is not
 *   extended within its TTL is unlocked by the backend. A process that
 *   vanishes loses its locks when its session ends; a process cut off from
 *   the database keeps them on the server until `idle_session_timeout`
 *   (`sessionIdleTimeout`) ends its sessions.
 *
 * **Gotchas**
 *
 * - Do not point this backend at a transaction-pooling proxy (PgBouncer in
 *   transaction mode): session advisory locks need a real session. The
 *   health check notices a changed backend pid and fails the session.
 * - Waiters are served in FIFO order within a process; across processes the
 *   order is whoever retries first after a release (PostgreSQL has no queue
 *   for try-locks), except that a waiting writer's intent key
 *   (`intentKeyOf`) holds back new readers of every process.
 * - A semaphore and a lock of the same name use different keys; use a name
 *   for one kind only.
 *
 * @since 0.1.0
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import {
  Clock,
  Config,
  Deferred,
  Duration,
  Effect,
  Exit,
  Layer,
  Option,
  Queue,
  Schedule,
  Scope,
  Semaphore
} from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { Connection } from "effect/sql/SqlConnection"
import type { SqlError } from "effect/sql/SqlError"
import {
  type ExtendOutcome,
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
import * as LockConfig from "../LockConfig.ts"
import { InvalidLockRequest, LockBackendUnavailable, LockTimeout, type LostReason } from "../LockError.ts"
import { type Listener, makeListener, signal, waitForChange } from "../internal/changeSignal.ts"
import { StatementTimeout, withDeadline } from "../internal/deadline.ts"
import { keyOf as deriveKey, intentKeyOf as deriveIntentKey } from "./internal/key.ts"

/**
 * The 64-bit advisory-lock key of a name under a namespace, or of one permit
 * slot of a semaphore.
 *
 * **Details**
 *
 * SHA-256 over the UTF-8 bytes of `"effect-locks/pg/v1\0"`, then the
 * namespace and the name, each preceded by its byte length (32-bit
 * big-endian), then for a permit slot a `0x01` byte and the slot index
 * (32-bit big-endian). The key is the first 8 bytes of the digest read as a
 * signed big-endian integer. It never changes between versions (test vectors
 * pin it), so processes of different versions lock the same keys.
 *
 * @since 0.1.0
 */
export const keyOf: (namespace: string, name: string, slot?: number) => bigint = deriveKey

/**
 * The key of a name's writer intent: a process whose writer waits for a
 * name holds it, and readers (of every process) do not start while anyone
 * holds it, so writers are not starved across processes. SHA-256 as in
 * `keyOf`, with a `0x02` byte after the name instead of a slot.
 *
 * @since 0.1.0
 */
export const intentKeyOf: (namespace: string, name: string) => bigint = deriveIntentKey

/**
 * Options of the PostgreSQL backend.
 *
 * @since 0.1.0
 */
export interface Options {
  /** Part of every key: processes share locks only within one namespace. Default `"default"`. */
  readonly namespace?: string | undefined
  /** Lock sessions (reserved connections) per process. Default 2. */
  readonly sessions?: number | undefined
  /** Deadline of every statement; a session that misses it is closed. Default 5 seconds. */
  readonly statementTimeout?: Duration.Input | undefined
  /** How often each session checks its connection and its locks. Default 2 seconds. */
  readonly healthCheckInterval?: Duration.Input | undefined
  /**
   * `idle_session_timeout` of the lock sessions: how long the server keeps the
   * locks of a process that stopped talking to it. Every lease TTL plus
   * `statementTimeout` must stay below it. Default 2 minutes. Health checks
   * run at least every quarter of it, so a live process never looks idle.
   */
  readonly sessionIdleTimeout?: Duration.Input | undefined
  /** The fencing sequence, created if missing. Default `public.effect_locks_fencing`. */
  readonly sequence?: { readonly schema?: string | undefined; readonly name?: string | undefined } | undefined
  /** The `NOTIFY` channel of releases. Default `effect_locks`. */
  readonly channel?: string | undefined
  /** `application_name` of the lock sessions, as `pg_stat_activity` shows it. Default `effect-locks`. */
  readonly applicationName?: string | undefined
  /**
   * Key derivation; default `keyOf(namespace, name, slot)`. Replace it only to
   * test collisions: every process must derive the same keys.
   */
  readonly key?: ((name: string, slot?: number) => bigint) | undefined
}

interface Resolved {
  readonly namespace: string
  readonly sessions: number
  readonly statementMillis: number
  readonly healthMillis: number
  readonly idleMillis: number
  readonly sequence: string
  readonly sequenceSchema: string
  readonly sequenceName: string
  readonly channel: string
  readonly applicationName: string
  readonly key: (name: string, slot?: number) => bigint
  readonly intentKey: (name: string) => bigint
}

const identifier = /^[a-z_][a-z0-9_]{0,62}$/

const invalid = (field: string, reason: string) => new InvalidLockRequest({ field, reason })

const unavailable = (operation: string) => (cause: unknown) => new LockBackendUnavailable({ operation, cause })

const positiveMillis = (field: string, input: Duration.Input | undefined, fallback: number) =>
  Effect.suspend(() => {
    if (input === undefined) return Effect.succeed(fallback)
    const millis = Option.map(Duration.fromInput(input), Duration.toMillis)
    if (Option.isNone(millis) || !(millis.value > 0) || !Number.isFinite(millis.value)) {
      return Effect.fail(invalid(field, "must be a finite duration greater than zero"))
    }
    return Effect.succeed(millis.value)
  })

const validNamespace = (namespace: string | undefined = "default") =>
  namespace.length === 0 || !namespace.isWellFormed()
    ? Effect.fail(invalid("namespace", "must be a non-empty, well-formed string"))
    : Effect.succeed(namespace)

const resolve = (options: Options): Effect.Effect<Resolved, InvalidLockRequest> =>
  Effect.gen(function* () {
    const namespace = yield* validNamespace(options.namespace)
    const sessions = options.sessions ?? 2
    if (!Number.isInteger(sessions) || sessions < 1) return yield* invalid("sessions", "must be an integer >= 1")
    const statementMillis = yield* positiveMillis("statementTimeout", options.statementTimeout, 5_000)
    const idleMillis = yield* positiveMillis("sessionIdleTimeout", options.sessionIdleTimeout, 120_000)
    // A session the server sees idle for idle_session_timeout is ended with its
    // locks: checks come often enough that a live process never looks idle.
    const healthMillis = Math.min(
      yield* positiveMillis("healthCheckInterval", options.healthCheckInterval, 2_000),
      idleMillis / 4
    )
    const sequenceSchema = options.sequence?.schema ?? "public"
    const sequenceName = options.sequence?.name ?? "effect_locks_fencing"
    for (const [field, value] of [
      ["sequence.schema", sequenceSchema],
      ["sequence.name", sequenceName]
    ] as const) {
      if (!identifier.test(value)) return yield* invalid(field, "must be a lower-case SQL identifier")
    }
    const channel = options.channel ?? "effect_locks"
    if (!identifier.test(channel)) return yield* invalid("channel", "must be a lower-case SQL identifier")
    const applicationName = options.applicationName ?? "effect-locks"
    const key = options.key ?? ((name: string, slot?: number) => deriveKey(namespace, name, slot))
    return {
      namespace,
      sessions,
      statementMillis,
      healthMillis,
      idleMillis,
      sequence: `"${sequenceSchema}"."${sequenceName}"`,
      sequenceSchema,
      sequenceName,
      channel,
      applicationName,
      key,
      intentKey: (name: string) => deriveIntentKey(namespace, name)
    }
  })

// ---------------------------------------------------------------------------
// Statements. Keys and counts travel as text and are cast on the server:
// int8 values beyond 2^53 must not pass through JavaScript numbers.

// A writer's first attempt (the common, uncontended case): just the lock.
const grantPlainStatement = (sequence: string) =>
  `SELECT CASE WHEN pg_try_advisory_lock($1::int8) THEN nextval('${sequence}')::text END AS token`

// A writer: the lock `$1`; when refused and `$3`, the name's intent `$2` (so
// that new readers queue behind it); when granted and `$4`, the intent it
// held is dropped in the same statement.
const grantExclusiveStatement = (sequence: string) =>
  `SELECT t.token,
          CASE WHEN t.token IS NULL AND $3::bool THEN pg_try_advisory_lock($2::int8) END AS intent,
          CASE WHEN t.token IS NOT NULL AND $4::bool THEN pg_advisory_unlock($2::int8) END AS dropped
   FROM (SELECT CASE WHEN pg_try_advisory_lock($1::int8) THEN nextval('${sequence}')::text END AS token) AS t`

// A reader: only while nobody holds the name's intent `$2` (a waiting writer
// of any process), then the shared lock `$1`. CASE fixes the order.
const grantSharedStatement = (sequence: string) =>
  `SELECT CASE WHEN pg_try_advisory_lock_shared($2::int8) THEN
            CASE WHEN pg_advisory_unlock_shared($2::int8) THEN
              CASE WHEN pg_try_advisory_lock_shared($1::int8) THEN nextval('${sequence}')::text END
            END
          END AS token`

const dropIntentStatement = `SELECT pg_advisory_unlock($1::int8) AS ok, pg_notify($2, $3)`

// Takes the first `$2` free slots of `$1`, all or nothing within the statement:
// the token when all were free, else the slots it took are unlocked again
// before the statement ends (so no partial hold outlives it, and no NOTIFY).
const grantSlotsStatement = (sequence: string) =>
  `SELECT CASE WHEN cardinality(s.got) = $2::int THEN s.got::text[] END AS got,
          CASE WHEN cardinality(s.got) = $2::int THEN nextval('${sequence}')::text END AS token,
          CASE WHEN cardinality(s.got) < $2::int THEN (SELECT count(pg_advisory_unlock(k)) FROM unnest(s.got) AS k) END AS undone
   FROM (SELECT coalesce(array_agg(k), '{}') AS got
         FROM (SELECT k FROM unnest($1::int8[]) AS k WHERE pg_try_advisory_lock(k) LIMIT $2::int) AS t) AS s`

const unlockStatement = (shared: boolean) =>
  `SELECT pg_advisory_unlock${shared ? "_shared" : ""}($1::int8) AS ok, pg_notify($2, $3)`

const unlockSlotsStatement = `SELECT (SELECT bool_and(pg_advisory_unlock(k)) FROM unnest($1::int8[]) AS k) AS ok, pg_notify($2, $3)`

const checkStatement = `SELECT pg_backend_pid() AS pid,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted)::int AS n`

const keyArray = (keys: ReadonlyArray<bigint>) => `{${keys.join(",")}}`

// ---------------------------------------------------------------------------
// State

interface Session {
  readonly id: number
  readonly pid: number
  readonly conn: Connection
  readonly scope: Scope.Closeable
  readonly mutex: Semaphore.Semaphore
  alive: boolean
  /** Completed with the reason when the session is given up. */
  readonly lost: Deferred.Deferred<LostReason>
  /** Keys this session holds on the server, with PostgreSQL's own re-entrancy count. */
  readonly keys: Map<bigint, number>
  readonly holds: Set<Hold>
  /** Callers waiting for a check that starts after they asked. */
  nextCheck: Deferred.Deferred<boolean> | undefined
  checking: boolean
  lastCheckAt: number
  /** When the health loop wakes next, and how to wake it sooner (a hold that expires earlier). */
  plannedWake: number
  wake: Deferred.Deferred<void>
}

interface Hold {
  readonly name: string
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  readonly keys: ReadonlyArray<bigint>
  readonly token: bigint
  readonly acquiredAt: number
  expiresAt: number
  readonly metadata: Readonly<Record<string, string>>
  readonly session: Session
  /** Set while its unlock runs: it still blocks the name in-process until the server answered. */
  releasing: Deferred.Deferred<void> | undefined
  lost: LostReason | undefined
  /** The grant as answered, so that a repeated request gets the very same value. */
  grant: Grant
}

interface Waiter {
  readonly owner: string
  readonly mode: LockMode
  readonly permits: number
  readonly since: number
  expiresAt: number
  readonly metadata: Readonly<Record<string, string>>
}

interface Entry {
  readonly name: string
  readonly key: bigint
  kind: "lock" | "semaphore" | undefined
  limit: number
  /** The keys this entry claims in the process-wide key table while it is busy. */
  claimed: ReadonlyArray<bigint>
  readonly holders: Map<string, Hold>
  /** Grants on their way to the server: they count as holders in-process. */
  readonly pending: Map<string, { readonly mode: LockMode; readonly permits: number }>
  waiters: Array<Waiter>
  readonly listeners: Set<Listener>
  /** The name's writer intent, held on `session` for the waiting writer `owner`. */
  intent: { readonly session: Session; readonly owner: string; readonly key: bigint } | undefined
}

const kindOf = (mode: LockMode) => (mode === "permits" ? "semaphore" : "lock")

/**
 * Builds the backend on the `PgClient` in context. Lock sessions are reserved
 * lazily and given back (with `pg_advisory_unlock_all()`) when the scope
 * closes.
 *
 * @since 0.1.0
 */
export const make = (
  options: Options = {}
): Effect.Effect<LockBackendShape, LockBackendUnavailable | InvalidLockRequest, PgClient.PgClient | Scope.Scope> =>
  Effect.gen(function* () {
    const config = yield* resolve(options)
    const pg = yield* PgClient.PgClient
    const backendScope = yield* Effect.scope
    // Background work started from synchronous bookkeeping runs with this
    // layer's services (its Clock included).
    const runFork = Effect.runForkWith(yield* Effect.context<never>())

    yield* ensureSequence(pg, config)

    const entries = new Map<string, Entry>()
    /** key -> names: routes notifications; a key claimed by two busy names is a collision. */
    const byKey = new Map<bigint, Set<Entry>>()
    const claimedBy = new Map<bigint, string>()
    const sessions: Array<Session> = []
    /** Sessions not yet given back to the pool, alive or dead. */
    const unreturned = new Set<Session>()
    /** Backend pids of our lock sessions: their notifications are echoes of our own releases. */
    const ownPids = new Set<number>()
    const openMutex = Semaphore.makeUnsafe(1)
    let sessionIds = 0

    // -- local bookkeeping (synchronous, so each step is atomic) ------------

    // Entries come and go with every acquisition; their keys (a SHA-256 each)
    // are kept for the names used most recently.
    const keyCache = new Map<string, bigint>()
    const keyFor = (name: string): bigint => {
      let key = keyCache.get(name)
      if (key === undefined) {
        if (keyCache.size >= 4096) keyCache.clear()
        key = config.key(name)
        keyCache.set(name, key)
      }
      return key
    }

    const intentCache = new Map<string, bigint>()
    const intentFor = (name: string): bigint => {
      let key = intentCache.get(name)
      if (key === undefined) {
        if (intentCache.size >= 4096) intentCache.clear()
        key = config.intentKey(name)
        intentCache.set(name, key)
      }
      return key
    }

    const entryFor = (name: string): Entry => {
      let entry = entries.get(name)
      if (entry === undefined) {
        entry = {
          name,
          key: keyFor(name),
          kind: undefined,
          limit: 1,
          claimed: [],
          holders: new Map(),
          pending: new Map(),
          waiters: [],
          listeners: new Set(),
          intent: undefined
        }
        entries.set(name, entry)
        let set = byKey.get(entry.key)
        if (set === undefined) byKey.set(entry.key, (set = new Set()))
        set.add(entry)
      }
      return entry
    }

    const busy = (entry: Entry) => entry.holders.size > 0 || entry.pending.size > 0 || entry.waiters.length > 0

    const gc = (entry: Entry) => {
      if (busy(entry)) return
      entry.kind = undefined
      for (const key of entry.claimed) if (claimedBy.get(key) === entry.name) claimedBy.delete(key)
      entry.claimed = []
      if (entry.listeners.size === 0) {
        entries.delete(entry.name)
        const set = byKey.get(entry.key)
        set?.delete(entry)
        if (set?.size === 0) byKey.delete(entry.key)
      }
    }

    /** Claims the keys of a name for as long as it is busy; another name with one of them is a collision. */
    const claim = (entry: Entry, keys: ReadonlyArray<bigint>): InvalidLockRequest | undefined => {
      for (const key of keys) {
        const other = claimedBy.get(key)
        if (other !== undefined && other !== entry.name) {
          return invalid(
            "name",
            `"${entry.name}" and "${other}" map to the same advisory-lock key ${key} in namespace "${config.namespace}"; rename one of them`
          )
        }
      }
      for (const key of keys) claimedBy.set(key, entry.name)
      entry.claimed = keys
      return undefined
    }

    /**
     * Wakes the waiters that may proceed after a change: the front of the
     * queue (the first waiter, or the leading readers), and every listener
     * that is not a queued waiter. Waiting
     * further back is not woken by each release: no herd.
     */
    const notify = (entry: Entry, except?: string) => {
      if (entry.listeners.size === 0) return
      const front = new Set<string>()
      const first = entry.waiters[0]
      if (first !== undefined) {
        front.add(first.owner)
        // Readers at the front proceed together; anything else one at a time.
        if (first.mode === "shared") {
          for (let i = 1; i < entry.waiters.length && entry.waiters[i]!.mode === "shared"; i++) {
            front.add(entry.waiters[i]!.owner)
          }
        }
      }
      // A copy: a woken waiter may run inline and unsubscribe.
      for (const listener of Array.from(entry.listeners)) {
        const owner = listener.owner
        if (owner !== undefined && owner === except) continue
        if (owner === undefined || front.has(owner) || !entry.waiters.some((w) => w.owner === owner)) {
          signal(listener)
        }
      }
    }

    const notifyAll = () => {
      for (const entry of entries.values()) notify(entry)
    }

    /** The session's own count of a key, mirroring PostgreSQL's re-entrancy count. */
    const addKey = (session: Session, key: bigint) => session.keys.set(key, (session.keys.get(key) ?? 0) + 1)
    const removeKey = (session: Session, key: bigint) => {
      const count = (session.keys.get(key) ?? 0) - 1
      if (count > 0) session.keys.set(key, count)
      else session.keys.delete(key)
    }

    /**
     * Drops the name's writer intent (its writer left without a grant) and
     * wakes the readers of other processes that it held back.
     */
    const dropIntent = (entry: Entry): Effect.Effect<void> =>
      Effect.suspend(() => {
        const intent = entry.intent
        if (intent === undefined) return Effect.void
        entry.intent = undefined
        if (!intent.session.alive) return Effect.void
        return run(intent.session, "release", dropIntentStatement, [
          intent.key.toString(),
          config.channel,
          String(entry.key)
        ]).pipe(
          Effect.tap(() => Effect.sync(() => removeKey(intent.session, intent.key))),
          Effect.ignore
        )
      })

    const slotKeys = (entry: Entry) => Array.from({ length: entry.limit }, (_, slot) => config.key(entry.name, slot))

    const eligible = (entry: Entry, request: GrantRequest, position: number): boolean => {
      const ahead = entry.waiters.slice(0, position)
      const holds = [...entry.holders.values(), ...entry.pending.values()]
      switch (request.mode) {
        case "exclusive":
          return holds.length === 0 && ahead.length === 0
        case "shared":
          return !holds.some((h) => h.mode === "exclusive") && !ahead.some((w) => w.mode === "exclusive")
        case "permits": {
          let held = 0
          for (const h of holds) held += h.permits
          return held + request.permits <= entry.limit && ahead.length === 0
        }
      }
    }

    /** Drops expired waiter registrations and starts the unlock of expired holds. */
    const sweep = (entry: Entry, now: number) => {
      const live = entry.waiters.filter((waiter) => waiter.expiresAt > now)
      if (live.length !== entry.waiters.length) {
        entry.waiters = live
        const intent = entry.intent
        if (intent !== undefined && !live.some((waiter) => waiter.owner === intent.owner)) {
          runFork(dropIntent(entry))
        }
        notify(entry)
      }
      for (const hold of entry.holders.values()) {
        if (hold.expiresAt <= now && hold.releasing === undefined) {
          runFork(Effect.ignore(releaseHold(entry, hold)))
        }
      }
    }

    // -- sessions -------------------------------------------------------------

    /**
     * Gives a session up: every lease on it is lost at once, no acquisition
     * uses it again, and its connection is closed without going back to the
     * pool holding locks (terminated on the server when its state is unknown).
     */
    const kill = (session: Session, reason: LostReason, terminate: boolean) =>
      Effect.suspend(() => {
        if (!session.alive) return Effect.void
        session.alive = false
        const index = sessions.indexOf(session)
        if (index !== -1) sessions.splice(index, 1)
        for (const hold of session.holds) hold.lost ??= reason
        for (const entry of entries.values()) if (entry.intent?.session === session) entry.intent = undefined
        session.keys.clear()
        Deferred.doneUnsafe(session.lost, Effect.succeed(reason))
        const names = new Set<string>()
        for (const hold of session.holds) names.add(hold.name)
        const cleanup = Effect.gen(function* () {
          if (terminate) {
            yield* Effect.ignore(
              withDeadline(config.statementMillis, pg`SELECT pg_terminate_backend(${session.pid})`.pipe(Effect.asVoid))
            )
          }
          // A connection that still answers must not return to the pool with
          // locks or our settings; one that does not (broken, or a statement
          // still in flight) is closed, not returned.
          yield* giveBack(session)
          ownPids.delete(session.pid)
          // Its locks are gone on the server: wake the waiters, here and in
          // other processes (nobody released them, so nobody notified).
          for (const name of names) {
            const entry = entries.get(name)
            if (entry !== undefined) notify(entry)
            yield* Effect.ignore(withDeadline(config.statementMillis, pg.notify(config.channel, String(keyFor(name)))))
          }
        })
        return Effect.asVoid(Effect.forkIn(cleanup, backendScope))
      })

    /**
     * Returns a lock session to the pool: its locks unlocked and its settings
     * reset. If any of that fails the connection is broken or still has a
     * statement in flight, and the pool closes it instead of reusing it.
     */
    const giveBack = (session: Session) =>
      Effect.gen(function* () {
        // Once, by whoever comes first: a dead session's cleanup or the backend's finalizer.
        if (!unreturned.delete(session)) return
        for (const statement of [
          "SELECT pg_advisory_unlock_all()",
          "RESET application_name",
          "RESET idle_session_timeout"
        ]) {
          const ok = yield* withDeadline(config.statementMillis, session.conn.execute(statement, [], undefined)).pipe(
            Effect.as(true),
            Effect.orElseSucceed(() => false)
          )
          if (!ok) break
        }
        yield* Scope.close(session.scope, Exit.void)
      }).pipe(Effect.uninterruptible)

    /** Classifies a failed statement: a missed deadline makes the session `unreachable`, anything else ends it. */
    const failSession = (session: Session, error: SqlError | StatementTimeout) =>
      error instanceof StatementTimeout ? kill(session, "unreachable", true) : kill(session, "connection-closed", true)

    /** One statement on a lock session, under the deadline; the caller holds the session's mutex. */
    const runLocked = (session: Session, operation: string, sql: string, params: ReadonlyArray<unknown>) =>
      Effect.suspend(() =>
        session.alive
          ? withDeadline(config.statementMillis, session.conn.execute(sql, params, undefined)).pipe(
              Effect.tapError((error) => failSession(session, error)),
              Effect.mapError(unavailable(operation))
            )
          : Effect.fail(unavailable(operation)("the lock session was closed"))
      )

    /** One statement on a lock session: serialized with the session's other statements, under the deadline. */
    const run = (session: Session, operation: string, sql: string, params: ReadonlyArray<unknown>) =>
      session.mutex.withPermits(1)(runLocked(session, operation, sql, params))

    const openSession = Effect.gen(function* () {
      // Not a child of the backend's scope: that would close it (and give the
      // connection back to the pool, locks and all) before the backend's own
      // finalizer has unlocked it. `giveBack` closes it, always.
      const scope = yield* Scope.make("sequential")
      const opened = yield* withDeadline(
        config.statementMillis,
        Effect.gen(function* () {
          const conn = yield* Scope.provide(scope)(pg.reserve)
          const rows = yield* conn.execute(
            `SELECT pg_backend_pid() AS pid, set_config('application_name', $1, false),
                    set_config('idle_session_timeout', $2, false)`,
            [config.applicationName, String(Math.ceil(config.idleMillis))],
            undefined
          )
          return { conn, pid: Number((rows[0] as { pid: number }).pid) }
        })
      ).pipe(
        Effect.tapError(() => Scope.close(scope, Exit.void)),
        Effect.mapError(unavailable("open lock session"))
      )
      const session: Session = {
        id: ++sessionIds,
        pid: opened.pid,
        conn: opened.conn,
        scope,
        mutex: Semaphore.makeUnsafe(1),
        alive: true,
        lost: Deferred.makeUnsafe<LostReason>(),
        keys: new Map(),
        holds: new Set(),
        nextCheck: undefined,
        checking: false,
        lastCheckAt: yield* Clock.currentTimeMillis,
        plannedWake: Infinity,
        wake: Deferred.makeUnsafe<void>()
      }
      sessions.push(session)
      unreturned.add(session)
      ownPids.add(session.pid)
      yield* Effect.forkIn(healthLoop(session), backendScope)
      return session
    })

    /** The live session with the fewest holds; a new one while fewer than `sessions` exist and all are in use. */
    const pickSession = (prefer?: (session: Session) => boolean): Effect.Effect<Session, LockBackendUnavailable> =>
      Effect.suspend(() => {
        const preferred = prefer === undefined ? undefined : sessions.find(prefer)
        if (preferred !== undefined) return Effect.succeed(preferred)
        const best = leastLoaded()
        if (best !== undefined && (best.holds.size === 0 || sessions.length >= config.sessions)) {
          return Effect.succeed(best)
        }
        return openMutex.withPermits(1)(
          Effect.suspend(() => {
            const again = leastLoaded()
            if (again !== undefined && (again.holds.size === 0 || sessions.length >= config.sessions)) {
              return Effect.succeed(again)
            }
            return openSession
          })
        )
      })

    const leastLoaded = (): Session | undefined => {
      let best: Session | undefined
      for (const session of sessions) if (best === undefined || session.holds.size < best.holds.size) best = session
      return best
    }

    /** A check that starts after this call: coalesced with every caller that asked meanwhile. */
    const freshCheck = (session: Session): Effect.Effect<boolean> =>
      Effect.suspend(() => {
        if (!session.alive) return Effect.succeed(false)
        const next = (session.nextCheck ??= Deferred.makeUnsafe<boolean>())
        if (!session.checking) {
          session.checking = true
          runFork(checkRunner(session))
        }
        return Deferred.await(next)
      })

    const checkRunner = (session: Session) =>
      Effect.gen(function* () {
        while (session.nextCheck !== undefined) {
          const batch = session.nextCheck
          session.nextCheck = undefined
          const ok = yield* checkOnce(session)
          Deferred.doneUnsafe(batch, Effect.succeed(ok))
        }
        session.checking = false
      })

    const checkOnce = (session: Session) =>
      Effect.gen(function* () {
        session.lastCheckAt = yield* Clock.currentTimeMillis
        const rows = yield* Effect.option(run(session, "health check", checkStatement, []))
        if (Option.isNone(rows)) return false
        const row = rows.value[0] as { pid: number; n: number } | undefined
        if (row === undefined || Number(row.pid) !== session.pid) {
          // A different backend answers: the session (and its locks) is gone.
          yield* kill(session, "connection-closed", false)
          return false
        }
        if (Number(row.n) !== session.keys.size) {
          yield* kill(session, "connection-closed", true)
          return false
        }
        return session.alive
      })

    const healthLoop = (session: Session) =>
      Effect.gen(function* () {
        while (session.alive) {
          const now = yield* Clock.currentTimeMillis
          let earliest = session.lastCheckAt + config.healthMillis
          for (const hold of session.holds) {
            if (hold.releasing === undefined) earliest = Math.min(earliest, hold.expiresAt)
          }
          if (earliest > now) {
            session.plannedWake = earliest
            yield* Effect.raceFirst(Effect.sleep(earliest - now), Deferred.await(session.wake))
            session.plannedWake = Infinity
            if (yield* Deferred.isDone(session.wake)) session.wake = Deferred.makeUnsafe<void>()
            continue
          }
          for (const hold of session.holds) {
            if (hold.releasing === undefined && hold.expiresAt <= now) {
              const entry = entries.get(hold.name)
              if (entry !== undefined) yield* Effect.ignore(releaseHold(entry, hold))
            }
          }
          if (session.lastCheckAt + config.healthMillis <= now) yield* freshCheck(session)
        }
      })

    // -- grants ---------------------------------------------------------------

    /**
     * The server half of a grant: one statement on `session`. The checks of
     * what the session already holds run under its mutex, together with the
     * statement, so two grants in flight on one session never pick the same
     * key (a session would grant it twice: advisory locks are re-entrant).
     */
    const grantOnServer = (session: Session, entry: Entry, request: GrantRequest, registered: boolean) =>
      session.mutex.withPermits(1)(
        Effect.gen(function* () {
          switch (request.mode) {
            case "shared": {
              const rows = yield* runLocked(session, "tryAcquire", grantSharedStatement(config.sequence), [
                entry.key.toString(),
                intentFor(entry.name).toString()
              ])
              const token = (rows[0] as { token: string | null } | undefined)?.token ?? null
              if (token === null) return Option.none<readonly [bigint, ReadonlyArray<bigint>]>()
              addKey(session, entry.key)
              return Option.some([BigInt(token), [entry.key]] as const)
            }
            case "exclusive": {
              if (session.keys.has(entry.key)) return Option.none()
              const mine = entry.intent !== undefined && entry.intent.owner === request.owner
              const drop = mine && entry.intent?.session === session
              // The intent is taken by a writer that already waits (its first
              // attempt was refused): an uncontended lock costs no more than a
              // plain try-lock.
              const want = request.queue && registered && entry.intent === undefined
              if (!want && !drop) {
                const plain = yield* runLocked(session, "tryAcquire", grantPlainStatement(config.sequence), [
                  entry.key.toString()
                ])
                const plainToken = (plain[0] as { token: string | null } | undefined)?.token ?? null
                if (plainToken === null) return Option.none()
                addKey(session, entry.key)
                return Option.some([BigInt(plainToken), [entry.key]] as const)
              }
              const intentKey = intentFor(entry.name)
              const rows = yield* runLocked(session, "tryAcquire", grantExclusiveStatement(config.sequence), [
                entry.key.toString(),
                intentKey.toString(),
                want,
                drop
              ])
              const row = rows[0] as
                { token: string | null; intent: boolean | null; dropped: boolean | null } | undefined
              if (row?.intent === true) {
                addKey(session, intentKey)
                entry.intent = { session, owner: request.owner, key: intentKey }
              }
              if (row?.dropped === true) {
                removeKey(session, intentKey)
                entry.intent = undefined
              }
              const token = row?.token ?? null
              if (token === null) return Option.none()
              addKey(session, entry.key)
              return Option.some([BigInt(token), [entry.key]] as const)
            }
            case "permits": {
              const candidates = slotKeys(entry).filter((key) => !session.keys.has(key))
              if (candidates.length < request.permits) return Option.none()
              const rows = yield* runLocked(session, "tryAcquire", grantSlotsStatement(config.sequence), [
                keyArray(candidates),
                String(request.permits)
              ])
              const row = rows[0] as { got: ReadonlyArray<string> | null; token: string | null } | undefined
              if (row?.token === null || row?.token === undefined || row.got === null) return Option.none()
              const got = row.got.map((k) => BigInt(k))
              for (const key of got) addKey(session, key)
              return Option.some([BigInt(row.token), got] as const)
            }
          }
        })
      )

    const tryAcquire = (request: GrantRequest) =>
      Effect.uninterruptible(
        Effect.gen(function* () {
          const tooLong = ttlCheck(request.ttlMillis)
          if (tooLong !== undefined) return yield* tooLong
          const now = yield* Clock.currentTimeMillis
          const entry = entryFor(request.name)
          sweep(entry, now)
          const kind = kindOf(request.mode)
          const inUse = busy(entry)
          if (inUse && entry.kind !== kind) {
            gc(entry)
            return yield* invalid("mode", `"${request.name}" is in use as a ${entry.kind}, not as a ${kind}`)
          }
          if (inUse && kind === "semaphore" && entry.limit !== request.limit) {
            gc(entry)
            return yield* invalid(
              "limit",
              `"${request.name}" is in use with limit ${entry.limit}, not ${request.limit}`
            )
          }
          const existing = entry.holders.get(request.owner)
          if (existing !== undefined && existing.releasing === undefined) {
            // A repeated request (a retry after a lost answer) gets the same grant.
            existing.expiresAt = now + request.ttlMillis
            return Option.some(existing.grant)
          }
          if (entry.pending.has(request.owner)) return Option.none<Grant>()
          if (!inUse) {
            entry.kind = kind
            entry.limit = request.limit
            const collision = claim(entry, kind === "semaphore" ? [entry.key, ...slotKeys(entry)] : [entry.key])
            if (collision !== undefined) {
              entry.kind = undefined
              gc(entry)
              return yield* collision
            }
          }
          const index = entry.waiters.findIndex((waiter) => waiter.owner === request.owner)
          const position = index === -1 ? entry.waiters.length : index
          const register = () => {
            const at = entry.waiters.findIndex((waiter) => waiter.owner === request.owner)
            if (at !== -1) {
              entry.waiters[at]!.expiresAt = now + request.ttlMillis
            } else if (request.queue) {
              // Back to the position it had: a refused attempt does not lose its place.
              entry.waiters.splice(Math.min(position, entry.waiters.length), 0, {
                owner: request.owner,
                mode: request.mode,
                permits: request.permits,
                since: now,
                expiresAt: now + request.ttlMillis,
                metadata: request.metadata
              })
            }
          }
          if (!eligible(entry, request, position)) {
            register()
            gc(entry)
            return Option.none<Grant>()
          }
          if (index !== -1) entry.waiters.splice(index, 1)
          entry.pending.set(request.owner, { mode: request.mode, permits: request.permits })
          const attempt = yield* Effect.exit(
            Effect.flatMap(
              pickSession(
                // Our own writer's intent does not hold back our own readers (the
                // queue orders them in-process): they use the session that holds it,
                // where PostgreSQL sees no conflict.
                entry.intent !== undefined && (request.mode === "shared" || entry.intent.owner === request.owner)
                  ? (s) => s === entry.intent?.session && s.alive
                  : request.mode === "shared"
                    ? (s) => (s.keys.get(entry.key) ?? 0) > 0 && s.alive
                    : undefined
              ),
              (session) =>
                Effect.map(
                  grantOnServer(session, entry, request, index !== -1),
                  Option.map((got) => [session, got] as const)
                )
            )
          )
          entry.pending.delete(request.owner)
          if (Exit.isFailure(attempt) || Option.isNone(attempt.value)) {
            register()
            gc(entry)
            // A queued requester is back at its place: nobody's eligibility
            // changed, and waking anyone (itself or the readers beside it) would
            // make them retry at once, a busy loop while another process holds
            // the name. A one-off attempt leaves: whoever queued behind its
            // pending grant may proceed now.
            if (!request.queue) notify(entry, request.owner)
            return yield* attempt.pipe(Effect.as(Option.none<Grant>()))
          }
          const [session, [token, keys]] = attempt.value.value
          const grantedAt = yield* Clock.currentTimeMillis
          const hold: Hold = {
            name: request.name,
            owner: request.owner,
            mode: request.mode,
            permits: request.permits,
            keys,
            token,
            acquiredAt: grantedAt,
            expiresAt: now + request.ttlMillis,
            metadata: request.metadata,
            session,
            releasing: undefined,
            lost: session.alive ? undefined : "connection-closed",
            grant: { token, lost: Deferred.await(session.lost) }
          }
          entry.holders.set(request.owner, hold)
          session.holds.add(hold)
          // The health loop also ends expired holds: wake it if this one expires first.
          if (hold.expiresAt < session.plannedWake) Deferred.doneUnsafe(session.wake, Effect.void)
          if (request.mode !== "exclusive" && entry.waiters.length > 0) notify(entry, request.owner)
          return Option.some(hold.grant)
        })
      )

    /** Unlocks a hold on its session (if the session still lives), then frees the name in-process. */
    const releaseHold = (entry: Entry, hold: Hold): Effect.Effect<boolean> =>
      Effect.uninterruptible(
        Effect.suspend(() => {
          if (hold.releasing !== undefined) return Effect.as(Deferred.await(hold.releasing), false)
          const done = Deferred.makeUnsafe<void>()
          hold.releasing = done
          const { session } = hold
          const unlock =
            hold.lost === undefined && session.alive
              ? run(
                  session,
                  "release",
                  hold.mode === "permits" ? unlockSlotsStatement : unlockStatement(hold.mode === "shared"),
                  [
                    hold.mode === "permits" ? keyArray(hold.keys) : hold.keys[0]!.toString(),
                    config.channel,
                    String(entry.key)
                  ]
                ).pipe(
                  Effect.map((rows) => (rows[0] as { ok: boolean | null } | undefined)?.ok === true),
                  Effect.tap(() =>
                    Effect.sync(() => {
                      for (const key of hold.keys) {
                        const count = (session.keys.get(key) ?? 0) - 1
                        if (count > 0) session.keys.set(key, count)
                        else session.keys.delete(key)
                      }
                    })
                  ),
                  // A failed unlock closed the session: the server drops the lock with it.
                  Effect.orElseSucceed(() => false)
                )
              : Effect.succeed(false)
          return Effect.ensuring(
            unlock,
            Effect.sync(() => {
              if (entry.holders.get(hold.owner) === hold) entry.holders.delete(hold.owner)
              session.holds.delete(hold)
              Deferred.doneUnsafe(done, Effect.void)
              notify(entry)
              gc(entry)
            })
          )
        })
      )

    const ttlCheck = (ttlMillis: number): InvalidLockRequest | undefined =>
      // A holder cut off from the database believes in its lease for up to a
      // TTL (without heartbeat); the server must keep the lock that long.
      ttlMillis + config.statementMillis >= config.idleMillis
        ? invalid(
            "ttl",
            `the TTL plus the statement deadline (${config.statementMillis} ms) must be below the PostgreSQL backend's sessionIdleTimeout (${config.idleMillis} ms)`
          )
        : undefined

    const extend = (name: string, owner: string, ttlMillis: number): Effect.Effect<ExtendOutcome, InvalidLockRequest> =>
      Effect.gen(function* () {
        const tooLong = ttlCheck(ttlMillis)
        if (tooLong !== undefined) return yield* tooLong
        const now = yield* Clock.currentTimeMillis
        const entry = entries.get(name)
        const hold = entry?.holders.get(owner)
        if (entry === undefined || hold === undefined || hold.releasing !== undefined) {
          const other = entry !== undefined && [...entry.holders.values()].some((h) => h.mode === "exclusive")
          return other ? "stolen" : "expired"
        }
        if (hold.lost !== undefined) return hold.lost
        if (hold.expiresAt <= now) {
          yield* Effect.ignore(releaseHold(entry, hold))
          return "expired"
        }
        // The extension counts from before the check was sent.
        yield* freshCheck(hold.session)
        if (hold.lost !== undefined) return hold.lost
        if (hold.releasing !== undefined) return "expired"
        hold.expiresAt = Math.max(hold.expiresAt, now + ttlMillis)
        return "extended"
      })

    const release = (name: string, owner: string): Effect.Effect<boolean> =>
      Effect.suspend(() => {
        const entry = entries.get(name)
        if (entry === undefined) return Effect.succeed(false)
        const index = entry.waiters.findIndex((waiter) => waiter.owner === owner)
        if (index !== -1) {
          entry.waiters.splice(index, 1)
          notify(entry)
        }
        const leaving = entry.intent?.owner === owner ? dropIntent(entry) : Effect.void
        const hold = entry.holders.get(owner)
        if (hold === undefined) {
          return Effect.uninterruptible(leaving).pipe(Effect.andThen(Effect.sync(() => gc(entry))), Effect.as(false))
        }
        return Effect.andThen(Effect.uninterruptible(leaving), releaseHold(entry, hold))
      })

    // -- wake-ups -------------------------------------------------------------

    const listenReady = yield* Deferred.make<void, LockBackendUnavailable>()
    const listenLoop = Effect.gen(function* () {
      let first = true
      const backoff = yield* Schedule.toStep(
        Schedule.min([Schedule.exponential(Duration.millis(50)), Schedule.spaced(Duration.seconds(5))])
      )
      while (true) {
        const result = yield* Effect.exit(
          Effect.scoped(
            Effect.gen(function* () {
              const queue = yield* pg.listen(config.channel)
              if (first) yield* Deferred.succeed(listenReady, undefined)
              // Notifications may have been missed while nobody listened.
              else notifyAll()
              first = false
              while (true) {
                const message = yield* Queue.take(queue)
                // Our own releases woke our waiters already.
                if (ownPids.has(message.processId)) continue
                let key: bigint | undefined
                try {
                  key = BigInt(message.payload)
                } catch {
                  key = undefined
                }
                const targets = key === undefined ? undefined : byKey.get(key)
                if (targets !== undefined) for (const entry of targets) notify(entry)
              }
            })
          )
        )
        if (first) {
          yield* Deferred.fail(
            listenReady,
            unavailable("listen")(Exit.isFailure(result) ? result.cause : "the listener stopped")
          )
          return
        }
        notifyAll()
        const now = yield* Clock.currentTimeMillis
        const [, delay] = yield* Effect.orDie(backoff(now, undefined))
        yield* Effect.sleep(delay)
      }
    })
    yield* Effect.forkIn(listenLoop, backendScope)
    yield* withDeadline(config.statementMillis, Deferred.await(listenReady)).pipe(
      Effect.mapError((error) => (error instanceof StatementTimeout ? unavailable("listen")(error) : error))
    )

    const subscribe = (name: string, owner?: string) =>
      Effect.gen(function* () {
        const listener = makeListener(owner)
        entryFor(name).listeners.add(listener)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            const entry = entries.get(name)
            if (entry === undefined) return
            entry.listeners.delete(listener)
            gc(entry)
          })
        )
        // An expiry is a change nobody announces: the wait also ends at the
        // earliest expiry (a hold whose unlock is running signals when done).
        return waitForChange(listener, () => {
          const entry = entries.get(name)
          let earliest = Infinity
          if (entry !== undefined) {
            for (const hold of entry.holders.values()) {
              if (hold.releasing === undefined) earliest = Math.min(earliest, hold.expiresAt)
            }
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
          for (const n of name === undefined ? [...entries.keys()] : [name]) {
            const entry = entries.get(n)
            if (entry === undefined) continue
            sweep(entry, now)
            for (const h of entry.holders.values()) {
              if (h.releasing !== undefined || h.expiresAt <= now) continue
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
            gc(entry)
          }
          return { holders, waiters }
        })
      )

    // Give the sessions back clean when the backend's scope closes.
    yield* Effect.addFinalizer(() =>
      Effect.forEach(
        [...unreturned],
        (session) =>
          Effect.gen(function* () {
            const alive = session.alive
            session.alive = false
            Deferred.doneUnsafe(session.lost, Effect.succeed("connection-closed"))
            // A live session's statements finish first; a dead one may have one stuck for ever.
            yield* alive ? session.mutex.withPermits(1)(giveBack(session)) : giveBack(session)
          }),
        { discard: true, concurrency: "unbounded" }
      )
    )

    return LockBackend.of({
      kind: "postgres",
      guarantees,
      tryAcquire,
      extend,
      release,
      subscribe,
      inspect
    })
  })

/**
 * What the PostgreSQL backend promises.
 *
 * @since 0.1.0
 */
export const guarantees = {
  fencing: "strict",
  scope: "one database",
  leaseEnds: "TTL, session end (crash, termination, idle_session_timeout) or scope",
  wakeUp: "LISTEN/NOTIFY",
  fairness: "best-effort"
} as const satisfies LockBackendShape["guarantees"]

const ensureSequence = (pg: PgClient.PgClient, config: Resolved) =>
  Effect.gen(function* () {
    const find = pg<{ readonly relkind: string; readonly cache: string | null; readonly cycle: boolean | null }>`
      SELECT c.relkind::text AS relkind, s.seqcache::text AS cache, s.seqcycle AS cycle
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_sequence s ON s.seqrelid = c.oid
      WHERE n.nspname = ${config.sequenceSchema} AND c.relname = ${config.sequenceName}`
    let rows = yield* find
    if (rows.length === 0) {
      if (config.sequenceSchema !== "public") {
        yield* pg.unsafe(`CREATE SCHEMA IF NOT EXISTS "${config.sequenceSchema}"`).pipe(Effect.ignore)
      }
      // Two processes creating it at once: one wins, the other's unique violation is harmless.
      yield* pg.unsafe(`CREATE SEQUENCE IF NOT EXISTS ${config.sequence} AS bigint NO CYCLE`).pipe(Effect.ignore)
      rows = yield* find
    }
    const row = rows[0]
    if (row === undefined) {
      return yield* new LockBackendUnavailable({
        operation: "create fencing sequence",
        cause: `sequence ${config.sequence} is missing and could not be created`
      })
    }
    if (row.relkind !== "S") {
      return yield* invalid("sequence", `${config.sequence} exists and is not a sequence`)
    }
    // A cached or cycling sequence hands out values out of order across sessions.
    if (row.cache !== "1" || row.cycle === true) {
      return yield* invalid("sequence", `${config.sequence} must have CACHE 1 and NO CYCLE for tokens to increase`)
    }
  }).pipe(
    Effect.catchTag("SqlError", (cause) => Effect.fail(new LockBackendUnavailable({ operation: "prepare", cause }))),
    (effect) => withDeadline(Math.max(1, config.statementMillis), effect),
    Effect.mapError((error) =>
      error instanceof StatementTimeout ? new LockBackendUnavailable({ operation: "prepare", cause: error }) : error
    )
  )

/**
 * The backend as a layer, on the `PgClient` in context (e.g.
 * `PgClient.layer({ url })` from `@effect/sql-pg`).
 *
 * @since 0.1.0
 */
export const layer = (
  options: Options = {}
): Layer.Layer<LockBackend, LockBackendUnavailable | InvalidLockRequest, PgClient.PgClient> =>
  Layer.effect(LockBackend, make(options))

/**
 * The backend and its own `PgClient` from the environment:
 * `LOCK_POSTGRES_URL` (required), `LOCK_POSTGRES_NAMESPACE`,
 * `LOCK_POSTGRES_SESSIONS`. Used by `LockBackend.layerConfig` when
 * `LOCK_PROVIDER=postgres`.
 *
 * @since 0.1.0
 */
export const layerConfig: Layer.Layer<LockBackend, Config.ConfigError | LockBackendUnavailable | InvalidLockRequest> =
  Layer.unwrap(
    Effect.gen(function* () {
      const url = yield* Config.Redacted("LOCK_POSTGRES_URL")
      const namespace = yield* Config.String("LOCK_POSTGRES_NAMESPACE").pipe(Config.withDefault("default"))
      const sessions = yield* Config.Int("LOCK_POSTGRES_SESSIONS").pipe(Config.withDefault(2))
      return layer({ namespace, sessions }).pipe(
        Layer.provide(PgClient.layer({ url, applicationName: "effect-locks" })),
        Layer.catchTag("SqlError", (cause) =>
          Layer.effect(LockBackend, Effect.fail(new LockBackendUnavailable({ operation: "connect", cause })))
        )
      )
    })
  )

registerProvider("postgres", () => layerConfig)

// ---------------------------------------------------------------------------
// Transaction-scoped locks

/**
 * Options of `withTransactionLock`.
 *
 * @since 0.1.0
 */
export interface TransactionLockOptions {
  /** Default `"default"`; must match the namespace of the session locks it should exclude. */
  readonly namespace?: string | undefined
  /** `lock_timeout` of the transaction; a lock not taken in time fails with `LockTimeout`. Default 5 seconds. */
  readonly timeout?: Duration.Input | undefined
  /** Take the locks shared (`pg_advisory_xact_lock_shared`). Default false. */
  readonly shared?: boolean | undefined
}

/**
 * Runs `effect` in a transaction (`sql.withTransaction`) that first takes a
 * transaction-scoped advisory lock for each name, in sorted key order.
 *
 * **Details**
 *
 * `lock_timeout` is set locally for the transaction; SQLSTATE 55P03 (lock
 * not available) becomes `LockTimeout`. The locks end with the transaction,
 * at commit or rollback, so there is nothing to release and nothing to leak.
 * They use the same keys as `Lock.scoped` on this backend (same namespace),
 * so a transaction lock and a session lock of one name exclude each other.
 *
 * **Gotchas**
 *
 * A transaction lock has no fencing token and no heartbeat: it lasts as long
 * as the transaction, which PostgreSQL ends if the connection dies.
 *
 * @since 0.1.0
 */
export const withTransactionLock =
  (names: ReadonlyArray<string>, options: TransactionLockOptions = {}) =>
  <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | SqlError | LockTimeout | LockBackendUnavailable | InvalidLockRequest, R | SqlClient> =>
    Effect.gen(function* () {
      const sql = yield* SqlClient
      const namespace = yield* validNamespace(options.namespace)
      if (names.length === 0) return yield* invalid("names", "must not be empty")
      for (const name of names) yield* LockConfig.validateName(name)
      const timeoutMillis = yield* positiveMillis("timeout", options.timeout, 5_000)
      const keyed = [...new Set(names)].map((name) => ({ name, key: deriveKey(namespace, name) }))
      keyed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
      const fn = options.shared === true ? "pg_advisory_xact_lock_shared" : "pg_advisory_xact_lock"
      const lockAll = Effect.gen(function* () {
        yield* sql`SELECT set_config('lock_timeout', ${String(Math.ceil(timeoutMillis))}, true)`
        for (const { name, key } of keyed) {
          const startedAt = yield* Clock.currentTimeMillis
          yield* sql
            .unsafe(`SELECT ${fn}($1::int8)`, [key.toString()])
            .pipe(
              Effect.catchTag("SqlError", (error) =>
                Effect.flatMap(Clock.currentTimeMillis, (now) =>
                  Effect.fail(
                    error.reason._tag === "LockTimeoutError"
                      ? new LockTimeout({ name, attempts: 1, waitedMillis: now - startedAt, failures: [] })
                      : new LockBackendUnavailable({ operation: "transaction lock", cause: error })
                  )
                )
              )
            )
        }
      })
      return yield* sql.withTransaction(Effect.andThen(lockAll, effect))
    })

// ---------------------------------------------------------------------------
// Server-side inspection

/**
 * One advisory lock as the server sees it, held or awaited by any session.
 *
 * @since 0.1.0
 */
export interface ServerLock {
  /** The 64-bit key (`keyOf`). */
  readonly key: bigint
  /** The name, when it is one of the names passed to `serverLocks`. */
  readonly name: string | undefined
  readonly pid: number
  readonly applicationName: string | undefined
  /** `ExclusiveLock` or `ShareLock`. */
  readonly mode: string
  readonly granted: boolean
  /** Since when the session is in its current state (for a waiter: since when it waits, if known). */
  readonly since: Date | undefined
}

/** Inspection statements get the default statement deadline (5 s) too. */
const bounded =
  (operation: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, LockBackendUnavailable, R> =>
    Effect.flatMap(Effect.context<R>(), (context) =>
      withDeadline(5_000, Effect.provideContext(effect, context)).pipe(Effect.mapError(unavailable(operation)))
    )

/**
 * Every advisory lock held or awaited on the server, from `pg_locks` joined
 * with `pg_stat_activity`, with names resolved for the `names` given.
 *
 * @since 0.1.0
 */
export const serverLocks = (
  options: { readonly namespace?: string | undefined; readonly names?: ReadonlyArray<string> | undefined } = {}
): Effect.Effect<ReadonlyArray<ServerLock>, LockBackendUnavailable, SqlClient> =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const namespace = options.namespace ?? "default"
    const known = new Map<bigint, string>()
    for (const name of options.names ?? []) known.set(deriveKey(namespace, name), name)
    const rows = yield* sql<{
      readonly key: string
      readonly pid: number
      readonly application_name: string | null
      readonly mode: string
      readonly granted: boolean
      readonly since: Date | null
    }>`SELECT ((l.classid::int8 << 32) | l.objid::int8)::text AS key, l.pid, a.application_name, l.mode, l.granted,
              coalesce(l.waitstart, a.state_change) AS since
       FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE l.locktype = 'advisory' AND l.objsubid = 1
       ORDER BY l.granted DESC, since`
    return rows.map((row): ServerLock => {
      const key = BigInt(row.key)
      return {
        key,
        name: known.get(key),
        pid: Number(row.pid),
        applicationName: row.application_name ?? undefined,
        mode: row.mode,
        granted: row.granted,
        since: row.since ?? undefined
      }
    })
  }).pipe(bounded("serverLocks"))

/**
 * How many advisory locks are held (`granted`) and awaited on the server.
 *
 * @since 0.1.0
 */
export const serverLockCount: Effect.Effect<
  { readonly held: number; readonly awaited: number },
  LockBackendUnavailable,
  SqlClient
> = Effect.gen(function* () {
  const sql = yield* SqlClient
  const rows = yield* sql<{ readonly held: number; readonly awaited: number }>`
    SELECT count(*) FILTER (WHERE granted)::int AS held, count(*) FILTER (WHERE NOT granted)::int AS awaited
    FROM pg_locks WHERE locktype = 'advisory'`
  const row = rows[0]
  return { held: Number(row?.held ?? 0), awaited: Number(row?.awaited ?? 0) }
}).pipe(bounded("serverLockCount"))
