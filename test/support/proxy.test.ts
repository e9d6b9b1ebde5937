/**
 * Tests of the test harness itself: the fault-injecting TCP proxy (test/support/TcpProxy.ts) against a local echo
 * server, and the server resolution helpers (test/support/servers.ts). Timing assertions are lower bounds only.
 */
import * as Net from "node:net"
import { performance } from "node:perf_hooks"
import { afterEach, describe, expect, it } from "vitest"
import { freePort, resolveServer } from "./servers.ts"
import * as TcpProxy from "./TcpProxy.ts"

/** A local echo server: echoes every chunk, and ends its side when the client ends. */
interface Echo {
  readonly port: number
  /** Sockets accepted so far. */
  readonly accepted: () => number
  /** Currently open sockets. */
  readonly open: () => number
  readonly close: () => Promise<void>
}

/** A client connection that records what it receives and how it closes. */
interface Client {
  readonly socket: Net.Socket
  readonly received: () => string
  readonly ended: () => boolean
  /** Undefined while open; whether the socket closed because of an error once closed. */
  readonly closed: () => { readonly hadError: boolean } | undefined
}

const cleanups: Array<() => Promise<void> | void> = []

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).toReversed()) await cleanup()
})

const startEcho = async (): Promise<Echo> => {
  const sockets = new Set<Net.Socket>()
  let accepted = 0
  const server = Net.createServer({ allowHalfOpen: true }, (socket) => {
    accepted++
    sockets.add(socket)
    socket.on("error", ignore)
    socket.on("data", (chunk) => socket.write(chunk))
    socket.on("end", () => socket.end())
    socket.on("close", () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const address = server.address()
  if (address === null || typeof address === "string") throw new Error("no address")
  const echo: Echo = {
    port: address.port,
    accepted: () => accepted,
    open: () => sockets.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
  cleanups.push(echo.close)
  return echo
}

const startProxy = async (targetPort: number): Promise<TcpProxy.TcpProxy> => {
  const proxy = await TcpProxy.start({ targetHost: "127.0.0.1", targetPort })
  cleanups.push(proxy.close)
  return proxy
}

const connect = (port: number): Promise<Client> =>
  new Promise((resolve, reject) => {
    let received = ""
    let ended = false
    let closed: { hadError: boolean } | undefined
    const socket = Net.connect({ host: "127.0.0.1", port, allowHalfOpen: true })
    socket.setNoDelay(true)
    socket.setEncoding("utf8")
    socket.on("data", (chunk: string) => (received += chunk))
    socket.on("end", () => (ended = true))
    socket.on("close", (hadError) => (closed = { hadError }))
    socket.once("error", reject)
    socket.once("connect", () => {
      socket.off("error", reject)
      socket.on("error", ignore)
      resolve({ socket, received: () => received, ended: () => ended, closed: () => closed })
    })
    cleanups.push(() => void socket.destroy())
  })

const ignore = (): void => {}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `condition` until it holds; fails after `timeoutMs` with `what` in the message. */
const waitFor = async (what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> => {
  const deadline = performance.now() + timeoutMs
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

/** Writes `text` and waits until the client has received `expected` in total. */
const roundTrip = async (client: Client, text: string, expected: string): Promise<void> => {
  client.socket.write(text)
  await waitFor(`echo ${JSON.stringify(expected)}`, () => client.received() === expected)
}

describe("TcpProxy", () => {
  it("forwards both directions in pass mode", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    expect(proxy.host).toBe("127.0.0.1")
    expect(proxy.currentMode()).toBe("pass")
    const client = await connect(proxy.port)
    await roundTrip(client, "hello", "hello")
    await roundTrip(client, " world", "hello world")
    expect(echo.accepted()).toBe(1)
  })

  it("delays each chunk by at least the configured delay, in order", async () => {
    const delay = 100
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    const client = await connect(proxy.port)
    await roundTrip(client, "warm-up;", "warm-up;")
    proxy.mode({ delay })
    const started = performance.now()
    client.socket.write("a")
    await sleep(10)
    client.socket.write("b")
    await sleep(10)
    client.socket.write("c")
    await waitFor("the first delayed echo", () => client.received().length > "warm-up;".length)
    // The echo crosses the proxy twice (there and back), each way delayed by `delay`.
    expect(performance.now() - started).toBeGreaterThanOrEqual(2 * delay - 5)
    await waitFor("all delayed echoes", () => client.received() === "warm-up;abc")
    proxy.mode("pass")
    await roundTrip(client, "d", "warm-up;abcd")
  })

  it("rejects an invalid delay", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    expect(() => proxy.mode({ delay: -1 })).toThrow(RangeError)
    expect(() => proxy.mode({ delay: Number.NaN })).toThrow(RangeError)
    expect(proxy.currentMode()).toBe("pass")
  })

  it("forwards nothing in blackhole mode and drops that data, then forwards again in pass mode", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    const client = await connect(proxy.port)
    await roundTrip(client, "before;", "before;")
    proxy.mode("blackhole")
    client.socket.write("lost;")
    await sleep(200)
    expect(client.received()).toBe("before;")
    expect(client.closed()).toBeUndefined()
    proxy.mode("pass")
    await roundTrip(client, "after;", "before;after;")
    expect(proxy.connections()).toBe(1)
  })

  it("accepts new connections in blackhole mode without connecting them until pass", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    proxy.mode("blackhole")
    const client = await connect(proxy.port)
    await waitFor("the proxy to accept", () => proxy.connections() === 1)
    client.socket.write("lost;")
    await sleep(200)
    expect(client.received()).toBe("")
    expect(echo.accepted()).toBe(0)
    proxy.mode("pass")
    await roundTrip(client, "after;", "after;")
    expect(echo.accepted()).toBe(1)
  })

  it("holds back end-of-stream in blackhole mode and forwards it afterwards", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    const client = await connect(proxy.port)
    await roundTrip(client, "x", "x")
    proxy.mode("blackhole")
    client.socket.end()
    await sleep(100)
    expect(echo.open()).toBe(1)
    proxy.mode("pass")
    await waitFor("the client to close", () => client.closed() !== undefined)
    expect(client.ended()).toBe(true)
    await waitFor("the echo server's socket to close", () => echo.open() === 0)
  })

  it("ends the other side when one side ends", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    const client = await connect(proxy.port)
    await roundTrip(client, "bye", "bye")
    client.socket.end()
    await waitFor("the client to close", () => client.closed() !== undefined)
    expect(client.ended()).toBe(true)
    expect(client.closed()).toEqual({ hadError: false })
    await waitFor("the proxy to forget the connection", () => proxy.connections() === 0)
    await waitFor("the echo server's socket to close", () => echo.open() === 0)
  })

  it("closes the client when the target refuses the connection", async () => {
    const proxy = await startProxy(await freePort())
    const client = await connect(proxy.port)
    await waitFor("the client to close", () => client.closed() !== undefined)
    expect(client.received()).toBe("")
    await waitFor("the proxy to forget the connection", () => proxy.connections() === 0)
    expect(proxy.connections()).toBe(0)
  })

  it("reset() destroys all connections on both sides", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    const first = await connect(proxy.port)
    const second = await connect(proxy.port)
    await roundTrip(first, "1", "1")
    await roundTrip(second, "2", "2")
    expect(echo.open()).toBe(2)
    proxy.reset()
    await waitFor("the clients to close", () => first.closed() !== undefined && second.closed() !== undefined)
    await waitFor("the echo server's sockets to close", () => echo.open() === 0)
    expect(proxy.connections()).toBe(0)
    // The proxy keeps listening: a new connection works.
    const third = await connect(proxy.port)
    await roundTrip(third, "3", "3")
  })

  it("counts open client connections", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    expect(proxy.connections()).toBe(0)
    const first = await connect(proxy.port)
    const second = await connect(proxy.port)
    await waitFor("two connections", () => proxy.connections() === 2)
    first.socket.end()
    await waitFor("one connection", () => proxy.connections() === 1)
    second.socket.destroy()
    await waitFor("no connection", () => proxy.connections() === 0)
  })

  it("close() closes the listener and every connection", async () => {
    const echo = await startEcho()
    const proxy = await startProxy(echo.port)
    const first = await connect(proxy.port)
    const second = await connect(proxy.port)
    await roundTrip(first, "1", "1")
    await roundTrip(second, "2", "2")
    await proxy.close()
    // The proxy closes its sockets gracefully (FIN); the half-open clients see the end of the stream.
    await waitFor("the clients to see the end", () => first.ended() && second.ended())
    await waitFor("the echo server's sockets to close", () => echo.open() === 0)
    expect(proxy.connections()).toBe(0)
    await expect(connect(proxy.port)).rejects.toThrow(/ECONNREFUSED/)
    // Closing twice is fine.
    await proxy.close()
  })
})

describe("servers", () => {
  it("freePort returns a port that can be listened on", async () => {
    const port = await freePort()
    expect(Number.isInteger(port)).toBe(true)
    expect(port).toBeGreaterThan(0)
    expect(port).toBeLessThan(65_536)
    const server = Net.createServer()
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject)
      server.listen(port, "127.0.0.1", resolve)
    })
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })

  it("resolveServer returns the env variable's value without probing", async () => {
    const echo = await startEcho()
    const envVar = "LOCK_TEST_SELFTEST_URL"
    process.env[envVar] = "selftest://from-env"
    cleanups.push(() => void delete process.env[envVar])
    let dockerAsked = false
    const url = await resolveServer({
      name: "Selftest",
      envVar,
      host: "127.0.0.1",
      port: echo.port,
      url: "selftest://local",
      dockerAvailable: async () => (dockerAsked = true)
    })
    expect(url).toBe("selftest://from-env")
    expect(dockerAsked).toBe(false)
    await sleep(50)
    expect(echo.accepted()).toBe(0)
  })

  it("resolveServer returns the local URL when a server answers on the port", async () => {
    const echo = await startEcho()
    const url = await resolveServer({
      name: "Selftest",
      envVar: "LOCK_TEST_SELFTEST_UNSET_URL",
      host: "127.0.0.1",
      port: echo.port,
      url: "selftest://local",
      dockerAvailable: async () => false
    })
    expect(url).toBe("selftest://local")
  })

  it("resolveServer rejects with instructions when nothing answers and Docker is absent", async () => {
    const port = await freePort()
    const envVar = "LOCK_TEST_SELFTEST_UNSET_URL"
    const resolved = resolveServer({
      name: "Selftest",
      envVar,
      host: "127.0.0.1",
      port,
      url: `selftest://127.0.0.1:${port}`,
      localHint: "e.g. `selftest-server`",
      container: { image: "selftest:1", port: 1, url: (host, mapped) => `selftest://${host}:${mapped}` },
      dockerAvailable: async () => false
    })
    await expect(resolved).rejects.toThrow(`nothing answers on 127.0.0.1:${port} and no Docker daemon answers`)
    await expect(resolved).rejects.toThrow(`set ${envVar} to its URL, e.g. ${envVar}=selftest://127.0.0.1:${port}`)
    await expect(resolved).rejects.toThrow(`run Selftest on 127.0.0.1:${port} e.g. \`selftest-server\``)
    await expect(resolved).rejects.toThrow("start a Docker daemon; the tests then start selftest:1 with testcontainers")
  })
})
