/**
 * Test-server harness for the backend tests: finds (or starts) the PostgreSQL and Redis servers the tests run
 * against. Each server is resolved in this order:
 *
 *   1. an explicit URL in an environment variable (`LOCK_TEST_POSTGRES_URL`, `LOCK_TEST_REDIS_URL`), used as is;
 *   2. a server already listening on its default local port (127.0.0.1:5432, 127.0.0.1:6379);
 *   3. a throwaway container started with testcontainers, when a Docker daemon answers;
 *   4. otherwise an error saying how to provide one.
 *
 * Only node built-ins are imported statically; testcontainers is imported dynamically, and only when step 3 is
 * reached, so nothing here needs Docker to be installed. Started containers are stopped when the process is about to
 * exit (testcontainers' reaper removes them too if the process dies first).
 */
import * as Net from "node:net"

/** How to start a server in a container when Docker is available. */
export interface ContainerSpec {
  /** The image, e.g. `postgres:15`. */
  readonly image: string
  /** The port the server listens on inside the container. */
  readonly port: number
  /** Environment variables for the container. */
  readonly env?: Readonly<Record<string, string>>
  /** The command (arguments) to run instead of the image's default. */
  readonly command?: ReadonlyArray<string>
  /** A log line that means the server is ready; without it the harness waits for the port to listen. */
  readonly readyLog?: RegExp
  /** How many times `readyLog` must appear (PostgreSQL's official image logs it twice). Default 1. */
  readonly readyLogTimes?: number
  /** The URL of the started server, from the host and mapped port testcontainers reports. */
  readonly url: (host: string, port: number) => string
}

/** Where to look for one kind of server. */
export interface ServerSpec {
  /** The server's name in messages, e.g. `PostgreSQL`. */
  readonly name: string
  /** The environment variable that, when set and non-empty, is the server's URL. */
  readonly envVar: string
  /** The host of the conventional local server. */
  readonly host: string
  /** The port of the conventional local server. */
  readonly port: number
  /** The URL to use when a server answers on `host:port`. */
  readonly url: string
  /** How to start one in a container when no server answers; without it Docker is not tried. */
  readonly container?: ContainerSpec
  /** A short instruction for running the server locally, shown in the error message. */
  readonly localHint?: string
  /** Whether a Docker daemon answers; injectable for tests. Defaults to asking testcontainers. */
  readonly dockerAvailable?: () => Promise<boolean>
  /** How long the TCP probe of `host:port` may take, in milliseconds. Default 500. */
  readonly probeTimeoutMs?: number
}

/** Whether something accepts TCP connections on `host:port` within `timeoutMs`. */
export const canConnect = (host: string, port: number, timeoutMs = 500): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect({ host, port })
    const done = (ok: boolean) => {
      socket.removeAllListeners()
      socket.on("error", ignore)
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

/** A free TCP port on 127.0.0.1 (free when returned; another process could take it afterwards). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      if (address === null || typeof address === "string") {
        server.close()
        reject(new Error(`unexpected server address ${String(address)}`))
        return
      }
      server.close((error) => (error === undefined ? resolve(address.port) : reject(error)))
    })
  })

/** Whether a Docker daemon answers, asking testcontainers (memoised; false when testcontainers cannot load). */
export const dockerAvailable = (): Promise<boolean> => (dockerCheck ??= checkDocker())

/** The URL of a server per `spec`: the env variable, else a local server, else a container, else an error. */
export const resolveServer = async (spec: ServerSpec): Promise<string> => {
  const fromEnv = process.env[spec.envVar]
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv
  if (await canConnect(spec.host, spec.port, spec.probeTimeoutMs ?? 500)) return spec.url
  if (spec.container !== undefined && (await (spec.dockerAvailable ?? dockerAvailable)())) {
    try {
      return await startContainer(spec.container)
    } catch (cause) {
      const failed = `Docker answers, but starting ${spec.container.image} for the ${spec.name} tests failed: ${String(cause)}.`
      throw new Error(`${failed}\n${howToProvide(spec)}`, { cause })
    }
  }
  const docker = spec.container === undefined ? "" : " and no Docker daemon answers"
  throw new Error(
    `No ${spec.name} server for the tests: nothing answers on ${spec.host}:${spec.port}${docker}.\n${howToProvide(spec)}`
  )
}

/** The URL of the PostgreSQL server for the tests (memoised; see `resolveServer`). */
export const postgresUrl = (): Promise<string> =>
  (postgres ??= resolveServer({
    name: "PostgreSQL",
    envVar: "LOCK_TEST_POSTGRES_URL",
    host: "127.0.0.1",
    port: 5432,
    url: "postgres://postgres@127.0.0.1:5432/postgres",
    localHint:
      "accepting user postgres without a password, " +
      "e.g. `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`",
    container: {
      image: "postgres:15",
      port: 5432,
      env: { POSTGRES_HOST_AUTH_METHOD: "trust" },
      // The official image logs this once for its init server and once for the real one.
      readyLog: /database system is ready to accept connections/,
      readyLogTimes: 2,
      url: (host, port) => `postgres://postgres@${host}:${port}/postgres`
    }
  }))

/** The URL of the Redis server for the tests (memoised; see `resolveServer`). */
export const redisUrl = (): Promise<string> =>
  (redis ??= resolveServer({
    name: "Redis",
    envVar: "LOCK_TEST_REDIS_URL",
    host: "127.0.0.1",
    port: 6379,
    url: "redis://127.0.0.1:6379",
    localHint: "e.g. `docker run -d -p 6379:6379 redis:7` or `redis-server`",
    container: {
      image: "redis:7",
      port: 6379,
      readyLog: /Ready to accept connections/,
      url: (host, port) => `redis://${host}:${port}`
    }
  }))

let dockerCheck: Promise<boolean> | undefined
let postgres: Promise<string> | undefined
let redis: Promise<string> | undefined

const ignore = (): void => {}

const checkDocker = async (): Promise<boolean> => {
  try {
    const { getContainerRuntimeClient } = await import("testcontainers")
    await getContainerRuntimeClient()
    return true
  } catch {
    return false
  }
}

const startContainer = async (spec: ContainerSpec): Promise<string> => {
  const { GenericContainer, Wait } = await import("testcontainers")
  let container = new GenericContainer(spec.image)
    .withExposedPorts(spec.port)
    .withEnvironment({ ...spec.env })
    .withWaitStrategy(
      spec.readyLog === undefined
        ? Wait.forListeningPorts()
        : Wait.forLogMessage(spec.readyLog, spec.readyLogTimes ?? 1)
    )
  if (spec.command !== undefined) container = container.withCommand([...spec.command])
  const started = await container.start()
  process.once("beforeExit", () => {
    started.stop().catch(ignore)
  })
  return spec.url(started.getHost(), started.getMappedPort(spec.port))
}

const howToProvide = (spec: ServerSpec): string => {
  const local = `${spec.host}:${spec.port}`
  const lines = [
    `Provide a ${spec.name} server in any of these ways:`,
    `  - set ${spec.envVar} to its URL, e.g. ${spec.envVar}=${spec.url}`,
    `  - run ${spec.name} on ${local}${spec.localHint === undefined ? "" : ` ${spec.localHint}`}`
  ]
  if (spec.container !== undefined) {
    lines.push(`  - start a Docker daemon; the tests then start ${spec.container.image} with testcontainers`)
  }
  return lines.join("\n")
}
