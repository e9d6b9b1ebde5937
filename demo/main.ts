/**
 * `npm run demo`: workers contending for locks, a read-write lock and a
 * semaphore on the backend `LockBackend.layerConfig` picks from the
 * environment (`LOCK_PROVIDER`, default `memory`), with a live status table
 * and a summary. Exits 0 when no violation was seen, 1 otherwise.
 *
 *   DEMO_DURATION_MS=6000 npm run demo
 *   LOCK_PROVIDER=postgres LOCK_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres npm run demo
 *   LOCK_PROVIDER=redis LOCK_REDIS_URL=redis://127.0.0.1:6379 npm run demo
 *   LOCK_PROVIDER=etcd LOCK_ETCD_ENDPOINTS=http://127.0.0.1:2379 npm run demo
 */
import { Config, Deferred, Effect, Runtime } from "effect"
import { LockBackend } from "../src/index.ts"
// Registers LOCK_PROVIDER=postgres (with LOCK_POSTGRES_URL).
import "../src/postgres/index.ts"
// Registers LOCK_PROVIDER=redis (with LOCK_REDIS_URL: one URL, or three or more for Redlock).
import "../src/redis/index.ts"
// Registers LOCK_PROVIDER=etcd (with LOCK_ETCD_ENDPOINTS).
import "../src/etcd/index.ts"
import { type DemoOutput, plainOutput, runDemo } from "./demo.ts"

const write = (text: string) => process.stdout.write(`${text}\n`)

/** On a terminal the status table is redrawn in place; elsewhere every frame is printed. */
const terminalOutput = (): DemoOutput => {
  if (process.stdout.isTTY !== true || process.env["TERM"] === "dumb") {
    return plainOutput(write)
  }
  let previous = 0
  return {
    line: (text) => {
      previous = 0
      write(text)
    },
    frame: (lines) => {
      // Cursor up over the previous frame, clear to the end of the screen.
      if (previous > 0) process.stdout.write(`\x1b[${previous}A\x1b[0J`)
      // Cut to the terminal's width: a wrapped line would break the cursor arithmetic.
      const width = Math.max(20, (process.stdout.columns ?? 120) - 1)
      for (const line of lines) write(line.length > width ? `${line.slice(0, width - 3)}...` : line)
      previous = lines.length
    }
  }
}

// The first Ctrl-C ends the run early (summary still printed), a second one interrupts.
const stop = Deferred.makeUnsafe<void>()

const program = Effect.gen(function* () {
  const durationMillis = yield* Config.Int("DEMO_DURATION_MS").pipe(Config.withDefault(3_500))
  const summary = yield* runDemo({ durationMillis, output: terminalOutput(), stop: Deferred.await(stop) })
  if (!summary.ok) process.exitCode = 1
}).pipe(Effect.provide(LockBackend.layerConfig))

// Effect's own `makeRunMain` (NodeRuntime lives in @effect/platform-node, not
// a dependency). An interruption runs every finalizer, so every lease is released.
const runMain = Runtime.makeRunMain(({ fiber, teardown }) => {
  const onSigint = () => {
    if (Deferred.isDoneUnsafe(stop)) fiber.interruptUnsafe()
    else Deferred.doneUnsafe(stop, Effect.void)
  }
  const onSigterm = () => fiber.interruptUnsafe()
  process.on("SIGINT", onSigint)
  process.on("SIGTERM", onSigterm)
  fiber.addObserver((exit) => {
    process.off("SIGINT", onSigint)
    process.off("SIGTERM", onSigterm)
    teardown(exit, (code) => {
      if (code !== 0) process.exitCode = code
    })
  })
})

runMain(program)
