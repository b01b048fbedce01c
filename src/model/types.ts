// Shared data model: what an agent observes and reports, and what the server decides.
// Everything here is plain JSON so the same values cross the in-process link and the wire.

/** One container as an agent sees it, reduced to what routing needs. */
export interface ContainerInfo {
  id: string;
  name: string;
  /** Unix seconds; the oldest claim wins a conflict, so creation time is part of identity. */
  created: number;
  labels: Record<string, string>;
  state: string; // running, exited, …
  health: 'none' | 'starting' | 'healthy' | 'unhealthy';
  networkMode: string;
  /** Container IP per network name. */
  networks: Record<string, string>;
  /** Published ports: container port → host binding. */
  ports: PortBinding[];
  /** Exposed container ports (from the image and `--expose`), e.g. [80, 443]. */
  exposed: number[];
}

export interface PortBinding {
  privatePort: number;
  publicPort?: number;
  /** Binding address on the host ('' or 0.0.0.0 / :: for all). */
  ip?: string;
  type: 'tcp' | 'udp' | 'sctp';
}

export type Severity = 'error' | 'warning';

/** A finding about one container's labels. Errors mean the container contributes no route. */
export interface Diagnostic {
  severity: Severity;
  containerId: string;
  containerName: string;
  /** The label key at fault (or '' for container-level findings). */
  label: string;
  value?: string;
  message: string;
}

/** How the front door talks to an upstream: HTTP/1.1 or HTTP/2 over TLS, or HTTP/2 in the clear. */
export type UpstreamScheme = 'http' | 'https' | 'h2c';

export interface Upstream {
  host: string;
  port: number;
  scheme: UpstreamScheme;
  /**
   * Set by the server, never by an agent: for an https upstream of a tunnel agent (whose host is
   * then this server's local endpoint), the address the agent dials, which the front door checks
   * the upstream's certificate against instead of the endpoint's.
   */
  tlsServerName?: string;
}

/** One HTTP route extracted from one container's labels. */
export interface RouteSpec {
  /** Stable id: `<containerId>/<group>`; unique within one agent. */
  id: string;
  /** Label group: 'default' for `berth.host`, else the `<group>` in `berth.<group>.host`. */
  group: string;
  hosts: string[];
  /** Path prefix, always starting with '/'; '/' means every path. */
  path: string;
  stripPath: boolean;
  upstream: Upstream;
  /** Client networks (CIDR) allowed to reach the route; absent means everyone. */
  allow?: string[];
  /** Load-balancing group: routes with the same host+path and the same lbGroup share traffic. */
  lbGroup?: string;
  containerId: string;
  containerName: string;
  containerCreated: number;
  /** Why this route is present but must not serve yet (e.g. health: starting). */
  notReady?: string;
  /** Set on routes read from a Swarm service's labels (by the agent on the swarm's leader). */
  swarm?: SwarmRouteSource;
}

/** Which service, and which of its tasks on which node, a service route sends traffic to. */
export interface SwarmRouteSource {
  serviceId: string;
  service: string;
  /** The task (absent with --swarm-upstream vip: the route goes to the service's VIP). */
  task?: string;
  /** The Swarm node id that runs the task. */
  node?: string;
}

/** What an agent knows of the swarm its engine is part of (absent when not in one). */
export interface SwarmInfo {
  clusterId: string;
  nodeId: string;
  /** The node's hostname, as `docker node ls` shows it. */
  nodeName: string;
  manager: boolean;
  /** This node is the raft leader: only its agent reports services. */
  leader: boolean;
  /** Leader only: every node of the swarm. */
  nodes?: SwarmNodeSummary[];
  /** Leader only: every service, with routing labels or not. */
  services?: ServiceSummary[];
  /**
   * Server-side only, never taken from an agent: when the server first saw this agent as leader,
   * and since when it holds a former leader's service routes until the new leader speaks.
   */
  leaderSince?: number;
  heldSince?: number;
}

export interface SwarmNodeSummary {
  id: string;
  hostname: string;
  addr: string;
  state: string;
}

export interface ServiceSummary {
  id: string;
  name: string;
  /** Running tasks the service's routes go to (desired and current state running). */
  tasks: { id: string; slot?: number; node: string; state: string }[];
  labelled: boolean;
  explain?: Explanation;
}

/** One TCP route: a front-door port forwarded to one container port. */
export interface TcpRouteSpec {
  /** Stable id: `<containerId>/tcp/<name>`. */
  id: string;
  /** The `<name>` in `berth.tcp.<name>.listen`. */
  name: string;
  /** Front-door port. */
  listen: number;
  upstream: { host: string; port: number };
  /** Client networks (CIDR) allowed to connect; empty means everyone. */
  allow: string[];
  lbGroup?: string;
  containerId: string;
  containerName: string;
  containerCreated: number;
  notReady?: string;
}

/** An agent's whole view of its host. The server replaces its previous one; never deltas. */
export interface Snapshot {
  agentId: string;
  generation: number;
  hostIp: string;
  takenAt: number; // ms since epoch
  containers: ContainerSummary[];
  routes: RouteSpec[];
  /** TCP routes (absent from agents older than TCP support). */
  tcp?: TcpRouteSpec[];
  diagnostics: Diagnostic[];
  /** The swarm this agent's engine is part of, and on the leader its services. */
  swarm?: SwarmInfo;
  /**
   * `berth agent --tunnel`: the front door reaches this agent's upstreams only through streams the
   * agent opens to the server; the upstreams are addresses on the agent's side.
   */
  tunnel?: { maxStreams: number };
  /**
   * Server-side only, never taken from an agent: when the server first saw each of the agent's
   * claims (`host\u0000path` or `tcp:<port>`), which orders competing claims.
   */
  claims?: Record<string, ClaimRecord>;
}

/** One (host, path) or TCP port an agent claims, and since when (server time). */
export interface ClaimRecord {
  since: number;
  /** When the agent stopped claiming it; remembered for a while so a container being recreated keeps its place. */
  releasedAt?: number;
}

export interface ContainerSummary {
  id: string;
  name: string;
  /** Swarm service (or compose service) the container is a task of: exec can target it by name. */
  service?: string;
  /** The Swarm task the container runs (com.docker.swarm.task.id): the leader's routes to it are checked against it. */
  task?: string;
  /** Exec rules that apply to this container on its host (labels and the agent's policy file). */
  execRules?: string[];
  state: string;
  health: ContainerInfo['health'];
  labelled: boolean;
  /** How the container's routing labels were read (only for labelled containers), for `berth explain`. */
  explain?: Explanation;
}

/** What became of a label: it shaped a route, was read for something else, was left alone, or is wrong. */
export type LabelUse = 'route' | 'used' | 'ignored' | 'error';

export interface LabelExplanation {
  key: string;
  value: string;
  use: LabelUse;
  note?: string;
}

/** The dialect a container was read in, and each of its routing labels. */
export interface Explanation {
  /** berth, caddy, traefik or dockflare. */
  dialect: string;
  labels: LabelExplanation[];
}

export type { RouteStatus, RouteView } from './api.js';
