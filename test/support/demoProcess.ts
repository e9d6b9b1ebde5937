/**
 * `npm run demo` as a child process, for the backends' demo tests: runs
 * demo/main.ts with the test runner's Node and an environment, and checks
 * the summary every clean run prints.
 */
import { assert } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"

const repoRoot = fileURLToPath(new URL("../../", import.meta.url))

/** Runs demo/main.ts with `env` added; resolves with its exit code and output (stdout and stderr). */
export const runDemoProcess = (env: Record<string, string>) =>
  Effect.callback<{ readonly code: number | null; readonly output: string }>((resume) => {
    const child = spawn(process.execPath, ["demo/main.ts"], {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, output })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A clean run on `backend`: exit 0, no lease lost or left, no violation, tokens increasing, `OK` last. */
export const assertCleanSummary = (backend: string, run: { readonly code: number | null; readonly output: string }) => {
  const { code, output } = run
  assert.strictEqual(code, 0, output)
  assert.include(output, `on the ${backend} backend`)
  assert.include(output, "leases lost: 0; left on the backend after shutdown: 0 holders, 0 waiters")
  assert.match(output, /^violations: 0 \(overlaps 0, stale operations rejected 0, reader\/writer conflicts 0\)$/m)
  assert.include(output, "fencing tokens strictly increasing on every exclusive name: yes")
  assert.strictEqual(output.trimEnd().split("\n").at(-1), "OK")
}
