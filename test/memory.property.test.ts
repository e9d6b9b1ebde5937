/**
 * Model-based property test of the memory backend's primitive operations:
 * random sequences of grants (exclusive, shared, permits; queued or not),
 * releases, extensions and clock moves, with the invariants checked after
 * every step against the backend's own inspection.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Option } from "effect"
import { TestClock } from "effect/testing"
import * as fc from "fast-check"
import { LockBackend, type LockMode, MemoryBackend } from "../src/index.ts"

type Op =
  | { readonly _tag: "acquire"; readonly client: number; readonly mode: LockMode; readonly queue: boolean }
  | { readonly _tag: "release"; readonly client: number }
  | { readonly _tag: "extend"; readonly client: number }
  | { readonly _tag: "advance"; readonly millis: number }

const CLIENTS = 5
const LIMIT = 3
const TTL = 1_000

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    _tag: fc.constant("acquire" as const),
    client: fc.integer({ min: 0, max: CLIENTS - 1 }),
    mode: fc.constantFrom<LockMode>("exclusive", "shared"),
    queue: fc.boolean()
  }),
  fc.record({ _tag: fc.constant("release" as const), client: fc.integer({ min: 0, max: CLIENTS - 1 }) }),
  fc.record({ _tag: fc.constant("extend" as const), client: fc.integer({ min: 0, max: CLIENTS - 1 }) }),
  fc.record({ _tag: fc.constant("advance" as const), millis: fc.integer({ min: 1, max: 700 }) })
)

/** Runs ops on two names: "rw" (exclusive/shared) and "sem" (permits, limit 3). */
const run = (ops: ReadonlyArray<Op>, permitsOf: (client: number) => number) =>
  Effect.gen(function* () {
    const backend = yield* LockBackend
    // Each client has at most one live attempt per name: a fresh owner per acquisition.
    const owners = new Map<string, string>()
    let generation = 0
    let lastToken = 0n
    for (const step of ops) {
      for (const name of ["rw", "sem"] as const) {
        const key = `${name}/${step._tag === "advance" ? -1 : step.client}`
        switch (step._tag) {
          case "acquire": {
            if (owners.has(key)) break
            const owner = `c${step.client}-${generation++}`
            const mode: LockMode = name === "sem" ? "permits" : step.mode
            const permits = name === "sem" ? permitsOf(step.client) : 1
            const grant = yield* backend.tryAcquire({
              name,
              owner,
              mode,
              permits,
              limit: name === "sem" ? LIMIT : 1,
              ttlMillis: TTL,
              metadata: {},
              queue: step.queue
            })
            if (Option.isSome(grant)) {
              if (grant.value.token <= lastToken) throw new Error(`token ${grant.value.token} after ${lastToken}`)
              lastToken = grant.value.token
            }
            if (Option.isSome(grant) || step.queue) owners.set(key, owner)
            break
          }
          case "release": {
            const owner = owners.get(key)
            if (owner !== undefined) {
              yield* backend.release(name, owner)
              owners.delete(key)
            }
            break
          }
          case "extend": {
            const owner = owners.get(key)
            if (owner !== undefined) yield* backend.extend(name, owner, TTL)
            break
          }
          case "advance":
            break
        }
      }
      if (step._tag === "advance") yield* TestClock.adjust(step.millis)

      // Invariants, from the backend's own view.
      const now = yield* Clock.currentTimeMillis
      const { holders, waiters } = yield* backend.inspect()
      const rw = holders.filter((h) => h.name === "rw")
      const exclusive = rw.filter((h) => h.mode === "exclusive")
      if (exclusive.length > 1) throw new Error("two exclusive holders")
      if (exclusive.length === 1 && rw.length > 1) throw new Error("a writer shares with readers")
      const permits = holders.filter((h) => h.name === "sem").reduce((sum, h) => sum + h.permits, 0)
      if (permits > LIMIT) throw new Error(`${permits} permits held, limit ${LIMIT}`)
      for (const h of holders) if (h.expiresAt! <= now) throw new Error(`expired holder listed: ${h.owner}`)
      const owners2 = new Set([...holders, ...waiters].map((x) => `${x.name}/${x.owner}`))
      if (owners2.size !== holders.length + waiters.length) throw new Error("an owner both holds and waits")
      // A waiter never waits when nothing blocks it and nobody is ahead of it.
      for (const name of ["rw", "sem"]) {
        const first = waiters.find((w) => w.name === name)
        if (first !== undefined && holders.every((h) => h.name !== name)) {
          // The head may still be waiting until it retries; the backend must grant it then.
          const retry = yield* backend.tryAcquire({
            name,
            owner: first.owner,
            mode: first.mode,
            permits: first.permits,
            limit: name === "sem" ? LIMIT : 1,
            ttlMillis: TTL,
            metadata: {},
            queue: true
          })
          if (Option.isNone(retry)) throw new Error(`head waiter ${first.owner} not granted on a free ${name}`)
          if (retry.value.token <= lastToken) throw new Error("token went back")
          lastToken = retry.value.token
        }
      }
    }
  }).pipe(Effect.provide(MemoryBackend.layer), Effect.provide(TestClock.layer()))

describe("MemoryBackend (model-based)", () => {
  it("holds its invariants under random operation sequences", async () => {
    let runs = 0
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { maxLength: 60 }),
        fc.array(fc.integer({ min: 1, max: LIMIT }), { minLength: CLIENTS, maxLength: CLIENTS }),
        async (ops, permits) => {
          await Effect.runPromise(run(ops, (client) => permits[client]!))
          runs++
        }
      ),
      { numRuns: 300 }
    )
    assert.isAtLeast(runs, 300)
  })
})
