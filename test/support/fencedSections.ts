/**
 * Checks of the multi-process tests (`test/<backend>/processes.test.ts`) on what the workers report and on the log
 * of the fenced resource they went through: every worker exited 0 with a full summary, the log is a sequence of
 * whole critical sections (enter, the fenced write, exit) that never overlap, fencing tokens strictly increase, and
 * each worker's own record matches the log. Also the scenario of a holder process killed while it holds the name.
 */
import { assert } from "@effect/vitest"
import { Effect, Option } from "effect"
import { Lock, LockBackend, type LockConfig } from "../../src/index.ts"
import type { Child, ChildResult } from "./childProcesses.ts"
import type { FencedWorkerOptions } from "./childWorker.ts"

/** One critical section found in the log: who held the name, with which token. */
export interface Section {
  readonly worker: string
  readonly token: bigint
}

/** A step of a critical section as the fenced resource logged it (the token as a bigint or a decimal string). */
export interface LoggedStep {
  readonly event: string
  readonly worker: string
  readonly token: bigint | string
}

/**
 * Every child exited 0 and printed its summary: `perWorker` sections, all of them accepted, and none counted under
 * `refusedKey`.
 */
export const assertChildrenSucceeded = <
  K extends string,
  Summary extends { readonly worker: string; readonly sections: number; readonly accepted: number } & Readonly<
    Record<K, number>
  >
>(
  results: ReadonlyArray<ChildResult<Summary>>,
  workers: ReadonlyArray<string>,
  perWorker: number,
  refusedKey: K
): void => {
  for (const [i, result] of results.entries()) {
    const worker = workers[i]!
    assert.strictEqual(result.code, 0, `worker ${worker} exited with ${result.code} ${result.signal}: ${result.stderr}`)
    const summary = result.summary
    assert.isDefined(summary, `worker ${worker} printed its summary`)
    assert.strictEqual(summary!.worker, worker)
    assert.strictEqual(summary!.sections, perWorker)
    assert.strictEqual(summary!.accepted, perWorker)
    assert.strictEqual(summary![refusedKey], 0)
  }
}

/**
 * The `total` sections of the log, in log order: each one `enter`, the fenced write's event (`write`), `exit`,
 * with never another step in between (else `${where(k, enter, exit)}: sections overlap or ${refused}`).
 */
export const sectionsOf = <Step extends LoggedStep>(
  log: ReadonlyArray<Step>,
  total: number,
  expected: { readonly write: string; readonly refused: string },
  where: (k: number, enter: Step, exit: Step) => string
): Array<Section> => {
  const sections: Array<Section> = []
  for (let k = 0; k < total; k++) {
    const [enter, write, exit] = [log[3 * k]!, log[3 * k + 1]!, log[3 * k + 2]!]
    const at = where(k, enter, exit)
    assert.deepStrictEqual(
      [enter.event, write.event, exit.event],
      ["enter", expected.write, "exit"],
      `${at}: sections overlap or ${expected.refused}`
    )
    assert.deepStrictEqual(
      [write.worker, exit.worker, write.token, exit.token],
      [enter.worker, enter.worker, enter.token, enter.token],
      `${at}: another holder wrote inside the section`
    )
    sections.push({ worker: enter.worker, token: BigInt(enter.token) })
  }
  return sections
}

/** Where a contention run's fenced resource logged its steps, and what the log should hold. */
export interface ContentionLog<Step extends LoggedStep, E, R> {
  /** Reads the log, in the order the steps were applied. */
  readonly read: Effect.Effect<ReadonlyArray<Step>, E, R>
  /** What the log holds, in the message on its length: `entries` or `rows`. */
  readonly what: string
  /** The event of an accepted fenced write, and what a wrong event means (see `sectionsOf`). */
  readonly expected: { readonly write: string; readonly refused: string }
  /** Where section `k` is, in messages. */
  readonly where: (k: number, enter: Step, exit: Step) => string
}

/**
 * The checks every contention run shares: the children succeeded (`assertChildrenSucceeded`), then the log holds
 * three steps per section, forms whole sections that never overlap (`sectionsOf`), with tokens strictly increasing.
 * Returns the sections and their total.
 */
export const checkContention = <
  K extends string,
  Summary extends { readonly worker: string; readonly sections: number; readonly accepted: number } & Readonly<
    Record<K, number>
  >,
  Step extends LoggedStep,
  E,
  R
>(
  results: ReadonlyArray<ChildResult<Summary>>,
  workers: ReadonlyArray<string>,
  perWorker: number,
  refusedKey: K,
  log: ContentionLog<Step, E, R>
) =>
  Effect.gen(function* () {
    assertChildrenSucceeded(results, workers, perWorker, refusedKey)
    const steps = yield* log.read
    const total = perWorker * workers.length
    assert.strictEqual(steps.length, total * 3, `three log ${log.what} per critical section`)
    const sections = sectionsOf(steps, total, log.expected, log.where)
    assertTokensIncrease(sections)
    return { sections, total }
  })

/** Tokens strictly increase in entry order. */
export const assertTokensIncrease = (sections: ReadonlyArray<Section>): void => {
  for (let k = 1; k < sections.length; k++) {
    assert.isTrue(
      sections[k]!.token > sections[k - 1]!.token,
      `tokens must strictly increase in entry order: ${sections[k - 1]!.token} then ${sections[k]!.token}`
    )
  }
}

/**
 * The processes took turns: they contended, rather than one finishing before the other started. Returns the number
 * of holder switches between them.
 */
export const assertTurnsTaken = (sections: ReadonlyArray<Section>): number => {
  const switches = sections.filter((section, k) => k > 0 && section.worker !== sections[k - 1]!.worker).length
  assert.isAtLeast(switches, 2, "holder switches between the processes")
  return switches
}

/** Each worker ran `perWorker` sections, whose tokens are the ones it recorded itself (`recorded(i)`). */
export const assertOwnRecords = (
  sections: ReadonlyArray<Section>,
  workers: ReadonlyArray<string>,
  perWorker: number,
  recorded: (i: number) => ReadonlyArray<string>
): void => {
  for (const [i, worker] of workers.entries()) {
    const mine = sections.filter((section) => section.worker === worker).map((s) => s.token.toString())
    assert.strictEqual(mine.length, perWorker, `sections of worker ${worker}`)
    assert.deepStrictEqual(mine, recorded(i), `worker ${worker}'s own record matches the log`)
  }
}

/** Decimal token strings in ascending order. */
export const byToken = (tokens: ReadonlyArray<string>): Array<string> =>
  tokens.toSorted((x, y) => (BigInt(x) < BigInt(y) ? -1 : 1))

/** The options of the worker `killedHolderFreesAtTtl` kills: it holds `name` with leases of `ttlMillis`. */
export const victimOptions = (name: string, ttlMillis: number): FencedWorkerOptions => ({
  name,
  worker: "victim",
  mode: "hold",
  fibers: 1,
  iterations: 1,
  ttlMillis
})

/**
 * A holder process killed while it holds `name`: `victim` (a worker in `hold` mode, started, not yet told to go)
 * takes the name, which the backend in context then shows held by it (metadata `{ worker: "victim" }`) and cannot
 * take; `victim` is killed (SIGKILL). Nobody released, so its grant is still on the server, until the TTL frees the
 * name for the next holder (waiting with `retry`), within `freedWithinMillis` of the kill, with a greater token.
 * The next holder then releases. Returns how long after the kill the name was free, in milliseconds.
 */
export const killedHolderFreesAtTtl = (
  victim: Child<unknown>,
  name: string,
  retry: NonNullable<LockConfig.LockOptions["retry"]>,
  freedWithinMillis: number
) =>
  Effect.gen(function* () {
    yield* victim.ready
    yield* victim.go
    const victimToken = yield* victim.held
    const { holders } = yield* LockBackend.inspect(name)
    assert.deepStrictEqual(
      holders.map((h) => [h.token, h.metadata]),
      [[victimToken, { worker: "victim" }]]
    )
    assert.isTrue(Option.isNone(yield* Effect.scoped(Lock.tryScoped(name))), "held by the other process")
    yield* victim.kill
    const exit = yield* victim.exited
    assert.strictEqual(exit.signal, "SIGKILL")
    const killedAt = Date.now()
    // Nobody released: the dead process's grant is still on the server (its last extension was at most a
    // heartbeat before the kill)...
    assert.deepStrictEqual(
      (yield* LockBackend.inspect(name)).holders.map((h) => h.token),
      [victimToken]
    )
    // ...until the TTL frees the name.
    const lease = yield* Lock.scoped(name, {
      ttl: "10 seconds",
      timeout: "10 seconds",
      retry,
      metadata: { worker: "next" }
    })
    const waited = Date.now() - killedAt
    assert.isAtMost(waited, freedWithinMillis, "freed by the TTL")
    assert.isTrue(lease.token > victimToken, `${lease.token} > ${victimToken}`)
    assert.deepStrictEqual(
      (yield* LockBackend.inspect(name)).holders.map((h) => [h.owner, h.token, h.metadata]),
      [[lease.owner, lease.token, { worker: "next" }]]
    )
    yield* lease.release
    return waited
  })
