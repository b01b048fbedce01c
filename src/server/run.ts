// Wires the server together: store → registry → reconciler → Caddy targets, plus the API and,
// for `berth standalone`, the in-process local agent (the same snapshot path a remote agent uses).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname, networkInterfaces } from 'node:os';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { createDockerSource, type DockerSource } from '../agent/docker.js';
import { rulesFor } from '../agent/exec-policy.js';
import { loadExecPolicy } from '../agent/exec-policy-file.js';
import { ExecRunner } from '../agent/exec-runner.js';
import { DockerWatcher } from '../agent/watcher.js';
import { type Config, parseListen } from '../config.js';
import { errorMessage, UserError } from '../errors.js';
import { CaddyAdmin } from '../ingress/caddy/admin.js';
import type { CaddyBuildOptions, TlsMode } from '../ingress/caddy/config.js';
import { CaddySupervisor } from '../ingress/caddy/supervisor.js';
import { CaddyTarget } from '../ingress/caddy/target.js';
import { DnsSidecar, ZONE } from '../ingress/dns/sidecar.js';
import { TcpSidecar } from '../ingress/tcp/sidecar.js';
import { Histogram, simple, tcpMetrics } from '../metrics.js';
import { domainAllowed } from '../reconcile/policy.js';
import { Reconciler } from '../reconcile/reconciler.js';
import type { ProtectedEndpoint, UpstreamRules } from '../reconcile/upstreams.js';
import { openStore } from '../store/open.js';
import { VERSION } from '../version.js';
import { AgentHub } from './agent-hub.js';
import { buildApp, type StatusReport } from './app.js';
import { ensureAdminToken } from './auth.js';
import { CaddyLeases } from './caddy-lease.js';
import { trustedProxies } from './client-address.js';
import { EventBus } from './events.js';
import { ExecBroker } from './exec.js';
import { Registry } from './registry.js';
import { UiAuth } from './ui-auth.js';
export const LOCAL_AGENT_ID = 'local';

export interface RunningServer {
  stop(): Promise<void>;
  apiUrl: string;
}

export async function runServer(
  config: Config,
  opts: { localAgent: boolean; logger: Logger },
): Promise<RunningServer> {
  const { logger } = opts;
  const dataDir = resolve(String(config['data-dir']));
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const startedAt = Date.now();
  if (opts.localAgent && config.store) {
    throw new UserError(
      'CONFIG_INVALID',
      '--store is for berth server replicas (berth standalone keeps its agent in-process); run berth agent on each host',
    );
  }
  const store = await openStore(config.store as string | undefined, dataDir, logger);
  const token = await ensureAdminToken(store, dataDir, process.env.BERTH_ADMIN_TOKEN);
  if (token.generated) {
    // Printed once, on stdout rather than in the logs, and kept only in a 0600 file.
    process.stdout.write(
      `\nBerth admin token (shown once; also saved to ${join(dataDir, 'admin.token')} with mode 0600):\n  ${token.generated}\n\n`,
    );
  }
  let trusted: ReturnType<typeof trustedProxies>;
  try {
    trusted = trustedProxies(config['trusted-proxies'] as string[]);
  } catch (err) {
    throw new UserError('CONFIG_INVALID', `--trusted-proxies: ${errorMessage(err)}`);
  }
  // The server's own listeners, filled in as they are known: no route may point at them.
  const protectedEndpoints: ProtectedEndpoint[] = [];
  const upstreamRules: UpstreamRules = {
    protected: protectedEndpoints,
    get localAddresses() {
      return localAddresses();
    },
  };
  const registry = new Registry(store, {
    heartbeatMs: Number(config['agent-heartbeat']),
    offlineGraceMs: Number(config['offline-grace']),
    upstreams: upstreamRules,
  });
  await registry.load();
  const events = new EventBus();
  registry.events = events;
  registry.logger = logger.child({ component: 'registry' });
  registry.follow();
  const uiAuth = new UiAuth(store, token.hash);

  const httpBind = config['http-bind'] === undefined ? undefined : String(config['http-bind']);
  const httpListen = bindListen('http-listen', String(config['http-listen']), httpBind);
  const httpsListen = bindListen('https-listen', String(config['https-listen']), httpBind);
  const api = parseListen('api-listen', String(config['api-listen']));
  const apiUrl = `http://${api.host || '127.0.0.1'}:${api.port}`;
  protectedEndpoints.push(
    { host: api.host || undefined, port: api.port, what: 'admin API (--api-listen)' },
    ...[httpListen, httpsListen].map((l) => {
      const p = parseListen('http-listen', l);
      return { host: p.host || undefined, port: p.port, what: 'front door' };
    }),
    ...storeEndpoint(config.store as string | undefined),
  );
  const buildOpts: CaddyBuildOptions = { tls: config.tls as TlsMode, httpListen, httpsListen };
  let dns: DnsSidecar | undefined;
  if (config['caddy-layout'] === 'dynamic') {
    dns = new DnsSidecar({
      dataDir,
      listen: String(config['dns-listen']),
      command: [process.execPath, process.argv[1] ?? 'berth'],
      logger: logger.child({ component: 'dns' }),
    });
    await dns.start();
    for (const [what, addr] of [
      ['DNS responder', dns.addresses.resolver],
      ['not-found responder', dns.addresses.notFound],
    ] as const) {
      const { host, port } = parseListen('dns-listen', addr);
      protectedEndpoints.push({ host: host || undefined, port, what });
    }
    buildOpts.dynamic = { ...dns.addresses, zone: ZONE, refresh: '1s', ask: `${apiUrl}/caddy/ask` };
  }

  let supervisor: CaddySupervisor | undefined;
  const targets: CaddyTarget[] = [];
  const adminUrls = config['caddy-admin'] as string[];
  let reconciler: Reconciler<CaddyTarget> | undefined;
  if (adminUrls.length === 0) {
    supervisor = new CaddySupervisor({
      bin: String(config['caddy-bin']),
      dataDir,
      socketPath: socketPathFor(dataDir),
      logger: logger.child({ component: 'caddy' }),
      onRestart: () => {
        for (const t of targets) t.invalidate();
        reconciler?.wake();
      },
    });
    targets.push(new CaddyTarget(supervisor.admin, buildOpts, logger));
  } else {
    for (const url of adminUrls) {
      targets.push(new CaddyTarget(new CaddyAdmin(url), buildOpts, logger));
      const u = /^https?:\/\/([^/]+)/.exec(url);
      if (u) {
        const { hostname, port } = new URL(`http://${u[1]}`);
        protectedEndpoints.push({
          host: hostname || undefined,
          port: Number(port || 80),
          what: 'Caddy admin API',
        });
      }
    }
  }
  // Replicas sharing a store and the same Caddy instances: one applies to each at a time.
  const leases =
    store.shared && adminUrls.length > 0
      ? new CaddyLeases({
          store,
          shared: store.shared,
          targets,
          logger: logger.child({ component: 'lease' }),
          onAcquired: (t) => {
            t.invalidate();
            reconciler?.wake();
          },
          onApplied: () => reconciler?.wake(),
        })
      : undefined;

  const tcpLogFile = config['tcp-access-log'] ? resolve(String(config['tcp-access-log'])) : undefined;
  const tcp = new TcpSidecar({
    dataDir,
    config: {
      bind: String(config['tcp-bind']),
      idleTimeoutMs: Number(config['tcp-idle-timeout']),
      maxConnections: Number(config['tcp-max-connections']),
      ...(tcpLogFile ? { accessLog: tcpLogFile } : {}),
    },
    command: [process.execPath, process.argv[1] ?? 'berth'],
    logger: logger.child({ component: 'tcp' }),
    onChange: () => reconciler?.wake(),
  });
  await tcp.start();
  const tcpBind = tcp.bindStatus();
  if (tcpBind.error) logger.warn(tcpBind, 'TCP listeners wait for their bind address');

  // Convergence: from the first change a pass has not yet seen to the end of the pass that applied it.
  const convergence = new Histogram(
    'berth_convergence_seconds',
    'Time from a change reaching the server (snapshot, approval, revocation) to the end of the reconcile pass that applied it',
  );
  const applyDuration = new Histogram('berth_caddy_apply_seconds', 'Duration of Caddy config applies');
  let changedSince: number | undefined;
  let lastErrors = new Set<string>();
  reconciler = new Reconciler({
    source: () => registry.admitted().agentRoutes,
    targets,
    tcp,
    dns,
    logger,
    ...leases?.gate(),
    onPass: (state, info) => {
      leases?.report(state);
      if (changedSince !== undefined && info.startedAt >= changedSince) {
        convergence.observe((Date.now() - changedSince) / 1000);
        changedSince = undefined;
      }
      for (const ms of info.applyMs) applyDuration.observe(ms / 1000);
      if (info.applyMs.length > 0) {
        events.emit(
          'caddy.applied',
          `applied ${state.desired.sites.length} site${state.desired.sites.length === 1 ? '' : 's'} to Caddy`,
          {
            sites: state.desired.sites.length,
            ms: Math.max(...info.applyMs),
          },
        );
      }
      for (const t of state.targets)
        if (t.error) events.emit('caddy.failed', `Caddy apply failed: ${t.error}`, { error: t.error });
      // Most route changes never reach Caddy's config (the dynamic layout): say so, so that pages
      // showing routes refresh; at most once a second, the last change always announced.
      if (registryVersion !== announcedVersion) {
        clearTimeout(announce);
        announce = setTimeout(
          () => {
            announcedVersion = registryVersion;
            lastAnnounceAt = Date.now();
            events.emit(
              'routes.changed',
              `routes changed: ${state.desired.sites.length} sites, ${state.desired.tcp.length} TCP listeners`,
              {
                sites: state.desired.sites.length,
                tcp: state.desired.tcp.length,
              },
            );
          },
          Math.max(0, 1_000 - (Date.now() - lastAnnounceAt)),
        );
      }
      // Routes that newly have an error, once each. Listing every route costs about half a
      // second at 50k, so it runs at most once a second, after the latest pass.
      const sinceScan = Date.now() - lastErrorScanAt;
      clearTimeout(errorScan);
      errorScan = setTimeout(() => scanErrors(), Math.max(0, 1_000 - sinceScan));
    },
  });
  let lastErrorScanAt = 0;
  let errorScan: NodeJS.Timeout | undefined;
  let registryVersion = 0;
  let announcedVersion = 0;
  let lastAnnounceAt = 0;
  let announce: NodeJS.Timeout | undefined;
  const scanErrors = () => {
    const state = reconciler?.state;
    if (!state) return;
    lastErrorScanAt = Date.now();
    const now = new Set<string>();
    for (const r of registry.routeViews(state, { onlyErrors: true })) {
      if (r.status !== 'error') continue;
      const key = `${r.agentId}:${r.id}:${r.errors.join('|')}`;
      now.add(key);
      if (!lastErrors.has(key)) {
        const what =
          r.kind === 'tcp' ? `tcp :${r.listen}` : r.hosts.join(', ') || `container ${r.container.name}`;
        events.emit(
          'route.rejected',
          `${what} (${r.agentName}/${r.container.name}): ${r.errors.join('; ')}`,
          {
            agentId: r.agentId,
            routeId: r.id,
          },
        );
      }
    }
    lastErrors = now;
  };
  const rec = reconciler;
  registry.onChange(() => {
    registryVersion++;
    changedSince ??= Date.now();
    rec.wake();
  });

  if (supervisor) await supervisor.start();
  await leases?.start();
  if (store.shared) {
    logger.info(
      { store: store.shared.display, replica: store.shared.replicaId },
      'sharing the store with other replicas',
    );
  }
  // Serve what the store remembers before any agent reports: a restart must not empty the front door.
  rec.wake();

  let watcher: DockerWatcher | undefined;
  let localSource: DockerSource | undefined;
  let localExec: ExecRunner | undefined;
  if (opts.localAgent) {
    const endpoint = String(config.docker ?? 'unix:///var/run/docker.sock');
    const hostIp = config['host-ip'] ? String(config['host-ip']) : defaultHostIp(endpoint);
    logger.info(
      {
        hostIp,
        chosen: config['host-ip']
          ? 'flag'
          : 'auto (docker is local, so the front door reaches containers on loopback)',
      },
      'host IP for published and host-network ports',
    );
    await registry.ensureLocalAgent(hostname());
    const execPolicy = loadExecPolicy(config);
    localSource = createDockerSource(endpoint);
    watcher = new DockerWatcher({
      agentId: LOCAL_AGENT_ID,
      source: localSource,
      ctx: {
        hostIp,
        labelPrefix: String(config['label-prefix']),
        network: config.network as string | undefined,
        dialects: config.dialects as string[] | undefined,
      },
      logger: logger.child({ component: 'agent' }),
      resyncIntervalMs: Number(config['resync-interval']),
      execRules: (c) => rulesFor(c, execPolicy, String(config['label-prefix'])),
      onSnapshot: (s) => {
        registry
          .replaceAgentState(s)
          .catch((err) => logger.error({ err: errorMessage(err) }, 'cannot store snapshot'));
      },
    });
    watcher.start();
    localExec = new ExecRunner({
      source: localSource,
      policy: execPolicy,
      labelPrefix: String(config['label-prefix']),
      logger: logger.child({ component: 'exec' }),
      send: (e) => broker.onAgentEvent(LOCAL_AGENT_ID, e),
    });
  }

  const drift = setInterval(async () => {
    for (const t of targets) if (leases && !leases.canApply(t)) await leases.probe(t);
    await rec.checkDrift();
  }, Number(config['drift-interval']));
  // Time alone changes what serves (an offline grace ends): re-check once a second.
  let admittedKey = '';
  const liveness = setInterval(() => {
    const key = [...registry.admitted().withheld.keys()].sort().join(',');
    if (key !== admittedKey) {
      admittedKey = key;
      rec.wake();
    }
  }, 1_000);

  const status = (): StatusReport => {
    const routes = registry.routeViews(rec.state);
    const notReady: string[] = [];
    if (!rec.state) notReady.push('no reconcile pass has completed yet');
    for (const t of targets) if (!t.stats.reachable) notReady.push(`Caddy ${t.admin.display} is unreachable`);
    if (watcher && !watcher.isConnected) notReady.push('docker is unreachable');
    return {
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
      ready: notReady.length === 0,
      notReady,
      agents: registry.listAgents().map((a) =>
        a.kind === 'local'
          ? {
              ...a,
              status: watcher?.isConnected ? 'online' : 'offline',
              dockerVersion: watcher?.dockerVersion,
            }
          : a,
      ),
      caddy: targets.map((t) => ({
        admin: t.admin.display,
        managed: Boolean(supervisor),
        pid: supervisor?.pid,
        restarts: supervisor?.restarts,
        ...t.stats,
        lease: leases?.view(t),
      })),
      routes: {
        total: routes.length,
        applied: routes.filter((r) => r.status === 'applied').length,
        pending: routes.filter((r) => r.status === 'pending').length,
        error: routes.filter((r) => r.status === 'error').length,
      },
      reconcile: { ...rec.counters, lastPassAt: rec.state?.completedAt },
    };
  };

  const hub = new AgentHub({
    registry,
    logger: logger.child({ component: 'hub' }),
    heartbeatMs: Number(config['agent-heartbeat']),
    maxMessageBytes: Number(config['agent-max-message']),
    trustedProxies: trusted,
  });
  const broker: ExecBroker = new ExecBroker({
    registry,
    store,
    logger: logger.child({ component: 'exec' }),
    channel: (agentId, req) => {
      if (agentId !== LOCAL_AGENT_ID) return hub.send(agentId, req);
      if (!localExec) return false;
      void localExec.handle(req);
      return true;
    },
    isConnected: (agentId) =>
      agentId === LOCAL_AGENT_ID ? Boolean(watcher?.isConnected) : hub.connected(agentId),
  });
  hub.exec = broker;
  broker.onAudit = (a) =>
    events.emit(
      'exec',
      `exec ${a.decision} on ${a.agentName || '?'}/${a.container}: ${a.argv.join(' ')}${a.exitCode === undefined ? '' : ` (exit ${a.exitCode})`}`,
      { agent: a.agentName, container: a.container, decision: a.decision, exitCode: a.exitCode },
    );
  const app = buildApp({
    logger,
    tokenHash: token.hash,
    trustedProxies: trusted,
    registry,
    exec: { broker, store },
    routes: () => registry.routeViews(rec.state),
    status,
    health: async () => {
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
      await tcp.refresh();
      const agents = registry.listAgents();
      const routes = registry.routeViews(rec.state);
      const count = <T>(list: T[], key: (x: T) => string, all: string[]) =>
        all.map(
          (v) => [{ status: v }, list.filter((x) => key(x) === v).length] as [Record<string, string>, number],
        );
      return [
        convergence.family(),
        applyDuration.family(),
        hub.heartbeatDelay.family(),
        simple('berth_reconcile_passes_total', 'Reconcile passes', 'counter', rec.counters.passes),
        simple('berth_caddy_applies_total', 'Config applies sent to Caddy', 'counter', rec.counters.applies),
        simple('berth_caddy_apply_failures_total', 'Failed Caddy applies', 'counter', rec.counters.failures),
        simple(
          'berth_agents',
          'Agents by status',
          'gauge',
          count(agents, (a) => a.status, ['online', 'stale', 'offline', 'pending', 'revoked']),
        ),
        simple(
          'berth_routes',
          'Routes by status',
          'gauge',
          count(routes, (r) => r.status, ['applied', 'pending', 'error']),
        ),
        simple('berth_agent_messages_total', 'Messages from agents by outcome', 'counter', [
          [{ outcome: 'read' }, hub.counters.messages],
          [{ outcome: 'invalid' }, hub.counters.invalidMessages],
          [{ outcome: 'oversize' }, hub.counters.oversizeMessages],
          [{ outcome: 'superseded' }, hub.counters.snapshotsSuperseded],
        ]),
        simple('berth_agent_refusals_total', 'Agent connections refused, by reason', 'counter', [
          [{ reason: 'key' }, hub.counters.rejected],
          [{ reason: 'rate' }, hub.counters.rateLimited],
        ]),
        simple('berth_exec_requests_total', 'Exec requests by outcome', 'counter', [
          [{ outcome: 'allowed' }, broker.counters.allowed],
          [{ outcome: 'denied' }, broker.counters.denied],
          [{ outcome: 'error' }, broker.counters.errors],
        ]),
        ...tcpMetrics(tcp),
      ];
    },
    ui: { auth: uiAuth, events },
    // Certificates on demand only for hostnames some route serves.
    askDomain: (domain) =>
      registry
        .routeViews(rec.state)
        .some((r) => r.status === 'applied' && r.hosts.some((h) => domainAllowed(domain, [h]))),
    reconcile: async (force) => {
      rec.wake({ force });
      await rec.idle();
      return { passes: rec.counters.passes };
    },
  });
  hub.attach(app.server);
  await app.listen({ host: api.host || '0.0.0.0', port: api.port });
  logger.info({ api: apiUrl, dataDir, caddy: targets.map((t) => t.admin.display) }, 'berth is running');

  return {
    apiUrl,
    async stop() {
      clearInterval(drift);
      clearInterval(liveness);
      watcher?.stop();
      hub.close();
      rec.stop();
      clearTimeout(errorScan);
      clearTimeout(announce);
      await leases?.stop();
      await registry.close();
      await tcp.close();
      await app.close();
      await supervisor?.stop();
      await dns?.stop();
      await store.close();
    },
  };
}

/** `:80` with `--http-bind 100.64.0.7` → `100.64.0.7:80`; a listen flag with its own, other host is an error. */
function bindListen(flag: string, listen: string, bind: string | undefined): string {
  const { host, port } = parseListen(flag, listen);
  if (bind === undefined) return listen;
  if (isIP(bind) === 0) {
    throw new UserError('CONFIG_INVALID', `--http-bind ${bind}: expected an IP address such as 100.64.0.7`);
  }
  if (host && host !== bind) {
    throw new UserError(
      'CONFIG_INVALID',
      `--${flag} ${listen} names another address than --http-bind ${bind}`,
    );
  }
  return bind.includes(':') ? `[${bind}]:${port}` : `${bind}:${port}`;
}

/** The Redis store's address, which no route may point at either. */
function storeEndpoint(url: string | undefined): ProtectedEndpoint[] {
  if (!url?.startsWith('redis')) return [];
  try {
    const u = new URL(url);
    return [
      {
        host: u.hostname.replace(/^\[|\]$/g, '') || undefined,
        port: Number(u.port || 6379),
        what: 'store (Redis)',
      },
    ];
  } catch {
    return [];
  }
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

/** Unix socket paths are limited to 107 bytes; a deep data dir falls back to /tmp. */
function socketPathFor(dataDir: string): string {
  const p = join(dataDir, 'caddy-admin.sock');
  if (Buffer.byteLength(p) < 100) return p;
  return `/tmp/berth-${createHash('sha256').update(dataDir).digest('hex').slice(0, 12)}.sock`;
}

/** Docker on this machine → loopback reaches its ports; a remote engine → that engine's address. */
function defaultHostIp(endpoint: string): string {
  if (endpoint.startsWith('unix://') || endpoint.startsWith('/') || existsSync(endpoint)) return '127.0.0.1';
  try {
    return new URL(endpoint.replace(/^tcp:/, 'http:')).hostname || '127.0.0.1';
  } catch {
    return '127.0.0.1';
  }
}
