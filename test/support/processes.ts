/**
 * Server processes for the test harnesses (`RedisServer.ts`, `EtcdServer.ts`): spawning with output to a log
 * file, stopping and killing, temporary directories, reserved ports, and a synchronous `process.once("exit")` hook
 * that SIGKILLs children still running and removes directories not yet removed.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Fsp from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import { freePort } from "./servers.ts"

/** One server process. */
export interface Run {
  readonly child: ChildProcess
  /** Resolves when the process has exited (or could not be spawned); never rejects. */
  readonly exited: Promise<Exit>
  /** Set once the process has exited. */
  exit: Exit | undefined
  /** Where this run's output starts in the log file. */
  readonly logOffset: number
}

/** How a process ended. */
export type Exit =
  { readonly code: number | null; readonly signal: NodeJS.Signals | null } | { readonly spawnError: Error }

/** A process failed to start: exited early, could not be spawned, or was not ready in time. */
export class StartError extends Error {
  /** Whether a port was taken (other ports may be tried). */
  readonly addressInUse: boolean
  constructor(message: string, addressInUse: boolean) {
    super(message)
    this.addressInUse = addressInUse
  }
}

/** Running children, killed by the exit hook. */
const liveChildren = new Set<ChildProcess>()
/** Temporary directories not yet removed, removed by the exit hook. */
const tempDirs = new Set<string>()
/** Ports of this process's servers (until released): `freePort` answers are checked against them. */
const reservedPorts = new Set<number>()
let exitHookInstalled = false

/** Does nothing: for promises whose failure is handled elsewhere. */
export const ignore = (): void => {}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** An error's message, or the value as a string. */
export const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error))

const installExitHook = (): void => {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once("exit", () => {
    for (const child of liveChildren) {
      try {
        child.kill("SIGKILL")
      } catch {
        // Exiting anyway: nothing more to do for this child.
      }
    }
    for (const dir of tempDirs) {
      try {
        Fs.rmSync(dir, { recursive: true, force: true })
      } catch {
        // Best effort: the directory is under os.tmpdir().
      }
    }
  })
}

/** A new directory under `os.tmpdir()`, removed by `removeDir` or at the latest when the test process exits. */
export const makeTempDir = async (prefix: string): Promise<string> => {
  installExitHook()
  const dir = await Fsp.mkdtemp(Path.join(Os.tmpdir(), prefix))
  tempDirs.add(dir)
  return dir
}

/** Removes a directory made by `makeTempDir`. */
export const removeDir = async (dir: string): Promise<void> => {
  await Fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 })
  tempDirs.delete(dir)
}

/** A free port, none of `avoid` and not reserved by another server of this process, reserved until released. */
export const reservePort = async (avoid: ReadonlyArray<number>, label: string): Promise<number> => {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freePort()
    if (!avoid.includes(port) && !reservedPorts.has(port)) {
      reservedPorts.add(port)
      return port
    }
  }
  throw new Error(`could not find a free port for ${label}`)
}

/** Marks a port as used by a server of this process. */
export const holdPort = (port: number): void => {
  reservedPorts.add(port)
}

/** Frees a port reserved by `reservePort` or `holdPort`. */
export const releasePort = (port: number): void => {
  reservedPorts.delete(port)
}

/**
 * Spawns `command` with its stdout and stderr appended to `logFile`. A process left running does not keep the test
 * process alive; the exit hook kills it.
 */
export const spawnRun = async (options: {
  readonly command: string
  readonly args: ReadonlyArray<string>
  readonly cwd: string
  readonly logFile: string
  readonly env?: NodeJS.ProcessEnv
}): Promise<Run> => {
  installExitHook()
  const log = await Fsp.open(options.logFile, "a")
  try {
    const { size } = await log.stat()
    const child = spawn(options.command, options.args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["ignore", log.fd, log.fd]
    })
    const run: Run = {
      child,
      exit: undefined,
      logOffset: size,
      exited: new Promise<Exit>((resolve) => {
        child.once("exit", (code, signal) => resolve({ code, signal }))
        // Also emitted when a signal cannot be sent; only a failed spawn (no pid) ends the run.
        child.on("error", (error) => {
          if (child.pid === undefined) resolve({ spawnError: error })
        })
      })
    }
    void run.exited.then((exit) => {
      run.exit = exit
      liveChildren.delete(child)
    })
    if (child.pid !== undefined) liveChildren.add(child)
    child.unref()
    return run
  } finally {
    await log.close()
  }
}

/** The last `lines` lines the run wrote to the log file (or why they cannot be read). */
export const logTail = async (logFile: string, offset: number, lines = 30): Promise<string> => {
  try {
    const text = (await Fsp.readFile(logFile)).subarray(offset).toString("utf8")
    const tail = text.trimEnd().split("\n").slice(-lines).join("\n")
    return tail === "" ? "(empty)" : tail
  } catch (error) {
    return `(log unreadable: ${messageOf(error)})`
  }
}

/** Sends `name` to the run's process if it is still running; whether it was sent. */
export const signal = (run: Run, name: NodeJS.Signals): boolean => {
  if (run.exit !== undefined) return false
  try {
    return run.child.kill(name)
  } catch {
    return false
  }
}

/** Waits for the run's process to exit, keeping the test process alive meanwhile. */
export const awaitExit = async (run: Run): Promise<void> => {
  if (run.exit !== undefined) return
  run.child.ref()
  await run.exited
}

/** SIGKILL, and wait for the exit. */
export const killRun = async (run: Run): Promise<void> => {
  signal(run, "SIGKILL")
  await awaitExit(run)
}

/** SIGTERM (and SIGCONT, for a paused process), then SIGKILL after `graceMs`; waits for the exit. */
export const terminateRun = async (run: Run, graceMs: number): Promise<void> => {
  if (run.exit !== undefined) return
  signal(run, "SIGTERM")
  // A paused process only acts on SIGTERM once continued.
  signal(run, "SIGCONT")
  let timer: NodeJS.Timeout | undefined
  const graceOver = new Promise<"grace over">((resolve) => {
    timer = setTimeout(() => resolve("grace over"), graceMs)
  })
  const outcome = await Promise.race([run.exited, graceOver])
  clearTimeout(timer)
  if (outcome === "grace over") await killRun(run)
  else await awaitExit(run)
}
