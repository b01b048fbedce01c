// Wires the server together: store → registry (+ replicas) → reconciler → data plane, the agent
// hub, the exec broker, the API, and for `berth standalone` the in-process agent. Only wiring:
// what each part does is in its own module.
import { mkdirSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ServeConfig } from '../config.js';
import { errorMessage, UserError } from '../errors.js';
import { isLocalCaddyAdmin } from '../ingress/caddy/reload-queue.js';
import type { CaddyTarget } from '../ingress/caddy/target.js';
import { tcpMetrics } from '../metrics.js';
import { type Site, siteSignature } from '../model/desired.js';
import { HostIndex } from '../model/domains.js';
import { inSlices } from '../model/slices.js';
import type { RouteSpec } from '../model/types.js';
import type { Desired } from '../reconcile/desired.js';
import { Reconciler, type ReconcileState, servedEverywhere } from '../reconcile/reconciler.js';
import { openStore } from '../store/open.js';
import { AgentHub } from './agent-hub.js';
import { prepareAgentTls } from './agent-tls.js';
import { buildApp } from './app.js';
import { ensureAdminToken } from './auth.js';
import { trustedProxies } from './client-address.js';
import { buildDataPlane } from './data-plane.js';
import { EventBus } from './events.js';
import { ExecBroker } from './exec.js';
import { connectLocalAgent, type LocalAgent } from './local-agent.js';
import { Registry } from './registry.js';
import { ReplicaFollower } from './replicas.js';
import { RouteEvents } from './route-events.js';
import { ServerMetrics, serverFamilies } from './server-metrics.js';
import { statusReport } from './status.js';
import { SLOT_MS, trafficReport, trafficRouteSteps } from './traffic.js';
import { TrafficExchange } from './traffic-replicas.js';
import { TunnelBroker } from './tunnel-broker.js';
import { UiAuth } from './ui-auth.js';
import { appliedFrom, eachRouteView, type RouteViewInput, routeViews } from './views.js';

export interface RunningServer {
  stop(): Promise<void>;
  apiUrl: string;
}

export async function runServer(config: ServeConfig, logger: Logger): Promise<RunningServer> {
  const { dataDir } = config;
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const startedAt = Date.now();
  let trusted: ReturnType<typeof trustedProxies>;
  try {
    trusted = trustedProxies(config.trustedProxies);
  } catch (err) {
    throw new UserError('CONFIG_INVALID', `--trusted-proxies: ${errorMessage(err)}`);
  }
  const store = await openStore(config.store, dataDir, logger);
  const token = await ensureAdminToken(store, dataDir, config.adminToken);
  if (token.generated) {
    // Printed once, on stdout rather than in the logs, and kept only in a 0600 file.
    process.stdout.write(
      `\nBerth admin token (shown once; also saved to ${join(dataDir, 'admin.token')} with mode 0600):\n  ${token.generated}\n\n`,
    );
  }
  // The agent CA (made at first start, shared through the store) and this start's certificate.
  const agentTls = await prepareAgentTls(config.agentTls, store, logger.child({ component: 'agent-tls' }));
  const api = config.apiListen;
  const apiUrl = `http://${api.host || '127.0.0.1'}:${api.port}`;
  const events = new EventBus();
  let rec: Reconciler<CaddyTarget> | undefined;
  const wake = () => rec?.wake();
  const plane = await buildDataPlane(config, { logger, store, apiUrl, wake });
  const traffic = plane.traffic;
  // Tunnel agents' upstreams get local endpoints here; the hub, made below, carries their streams.
  let hubRef: AgentHub | undefined;
  let registryRef: Registry | undefined;
  const tunnels = new TunnelBroker({
    logger: logger.child({ component: 'tunnel' }),
    send: (agentId, msg) => hubRef?.send(agentId, msg) ?? false,
    keyOf: (agentId) => registryRef?.agentRecord(agentId)?.keyId,
    nameOf: (agentId) => registryRef?.agentRecord(agentId)?.name,
    connected: (agentId) => hubRef?.connected(agentId) ?? false,
  });
  await tunnels.start();
  // No TCP route may listen on the endpoints' port: bound on every address, it would keep new
  // endpoints (127.77.x.y on that port) from binding.
  plane.protected.push({ host: '127.77.0.1', port: tunnels.port!, what: 'tunnel endpoints (127.77.0.0/16)' });
  const registry = new Registry({
    store,
    liveness: {
      heartbeatMs: config.agentHeartbeatMs,
      offlineGraceMs: config.offlineGraceMs,
      upstreams: {
        protected: plane.protected,
        get localAddresses() {
          return localAddresses();
        },
      },
      ...(config.uiHost ? { reservedHosts: new Set([config.uiHost]) } : {}),
      tunnels,
    },
    events,
    logger: logger.child({ component: 'registry' }),
  });
  registryRef = registry;
  registry.onDrop((ids) => {
    for (const id of ids) tunnels.dropAgent(id);
  });
  await registry.load();
  const follower = store.shared
    ? new ReplicaFollower({
        registry,
        store,
        shared: store.shared,
        logger: logger.child({ component: 'replicas' }),
      })
    : undefined;
  follower?.start();

  const metrics = new ServerMetrics();
  const viewInput = (): RouteViewInput => ({
    agents: registry.reporting(),
    admitted: registry.admitted(),
    applied: rec?.state && appliedFrom(rec.state),
  });
  const routesNow = (o?: { onlyErrors?: boolean; unordered?: boolean }) => routeViews(viewInput(), o);
  // Hostnames every Caddy serves after the last pass, for Caddy's on-demand TLS ask. Built once
  // per pass when first asked: a handshake with a random name must not cost a route listing.
  let served: { state?: ReconcileState; hosts: HostIndex } = { hosts: new HostIndex([]) };
  const servedHosts = (): HostIndex => {
    const state = rec?.state;
    if (state && served.state !== state) {
      const hosts = state.desired.sites
        .filter((site) => servedEverywhere(state, siteSignature(site)))
        .map((x) => x.host);
      served = { state, hosts: new HostIndex(hosts) };
    }
    return served.hosts;
  };
  const routeEvents = new RouteEvents({
    events,
    errors: () => eachRouteView(viewInput(), { onlyErrors: true }),
  });
  // Who owns each host, for the traffic counter: after a pass that changed the desired state,
  // before the next request of a new host is counted (a later update would count it as "other").
  // Only what changed since the list last sent goes to the thread (the desired state says what it
  // added and removed), with owners looked up for those sites alone; else the whole list.
  let sentFrom: readonly Site[] | undefined;
  let trafficSent = Promise.resolve();
  const sendTrafficRoutes = (desired: Desired) => {
    if (!traffic || desired.sites === sentFrom) return;
    const patch = desired.changes && desired.changes.since === sentFrom ? desired.changes : undefined;
    sentFrom = desired.sites;
    const removed = patch?.removed ?? [];
    const added = patch?.added ?? desired.sites;
    const agents = new Map<string, { name?: string; routes: Map<string, RouteSpec> }>();
    const ownerOf = (key: string) => {
      const colon = key.indexOf(':');
      const agentId = key.slice(0, colon);
      let a = agents.get(agentId);
      if (!a) {
        const routes = registry.snapshotOf(agentId)?.routes ?? [];
        a = { name: registry.statusOf(agentId)?.name, routes: new Map(routes.map((r) => [r.id, r])) };
        agents.set(agentId, a);
      }
      const r = a.routes.get(key.slice(colon + 1));
      return r && a.name
        ? { agent: a.name, container: r.containerName, upstream: `${r.upstream.host}:${r.upstream.port}` }
        : undefined;
    };
    const reset = patch === undefined;
    // In slices, in the order of the passes: 25k changed sites are 25k owners to look up.
    trafficSent = trafficSent
      .then(async () => {
        const routes = await inSlices(trafficRouteSteps(added, ownerOf));
        traffic.patchRoutes(
          removed.map((s) => ({ host: s.host, path: s.path })),
          routes,
          { reset },
        );
      })
      .catch((err) =>
        logger.warn({ err: errorMessage(err) }, 'cannot send the routes to the traffic counter'),
      );
  };
  const reconciler = new Reconciler({
    source: () => registry.admitted().agentRoutes,
    targets: plane.targets,
    tcp: plane.tcp,
    dns: plane.dns,
    logger,
    ...plane.leases?.gate(),
    onDesired: (desired) => {
      sendTrafficRoutes(desired);
    },
    onPass: (state, info) => {
      plane.leases?.report(state);
      metrics.passed(info.startedAt, info.applyMs);
      if (info.applyMs.length > 0) {
        const n = state.desired.sites.length;
        events.emit('caddy.applied', `applied ${n} site${n === 1 ? '' : 's'} to Caddy`, {
          sites: n,
          ms: Math.max(...info.applyMs),
        });
      }
      for (const t of state.targets)
        if (t.error) events.emit('caddy.failed', `Caddy apply failed: ${t.error}`, { error: t.error });
      routeEvents.passed(state.desired.sites.length, state.desired.tcp.length);
    },
  });
  rec = reconciler;
  registry.onChange(() => {
    metrics.changed();
    routeEvents.changed();
    reconciler.wake();
  });
  await plane.start();
  if (store.shared) {
    logger.info(
      { store: store.shared.display, replica: store.shared.replicaId },
      'sharing the store with other replicas',
    );
  }
  // Serve what the store remembers before any agent reports: a restart must not empty the front door.
  reconciler.wake();

  const drift = setInterval(async () => {
    for (const t of plane.targets) if (plane.leases && !plane.leases.canApply(t)) await plane.leases.probe(t);
    await reconciler.checkDrift();
  }, config.driftIntervalMs);
  // Time alone changes what serves (an offline grace ends): re-check once a second.
  let admittedKey = '';
  const liveness = setInterval(() => {
    const key = [...registry.admitted().withheld.keys()].sort().join(',');
    if (key !== admittedKey) {
      admittedKey = key;
      reconciler.wake();
    }
  }, 1_000);

  // Traffic: 5-second slots for the charts (TCP sampled from the forwarder), and with a shared
  // store, this replica's summary out and the others' in.
  const exchange =
    store.shared && traffic
      ? new TrafficExchange({ shared: store.shared, traffic, logger: logger.child({ component: 'traffic' }) })
      : undefined;
  const trafficTick = setInterval(() => {
    traffic?.tick(plane.tcp.counters(), new Map(plane.tcp.status().map((l) => [l.listen, l.active])));
    void exchange?.exchange();
  }, SLOT_MS);
  trafficTick.unref();
  // logrotate moved the access logs away: open new files (the TCP forwarder's too).
  const onHangup = () => {
    traffic?.reopen();
    plane.tcp.reopenLog();
    logger.info('access logs reopened (SIGHUP)');
  };
  process.on('SIGHUP', onHangup);

  const broker: ExecBroker = new ExecBroker({
    registry,
    store,
    logger: logger.child({ component: 'exec' }),
    // The hub, made next, carries requests to agents (and their events back to the broker).
    channel: (agentId, req): boolean => hub.send(agentId, req),
    isConnected: (agentId) => hub.connected(agentId),
    onAudit: (a) =>
      events.emit(
        'exec',
        `exec ${a.decision} on ${a.agentName || '?'}/${a.container}: ${a.argv.join(' ')}${a.exitCode === undefined ? '' : ` (exit ${a.exitCode})`}`,
        { agent: a.agentName, container: a.container, decision: a.decision, exitCode: a.exitCode },
      ),
  });
  const hub: AgentHub = new AgentHub({
    registry,
    logger: logger.child({ component: 'hub' }),
    heartbeatMs: config.agentHeartbeatMs,
    maxMessageBytes: config.agentMaxMessageBytes,
    trustedProxies: trusted,
    exec: broker,
    tunnel: tunnels,
  });
  hubRef = hub;
  let local: LocalAgent | undefined;
  if (config.watch) {
    local = await connectLocalAgent({
      hub,
      registry,
      watch: config.watch,
      logger,
      heartbeatMs: config.agentHeartbeatMs,
    });
  }

  const status = () =>
    statusReport({
      startedAt,
      routes: () => routesNow({ unordered: true }),
      agents: () => registry.listAgents(),
      reconcile: () => ({
        done: reconciler.state !== undefined,
        counters: { ...reconciler.counters, lastPassAt: reconciler.state?.completedAt },
      }),
      caddy: () =>
        plane.targets.map((t) => ({
          display: t.admin.display,
          reachable: t.stats.reachable,
          facts: {
            admin: t.admin.display,
            managed: Boolean(plane.supervisor),
            pid: plane.supervisor?.pid,
            restarts: plane.supervisor?.restarts,
            ...t.stats,
            lease: plane.leases?.view(t),
            reloadQueue:
              plane.supervisor || isLocalCaddyAdmin(t.admin.display) ? plane.reloadQueue : undefined,
          },
        })),
      dockerConnected: local ? () => local.dockerConnected : undefined,
    });
  const app = buildApp({
    logger,
    tokenHash: token.hash,
    trustedProxies: trusted,
    registry,
    exec: { broker, store },
    routes: () => routesNow(),
    status,
    health: async () => {
      const tcp = plane.tcp;
      await tcp.refresh();
      return {
        tcp: {
          ...tcp.bindStatus(),
          forwarder: tcp.health(),
          listeners: tcp.status().map(({ listen, address, state, error, active }) => ({
            listen,
            address,
            state,
            error,
            active,
          })),
        },
      };
    },
    metrics: async () => {
      await plane.tcp.refresh();
      return serverFamilies({
        metrics,
        heartbeatDelay: hub.heartbeatDelay,
        reconcile: reconciler.counters,
        agents: registry.listAgents(),
        routes: routesNow({ unordered: true }),
        hub: hub.counters,
        exec: broker.counters,
        tunnel: tunnels.metrics(),
        tcp: tcpMetrics(plane.tcp),
        dns: plane.dns?.stats(),
        http: traffic ? await traffic.families() : [],
      });
    },
    traffic: async () => {
      const self = store.shared?.replicaId ?? 'local';
      const empty = { replica: self, at: Date.now(), hosts: {}, tcp: {} };
      return trafficReport({
        replicas: [traffic ? await traffic.snapshot(self) : empty, ...(exchange?.replicas() ?? [])],
        self,
        now: Date.now(),
        owners: traffic ? await traffic.owners() : new Map(),
        enabled: traffic !== undefined,
      });
    },
    ui: { auth: new UiAuth(store, token.hash), events },
    agentTls: () => agentTls?.info,
    // Certificates on demand only for hostnames some route serves.
    askDomain: (domain) => domain === config.uiHost || servedHosts().covers(domain),
    reconcile: async (force) => {
      reconciler.wake({ force });
      await reconciler.idle();
      return { passes: reconciler.counters.passes };
    },
  });
  hub.attach(app.server);
  await app.listen({ host: api.host || '0.0.0.0', port: api.port });
  await agentTls?.listen((server) => hub.attach(server));
  logger.info(
    {
      api: apiUrl,
      agents: agentTls?.info.urls ?? 'over --api-listen only (--agent-listen off)',
      dataDir,
      caddy: plane.targets.map((t) => t.admin.display),
    },
    'berth is running',
  );

  return {
    apiUrl,
    async stop() {
      clearInterval(drift);
      clearInterval(liveness);
      clearInterval(trafficTick);
      process.off('SIGHUP', onHangup);
      local?.stop();
      hub.close();
      await tunnels.close();
      await agentTls?.close();
      reconciler.stop();
      routeEvents.stop();
      await follower?.close();
      await app.close();
      await registry.flush();
      await plane.stop();
      await store.close();
    },
  };
}

let addressCache: { at: number; set: Set<string> } | undefined;
/** This machine's addresses, re-read at most every 10 s (interfaces come and go). */
function localAddresses(): Set<string> {
  const now = Date.now();
  if (addressCache && now - addressCache.at < 10_000) return addressCache.set;
  const set = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) set.add(a.address);
  addressCache = { at: now, set };
  return set;
}
