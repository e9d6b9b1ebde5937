/**
 * A small TCP proxy for fault injection between a client and a server: the client connects to the proxy, the proxy
 * connects to the target, and the test switches the mode at any time:
 *
 *   - `"pass"`: forward both directions;
 *   - `{ delay: n }`: forward each chunk `n` ms after it arrived, in order (a slow link);
 *   - `"blackhole"`: accept and read data from both sides but forward nothing, and keep every socket open (a network
 *     partition); new connections are accepted but not connected to the target until the mode leaves blackhole.
 *     Data that arrives during blackhole is dropped for good: switching back to pass or delay forwards only later
 *     data (so the byte streams have a hole; protocol clients usually fail on the next reply, as after a real loss
 *     of the connection). End-of-stream (FIN) and resets are held back, not dropped, and forwarded after it.
 *
 * `reset()` kills every current connection on both sides with a TCP RST where the platform allows. When one side
 * ends or closes, the proxy ends (or, after an error, resets) the other side once earlier data has been forwarded.
 */
import * as Net from "node:net"
import { performance } from "node:perf_hooks"

/** What the proxy does with the traffic. */
export type ProxyMode = "pass" | "blackhole" | { readonly delay: number }

/** A running proxy. */
export interface TcpProxy {
  /** The host the proxy listens on. */
  readonly host: string
  /** The port the proxy listens on. */
  readonly port: number
  /** Switches the mode for current and future connections. */
  readonly mode: (mode: ProxyMode) => void
  /** The current mode. */
  readonly currentMode: () => ProxyMode
  /** Destroys all current connections on both sides at once, with a TCP RST where possible. */
  readonly reset: () => void
  /** The number of open client connections. */
  readonly connections: () => number
  /** Stops listening and destroys all connections. */
  readonly close: () => Promise<void>
}

/** Where the proxy forwards to and where it listens. */
export interface ProxyOptions {
  readonly targetHost: string
  readonly targetPort: number
  /** Default `127.0.0.1`. */
  readonly listenHost?: string
}

/** Starts a proxy to `targetHost:targetPort`, listening on a free port of `listenHost` in mode `"pass"`. */
export const start = async (options: ProxyOptions): Promise<TcpProxy> => {
  const host = options.listenHost ?? "127.0.0.1"
  const state: ProxyState = {
    mode: "pass",
    targetHost: options.targetHost,
    targetPort: options.targetPort,
    links: new Set()
  }
  const server = Net.createServer({ allowHalfOpen: true }, (client) => accept(state, client))
  server.on("error", ignore)
  const port = await listen(server, host)
  let closing: Promise<void> | undefined
  return {
    host,
    port,
    mode: (mode) => setMode(state, mode),
    currentMode: () => state.mode,
    reset: () => {
      for (const link of state.links) resetLink(link)
    },
    connections: () => {
      let open = 0
      for (const link of state.links) if (!link.clientClosed) open++
      return open
    },
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const link of state.links) destroyLink(link)
      }))
  }
}

/** One queued item of a direction: a chunk, end-of-stream, or a reset. */
type Item =
  | { readonly kind: "data"; readonly due: number; readonly chunk: Buffer }
  | { readonly kind: "end" | "reset"; readonly due: number }

/** One direction of a link, with its queue of items waiting to be forwarded. */
interface Direction {
  readonly queue: Array<Item>
  lastDue: number
  timer: NodeJS.Timeout | undefined
  /** Whether end or reset has been queued (at most one per direction). */
  finished: boolean
}

/** A client connection and its connection to the target. */
interface Link {
  readonly state: ProxyState
  readonly client: Net.Socket
  upstream: Net.Socket | undefined
  /** Client to target. */
  readonly up: Direction
  /** Target to client. */
  readonly down: Direction
  clientClosed: boolean
  upstreamClosed: boolean
}

interface ProxyState {
  mode: ProxyMode
  readonly targetHost: string
  readonly targetPort: number
  readonly links: Set<Link>
}

const ignore = (): void => {}

const listen = (server: Net.Server, host: string): Promise<number> =>
  new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, host, () => {
      server.off("error", reject)
      const address = server.address()
      if (address === null || typeof address === "string") reject(new Error(`unexpected address ${String(address)}`))
      else resolve(address.port)
    })
  })

const newDirection = (): Direction => ({ queue: [], lastDue: 0, timer: undefined, finished: false })

const setMode = (state: ProxyState, mode: ProxyMode): void => {
  if (typeof mode === "object" && !(Number.isFinite(mode.delay) && mode.delay >= 0)) {
    throw new RangeError(`delay must be a finite number >= 0, got ${mode.delay}`)
  }
  state.mode = typeof mode === "object" ? { delay: mode.delay } : mode
  for (const link of state.links) {
    if (mode !== "blackhole") connectUpstream(link)
    // Resume reading (a paused socket would stop blackhole from draining it) and forward or drop what is queued.
    link.client.resume()
    link.upstream?.resume()
    pump(link, link.up)
    pump(link, link.down)
  }
}

const accept = (state: ProxyState, client: Net.Socket): void => {
  const link: Link = {
    state,
    client,
    upstream: undefined,
    up: newDirection(),
    down: newDirection(),
    clientClosed: false,
    upstreamClosed: false
  }
  state.links.add(link)
  client.setNoDelay(true)
  client.on("error", ignore)
  client.on("data", (chunk: Buffer) => enqueueData(link, link.up, chunk))
  client.on("end", () => enqueueFinish(link, link.up, "end"))
  client.on("close", (hadError) => {
    link.clientClosed = true
    enqueueFinish(link, link.up, hadError ? "reset" : "end")
    forget(link)
  })
  if (state.mode !== "blackhole") connectUpstream(link)
}

/** Connects the link to the target, unless it is already connected or the client is gone. */
const connectUpstream = (link: Link): void => {
  if (link.upstream !== undefined || link.clientClosed) return
  const upstream = Net.connect({ host: link.state.targetHost, port: link.state.targetPort, allowHalfOpen: true })
  link.upstream = upstream
  upstream.setNoDelay(true)
  upstream.on("error", ignore)
  upstream.on("data", (chunk: Buffer) => enqueueData(link, link.down, chunk))
  upstream.on("end", () => enqueueFinish(link, link.down, "end"))
  upstream.on("close", (hadError) => {
    link.upstreamClosed = true
    enqueueFinish(link, link.down, hadError ? "reset" : "end")
    forget(link)
  })
  pump(link, link.up)
}

const forget = (link: Link): void => {
  if (link.clientClosed && (link.upstream === undefined || link.upstreamClosed)) {
    clearTimeout(link.up.timer)
    clearTimeout(link.down.timer)
    link.state.links.delete(link)
  }
}

const delayOf = (mode: ProxyMode): number => (typeof mode === "object" ? mode.delay : 0)

const enqueueData = (link: Link, direction: Direction, chunk: Buffer): void => {
  if (link.state.mode === "blackhole") return
  const due = Math.max(performance.now() + delayOf(link.state.mode), direction.lastDue)
  direction.lastDue = due
  direction.queue.push({ kind: "data", due, chunk })
  pump(link, direction)
}

const enqueueFinish = (link: Link, direction: Direction, kind: "end" | "reset"): void => {
  if (direction.finished) return
  direction.finished = true
  const due = Math.max(performance.now() + delayOf(link.state.mode), direction.lastDue)
  direction.lastDue = due
  direction.queue.push({ kind, due })
  pump(link, direction)
}

/** Forwards the items of `direction` that are due, and schedules the rest (drops data in blackhole mode). */
const pump = (link: Link, direction: Direction): void => {
  clearTimeout(direction.timer)
  direction.timer = undefined
  const source = direction === link.up ? link.client : link.upstream
  const target = direction === link.up ? link.upstream : link.client
  if (link.state.mode === "blackhole") {
    // Drop the data, hold back end and reset until the mode changes.
    const held = direction.queue.filter((item) => item.kind !== "data")
    direction.queue.splice(0, direction.queue.length, ...held)
    direction.lastDue = held.reduce((last, item) => Math.max(last, item.due), 0)
    return
  }
  if (target === undefined) return // not connected yet: connectUpstream pumps again
  const now = performance.now()
  let head = direction.queue[0]
  while (head !== undefined) {
    if (head.due > now) {
      direction.timer = setTimeout(() => pump(link, direction), Math.max(1, Math.ceil(head.due - now)))
      return
    }
    direction.queue.shift()
    forward(head, source, target)
    head = direction.queue[0]
  }
}

const forward = (item: Item, source: Net.Socket | undefined, target: Net.Socket): void => {
  if (target.destroyed) return
  switch (item.kind) {
    case "data":
      if (target.writable && !target.write(item.chunk) && source !== undefined && !source.destroyed) {
        // Back-pressure: stop reading the source until the target drains.
        source.pause()
        target.once("drain", () => source.resume())
      }
      return
    case "end":
      target.end()
      return
    case "reset":
      hardReset(target)
      return
  }
}

/** Destroys a socket with a TCP RST where possible (`resetAndDestroy`, Node >= 18.3), else plainly. */
const hardReset = (socket: Net.Socket): void => {
  if (socket.destroyed) return
  // While connecting, resetAndDestroy would wait for the connection; there is nothing to reset yet.
  if (socket.connecting) {
    socket.destroy()
    return
  }
  try {
    socket.resetAndDestroy()
  } catch {
    socket.destroy()
  }
}

const resetLink = (link: Link): void => {
  link.up.queue.length = 0
  link.down.queue.length = 0
  hardReset(link.client)
  if (link.upstream !== undefined) hardReset(link.upstream)
}

const destroyLink = (link: Link): void => {
  link.up.queue.length = 0
  link.down.queue.length = 0
  clearTimeout(link.up.timer)
  clearTimeout(link.down.timer)
  link.client.destroy()
  link.upstream?.destroy()
}
