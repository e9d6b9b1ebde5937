/**
 * The parent side of the multi-process tests (`test/<backend>/processes.test.ts`): spawns a worker script
 * (`test/<backend>/child.ts`, see `childWorker.ts`) with a Node that runs `.ts` files, collects its output, and
 * follows the JSON lines it prints (`{"ready":true}`, `{"held":"<token>"}`, and its summary as the last line).
 */
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Deferred, Effect } from "effect"

/** The repository's root: the children's working directory. */
const repoRoot = fileURLToPath(new URL("../../", import.meta.url))

/**
 * A Node that runs `.ts` files (type stripping is on by default from 22.18):
 * the one running the tests, else the project's pinned one.
 */
const nodeBinary = (() => {
  const [major = 0, minor = 0] = process.versions.node.split(".").map(Number)
  return major > 22 || (major === 22 && minor >= 18)
    ? process.execPath
    : fileURLToPath(new URL("../../node_modules/.bin/node", import.meta.url))
})()

/** How a child ended, and the summary it printed last (if its last JSON line has a `worker`). */
export interface ChildResult<Summary> {
  readonly code: number | null
  readonly signal: string | null
  readonly stderr: string
  readonly summary: Summary | undefined
}

/** A started child. */
export interface Child<Summary> {
  /** Completes once its backend is up; fails if it exited first. */
  readonly ready: Effect.Effect<void, Error>
  /** The token it printed as held (`hold` mode); fails if it exited first. */
  readonly held: Effect.Effect<bigint, Error>
  /** Tells it to start (a line on its stdin, then the end of its input). */
  readonly go: Effect.Effect<void>
  /** Sends SIGKILL. */
  readonly kill: Effect.Effect<void>
  /** Waits for it to exit. */
  readonly exited: Effect.Effect<ChildResult<Summary>>
}

/** The JSON lines a child printed so far. */
const jsonLines = (stdout: string): Array<Record<string, unknown>> =>
  stdout
    .split("\n")
    .filter((line) => line.trim().startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)

/**
 * Starts `script` with `options` (as JSON, its only argument); `ready`
 * completes once its backend is up, `held` once it printed the token it holds
 * (`hold` mode). It starts work when `go` runs. `kill` sends SIGKILL. Killed
 * (by its pid) if the test ends first.
 */
export const startChild = <Summary extends { readonly worker: string }>(
  script: URL,
  options: { readonly worker: string }
) =>
  Effect.gen(function* () {
    const ready = yield* Deferred.make<void, Error>()
    const held = yield* Deferred.make<bigint, Error>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(nodeBinary, [fileURLToPath(script), JSON.stringify(options)], {
          cwd: repoRoot,
          stdio: ["pipe", "pipe", "pipe"]
        })
      ),
      (spawned) =>
        Effect.sync(() => {
          if (spawned.exitCode === null && spawned.signalCode === null) spawned.kill("SIGKILL")
        })
    )
    let stdout = ""
    let stderr = ""
    // A child that died early must not make the parent's write fail the process.
    child.stdin.on("error", () => {})
    child.stdout.setEncoding("utf8")
    child.stderr.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      stdout += chunk
      // Complete lines only: a chunk may end inside a line.
      for (const line of jsonLines(stdout.slice(0, stdout.lastIndexOf("\n") + 1))) {
        if (line["ready"] === true) Deferred.doneUnsafe(ready, Effect.void)
        if (typeof line["held"] === "string") Deferred.doneUnsafe(held, Effect.succeed(BigInt(line["held"])))
      }
    })
    child.stderr.on("data", (chunk: string) => {
      stderr += chunk
    })
    const exited = Effect.callback<ChildResult<Summary>>((resume) => {
      const finish = (code: number | null, signal: string | null) => {
        const last = jsonLines(stdout).at(-1)
        const summary = last?.["worker"] === undefined ? undefined : (last as unknown as Summary)
        const early = new Error(`${options.worker} exited (${code} ${signal}) too early: ${stderr}`)
        Deferred.doneUnsafe(ready, Effect.fail(early))
        Deferred.doneUnsafe(held, Effect.fail(early))
        resume(Effect.succeed({ code, signal, stderr, summary }))
      }
      if (child.exitCode !== null || child.signalCode !== null) finish(child.exitCode, child.signalCode)
      else child.once("close", finish)
    })
    const go = Effect.sync(() => {
      child.stdin.end("go\n")
    })
    const kill = Effect.sync(() => {
      child.kill("SIGKILL")
    })
    const started: Child<Summary> = { ready: Deferred.await(ready), held: Deferred.await(held), go, kill, exited }
    return started
  })

/** `startChild` of `script`, for the options of that script. */
export const childStarter =
  <Options extends { readonly worker: string }, Summary extends { readonly worker: string }>(script: URL) =>
  (options: Options) =>
    startChild<Summary>(script, options)

/**
 * Waits until every child's backend is up (so that they contend from the first section), tells each to start, in
 * order, and waits for all of them to exit. `goAt` is when the first was told to start (ms since the epoch).
 */
export const runTogether = <Summary>(children: ReadonlyArray<Child<Summary>>) =>
  Effect.gen(function* () {
    yield* Effect.forEach(children, (child) => child.ready, { concurrency: "unbounded", discard: true })
    const goAt = Date.now()
    yield* Effect.forEach(children, (child) => child.go, { discard: true })
    const results = yield* Effect.forEach(children, (child) => child.exited, { concurrency: "unbounded" })
    return { results, goAt }
  })
