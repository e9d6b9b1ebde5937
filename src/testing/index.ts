/**
 * Public test helpers: a fault-injecting backend wrapper and a fenced
 * resource that records violations.
 *
 * @since 0.1.0
 */

/** Fault injection for any backend. @since 0.1.0 */
export * as FaultyBackend from "./FaultyBackend.ts"

/** A resource that checks fencing tokens and records overlaps. @since 0.1.0 */
export * as FencedResource from "./FencedResource.ts"
