/**
 * Private etcd processes for the etcd backend tests: a single member, or a cluster of several members that tests can
 * kill, pause, resume and restart one at a time, without touching a shared server. Each member:
 *
 *   - runs `etcd` (found on PATH; Debian's etcd-server package installs etcd 3.4 as /usr/bin/etcd) in the
 *     foreground, with the client URL `http://127.0.0.1:<port>` and the peer URL `http://127.0.0.1:<other port>`,
 *     both free ports (never etcd's default 2379 and 2380), listed in every member's `--initial-cluster`;
 *   - works in its own directory `<cluster dir>/<name>` (the cluster directory is a temporary directory under
 *     `os.tmpdir()`, removed by `stop()`), holding its `--data-dir` `data` and its log file `etcd.log`: etcd's zap
 *     JSON log lines and anything else it writes to stdout or stderr (e.g. a usage message for a bad flag), across
 *     restarts;
 *   - uses timings suitable for tests: a heartbeat every 50 ms and an election timeout of 500 ms (etcd's defaults are
 *     100 ms and 1000 ms), so followers elect a new leader roughly 0.5 to 1 s after the leader dies; and pre-vote
 *     (`--pre-vote`, the default from etcd 3.5 on), so a resumed or restarted member does not depose a healthy leader;
 *   - is started without the `ETCD_*` environment variables of the test process (etcd reads them as flags);
 *   - is ready once it answers `POST /v3/maintenance/status` on the v3 JSON gateway as the expected member (on the
 *     first start, its member id, name and peer URL are checked against `/v3/cluster/member/list`; on a restart, its
 *     member and cluster ids must not change, so an etcd some other process runs on the port is never taken for it)
 *     and knows a leader. A new cluster is ready once every member is ready and all agree on the leader. A member of a
 *     cluster only answers once the cluster has a quorum.
 *
 * The members of one cluster share a unique `--initial-cluster-token`. The helpers (`request`, `put`, `get`, `keys`,
 * `leases`) speak the v3 JSON gateway with the global `fetch`, enough for tests to inspect and poke the cluster, e.g.
 * to check that no key is left under a prefix and no lease is left; the lock backend under test uses its own client.
 * The gateway encodes keys and values in base64 (the helpers take and return UTF-8 strings) and 64-bit integers
 * (member, cluster and lease ids, revisions, TTLs) as decimal strings, which the helpers keep as strings.
 *
 * Members still running when the test process exits are killed with SIGKILL, and their directories removed, by a
 * `process.once("exit")` hook. The members are children in the test process's group, so a Ctrl-C in the terminal
 * reaches them too; a test process killed with SIGKILL leaves them running.
 */
import { randomUUID } from "node:crypto"
import * as Fsp from "node:fs/promises"
import * as Path from "node:path"
import {
  ignore,
  killRun,
  logTail,
  makeTempDir,
  messageOf,
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

/** How to start a cluster (or a single member). */
export interface StartOptions {
  /** `--heartbeat-interval`, in milliseconds. Default `heartbeatIntervalMs` (50). */
  readonly heartbeatIntervalMs?: number
  /**
   * `--election-timeout`, in milliseconds; etcd requires at least 5 times the heartbeat interval. Default
   * `electionTimeoutMs` (500).
   */
  readonly electionTimeoutMs?: number
  /** How long starting (and each member's `restart()`) may take, in milliseconds. Default `readyTimeoutMs`. */
  readonly readyTimeoutMs?: number
  /**
   * More `etcd` flags for every member, appended after the defaults (etcd takes the last value of a repeated flag),
   * e.g. `["--quota-backend-bytes", "16777216"]`. They must not change the name, URLs, directories, cluster or log
   * output, nor enable authentication or TLS (the helpers speak plain HTTP without credentials).
   */
  readonly args?: ReadonlyArray<string>
}

/** A member's `/v3/maintenance/status` reply. Ids are the gateway's decimal strings. */
export interface EtcdStatus {
  /** The answering member's id (`header.member_id`). */
  readonly memberId: string
  /** The cluster's id (`header.cluster_id`). */
  readonly clusterId: string
  /** The id of the leader the member knows (`leader`), or undefined when it knows none. */
  readonly leaderId: string | undefined
  /** Whether the member reports itself as the leader (`leaderId === memberId`). */
  readonly isLeader: boolean
  /** The member's current raft term (`raftTerm`). */
  readonly raftTerm: number
  /** The member's last raft log index (`raftIndex`). */
  readonly raftIndex: number
  /** The etcd version, e.g. `3.4.23`. */
  readonly version: string
}

/** Options of the read helpers. */
export interface ReadOptions {
  /**
   * Read from the answering member's local store (`serializable: true`), which may lag behind the cluster; by
   * default reads are linearizable (confirmed with the leader, so they see every write that completed before).
   */
  readonly serializable?: boolean
  /** Overrides the request's time limit, in milliseconds (see `EtcdClient`). */
  readonly timeoutMs?: number
}

/** Options of `put`. */
export interface PutOptions {
  /** Attaches the key to this lease (a decimal id, as `/v3/lease/grant` returns it). */
  readonly lease?: string
  /** Overrides the request's time limit, in milliseconds (see `EtcdClient`). */
  readonly timeoutMs?: number
}

/**
 * Requests to the v3 JSON gateway. A member sends them to itself, once, and rejects after `requestTimeoutMs` (or the
 * given time limit) without a reply. A cluster sends them to its members in order, skipping killed and paused ones,
 * and retries on the next member, and then round again, when a member does not answer in time (for at most
 * `clusterAttemptTimeoutMs` per attempt), cannot be reached, or answers that it is unavailable (gRPC code 14, e.g.
 * no leader, leader changed, request timed out) or out of time (code 4), until `clusterRequestTimeoutMs` (or the given
 * time limit) has passed; so a write may be applied twice, e.g. when a member applied it but did not answer in time.
 * Any other error answer rejects at once. Errors are `EtcdRequestError`s.
 */
export interface EtcdClient {
  /**
   * POSTs `body` (default `{}`) as JSON to `path` (e.g. `/v3/lease/grant`) and resolves with the parsed JSON reply.
   * The gateway leaves out fields with default values (zero, empty, false): e.g. `kvs` and `count` when nothing
   * matches.
   */
  readonly request: (
    path: string,
    body?: Readonly<Record<string, unknown>>,
    timeoutMs?: number
  ) => Promise<Record<string, unknown>>
  /** Sets `key` to `value` (`/v3/kv/put`). */
  readonly put: (key: string, value: string, options?: PutOptions) => Promise<void>
  /** The value of `key` (`/v3/kv/range`), or undefined when it does not exist. */
  readonly get: (key: string, options?: ReadOptions) => Promise<string | undefined>
  /** The keys starting with `prefix` (every key for `""`), in etcd's byte order (`/v3/kv/range` with `range_end`). */
  readonly keys: (prefix: string, options?: ReadOptions) => Promise<ReadonlyArray<string>>
  /** The ids of all leases that exist (`/v3/lease/leases`), in the order etcd lists them. */
  readonly leases: (options?: { readonly timeoutMs?: number }) => Promise<ReadonlyArray<string>>
}

/** One member of a cluster: an `etcd` process that can be killed, paused, resumed and restarted. */
export interface EtcdMember extends EtcdClient {
  /** `--name`: `m0`, `m1`, ... in `members` order. */
  readonly name: string
  /** The member id etcd assigned (a decimal string), the same across restarts. */
  readonly id: string
  /** `http://127.0.0.1:<port>`, the same across restarts. */
  readonly clientUrl: string
  /** `http://127.0.0.1:<port>` for raft traffic between members, the same across restarts. */
  readonly peerUrl: string
  /** The member's directory, holding `dataDir` and `logFile`; the cluster's `stop()` removes it. */
  readonly dir: string
  /** The `--data-dir`, kept across kills and restarts. */
  readonly dataDir: string
  /** The log file: etcd's log, stdout and stderr, across restarts. */
  readonly logFile: string
  /** The process id of the current process, or undefined when it is not running (killed, stopped, crashed). */
  readonly pid: () => number | undefined
  /** Whether the process is suspended by `pause()` (and not resumed, killed or restarted since). */
  readonly paused: () => boolean
  /** The member's `/v3/maintenance/status` (it answers from its own state, without asking the leader). */
  readonly status: (timeoutMs?: number) => Promise<EtcdStatus>
  /**
   * Suspends the process with SIGSTOP: it keeps its ports and connections (the kernel still accepts new ones) but
   * neither answers nor takes part in raft; when it was the leader, the others elect a new one.
   */
  readonly pause: () => void
  /** Continues a paused process with SIGCONT; it then catches up with the cluster. */
  readonly resume: () => void
  /** Kills the process with SIGKILL (a crash) and waits for it to exit. Does nothing when it is not running. */
  readonly kill: () => Promise<void>
  /**
   * Stops the process if it runs (SIGTERM, then SIGKILL after `stopGraceMs`), then starts a new one with the same
   * name, ports and data dir (and `--initial-cluster-state existing`), and waits until it answers as this member and
   * knows a leader: it has rejoined. That needs a quorum of the cluster running. For a crash-and-recover, call `kill()`
   * first. Rejects after the cluster's `stop()`, and with the log tail when the member does not get ready within the
   * ready timeout (the new process is killed then).
   */
  readonly restart: () => Promise<void>
}

/** A private etcd cluster (of one member for `startEtcd`). */
export interface EtcdCluster extends EtcdClient {
  /** The members' client URLs, in `members` order. */
  readonly endpoints: ReadonlyArray<string>
  /** The members, named `m0`, `m1`, ... */
  readonly members: ReadonlyArray<EtcdMember>
  /** The temporary directory holding the members' directories; `stop()` removes it. */
  readonly dir: string
  /**
   * The current leader. Asks the running, unpaused members for their status until, among those that answer, exactly
   * one member of the highest raft term reports itself the leader (so a former leader that has not yet noticed the
   * new term is not taken when the new leader answers). Rejects, with the last statuses, when there is none within
   * `timeoutMs` (default `readyTimeoutMs`).
   */
  readonly leader: (timeoutMs?: number) => Promise<EtcdMember>
  /**
   * Stops all members for good, with SIGKILL (a graceful stop of all members at once would have a leader wait for a
   * leadership transfer to members that are stopping too; the data is thrown away anyway), interrupting a `restart()`
   * in progress, then removes `dir`. Idempotent: later calls return the same promise.
   */
  readonly stop: () => Promise<void>
}

/** A request to the JSON gateway failed: no reply, or an error reply. */
export class EtcdRequestError extends Error {
  /** The member's client URL. */
  readonly url: string
  /** The gateway path, e.g. `/v3/kv/put`. */
  readonly path: string
  /** The HTTP status of the reply, or undefined when there was no reply (connection failed, time limit). */
  readonly status: number | undefined
  /** The gRPC status code of an error reply (e.g. 5 for "requested lease not found", 14 for unavailable). */
  readonly code: number | undefined
  constructor(
    message: string,
    details: {
      readonly url: string
      readonly path: string
      readonly status?: number | undefined
      readonly code?: number | undefined
      readonly cause?: unknown
    }
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = "EtcdRequestError"
    this.url = details.url
    this.path = details.path
    this.status = details.status
    this.code = details.code
  }
}

/** The default `--heartbeat-interval` for tests, in milliseconds (etcd's default: 100). */
export const heartbeatIntervalMs = 50

/** The default `--election-timeout` for tests, in milliseconds (etcd's default: 1000). */
export const electionTimeoutMs = 500

/** How long starting a cluster and restarting a member may take by default, in milliseconds. */
export const readyTimeoutMs = 20_000

/** How long a member's request may take by default, in milliseconds. */
export const requestTimeoutMs = 5_000

/** How long a cluster's request may take by default, retries included, in milliseconds. */
export const clusterRequestTimeoutMs = 15_000

/** How long one attempt of a cluster's request may take on one member, in milliseconds. */
export const clusterAttemptTimeoutMs = 2_000

/** How long `restart` waits after SIGTERM before sending SIGKILL, in milliseconds. */
export const stopGraceMs = 5_000

/**
 * Starts a single-member cluster (see the module comment) and resolves once it is ready. Rejects, with the tail of
 * the member's log, when etcd exits early or is not ready within the ready timeout; nothing is left behind then.
 */
export const startEtcd = (options: StartOptions = {}): Promise<EtcdCluster> => startEtcdCluster(1, options)

/**
 * Starts a cluster of `size` members (see the module comment) and resolves once every member is ready and all agree
 * on the leader. When a port turns out to be taken meanwhile, starts over on other ports (up to 5 times). Rejects,
 * with the tail of the failing member's log, when a member exits early or the cluster is not ready within the ready
 * timeout; nothing is left behind then.
 */
export const startEtcdCluster = async (size = 3, options: StartOptions = {}): Promise<EtcdCluster> => {
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`size must be an integer >= 1, got ${size}`)
  const settings = settingsOf(options)
  const dir = await makeTempDir("effect-locks-etcd-")
  try {
    const homes = await Promise.all(
      Array.from({ length: size }, async (_, index): Promise<Home> => {
        const name = `m${index}`
        const home = Path.join(dir, name)
        await Fsp.mkdir(home)
        // etcd creates the data dir itself, with the permissions it wants (0700).
        return { name, dir: home, dataDir: Path.join(home, "data"), logFile: Path.join(home, "etcd.log") }
      })
    )
    for (let attempt = 1; ; attempt++) {
      const layout = await reserveLayout(homes)
      try {
        const started = await launchCluster(layout, settings)
        return makeCluster(dir, layout, started, settings)
      } catch (error) {
        for (const member of layout.members) {
          releasePort(member.clientPort)
          releasePort(member.peerPort)
        }
        if (attempt < 5 && error instanceof StartError && error.addressInUse) {
          // Start over from scratch: a member may have initialised its data dir for the old ports and token.
          await Promise.all(homes.map((home) => Fsp.rm(home.dataDir, { recursive: true, force: true, maxRetries: 3 })))
          continue
        }
        throw error
      }
    }
  } catch (error) {
    await removeDir(dir).catch(ignore) // else the exit hook retries
    throw error
  }
}

const host = "127.0.0.1"

/** Options with their defaults applied. */
interface Settings {
  readonly heartbeatIntervalMs: number
  readonly electionTimeoutMs: number
  readonly readyTimeoutMs: number
  readonly args: ReadonlyArray<string>
}

/** A member's name and files, the same for every start attempt. */
interface Home {
  readonly name: string
  readonly dir: string
  readonly dataDir: string
  readonly logFile: string
}

/** A member's home and the ports of one start attempt. */
interface MemberLayout extends Home {
  readonly clientPort: number
  readonly peerPort: number
  readonly clientUrl: string
  readonly peerUrl: string
}

/** The members and cluster flags of one start attempt. */
interface Layout {
  readonly members: ReadonlyArray<MemberLayout>
  /** `--initial-cluster`: `m0=<peer URL>,m1=<peer URL>,...`. */
  readonly initialCluster: string
  /** `--initial-cluster-token`, unique per attempt. */
  readonly token: string
}

/** Who a member is, known once it first got ready; a restarted member must answer with the same ids. */
interface Identity {
  readonly memberId: string
  readonly clusterId: string
}

/** Another member of the same start failed first: this one gave up waiting. */
class StartAborted extends Error {}

const positiveInteger = (name: string, value: number): number => {
  if (!Number.isInteger(value) || value <= 0) throw new RangeError(`${name} must be a positive integer, got ${value}`)
  return value
}

const settingsOf = (options: StartOptions): Settings => ({
  heartbeatIntervalMs: positiveInteger("heartbeatIntervalMs", options.heartbeatIntervalMs ?? heartbeatIntervalMs),
  electionTimeoutMs: positiveInteger("electionTimeoutMs", options.electionTimeoutMs ?? electionTimeoutMs),
  readyTimeoutMs: positiveInteger("readyTimeoutMs", options.readyTimeoutMs ?? readyTimeoutMs),
  args: [...(options.args ?? [])]
})

/** Reserves a client and a peer port for every member, and picks a fresh cluster token. */
const reserveLayout = async (homes: ReadonlyArray<Home>): Promise<Layout> => {
  const members: Array<MemberLayout> = []
  const ports: Array<number> = []
  try {
    for (const home of homes) {
      const clientPort = await reservePort([2379, 2380], "etcd")
      ports.push(clientPort)
      const peerPort = await reservePort([2379, 2380], "etcd")
      ports.push(peerPort)
      members.push({
        ...home,
        clientPort,
        peerPort,
        clientUrl: `http://${host}:${clientPort}`,
        peerUrl: `http://${host}:${peerPort}`
      })
    }
  } catch (error) {
    for (const port of ports) releasePort(port)
    throw error
  }
  return {
    members,
    initialCluster: members.map((member) => `${member.name}=${member.peerUrl}`).join(","),
    token: `effect-locks-${randomUUID()}`
  }
}

const etcdArgs = (
  member: MemberLayout,
  layout: Layout,
  state: "new" | "existing",
  settings: Settings
): ReadonlyArray<string> => [
  "--name",
  member.name,
  "--data-dir",
  member.dataDir,
  "--listen-client-urls",
  member.clientUrl,
  "--advertise-client-urls",
  member.clientUrl,
  "--listen-peer-urls",
  member.peerUrl,
  "--initial-advertise-peer-urls",
  member.peerUrl,
  "--initial-cluster",
  layout.initialCluster,
  "--initial-cluster-state",
  state,
  "--initial-cluster-token",
  layout.token,
  "--heartbeat-interval",
  String(settings.heartbeatIntervalMs),
  "--election-timeout",
  String(settings.electionTimeoutMs),
  "--pre-vote",
  "--logger",
  "zap",
  "--log-outputs",
  "stderr",
  ...settings.args
]

/** The test process's environment without `ETCD_*` variables, which etcd would read as flags. */
const etcdEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("ETCD_")))

const spawnMember = (member: MemberLayout, args: ReadonlyArray<string>): Promise<Run> => {
  return spawnRun({ command: "etcd", args, cwd: member.dir, env: etcdEnv(), logFile: member.logFile })
}

/** Spawns every member of a new cluster and waits until the cluster is ready; kills them all when it is not. */
const launchCluster = async (layout: Layout, settings: Settings): Promise<ReadonlyArray<Started>> => {
  const runs: Array<Run> = []
  try {
    for (const member of layout.members) runs.push(await spawnMember(member, etcdArgs(member, layout, "new", settings)))
    const deadline = Date.now() + settings.readyTimeoutMs
    const abort = new AbortController()
    const results = await Promise.allSettled(
      layout.members.map(async (member, index) => {
        const run = runs[index]
        if (run === undefined) throw new Error(`no process for etcd member ${member.name}`)
        try {
          return await waitMemberReady(run, member, undefined, deadline, settings.readyTimeoutMs, abort.signal)
        } catch (error) {
          abort.abort()
          throw error
        }
      })
    )
    const identities: Array<Identity> = []
    const errors: Array<unknown> = []
    for (const result of results) {
      if (result.status === "fulfilled") identities.push(result.value)
      else if (!(result.reason instanceof StartAborted)) errors.push(result.reason)
    }
    if (errors.length > 0) {
      // Prefer a taken port, which is worth another attempt on other ports.
      throw errors.find((error) => error instanceof StartError && error.addressInUse) ?? errors[0]
    }
    const clusterIds = new Set(identities.map((identity) => identity.clusterId))
    const memberIds = new Set(identities.map((identity) => identity.memberId))
    if (clusterIds.size !== 1 || memberIds.size !== layout.members.length) {
      throw new StartError(
        `etcd members do not form one cluster: cluster ids ${[...clusterIds].join(", ")}, ` +
          `member ids ${identities.map((identity) => identity.memberId).join(", ")}`,
        false
      )
    }
    const started = layout.members.map((member, index): Started => {
      const run = runs[index]
      const identity = identities[index]
      if (run === undefined || identity === undefined) throw new Error(`etcd member ${member.name} got lost`)
      return { member, run, identity }
    })
    await awaitAgreedLeader(started, deadline, settings.readyTimeoutMs)
    return started
  } catch (error) {
    await Promise.all(runs.map(killRun))
    throw error
  }
}

/** A started member of a new cluster. */
interface Started {
  readonly member: MemberLayout
  readonly run: Run
  readonly identity: Identity
}

/** Polls the statuses of all members of a new cluster until they all answer and agree on one leader. */
const awaitAgreedLeader = async (
  started: ReadonlyArray<Started>,
  deadline: number,
  timeoutMs: number
): Promise<void> => {
  let last = "not asked yet"
  for (;;) {
    const left = deadline - Date.now()
    if (left <= 0) throw new StartError(`etcd members did not agree on a leader within ${timeoutMs} ms: ${last}`, false)
    const answers = await Promise.all(
      started.map(({ member }) =>
        fetchStatus(member.clientUrl, Math.min(left, 2_000)).then(
          (status) => ({ name: member.name, status }),
          (error: unknown) => ({ name: member.name, error })
        )
      )
    )
    const leaders = new Set(answers.map((answer) => ("status" in answer ? answer.status.leaderId : undefined)))
    const [leaderId] = leaders
    const claimants = answers.filter((answer) => "status" in answer && answer.status.isLeader)
    if (leaders.size === 1 && leaderId !== undefined && claimants.length === 1) return
    last = describeAnswers(answers)
    await sleep(50)
  }
}

type Answer<M> =
  | { readonly name: string; readonly member?: M; readonly status: EtcdStatus }
  | { readonly name: string; readonly error: unknown }

const describeAnswers = <M>(answers: ReadonlyArray<Answer<M>>): string =>
  answers.length === 0
    ? "no member running and unpaused"
    : answers
        .map((answer) =>
          "status" in answer
            ? `${answer.name}: member ${answer.status.memberId}, leader ${answer.status.leaderId ?? "none"}, ` +
              `term ${answer.status.raftTerm}`
            : `${answer.name}: ${messageOf(answer.error)}`
        )
        .join("; ")

/**
 * Polls a member's status until it answers as the expected member (or, without `expected`, as the member the member
 * list names `member.name` at `member.peerUrl`) and knows a leader; resolves with its identity. Rejects with a
 * `StartError` carrying the log tail when the process exits or `deadline` passes (killing the process), and with
 * `StartAborted` once `abort` fires.
 */
const waitMemberReady = async (
  run: Run,
  member: MemberLayout,
  expected: Identity | undefined,
  deadline: number,
  timeoutMs: number,
  abort?: AbortSignal
): Promise<Identity> => {
  const fail = async (reason: string, addressInUse = false): Promise<never> => {
    await killRun(run)
    const log = await logTail(member.logFile, run.logOffset, 20)
    throw new StartError(
      `etcd member ${member.name} (client ${member.clientUrl}, peer ${member.peerUrl}) ${reason}; ` +
        `tail of ${member.logFile}:\n${log}`,
      addressInUse
    )
  }
  let lastProbe = "not probed yet"
  // A member of a cluster without a quorum yet accepts connections but does not answer: probe with a short time
  // limit first, so the first probe after the quorum forms comes soon, and double it for each probe that runs out.
  let probeTimeoutMs = 250
  for (;;) {
    if (abort?.aborted === true) throw new StartAborted(`etcd member ${member.name}: another member failed to start`)
    if (run.exit !== undefined) {
      const exit = run.exit
      if ("spawnError" in exit) {
        return fail(`could not be spawned (is etcd installed and on PATH?): ${exit.spawnError.message}`)
      }
      const addressInUse = /address already in use/i.test(await logTail(member.logFile, run.logOffset, 20))
      return fail(`exited before it was ready (code ${exit.code}, signal ${exit.signal})`, addressInUse)
    }
    const left = deadline - Date.now()
    if (left <= 0) return fail(`was not ready within ${timeoutMs} ms (last probe: ${lastProbe})`)
    const probeStart = Date.now()
    const probe = await probeMember(member, expected, Math.min(left, probeTimeoutMs))
    if (typeof probe !== "string") return probe
    if (Date.now() - probeStart >= probeTimeoutMs) probeTimeoutMs = Math.min(2 * probeTimeoutMs, 2_000)
    lastProbe = probe
    await Promise.race([sleep(50), run.exited])
  }
}

/** The member's identity when it answers as `member` (or as `expected`) and knows a leader, else why not. */
const probeMember = async (
  member: MemberLayout,
  expected: Identity | undefined,
  timeoutMs: number
): Promise<Identity | string> => {
  try {
    const status = await fetchStatus(member.clientUrl, timeoutMs)
    if (expected !== undefined) {
      if (status.memberId !== expected.memberId || status.clusterId !== expected.clusterId) {
        return (
          `the etcd answering is member ${status.memberId} of cluster ${status.clusterId}, ` +
          `not member ${expected.memberId} of cluster ${expected.clusterId}`
        )
      }
    } else {
      const reply = await gateway(member.clientUrl, "/v3/cluster/member/list", {}, timeoutMs)
      const self = array(reply["members"])
        .map(record)
        .find((entry) => text(entry["ID"]) === status.memberId)
      const name = text(self?.["name"])
      const peerUrls = array(self?.["peerURLs"]).map(text)
      if (name !== member.name || !peerUrls.includes(member.peerUrl)) {
        return (
          `the etcd answering is member ${status.memberId} named ${JSON.stringify(name)} with peer URLs ` +
          `${peerUrls.join(", ")}, not ${member.name} at ${member.peerUrl}`
        )
      }
    }
    if (status.leaderId === undefined) return `member ${status.memberId} knows no leader yet (term ${status.raftTerm})`
    return { memberId: status.memberId, clusterId: status.clusterId }
  } catch (error) {
    return messageOf(error)
  }
}

type Json = Record<string, unknown>

const isRecord = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value)

const record = (value: unknown): Json => (isRecord(value) ? value : {})

const array = (value: unknown): ReadonlyArray<unknown> => (Array.isArray(value) ? value : [])

/** A string field, or a number rendered as a string (the gateway writes 64-bit integers as strings). */
const text = (value: unknown): string | undefined =>
  typeof value === "string" ? value : typeof value === "number" ? String(value) : undefined

const base64 = (value: string | Buffer): string => Buffer.from(value).toString("base64")

const decode = (value: unknown): string => Buffer.from(text(value) ?? "", "base64").toString("utf8")

/** The first key after all keys starting with `prefix` (`range_end`): `"\0"` (no end) for an empty prefix. */
const prefixEnd = (prefix: Buffer): Buffer => {
  const end = Buffer.from(prefix)
  for (let index = end.length - 1; index >= 0; index--) {
    const byte = end[index]
    if (byte !== undefined && byte < 0xff) {
      end[index] = byte + 1
      return end.subarray(0, index + 1)
    }
  }
  return Buffer.from([0])
}

/** POSTs `body` to the gateway at `url` once; resolves with the JSON reply, rejects with an `EtcdRequestError`. */
const gateway = async (
  url: string,
  path: string,
  body: Readonly<Record<string, unknown>>,
  timeoutMs: number
): Promise<Json> => {
  const what = `etcd ${path} via ${url}`
  let status: number | undefined
  let reply: string
  try {
    const response = await fetch(`${url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs)
    })
    status = response.status
    reply = await response.text()
  } catch (error) {
    // fetch rejects with a TimeoutError (a DOMException) at the time limit, else with "fetch failed" and a cause.
    const timedOut = error instanceof Error && error.name === "TimeoutError"
    const cause = error instanceof Error && error.cause !== undefined ? `: ${messageOf(error.cause)}` : ""
    const reason = timedOut ? `no reply within ${timeoutMs} ms` : `${messageOf(error)}${cause}`
    throw new EtcdRequestError(`${what} failed: ${reason}`, { url, path, status, cause: error })
  }
  let parsed: unknown
  try {
    parsed = reply === "" ? {} : JSON.parse(reply)
  } catch (error) {
    throw new EtcdRequestError(`${what}: HTTP ${status} with a reply that is not JSON: ${reply.slice(0, 200)}`, {
      url,
      path,
      status,
      cause: error
    })
  }
  const json = record(parsed)
  if (status !== 200 || json["error"] !== undefined) {
    const code = typeof json["code"] === "number" ? json["code"] : undefined
    const message = text(json["message"]) ?? text(json["error"]) ?? reply.slice(0, 200)
    const codeText = code === undefined ? "" : ` (gRPC code ${code})`
    throw new EtcdRequestError(`${what}: HTTP ${status}: ${message}${codeText}`, { url, path, status, code })
  }
  return json
}

const parseStatus = (reply: Json): EtcdStatus => {
  const header = record(reply["header"])
  const memberId = text(header["member_id"])
  const clusterId = text(header["cluster_id"])
  if (memberId === undefined || clusterId === undefined) {
    throw new Error(`status reply without member or cluster id: ${JSON.stringify(reply).slice(0, 300)}`)
  }
  const leader = text(reply["leader"])
  const leaderId = leader === undefined || leader === "0" ? undefined : leader
  return {
    memberId,
    clusterId,
    leaderId,
    isLeader: leaderId === memberId,
    raftTerm: Number(text(reply["raftTerm"]) ?? "0"),
    raftIndex: Number(text(reply["raftIndex"]) ?? "0"),
    version: text(reply["version"]) ?? ""
  }
}

const fetchStatus = async (url: string, timeoutMs: number): Promise<EtcdStatus> =>
  parseStatus(await gateway(url, "/v3/maintenance/status", {}, timeoutMs))

type RequestFn = (path: string, body?: Readonly<Record<string, unknown>>, timeoutMs?: number) => Promise<Json>

/** The typed helpers, on top of a member's or a cluster's `request`. */
const makeClient = (request: RequestFn): EtcdClient => {
  const range = (key: Buffer, rangeEnd: Buffer | undefined, options: ReadOptions, keysOnly: boolean): Promise<Json> =>
    request(
      "/v3/kv/range",
      {
        key: base64(key),
        ...(rangeEnd === undefined ? {} : { range_end: base64(rangeEnd) }),
        ...(options.serializable === true ? { serializable: true } : {}),
        ...(keysOnly ? { keys_only: true } : {})
      },
      options.timeoutMs
    )
  return {
    request,
    put: async (key, value, options = {}) => {
      await request(
        "/v3/kv/put",
        { key: base64(key), value: base64(value), ...(options.lease === undefined ? {} : { lease: options.lease }) },
        options.timeoutMs
      )
    },
    get: async (key, options = {}) => {
      const reply = await range(Buffer.from(key), undefined, options, false)
      const [kv] = array(reply["kvs"])
      return kv === undefined ? undefined : decode(record(kv)["value"])
    },
    keys: async (prefix, options = {}) => {
      // etcd reads the key "" as "no key"; "\0" with range_end "\0" means every key.
      const start = prefix === "" ? Buffer.from([0]) : Buffer.from(prefix)
      const reply = await range(start, prefixEnd(Buffer.from(prefix)), options, true)
      return array(reply["kvs"]).map((kv) => decode(record(kv)["key"]))
    },
    leases: async (options = {}) => {
      const reply = await request("/v3/lease/leases", {}, options.timeoutMs)
      return array(reply["leases"]).flatMap((lease) => text(record(lease)["ID"]) ?? [])
    }
  }
}

/** Whether a cluster's request should be tried again, on another member or later. */
const retryable = (error: unknown): boolean =>
  error instanceof EtcdRequestError &&
  (error.status === undefined ||
    error.code === 14 ||
    error.code === 4 ||
    (error.code === undefined && (error.status === 502 || error.status === 503 || error.status === 504)))

/** A member's mutable state, behind its `EtcdMember` face. */
interface MemberHandle {
  readonly face: EtcdMember
  /** Whether it can be asked: running and not paused. */
  readonly available: () => boolean
  /** Kills the current process at once, then waits for a restart in progress to give up. */
  readonly shutdown: () => Promise<void>
}

const makeMember = (
  member: MemberLayout,
  layout: Layout,
  identity: Identity,
  first: Run,
  settings: Settings,
  clusterStopped: () => boolean
): MemberHandle => {
  let run: Run | undefined = first
  let paused = false
  // kill, restart and shutdown run one at a time, in call order.
  let queue: Promise<void> = Promise.resolve()
  const serial = (op: () => Promise<void>): Promise<void> => {
    const next = queue.then(op)
    queue = next.catch(ignore)
    return next
  }
  const isRunning = (): boolean => run !== undefined && run.exit === undefined
  const running = (what: string): Run => {
    if (run === undefined || run.exit !== undefined) {
      const why = clusterStopped() ? "stopped" : "killed or exited"
      throw new Error(`etcd member ${member.name} (${member.clientUrl}) is not running (${why}): cannot ${what}`)
    }
    return run
  }
  const request: RequestFn = (path, body = {}, timeoutMs = requestTimeoutMs) =>
    gateway(member.clientUrl, path, body, timeoutMs)
  const face: EtcdMember = {
    ...makeClient(request),
    name: member.name,
    id: identity.memberId,
    clientUrl: member.clientUrl,
    peerUrl: member.peerUrl,
    dir: member.dir,
    dataDir: member.dataDir,
    logFile: member.logFile,
    pid: () => (run === undefined || run.exit !== undefined ? undefined : run.child.pid),
    paused: () => paused && isRunning(),
    status: async (timeoutMs = requestTimeoutMs) => parseStatus(await request("/v3/maintenance/status", {}, timeoutMs)),
    pause: () => {
      if (!signal(running("pause"), "SIGSTOP")) throw new Error(`could not pause etcd member ${member.name}`)
      paused = true
    },
    resume: () => {
      if (!signal(running("resume"), "SIGCONT")) throw new Error(`could not resume etcd member ${member.name}`)
      paused = false
    },
    kill: () =>
      serial(async () => {
        if (run !== undefined) await killRun(run)
        paused = false
      }),
    restart: () =>
      serial(async () => {
        const stoppedError = () => new Error(`etcd member ${member.name} was stopped with its cluster: cannot restart`)
        if (clusterStopped()) throw stoppedError()
        if (run !== undefined) await terminateRun(run, stopGraceMs)
        paused = false
        run = undefined
        if (clusterStopped()) throw stoppedError()
        const next = await spawnMember(member, etcdArgs(member, layout, "existing", settings))
        run = next
        try {
          await waitMemberReady(next, member, identity, Date.now() + settings.readyTimeoutMs, settings.readyTimeoutMs)
        } catch (error) {
          await killRun(next)
          if (clusterStopped()) throw stoppedError()
          throw error
        }
      })
  }
  return {
    face,
    available: () => isRunning() && !paused,
    shutdown: () => {
      if (run !== undefined) signal(run, "SIGKILL")
      return serial(async () => {
        if (run !== undefined) await killRun(run)
        paused = false
      })
    }
  }
}

const makeCluster = (dir: string, layout: Layout, started: ReadonlyArray<Started>, settings: Settings): EtcdCluster => {
  let stopped = false
  let stopping: Promise<void> | undefined
  const handles = started.map(({ member, run, identity }) =>
    makeMember(member, layout, identity, run, settings, () => stopped)
  )
  const members = handles.map((handle) => handle.face)
  const request: RequestFn = async (path, body = {}, timeoutMs = clusterRequestTimeoutMs) => {
    const deadline = Date.now() + timeoutMs
    let lastErrors: Array<string> = []
    for (;;) {
      const available = handles.filter((handle) => handle.available())
      lastErrors = available.length === 0 ? ["no member is running and unpaused"] : []
      for (const handle of available) {
        const left = deadline - Date.now()
        if (left <= 0) break
        try {
          return await handle.face.request(path, body, Math.min(left, clusterAttemptTimeoutMs))
        } catch (error) {
          if (!retryable(error)) throw error
          lastErrors.push(`${handle.face.name}: ${messageOf(error)}`)
        }
      }
      if (deadline - Date.now() <= 0) {
        throw new EtcdRequestError(
          `etcd ${path}: no member of the cluster succeeded within ${timeoutMs} ms; last errors: ${lastErrors.join("; ")}`,
          { url: members.map((member) => member.clientUrl).join(","), path }
        )
      }
      await sleep(50)
    }
  }
  return {
    ...makeClient(request),
    endpoints: members.map((member) => member.clientUrl),
    members,
    dir,
    leader: async (timeoutMs = settings.readyTimeoutMs) => {
      const deadline = Date.now() + timeoutMs
      let last = "not asked yet"
      for (;;) {
        const left = deadline - Date.now()
        if (left <= 0) throw new Error(`the etcd cluster had no leader within ${timeoutMs} ms: ${last}`)
        const answers: ReadonlyArray<Answer<EtcdMember>> = await Promise.all(
          handles
            .filter((handle) => handle.available())
            .map(({ face }) =>
              face.status(Math.min(left, 1_000)).then(
                (status) => ({ name: face.name, member: face, status }),
                (error: unknown) => ({ name: face.name, error })
              )
            )
        )
        let term = -1
        for (const answer of answers) if ("status" in answer) term = Math.max(term, answer.status.raftTerm)
        const claimants = answers.flatMap((answer) =>
          "status" in answer && answer.status.isLeader && answer.status.raftTerm === term && answer.member
            ? [answer.member]
            : []
        )
        const [leader] = claimants
        if (claimants.length === 1 && leader !== undefined) return leader
        last = describeAnswers(answers)
        await sleep(50)
      }
    },
    stop: () =>
      (stopping ??= (async () => {
        stopped = true
        await Promise.all(handles.map((handle) => handle.shutdown()))
        for (const member of layout.members) {
          releasePort(member.clientPort)
          releasePort(member.peerPort)
        }
        await removeDir(dir)
      })())
  }
}
