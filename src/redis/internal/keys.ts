/**
 * Redis key names of the backend: `<prefix>{<encoded name>}:<part>`.
 *
 * The name is percent-encoded (`encodeURIComponent`), so an encoded name has
 * no `{`, `}`, `:`, `%`-ambiguity or non-ASCII byte: two names never share a
 * key, a name cannot leave its `{hash tag}` or the prefix, and every key of a
 * name hashes to one Redis Cluster slot.
 */

/** The parts of a name, in the order of the scripts' KEYS (see common.lua). */
export const parts = ["x", "r", "ri", "q", "qe", "qi", "w", "m", "c"] as const

/** The hash tag of a name: `{<encoded name>}`. */
export const tagOf = (name: string): string => `{${encodeURIComponent(name)}}`

/** The nine keys of `name` under `prefix`. */
export const keysOf = (prefix: string, name: string): ReadonlyArray<string> => {
  const base = `${prefix}${tagOf(name)}:`
  return parts.map((part) => base + part)
}

/** The fencing counter key of `name`. */
export const counterOf = (prefix: string, name: string): string => `${prefix}${tagOf(name)}:c`

/** The change channel of a prefix. */
export const channelOf = (prefix: string): string => `${prefix}changes`

/** A `SCAN MATCH` pattern for the kind-and-limit key of every name in use under `prefix`. */
export const namesPattern = (prefix: string): string => `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}{*}:m`

/** The name of a kind-and-limit key found by `namesPattern`, or undefined for a key that is not ours. */
export const nameOfKey = (prefix: string, key: string): string | undefined => {
  if (!key.startsWith(`${prefix}{`) || !key.endsWith("}:m")) return undefined
  const encoded = key.slice(prefix.length + 1, -3)
  if (/[{}:]/.test(encoded)) return undefined
  try {
    return decodeURIComponent(encoded)
  } catch {
    return undefined
  }
}

/** A published change of a name. */
export interface Change {
  readonly name: string
  /** The owner whose grant, release or withdrawal made the change; empty for a sweep. */
  readonly cause: string
  /** The waiter that may proceed now; empty: every waiter of the name. */
  readonly owner: string
}

/**
 * Parses a published change, `<#name>:<name><#cause>:<cause><owner>`
 * (lengths in UTF-8 bytes, as Lua counts them).
 */
export const parseChange = (message: string): Change | undefined => {
  const bytes = Buffer.from(message, "utf8")
  let at = 0
  const field = (): string | undefined => {
    const colon = bytes.indexOf(0x3a, at)
    if (colon <= at) return undefined
    const length = Number(bytes.subarray(at, colon).toString("latin1"))
    if (!Number.isSafeInteger(length) || colon + 1 + length > bytes.length) return undefined
    at = colon + 1 + length
    return bytes.subarray(colon + 1, at).toString("utf8")
  }
  const name = field()
  const cause = name === undefined ? undefined : field()
  if (name === undefined || cause === undefined) return undefined
  return { name, cause, owner: bytes.subarray(at).toString("utf8") }
}
