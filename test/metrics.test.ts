import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Metric, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { Lock, LockBackend, LockMetrics, MemoryBackend } from "../src/index.ts"
import { FaultyBackend } from "../src/testing/index.ts"

const count = (metric: Metric.Metric<number, Metric.CounterState<number>>, attributes: Record<string, string>) =>
  Effect.map(Metric.value(Metric.withAttributes(metric, attributes)), (state) => state.count)

/** Records the names of the spans started while `effect` runs. */
const spansOf = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const base = yield* Tracer.Tracer
    const names: Array<string> = []
    const tracer = Tracer.make({
      span(options) {
        names.push(options.name)
        return base.span(options)
      }
    })
    const result = yield* Effect.exit(Effect.provideService(effect, Tracer.Tracer, tracer))
    return { names, result }
  })

describe("metrics and spans", () => {
  it.effect("acquisitions, contention, holders, hold and wait times are recorded", () =>
    Effect.gen(function* () {
      const acquired0 = yield* count(LockMetrics.acquisitions, { mode: "exclusive", result: "acquired" })
      const contended0 = yield* count(LockMetrics.acquisitions, { mode: "exclusive", result: "contended" })
      const timeout0 = yield* count(LockMetrics.acquisitions, { mode: "exclusive", result: "timeout" })
      const holdCount0 = (yield* Metric.value(LockMetrics.holdTime)).count
      const holders0 = (yield* Metric.value(LockMetrics.holders)).value

      const lease = yield* Lock.scoped("m")
      assert.strictEqual((yield* Metric.value(LockMetrics.holders)).value, holders0 + 1)
      yield* Effect.scoped(Lock.tryScoped("m"))
      const waiter = yield* Effect.forkChild(Effect.scoped(Lock.scoped("m", { timeout: "1 second" })))
      yield* TestClock.adjust("1 second")
      assert.isTrue(Exit.isFailure(yield* Fiber.await(waiter)))
      yield* TestClock.adjust("250 millis")
      yield* lease.release

      assert.strictEqual(
        yield* count(LockMetrics.acquisitions, { mode: "exclusive", result: "acquired" }),
        acquired0 + 1
      )
      assert.strictEqual(
        yield* count(LockMetrics.acquisitions, { mode: "exclusive", result: "contended" }),
        contended0 + 1
      )
      assert.strictEqual(yield* count(LockMetrics.acquisitions, { mode: "exclusive", result: "timeout" }), timeout0 + 1)
      assert.strictEqual((yield* Metric.value(LockMetrics.holders)).value, holders0)
      const hold = yield* Metric.value(LockMetrics.holdTime)
      assert.strictEqual(hold.count, holdCount0 + 1)
      assert.isAtLeast(hold.max, 1250)
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("losses are counted by reason, extensions by result", () =>
    Effect.gen(function* () {
      const lost0 = yield* count(LockMetrics.losses, { mode: "exclusive", reason: "unreachable" })
      const extended0 = yield* count(LockMetrics.extensions, { mode: "exclusive", result: "extended" })
      const { backend, control } = yield* FaultyBackend.make(yield* LockBackend)
      const lease = yield* Lock.scoped("l", { ttl: "3 seconds", onLost: "ignore" }).pipe(
        Effect.provideService(LockBackend, backend)
      )
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* count(LockMetrics.extensions, { mode: "exclusive", result: "extended" }), extended0 + 1)
      yield* control.partition("fail")
      // The last extension was sent at 1 s: the loss lands at 1 s + ttl / 2.
      yield* TestClock.adjust("1500 millis")
      const lost = yield* lease.lost
      assert.strictEqual(lost.reason, "unreachable")
      assert.strictEqual(yield* count(LockMetrics.losses, { mode: "exclusive", reason: "unreachable" }), lost0 + 1)
      yield* control.heal
    }).pipe(Effect.provide(MemoryBackend.layer))
  )

  it.effect("a span per acquire, release and loss", () =>
    Effect.gen(function* () {
      const { backend, control } = yield* FaultyBackend.make(yield* LockBackend)
      const { names } = yield* spansOf(
        Effect.scoped(
          Effect.gen(function* () {
            const lease = yield* Lock.scoped("s", { ttl: "3 seconds", onLost: "ignore" })
            yield* control.partition("fail")
            yield* TestClock.adjust("2 seconds")
            yield* lease.lost
            yield* control.heal
          })
        ).pipe(Effect.provideService(LockBackend, backend))
      )
      assert.includeMembers(names, [LockMetrics.spans.acquire, LockMetrics.spans.lost, LockMetrics.spans.release])
    }).pipe(Effect.provide(MemoryBackend.layer))
  )
})
