/**
 * effect-locks/etcd: the etcd v3 backend. Importing it also makes
 * `LOCK_PROVIDER=etcd` available to `LockBackend.layerConfig`.
 *
 * @since 0.1.0
 */

/** Leases, revision fencing and FIFO waiting by watch. @since 0.1.0 */
export * as EtcdBackend from "./EtcdBackend.ts"
/** The `etcd3` client as an Effect service, with deadlines and typed errors. @since 0.1.0 */
export * as EtcdClient from "./EtcdClient.ts"
