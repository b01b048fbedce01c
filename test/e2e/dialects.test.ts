// Containers labelled for caddy-docker-proxy, Traefik, DockFlare and Berth, routed by one
// `berth standalone` through its real Caddy, against a private dockerd; `berth explain` shows
// how one of them was read.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BERTH_BIN, type BerthProcess, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';

useCleanup();

let d: TestDockerd;
let berth: BerthProcess;
const IMAGE = 'berth-test/busybox:latest';
const port: Record<string, number> = {};

/** A host-network busybox httpd answering with its own name on 127.0.0.1:<port>. */
async function web(name: string, labels: Record<string, string>) {
  const p = port[name]!;
  const resolved = Object.fromEntries(
    Object.entries(labels).map(([k, v]) => [k, v.replace('$PORT', String(p))]),
  );
  const script = `mkdir -p /srv/www/sub && echo "body of ${name}" > /srv/www/index.html && echo "sub of ${name}" > /srv/www/sub/index.html && exec httpd -f -p 127.0.0.1:${p} -h /srv/www`;
  const r = await runHostContainer(d, name, resolved, ['sh', '-c', script]);
  expect(r.code, r.stderr).toBe(0);
}

async function get(host: string, path = '/') {
  return httpGet(`http://127.0.0.1:${berth.httpPort}${path}`, { host });
}

async function serves(host: string, body: string, path = '/') {
  await waitUntil(async () => (await get(host, path)).body.includes(body), {
    timeoutMs: 30_000,
    intervalMs: 100,
    message: async () =>
      `${host}${path} never served "${body}"; last: ${JSON.stringify(await get(host, path))}\n${JSON.stringify(await berth.routes())}`,
  });
}

beforeAll(async () => {
  for (const n of ['caddyapp', 'traefikapp', 'flare', 'flare-private', 'native', 'both'])
    port[n] = await freePort();
  d = await startDockerd({ name: 'dialects' });
  await importBusybox(d, IMAGE);
  berth = await startBerth({ docker: d.dockerHost });
});

afterAll(async () => {
  await berth?.stop();
});

describe('label dialects', () => {
  it('routes one container per dialect through the front door', async () => {
    await web('caddyapp', {
      caddy: 'caddy.test',
      'caddy.reverse_proxy': '{{upstreams $PORT}}',
      'caddy.handle_path': '/api/*',
      'caddy.handle_path.0_reverse_proxy': '{{upstreams http $PORT}}',
      'caddy.encode': 'gzip',
    });
    await web('traefikapp', {
      'traefik.enable': 'true',
      'traefik.http.routers.tr.rule': 'Host(`traefik.test`) || Host(`www.traefik.test`)',
      'traefik.http.routers.tr.entrypoints': 'websecure',
      'traefik.http.routers.tr.tls.certresolver': 'letsencrypt',
      'traefik.http.services.tr.loadbalancer.server.port': '$PORT',
    });
    await web('flare', {
      'dockflare.enable': 'true',
      'dockflare.hostname': 'flare.test',
      'dockflare.service': 'http://flare:$PORT',
      'dockflare.access.policy': 'bypass',
    });
    // Behind Cloudflare Access (a sign-in Berth cannot apply): withheld, not served open.
    await web('flare-private', {
      'dockflare.enable': 'true',
      'dockflare.hostname': 'private.flare.test',
      'dockflare.service': 'http://flare-private:$PORT',
      'dockflare.access.policy': 'authenticate',
    });
    await web('native', { 'berth.host': 'berth.test', 'berth.port': '$PORT' });

    await serves('caddy.test', 'body of caddyapp');
    // handle_path strips its prefix: /api/sub/ reaches the container as /sub/.
    await serves('caddy.test', 'sub of caddyapp', '/api/sub/');
    await serves('traefik.test', 'body of traefikapp');
    await serves('www.traefik.test', 'body of traefikapp');
    await serves('flare.test', 'body of flare');
    await serves('berth.test', 'body of native');
    expect((await get('nobody.test')).status).toBe(404);

    const routes = await berth.routes();
    const line = (name: string) =>
      routes
        .filter((r) => r.container.name === name)
        .map((r) => `${r.hosts.join('+')}${r.path}:${r.status}`)
        .sort();
    expect(line('caddyapp')).toEqual(['caddy.test/:applied', 'caddy.test/api:applied']);
    expect(line('traefikapp')).toEqual(['traefik.test+www.traefik.test/:applied']);
    expect(line('flare')).toEqual(['flare.test/:applied']);
    expect(line('flare-private')).toEqual([]);
    expect((await get('private.flare.test')).status).toBe(404);
    const privately = await berth.cli(['explain', 'flare-private']);
    expect(privately.stdout).toMatch(
      /not routed: the route is behind Cloudflare Access \(dockflare\.access\.policy\)/,
    );
    expect(line('native')).toEqual(['berth.test/:applied']);
  });

  it('reads a container labelled twice once, in --dialects order', async () => {
    await web('both', {
      caddy: 'both.test',
      'caddy.reverse_proxy': '{{upstreams $PORT}}',
      'traefik.http.routers.both.rule': 'Host(`other-both.test`)',
      'traefik.http.services.both.loadbalancer.server.port': '$PORT',
    });
    await serves('both.test', 'body of both');
    expect((await get('other-both.test')).status).toBe(404);
  });

  it('berth explain shows the dialect, each label and the routes', async () => {
    const text = await berth.cli(['explain', 'traefikapp']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^container traefikapp \([0-9a-f]{12}\) on agent .*: labels read as traefik/);
    const row = (key: string) => text.stdout.split('\n').find((l) => l.startsWith(`${key} `)) ?? '';
    expect(row('traefik.http.routers.tr.rule')).toMatch(
      new RegExp(`route +traefik\\.test,www\\.traefik\\.test → http://127\\.0\\.0\\.1:${port.traefikapp}`),
    );
    expect(row('traefik.http.routers.tr.entrypoints')).toMatch(/ignored +entrypoints are not translated/);
    expect(row('traefik.http.routers.tr.tls.certresolver')).toMatch(/ignored +TLS option tls\.certresolver/);
    expect(row('traefik.enable')).toMatch(/ used/);
    expect(text.stdout).toMatch(
      new RegExp(`traefik\\.test,www\\.traefik\\.test +http://127\\.0\\.0\\.1:${port.traefikapp} +applied`),
    );

    const json = await berth.cli(['explain', '--json', 'both']);
    expect(json.code, json.stderr).toBe(0);
    const r = JSON.parse(json.stdout);
    expect(r.dialect).toBe('caddy');
    expect(r.container.name).toBe('both');
    expect(r.labels.find((l: { key: string }) => l.key === 'traefik.http.routers.both.rule')).toMatchObject({
      use: 'ignored',
      note: 'traefik label: the container is read as caddy',
    });
    expect(r.routes).toEqual([
      expect.objectContaining({
        hosts: ['both.test'],
        path: '/',
        upstream: `http://127.0.0.1:${port.both}`,
        status: 'applied',
      }),
    ]);
    expect(r.diagnostics.map((x: { message: string }) => x.message).join('\n')).toMatch(
      /ignored: the container also has traefik labels \(2\); it is read as caddy/,
    );

    const missing = await berth.cli(['explain', 'nosuchcontainer']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('no container or service "nosuchcontainer"');
  });

  it('refuses an unknown dialect before starting anything', async () => {
    const run = promisify(execFile);
    const err = await run(process.execPath, [BERTH_BIN, 'standalone', '--dialects', 'caddy,nginx'], {
      timeout: 10_000,
    }).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(2);
    expect(err?.stderr).toContain(
      '--dialects: expected a comma-separated list of berth, caddy, traefik, dockflare, got "nginx"',
    );
  });
});
