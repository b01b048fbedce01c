// The data plane a server drives, built from its configuration: its own Caddy (or operators'
// Caddy instances), the DNS responder of the dynamic layout, the TCP forwarder, and, with a
// shared store, one lease per Caddy. Also the list of the server's own listeners, which no
// route may point at.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { parseListen, type ServeConfig } from '../config.js';
import { CaddyAdmin } from '../ingress/caddy/admin.js';
import { type CaddyBuildOptions, SiteSplit } from '../ingress/caddy/config.js';
import { ensureReloadQueue, isLocalCaddyAdmin, type ReloadQueue } from '../ingress/caddy/reload-queue.js';
import { CaddySupervisor } from '../ingress/caddy/supervisor.js';
import { CaddyTarget } from '../ingress/caddy/target.js';
import { DnsSidecar, ZONE } from '../ingress/dns/sidecar.js';
import { TcpSidecar } from '../ingress/tcp/sidecar.js';
import type { ProtectedEndpoint } from '../reconcile/upstreams.js';
import type { Store } from '../store/store.js';
import { CaddyLeases } from './caddy-lease.js';
import { TrafficThread } from './traffic-thread.js';

export interface DataPlane {
  targets: CaddyTarget[];
  /** Berth's own Caddy, when it runs one (no --caddy-admin). */
  supervisor?: CaddySupervisor;
  dns?: DnsSidecar;
  tcp: TcpSidecar;
  /** Reads, counts and logs Caddy's request lines, in a thread of its own; absent with --traffic off or a Caddy out of reach. */
  traffic?: TrafficThread;
  leases?: CaddyLeases;
  /**
   * net.ipv4.tcp_migrate_req as the server found or left it, when some Caddy it drives shares its
   * network namespace (its own, or one whose admin API is on loopback or a unix socket).
   */
  reloadQueue?: ReloadQueue;
  /** The server's own listeners: API, front door, DNS responder, Caddy admin, Redis. */
  protected: ProtectedEndpoint[];
  /** Starts what runs as processes of its own (Caddy) and the leases. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function buildDataPlane(
  config: ServeConfig,
  o: {
    logger: Logger;
    store: Store;
    apiUrl: string;
    /** Something changed below the server (Caddy restarted, a lease taken): reconcile. */
    wake: () => void;
  },
): Promise<DataPlane> {
  const { logger, store } = o;
  const c = config.caddy;
  const command = [process.execPath, process.argv[1] ?? 'berth'];
  const protectedEndpoints: ProtectedEndpoint[] = [
    {
      host: config.apiListen.host || undefined,
      port: config.apiListen.port,
      what: 'admin API (--api-listen)',
    },
    ...[c.httpListen, c.httpsListen].map((l) => {
      const p = parseListen('http-listen', l);
      return { host: p.host || undefined, port: p.port, what: 'front door' };
    }),
    ...storeEndpoint(config.store),
    ...(config.agentTls.listen
      ? [
          {
            host: config.agentTls.listen.host || undefined,
            port: config.agentTls.listen.port,
            what: 'agent listener (--agent-listen)',
          },
        ]
      : []),
  ];
  const buildOpts: CaddyBuildOptions = { tls: c.tls, httpListen: c.httpListen, httpsListen: c.httpsListen };
  if (config.uiHost) {
    const host = config.apiListen.host;
    const reach =
      !host || host === '0.0.0.0'
        ? '127.0.0.1'
        : host === '::'
          ? '[::1]'
          : host.includes(':')
            ? `[${host}]`
            : host;
    buildOpts.ui = { host: config.uiHost, upstream: `${reach}:${config.apiListen.port}` };
  }

  let dns: DnsSidecar | undefined;
  // Which hosts Caddy's config names and which DNS serves: worked out once per pass for the DNS
  // table and every Caddy target (at 50k hosts each copy is several MiB).
  const split = new SiteSplit();
  if (c.layout === 'dynamic') {
    dns = new DnsSidecar({
      dataDir: config.dataDir,
      listen: c.dnsListen,
      command,
      logger: logger.child({ component: 'dns' }),
      split,
    });
    await dns.start();
    for (const [what, addr] of [
      ['DNS responder', dns.addresses.resolver],
      ['not-found responder', dns.addresses.notFound],
    ] as const) {
      const { host, port } = parseListen('dns-listen', addr);
      protectedEndpoints.push({ host: host || undefined, port, what });
    }
    buildOpts.dynamic = { ...dns.addresses, zone: ZONE, refresh: '1s', ask: `${o.apiUrl}/caddy/ask` };
  }

  // Caddy writes request lines to a unix socket Berth listens on, so Caddy must be on this machine.
  let traffic: TrafficThread | undefined;
  const remote = c.admin.filter((url) => !isLocalCaddyAdmin(url));
  if (config.traffic.enabled && remote.length > 0) {
    logger.warn(
      { caddy: remote },
      'Caddy on another machine cannot reach the unix socket Berth reads request lines from: no HTTP access log or per-route metrics',
    );
  } else if (config.traffic.enabled) {
    traffic = new TrafficThread(
      {
        socketPath: socketPathFor(config.dataDir, 'traffic.sock'),
        parse: dns ? { zone: ZONE, notFound: dns.addresses.notFound } : {},
        maxHosts: config.traffic.maxHosts,
        log: { to: config.traffic.accessLog, ...(config.traffic.rotate ?? {}) },
      },
      logger,
    );
    // Before any apply: Caddy refuses a config whose log writer it cannot connect to.
    buildOpts.traffic = { address: await traffic.start(), query: config.traffic.query };
  }

  // Before the first load: Caddy's reloads must not reset the connections waiting to be accepted.
  const reloadQueue =
    c.admin.length === 0 || remote.length < c.admin.length
      ? ensureReloadQueue({ change: !c.keepSysctls, logger: logger.child({ component: 'caddy' }) })
      : undefined;

  let supervisor: CaddySupervisor | undefined;
  const targets: CaddyTarget[] = [];
  if (c.admin.length === 0) {
    supervisor = new CaddySupervisor({
      bin: c.bin,
      dataDir: config.dataDir,
      socketPath: socketPathFor(config.dataDir, 'caddy-admin.sock'),
      logger: logger.child({ component: 'caddy' }),
      onRestart: () => {
        for (const t of targets) t.invalidate();
        o.wake();
      },
    });
    targets.push(new CaddyTarget(supervisor.admin, buildOpts, logger, split));
  } else {
    for (const url of c.admin) {
      targets.push(new CaddyTarget(new CaddyAdmin(url), buildOpts, logger, split));
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
    store.shared && c.admin.length > 0
      ? new CaddyLeases({
          store,
          shared: store.shared,
          targets,
          logger: logger.child({ component: 'lease' }),
          onAcquired: (t) => {
            t.invalidate();
            o.wake();
          },
          onApplied: () => o.wake(),
        })
      : undefined;

  const tcp = new TcpSidecar({
    dataDir: config.dataDir,
    config: {
      bind: config.tcp.bind,
      idleTimeoutMs: config.tcp.idleTimeoutMs,
      maxConnections: config.tcp.maxConnections,
      ...(config.tcp.accessLog ? { accessLog: config.tcp.accessLog } : {}),
      ...(config.tcp.rotate ? { rotate: config.tcp.rotate } : {}),
    },
    command,
    logger: logger.child({ component: 'tcp' }),
    onChange: () => o.wake(),
  });
  await tcp.start();
  const tcpBind = tcp.bindStatus();
  if (tcpBind.error) logger.warn(tcpBind, 'TCP listeners wait for their bind address');

  return {
    targets,
    supervisor,
    dns,
    tcp,
    traffic,
    leases,
    reloadQueue,
    protected: protectedEndpoints,
    async start() {
      if (supervisor) await supervisor.start();
      await leases?.start();
    },
    async stop() {
      await leases?.stop();
      await tcp.close();
      await supervisor?.stop();
      await dns?.stop();
      await traffic?.stop();
    },
  };
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

/** Unix socket paths are limited to 107 bytes; a deep data dir falls back to /tmp. */
function socketPathFor(dataDir: string, name: string): string {
  const p = join(dataDir, name);
  if (Buffer.byteLength(p) < 100) return p;
  // The admin socket's fallback name predates the others: kept, so a running Caddy is still adopted.
  const key = name === 'caddy-admin.sock' ? dataDir : `${dataDir}/${name}`;
  return `/tmp/berth-${createHash('sha256').update(key).digest('hex').slice(0, 12)}.sock`;
}
