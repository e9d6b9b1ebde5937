/**
 * The demo behind `npm run demo`: a few workers contend for exclusive locks,
 * a read-write lock and a semaphore for a bounded time, every critical
 * section guarded by a `FencedResource`. A status table built from
 * `LockBackend.inspect()` shows who holds what and who waits; the summary
 * counts acquisitions, wait times and violations (which must be 0).
 *
 * `runDemo` needs a `LockBackend` in context; `demo/main.ts` provides the one
 * `LockBackend.layerConfig` picks from the environment, the test provides the
 * memory backend.
 */
import { Clock, Effect, Fiber, Option, Random, type Scope } from "effect"
import {
  DistributedSemaphore,
  type HolderInfo,
  type Inspection,
  type Lease,
  Lock,
  LockBackend,
  type LockError,
  type LockMode,
  ReadWriteLock,
  type WaiterInfo
} from "../src/index.ts"
import * as FencedResource from "../src/testing/FencedResource.ts"
import { type NameStats, percentile } from "./stats.ts"

/** Where the demo writes: plain lines, and the live status frame. */
export interface DemoOutput {
  /** One line of text (header, summary). */
  readonly line: (text: string) => void
  /** The current status table; a terminal may redraw it in place. */
  readonly frame: (lines: ReadonlyArray<string>) => void
}

/** Plain output: every line and every frame printed as is (CI logs, pipes). */
export const plainOutput = (write: (text: string) => void): DemoOutput => ({
  line: write,
  frame: (lines) => {
    for (const line of lines) write(line)
  }
})

export interface DemoOptions {
  /** How long the workers run. Default 3,500 ms. */
  readonly durationMillis?: number | undefined
  /** How many workers. Default 6. */
  readonly workers?: number | undefined
  /** How often the status table is printed. Default 500 ms. */
  readonly statusEveryMillis?: number | undefined
  /** Default: plain output to `console.log`. */
  readonly output?: DemoOutput | undefined
  /** Completing it ends the run early (the summary is still printed). */
  readonly stop?: Effect.Effect<void> | undefined
}

export type NameKind = "exclusive" | "read-write" | "semaphore"

export interface NameSummary {
  readonly name: string
  readonly kind: NameKind
  readonly acquisitions: number
  /** Read-write name: shared acquisitions. */
  readonly reads: number
  /** Read-write name: exclusive acquisitions. */
  readonly writes: number
  readonly waitP50Millis: number
  readonly waitP99Millis: number
  readonly waitMaxMillis: number
  /** Most holders inside the critical section at once (writers for the read-write name). */
  readonly maxConcurrent: number
  /** Read-write name: most readers inside at once. */
  readonly maxReaders: number
  /** How many holders may be inside at once. */
  readonly capacity: number
  /**
   * Tokens of the exclusive entries strictly increasing (lock names, and the
   * writers of the read-write name); `undefined` for the semaphore, whose
   * holders share the name and may enter in any order.
   */
  readonly tokensIncreasing: boolean | undefined
  /** More holders inside than the capacity allows. */
  readonly overlaps: number
  /** Operations rejected by the fence as stale (a token lower than one it already saw). */
  readonly rejected: number
  /** Read-write name: a reader inside together with a writer. */
  readonly conflicts: number
  readonly violations: number
}

export interface DemoSummary {
  readonly backend: string
  readonly workers: number
  readonly durationMillis: number
  readonly names: ReadonlyArray<NameSummary>
  readonly totalAcquisitions: number
  /** Acquisitions per worker, in worker order. */
  readonly perWorker: ReadonlyArray<{ readonly worker: string; readonly acquisitions: number }>
  /** Leases lost while held (not a violation by itself: the fence catches any harm). */
  readonly lost: number
  /** Overlaps + stale operations rejected + reader/writer conflicts, over every name. */
  readonly violations: number
  /** Tokens strictly increasing on every exclusive name. */
  readonly tokensIncreasing: boolean
  /** Holders and waiters of this run still on the backend after every worker stopped. */
  readonly leftBehind: { readonly holders: number; readonly waiters: number }
  readonly ok: boolean
}

export const LOCK_NAMES = ["demo:lock:a", "demo:lock:b", "demo:lock:c"] as const
export const RW_NAME = "demo:rw"
export const SEMAPHORE_NAME = "demo:sem"
export const SEMAPHORE_LIMIT = 2

const ALL_NAMES: ReadonlyArray<string> = [...LOCK_NAMES, RW_NAME, SEMAPHORE_NAME]

type Task =
  | { readonly _tag: "lock"; readonly name: string }
  | { readonly _tag: "read" }
  | { readonly _tag: "write" }
  | { readonly _tag: "permit" }

// Every kind of task once, in the order the workers start with (so each name
// is taken early on), then weighted random choices.
const FIRST_TASKS: ReadonlyArray<Task> = [
  ...LOCK_NAMES.map((name): Task => ({ _tag: "lock", name })),
  { _tag: "read" },
  { _tag: "write" },
  { _tag: "permit" }
]
const WEIGHTED_TASKS: ReadonlyArray<Task> = [
  ...LOCK_NAMES.flatMap((name): Array<Task> => [
    { _tag: "lock", name },
    { _tag: "lock", name }
  ]),
  { _tag: "read" },
  { _tag: "read" },
  { _tag: "read" },
  { _tag: "write" },
  { _tag: "permit" },
  { _tag: "permit" },
  { _tag: "permit" }
]

const HOLD_MIN_MILLIS = 15
const HOLD_MAX_MILLIS = 60
const THINK_MAX_MILLIS = 30

/**
 * The read-write name's guard. Writers enter a `FencedResource` of capacity
 * 1 (mutual exclusion among writers, strictly increasing tokens). Every read
 * is checked against the highest writer token seen (a reader granted before
 * a writer must not act after it; readers are not ordered among themselves:
 * etcd's tokens follow the queue, and readers share), and a probe records any
 * reader inside together with a writer.
 */
interface ReadWriteGuard {
  readonly fence: FencedResource.FencedResource
  readonly read: <A, E, R>(token: bigint, effect: Effect.Effect<A, E, R>) => Effect.Effect<Option.Option<A>, E, R>
  readonly write: <A, E, R>(token: bigint, effect: Effect.Effect<A, E, R>) => Effect.Effect<Option.Option<A>, E, R>
  readonly conflicts: () => number
  readonly maxReaders: () => number
  /** Reads rejected: a token below a writer's that already acted. */
  readonly staleReads: () => ReadonlyArray<{ readonly token: bigint; readonly highest: bigint }>
}

const makeReadWriteGuard: Effect.Effect<ReadWriteGuard> = Effect.gen(function* () {
  const fence = yield* FencedResource.make({ capacity: 1 })
  let readers = 0
  let writers = 0
  let conflicts = 0
  let maxReaders = 0
  let highestWriter = 0n
  const staleReads: Array<{ readonly token: bigint; readonly highest: bigint }> = []
  const write = <A, E, R>(token: bigint, effect: Effect.Effect<A, E, R>) =>
    fence
      .use(
        token,
        Effect.suspend(() => {
          if (readers > 0) conflicts++
          if (token > highestWriter) highestWriter = token
          writers++
          return Effect.ensuring(
            effect,
            Effect.sync(() => writers--)
          )
        })
      )
      .pipe(
        Effect.asSome,
        // The fence recorded the stale token; the operation is skipped.
        Effect.catchTag("StaleToken", () => Effect.succeedNone)
      )
  const read = <A, E, R>(token: bigint, effect: Effect.Effect<A, E, R>) =>
    Effect.suspend(() => {
      if (token < highestWriter) {
        staleReads.push({ token, highest: highestWriter })
        return Effect.succeedNone
      }
      if (writers > 0) conflicts++
      readers++
      maxReaders = Math.max(maxReaders, readers)
      return Effect.asSome(
        Effect.ensuring(
          effect,
          Effect.sync(() => readers--)
        )
      )
    })
  return {
    fence,
    read,
    write,
    conflicts: () => conflicts,
    maxReaders: () => maxReaders,
    staleReads: () => staleReads
  }
})

/** Runs a critical section in a lock's fence; a stale token skips it (the fence recorded it). */
const fenced = <A, E, R>(fence: FencedResource.FencedResource, token: bigint, effect: Effect.Effect<A, E, R>) =>
  fence.use(token, effect).pipe(
    Effect.asSome,
    Effect.catchTag("StaleToken", () => Effect.succeedNone)
  )

const modeLetter = (name: string, mode: LockMode): string =>
  mode === "shared" ? "R" : mode === "permits" ? "P" : name === RW_NAME ? "W" : "X"

const shortOwner = (owner: string): string => owner.slice(-4)

const workerOf = (info: HolderInfo | WaiterInfo): string => info.metadata["worker"] ?? "?"

const pad = (text: string, width: number): string => (text.length >= width ? text : text.padEnd(width))

/**
 * The status table: one row per name (holders, then waiters in queue order),
 * and the workers that hold and wait for nothing.
 */
export const renderStatus = (
  inspection: Inspection,
  header: string,
  workers: ReadonlyArray<string>,
  runId: string
): Array<string> => {
  const ours = (info: HolderInfo | WaiterInfo) => info.metadata["run"] === runId && ALL_NAMES.includes(info.name)
  const holders = inspection.holders.filter(ours)
  const waiters = inspection.waiters.filter(ours)
  const busy = new Set([...holders, ...waiters].map(workerOf))
  const rows = ALL_NAMES.map((name) => {
    const held = holders.filter((h) => h.name === name).toSorted((a, b) => (a.token < b.token ? -1 : 1))
    const queued = waiters.filter((w) => w.name === name)
    const label = name === SEMAPHORE_NAME ? `${name} (${held.length}/${SEMAPHORE_LIMIT})` : name
    const heldText =
      held.length === 0
        ? "-"
        : held.map((h) => `${workerOf(h)} ${modeLetter(name, h.mode)}#${h.token} ..${shortOwner(h.owner)}`).join(", ")
    const queuedText =
      queued.length === 0 ? "" : `  <- ${queued.map((w) => `${workerOf(w)}:${modeLetter(name, w.mode)}`).join(" ")}`
    return `  ${pad(label, 16)} ${heldText}${queuedText}`
  })
  const idle = workers.filter((w) => !busy.has(w))
  return [header, ...rows, `  ${pad("idle", 16)} ${idle.length === 0 ? "-" : idle.join(" ")}`]
}

const fmtMillis = (millis: number): string =>
  millis < 10 ? `${millis.toFixed(2)} ms` : millis < 100 ? `${millis.toFixed(1)} ms` : `${millis.toFixed(0)} ms`

/** The summary as lines of text. */
export const renderSummary = (summary: DemoSummary): Array<string> => {
  const head = [
    pad("name", 13),
    pad("kind", 13),
    pad("acquired", 14),
    pad("wait p50", 10),
    pad("wait p99", 10),
    pad("max inside", 11),
    pad("tokens", 11),
    "violations"
  ].join(" ")
  const rows = summary.names.map((n) => {
    const acquired = n.kind === "read-write" ? `${n.acquisitions} (${n.reads}R ${n.writes}W)` : `${n.acquisitions}`
    const tokens = n.tokensIncreasing === undefined ? "n/a" : n.tokensIncreasing ? "increasing" : "NOT INCR."
    return [
      pad(n.name, 13),
      pad(n.kind === "semaphore" ? `semaphore(${n.capacity})` : n.kind, 13),
      pad(acquired, 14),
      pad(fmtMillis(n.waitP50Millis), 10),
      pad(fmtMillis(n.waitP99Millis), 10),
      pad(n.kind === "read-write" ? `${n.maxConcurrent}W ${n.maxReaders}R` : `${n.maxConcurrent}/${n.capacity}`, 11),
      pad(tokens, 11),
      `${n.violations}`
    ].join(" ")
  })
  const sum = (f: (n: NameSummary) => number) => summary.names.reduce((acc, n) => acc + f(n), 0)
  return [
    "",
    `Summary: ${summary.workers} workers for ${(summary.durationMillis / 1000).toFixed(
      2
    )} s on the ${summary.backend} backend`,
    head,
    ...rows,
    `total acquisitions: ${summary.totalAcquisitions}; per worker: ${summary.perWorker
      .map((w) => `${w.worker} ${w.acquisitions}`)
      .join(", ")}`,
    `leases lost: ${summary.lost}; left on the backend after shutdown: ${summary.leftBehind.holders} holders, ${summary.leftBehind.waiters} waiters`,
    `violations: ${summary.violations} (overlaps ${sum((n) => n.overlaps)}, stale operations rejected ${sum(
      (n) => n.rejected
    )}, reader/writer conflicts ${sum((n) => n.conflicts)})`,
    `fencing tokens strictly increasing on every exclusive name: ${summary.tokensIncreasing ? "yes" : "NO"}`,
    summary.ok ? "OK" : "FAILED"
  ]
}

/**
 * Runs the workers for `durationMillis`, printing the status table every
 * `statusEveryMillis`, then interrupts them (their scopes release every
 * lease) and returns the summary.
 */
export const runDemo = (options?: DemoOptions): Effect.Effect<DemoSummary, LockError, LockBackend> =>
  Effect.gen(function* () {
    const durationMillis = options?.durationMillis ?? 3_500
    const workerCount = options?.workers ?? 6
    const statusEveryMillis = options?.statusEveryMillis ?? 500
    const output = options?.output ?? plainOutput((text) => console.log(text))
    const backend = yield* LockBackend
    // Tags this run's grants (metadata), so inspection can tell them from other processes' ones.
    const runId = yield* Effect.sync(() => crypto.randomUUID().slice(0, 8))
    const workers = Array.from({ length: workerCount }, (_, i) => `w${i + 1}`)

    const lockFences = new Map<string, FencedResource.FencedResource>()
    for (const name of LOCK_NAMES) lockFences.set(name, yield* FencedResource.make({ capacity: 1 }))
    const rwGuard = yield* makeReadWriteGuard
    const semFence = yield* FencedResource.make({ capacity: SEMAPHORE_LIMIT })

    const stats = new Map<string, NameStats>(
      ALL_NAMES.map((name) => [name, { acquisitions: 0, reads: 0, writes: 0, waits: [] }])
    )
    const perWorker = new Map<string, number>(workers.map((w) => [w, 0]))
    let total = 0
    let lost = 0

    const acquireFor = (
      task: Task,
      metadata: Record<string, string>
    ): Effect.Effect<Lease.Lease, LockError, LockBackend | Scope.Scope> => {
      // "ignore": a loss must not interrupt the worker; `runHeld` below turns it into `LockLost`.
      const opts = { metadata, onLost: "ignore" as const }
      switch (task._tag) {
        case "lock":
          return Lock.scoped(task.name, opts)
        case "read":
          return ReadWriteLock.read(RW_NAME, opts)
        case "write":
          return ReadWriteLock.write(RW_NAME, opts)
        case "permit":
          return DistributedSemaphore.scoped(SEMAPHORE_NAME, { ...opts, limit: SEMAPHORE_LIMIT })
      }
    }

    const nameOf = (task: Task): string =>
      task._tag === "lock" ? task.name : task._tag === "permit" ? SEMAPHORE_NAME : RW_NAME

    const critical = (task: Task, lease: Lease.Lease, body: Effect.Effect<void>) => {
      // The fence is entered right after the grant, with no async boundary in between:
      // it rejects a token lower than the highest it saw, so two semaphore holders (or
      // readers) entering in an order other than their grants' would be flagged as stale.
      // The body stops early (`LockLost`) if the lease is lost.
      const held = Lock.runHeld(lease, body, undefined)
      switch (task._tag) {
        case "lock":
          return fenced(lockFences.get(task.name)!, lease.token, held)
        case "read":
          return rwGuard.read(lease.token, held)
        case "write":
          return rwGuard.write(lease.token, held)
        case "permit":
          return fenced(semFence, lease.token, held)
      }
    }

    const iteration = (worker: string, task: Task) =>
      Effect.scoped(
        Effect.gen(function* () {
          const name = nameOf(task)
          const before = yield* Clock.monotonicTimeNanos
          const lease = yield* acquireFor(task, { worker, run: runId })
          const after = yield* Clock.monotonicTimeNanos
          const s = stats.get(name)!
          s.acquisitions++
          if (task._tag === "read") s.reads++
          if (task._tag === "write") s.writes++
          s.waits.push(Number(after - before) / 1e6)
          total++
          perWorker.set(worker, (perWorker.get(worker) ?? 0) + 1)
          const hold = yield* Random.nextIntBetween(HOLD_MIN_MILLIS, HOLD_MAX_MILLIS)
          yield* critical(task, lease, Effect.sleep(hold)).pipe(
            Effect.catchTag("LockLost", () => Effect.sync(() => lost++))
          )
        })
      )

    const worker = (index: number) =>
      Effect.gen(function* () {
        const id = workers[index]!
        let next: Task = FIRST_TASKS[index % FIRST_TASKS.length]!
        while (true) {
          yield* iteration(id, next)
          yield* Effect.sleep(yield* Random.nextIntBetween(0, THINK_MAX_MILLIS))
          next = WEIGHTED_TASKS[yield* Random.nextIntBetween(0, WEIGHTED_TASKS.length, { halfOpen: true })]!
        }
      })

    const startedAt = yield* Clock.currentTimeMillis
    const status = (note?: string) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const inspection = yield* LockBackend.inspect()
        const elapsed = ((now - startedAt) / 1000).toFixed(1)
        const header = `t=${elapsed}s  acquisitions ${total}  lost ${lost}${note === undefined ? "" : `  (${note})`}`
        output.frame(renderStatus(inspection, header, workers, runId))
      })

    output.line(
      `effect-locks demo: ${workerCount} workers, ${backend.kind} backend, ${(durationMillis / 1000).toFixed(
        1
      )} s, run ${runId}`
    )
    output.line(
      `names: ${LOCK_NAMES.join(
        ", "
      )} (exclusive), ${RW_NAME} (read-write), ${SEMAPHORE_NAME} (semaphore, limit ${SEMAPHORE_LIMIT})`
    )
    output.line(
      `holders: worker mode#token ..owner; X exclusive, R read, W write, P permit; "<-" waiters in queue order`
    )

    const run = Effect.gen(function* () {
      const all = yield* Effect.forkChild(
        Effect.forEach(workers, (_, i) => worker(i), { concurrency: "unbounded", discard: true })
      )
      const ticker = yield* Effect.forkChild(Effect.forever(Effect.andThen(Effect.sleep(statusEveryMillis), status())))
      // Workers loop forever: the await ends first only if one failed.
      const early = yield* Effect.raceFirst(
        Effect.asSome(Fiber.await(all)),
        Effect.as(Effect.raceFirst(Effect.sleep(durationMillis), options?.stop ?? Effect.never), Option.none())
      )
      yield* Fiber.interrupt(ticker)
      if (Option.isSome(early)) return yield* Fiber.join(all)
      // Every worker stops; its scope releases what it holds or waits for.
      yield* Fiber.interrupt(all)
    })
    yield* run
    const endedAt = yield* Clock.currentTimeMillis
    yield* status("all workers stopped")

    const after = yield* LockBackend.inspect()
    const mine = (info: HolderInfo | WaiterInfo) => info.metadata["run"] === runId
    const leftBehind = { holders: after.holders.filter(mine).length, waiters: after.waiters.filter(mine).length }

    const names: Array<NameSummary> = []
    const summarize = (
      name: string,
      kind: NameKind,
      capacity: number,
      report: FencedResource.FencingReport,
      conflicts: number,
      maxReaders = 0
    ) => {
      const s = stats.get(name)!
      const sorted = s.waits.toSorted((a, b) => a - b)
      const overlaps = report.overlaps.length
      const rejected = report.rejected.length
      names.push({
        name,
        kind,
        acquisitions: s.acquisitions,
        reads: s.reads,
        writes: s.writes,
        waitP50Millis: percentile(sorted, 0.5),
        waitP99Millis: percentile(sorted, 0.99),
        waitMaxMillis: sorted.at(-1) ?? 0,
        maxConcurrent: report.maxConcurrent,
        maxReaders,
        capacity,
        tokensIncreasing: kind === "semaphore" ? undefined : report.strictlyIncreasing,
        overlaps,
        rejected,
        conflicts,
        violations: overlaps + rejected + conflicts
      })
    }
    for (const name of LOCK_NAMES) summarize(name, "exclusive", 1, yield* lockFences.get(name)!.report, 0)
    const rwReport = yield* rwGuard.fence.report
    summarize(
      RW_NAME,
      "read-write",
      1,
      { ...rwReport, rejected: [...rwReport.rejected, ...rwGuard.staleReads()] },
      rwGuard.conflicts(),
      rwGuard.maxReaders()
    )
    summarize(SEMAPHORE_NAME, "semaphore", SEMAPHORE_LIMIT, yield* semFence.report, 0)

    const violations = names.reduce((acc, n) => acc + n.violations, 0)
    const tokensIncreasing = names.every((n) => n.tokensIncreasing !== false)
    const summary: DemoSummary = {
      backend: backend.kind,
      workers: workerCount,
      durationMillis: endedAt - startedAt,
      names,
      totalAcquisitions: total,
      perWorker: workers.map((w) => ({ worker: w, acquisitions: perWorker.get(w) ?? 0 })),
      lost,
      violations,
      tokensIncreasing,
      leftBehind,
      ok: violations === 0 && tokensIncreasing && leftBehind.holders === 0 && leftBehind.waiters === 0
    }
    for (const line of renderSummary(summary)) output.line(line)
    return summary
  })
