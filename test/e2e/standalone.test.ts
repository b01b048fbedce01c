// berth standalone against a private dockerd and its own real Caddy, all on 127.0.0.0/8.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';

useCleanup();

let d: TestDockerd;
let berth: BerthProcess;
const IMAGE = 'berth-test/busybox:latest';

/** A host-network busybox httpd answering with its own body on 127.0.0.1:<port>. */
async function web(name: string, labels: Record<string, string>, port?: number, extra: string[] = []) {
  const p = port ?? (await freePort());
  const resolved = Object.fromEntries(
    Object.entries(labels).map(([k, v]) => [k, v.replace('$PORT', String(p))]),
  );
  const script = `mkdir -p /srv/www/sub && echo "body of ${name}" > /srv/www/index.html && echo "sub of ${name}" > /srv/www/sub/index.html && echo "root-sub of ${name}" > /srv/www/index2.html && exec httpd -f -p 127.0.0.1:${p} -h /srv/www`;
  await runHostContainer(d, name, resolved, ['sh', '-c', script], { extra });
  return p;
}

async function get(host: string, path = '/') {
  return httpGet(`http://127.0.0.1:${berth.httpPort}${path}`, { host });
}

async function serves(host: string, body: string, path = '/', timeoutMs = 20_000) {
  await waitUntil(async () => (await get(host, path)).body.includes(body), {
    timeoutMs,
    intervalMs: 100,
    message: async () =>
      `${host}${path} never served "${body}"; last: ${JSON.stringify(await get(host, path))}\n${berth.output()}`,
  });
}

async function gone(host: string, path = '/') {
  await waitUntil(async () => (await get(host, path)).status === 404, {
    timeoutMs: 20_000,
    intervalMs: 100,
    message: async () => `${host}${path} still served: ${JSON.stringify(await get(host, path))}`,
  });
}

beforeAll(async () => {
  d = await startDockerd({ name: 'standalone' });
  await importBusybox(d, IMAGE);
  berth = await startBerth({ docker: d.dockerHost });
});

afterAll(async () => {
  await berth?.stop();
});

describe('berth standalone', () => {
  it('shows its in-process agent connected and online, with its Docker version, like any agent', async () => {
    await waitUntil(async () => (await berth.status()).agents?.[0]?.dockerVersion !== undefined, {
      timeoutMs: 20_000,
      message: async () => `no heartbeat from the local agent: ${JSON.stringify(await berth.status())}`,
    });
    const st = await berth.status();
    expect(st.agents).toHaveLength(1);
    expect(st.agents[0]).toMatchObject({ kind: 'local', status: 'online', approved: true });
    const cli = await berth.cli(['status']);
    expect(cli.stdout).toMatch(/agent \S+ \(local\): online \(in-process\)/);
    expect(cli.stdout).not.toMatch(/disconnected/);
    const agents = JSON.parse((await berth.cli(['agents', 'list', '--json'])).stdout);
    expect(agents[0]).toMatchObject({ kind: 'local', status: 'online' });
  });

  it('serves a labelled container through Caddy and drops the route when it stops or goes', async () => {
    await web('alpha', { 'berth.host': 'alpha.test', 'berth.port': '$PORT' });
    await serves('alpha.test', 'body of alpha');
    const unknown = await get('nobody.test');
    expect(unknown.status).toBe(404);

    await d.run(['stop', '-t', '1', 'alpha']);
    await gone('alpha.test');
    await d.run(['start', 'alpha']);
    await serves('alpha.test', 'body of alpha');
    await d.run(['rm', '-f', 'alpha']);
    await gone('alpha.test');
    const routes = await berth.routes();
    expect(routes.find((r) => r.hosts.includes('alpha.test'))).toBeUndefined();
  });

  it('serves two routes from one container, path routes with strip_path, and honours enable=false', async () => {
    const port = await freePort();
    await web(
      'multi',
      {
        'berth.port': String(port),
        'berth.site.host': 'site.test',
        'berth.api.host': 'api.test,api2.test',
        'berth.api.path': '/v1',
        'berth.api.strip_path': 'true',
        'berth.raw.host': 'site.test',
        'berth.raw.path': '/sub',
      },
      port,
    );
    await web('off', { 'berth.host': 'off.test', 'berth.port': '$PORT', 'berth.enable': 'false' });
    await serves('site.test', 'body of multi');
    // strip_path: /v1/sub/ reaches the container as /sub/
    await serves('api.test', 'sub of multi', '/v1/sub/');
    await serves('api2.test', 'body of multi', '/v1/');
    // no strip: /sub/ reaches the container as /sub/
    await serves('site.test', 'sub of multi', '/sub/');
    expect((await get('api.test', '/other')).status).toBe(404);
    expect((await get('off.test')).status).toBe(404);
    const routes = await berth.routes();
    const mine = routes.filter((r) => r.container.name === 'multi');
    expect(mine.map((r) => `${r.hosts.join('+')}${r.path}:${r.status}`).sort()).toEqual([
      'api.test+api2.test/v1:applied',
      'site.test/:applied',
      'site.test/sub:applied',
    ]);
    expect(routes.some((r) => r.container.name === 'off')).toBe(false);
  });

  it('reports a container with bad labels in routes --json while every other route still serves', async () => {
    await web('good1', { 'berth.host': 'good1.test', 'berth.port': '$PORT' });
    await d.run([
      'run',
      '-d',
      '--network',
      'host',
      '--name',
      'broken',
      '-l',
      'berth.host=broken.test',
      '-l',
      'berth.port=eighty',
      '-l',
      'berth.bogus=1',
      IMAGE,
      'sleep',
      '600',
    ]);
    await web('good2', { 'berth.host': 'good2.test', 'berth.port': '$PORT' });
    await serves('good1.test', 'body of good1');
    await serves('good2.test', 'body of good2');
    await waitUntil(async () => (await berth.routes()).some((r) => r.container.name === 'broken'), {
      timeoutMs: 10_000,
      message: 'broken container never reported',
    });
    const routes = await berth.routes();
    const broken = routes.find((r) => r.container.name === 'broken')!;
    expect(broken.status).toBe('error');
    expect(broken.errors.join('\n')).toContain(
      'container broken: label berth.port="eighty": expected a port number from 1 to 65535',
    );
    expect(broken.errors.join('\n')).toContain('berth.bogus');
    expect((await get('broken.test')).status).toBe(404);
    const text = await berth.cli(['routes']);
    expect(text.stdout).toMatch(/broken.*error.*berth\.port="eighty"/);
  });

  it('keeps the first claim on a hostname and reports the conflict on the second', async () => {
    await web('first', { 'berth.host': 'clash.test', 'berth.port': '$PORT' });
    await serves('clash.test', 'body of first');
    await new Promise((r) => setTimeout(r, 1100)); // creation times have 1 s resolution
    await web('second', { 'berth.host': 'clash.test', 'berth.port': '$PORT' });
    await waitUntil(
      async () => (await berth.routes()).some((r) => r.container.name === 'second' && r.status === 'error'),
      {
        timeoutMs: 10_000,
        message: 'conflict never reported',
      },
    );
    const second = (await berth.routes()).find((r) => r.container.name === 'second')!;
    expect(second.errors[0]).toMatch(/clash\.test is already claimed by container first/);
    expect((await get('clash.test')).body).toContain('body of first');
  });

  it('keeps unhealthy containers out of the front door until they are healthy', async () => {
    const port = await freePort();
    await web('doc', { 'berth.host': 'doc.test', 'berth.port': String(port) }, port, [
      '--health-cmd',
      'test -f /tmp/ok',
      '--health-interval',
      '1s',
      '--health-retries',
      '1',
    ]);
    await waitUntil(
      async () => (await berth.routes()).find((r) => r.container.name === 'doc')?.status === 'pending',
      {
        timeoutMs: 10_000,
        message: 'doc never pending',
      },
    );
    expect((await get('doc.test')).status).toBe(404);
    await d.run(['exec', 'doc', 'touch', '/tmp/ok']);
    await serves('doc.test', 'body of doc');
    await d.run(['exec', 'doc', 'rm', '/tmp/ok']);
    await gone('doc.test');
    expect((await berth.routes()).find((r) => r.container.name === 'doc')?.note).toMatch(/unhealthy/);
  });

  it('serves 100 containers started at once without a single Caddy apply', async () => {
    const before = (await berth.status()).reconcile.applies as number;
    const started = Date.now();
    const ports: number[] = [];
    for (let i = 0; i < 100; i++) ports.push(await freePort());
    await Promise.all(
      ports.map((p, i) =>
        runHostContainer(d, `bulk${i}`, { 'berth.host': `bulk${i}.test`, 'berth.port': String(p) }, [
          'sh',
          '-c',
          `mkdir -p /w && echo bulk${i} > /w/index.html && exec httpd -f -p 127.0.0.1:${p} -h /w`,
        ]),
      ),
    );
    // A generous bound: on a loaded 2-core machine dockerd itself is slow to report 100 starts.
    for (let i = 0; i < 100; i++) await serves(`bulk${i}.test`, `bulk${i}`, '/', 60_000);
    const applies = ((await berth.status()).reconcile.applies as number) - before;
    console.log(
      `[figure] 100 containers: all serving after ${Date.now() - started} ms with ${applies} Caddy applies`,
    );
    // Simple hosts are served through the DNS responder in the (default) dynamic layout: a
    // burst of 100 new hosts costs Caddy no config change at all.
    expect(applies).toBe(0);
    await d.run(['rm', '-f', ...ports.map((_, i) => `bulk${i}`)]);
    await gone('bulk99.test');
  });

  it('puts routes back after Caddy is killed', async () => {
    await web('phoenix', { 'berth.host': 'phoenix.test', 'berth.port': '$PORT' });
    await serves('phoenix.test', 'body of phoenix');
    const pid = (await berth.status()).caddy[0].pid as number;
    process.kill(pid, 'SIGKILL');
    const t0 = Date.now();
    await serves('phoenix.test', 'body of phoenix');
    console.log(`[figure] Caddy killed: serving again after ${Date.now() - t0} ms`);
    expect((await berth.status()).caddy[0].pid).not.toBe(pid);
  });

  it('puts routes back after an edit made behind its back (drift)', async () => {
    await serves('phoenix.test', 'body of phoenix');
    const sock = `${berth.dataDir}/caddy-admin.sock`;
    // Replace Caddy's whole config with an empty one, as a careless operator might.
    const { CaddyAdmin } = await import('../../src/ingress/caddy/admin.js');
    const admin = new CaddyAdmin(`unix://${sock}`);
    await admin.load({ admin: { listen: `unix/${sock}`, config: { persist: false } } });
    expect((await get('phoenix.test')).status).toBe(0);
    const t0 = Date.now();
    await serves('phoenix.test', 'body of phoenix');
    const ms = Date.now() - t0;
    console.log(`[figure] drift repaired after ${ms} ms`);
    expect(ms).toBeLessThan(5_000);
  });

  it('recovers when dockerd restarts', async () => {
    await web('sturdy', { 'berth.host': 'sturdy.test', 'berth.port': '$PORT' }, undefined, [
      '--restart',
      'always',
    ]);
    await serves('sturdy.test', 'body of sturdy');
    await d.restart();
    await serves('sturdy.test', 'body of sturdy');
    // Events flow again: a container started after the restart is picked up.
    await web('after', { 'berth.host': 'after.test', 'berth.port': '$PORT' });
    await serves('after.test', 'body of after');
  });

  it('restarts with the same routes, and keeps serving through a crash', async () => {
    const before = (await berth.routes()).map((r) => `${r.id}:${r.status}`).sort();
    await berth.stop();
    await berth.restart();
    await serves('sturdy.test', 'body of sturdy');
    await waitUntil(
      async () =>
        JSON.stringify((await berth.routes()).map((r) => `${r.id}:${r.status}`).sort()) ===
        JSON.stringify(before),
      { timeoutMs: 20_000, message: 'routes after restart differ' },
    );

    // A crash leaves Caddy serving; the next Berth adopts it instead of starting a rival.
    const caddyPid = (await berth.status()).caddy[0].pid;
    await berth.kill();
    expect((await get('sturdy.test')).body).toContain('body of sturdy');
    await berth.restart();
    expect((await berth.status()).caddy[0].pid).toBe(caddyPid);
    await serves('after.test', 'body of after');
  });

  it('refuses the API without the token and explains malformed bodies', async () => {
    const none = await fetch(`${berth.apiUrl}/api/routes`);
    expect(none.status).toBe(401);
    const bad = await fetch(`${berth.apiUrl}/api/reconcile`, {
      method: 'POST',
      headers: { authorization: `Bearer ${berth.token}`, 'content-type': 'application/json' },
      body: '{"force": 1}',
    });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.message).toBe('invalid request: body.force: must be boolean');
    const cli = await berth.cli(['routes', '--token', 'wrong']);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/401 invalid token/);
  });
});
