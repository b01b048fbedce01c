// Tunnels (`berth agent --tunnel`): the pure parts shared by the agent and the server. The front
// door dials a local endpoint on the server (one loopback address per tunneled upstream, all on
// one port); the server asks the agent over its WebSocket to open stream N to that upstream; the
// agent dials the upstream and opens one data connection of its own to the server's agent
// listener for that stream, authenticated with its key. After the handshake the connection is
// raw bytes both ways, so TCP's own flow control keeps streams apart. An agent also keeps a few
// data connections open ahead of need (X-Berth-Stream: pool); the server then writes the same
// open request as one JSON line first on such a connection instead of on the WebSocket, and the
// agent checks it exactly as it checks one from the WebSocket.
import { isIP } from 'node:net';
import { canonicalIp } from './cidr.js';
import type { Snapshot } from './types.js';

/** Where data connections go: an HTTP/1.1 upgrade on the agent listener (or --api-listen when plain). */
export const TUNNEL_PATH = '/agent/v1/tunnel';
/** The Upgrade token of a data connection. */
export const TUNNEL_UPGRADE = 'berth-tunnel/1';
export const DEFAULT_TUNNEL_MAX_STREAMS = 1024;
/** What an agent may ask for at most with --tunnel-max-streams (and the server allows at most). */
export const MAX_TUNNEL_STREAMS = 65_536;
/** Data connections an agent keeps open ahead of need, so that a new stream costs no handshake. */
export const TUNNEL_POOL = 4;
/** Idle pre-opened data connections the server keeps per agent at most. */
export const MAX_TUNNEL_POOL = 16;
/**
 * Sent by an agent on its WebSocket upgrade: it names the welcome's tunnel session on its data
 * connections. The server then takes a data connection only with the session token of the
 * agent's current WebSocket, so that another agent enrolled with the same key cannot answer for
 * its streams or park connections in its pool, and an old connection cannot answer for a new one.
 */
export const TUNNEL_SESSIONS_HEADER = 'x-berth-tunnel-sessions';
/** A data connection's session token (the welcome's `tunnel.session`). */
export const TUNNEL_SESSION_HEADER = 'x-berth-tunnel-session';
/** What a session token looks like: base64url, 32 characters (24 random bytes). */
export const TUNNEL_SESSION_RE = /^[A-Za-z0-9_-]{32}$/;
/** X-Berth-Stream of a pre-opened data connection (else the stream id it answers). */
export const POOL_STREAM = 'pool';
/** The open request the server writes first on a pre-opened connection: one JSON line, at most this long. */
export const MAX_OPEN_LINE = 1024;
/** A stream the agent has not answered for this long is given up (its front connection reset). */
export const TUNNEL_OPEN_TIMEOUT_MS = 10_000;
/** The server's local endpoints: 127.77.0.1 – 127.77.255.254, one per tunneled upstream. */
export const TUNNEL_NET = '127.77.0.0/16';
const TUNNEL_PREFIX = '127.77.';
const STREAM_ID_RE = /^[1-9][0-9]{0,15}$/;

/** Whether `host` is one of the server's tunnel endpoint addresses, however it is spelled (no route may name one). */
export function isTunnelAddress(host: string): boolean {
  return (canonicalIp(host) ?? '').startsWith(TUNNEL_PREFIX);
}

/** A stream id as it travels in a header: a positive decimal integer, or undefined. */
export function parseStreamId(v: unknown): number | undefined {
  const s = Array.isArray(v) ? v[0] : v;
  if (typeof s !== 'string' || !STREAM_ID_RE.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** An upstream as the agent compares it: the address in its one spelling (a name as it is, lower case). */
const target = (host: string, port: number) =>
  `${canonicalIp(host) ?? host.replace(/^\[|\]$/g, '').toLowerCase()}:${port}`;

/**
 * The upstreams a tunnel agent may dial: exactly those its own current routes name (HTTP and
 * TCP). A request for anything else is refused, so the server side cannot use the agent as a
 * relay into its network.
 */
export function tunnelTargets(s: Pick<Snapshot, 'routes' | 'tcp'> | undefined): Set<string> {
  const out = new Set<string>();
  if (!s) return out;
  for (const r of s.routes) out.add(target(r.upstream.host, r.upstream.port));
  for (const r of s.tcp ?? []) out.add(target(r.upstream.host, r.upstream.port));
  return out;
}

/** Why the agent refuses to dial host:port for the server, or undefined when it is its own route's. */
export function tunnelRefusal(targets: ReadonlySet<string>, host: string, port: number): string | undefined {
  // Only an address: the agent never resolves a name for the server (a name could go anywhere).
  if (isIP(host) === 0)
    return `${host} is not an IP address; a tunnel agent dials only its own routes' upstream addresses`;
  if (targets.has(target(host, port))) return undefined;
  return `${host.includes(':') ? `[${host}]` : host}:${port} is not the upstream of any route of this agent; a tunnel agent dials only its own routes' upstreams`;
}

export interface Endpoint {
  host: string;
  port: number;
}

/** What admission needs: the local endpoint of each of a tunnel agent's upstreams. */
export interface TunnelEndpoints {
  /** Endpoints for exactly these upstreams of the agent (others it had are released). */
  endpoints(
    agentId: string,
    upstreams: readonly { host: string; port: number }[],
    maxStreams: number,
  ): (host: string, port: number) => Endpoint | undefined;
}

/**
 * Which local endpoint carries which agent's upstream: one address of TUNNEL_NET per (agent,
 * upstream), all on one port. Addresses are handed out round-robin, so one just released is the
 * last to be given again (a front door's idle connections to it are gone by then). Pure: the
 * listeners are the broker's.
 */
export class EndpointTable {
  private readonly byKey = new Map<string, { index: number; agentId: string; upstream: Endpoint }>();
  private readonly byIndex = new Map<number, { agentId: string; upstream: Endpoint }>();
  private cursor = 0;
  static readonly SIZE = 256 * 256 - 2;

  constructor(readonly port: number) {}

  static key(agentId: string, host: string, port: number): string {
    return `${agentId}\u0000${target(host, port)}`;
  }

  static address(index: number): string {
    // index 0 → 127.77.0.1 … index SIZE-1 → 127.77.255.254 (on loopback, .0 and .255 inside are plain addresses).
    const n = index + 1;
    return `${TUNNEL_PREFIX}${n >> 8}.${n & 255}`;
  }

  /** The endpoint of an agent's upstream, allocated if new; undefined when every address is taken. */
  get(
    agentId: string,
    host: string,
    port: number,
  ): (Endpoint & { index: number; fresh: boolean }) | undefined {
    const key = EndpointTable.key(agentId, host, port);
    const e = this.byKey.get(key);
    if (e) return { host: EndpointTable.address(e.index), port: this.port, index: e.index, fresh: false };
    if (this.byIndex.size >= EndpointTable.SIZE) return undefined;
    while (this.byIndex.has(this.cursor)) this.cursor = (this.cursor + 1) % EndpointTable.SIZE;
    const index = this.cursor;
    this.cursor = (this.cursor + 1) % EndpointTable.SIZE;
    const entry = { index, agentId, upstream: { host, port } };
    this.byKey.set(key, entry);
    this.byIndex.set(index, entry);
    return { host: EndpointTable.address(index), port: this.port, index, fresh: true };
  }

  /** Releases an agent's endpoints whose upstream is not in `keep` (keys); returns their indexes. */
  release(agentId: string, keep: ReadonlySet<string> = new Set()): number[] {
    const out: number[] = [];
    for (const [k, e] of this.byKey) {
      if (e.agentId !== agentId || keep.has(k)) continue;
      this.byKey.delete(k);
      this.byIndex.delete(e.index);
      out.push(e.index);
    }
    return out;
  }

  /** Whose upstream an endpoint index carries. */
  owner(index: number): { agentId: string; upstream: Endpoint } | undefined {
    return this.byIndex.get(index);
  }

  get size(): number {
    return this.byKey.size;
  }
}
