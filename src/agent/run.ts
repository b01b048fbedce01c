// `berth agent`: one agent (Docker watcher and exec runner, see agent.ts) reporting over one
// outbound WebSocket, and optionally its own /metrics listener.
import { createServer, type Server } from 'node:http';
import type { AgentConfig, Listen } from '../config.js';
import { UserError } from '../errors.js';
import type { Logger } from '../log.js';
import { type MetricFamily, renderMetrics, simple } from '../metrics.js';
import { VERSION } from '../version.js';
import { Agent } from './agent.js';
import { compileFromNow } from './jit.js';
import { ServerLink } from './link.js';

export interface RunningAgent {
  stop(): Promise<void>;
}

export async function runAgent(config: AgentConfig, logger: Logger): Promise<RunningAgent> {
  if (config.keySource === '--key') {
    logger.warn(
      { flag: '--key' },
      'the agent key was given with --key on the command line, where any local user can read it ' +
        '(/proc/PID/cmdline, ps); use --key-file FILE or the BERTH_AGENT_KEY environment variable instead',
    );
  }
  if (config.servers.some((u) => /^(https|wss):/.test(u)) && !config.trust.pin && !config.trust.ca)
    logger.warn(
      'this agent key carries no server pin (a key from before pins): the server is checked against the system CAs only; get the pin with berth keys show ID, or use --ca-file',
    );
  let link: ServerLink | undefined;
  const agent = new Agent({
    watch: config,
    logger,
    output: { publish: (s) => link?.publish(s), execEvent: (e) => link?.sendExecEvent(e) },
  });
  // Loaded only for --tunnel (about 1 MiB of an agent that never carries a stream).
  const Tunnel = config.tunnel ? (await import('./tunnel.js')).TunnelClient : undefined;
  link = new ServerLink({
    serverUrls: config.servers,
    key: config.key,
    trust: config.trust,
    insecureTransport: config.trust.insecureTransport,
    name: config.name,
    version: VERSION,
    dataDir: config.dataDir,
    logger: logger.child({ component: 'link' }),
    reportIntervalMs: config.reportIntervalMs,
    // Without --host-ip, the address this host uses to reach the server is the one the server's
    // front door can use to reach this host's published ports.
    onLocalAddress: (ip) => {
      if (!config.hostIp) agent.setHostIp(ip, 'auto (local address of the connection to the server)');
    },
    heartbeat: () => agent.heartbeat(),
    onExec: (req) => agent.handleExec(req),
    ...(config.tunnel && Tunnel
      ? { tunnel: { ...config.tunnel, Client: Tunnel, onStream: compileFromNow } }
      : {}),
  });
  if (config.hostIp) agent.setHostIp(config.hostIp, 'flag');
  link.start();
  const connected = link;
  const metrics = config.metricsListen
    ? await serveMetrics(config.metricsListen, () => [
        simple(
          'berth_agent_connected',
          'Whether the agent is connected to its server',
          'gauge',
          connected.connected ? 1 : 0,
        ),
        simple('berth_agent_connects_total', 'Connections made to the server', 'counter', connected.connects),
        simple(
          'berth_agent_snapshots_sent_total',
          'Snapshots sent to the server',
          'counter',
          connected.snapshotsSent,
        ),
        ...agent.metrics(),
        ...(connected.tunnel?.metrics() ?? []),
      ])
    : undefined;
  logger.info(
    {
      servers: config.servers,
      name: config.name,
      docker: config.docker,
      metrics: config.metricsListen,
      ...(config.tunnel ? { tunnel: config.tunnel } : {}),
    },
    'berth agent running',
  );
  return {
    async stop() {
      agent.stop();
      connected.stop();
      metrics?.close();
    },
  };
}

/** GET /metrics and /healthz on their own small listener; the agent opens no other port. */
async function serveMetrics(listen: Listen, families: () => MetricFamily[]): Promise<Server> {
  const { host, port } = listen;
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(renderMetrics(families()));
    } else if (req.method === 'GET' && req.url === '/healthz') {
      // Liveness, as the server's /healthz: the image's HEALTHCHECK asks here.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"status":"ok"}\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found; try /metrics or /healthz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new UserError('CONFIG_INVALID', `--metrics-listen ${host}:${port}: ${err.message}`)),
    );
    server.listen({ host: host || '127.0.0.1', port }, resolve);
  });
  return server;
}
