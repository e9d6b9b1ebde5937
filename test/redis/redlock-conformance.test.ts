/**
 * The conformance suite, unchanged, against Redlock on three private
 * `redis-server` processes. After every test: no key of the test's names on
 * any instance, and no subscriber left on any instance once the layer closed.
 */
import { Effect } from "effect"
import { afterAll, afterEach } from "vitest"
import { conformance } from "../conformance/suite.ts"
import * as RedisServer from "../support/RedisServer.ts"
import { assertNothingLeft, eventually, freshPrefix, keysUnder, redlockLayer } from "./harness.ts"

const servers = await RedisServer.startMany(3)
const urls = servers.map((server) => server.url)
const prefix = freshPrefix("redlock-conf")

afterEach(() => Effect.runPromise(Effect.forEach(urls, (url) => assertNothingLeft(prefix, url))))
afterAll(() => Promise.all(servers.map((server) => server.stop())))

conformance({
  name: "redlock (3 instances)",
  layer: redlockLayer(prefix, urls),
  leakCheck: (names) =>
    Effect.forEach(urls, (url) =>
      eventually(
        Effect.gen(function* () {
          const keys = yield* keysUnder(`${prefix}{${encodeURIComponent(names)}`, url)
          if (keys.length > 0)
            return yield* Effect.fail(new Error(`keys left on ${url}: ${keys.slice(0, 10).join(", ")}`))
        })
      )
    )
})
