/**
 * The conformance suite, unchanged, against the etcd backend on a private
 * etcd. TTLs are whole seconds on etcd, so the expiry tests use 2 s. After
 * every test: no key of the test's names while the layer lives, and no key
 * and no lease of ours once it closed.
 */
import { Effect } from "effect"
import { afterAll, afterEach, beforeEach } from "vitest"
import { conformance } from "../conformance/suite.ts"
import {
  assertNothingLeft,
  backendLayer,
  eventually,
  freshPrefix,
  keysUnder,
  leasesOf,
  startServer
} from "./harness.ts"

const { endpoints, server, stop } = await startServer()
const prefix = freshPrefix("conf")
let leasesBefore: ReadonlyArray<string> = []

beforeEach(async () => {
  if (server !== undefined) leasesBefore = await Effect.runPromise(leasesOf(server))
})
afterEach(async () => {
  if (server !== undefined) await Effect.runPromise(assertNothingLeft(server, prefix, leasesBefore))
})
afterAll(() => stop())

conformance({
  name: "etcd",
  layer: backendLayer(prefix, endpoints),
  ttlMillis: 2000,
  leakCheck: (names) =>
    server === undefined
      ? Effect.void
      : eventually(
          Effect.gen(function* () {
            const keys = yield* keysUnder(server, `${prefix}${encodeURIComponent(names)}`)
            if (keys.length > 0) return yield* Effect.fail(new Error(`keys left: ${keys.slice(0, 10).join(", ")}`))
          })
        )
})
