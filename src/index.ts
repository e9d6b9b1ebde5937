/**
 * effect-locks: resource-safe distributed locks for Effect.
 *
 * @since 0.1.0
 */

/** Exclusive locks. @since 0.1.0 */
export * as Lock from "./Lock.ts"

/** Read-write locks. @since 0.1.0 */
export * as ReadWriteLock from "./ReadWriteLock.ts"

/** Counting semaphores. @since 0.1.0 */
export * as DistributedSemaphore from "./DistributedSemaphore.ts"

/** The value an acquisition returns. @since 0.1.0 */
export * as Lease from "./Lease.ts"

/** The backend contract and `LockBackend.layerConfig`. @since 0.1.0 */
export * from "./LockBackend.ts"

/** Options, defaults and retry schedules. @since 0.1.0 */
export * as LockConfig from "./LockConfig.ts"

/** Metric handles and span names. @since 0.1.0 */
export * as LockMetrics from "./LockMetrics.ts"

/** The typed errors. @since 0.1.0 */
export * from "./LockError.ts"

/** The in-process backend. @since 0.1.0 */
export * as MemoryBackend from "./memory/MemoryBackend.ts"
