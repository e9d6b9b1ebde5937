/**
 * Private `redis-server` processes for the Redis backend tests, which need servers they can kill, pause and restart
 * without touching a shared one. Each server:
 *
 *   - runs `redis-server` (found on PATH) in the foreground, listening on 127.0.0.1 and a free port (never 6379
 *     unless asked for), with no persistence (`--save "" --appendonly no`), so a restart loses all data;
 *   - works in its own temporary directory (under `os.tmpdir()`), removed by `stop()`, holding the log file
 *     `redis.log`: the server's log, and its stdout and stderr (where it reports bad arguments before logging starts);
 *   - allows `DEBUG` from local connections (`--enable-debug-command local`), for `DEBUG SLEEP`;
 *   - is ready once it answers `PING` with `+PONG` and its `INFO server` reports the started process's id (so a
 *     server that some other process started on the same port is never taken for it).
 *
 * `command` speaks RESP2 directly over `node:net`, enough for tests to inspect and poke the server; the lock backend
 * under test uses its own client. Servers still running when the test process exits are killed with SIGKILL, and
 * their directories removed, by a `process.once("exit")` hook. The servers are children in the test process's group,
 * so a Ctrl-C in the terminal reaches them too; a test process killed with SIGKILL leaves them running.
 */
import * as Net from "node:net"
import * as Path from "node:path"
import {
  holdPort,
  ignore,
  killRun,
  logTail,
  makeTempDir,
  releasePort,
  removeDir,
  reservePort,
  type Run,
  signal,
  sleep,
  spawnRun,
  StartError,
  terminateRun
} from "./processes.ts"

/** How to start a server. */
export interface StartOptions {
  /** The port to listen on. Default: a free port of 127.0.0.1 (another one is tried if it is taken meanwhile). */
  readonly port?: number
  /**
   * More `redis-server` arguments, appended after the defaults, e.g. `["--maxmemory", "10mb"]`. They must not change
   * the port, bind address, directory or log file, nor require a password (readiness is checked without `AUTH`).
   */
  readonly args?: ReadonlyArray<string>
}

/** A private `redis-server` process. */
export interface RedisServer {
  /** Always `127.0.0.1`. */
  readonly host: string
  /** The port, the same across restarts. */
  readonly port: number
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string
  /** The temporary directory the server runs in; `stop()` removes it. */
  readonly dir: string
  /** The log file in `dir`: the server's log, stdout and stderr, across restarts. */
  readonly logFile: string
  /** The process id of the current process, or undefined when it is not running (killed, stopped, crashed). */
  readonly pid: () => number | undefined
  /**
   * Sends one command on a fresh connection and returns its reply (see `command` below for the reply types). Waits
   * as long as the server takes: for a paused server, until it is resumed, killed or stopped. Rejects when the
   * connection fails (e.g. `ECONNREFUSED` once the server is killed) or closes before a complete reply.
   */
  readonly command: (...args: ReadonlyArray<string>) => Promise<string>
  /** Suspends the process with SIGSTOP: it keeps its port and connections (the kernel still accepts new ones). */
  readonly pause: () => void
  /** Continues a paused process with SIGCONT; it then answers what was sent meanwhile. */
  readonly resume: () => void
  /** Kills the process with SIGKILL (a crash) and waits for it to exit. Does nothing when it is not running. */
  readonly kill: () => Promise<void>
  /**
   * Stops the process if it runs (SIGTERM, then SIGKILL after a grace period), then starts a new one on the same
   * port with the same arguments and waits until it answers `PING`. All data is lost. For a crash-and-recover,
   * call `kill()` first. Rejects after `stop()`.
   */
  readonly restart: () => Promise<void>
  /**
   * Stops the process for good: SIGTERM (and SIGCONT, in case it is paused), SIGKILL when it has not exited after
   * a grace period of 5 s, then removes `dir`. Idempotent: later calls return the same promise.
   */
  readonly stop: () => Promise<void>
}

/** How long `start` and `restart` wait for the server to answer `PING`, in milliseconds. */
export const readyTimeoutMs = 10_000

/** How long `stop` and `restart` wait after SIGTERM before sending SIGKILL, in milliseconds. */
export const stopGraceMs = 5_000

/**
 * Starts a private `redis-server` (see the module comment) and resolves once it answers `PING`. Rejects, with the
 * tail of its log, when it exits early or does not answer within `readyTimeoutMs`; nothing is left behind then.
 */
export const start = async (options: StartOptions = {}): Promise<RedisServer> => {
  const args = [...(options.args ?? [])]
  const dir = await makeTempDir("effect-locks-redis-")
  const logFile = Path.join(dir, "redis.log")
  try {
    const { port, run } = await launch(dir, logFile, options.port, args)
    return makeServer(dir, logFile, port, args, run)
  } catch (error) {
    await removeDir(dir).catch(ignore) // else the exit hook retries
    throw error
  }
}

/** Starts `n` servers in parallel on distinct ports; when one fails to start, stops the others and rejects. */
export const startMany = async (
  n: number,
  options: Omit<StartOptions, "port"> = {}
): Promise<ReadonlyArray<RedisServer>> => {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`n must be an integer >= 0, got ${n}`)
  const results = await Promise.allSettled(Array.from({ length: n }, () => start(options)))
  const servers: Array<RedisServer> = []
  const errors: Array<unknown> = []
  for (const result of results) {
    if (result.status === "fulfilled") servers.push(result.value)
    else errors.push(result.reason)
  }
  if (errors.length > 0) {
    await Promise.all(servers.map((server) => server.stop()))
    throw new Error(`${errors.length} of ${n} redis servers failed to start: ${String(errors[0])}`, {
      cause: errors[0]
    })
  }
  return servers
}

/**
 * Sends one command to `host:port` on a fresh connection and returns its reply as a string. RESP2 replies only:
 *
 *   - simple string, error and integer: the line as sent, e.g. `+OK`, `-ERR unknown command ...`, `:1`
 *     (errors are returned, not thrown);
 *   - bulk string: its content, decoded as UTF-8 (`GET`, `CLIENT LIST`, `INFO`); the null bulk string: `$-1`;
 *   - array: a JSON array of its elements, each rendered as above and nested arrays as nested JSON arrays, e.g.
 *     `["0",["key"]]` for `SCAN 0` (`JSON.parse` it); the null array: `*-1`.
 *
 * A bulk string whose content looks like a simple reply (e.g. the value `+OK`) cannot be told from one. With
 * `timeoutMs`, rejects when no complete reply arrived by then.
 */
export const command = (host: string, port: number, args: ReadonlyArray<string>, timeoutMs?: number): Promise<string> =>
  new Promise((resolve, reject) => {
    if (args.length === 0) {
      reject(new Error("command needs at least the command name"))
      return
    }
    const what = `redis ${args[0]} to ${host}:${port}`
    const socket = Net.connect({ host, port })
    let buffer: Buffer = Buffer.alloc(0)
    let settled = false
    let timer: NodeJS.Timeout | undefined
    const finish = (error: Error | undefined, reply?: string): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.removeAllListeners("data")
      socket.destroy()
      if (error === undefined && reply !== undefined) resolve(reply)
      else reject(error ?? new Error(`${what}: no reply`))
    }
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => finish(new Error(`${what}: no reply within ${timeoutMs} ms`)), timeoutMs)
    }
    socket.setNoDelay(true)
    socket.on("error", (error) => finish(new Error(`${what} failed: ${error.message}`, { cause: error })))
    socket.on("close", () => finish(new Error(`${what}: connection closed before a complete reply`)))
    socket.on("data", (chunk: Buffer) => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])
      try {
        const parsed = parseReply(buffer, 0)
        if (parsed !== undefined) finish(undefined, render(parsed.value))
      } catch (error) {
        finish(new Error(`${what}: ${error instanceof Error ? error.message : String(error)}`, { cause: error }))
      }
    })
    socket.write(encodeCommand(args))
  })

const host = "127.0.0.1"

/**
 * Starts a process on `fixedPort`, or on a reserved free port (trying another one, up to 5 times, when the port
 * turns out to be taken), and waits until it is ready. On success the port stays reserved.
 */
const launch = async (
  dir: string,
  logFile: string,
  fixedPort: number | undefined,
  args: ReadonlyArray<string>
): Promise<{ readonly port: number; readonly run: Run }> => {
  for (let attempt = 1; ; attempt++) {
    const port = fixedPort ?? (await reservePort([6379], "redis-server"))
    try {
      const run = await spawnServer(dir, logFile, port, args)
      await waitReady(run, port, logFile)
      holdPort(port)
      return { port, run }
    } catch (error) {
      // Only release what this call reserved: a restart keeps its server's port.
      if (fixedPort === undefined) releasePort(port)
      if (fixedPort === undefined && attempt < 5 && error instanceof StartError && error.addressInUse) continue
      throw error
    }
  }
}

const spawnServer = (dir: string, logFile: string, port: number, args: ReadonlyArray<string>): Promise<Run> => {
  const argv = [
    "--port",
    String(port),
    "--bind",
    host,
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
    "--daemonize",
    "no",
    "--logfile",
    logFile,
    "--enable-debug-command",
    "local",
    ...args
  ]
  return spawnRun({ command: "redis-server", args: argv, cwd: dir, logFile })
}

/** Polls `PING` until the run's own process answers, it exits, or `readyTimeoutMs` passes. */
const waitReady = async (run: Run, port: number, logFile: string): Promise<void> => {
  const deadline = Date.now() + readyTimeoutMs
  const fail = async (reason: string, addressInUse = false): Promise<never> => {
    await killRun(run)
    const log = await logTail(logFile, run.logOffset)
    throw new StartError(`redis-server on ${host}:${port} ${reason}; log tail:\n${log}`, addressInUse)
  }
  let lastProbe = "not probed yet"
  for (;;) {
    if (run.exit !== undefined) {
      const exit = run.exit
      if ("spawnError" in exit) {
        return fail(`could not be spawned (is redis-server installed and on PATH?): ${exit.spawnError.message}`)
      }
      const addressInUse = /address already in use/i.test(await logTail(logFile, run.logOffset))
      return fail(`exited before answering PING (code ${exit.code}, signal ${exit.signal})`, addressInUse)
    }
    const left = deadline - Date.now()
    if (left <= 0) return fail(`did not answer PING within ${readyTimeoutMs} ms (last probe: ${lastProbe})`)
    const notReady = await probe(run, port, Math.min(left, 1_000))
    if (notReady === undefined) return
    lastProbe = notReady
    await Promise.race([sleep(25), run.exited])
  }
}

/** Undefined when the server on `port` answers `PING` and is the run's own process, else why not. */
const probe = async (run: Run, port: number, timeoutMs: number): Promise<string | undefined> => {
  try {
    const pong = await command(host, port, ["PING"], timeoutMs)
    if (pong !== "+PONG") return `PING answered ${JSON.stringify(pong)}`
    const info = await command(host, port, ["INFO", "server"], timeoutMs)
    const processId = /^process_id:(\d+)\r?$/m.exec(info)?.[1]
    return processId === String(run.child.pid) ? undefined : `the server answering is process ${processId}`
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

const makeServer = (
  dir: string,
  logFile: string,
  port: number,
  args: ReadonlyArray<string>,
  first: Run
): RedisServer => {
  let run: Run | undefined = first
  let stopped = false
  let stopping: Promise<void> | undefined
  // kill, restart and stop run one at a time, in call order.
  let queue: Promise<void> = Promise.resolve()
  const serial = (op: () => Promise<void>): Promise<void> => {
    const next = queue.then(op)
    queue = next.catch(ignore)
    return next
  }
  const running = (what: string): Run => {
    if (run === undefined || run.exit !== undefined) {
      throw new Error(
        `redis-server on ${host}:${port} is not running (${stopped ? "stopped" : "killed or exited"}): cannot ${what}`
      )
    }
    return run
  }
  return {
    host,
    port,
    url: `redis://${host}:${port}`,
    dir,
    logFile,
    pid: () => (run === undefined || run.exit !== undefined ? undefined : run.child.pid),
    command: (...commandArgs) => command(host, port, commandArgs),
    pause: () => {
      if (!signal(running("pause"), "SIGSTOP")) throw new Error(`could not pause redis-server on ${host}:${port}`)
    },
    resume: () => {
      if (!signal(running("resume"), "SIGCONT")) throw new Error(`could not resume redis-server on ${host}:${port}`)
    },
    kill: () =>
      serial(async () => {
        if (run !== undefined) await killRun(run)
      }),
    restart: () =>
      serial(async () => {
        if (stopped) throw new Error(`redis-server on ${host}:${port} was stopped: cannot restart`)
        if (run !== undefined) await terminateRun(run, stopGraceMs)
        run = undefined
        run = (await launch(dir, logFile, port, args)).run
      }),
    stop: () => {
      stopped = true
      return (stopping ??= serial(async () => {
        if (run !== undefined) await terminateRun(run, stopGraceMs)
        releasePort(port)
        await removeDir(dir)
      }))
    }
  }
}

const encodeCommand = (args: ReadonlyArray<string>): Buffer => {
  const parts: Array<Buffer> = [Buffer.from(`*${args.length}\r\n`)]
  for (const arg of args) {
    const bytes = Buffer.from(arg, "utf8")
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from("\r\n"))
  }
  return Buffer.concat(parts)
}

/** A parsed reply: the rendering of a non-array reply (see `command`), or an array of replies. */
type Reply = string | ReadonlyArray<Reply>

const render = (reply: Reply): string => (typeof reply === "string" ? reply : JSON.stringify(reply))

const parseLength = (line: string): number => {
  if (!/^[$*]-?\d+$/.test(line)) throw new Error(`malformed RESP length line ${JSON.stringify(line)}`)
  return Number(line.slice(1))
}

/** Parses one reply at `offset`: the reply and where the next one starts, or undefined when more bytes are needed. */
const parseReply = (buffer: Buffer, offset: number): { readonly value: Reply; readonly next: number } | undefined => {
  const eol = buffer.indexOf("\r\n", offset)
  if (eol < 0) return undefined
  const line = buffer.toString("utf8", offset, eol)
  const afterLine = eol + 2
  switch (line[0]) {
    case "+":
    case "-":
    case ":":
      return { value: line, next: afterLine }
    case "$": {
      const length = parseLength(line)
      if (length < 0) return { value: "$-1", next: afterLine }
      if (buffer.length < afterLine + length + 2) return undefined
      return { value: buffer.toString("utf8", afterLine, afterLine + length), next: afterLine + length + 2 }
    }
    case "*": {
      const count = parseLength(line)
      if (count < 0) return { value: "*-1", next: afterLine }
      const items: Array<Reply> = []
      let next = afterLine
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, next)
        if (item === undefined) return undefined
        items.push(item.value)
        next = item.next
      }
      return { value: items, next }
    }
    default:
      throw new Error(`unsupported RESP reply type in ${JSON.stringify(line.slice(0, 40))} (RESP2 only)`)
  }
}
