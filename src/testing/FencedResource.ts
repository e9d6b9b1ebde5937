/**
 * A resource protected by fencing tokens, that records every violation.
 *
 * **When to use**
 *
 * In tests of mutual exclusion: every holder enters the resource with its
 * lease's token. The resource accepts an operation only with a token at least
 * the highest it has seen (with `capacity` N: at least the N-th highest, since
 * N holders may enter in any order), records each stale operation it
 * rejected, and each time more holders were inside at once than its capacity
 * allows.
 *
 * @since 0.1.0
 */
import { Effect, Schema } from "effect"

/**
 * An operation carried a token lower than one the resource already saw.
 *
 * @since 0.1.0
 */
export class StaleToken extends Schema.TaggedError<StaleToken>()("StaleToken", {
  token: Schema.BigInt,
  highest: Schema.BigInt
}) {}

/**
 * What the resource saw.
 *
 * @since 0.1.0
 */
export interface FencingReport {
  /** Operations accepted. */
  readonly accepted: number
  /** Stale operations rejected, with the highest token seen at the time. */
  readonly rejected: ReadonlyArray<{ readonly token: bigint; readonly highest: bigint }>
  /** Entries that found the resource already at capacity, with the tokens already inside. */
  readonly overlaps: ReadonlyArray<{ readonly token: bigint; readonly inside: ReadonlyArray<bigint> }>
  /** Most holders inside at once. */
  readonly maxConcurrent: number
  /** Tokens of accepted `use` entries, in entry order. */
  readonly entries: ReadonlyArray<bigint>
  /** True when every accepted entry's token is greater than the one before (meaningful for capacity 1). */
  readonly strictlyIncreasing: boolean
}

/**
 * A fenced resource.
 *
 * @since 0.1.0
 */
export interface FencedResource {
  /** One operation with a token: `true` if accepted, `false` if rejected as stale. */
  readonly write: (token: bigint) => Effect.Effect<boolean>
  /** Runs `effect` inside the resource as the holder of `token`. */
  readonly use: <A, E, R>(token: bigint, effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | StaleToken, R>
  readonly report: Effect.Effect<FencingReport>
}

/**
 * Creates a fenced resource that admits `capacity` holders at once (1 for a
 * lock; the limit for a semaphore).
 *
 * @since 0.1.0
 */
export const make = (options?: { readonly capacity?: number }): Effect.Effect<FencedResource> =>
  Effect.sync(() => {
    const capacity = options?.capacity ?? 1
    // The `capacity` highest tokens seen, ascending. With N holders allowed
    // inside at once, a token is stale only when N later grants have been
    // seen: holders of one semaphore may enter in any order.
    const recent: Array<bigint> = []
    let highest = -1n
    let accepted = 0
    const rejected: Array<{ token: bigint; highest: bigint }> = []
    const overlaps: Array<{ token: bigint; inside: ReadonlyArray<bigint> }> = []
    const inside = new Map<number, bigint>()
    let nextId = 0
    let maxConcurrent = 0
    const entries: Array<bigint> = []

    const check = (token: bigint): boolean => {
      if (recent.length === capacity && token < recent[0]!) {
        rejected.push({ token, highest })
        return false
      }
      if (!recent.includes(token)) {
        recent.push(token)
        recent.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
        if (recent.length > capacity) recent.shift()
      }
      if (token > highest) highest = token
      accepted++
      return true
    }

    const write = (token: bigint) => Effect.sync(() => check(token))

    const use = <A, E, R>(token: bigint, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | StaleToken, R> =>
      Effect.suspend((): Effect.Effect<A, E | StaleToken, R> => {
        const seen = highest
        if (!check(token)) return Effect.fail(new StaleToken({ token, highest: seen }))
        if (inside.size >= capacity) overlaps.push({ token, inside: [...inside.values()] })
        const id = nextId++
        inside.set(id, token)
        entries.push(token)
        maxConcurrent = Math.max(maxConcurrent, inside.size)
        return Effect.ensuring(
          effect,
          Effect.sync(() => inside.delete(id))
        )
      })

    const report = Effect.sync((): FencingReport => ({
      accepted,
      rejected: [...rejected],
      overlaps: [...overlaps],
      maxConcurrent,
      entries: [...entries],
      strictlyIncreasing: entries.every((token, i) => i === 0 || token > entries[i - 1]!)
    }))

    return { write, use, report }
  })
