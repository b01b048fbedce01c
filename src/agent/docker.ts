// The only file that imports dockerode: everything else sees ContainerInfo and plain events.
import { Writable } from 'node:stream';
import Docker from 'dockerode';
import { isContainerRef } from '../model/server-protocol.js';
import type { ContainerInfo, PortBinding } from '../model/types.js';

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
      const stream = (await docker.getEvents({
        filters: { type: ['container'] },
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
