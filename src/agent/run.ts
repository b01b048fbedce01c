// `berth agent`: the Docker watcher of `berth standalone`, reporting over one outbound WebSocket.
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { type Config, parseListen } from '../config.js';
import { UserError } from '../errors.js';
import { type MetricFamily, renderMetrics, simple } from '../metrics.js';
import { VERSION } from '../version.js';
import { createDockerSource } from './docker.js';
import { rulesFor } from './exec-policy.js';
import { loadExecPolicy } from './exec-policy-file.js';
import { ExecRunner } from './exec-runner.js';
import { ServerLink } from './link.js';
import { DockerWatcher } from './watcher.js';

export interface RunningAgent {
  stop(): Promise<void>;
}

export async function runAgent(config: Config, logger: Logger): Promise<RunningAgent> {
  const servers = String(config.server ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  if (servers.length === 0) {
    throw new UserError(
      'CONFIG_INVALID',
      '--server is required: the Berth server URL, e.g. https://berth.example.com (several replicas: comma-separated)',
    );
  }
  const bad = servers.find((u) => !/^https?:\/\/[^/\s]+/.test(u));
  if (bad !== undefined) {
    throw new UserError('CONFIG_INVALID', `--server ${bad}: expected an http:// or https:// URL`);
  }
  const key = agentKey(config);
  const endpoint = String(config.docker ?? 'unix:///var/run/docker.sock');
  const fixedIp = config['host-ip'] ? String(config['host-ip']) : undefined;
  const reportIntervalMs = Number(config['report-interval']);
  const name = String(config.name ?? hostname());

  let watcher: DockerWatcher | undefined;
  const source = createDockerSource(endpoint);
  const policy = loadExecPolicy(config);
  const link: ServerLink = new ServerLink({
    serverUrls: servers,
    key,
    name,
    version: VERSION,
    dataDir: resolve(String(config['data-dir'])),
    logger: logger.child({ component: 'link' }),
    reportIntervalMs,
    // Without --host-ip, the address this host uses to reach the server is the one the server's
    // front door can use to reach this host's published ports.
    onLocalAddress: (ip) => {
      if (fixedIp) return;
      if (!watcher) {
        logger.info(
          { hostIp: ip, chosen: 'auto (local address of the connection to the server)' },
          'host IP',
        );
        watcher = startWatcher(ip);
      } else watcher.setHostIp(ip);
    },
    heartbeat: () => {
      const s = watcher?.current;
      return {
        dockerVersion: watcher?.dockerVersion,
        dockerConnected: watcher?.isConnected ?? false,
        containers: s?.containers.length ?? 0,
        routes: s?.routes.length ?? 0,
        generation: s?.generation ?? 0,
        hostIp: s?.hostIp,
      };
    },
    onExec: (req) => void runner.handle(req),
  });
  const runner = new ExecRunner({
    source,
    policy,
    labelPrefix: String(config['label-prefix']),
    logger: logger.child({ component: 'exec' }),
    send: (e) => link.sendExecEvent(e),
  });

  const startWatcher = (hostIp: string) => {
    const w = new DockerWatcher({
      agentId: link.agentId ?? 'unregistered',
      source,
      ctx: {
        hostIp,
        labelPrefix: String(config['label-prefix']),
        network: config.network as string | undefined,
        dialects: config.dialects as string[] | undefined,
      },
      logger: logger.child({ component: 'watcher' }),
      resyncIntervalMs: Number(config['resync-interval']),
      execRules: (c) => rulesFor(c, policy, String(config['label-prefix'])),
      onSnapshot: (s) => link.publish(s),
    });
    w.start();
    return w;
  };

  if (fixedIp) {
    logger.info({ hostIp: fixedIp, chosen: 'flag' }, 'host IP');
    watcher = startWatcher(fixedIp);
  }
  link.start();
  const metrics = config['metrics-listen']
    ? await serveMetrics(String(config['metrics-listen']), () => {
        const s = watcher?.current;
        return [
          simple(
            'berth_agent_connected',
            'Whether the agent is connected to its server',
            'gauge',
            link.connected ? 1 : 0,
          ),
          simple('berth_agent_connects_total', 'Connections made to the server', 'counter', link.connects),
          simple(
            'berth_agent_snapshots_sent_total',
            'Snapshots sent to the server',
            'counter',
            link.snapshotsSent,
          ),
          simple(
            'berth_agent_docker_connected',
            'Whether Docker answers',
            'gauge',
            watcher?.isConnected ? 1 : 0,
          ),
          simple('berth_agent_containers', 'Containers on this host', 'gauge', s?.containers.length ?? 0),
          simple(
            'berth_agent_routes',
            'Routes from this host (HTTP and TCP)',
            'gauge',
            (s?.routes.length ?? 0) + (s?.tcp?.length ?? 0),
          ),
          simple('berth_agent_exec_requests_total', 'Exec requests by outcome', 'counter', [
            [{ outcome: 'allowed' }, runner.counters.allowed],
            [{ outcome: 'denied' }, runner.counters.denied],
            [{ outcome: 'busy' }, runner.counters.busy],
          ]),
        ];
      })
    : undefined;
  logger.info({ servers, name, docker: endpoint, metrics: config['metrics-listen'] }, 'berth agent running');
  return {
    async stop() {
      watcher?.stop();
      link.stop();
      metrics?.close();
    },
  };
}

function agentKey(config: Config): string {
  if (config.key) return String(config.key).trim();
  if (config['key-file']) {
    const file = String(config['key-file']);
    try {
      return readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new UserError('CONFIG_INVALID', `--key-file ${file}: ${(err as Error).message}`);
    }
  }
  throw new UserError(
    'CONFIG_INVALID',
    'an agent key is required: --key, --key-file or BERTH_AGENT_KEY (berth keys create prints one)',
  );
}

/** GET /metrics and /healthz on their own small listener; the agent opens no other port. */
async function serveMetrics(listen: string, families: () => MetricFamily[]): Promise<Server> {
  const { host, port } = parseListen('metrics-listen', listen);
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
      reject(new UserError('CONFIG_INVALID', `--metrics-listen ${listen}: ${err.message}`)),
    );
    server.listen({ host: host || '127.0.0.1', port }, resolve);
  });
  return server;
}
