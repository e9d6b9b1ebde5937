/**
 * Advisory-lock key derivation. Private to the PostgreSQL backend; exported
 * to users as `PostgresBackend.keyOf`.
 */
import { createHash } from "node:crypto"

const encoder = new TextEncoder()

// This exact derivation (its version prefix, the length prefixes, UTF-8,
// SHA-256 and the first 8 bytes read as a signed big-endian integer) is a
// persistent wire format shared by every process that locks the same names:
// changing it would let two versions of the library hold "the same" lock at
// once. It must never change; a new one needs a new version prefix.
const VERSION = encoder.encode("effect-locks/pg/v1\0")

const u32 = (n: number): Uint8Array => {
  const bytes = new Uint8Array(4)
  new DataView(bytes.buffer).setUint32(0, n)
  return bytes
}

/**
 * The 64-bit advisory-lock key of `name` under `namespace`, or of one permit
 * slot of a semaphore of that name.
 *
 * SHA-256 over `"effect-locks/pg/v1\0"`, then the namespace and the name as
 * UTF-8, each preceded by its byte length (32-bit big-endian), then for a slot
 * a `0x01` byte and the slot index (32-bit big-endian); the first 8 bytes of
 * the digest, read as a signed big-endian integer, are the key.
 */
export const keyOf = (namespace: string, name: string, slot?: number): bigint => {
  const hash = base(namespace, name)
  if (slot !== undefined) hash.update(Uint8Array.of(1)).update(u32(slot))
  return hash.digest().readBigInt64BE(0)
}

/**
 * The key of a name's writer intent: held by a process whose writer waits,
 * so that readers of other processes queue behind it. Derived like
 * `keyOf`, with a `0x02` byte after the name.
 */
export const intentKeyOf = (namespace: string, name: string): bigint =>
  base(namespace, name).update(Uint8Array.of(2)).digest().readBigInt64BE(0)

const base = (namespace: string, name: string) => {
  const ns = encoder.encode(namespace)
  const nm = encoder.encode(name)
  return createHash("sha256").update(VERSION).update(u32(ns.length)).update(ns).update(u32(nm.length)).update(nm)
}
