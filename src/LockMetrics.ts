/**
 * Metric handles and span names of effect-locks, declared once.
 *
 * **Details**
 *
 * Every metric carries the lock `kind` (exclusive, shared, permits) as an
 * attribute where it applies; names carry no lock name, to keep cardinality
 * bounded. Spans: `effect_locks.acquire`, `effect_locks.release`,
 * `effect_locks.lost`, each annotated with the lock name and token.
 *
 * @since 0.1.0
 */
import { Metric } from "effect"

/**
 * Acquisition attempts by `result`: `acquired`, `contended` (a try that found
 * the lock taken), `timeout`, `unavailable`, `invalid`.
 *
 * @since 0.1.0
 */
export const acquisitions = Metric.counter("effect_locks_acquisitions_total", {
  description: "Lock acquisitions by result",
  incremental: true
})

/**
 * Time from the first attempt to the grant, in milliseconds.
 *
 * @since 0.1.0
 */
export const waitTime = Metric.histogram("effect_locks_wait_ms", {
  description: "Time waited for a grant (ms)",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 18 })
})

/**
 * Time from grant to release or loss, in milliseconds.
 *
 * @since 0.1.0
 */
export const holdTime = Metric.histogram("effect_locks_hold_ms", {
  description: "Time a lease was held (ms)",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 22 })
})

/**
 * Lease extensions by `result`: `extended`, `failed` (transient), `lost`.
 *
 * @since 0.1.0
 */
export const extensions = Metric.counter("effect_locks_extensions_total", {
  description: "Lease extensions by result",
  incremental: true
})

/**
 * Lost leases by `reason`: expired, stolen, unreachable, connection-closed.
 *
 * @since 0.1.0
 */
export const losses = Metric.counter("effect_locks_losses_total", {
  description: "Lost leases by reason",
  incremental: true
})

/**
 * Leases currently held by this process.
 *
 * @since 0.1.0
 */
export const holders = Metric.gauge("effect_locks_holders", {
  description: "Leases currently held by this process"
})

/**
 * Span names.
 *
 * @since 0.1.0
 */
export const spans = {
  acquire: "effect_locks.acquire",
  release: "effect_locks.release",
  lost: "effect_locks.lost"
} as const
