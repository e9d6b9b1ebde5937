/** A grant request for direct backend calls in tests (conformance, backend tests). */
import type { GrantRequest } from "../../src/index.ts"

/** An exclusive, single-attempt request of `owner` for `name` (ttl 10 s), with `extra` on top. */
export const grantRequest = (name: string, owner: string, extra?: Partial<GrantRequest>): GrantRequest => ({
  name,
  owner,
  mode: "exclusive",
  permits: 1,
  limit: 1,
  ttlMillis: 10_000,
  metadata: {},
  queue: false,
  ...extra
})
