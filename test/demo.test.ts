import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { type DemoOutput, LOCK_NAMES, runDemo, RW_NAME, SEMAPHORE_NAME } from "../demo/demo.ts"
import { MemoryBackend } from "../src/index.ts"

describe("demo", () => {
  it.live("workers contend on every name with no violation, and nothing is left held", () =>
    Effect.gen(function* () {
      const lines: Array<string> = []
      const frames: Array<ReadonlyArray<string>> = []
      const output: DemoOutput = { line: (text) => lines.push(text), frame: (frame) => frames.push(frame) }
      const summary = yield* runDemo({ durationMillis: 600, statusEveryMillis: 200, output })

      assert.deepStrictEqual(
        summary.names.map((n) => n.name),
        [...LOCK_NAMES, RW_NAME, SEMAPHORE_NAME]
      )
      for (const n of summary.names) {
        assert.isAbove(n.acquisitions, 0, `acquisitions on ${n.name}`)
        assert.strictEqual(n.violations, 0, `violations on ${n.name}`)
        assert.isAtMost(n.maxConcurrent, n.capacity, `holders inside ${n.name}`)
        if (n.kind !== "semaphore") assert.isTrue(n.tokensIncreasing, `tokens of ${n.name}`)
      }
      const rw = summary.names.find((n) => n.name === RW_NAME)!
      assert.isAbove(rw.reads, 0)
      assert.isAbove(rw.writes, 0)
      assert.strictEqual(summary.violations, 0)
      assert.isTrue(summary.tokensIncreasing)
      assert.deepStrictEqual(summary.leftBehind, { holders: 0, waiters: 0 })
      assert.strictEqual(summary.lost, 0)
      assert.isTrue(summary.ok)
      assert.strictEqual(
        summary.totalAcquisitions,
        summary.names.reduce((acc, n) => acc + n.acquisitions, 0)
      )

      // Live status frames came from inspection (workers named by their metadata), and the summary was printed.
      assert.isAtLeast(frames.length, 3)
      assert.isTrue(frames.some((frame) => frame.some((line) => /\bw\d X#\d+ \.\.[0-9a-f]{4}\b/.test(line))))
      assert.include(lines.join("\n"), "violations: 0")
      assert.strictEqual(lines.at(-1), "OK")
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})
