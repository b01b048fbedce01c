// Issue 21 with real traffic through the front door: caddy-docker-proxy and Traefik label sets
// that route as they do there — Traefik's loadbalancer.server.url (1), h2c upstreams (2), the
// caddy `uri strip_prefix` idiom (3) and replicas with identical labels sharing traffic (7).
// Replicas need addresses of their own, so the private dockerd, a bridge network of its own,
// `berth standalone` and its Caddy all live in a network namespace this test creates; a small
// helper process in that namespace answers h2c (as a gRPC-style upstream would) and makes the
// test's requests to the front door there, reached over a unix socket.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, inNetns, startBerth } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { type Logged, spawnLogged, waitUntil } from './support/proc.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
const NET = 'compat';
// Inside the namespace every port is free: nothing else listens there.
const H2C_PORT = 5050;
const URL_PORT = 5051;
const STRIP_PORT = 5052;
let d: TestDockerd;
let berth: BerthProcess;
let helper: Logged;
let socket: string;

/** Runs in the namespace: an h2c server on 127.0.0.1:H2C_PORT, and GETs on behalf of the test. */
const HELPER = `
const http = require('node:http');
const http2 = require('node:http2');
const [sock, h2port] = process.argv.slice(2);
http2
  .createServer((req, res) => res.end('h2c answered over HTTP/' + req.httpVersion + ' for ' + req.headers[':authority']))
  .listen(Number(h2port), '127.0.0.1');
http
  .createServer((req, res) => {
    const q = new URL(req.url, 'http://helper').searchParams;
    const out = http.request(
      { host: '127.0.0.1', port: Number(q.get('port')), path: q.get('path'), headers: { host: q.get('host') }, agent: false, timeout: 5000 },
      (r) => {
        let body = '';
        r.setEncoding('utf8');
        r.on('data', (c) => (body += c));
        r.on('end', () => res.end(JSON.stringify({ status: r.statusCode, body })));
      },
    );
    out.on('timeout', () => out.destroy(new Error('timeout')));
    out.on('error', (e) => res.end(JSON.stringify({ status: 0, body: e.message })));
    out.end();
  })
  .listen(sock, () => console.log('ready'));
`;

/** GET http://<front door><path> with Host: host, from inside the namespace. */
function get(host: string, path = '/'): Promise<{ status: number; body: string }> {
  const q = new URLSearchParams({ port: String(berth.httpPort), host, path });
  return new Promise((resolve) => {
    const req = request({ socketPath: socket, path: `/?${q}` }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve(JSON.parse(body)));
    });
    req.on('error', (e) => resolve({ status: 0, body: e.message }));
    req.end();
  });
}

async function serves(host: string, body: string, path = '/') {
  await waitUntil(async () => (await get(host, path)).body.includes(body), {
    timeoutMs: 30_000,
    intervalMs: 150,
    message: async () =>
      `${host}${path} never served "${body}"; last: ${JSON.stringify(await get(host, path))}\n${JSON.stringify(await berth.routes(), null, 1)}`,
  });
}

/** Bodies seen over `n` requests: both replicas answer when they share the route. */
async function bodies(host: string, n = 30): Promise<Set<string>> {
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) seen.add((await get(host)).body.trim());
  return seen;
}

/** busybox httpd answering "body of <name>" at / and "sub of <name>" at /sub/. */
const httpd = (name: string, listen: string) =>
  `mkdir -p /srv/www/sub && echo "body of ${name}" > /srv/www/index.html && echo "sub of ${name}" > /srv/www/sub/index.html && exec httpd -f -p ${listen} -h /srv/www`;

async function hostWeb(name: string, port: number, labels: Record<string, string>) {
  const r = await runHostContainer(d, name, labels, ['sh', '-c', httpd(name, `127.0.0.1:${port}`)]);
  expect(r.code, r.stderr).toBe(0);
}

/** A container on the namespace's own bridge network, with an address of its own, on port 80. */
async function bridgeWeb(name: string, labels: Record<string, string>) {
  const l = Object.entries(labels).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  await d.run(['run', '-d', '--network', NET, '--name', name, ...l, IMAGE, 'sh', '-c', httpd(name, '80')]);
}

/** A labelled container that serves nothing itself: the helper's h2c server is its port. */
async function labelsOnly(name: string, labels: Record<string, string>) {
  const r = await runHostContainer(d, name, labels, ['sleep', '100000']);
  expect(r.code, r.stderr).toBe(0);
}

beforeAll(async () => {
  d = await startDockerd({ name: 'compat', netns: true });
  await importBusybox(d, IMAGE);
  await d.run([
    'network',
    'create',
    '--driver',
    'bridge',
    '--subnet',
    '10.232.0.0/24',
    '-o',
    'com.docker.network.bridge.name=berthcompat0',
    NET,
  ]);
  const dir = mkdtempSync(join(tmpdir(), 'compat-'));
  socket = join(dir, 'helper.sock');
  writeFileSync(join(dir, 'helper.cjs'), HELPER);
  const [cmd, args] = inNetns(d.netns, process.execPath, [join(dir, 'helper.cjs'), socket, String(H2C_PORT)]);
  helper = spawnLogged(cmd, args);
  registerCleanup(() => helper.stop('SIGTERM', 5_000));
  await helper.waitFor(/ready/, 15_000);
  berth = await startBerth({ docker: d.dockerHost, netns: d.netns });
});

afterAll(async () => {
  await berth?.stop();
});

describe('caddy-docker-proxy labels', () => {
  it('{{upstreams h2c <port>}} speaks HTTP/2 without TLS to the upstream', async () => {
    await labelsOnly('caddy-grpc', {
      caddy: 'grpc.caddy.test',
      'caddy.reverse_proxy': `{{upstreams h2c ${H2C_PORT}}}`,
    });
    await serves('grpc.caddy.test', 'h2c answered over HTTP/2.0 for grpc.caddy.test');
  });

  it('route /app/* with uri strip_prefix /app strips the prefix, as handle_path does', async () => {
    await hostWeb('caddy-strip', STRIP_PORT, {
      caddy: 'strip.caddy.test',
      'caddy.route': '/app/*',
      'caddy.route.0_uri': 'strip_prefix /app',
      'caddy.route.1_reverse_proxy': `{{upstreams ${STRIP_PORT}}}`,
    });
    // /app/sub/ reaches the container as /sub/.
    await serves('strip.caddy.test', 'sub of caddy-strip', '/app/sub/');
    expect((await get('strip.caddy.test', '/app/')).body).toContain('body of caddy-strip');
  });

  it('containers with identical labels share traffic, without berth.group', async () => {
    const labels = { caddy: 'rep.caddy.test', 'caddy.reverse_proxy': '{{upstreams 80}}' };
    await bridgeWeb('caddy-rep-1', labels);
    await bridgeWeb('caddy-rep-2', labels);
    await waitUntil(async () => (await bodies('rep.caddy.test', 10)).size === 2, {
      timeoutMs: 30_000,
      intervalMs: 300,
      message: async () =>
        `only ${[...(await bodies('rep.caddy.test'))].join(' | ')}\n${JSON.stringify(await berth.routes(), null, 1)}`,
    });
    expect(await bodies('rep.caddy.test')).toEqual(new Set(['body of caddy-rep-1', 'body of caddy-rep-2']));
    const routes = (await berth.routes()).filter((r) => r.hosts.includes('rep.caddy.test'));
    expect(routes.map((r) => r.status)).toEqual(['applied', 'applied']);
  });
});

describe('Traefik labels', () => {
  it('loadbalancer.server.url naming this container is where traffic goes; one to elsewhere is refused', async () => {
    await hostWeb('tr-url', URL_PORT, {
      'traefik.http.routers.url.rule': 'Host(`url.traefik.test`)',
      'traefik.http.routers.url.service': 'url',
      'traefik.http.services.url.loadbalancer.server.url': `http://localhost:${URL_PORT}`,
      'traefik.http.routers.ext.rule': 'Host(`ext.traefik.test`)',
      'traefik.http.routers.ext.service': 'ext',
      'traefik.http.services.ext.loadbalancer.server.url': 'http://10.232.0.250:80',
    });
    // The container exposes no port: only the URL says where it listens.
    await serves('url.traefik.test', 'body of tr-url');
    expect((await get('ext.traefik.test')).status).toBe(404);
    const routes = await berth.routes();
    const errors = routes.filter((r) => r.container.name === 'tr-url' && r.status === 'error');
    expect(errors.flatMap((r) => r.errors).join('\n')).toMatch(
      /routers using service ext are not routed: the URL names 10\.232\.0\.250, which is not this container/,
    );
  });

  it('loadbalancer.server.scheme=h2c speaks HTTP/2 without TLS to the upstream', async () => {
    await labelsOnly('tr-grpc', {
      'traefik.http.routers.grpc.rule': 'Host(`grpc.traefik.test`)',
      'traefik.http.services.grpc.loadbalancer.server.port': String(H2C_PORT),
      'traefik.http.services.grpc.loadbalancer.server.scheme': 'h2c',
    });
    await serves('grpc.traefik.test', 'h2c answered over HTTP/2.0 for grpc.traefik.test');
  });

  it('containers with identical labels share traffic, as servers of one service', async () => {
    const labels = {
      'traefik.http.routers.rep.rule': 'Host(`rep.traefik.test`)',
      'traefik.http.services.rep.loadbalancer.server.port': '80',
    };
    await bridgeWeb('tr-rep-1', labels);
    await bridgeWeb('tr-rep-2', labels);
    await waitUntil(async () => (await bodies('rep.traefik.test', 10)).size === 2, {
      timeoutMs: 30_000,
      intervalMs: 300,
      message: async () =>
        `only ${[...(await bodies('rep.traefik.test'))].join(' | ')}\n${JSON.stringify(await berth.routes(), null, 1)}`,
    });
    expect(await bodies('rep.traefik.test')).toEqual(new Set(['body of tr-rep-1', 'body of tr-rep-2']));
  });
});
