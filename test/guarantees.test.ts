import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { type Guarantees, LockBackend, MemoryBackend } from "../src/index.ts"
import { PostgresBackend } from "../src/postgres/index.ts"
import { RedisBackend, RedlockBackend } from "../src/redis/index.ts"
import { EtcdBackend } from "../src/etcd/index.ts"

// The guarantees tables in README.md and docs/guarantees.md must say what the
// backends declare.
const rows = (markdown: string) => {
  const lines = markdown.split("\n")
  let first = lines.findIndex((line) => line.startsWith("| mutual exclusion holds within"))
  while (first > 0 && lines[first - 1]!.startsWith("|")) first--
  const table: Array<Array<string>> = []
  for (let i = first; i < lines.length && lines[i]!.startsWith("|"); i++) {
    table.push(
      lines[i]!.split("|")
        .slice(1, -1)
        .map((cell) => cell.trim())
    )
  }
  return table
}

/** Checks one backend's column of a guarantees table against its declared values. */
const checkColumn = (table: ReadonlyArray<ReadonlyArray<string>>, kind: string, g: Guarantees) => {
  const column = table[0]!.indexOf(kind)
  assert.isAbove(column, 0, `no ${kind} column`)
  const cell = (label: string) => table.find((row) => row[0] === label)?.[column]
  assert.strictEqual(cell("mutual exclusion holds within"), g.scope)
  assert.strictEqual(cell("lease ends when"), g.leaseEnds)
  assert.isTrue(cell("fencing token")?.startsWith(g.fencing), `${kind} fencing: ${cell("fencing token")}`)
  assert.strictEqual(cell("wake-up"), g.wakeUp)
  assert.strictEqual(cell("waiters served"), g.fairness)
}

describe("guarantees tables", () => {
  for (const file of ["README.md", "docs/guarantees.md"]) {
    it.effect(`${file} matches the declared guarantees`, () =>
      Effect.gen(function* () {
        const table = rows(readFileSync(file, "utf8"))
        const memory = yield* LockBackend
        checkColumn(table, memory.kind, memory.guarantees)
        checkColumn(table, "postgres", PostgresBackend.guarantees)
        checkColumn(table, "redis", RedisBackend.guarantees)
        checkColumn(table, "redlock", RedlockBackend.guarantees)
        checkColumn(table, "etcd", EtcdBackend.guarantees)
      }).pipe(Effect.provide(MemoryBackend.layer))
    )
  }

  it("every other TypeScript block in the README is part of a type-checked example", () => {
    const readme = readFileSync("README.md", "utf8")
    const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!.trim())
    assert.isAtLeast(blocks.length, 2)
    const examples = ["quickstart", "fencing", "postgres", "redis", "etcd"].map((f) =>
      readFileSync(`examples/${f}.ts`, "utf8")
    )
    for (const block of blocks)
      assert.isTrue(
        examples.some((e) => e.includes(block)),
        `not in examples/: ${block}`
      )
  })

  it("the README's example is examples/quickstart.ts, which the type-check compiles", () => {
    const readme = readFileSync("README.md", "utf8")
    const block = readme.slice(readme.indexOf("```ts\n") + 6, readme.indexOf("```", readme.indexOf("```ts\n") + 6))
    const example = readFileSync("examples/quickstart.ts", "utf8")
    assert.isTrue(example.includes(block.trim()), "README example differs from examples/quickstart.ts")
  })
})
