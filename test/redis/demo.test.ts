/**
 * `LOCK_PROVIDER=redis npm run demo`: the demo, as a separate process,
 * against real Redis servers through `LockBackend.layerConfig`: one server
 * (the Redis backend), and three private servers (Redlock). Each run gets a
 * fresh `LOCK_REDIS_PREFIX`; its keys and subscriptions must show up under it
 * while the demo runs, and nothing may be left under it afterwards.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { afterAll } from "vitest"
import { LOCK_NAMES, RW_NAME, SEMAPHORE_NAME } from "../../demo/demo.ts"
import { assertCleanSummary, runDemoProcess } from "../support/demoProcess.ts"
import * as RedisServer from "../support/RedisServer.ts"
import { assertNothingLeft, eventually, freshPrefix, keysUnder, subscribersOf, url } from "./harness.ts"

const servers = await RedisServer.startMany(3)
const redlockUrls = servers.map((server) => server.url)
afterAll(() => Promise.all(servers.map((server) => server.stop())))

/** The demo's names seen under `prefix` on a server while it runs, and its subscriber there. */
const seenWhileRunning = (prefix: string, target: string) =>
  eventually(
    Effect.gen(function* () {
      const keys = yield* keysUnder(prefix, target)
      const subscribers = yield* subscribersOf(prefix, target)
      const names = new Set(
        keys.map((key) => decodeURIComponent(key.slice(prefix.length + 1, key.lastIndexOf("}")))).filter(Boolean)
      )
      if (names.size === 0 || subscribers === 0) {
        return yield* Effect.fail(new Error(`nothing under ${prefix} on ${target} yet`))
      }
      return { names, subscribers }
    }),
    15_000
  )

const expectCleanRun = (backend: string, env: Record<string, string>, prefix: string, targets: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const run = yield* Effect.forkChild(runDemoProcess({ ...env, LOCK_PROVIDER: "redis", LOCK_REDIS_PREFIX: prefix }))
    // The demo works under the prefix it was given, on every server.
    const seen = yield* Effect.forEach(targets, (target) => seenWhileRunning(prefix, target), {
      concurrency: "unbounded"
    })
    const result = yield* Fiber.join(run)
    assertCleanSummary(backend, result)
    assert.include(result.output, `, ${backend} backend,`)
    const demoNames: ReadonlyArray<string> = [...LOCK_NAMES, RW_NAME, SEMAPHORE_NAME]
    for (const { names, subscribers } of seen) {
      for (const name of names) assert.include(demoNames, name)
      assert.strictEqual(subscribers, 1, "one subscription per process and server")
    }
    // Nothing left under the prefix on any server: no key, no subscriber.
    for (const target of targets) yield* assertNothingLeft(prefix, target)
  })

describe("demo on Redis", () => {
  it.live(
    "LOCK_PROVIDER=redis with one URL: no violation, tokens increasing, nothing left under the prefix",
    () => {
      const prefix = freshPrefix("demo")
      return expectCleanRun("redis", { LOCK_REDIS_URL: url, DEMO_DURATION_MS: "2000" }, prefix, [url])
    },
    60_000
  )

  it.live(
    "LOCK_PROVIDER=redis with three URLs (Redlock on private servers): no violation, tokens increasing, nothing left",
    () => {
      const prefix = freshPrefix("demo-redlock")
      return expectCleanRun(
        "redlock",
        { LOCK_REDIS_URL: redlockUrls.join(","), DEMO_DURATION_MS: "2000" },
        prefix,
        redlockUrls
      )
    },
    60_000
  )
})
