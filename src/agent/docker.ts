// The agent's view of Docker: everything else sees ContainerInfo and plain events. The calls go
// through a minimal Engine API client of our own (docker-engine.ts), not dockerode.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { isContainerRef } from '../model/server-protocol.js';
import type { ContainerInfo, PortBinding } from '../model/types.js';
import { EngineClient, EngineError, engineTarget, FrameDemuxer, JsonLineSplitter } from './docker-engine.js';
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

const CALL_TIMEOUT_MS = 30_000;
/** A hung Docker call must not stall the watcher forever; it counts as a lost connection. */
const call = { timeoutMs: CALL_TIMEOUT_MS };

const q = (filters: Record<string, string[]>) => encodeURIComponent(JSON.stringify(filters));

export function createDockerSource(endpoint: string): DockerSource {
  const docker = new EngineClient(engineTarget(endpoint));
  const get = <T>(path: string, what: string) => docker.json<T>(path, what, call);
  // Exposed ports and creation time never change for a container id: inspect each once.
  const inspected = new Map<string, { exposed: number[] }>();

  return {
    endpoint,
    async list() {
      const raw = await get<RawContainer[]>('/containers/json', 'list containers');
      const seen = new Set<string>();
      const out: ContainerInfo[] = [];
      for (const c of raw) {
        seen.add(c.Id);
        let extra = inspected.get(c.Id);
        if (!extra) {
          try {
            checkRef(c.Id);
            const info = await get<RawInspect>(`/containers/${c.Id}/json`, 'inspect container');
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
      const res = await docker.stream(
        `/events?filters=${q({ type: ['container', 'service', 'node'] })}`,
        'events',
        call,
      );
      let ended = false;
      const end = (err?: Error) => {
        if (ended) return;
        ended = true;
        res.destroy();
        onEnd(err);
      };
      const lines = new JsonLineSplitter((v) => {
        const e = (v ?? {}) as RawEvent;
        onEvent({
          type: str(e.Type ?? e.type),
          action: str(e.Action ?? e.status),
          id: str(e.Actor?.ID ?? e.id),
        });
      });
      res.on('data', (chunk: Buffer) => {
        if (ended) return;
        try {
          lines.push(chunk);
        } catch (err) {
          // Reconnecting re-lists everything, which repairs whatever the bad line meant.
          end(new Error(`docker events: ${(err as Error).message}`));
        }
      });
      res.on('end', () => end());
      res.on('close', () => end());
      res.on('error', (err: Error) => end(err));
      return () => {
        ended = true;
        res.destroy();
      };
    },
    async version() {
      return str((await get<{ Version?: string }>('/version', 'version')).Version);
    },
    async swarm() {
      const info = await get<DockerInfo>('/info', 'info');
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
      const nodes = await get<RawNode[]>('/nodes', 'list nodes');
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
        get<RawService[]>('/services', 'list services'),
        get<RawTask[]>(`/tasks?filters=${q({ 'desired-state': ['running'] })}`, 'list tasks'),
        get<{ Id: string; Name: string }[]>('/networks', 'list networks'),
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
        const info = await get<RawInspect>(`/containers/${ref}/json`, 'inspect container');
        return {
          id: info.Id,
          name: (info.Name ?? '').replace(/^\//, ''),
          labels: info.Config?.Labels ?? {},
          running: Boolean(info.State?.Running),
        };
      } catch (err) {
        if (err instanceof EngineError && err.statusCode === 404) return undefined;
        throw err;
      }
    },
    async exec(containerId, argv, onOutput) {
      checkRef(containerId);
      const created = await docker.json<{ Id?: string }>(`/containers/${containerId}/exec`, 'create exec', {
        ...call,
        method: 'POST',
        body: { Cmd: argv, AttachStdout: true, AttachStderr: true, AttachStdin: false, Tty: false },
      });
      const execId = str(created?.Id);
      // The id goes into paths: only what Docker issues (hex) is used.
      if (!/^[0-9a-f]{1,128}$/.test(execId))
        throw new Error(`docker create exec: unexpected exec id ${JSON.stringify(execId.slice(0, 80))}`);
      const { stream, head } = await docker.hijack(`/exec/${execId}/start`, 'start exec', {
        ...call,
        method: 'POST',
        body: { Detach: false, Tty: false },
      });
      const inspectExec = () =>
        get<{ Running?: boolean; ExitCode?: number | null; Pid?: number }>(
          `/exec/${execId}/json`,
          'inspect exec',
        );
      const done = pipeExec(stream, head, onOutput, inspectExec);
      return {
        async hostPid() {
          try {
            return (await inspectExec()).Pid || undefined;
          } catch {
            return undefined;
          }
        },
        done,
      };
    },
  };
}

/**
 * Exec output through the demuxer to `onOutput` until the stream ends, then Docker's exit code. A
 * malformed stream ends the output with a line on stderr that says what was wrong.
 */
function pipeExec(
  stream: Duplex | IncomingMessage,
  head: Buffer | undefined,
  onOutput: (stream: 'stdout' | 'stderr', chunk: Buffer) => void,
  inspectExec: () => Promise<{ Running?: boolean; ExitCode?: number | null }>,
): Promise<{ exitCode: number | null }> {
  const emit = (name: 'stdout' | 'stderr', chunk: Buffer) => {
    try {
      onOutput(name, chunk);
    } catch {
      // the consumer's problem; an error here would be an unhandled stream error
    }
  };
  const demux = new FrameDemuxer(emit);
  let broken = false;
  const feed = (chunk: Buffer) => {
    if (broken) return;
    try {
      demux.push(chunk);
    } catch (err) {
      broken = true;
      emit('stderr', Buffer.from(`berth: docker exec output: ${(err as Error).message}\n`));
      stream.destroy();
    }
  };
  return new Promise((resolve) => {
    let finishing = false;
    const finish = async () => {
      if (finishing) return; // end, close and error can all fire
      finishing = true;
      if (!broken) {
        try {
          demux.end();
        } catch (err) {
          emit('stderr', Buffer.from(`berth: docker exec output: ${(err as Error).message}\n`));
        }
      }
      // The stream can end a moment before Docker records the exit.
      for (let i = 0; i < 25; i++) {
        try {
          const info = await inspectExec();
          if (!info.Running) return resolve({ exitCode: info.ExitCode ?? null });
        } catch {
          return resolve({ exitCode: null });
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      resolve({ exitCode: null });
    };
    stream.on('data', feed);
    stream.on('end', finish);
    stream.on('close', finish);
    stream.on('error', finish);
    // Bytes that came with the 101 answer are the stream's first (nothing is ever written to it).
    if (head && head.length > 0) feed(head);
  });
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');

function checkRef(ref: unknown): void {
  if (!isContainerRef(ref)) {
    throw new Error(`${JSON.stringify(String(ref).slice(0, 80))} is not a Docker container id or name`);
  }
}

function exposedPorts(exposed: Record<string, unknown> | undefined): number[] {
  const ports: number[] = [];
  for (const k of Object.keys(exposed ?? {})) {
    const [port, proto] = k.split('/');
    if ((proto ?? 'tcp') === 'tcp' && port && /^\d+$/.test(port)) ports.push(Number(port));
  }
  return ports.sort((a, b) => a - b);
}

function toInfo(c: RawContainer, exposed: number[]): ContainerInfo {
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

/** GET /containers/json: the fields read here. */
interface RawContainer {
  Id: string;
  Names?: string[];
  Created: number;
  Labels?: Record<string, string>;
  State?: string;
  Status?: string;
  HostConfig?: { NetworkMode?: string };
  NetworkSettings?: { Networks?: Record<string, { IPAddress?: string }> };
  Ports?: { PrivatePort: number; PublicPort?: number; Type?: string; IP?: string }[];
}

/** GET /containers/{id}/json: the fields read here. */
interface RawInspect {
  Id: string;
  Name?: string;
  Config?: { Labels?: Record<string, string>; ExposedPorts?: Record<string, unknown> };
  State?: { Running?: boolean };
}

interface RawEvent {
  Type?: unknown;
  type?: unknown;
  Action?: unknown;
  status?: unknown;
  id?: unknown;
  Actor?: { ID?: unknown };
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
