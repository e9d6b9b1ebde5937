/**
 * `LOCK_PROVIDER=etcd npm run demo`: the demo, as a separate process, against
 * a private etcd through `LockBackend.layerConfig`, under a fresh
 * `LOCK_ETCD_PREFIX`: its keys show up under the prefix while it runs, and no
 * key and no lease of it is left afterwards.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { afterAll } from "vitest"
import { LOCK_NAMES, RW_NAME, SEMAPHORE_NAME } from "../../demo/demo.ts"
import { assertCleanSummary, runDemoProcess } from "../support/demoProcess.ts"
import { startEtcd } from "../support/EtcdServer.ts"
import { assertNothingLeft, eventually, freshPrefix, keysUnder, leasesOf } from "./harness.ts"

const server = await startEtcd()
afterAll(() => server.stop())

describe("demo on etcd", () => {
  it.live(
    "LOCK_PROVIDER=etcd: no violation, tokens increasing, the demo's names under the prefix, nothing left",
    () =>
      Effect.gen(function* () {
        const prefix = freshPrefix("demo")
        const leasesBefore = yield* leasesOf(server)
        const run = yield* Effect.forkChild(
          runDemoProcess({
            LOCK_PROVIDER: "etcd",
            LOCK_ETCD_ENDPOINTS: server.endpoints.join(","),
            LOCK_ETCD_PREFIX: prefix,
            DEMO_DURATION_MS: "2000"
          })
        )
        // While it runs, its keys are the demo's names under the prefix.
        const names = yield* eventually(
          Effect.gen(function* () {
            const keys = yield* keysUnder(server, prefix)
            if (keys.length === 0) return yield* Effect.fail(new Error(`nothing under ${prefix} yet`))
            return keys.map((key) => decodeURIComponent(key.slice(prefix.length, key.lastIndexOf("/"))))
          }),
          15_000
        )
        const result = yield* Fiber.join(run)
        assertCleanSummary("etcd", result)
        const demoNames: ReadonlyArray<string> = [...LOCK_NAMES, RW_NAME, SEMAPHORE_NAME]
        for (const name of names) assert.include(demoNames, name)
        yield* assertNothingLeft(server, prefix, leasesBefore)
      }),
    60_000
  )
})
