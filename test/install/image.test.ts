// The image and the compose stacks, as an operator uses them: scripts/build-image on a private
// dockerd, then `docker run` and docker-compose on two "hosts" (dockerds in network namespaces of
// this test, joined by a veth pair). Run by scripts/test-install, not by the main suite.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useCleanup } from '../e2e/support/cleanup.js';
import { importBusybox, type TestDockerd } from '../e2e/support/dockerd.js';
import { waitUntil } from '../e2e/support/proc.js';
import {
  BUSYBOX,
  type BuildSummary,
  buildImage,
  compose,
  copyImages,
  createAgentKey,
  ensureCompose,
  getFrom,
  type Host,
  ROOT,
  runLabelledWeb,
  runStandalone,
  serviceContainer,
  startBuildDockerd,
  twoHosts,
  VERSION,
} from './support.js';

useCleanup();
const run = promisify(execFile);

const IMAGES = ['berth:latest', `berth:${VERSION}`, 'berth-socket-proxy:latest'];
let builder: TestDockerd;
let built: BuildSummary | undefined;
let a: Host;
let b: Host;

beforeAll(async () => {
  ensureCompose();
  builder = await startBuildDockerd();
  [a, b] = await twoHosts();
  await importBusybox(a.d, BUSYBOX);
  await importBusybox(b.d, BUSYBOX);
  for (const h of [a, b]) await h.d.run(['network', 'create', 'apps']);
}, 300_000);

async function health(d: TestDockerd, container: string): Promise<string> {
  const r = await d.run([
    'inspect',
    '--format',
    '{{if .State.Health}}{{.State.Health.Status}}{{end}}',
    container,
  ]);
  return r.stdout.trim();
}

async function waitHealthy(d: TestDockerd, container: string): Promise<void> {
  // The first check runs one interval (30 s, unless the run sets another) after the start.
  await waitUntil(async () => (await health(d, container)) === 'healthy', {
    timeoutMs: 90_000,
    intervalMs: 500,
    message: async () => {
      const r = await d.docker(['inspect', '--format', '{{json .State.Health}}', container]);
      const logs = await d.docker(['logs', '--tail', '30', container]);
      return `${container} never became healthy: ${r.stdout}\n${logs.stdout}${logs.stderr}`;
    },
  });
}

/** Waits until `url` (from inside the host's namespace, with a Host header) answers `body`. */
async function waitServed(h: Host, url: string, hostname: string, body: string, why: () => Promise<string>) {
  await waitUntil(async () => (await getFrom(h.netns, url, { host: hostname })).body.trim() === body, {
    timeoutMs: 60_000,
    intervalMs: 250,
    message: async () => `${url} (Host: ${hostname}) never answered "${body}"\n${await why()}`,
  });
}

describe('the image', () => {
  it(
    'scripts/build-image builds berth:latest and berth:<version> from a base it makes itself',
    async () => {
      built = await buildImage(builder);
      expect(built.tags).toEqual(['berth:latest', `berth:${VERSION}`]);
      const ids = await Promise.all(
        IMAGES.slice(0, 2).map(
          async (t) => (await builder.run(['image', 'inspect', '--format', '{{.Id}}', t])).stdout,
        ),
      );
      expect(ids[0]).toBe(ids[1]);
      // The base came from Debian's packages through docker import: no registry was involved.
      const base = await builder.run(['image', 'inspect', '--format', '{{len .RootFS.Layers}}', built.base]);
      expect(base.stdout.trim()).toBe('1');
      await copyImages(builder, [a.d, b.d], IMAGES);
    },
    45 * 60_000,
  );

  it('is at most 250 MB, runs as a non-root user, checks /healthz, and carries Caddy and Node.js ≥ 20.19', async () => {
    expect(built, 'the build failed').toBeDefined();
    const inspect = JSON.parse((await a.d.run(['image', 'inspect', 'berth:latest'])).stdout)[0];
    expect(inspect.Size).toBeLessThanOrEqual(250 * 1000 * 1000);
    expect(inspect.Config.User).toBe('10001:10001');
    expect(inspect.Config.Healthcheck.Test).toEqual(['CMD', 'node', '/app/healthcheck.mjs']);
    const versions = await a.d.run([
      'run',
      '--rm',
      '--network',
      'none',
      '--entrypoint',
      'sh',
      'berth:latest',
      '-c',
      'id -u; node --version; caddy version; berth --version',
    ]);
    const [uid, node, caddy, berth] = versions.stdout.trim().split('\n');
    expect(uid).toBe('10001');
    const [major, minor] = node!.slice(1).split('.').map(Number);
    expect(major! > 20 || (major === 20 && minor! >= 19)).toBe(true);
    expect(caddy).toMatch(/^v?2\.\d+/);
    expect(berth).toBe(VERSION);
  });

  it('runs `standalone` read-only with only /data writable, healthy, serving a labelled container', async () => {
    expect(built, 'the build failed').toBeDefined();
    await runLabelledWeb(a, 'hello', 8181, 'hello.test');
    await runStandalone(a, 'standalone', 8080, ['--health-interval', '1s']);
    const logs = async () => {
      const r = await a.d.docker(['logs', '--tail', '40', 'standalone']);
      return r.stdout + r.stderr;
    };
    await waitServed(a, `http://${a.ip}:8080/`, 'hello.test', 'body of hello', logs);
    await waitHealthy(a.d, 'standalone');

    const inside = async (cmd: string) => a.d.docker(['exec', 'standalone', 'sh', '-c', cmd]);
    expect((await inside('id -u')).stdout.trim()).toBe('10001');
    expect((await inside('touch /app/x')).code).not.toBe(0);
    expect((await inside('touch /tmp/x')).code).not.toBe(0);
    expect((await inside('touch /data/x && echo ok')).stdout.trim()).toBe('ok');
    // Berth's own Caddy runs inside the container, as the same user.
    const ps = await inside('for p in /proc/[0-9]*; do echo "$(cat $p/comm) $(stat -c %u $p)"; done');
    expect(ps.stdout).toMatch(/^caddy 10001$/m);
    // The API answers on the container's loopback only (no BERTH_API_LISTEN given).
    expect((await getFrom(a.netns, `http://${a.ip}:7080/healthz`)).status).toBe(0);
    await a.d.run(['rm', '-f', 'standalone', 'hello']);
  });
});

describe('the compose stacks', () => {
  const agentEnv = (key: string) => ({
    BERTH_SERVER: `https://${a.ip}:7443`,
    BERTH_AGENT_KEY: key,
    BERTH_HOST_IP: b.ip,
    BERTH_NAME: 'host-b',
    DOCKER_SOCKET: b.d.socket,
  });

  it('pass docker-compose config', async () => {
    await run('docker-compose', ['-f', 'deploy/compose.server.yml', 'config', '-q'], { cwd: ROOT });
    await run('docker-compose', ['-f', 'deploy/compose.agent.yml', 'config', '-q'], {
      cwd: ROOT,
      env: { ...process.env, ...agentEnv('k') },
    });
    // The agent stack says what it needs rather than starting half-configured.
    const missing = await run('docker-compose', ['-f', 'deploy/compose.agent.yml', 'config', '-q'], {
      cwd: ROOT,
      env: { ...process.env, BERTH_SERVER: '', BERTH_AGENT_KEY: '', BERTH_HOST_IP: '' },
    }).catch((e: { stderr: string }) => e);
    expect('stderr' in missing ? missing.stderr : '').toMatch(/set BERTH_SERVER/);
  });

  it('serve a container on one host through the front door of a server stack on another', async () => {
    expect(built, 'the build failed').toBeDefined();
    await compose(a.d, 'berth-server', 'deploy/compose.server.yml', ['up', '-d'], {
      BERTH_TLS: 'off',
      BERTH_PUBLIC_NAME: a.ip,
    });
    const server = await serviceContainer(a.d, 'berth-server', 'berth');
    await waitUntil(async () => (await getFrom(a.netns, `http://${a.ip}:7080/readyz`)).status === 200, {
      timeoutMs: 60_000,
      intervalMs: 250,
      message: async () => `the server never became ready\n${(await a.d.docker(['logs', server])).stderr}`,
    });
    const key = await createAgentKey(a, server, 'host-b', '*.test');

    await runLabelledWeb(b, 'web', 8282, 'web.test');
    await compose(b.d, 'berth-agent', 'deploy/compose.agent.yml', ['up', '-d'], agentEnv(key));
    const agent = await serviceContainer(b.d, 'berth-agent', 'berth-agent');
    const why = async () =>
      `${(await a.d.docker(['exec', server, 'berth', 'routes'])).stdout}\nagent:\n${(await b.d.docker(['logs', '--tail', '30', agent])).stderr}`;
    await waitServed(a, `http://${a.ip}/`, 'web.test', 'body of web', why);
    await waitHealthy(a.d, server);
    await waitHealthy(b.d, agent);

    // Both run as the image's user with a read-only root.
    for (const [d, c] of [
      [a.d, server],
      [b.d, agent],
    ] as const) {
      expect((await d.run(['exec', c, 'id', '-u'])).stdout.trim()).toBe('10001');
      expect((await d.docker(['exec', c, 'touch', '/app/x'])).code).not.toBe(0);
    }
    // The stack sets net.ipv4.tcp_migrate_req in the server's namespace, where Berth may not:
    // Caddy's reloads keep the connections waiting to be accepted.
    const status = JSON.parse((await a.d.docker(['exec', server, 'berth', 'status', '--json'])).stdout);
    expect(status.caddy[0].reloadQueue).toBe('on');
    // The agent reaches Docker only through the proxy, and the proxy only lets reads through.
    const ask = async (method: string, path: string) => {
      const r = await b.d.run([
        'exec',
        agent,
        'node',
        '-e',
        `fetch('http://docker-socket-proxy:2375${path}', { method: '${method}' }).then((r) => console.log(r.status))`,
      ]);
      return Number(r.stdout.trim());
    };
    expect(await ask('GET', '/v1.41/containers/json')).toBe(200);
    expect(await ask('GET', '/version')).toBe(200);
    expect(await ask('POST', '/v1.41/containers/create')).toBe(403);
    expect(await ask('DELETE', '/v1.41/containers/web')).toBe(403);
    expect(await ask('GET', '/v1.41/images/json')).toBe(403);
    expect(await ask('GET', '/v1.41/secrets')).toBe(403);
    // The agent container has no Docker socket of its own.
    expect((await b.d.docker(['exec', agent, 'test', '-e', '/var/run/docker.sock'])).code).not.toBe(0);

    // A container stopping leaves the front door.
    await b.d.run(['stop', '-t', '0', 'web']);
    await waitUntil(
      async () => (await getFrom(a.netns, `http://${a.ip}/`, { host: 'web.test' })).status === 404,
      {
        timeoutMs: 60_000,
        intervalMs: 250,
        message: why,
      },
    );
  });
});

afterAll(async () => {
  // Stacks first (their networks), then the daemons go with the cleanups.
  if (b)
    await compose(b.d, 'berth-agent', 'deploy/compose.agent.yml', ['down', '-v'], {
      BERTH_SERVER: 'x',
      BERTH_AGENT_KEY: 'x',
      BERTH_HOST_IP: 'x',
      DOCKER_SOCKET: b.d.socket,
    }).catch(() => {});
  if (a) await compose(a.d, 'berth-server', 'deploy/compose.server.yml', ['down', '-v']).catch(() => {});
}, 120_000);
