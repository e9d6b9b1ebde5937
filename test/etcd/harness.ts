/**
 * Shared pieces of the etcd backend tests: a private etcd (one member, on a
 * free loopback port, with a temporary data directory) unless
 * `LOCK_TEST_ETCD_URL` is set, a unique key prefix per test layer, and the
 * server-side leak checks (keys under the prefix, leases).
 */
import { type Duration, Effect, Layer } from "effect"
import type { LockBackend } from "../../src/index.ts"
import { EtcdBackend, EtcdClient } from "../../src/etcd/index.ts"
import { type EtcdCluster, startEtcd } from "../support/EtcdServer.ts"
import { eventually } from "../support/eventually.ts"

let counter = 0
const runId = Math.random().toString(36).slice(2, 8)

/** A unique key prefix: every key of one test layer starts with it. */
export const freshPrefix = (label = "t") => `el-test/${label}-${runId}-${counter++}/`

/** A private one-member etcd, or the server named by `LOCK_TEST_ETCD_URL` (not stopped then). */
export const startServer = async (): Promise<{
  readonly endpoints: ReadonlyArray<string>
  readonly server: EtcdCluster | undefined
  readonly stop: () => Promise<void>
}> => {
  const external = process.env["LOCK_TEST_ETCD_URL"]
  if (external !== undefined && external.length > 0) {
    return { endpoints: external.split(","), server: undefined, stop: () => Promise.resolve() }
  }
  const server = await startEtcd()
  return { endpoints: server.endpoints, server, stop: () => server.stop() }
}

/** The backend under `prefix` on its own client for `endpoints`. */
export const backendLayer = (
  prefix: string,
  endpoints: ReadonlyArray<string>,
  options: { readonly callTimeout?: Duration.Input } = {}
): Layer.Layer<LockBackend, unknown> =>
  EtcdBackend.layer({ prefix }).pipe(
    Layer.provide(EtcdClient.layer({ endpoints, callTimeout: options.callTimeout ?? "2 seconds" }))
  )

export { eventually }

/** Keys under `prefix` on the server. */
export const keysUnder = (server: EtcdCluster, prefix: string) => Effect.promise(() => server.keys(prefix))

/** Leases on the server. */
export const leasesOf = (server: EtcdCluster) => Effect.promise(() => server.leases())

/** No key under `prefix`, and (when `leases` is given) no lease beyond those. */
export const assertNothingLeft = (server: EtcdCluster, prefix: string, before?: ReadonlyArray<string>) =>
  eventually(
    Effect.gen(function* () {
      const keys = yield* keysUnder(server, prefix)
      if (keys.length > 0)
        return yield* Effect.fail(new Error(`keys left under ${prefix}: ${keys.slice(0, 10).join(", ")}`))
      if (before !== undefined) {
        const leases = (yield* leasesOf(server)).filter((lease) => !before.includes(lease))
        if (leases.length > 0) return yield* Effect.fail(new Error(`leases left: ${leases.join(", ")}`))
      }
    })
  )
