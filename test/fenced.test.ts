import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import { FencedResource } from "../src/testing/index.ts"

describe("FencedResource", () => {
  it.effect("capacity 1: accepts tokens at least the highest, rejects and records stale ones", () =>
    Effect.gen(function* () {
      const resource = yield* FencedResource.make()
      assert.isTrue(yield* resource.write(1n))
      assert.isTrue(yield* resource.write(3n))
      assert.isTrue(yield* resource.write(3n))
      assert.isFalse(yield* resource.write(2n))
      const stale = yield* Effect.flip(resource.use(2n, Effect.void))
      assert.deepInclude(stale, { _tag: "StaleToken", token: 2n, highest: 3n })
      const report = yield* resource.report
      assert.strictEqual(report.accepted, 3)
      assert.deepStrictEqual(report.rejected, [
        { token: 2n, highest: 3n },
        { token: 2n, highest: 3n }
      ])
    })
  )

  it.effect("records an overlap when more holders are inside than the capacity", () =>
    Effect.gen(function* () {
      const resource = yield* FencedResource.make()
      const inside = yield* Deferred.make<void>()
      const leave = yield* Deferred.make<void>()
      const first = yield* Effect.forkChild(
        resource.use(1n, Effect.andThen(Deferred.succeed(inside, undefined), Deferred.await(leave)))
      )
      yield* Deferred.await(inside)
      yield* resource.use(2n, Effect.void)
      yield* Deferred.succeed(leave, undefined)
      yield* Fiber.join(first)
      const report = yield* resource.report
      assert.deepStrictEqual(report.overlaps, [{ token: 2n, inside: [1n] }])
      assert.strictEqual(report.maxConcurrent, 2)
      assert.isTrue(report.strictlyIncreasing)
    })
  )

  it.effect("capacity N: holders may enter in any order; a token older than the N latest is stale", () =>
    Effect.gen(function* () {
      const resource = yield* FencedResource.make({ capacity: 2 })
      // Two permits granted as 1 and 2; the holder of 2 enters first.
      assert.isTrue(yield* resource.write(2n))
      assert.isTrue(yield* resource.write(1n))
      // Token 3 is granted after 1 was released: 1 is now stale, 2 is not.
      assert.isTrue(yield* resource.write(3n))
      assert.isTrue(yield* resource.write(2n))
      assert.isFalse(yield* resource.write(1n))
      assert.deepStrictEqual((yield* resource.report).rejected, [{ token: 1n, highest: 3n }])
    })
  )
})
