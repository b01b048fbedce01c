// The only file that imports dockerode: everything else sees ContainerInfo and plain events.
import { Writable } from 'node:stream';
import Docker from 'dockerode';
import { isContainerRef } from '../model/server-protocol.js';
import type { ContainerInfo, PortBinding } from '../model/types.js';
import type { SwarmPort, SwarmService, SwarmState, SwarmTask } from './swarm.js';

export interface DockerEvent {
  type: string;
  action: string;
  id: string;
}

export interface DockerSource {
  readonly endpoint: string;
  /** Running (and paused) containers, fully described. */
  list(): Promise<ContainerInfo[]>;
  /** Streams events until the connection ends; `onEnd` fires once, with the reason if any. */
  events(onEvent: (e: DockerEvent) => void, onEnd: (err?: Error) => void): Promise<() => void>;
  version(): Promise<string>;
  /**
   * The swarm this engine is part of, if any; on the leader also its nodes, services and running
   * tasks (a manager that is not the leader reports who it is, nothing more).
   */
  swarm?(): Promise<SwarmState | undefined>;
  /**
   * One container by id or name, fresh from Docker (for exec policy: never trust a cache). A ref
   * that is not a Docker id or name is refused before any call: it would become another path.
   */
  inspect(
    ref: string,
  ): Promise<{ id: string; name: string; labels: Record<string, string>; running: boolean } | undefined>;
  /** Starts argv in the container (no shell, no TTY, no stdin) and streams its output. */
  exec(
    containerId: string,
    argv: string[],
    onOutput: (stream: 'stdout' | 'stderr', chunk: Buffer) => void,
  ): Promise<ExecHandle>;
}

export interface ExecHandle {
  /** The process's PID on the host, once Docker reports it. */
  hostPid(): Promise<number | undefined>;
  /** Resolves when the output stream ends, with Docker's exit code. */
  done: Promise<{ exitCode: number | null }>;
}

/** `--docker` / DOCKER_HOST → dockerode options. */
export function dockerOptions(endpoint: string): Docker.DockerOptions {
  if (endpoint.startsWith('unix://')) return { socketPath: endpoint.slice('unix://'.length) };
  if (endpoint.startsWith('/')) return { socketPath: endpoint };
  const u = new URL(endpoint.replace(/^tcp:/, 'http:'));
  return {
    host: u.hostname,
    port: Number(u.port || (u.protocol === 'https:' ? 2376 : 2375)),
    protocol: u.protocol === 'https:' ? 'https' : 'http',
  };
}

export function createDockerSource(endpoint: string): DockerSource {
  // No client-wide timeout: it would also cut the event stream after 30 s without events.
  const docker = new Docker(dockerOptions(endpoint));
  // Exposed ports and creation time never change for a container id: inspect each once.
  const inspected = new Map<string, { exposed: number[] }>();

  return {
    endpoint,
    async list() {
      const raw = await withTimeout(docker.listContainers({ all: false }), 'list containers');
      const seen = new Set<string>();
      const out: ContainerInfo[] = [];
      for (const c of raw) {
        seen.add(c.Id);
        let extra = inspected.get(c.Id);
        if (!extra) {
          try {
            const info = await withTimeout(docker.getContainer(c.Id).inspect(), 'inspect container');
            extra = { exposed: exposedPorts(info.Config?.ExposedPorts) };
            inspected.set(c.Id, extra);
          } catch {
            continue; // gone between list and inspect: the next pass settles it
          }
        }
        out.push(toInfo(c, extra.exposed));
      }
      for (const id of inspected.keys()) if (!seen.has(id)) inspected.delete(id);
      return out;
    },
    async events(onEvent, onEnd) {
      // Services and nodes change on managers; tasks have no events of their own (the watcher polls them).
      const stream = (await docker.getEvents({
        filters: { type: ['container', 'service', 'node'] },
      })) as NodeJS.ReadableStream & {
        destroy?: () => void;
      };
      let buf = '';
      let ended = false;
      const end = (err?: Error) => {
        if (ended) return;
        ended = true;
        onEnd(err);
      };
      stream.on('data', (chunk: Buffer) => {
        buf += chunk.toString('utf8');
        let i = buf.indexOf('\n');
        while (i >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          i = buf.indexOf('\n');
          if (!line) continue;
          try {
            const e = JSON.parse(line);
            onEvent({
              type: e.Type ?? e.type ?? '',
              action: e.Action ?? e.status ?? '',
              id: e.Actor?.ID ?? e.id ?? '',
            });
          } catch {
            // a torn line cannot happen with newline framing; ignore garbage rather than die
          }
        }
      });
      stream.on('end', () => end());
      stream.on('close', () => end());
      stream.on('error', (err: Error) => end(err));
      return () => {
        ended = true;
        stream.destroy?.();
      };
    },
    async version() {
      const v = await withTimeout(docker.version(), 'version');
      return v.Version;
    },
    async swarm() {
      const info = (await withTimeout(docker.info(), 'info')) as DockerInfo;
      const sw = info.Swarm;
      if (sw?.LocalNodeState !== 'active' || !sw.NodeID) return undefined;
      const state: SwarmState = {
        clusterId: sw.Cluster?.ID ?? '',
        nodeId: sw.NodeID,
        nodeName: info.Name ?? '',
        manager: Boolean(sw.ControlAvailable),
        leader: false,
        nodes: [],
        services: [],
        tasks: [],
      };
      if (!state.manager) return state;
      const nodes = (await withTimeout(docker.listNodes(), 'list nodes')) as RawNode[];
      state.nodes = nodes.map((n) => ({
        id: n.ID,
        hostname: n.Description?.Hostname ?? '',
        addr: n.Status?.Addr ?? '',
        state: n.Status?.State ?? '',
        leader: Boolean(n.ManagerStatus?.Leader),
      }));
      const self = state.nodes.find((n) => n.id === state.nodeId);
      if (self?.hostname) state.nodeName = self.hostname;
      state.leader = Boolean(self?.leader);
      if (!state.leader) return state;
      const [services, tasks, networks] = await Promise.all([
        withTimeout(docker.listServices(), 'list services') as Promise<RawService[]>,
        withTimeout(docker.listTasks({ filters: { 'desired-state': ['running'] } }), 'list tasks') as Promise<
          RawTask[]
        >,
        withTimeout(docker.listNetworks(), 'list networks') as Promise<{ Id: string; Name: string }[]>,
      ]);
      const netName = new Map(networks.map((n) => [n.Id, n.Name]));
      for (const t of tasks)
        for (const a of t.NetworksAttachments ?? [])
          if (a.Network?.ID && a.Network.Spec?.Name) netName.set(a.Network.ID, a.Network.Spec.Name);
      state.services = services.map((s) => toService(s, netName));
      state.tasks = tasks.map(toTask);
      return state;
    },
    async inspect(ref) {
      checkRef(ref);
      try {
        const info = await withTimeout(docker.getContainer(ref).inspect(), 'inspect container');
        return {
          id: info.Id,
          name: info.Name.replace(/^\//, ''),
          labels: info.Config?.Labels ?? {},
          running: Boolean(info.State?.Running),
        };
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode === 404) return undefined;
        throw err;
      }
    },
    async exec(containerId, argv, onOutput) {
      checkRef(containerId);
      const exec = await withTimeout(
        docker
          .getContainer(containerId)
          .exec({ Cmd: argv, AttachStdout: true, AttachStderr: true, AttachStdin: false, Tty: false }),
        'create exec',
      );
      const stream = await withTimeout(exec.start({ hijack: true, stdin: false }), 'start exec');
      const sink = (name: 'stdout' | 'stderr') =>
        new Writable({
          write(chunk: Buffer, _enc, cb) {
            try {
              onOutput(name, chunk);
            } catch {
              // the consumer's problem; an error here would be an unhandled stream error
            }
            cb();
          },
        });
      docker.modem.demuxStream(stream, sink('stdout'), sink('stderr'));
      const done = new Promise<{ exitCode: number | null }>((resolve) => {
        let finishing = false;
        const finish = async () => {
          if (finishing) return; // end, close and error can all fire
          finishing = true;
          // The stream can end a moment before Docker records the exit.
          for (let i = 0; i < 25; i++) {
            try {
              const info = await exec.inspect();
              if (!info.Running) return resolve({ exitCode: info.ExitCode ?? null });
            } catch {
              return resolve({ exitCode: null });
            }
            await new Promise((r) => setTimeout(r, 20));
          }
          resolve({ exitCode: null });
        };
        stream.on('end', finish);
        stream.on('close', finish);
        stream.on('error', finish);
      });
      return {
        async hostPid() {
          try {
            return (await exec.inspect()).Pid || undefined;
          } catch {
            return undefined;
          }
        },
        done,
      };
    },
  };
}

const CALL_TIMEOUT_MS = 30_000;

function checkRef(ref: unknown): void {
  if (!isContainerRef(ref)) {
    throw new Error(`${JSON.stringify(String(ref).slice(0, 80))} is not a Docker container id or name`);
  }
}

/** A hung Docker call must not stall the watcher forever; it counts as a lost connection. */
function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`docker ${what} timed out after ${CALL_TIMEOUT_MS} ms`)),
      CALL_TIMEOUT_MS,
    );
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function exposedPorts(exposed: Record<string, unknown> | undefined): number[] {
  const ports: number[] = [];
  for (const k of Object.keys(exposed ?? {})) {
    const [port, proto] = k.split('/');
    if ((proto ?? 'tcp') === 'tcp' && port && /^\d+$/.test(port)) ports.push(Number(port));
  }
  return ports.sort((a, b) => a - b);
}

function toInfo(c: Docker.ContainerInfo, exposed: number[]): ContainerInfo {
  const networks: Record<string, string> = {};
  for (const [name, n] of Object.entries(c.NetworkSettings?.Networks ?? {}))
    networks[name] = n.IPAddress ?? '';
  const ports: PortBinding[] = (c.Ports ?? []).map((p) => {
    const b: PortBinding = { privatePort: p.PrivatePort, type: (p.Type as PortBinding['type']) ?? 'tcp' };
    if (p.PublicPort) b.publicPort = p.PublicPort;
    if (p.IP) b.ip = p.IP;
    return b;
  });
  return {
    id: c.Id,
    name: (c.Names?.[0] ?? c.Id.slice(0, 12)).replace(/^\//, ''),
    created: c.Created,
    labels: c.Labels ?? {},
    state: c.State ?? 'running',
    health: healthOf(c.Status ?? ''),
    networkMode: c.HostConfig?.NetworkMode ?? 'default',
    networks,
    ports,
    exposed,
  };
}

function healthOf(status: string): ContainerInfo['health'] {
  if (status.includes('(unhealthy)')) return 'unhealthy';
  if (status.includes('(health: starting)')) return 'starting';
  if (status.includes('(healthy)')) return 'healthy';
  return 'none';
}

interface DockerInfo {
  Name?: string;
  Swarm?: {
    NodeID?: string;
    LocalNodeState?: string;
    ControlAvailable?: boolean;
    Cluster?: { ID?: string };
  };
}

interface RawNode {
  ID: string;
  Description?: { Hostname?: string };
  Status?: { State?: string; Addr?: string };
  ManagerStatus?: { Leader?: boolean };
}

interface RawPort {
  TargetPort?: number;
  PublishedPort?: number;
  PublishMode?: string;
  Protocol?: string;
}

interface RawService {
  ID: string;
  CreatedAt?: string;
  Spec?: {
    Name?: string;
    Labels?: Record<string, string>;
    TaskTemplate?: { Networks?: { Target?: string }[] };
  };
  Endpoint?: { Ports?: RawPort[]; VirtualIPs?: { NetworkID?: string; Addr?: string }[] };
}

interface RawTask {
  ID: string;
  ServiceID: string;
  Slot?: number;
  NodeID?: string;
  DesiredState?: string;
  Status?: { State?: string; ContainerStatus?: { ContainerID?: string }; PortStatus?: { Ports?: RawPort[] } };
  NetworksAttachments?: { Network?: { ID?: string; Spec?: { Name?: string } } }[];
}

function toPorts(ports: RawPort[] | undefined): SwarmPort[] {
  return (ports ?? [])
    .filter((p) => (p.Protocol ?? 'tcp') === 'tcp' && p.TargetPort)
    .map((p) => ({
      target: p.TargetPort!,
      ...(p.PublishedPort ? { published: p.PublishedPort } : {}),
      mode: p.PublishMode === 'host' ? 'host' : 'ingress',
    }));
}

function toService(s: RawService, netName: Map<string, string>): SwarmService {
  const vips: Record<string, string> = {};
  for (const v of s.Endpoint?.VirtualIPs ?? []) {
    const name = v.NetworkID ? netName.get(v.NetworkID) : undefined;
    if (name && v.Addr) vips[name] = v.Addr.replace(/\/\d+$/, '');
  }
  const nets = (s.Spec?.TaskTemplate?.Networks ?? []).map((n) => netName.get(n.Target ?? '') ?? '');
  return {
    id: s.ID,
    name: s.Spec?.Name ?? s.ID,
    created: Math.floor(Date.parse(s.CreatedAt ?? '') / 1000) || 0,
    labels: s.Spec?.Labels ?? {},
    ports: toPorts(s.Endpoint?.Ports),
    vips,
    hostNetwork: nets.includes('host'),
  };
}

function toTask(t: RawTask): SwarmTask {
  return {
    id: t.ID,
    serviceId: t.ServiceID,
    ...(t.Slot ? { slot: t.Slot } : {}),
    nodeId: t.NodeID ?? '',
    state: t.Status?.State ?? '',
    desiredState: t.DesiredState ?? '',
    ...(t.Status?.ContainerStatus?.ContainerID ? { containerId: t.Status.ContainerStatus.ContainerID } : {}),
    ports: toPorts(t.Status?.PortStatus?.Ports),
  };
}
