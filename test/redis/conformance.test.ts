/**
 * The conformance suite, unchanged, against the Redis backend. After every
 * test: no key of the test's names left on the server (the suite's leak
 * check) and, once the layer closed, no subscriber left on the channel.
 */
import { Effect } from "effect"
import { afterEach } from "vitest"
import { conformance } from "../conformance/suite.ts"
import { assertNothingLeft, backendLayer, freshPrefix, keysUnder, eventually } from "./harness.ts"

const prefix = freshPrefix("conf")

afterEach(() => Effect.runPromise(assertNothingLeft(prefix)))

conformance({
  name: "redis",
  layer: backendLayer(prefix),
  leakCheck: (names) =>
    eventually(
      Effect.gen(function* () {
        const keys = yield* keysUnder(`${prefix}{${encodeURIComponent(names)}`)
        if (keys.length > 0) return yield* Effect.fail(new Error(`keys left: ${keys.slice(0, 10).join(", ")}`))
      })
    )
})
