/**
 * Tests of the private redis-server harness (test/support/RedisServer.ts): starting, the RESP `command` helper,
 * pause/resume, restart, kill and stop. Timing assertions are lower bounds only. Every server is stopped in a
 * `finally`, and `afterAll` stops any a failed test left behind.
 */
import * as Fs from "node:fs"
import * as Net from "node:net"
import { afterAll, describe, expect, it } from "vitest"
import { start, startMany, type RedisServer, type StartOptions } from "./RedisServer.ts"
import { freePort } from "./servers.ts"

const started: Array<RedisServer> = []

afterAll(async () => {
  await Promise.all(started.map((server) => server.stop()))
})

/** Starts a server, remembered for `afterAll`. */
const startTracked = async (options?: StartOptions): Promise<RedisServer> => {
  const server = await start(options)
  started.push(server)
  return server
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Connects a raw client to the server and resolves once connected; it closes when the server drops it. */
const connectRaw = (server: RedisServer): Promise<{ readonly socket: Net.Socket; readonly closed: Promise<void> }> =>
  new Promise((resolve, reject) => {
    const socket = Net.connect({ host: server.host, port: server.port })
    const closed = new Promise<void>((done) => socket.once("close", () => done()))
    socket.once("error", reject)
    socket.once("connect", () => {
      socket.off("error", reject)
      socket.on("error", () => {})
      resolve({ socket, closed })
    })
  })

describe("RedisServer", () => {
  it("starts a private server that answers PING, SET and GET", async () => {
    const server = await startTracked()
    try {
      expect(server.host).toBe("127.0.0.1")
      expect(server.url).toBe(`redis://127.0.0.1:${server.port}`)
      expect(server.pid()).toBeTypeOf("number")
      expect(await server.command("PING")).toBe("+PONG")
      expect(await server.command("SET", "key", "value")).toBe("+OK")
      expect(await server.command("GET", "key")).toBe("value")
      expect(await server.command("GET", "missing")).toBe("$-1")
      expect(await server.command("DBSIZE")).toBe(":1")
      // The server is the process we started, without persistence, in its temporary directory.
      expect(await server.command("INFO", "server")).toMatch(new RegExp(`^process_id:${server.pid()}\\r?$`, "m"))
      expect(JSON.parse(await server.command("CONFIG", "GET", "save"))).toEqual(["save", ""])
      expect(JSON.parse(await server.command("CONFIG", "GET", "appendonly"))).toEqual(["appendonly", "no"])
      expect(JSON.parse(await server.command("CONFIG", "GET", "dir"))).toEqual(["dir", Fs.realpathSync(server.dir)])
      expect(Fs.readFileSync(server.logFile, "utf8")).toMatch(/Ready to accept connections/)
    } finally {
      await server.stop()
    }
  })

  it("decodes the replies the backend tests need", async () => {
    const server = await startTracked()
    try {
      // Bulk strings are decoded by byte length, multi-byte UTF-8 included.
      expect(await server.command("SET", "ü-key", "välue ✓\r\nline 2")).toBe("+OK")
      expect(await server.command("GET", "ü-key")).toBe("välue ✓\r\nline 2")
      expect(await server.command("INCR", "counter")).toBe(":1")
      expect(await server.command("DEBUG", "SLEEP", "0")).toBe("+OK")
      expect(await server.command("NO-SUCH-COMMAND")).toMatch(/^-ERR unknown command/)
      const [cursor, keys] = JSON.parse(await server.command("SCAN", "0", "COUNT", "100")) as [string, Array<string>]
      expect(cursor).toBe("0")
      expect(keys.toSorted()).toEqual(["counter", "ü-key"])
      // CLIENT LIST shows a raw connection; CLIENT KILL drops it.
      const raw = await connectRaw(server)
      const line = (await server.command("CLIENT", "LIST"))
        .split("\n")
        .find((entry) => entry.includes(` addr=127.0.0.1:${raw.socket.localPort} `))
      const id = line?.match(/^id=(\d+) /)?.[1]
      expect(id).toBeDefined()
      expect(await server.command("CLIENT", "KILL", "ID", id ?? "")).toBe(":1")
      await raw.closed
    } finally {
      await server.stop()
    }
  })

  it("passes extra arguments and listens on a requested port", async () => {
    const port = await freePort()
    const server = await startTracked({ port, args: ["--maxmemory", "10mb"] })
    try {
      expect(server.port).toBe(port)
      expect(JSON.parse(await server.command("CONFIG", "GET", "maxmemory"))).toEqual(["maxmemory", "10485760"])
    } finally {
      await server.stop()
    }
  })

  it("fails to start with the log tail when redis-server rejects its arguments", async () => {
    await expect(start({ args: ["--no-such-directive", "x"] })).rejects.toThrow(/Bad directive/)
  })

  it("fails to start on a port another server holds, instead of taking that server for its own", async () => {
    const server = await startTracked()
    try {
      await expect(start({ port: server.port })).rejects.toThrow(/exited before answering PING[\s\S]*in use/)
      expect(await server.command("PING")).toBe("+PONG")
    } finally {
      await server.stop()
    }
  })

  it("uses a free port other than 6379, different for two servers", async () => {
    const [a, b] = await Promise.all([startTracked(), startTracked()])
    try {
      expect(a.port).not.toBe(6379)
      expect(b.port).not.toBe(6379)
      expect(a.port).not.toBe(b.port)
      expect(await a.command("SET", "only-in-a", "1")).toBe("+OK")
      expect(await b.command("GET", "only-in-a")).toBe("$-1")
    } finally {
      await Promise.all([a.stop(), b.stop()])
    }
  })

  it("pause() holds replies until resume()", async () => {
    const server = await startTracked()
    try {
      expect(await server.command("SET", "key", "value")).toBe("+OK")
      server.pause()
      const pending = server.command("GET", "key")
      const outcome = pending.then(
        () => "reply",
        () => "error"
      )
      expect(await Promise.race([outcome, sleep(300).then(() => "no reply yet")])).toBe("no reply yet")
      server.resume()
      expect(await pending).toBe("value")
      expect(await server.command("PING")).toBe("+PONG")
    } finally {
      await server.stop()
    }
  })

  it("restart() keeps the port, loses the data and answers again", async () => {
    const server = await startTracked()
    try {
      const port = server.port
      const pid = server.pid()
      expect(await server.command("SET", "key", "value")).toBe("+OK")
      await server.restart()
      expect(server.port).toBe(port)
      expect(server.pid()).toBeTypeOf("number")
      expect(server.pid()).not.toBe(pid)
      expect(await server.command("PING")).toBe("+PONG")
      expect(await server.command("GET", "key")).toBe("$-1")
      expect(await server.command("DBSIZE")).toBe(":0")
      // After a crash too.
      await server.kill()
      await server.restart()
      expect(await server.command("PING")).toBe("+PONG")
    } finally {
      await server.stop()
    }
  })

  it("kill() makes commands fail with ECONNREFUSED", async () => {
    const server = await startTracked()
    try {
      const raw = await connectRaw(server)
      await server.kill()
      expect(server.pid()).toBeUndefined()
      await raw.closed
      await expect(server.command("PING")).rejects.toThrow(/ECONNREFUSED/)
      expect(() => server.pause()).toThrow(/not running/)
      await server.kill() // nothing to kill: no-op
      expect(Fs.existsSync(server.dir)).toBe(true) // kept for a restart
    } finally {
      await server.stop()
    }
    expect(Fs.existsSync(server.dir)).toBe(false)
  })

  it("stop() stops a paused server, removes the temporary directory and is idempotent", async () => {
    const server = await startTracked()
    try {
      expect(Fs.existsSync(server.dir)).toBe(true)
      server.pause()
      await server.stop()
      expect(server.pid()).toBeUndefined()
      expect(Fs.existsSync(server.dir)).toBe(false)
      await expect(server.command("PING")).rejects.toThrow(/ECONNREFUSED/)
      await server.stop() // a second call resolves too
      await expect(server.restart()).rejects.toThrow(/stopped/)
    } finally {
      await server.stop()
    }
  })

  it("startMany(3) starts three servers on distinct ports", async () => {
    const servers = await startMany(3)
    started.push(...servers)
    try {
      expect(servers).toHaveLength(3)
      expect(new Set(servers.map((server) => server.port)).size).toBe(3)
      for (const server of servers) {
        expect(server.port).not.toBe(6379)
        expect(await server.command("PING")).toBe("+PONG")
      }
    } finally {
      await Promise.all(servers.map((server) => server.stop()))
    }
  })
})
