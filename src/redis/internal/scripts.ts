/**
 * The Lua scripts of the Redis backend, read from the `.lua` files next to
 * the backend (one file per script, each with a header naming its KEYS and
 * ARGV). `common.lua` is prepended to every state-changing script.
 */
import * as Fs from "node:fs"
import * as Redis from "effect/persistence/Redis"

const read = (file: string): string => Fs.readFileSync(new URL(`../${file}`, import.meta.url), "utf8")

const common = read("common.lua")
const withCommon = (file: string) => `${common}\n${read(file)}`

/** The nine keys of a name, then the script's ARGV, as strings. */
type Args = readonly [keys: ReadonlyArray<string>, ...argv: ReadonlyArray<string>]

const nineKeys = (keys: ReadonlyArray<string>, ...argv: ReadonlyArray<string>) => [...keys, ...argv]

/** acquire.lua: `{1, token}`, `{0}` or `{-1, field, kind, limit}`. */
export const acquire = Redis.script((...[keys, ...argv]: Args) => nineKeys(keys, ...argv), {
  lua: withCommon("acquire.lua"),
  numberOfKeys: 9
}).withReturnType<ReadonlyArray<number | string | null>>()

/** extend.lua: `"extended"`, `"stolen"` or `"expired"`. */
export const extend = Redis.script((...[keys, ...argv]: Args) => nineKeys(keys, ...argv), {
  lua: withCommon("extend.lua"),
  numberOfKeys: 9
}).withReturnType<string>()

/** release.lua: 1 when a grant was released. */
export const release = Redis.script((...[keys, ...argv]: Args) => nineKeys(keys, ...argv), {
  lua: withCommon("release.lua"),
  numberOfKeys: 9
}).withReturnType<number>()

/** fence.lua: the counter's value afterwards. */
export const fence = Redis.script((counter: string, token: string, ttl: string) => [counter, token, ttl], {
  lua: read("fence.lua"),
  numberOfKeys: 1
}).withReturnType<number>()

/** inspect.lua: a read-only snapshot of one name. */
export const inspect = Redis.script((keys: ReadonlyArray<string>) => keys, {
  lua: read("inspect.lua"),
  numberOfKeys: 9
}).withReturnType<ReadonlyArray<unknown>>()
