/**
 * The conformance suite, unchanged, against the PostgreSQL backend. After
 * every test: nothing of ours in `pg_locks` while the layer lives (the
 * suite's leak check), and no connection of ours left once it closed.
 */
import { Effect } from "effect"
import { afterEach } from "vitest"
import { conformance } from "../conformance/suite.ts"
import { admin, advisoryLocksOf, assertNothingLeft, backendLayer, freshAppName } from "./harness.ts"

const appName = freshAppName("conf")

afterEach(() => Effect.runPromise(assertNothingLeft(appName)))

conformance({
  name: "postgres",
  layer: backendLayer(appName),
  leakCheck: () =>
    Effect.gen(function* () {
      const held = yield* advisoryLocksOf(appName)
      if (held !== 0) return yield* Effect.die(new Error(`${held} advisory locks left in pg_locks`))
    }).pipe(Effect.provide(admin))
})
