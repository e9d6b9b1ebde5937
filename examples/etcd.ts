// Locks on etcd: fencing tokens from the store's revision, FIFO waiting by watch.
import { Effect, Layer } from "effect"
import { DistributedSemaphore, Lock } from "effect-locks"
import { EtcdBackend, EtcdClient } from "effect-locks/etcd"

const endpoints = (process.env["ETCD_ENDPOINTS"] ?? "http://127.0.0.1:2379").split(",")
const LocksLive = EtcdBackend.layer({ prefix: "billing/" }).pipe(Layer.provide(EtcdClient.layer({ endpoints })))

// One holder at a time across the cluster; the token is the key's create revision.
export const settle = Lock.withLock("ledger:settlement", { ttl: "10 seconds", requireFencing: true })(
  Effect.log("settling")
).pipe(Effect.provide(LocksLive))

// At most three exports at once, served in arrival order.
export const exportJob = DistributedSemaphore.withPermits("exports", { limit: 3 })(Effect.log("exporting")).pipe(
  Effect.provide(LocksLive)
)
