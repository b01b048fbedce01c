// What the API answers, as types only. The server, the CLI and the web UI all use these, so the
// UI (a separate build with DOM types) cannot drift from the API: a declaration file is read by
// both builds and emitted by neither.

export type AgentStatus = 'pending' | 'online' | 'stale' | 'offline' | 'revoked';

/** One agent, as `GET /api/agents` lists it. */
export interface AgentSummary {
  id: string;
  name: string;
  kind: 'local' | 'remote';
  status: AgentStatus;
  approved: boolean;
  keyId?: string;
  keyName?: string;
  hostIp?: string;
  version?: string;
  dockerVersion?: string;
  heartbeatAgeSeconds?: number;
  /** With several replicas: the one holding the agent's connection. */
  replica?: string;
  routes: number;
  containers: number;
  /** Why none of its routes serve, when so. */
  withheld?: string;
  /** Connected without TLS from a non-loopback address: its key and snapshots cross the network in clear. */
  cleartext?: true;
  /** `berth agent --tunnel`: its routes are reached through streams it opens to the server. */
  tunnel?: { maxStreams: number };
}

/** One agent key, as `GET /api/keys` lists it (never its secret). */
export interface KeySummary {
  id: string;
  name: string;
  domains: string[];
  autoApprove: boolean;
  createdAt: string;
  revoked: boolean;
  previousValidUntil?: string;
  execAllow?: string[];
  upstreams?: string[];
  maxRoutes: number;
  maxPending: number;
  agents: number;
}

export type RouteStatus = 'applied' | 'pending' | 'error';

/** A route as the server reports it: spec + owner + what happened to it. */
export interface RouteView {
  id: string;
  agentId: string;
  agentName: string;
  /** 'tcp' for TCP routes, which have `listen` and no hosts or path. */
  kind: 'http' | 'tcp';
  hosts: string[];
  path: string;
  stripPath: boolean;
  listen?: number;
  allow?: string[];
  /** Upstreams as the owning agent names them (for a tunnel agent: the addresses it dials). */
  upstreams: string[];
  /** `tunnel:<agent>` when the front door reaches the upstreams through that agent's tunnel. */
  tunnel?: string;
  container: { id: string; name: string };
  status: RouteStatus;
  errors: string[];
  /** Why a pending route waits (health check, not yet applied). */
  note?: string;
}

/** One container an agent reports, with the exec rules that apply to it there. */
export interface ContainerListing {
  agentId: string;
  agentName: string;
  agentStatus: AgentStatus;
  id: string;
  name: string;
  service?: string;
  execRules?: string[];
  state: string;
  health: string;
  labelled: boolean;
}

/** `GET /api/status`. */
export interface StatusReport {
  version: string;
  uptimeSeconds: number;
  ready: boolean;
  notReady: string[];
  agents: AgentSummary[];
  caddy: Record<string, unknown>[];
  routes: { total: number; applied: number; pending: number; error: number };
  reconcile: Record<string, unknown>;
}

/** One event of the live feed (`GET /api/events`, server-sent). */
export interface BerthEvent {
  id: number;
  at: number;
  type: string;
  message: string;
  data?: Record<string, unknown>;
}

/** One route host's traffic (`GET /api/traffic`), summed over every replica's front door. */
export interface HostTraffic {
  /** The route's host (a wildcard route's pattern), or "other". */
  host: string;
  owners: { agent: string; container: string; path: string }[];
  /** Since each replica started. */
  total: {
    requests: number;
    /** `none`: no response was written (the client left before one). */
    byClass: Record<'none' | '1xx' | '2xx' | '3xx' | '4xx' | '5xx', number>;
    bytesIn: number;
    bytesOut: number;
  };
  /** Over the last minute. */
  now: {
    requestsPerSecond: number;
    errorsPerSecond: number;
    /** 5xx responses / requests, 0..1. */
    errorRate: number;
    p50Ms: number | null;
    p99Ms: number | null;
    bytesInPerSecond: number;
    bytesOutPerSecond: number;
  };
  /** One value per slot (`slotSeconds` each), oldest first, the last slot still filling. */
  series: {
    requestsPerSecond: number[];
    errorsPerSecond: number[];
    p50Ms: (number | null)[];
    p99Ms: (number | null)[];
    bytesInPerSecond: number[];
    bytesOutPerSecond: number[];
  };
}

/** One TCP listener's traffic (connections and bytes are counted when a connection ends). */
export interface TcpTraffic {
  /** The listening port. */
  listener: string;
  active: number;
  total: { connections: number; bytesIn: number; bytesOut: number };
  now: { connectionsPerSecond: number; bytesInPerSecond: number; bytesOutPerSecond: number };
  series: { connectionsPerSecond: number[]; bytesInPerSecond: number[]; bytesOutPerSecond: number[] };
}

/** `GET /api/traffic`. */
export interface TrafficReport {
  at: number;
  /** False when Caddy streams no request lines (`--traffic off`, or a Caddy Berth cannot reach). */
  enabled: boolean;
  slotSeconds: number;
  windowSeconds: number;
  /** The replicas whose figures are summed here (one without a shared store). */
  replicas: { replica: string; at: number; self: boolean }[];
  /** Busiest first (requests per second over the last minute). */
  hosts: HostTraffic[];
  tcp: TcpTraffic[];
}
