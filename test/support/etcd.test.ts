/**
 * Tests of the private etcd harness (test/support/EtcdServer.ts): a single member and its JSON gateway helpers, leases,
 * a three-member cluster, and the faults the etcd backend tests inject: SIGKILL of the leader and a restart,
 * SIGSTOP and SIGCONT, and stop(). No upper-bound timing assertions: what happens after a fault is polled for with
 * deadlines. Every cluster is stopped in a `finally`, and `afterAll` stops any a failed test left behind.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import {
  type EtcdCluster,
  type EtcdMember,
  EtcdRequestError,
  startEtcd,
  startEtcdCluster,
  type StartOptions
} from "./EtcdServer.ts"

const started: Array<EtcdCluster> = []

afterAll(async () => {
  await Promise.all(started.map((cluster) => cluster.stop()))
})

/** Starts a cluster of `size` members (a single member for 1), remembered for `afterAll`. */
const startTracked = async (size: number, options?: StartOptions): Promise<EtcdCluster> => {
  const cluster = size === 1 ? await startEtcd(options) : await startEtcdCluster(size, options)
  started.push(cluster)
  return cluster
}

/** The member at `index` of `members`, which the test knows exists. */
const memberAt = (members: ReadonlyArray<EtcdMember>, index: number): EtcdMember => {
  const member = members[index]
  if (member === undefined) throw new Error(`no member ${index} among ${members.length}`)
  return member
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Runs `check` until it passes; fails with its last error when it still fails after `timeoutMs`. */
const eventually = async (what: string, check: () => Promise<void>, timeoutMs = 20_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      await check()
      return
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${String(error)}`, { cause: error })
    }
    await sleep(50)
  }
}

/** Whether a process with this id exists (a zombie counts; the harness reaps its children). */
const processExists = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Cluster tests may take a few seconds each on a busy machine; the deadlines inside are the real limits. */
const clusterTest = { timeout: 60_000 }

describe("EtcdServer: a single member", () => {
  it("starts and serves put, get and keys through the JSON gateway", async () => {
    const cluster = await startTracked(1)
    try {
      const member = memberAt(cluster.members, 0)
      expect(cluster.members).toHaveLength(1)
      expect(member.name).toBe("m0")
      expect(member.id).toMatch(/^\d+$/)
      expect(member.clientUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect(member.peerUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect(member.peerUrl).not.toBe(member.clientUrl)
      expect(cluster.endpoints).toEqual([member.clientUrl])
      expect(member.pid()).toBeTypeOf("number")
      expect(member.paused()).toBe(false)
      const status = await member.status()
      expect(status).toMatchObject({ memberId: member.id, leaderId: member.id, isLeader: true })
      expect(status.version).toMatch(/^3\./)
      expect(await cluster.leader()).toBe(member)

      await cluster.put("locks/a", "1")
      await cluster.put("locks/b", "välue ✓\nline 2")
      await member.put("locks0", "next to the prefix, not under it")
      await cluster.put("other", "x")
      expect(await cluster.get("locks/a")).toBe("1")
      expect(await member.get("locks/b")).toBe("välue ✓\nline 2")
      expect(await member.get("locks/a", { serializable: true })).toBe("1")
      expect(await cluster.get("missing")).toBeUndefined()
      expect(await cluster.keys("locks/")).toEqual(["locks/a", "locks/b"])
      expect(await cluster.keys("locks")).toEqual(["locks/a", "locks/b", "locks0"])
      expect(await cluster.keys("")).toEqual(["locks/a", "locks/b", "locks0", "other"])
      expect(await cluster.keys("nothing/")).toEqual([])
      await cluster.put("locks/a", "2")
      expect(await cluster.get("locks/a")).toBe("2")

      // Files: the member's directory under the cluster's, its data dir and its log.
      expect(member.dir.startsWith(cluster.dir)).toBe(true)
      expect(Fs.existsSync(Path.join(member.dataDir, "member"))).toBe(true)
      expect(Fs.readFileSync(member.logFile, "utf8")).toMatch(/serving client traffic/)

      // A restart keeps the data dir, so the data survives; the member id and URLs stay the same.
      const pid = member.pid()
      await member.restart()
      expect(member.pid()).toBeTypeOf("number")
      expect(member.pid()).not.toBe(pid)
      expect((await member.status()).memberId).toBe(member.id)
      expect(await cluster.get("locks/a")).toBe("2")
    } finally {
      await cluster.stop()
    }
  })

  it("lists a granted lease and no longer once it is revoked, with its keys", async () => {
    const cluster = await startTracked(1)
    try {
      expect(await cluster.leases()).toEqual([])
      const granted = await cluster.request("/v3/lease/grant", { TTL: 5 })
      const id = granted["ID"]
      if (typeof id !== "string") throw new Error(`lease id ${String(id)} is not a string`)
      // 64-bit integers are decimal strings on the JSON gateway.
      expect(id).toMatch(/^\d+$/)
      expect(granted["TTL"]).toBe("5")
      await cluster.put("locks/held", "owner", { lease: id })
      expect(await cluster.leases()).toEqual([id])
      expect(await cluster.keys("locks/")).toEqual(["locks/held"])

      await cluster.request("/v3/lease/revoke", { ID: id })
      // What the backend tests check after a release: no key under the prefix and no lease left.
      expect(await cluster.leases()).toEqual([])
      expect(await cluster.keys("locks/")).toEqual([])

      // An error reply rejects at once, with its gRPC code (5: not found).
      const error = await cluster.request("/v3/lease/revoke", { ID: id }).then(
        () => undefined,
        (reason: unknown) => reason
      )
      expect(error).toBeInstanceOf(EtcdRequestError)
      expect(error).toMatchObject({ code: 5, status: 404, path: "/v3/lease/revoke" })
      expect(String(error)).toMatch(/requested lease not found/)
    } finally {
      await cluster.stop()
    }
  })

  it("fails to start with the log tail when etcd rejects its arguments", async () => {
    await expect(startEtcd({ args: ["--no-such-flag"] })).rejects.toThrow(
      /exited before it was ready[\s\S]*flag provided but not defined: -no-such-flag/
    )
  })
})

describe("EtcdServer: a three-member cluster", () => {
  it(
    "has exactly one leader, and a value written through one member is read through another",
    clusterTest,
    async () => {
      const cluster = await startTracked(3)
      try {
        expect(cluster.members.map((member) => member.name)).toEqual(["m0", "m1", "m2"])
        expect(cluster.endpoints).toEqual(cluster.members.map((member) => member.clientUrl))
        const urls = cluster.members.flatMap((member) => [member.clientUrl, member.peerUrl])
        expect(new Set(urls).size).toBe(6)
        expect(new Set(cluster.members.map((member) => member.id)).size).toBe(3)
        expect(new Set(cluster.members.map((member) => member.pid())).size).toBe(3)
        expect(new Set(cluster.members.map((member) => member.dataDir)).size).toBe(3)

        await eventually("all members to agree on exactly one leader", async () => {
          const leader = await cluster.leader()
          const statuses = await Promise.all(cluster.members.map((member) => member.status()))
          expect(statuses.filter((status) => status.isLeader).map((status) => status.memberId)).toEqual([leader.id])
          expect(statuses.map((status) => status.leaderId)).toEqual([leader.id, leader.id, leader.id])
          expect(new Set(statuses.map((status) => status.clusterId)).size).toBe(1)
        })

        const [m0, m1, m2] = [memberAt(cluster.members, 0), memberAt(cluster.members, 1), memberAt(cluster.members, 2)]
        await m0.put("key", "written through m0")
        expect(await m1.get("key")).toBe("written through m0")
        await m2.put("key", "written through m2")
        expect(await m0.get("key")).toBe("written through m2")
        await eventually("m1 to apply the write locally", async () => {
          expect(await m1.get("key", { serializable: true })).toBe("written through m2")
        })
        expect(await cluster.keys("")).toEqual(["key"])
      } finally {
        await cluster.stop()
      }
    }
  )

  it(
    "elects a new leader after SIGKILL of the leader, keeps serving writes, and the restarted member rejoins",
    clusterTest,
    async () => {
      const cluster = await startTracked(3)
      try {
        const killed = await cluster.leader()
        const survivors = cluster.members.filter((member) => member !== killed)
        await cluster.put("key", "v1")

        await killed.kill()
        expect(killed.pid()).toBeUndefined()
        // No reply (typically ECONNREFUSED; a pooled connection the kill closed may fail differently).
        await expect(killed.get("key", { timeoutMs: 2_000 })).rejects.toMatchObject({ status: undefined })
        await killed.kill() // nothing to kill: no-op

        const elected = await cluster.leader()
        expect(elected).not.toBe(killed)
        expect(survivors).toContain(elected)
        await eventually("the survivors to agree on a new leader", async () => {
          const statuses = await Promise.all(survivors.map((member) => member.status()))
          const [first, second] = statuses.map((status) => status.leaderId)
          expect(first).toBeDefined()
          expect(first).not.toBe(killed.id)
          expect(second).toBe(first)
        })
        // Through the cluster (which skips the killed member) and through each survivor.
        await cluster.put("key", "v2")
        for (const member of survivors) expect(await member.get("key")).toBe("v2")
        await memberAt(survivors, 0).put("key", "v3")
        for (const member of survivors) expect(await member.get("key")).toBe("v3")

        await killed.restart()
        expect(killed.pid()).toBeTypeOf("number")
        expect((await killed.status()).memberId).toBe(killed.id)
        await eventually("the restarted member to catch up", async () => {
          expect(await killed.get("key", { serializable: true })).toBe("v3")
        })
        expect(await killed.get("key")).toBe("v3")
        await killed.put("key", "v4")
        for (const member of survivors) expect(await member.get("key")).toBe("v4")
        expect(Fs.readFileSync(killed.logFile, "utf8")).toMatch(/"initial-cluster-state":"existing"/)
      } finally {
        await cluster.stop()
      }
    }
  )

  it(
    "serves writes through the others while the leader is paused; once resumed it catches up",
    clusterTest,
    async () => {
      const cluster = await startTracked(3)
      try {
        const paused = await cluster.leader()
        const others = cluster.members.filter((member) => member !== paused)
        await cluster.put("key", "before")

        paused.pause()
        expect(paused.paused()).toBe(true)
        expect(paused.pid()).toBeTypeOf("number")
        // A paused member accepts connections but does not answer.
        await expect(paused.get("key", { serializable: true, timeoutMs: 300 })).rejects.toThrow(
          /no reply within 300 ms/
        )

        // The cluster's request skips the paused member and retries while the others elect a new leader.
        await cluster.put("key", "during")
        const elected = await cluster.leader()
        expect(others).toContain(elected)
        for (const member of others) expect(await member.get("key")).toBe("during")

        paused.resume()
        expect(paused.paused()).toBe(false)
        await eventually("the resumed member to catch up", async () => {
          expect(await paused.get("key", { serializable: true })).toBe("during")
        })
        await eventually("the resumed member to follow the cluster's leader", async () => {
          const statuses = await Promise.all(cluster.members.map((member) => member.status()))
          const leaders = new Set(statuses.map((status) => status.leaderId))
          expect(leaders.size).toBe(1)
          expect(statuses.filter((status) => status.isLeader)).toHaveLength(1)
        })
        await memberAt(others, 0).put("key", "after")
        expect(await paused.get("key")).toBe("after")
      } finally {
        await cluster.stop()
      }
    }
  )

  it("stop() kills every member, paused ones too, removes the directories and is idempotent", clusterTest, async () => {
    const cluster = await startTracked(3)
    const dirs = [cluster.dir, ...cluster.members.map((member) => member.dir)]
    const pids = cluster.members.map((member) => member.pid())
    const m0 = memberAt(cluster.members, 0)
    try {
      for (const dir of dirs) expect(Fs.existsSync(dir)).toBe(true)
      memberAt(cluster.members, 1).pause()
      const first = cluster.stop()
      expect(cluster.stop()).toBe(first)
      await first
      for (const dir of dirs) expect(Fs.existsSync(dir)).toBe(false)
      for (const member of cluster.members) expect(member.pid()).toBeUndefined()
      for (const pid of pids) expect(pid !== undefined && processExists(pid)).toBe(false)
      await expect(m0.get("key", { timeoutMs: 2_000 })).rejects.toThrow(/fetch failed/)
      await expect(m0.restart()).rejects.toThrow(/stopped/)
      expect(() => m0.pause()).toThrow(/not running \(stopped\)/)
      await cluster.stop() // a later call resolves too
    } finally {
      await cluster.stop()
    }
  })
})
