// Swarm services → routes, on the agent of the swarm's leader. Swarm users put routing labels on
// the service (`deploy.labels` in a stack file), where caddy-docker-proxy and Traefik's Swarm
// provider read them; the tasks that serve may run on any node. Each running task becomes a
// container-like record on its node's address, read by the same label parsers as containers, so
// every dialect means the same on a service as on a container. Pure: docker.ts does the I/O.

import { type ExtractContext, extractRoutes } from '../labels/index.js';
import { localeOrder } from '../model/collation.js';
import { clip, MAX_STRING } from '../model/limits.js';
import type {
  ContainerInfo,
  Diagnostic,
  PortBinding,
  RouteSpec,
  ServiceSummary,
  SwarmInfo,
  SwarmNodeSummary,
  TcpRouteSpec,
} from '../model/types.js';

/** Where a service route's traffic goes: each task on its node (default), or the service's VIP. */
export type SwarmUpstream = 'task' | 'vip';

export interface SwarmPort {
  target: number;
  published?: number;
  mode: 'host' | 'ingress';
}

export interface SwarmService {
  id: string;
  name: string;
  /** Unix seconds: the oldest claim wins a conflict, as for containers. */
  created: number;
  labels: Record<string, string>;
  /** Endpoint ports (published ones, either mode). */
  ports: SwarmPort[];
  /** The service's virtual IPs, by network name (without the prefix length). */
  vips: Record<string, string>;
  /** The service runs with the host's network stack (`--network host`). */
  hostNetwork: boolean;
}

export interface SwarmTask {
  id: string;
  serviceId: string;
  slot?: number;
  nodeId: string;
  state: string;
  desiredState: string;
  containerId?: string;
  /** Host-mode ports the task actually published (Status.PortStatus). */
  ports: SwarmPort[];
}

export interface SwarmNode {
  id: string;
  hostname: string;
  /** Status.Addr: the address the node is reached at. */
  addr: string;
  state: string;
  leader: boolean;
}

/** What the agent read from a swarm manager (services and tasks only on the leader). */
export interface SwarmState {
  clusterId: string;
  nodeId: string;
  nodeName: string;
  manager: boolean;
  leader: boolean;
  nodes: SwarmNode[];
  services: SwarmService[];
  tasks: SwarmTask[];
}

export interface ServiceRoutes {
  swarm: SwarmInfo;
  routes: RouteSpec[];
  tcp: TcpRouteSpec[];
  diagnostics: Diagnostic[];
}

/** Tasks that take traffic: running, and not told to stop (a task leaves as soon as Swarm shuts it down). */
export function servingTask(t: SwarmTask): boolean {
  return t.state === 'running' && t.desiredState === 'running';
}

/**
 * The leader's view of its swarm: routes for every service with routing labels, one per running
 * task on that task's node (`task`), or one to the service's VIP (`vip`). Not the leader: only
 * who it is (the server keeps the leader's view; two speakers would flap).
 */
export function serviceRoutes(
  state: SwarmState,
  ctx: ExtractContext,
  mode: SwarmUpstream = 'task',
): ServiceRoutes {
  const swarm: SwarmInfo = {
    clusterId: clip(state.clusterId, MAX_STRING),
    nodeId: clip(state.nodeId, MAX_STRING),
    nodeName: clip(state.nodeName, MAX_STRING),
    manager: state.manager,
    leader: state.leader,
  };
  const out: ServiceRoutes = { swarm, routes: [], tcp: [], diagnostics: [] };
  if (!state.leader) return out;
  const nodes = new Map(state.nodes.map((n) => [n.id, n]));
  swarm.nodes = state.nodes.map(
    (n): SwarmNodeSummary => ({
      id: clip(n.id, MAX_STRING),
      hostname: clip(n.hostname, MAX_STRING),
      addr: clip(n.addr, MAX_STRING),
      state: clip(n.state, MAX_STRING),
    }),
  );
  const byService = new Map<string, SwarmTask[]>();
  for (const t of state.tasks) {
    if (!servingTask(t)) continue;
    const list = byService.get(t.serviceId) ?? [];
    list.push(t);
    byService.set(t.serviceId, list);
  }
  const summaries: ServiceSummary[] = [];
  for (const svc of [...state.services].sort((a, b) => localeOrder(a.id, b.id))) {
    const tasks = (byService.get(svc.id) ?? []).sort(
      (a, b) => (a.slot ?? 0) - (b.slot ?? 0) || localeOrder(a.id, b.id),
    );
    const summary: ServiceSummary = {
      id: clip(svc.id, MAX_STRING),
      name: clip(svc.name, MAX_STRING),
      tasks: tasks.map((t) => ({
        id: t.id,
        ...(t.slot !== undefined ? { slot: t.slot } : {}),
        node: t.nodeId,
        state: t.state,
      })),
      labelled: false,
    };
    summaries.push(summary);
    const group = `swarm:${state.clusterId}:${svc.id}`;
    const records =
      mode === 'vip' || lbSwarm(svc.labels)
        ? [{ c: vipRecord(svc), hostIp: ctx.hostIp, task: undefined as SwarmTask | undefined }]
        : tasks.map((t) => ({
            c: taskRecord(svc, t),
            // The leader's own tasks are reached where its own containers are; others at their node's address.
            hostIp: t.nodeId === state.nodeId ? ctx.hostIp : (nodes.get(t.nodeId)?.addr ?? ''),
            task: t,
          }));
    // A service without tasks still explains its labels (and says it has nothing to route to).
    const probe = records[0] ?? { c: taskRecord(svc, undefined), hostIp: ctx.hostIp, task: undefined };
    for (const [i, r] of (records.length > 0 ? records : [probe]).entries()) {
      const x = extractRoutes(r.c, { ...ctx, hostIp: r.hostIp });
      if (i === 0) {
        summary.labelled = x.labelled;
        if (x.explain) summary.explain = x.explain;
      }
      if (!x.labelled) break;
      if (records.length === 0) {
        out.diagnostics.push({
          severity: 'warning',
          containerId: summary.id,
          containerName: summary.name,
          label: '',
          message: 'service has routing labels but no running task: nothing to route to',
        });
        break;
      }
      if (r.task && !r.hostIp) {
        out.diagnostics.push({
          severity: 'error',
          containerId: r.c.id,
          containerName: r.c.name,
          label: '',
          message: `task runs on node ${r.task.nodeId}, whose address the swarm does not report`,
        });
        continue;
      }
      const source = {
        serviceId: summary.id,
        service: summary.name,
        ...(r.task ? { task: r.task.id, node: r.task.nodeId } : {}),
      };
      for (const route of x.routes) out.routes.push({ ...route, lbGroup: group, swarm: source });
      for (const t of x.tcp) out.tcp.push({ ...t, lbGroup: group });
      // A task's diagnostics repeat the service's: report them once, on the first.
      if (i === 0) out.diagnostics.push(...x.diagnostics);
    }
  }
  swarm.services = summaries;
  return out;
}

/** Traefik's `lbswarm`: this service is reached at its VIP whatever --swarm-upstream says. */
function lbSwarm(labels: Record<string, string>): boolean {
  return ['traefik.swarm.lbswarm', 'traefik.docker.lbswarm'].some(
    (k) => labels[k]?.trim().toLowerCase() === 'true',
  );
}

/** One task as a container on its node: the service's labels, the task's published ports. */
function taskRecord(svc: SwarmService, t: SwarmTask | undefined): ContainerInfo {
  const published = t && t.ports.length > 0 ? t.ports : svc.ports.filter((p) => p.mode === 'host');
  const ports: PortBinding[] = published
    .filter((p) => p.mode === 'host' && p.published)
    .map((p) => ({ privatePort: p.target, publicPort: p.published, type: 'tcp' }));
  const name = t ? `${svc.name}.${t.slot ?? t.nodeId}` : svc.name;
  return {
    id: t?.id ?? svc.id,
    name,
    created: svc.created,
    labels: { ...svc.labels, 'com.docker.swarm.service.name': svc.name },
    state: 'running',
    health: 'none',
    networkMode: svc.hostNetwork ? 'host' : 'swarm',
    // Only published ports or the host network reach a task from outside its node.
    networks: {},
    ports,
    exposed: [...new Set(svc.ports.map((p) => p.target))].sort((a, b) => a - b),
  };
}

/** The service as one container on its VIPs (the front door must share one of its networks). */
function vipRecord(svc: SwarmService): ContainerInfo {
  return {
    id: svc.id,
    name: svc.name,
    created: svc.created,
    labels: { ...svc.labels, 'com.docker.swarm.service.name': svc.name },
    state: 'running',
    health: 'none',
    networkMode: 'swarm',
    networks: { ...svc.vips },
    ports: [],
    exposed: [...new Set(svc.ports.map((p) => p.target))].sort((a, b) => a - b),
  };
}
