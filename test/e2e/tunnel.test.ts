// Tunnels (`berth agent --tunnel`) with real processes: two tunnel hosts, each a network namespace
// of this test with its own dockerd, agent and app, whose app listens on the namespace's own
// loopback (nothing outside can reach it); one directly reachable host on the bridge; the server
// and the front door in this namespace. Everything the tunnel hosts serve crosses connections
// their agents opened to the server's agent listener. Screenshots of the UI go to
// test-output/tunnel/.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { type AgentProcess, type BerthProcess, inNetns, startAgent, startBerth } from './support/berth.js';
import { openBrowser, signIn } from './support/browser.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { startFakeServer } from './support/fake-server.js';
import { freePort } from './support/ports.js';
import { httpGet, type Logged, spawnLogged, waitUntil } from './support/proc.js';
import { startBridge } from './support/swarm.js';

useCleanup();

const APP = resolve(import.meta.dirname, 'support/tunnel-app.mjs');
const APP_PORT = 8080;
const ECHO_PORT = 9000;
const MiB = 1 << 20;
const SHOTS = resolve(import.meta.dirname, '../../test-output/tunnel');
/**
 * t2's HTTPS listeners, on its loopback: a certificate for 127.0.0.1 (the address the agent
 * dials), one the front door trusts but made for another address, and one it does not trust.
 */
const TLS_PORT = 8443;
const TLS_WRONG_NAME_PORT = 8444;
const TLS_UNTRUSTED_PORT = 8445;

interface Host {
  name: string;
  d: TestDockerd;
  addr: string;
  app: Logged;
  agent?: AgentProcess;
}

let berth: BerthProcess;
let key: string;
let tcpFront: number;
const hosts: Host[] = [];
const byName = (n: string) => hosts.find((h) => h.name === n)!;

/** The app in a namespace, on `ip` (the namespace's loopback for a tunnel host). */
async function startApp(d: TestDockerd, ip: string, name: string, extra: string[] = []): Promise<Logged> {
  const [cmd, args] = inNetns(d.netns, process.execPath, [
    APP,
    ip,
    String(APP_PORT),
    String(ECHO_PORT),
    name,
    ...extra,
  ]);
  const p = spawnLogged(cmd, args);
  registerCleanup(() => p.stop('SIGTERM', 5_000));
  await p.waitFor(/listening/, 15_000);
  return p;
}

/** A container on the host network of the namespace whose labels route to the app there. */
const routeTo = (h: Host, cname: string, labels: Record<string, string>) =>
  runHostContainer(h.d, cname, { 'berth.port': String(APP_PORT), ...labels }, ['sleep', '100000']);

const front = (host: string, path = '/') => httpGet(`http://127.0.0.1:${berth.httpPort}${path}`, { host });

async function serves(host: string, body: string, path = '/') {
  await waitUntil(async () => (await front(host, path)).body.includes(body), {
    timeoutMs: 30_000,
    intervalMs: 100,
    message: async () =>
      `${host} never served "${body}": ${JSON.stringify(await front(host, path))}\n${JSON.stringify(await berth.routes())}\n${berth.output()}`,
  });
}

/** Streams GET host/path through the front door: bytes, sha256 and the x-sha256 the app sent. */
function download(
  host: string,
  path: string,
  o: { onData?: (total: number) => void } = {},
): Promise<{ status: number; bytes: number; sha256: string; expected?: string; error?: string }> {
  return new Promise((done) => {
    const h = createHash('sha256');
    let bytes = 0;
    const req = request(
      { host: '127.0.0.1', port: berth.httpPort, path, headers: { host }, agent: false },
      (res) => {
        res.on('data', (c: Buffer) => {
          bytes += c.length;
          h.update(c);
          o.onData?.(bytes);
        });
        let finished = false;
        const finish = (error?: string) => {
          if (finished) return;
          finished = true;
          done({
            status: res.statusCode ?? 0,
            bytes,
            sha256: h.digest('hex'),
            expected: res.headers['x-sha256'] as string | undefined,
            ...(error ? { error } : {}),
          });
        };
        res.on('end', () => (res.complete ? finish() : finish('incomplete')));
        res.on('error', (e) => finish(e.message));
        res.on('aborted', () => finish('aborted'));
      },
    );
    req.on('error', (e) => done({ status: 0, bytes, sha256: '', error: e.message }));
    req.end();
  });
}

/** A self-signed certificate (and its key) for one IP address, made with Debian's openssl. */
async function selfSigned(dir: string, name: string, ip: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await promisify(execFile)('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-addext',
    `subjectAltName=IP:${ip}`,
    '-keyout',
    key,
    '-out',
    cert,
  ]);
  return { cert, key };
}

/**
 * t2's HTTPS certificates, and the CA bundle the front door trusts: as an operator would, the
 * server's Caddy is given the upstream's certificate as a trusted root (SSL_CERT_FILE, which Go's
 * TLS reads, as it reads the system's bundle without it).
 */
async function makeCerts(): Promise<{ appArgs: string[]; bundle: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'btls-'));
  const good = await selfSigned(dir, 'tls-good', '127.0.0.1');
  const wrongName = await selfSigned(dir, 'tls-wrong-name', '192.0.2.1');
  const untrusted = await selfSigned(dir, 'tls-untrusted', '127.0.0.1');
  const bundle = join(dir, 'trusted.pem');
  writeFileSync(bundle, readFileSync(good.cert, 'utf8') + readFileSync(wrongName.cert, 'utf8'));
  const arg = (port: number, c: { cert: string; key: string }) => `https:${port}:${c.cert}:${c.key}`;
  return {
    appArgs: [arg(TLS_PORT, good), arg(TLS_WRONG_NAME_PORT, wrongName), arg(TLS_UNTRUSTED_PORT, untrusted)],
    bundle,
  };
}

beforeAll(async () => {
  const certs = await makeCerts();
  const bridge = startBridge();
  const ds = await Promise.all(['t1', 't2', 'direct'].map((name) => startDockerd({ name, netns: true })));
  for (const [i, name] of ['t1', 't2', 'direct'].entries()) {
    const d = ds[i]!;
    const addr = bridge.join(d.netns!, i);
    await importBusybox(d);
    // Tunnel hosts serve on their own loopback; the direct host on its bridge address.
    const app = await startApp(
      d,
      name === 'direct' ? addr : '127.0.0.1',
      name,
      name === 't2' ? certs.appArgs : [],
    );
    hosts.push({ name, d, addr, app });
  }
  tcpFront = await freePort();
  berth = await startBerth({
    command: 'server',
    apiHost: bridge.gateway,
    args: ['--tcp-bind', '127.0.0.1'],
    env: { SSL_CERT_FILE: certs.bundle },
  });
  const created = await berth.cli(['keys', 'create', '--name', 'hosts', '--auto-approve']);
  expect(created.code, created.stderr).toBe(0);
  key = /^\s+(berth_agent_\S+)$/m.exec(created.stdout)?.[1] ?? '';
  const t1 = byName('t1');
  const t2 = byName('t2');
  const direct = byName('direct');
  await routeTo(t1, 'app1', {
    'berth.host': 't1.test',
    'berth.tcp.echo.listen': String(tcpFront),
    'berth.tcp.echo.port': String(ECHO_PORT),
  });
  await routeTo(t2, 'app2', { 'berth.host': 't2.test' });
  const https = (port: number) => ({ 'berth.port': String(port), 'berth.scheme': 'https' });
  await routeTo(t2, 'tls-good', { 'berth.host': 'tls.test', ...https(TLS_PORT) });
  await routeTo(t2, 'tls-wrong-name', { 'berth.host': 'tls-wrong-name.test', ...https(TLS_WRONG_NAME_PORT) });
  await routeTo(t2, 'tls-untrusted', { 'berth.host': 'tls-untrusted.test', ...https(TLS_UNTRUSTED_PORT) });
  for (const h of [t1, t2, direct])
    await routeTo(h, `share-${h.name}`, { 'berth.host': 'shared.test', 'berth.group': 'pool' });
  for (const h of [t1, t2, direct]) {
    const tunnel = h.name !== 'direct';
    h.agent = await startAgent({
      server: berth.agentUrl,
      key,
      docker: h.d.dockerHost,
      hostIp: tunnel ? '127.0.0.1' : h.addr,
      name: h.name,
      netns: h.d.netns!,
      args: tunnel ? ['--tunnel'] : [],
    });
  }
  await serves('t1.test', 'hello from t1');
  await serves('t2.test', 'hello from t2');
});

afterAll(async () => {
  for (const h of hosts) await h.agent?.stop();
  await berth?.stop();
});

describe('tunnels', () => {
  it('serves a tunnel host the front door cannot reach, and shows the tunnel', async () => {
    // The app is on the namespace's loopback: no route from here reaches it, even at the host's address.
    const direct = await httpGet(`http://${byName('t1').addr}:${APP_PORT}/`, { timeoutMs: 2_000 });
    expect(direct.status).toBe(0);
    expect((await front('t1.test')).body).toBe('hello from t1\n');
    const routes = await berth.routes();
    const r = routes.find((x) => x.hosts.includes('t1.test'))!;
    expect(r).toMatchObject({
      tunnel: 'tunnel:t1',
      upstreams: [`http://127.0.0.1:${APP_PORT}`],
      status: 'applied',
    });
    const text = await berth.cli(['routes']);
    expect(text.stdout).toContain(`tunnel:t1 → http://127.0.0.1:${APP_PORT}`);
    const agents = await berth.cli(['agents', 'list']);
    expect(agents.stdout).toMatch(/t1\s+online, tunnel/);
    expect(agents.stdout).not.toMatch(/direct\s+online, tunnel/);
    // Nothing of the agent listens: the agent opened no port of its own.
    expect(byName('t1').agent!.output()).not.toMatch(/listening on/i);
  });

  it('carries an HTTPS upstream, its certificate checked against the address the agent dials', async () => {
    // Over TLS from the front door's Caddy to the app: the agent and the tunnel carry only ciphertext.
    await serves('tls.test', '"encrypted":true');
    const got = await front('tls.test');
    expect(got.status).toBe(200);
    // No SNI, as for a direct upstream dialled at an IP address.
    expect(JSON.parse(got.body)).toEqual({ name: 't2', port: TLS_PORT, encrypted: true, servername: null });
    const routes = await berth.routes();
    expect(routes.find((r) => r.hosts.includes('tls.test'))).toMatchObject({
      tunnel: 'tunnel:t2',
      upstreams: [`https://127.0.0.1:${TLS_PORT}`],
      status: 'applied',
    });
    // The certificate is really checked: one for another address, and one Caddy does not trust,
    // are refused with a 502, while their routes are applied like the one above.
    for (const host of ['tls-wrong-name.test', 'tls-untrusted.test']) {
      expect(routes.find((r) => r.hosts.includes(host))).toMatchObject({
        tunnel: 'tunnel:t2',
        status: 'applied',
      });
      expect((await front(host)).status, host).toBe(502);
    }
    const caddyLog = readFileSync(join(berth.dataDir, 'caddy.log'), 'utf8');
    expect(caddyLog).toContain('certificate is valid for 192.0.2.1, not 127.0.0.1');
    expect(caddyLog).toMatch(/certificate signed by unknown authority/);
  });

  it('shows the tunnel on the Routes and Agents pages of the web UI', async () => {
    mkdirSync(SHOTS, { recursive: true });
    const page = await openBrowser({ width: 1400, height: 900 });
    await signIn(page, berth.apiUrl, berth.token);
    await page.locator('nav a[data-page=routes]').click();
    const upstream = (host: string) => page.locator(`#routes tr[data-route="${host}"] td:nth-child(3)`);
    await expect
      .poll(() => upstream('t1.test').textContent(), { timeout: 20_000 })
      .toBe(`tunnel:t1 → http://127.0.0.1:${APP_PORT}`);
    expect(await upstream('t1.test').getAttribute('data-tunnel')).toBe('tunnel:t1');
    expect(await upstream('tls.test').textContent()).toBe(`tunnel:t2 → https://127.0.0.1:${TLS_PORT}`);
    // The shared group: two tunnelled upstreams and the direct host's own address, without a tunnel.
    const shared = (await upstream('shared.test').allTextContents()).sort();
    expect(shared).toEqual([
      `http://${byName('direct').addr}:${APP_PORT}`,
      `tunnel:t1 → http://127.0.0.1:${APP_PORT}`,
      `tunnel:t2 → http://127.0.0.1:${APP_PORT}`,
    ]);
    // The route filter finds a tunnel's routes by its name.
    await page.locator('#route-filter').fill('tunnel:t1');
    await expect
      .poll(() => page.locator('#routes tbody tr').count())
      .toBe((await berth.routes()).filter((r) => r.tunnel === 'tunnel:t1').length);
    await page.locator('#route-filter').fill('');
    await page.screenshot({ path: join(SHOTS, 'routes.png'), fullPage: true });

    await page.locator('nav a[data-page=agents]').click();
    const agent = (name: string) => page.locator(`#agents tr[data-agent="${name}"]`);
    await expect
      .poll(() => agent('t1').locator('[data-status]').textContent(), { timeout: 20_000 })
      .toBe('online');
    for (const name of ['t1', 't2'])
      expect(await agent(name).locator('[data-tunnel]').textContent()).toBe(' (tunnel)');
    expect(await agent('direct').locator('[data-tunnel]').count()).toBe(0);
    await page.screenshot({ path: join(SHOTS, 'agents.png'), fullPage: true });
  });

  it('downloads and uploads 256 MiB byte for byte', async () => {
    const got = await download('t1.test', `/bytes?n=${256 * MiB}`);
    expect(got).toMatchObject({ status: 200, bytes: 256 * MiB });
    expect(got.error).toBeUndefined();
    expect(got.sha256).toBe(got.expected);

    const sent = createHash('sha256');
    const block = randomBytes(MiB);
    const answer = await new Promise<{ bytes: number; sha256: string }>((done, fail) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: berth.httpPort,
          method: 'POST',
          path: '/upload',
          headers: { host: 't1.test', 'content-length': 256 * MiB },
          agent: false,
        },
        (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => done(JSON.parse(body)));
        },
      );
      req.on('error', fail);
      let i = 0;
      const pump = () => {
        while (i < 256) {
          const c = Buffer.from(block);
          c.writeUInt32BE(i++, 0);
          sent.update(c);
          if (!req.write(c)) return req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    expect(answer).toEqual({ bytes: 256 * MiB, sha256: sent.digest('hex') });
  });

  it('keeps a WebSocket open through 20 route changes', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${berth.httpPort}/ws`, { headers: { host: 't1.test' } });
    await new Promise((r, f) => ws.once('open', r).once('error', f));
    let closed = false;
    ws.on('close', () => {
      closed = true;
    });
    const echo = (text: string) =>
      new Promise<string>((r) => {
        ws.once('message', (m) => r(m.toString()));
        ws.send(text);
      });
    const t2 = byName('t2');
    for (let i = 0; i < 20; i++) {
      // Each change adds a route (even), or removes the one added before (odd).
      if (i % 2 === 0) await routeTo(t2, 'churn', { 'berth.host': `churn${i}.test` });
      else await t2.d.run(['rm', '-f', 'churn']);
      await waitUntil(
        async () => {
          const has = (await berth.routes()).some((r) => r.hosts.includes(`churn${i - (i % 2)}.test`));
          return i % 2 === 0 ? has : !has;
        },
        { timeoutMs: 20_000, message: `route change ${i} never showed` },
      );
      expect(await echo(`change ${i}`)).toBe(`change ${i}`);
    }
    expect(closed).toBe(false);
    ws.close();
  });

  it('streams server-sent events as they come', async () => {
    const events = await new Promise<string[]>((done, fail) => {
      const seen: string[] = [];
      const req = request(
        { host: '127.0.0.1', port: berth.httpPort, path: '/sse', headers: { host: 't1.test' }, agent: false },
        (res) => {
          expect(res.headers['content-type']).toContain('text/event-stream');
          res.setEncoding('utf8');
          res.on('data', (c: string) => {
            for (const m of c.matchAll(/data: (tick \d+ from t1)/g)) seen.push(m[1]!);
            if (seen.length >= 3) {
              req.destroy();
              done(seen);
            }
          });
        },
      );
      req.on('error', (e) => (seen.length >= 3 ? undefined : fail(e)));
      req.end();
    });
    expect(events.slice(0, 3)).toEqual(['tick 1 from t1', 'tick 2 from t1', 'tick 3 from t1']);
  });

  it('carries a TCP route with half-close', async () => {
    const answer = await new Promise<string>((done, fail) => {
      const s = netConnect({ host: '127.0.0.1', port: tcpFront, allowHalfOpen: true });
      let got = '';
      s.on('data', (d) => {
        got += d.toString();
      });
      s.on('end', () => {
        s.end();
        done(got);
      });
      s.on('error', fail);
      s.on('connect', () => {
        s.write('hello tunnel');
        // Our half-close reaches the app, which still answers after it.
        setTimeout(() => s.end(), 200);
      });
    });
    expect(answer).toBe('hello tunnelbye 12\n');
  });

  it('shares one group between two tunnel hosts and a direct host', async () => {
    const seen = new Set<string>();
    await waitUntil(
      async () => {
        const r = await front('shared.test');
        if (r.status === 200) seen.add(r.body.trim());
        return seen.size === 3;
      },
      { timeoutMs: 30_000, intervalMs: 20, message: () => `only ${[...seen].join(', ')} answered` },
    );
    expect([...seen].sort()).toEqual(['hello from direct', 'hello from t1', 'hello from t2']);
    const routes = (await berth.routes()).filter((r) => r.hosts.includes('shared.test'));
    expect(routes.map((r) => r.tunnel ?? 'direct').sort()).toEqual(['direct', 'tunnel:t1', 'tunnel:t2']);
  });

  it("keeps another request path working while one stream's reader takes 1 KiB/s", async () => {
    // A reader that takes 1 KiB a second: its stream's buffers fill and stay full.
    const slow = request({
      host: '127.0.0.1',
      port: berth.httpPort,
      path: `/bytes?n=${512 * MiB}`,
      headers: { host: 't1.test' },
      agent: false,
    });
    let slowBytes = 0;
    const reading = new Promise<void>((r) =>
      slow.on('response', (res) => {
        res.pause();
        const tick = setInterval(() => {
          const c = res.read(1024) as Buffer | null;
          if (c) slowBytes += c.length;
        }, 1_000);
        registerCleanup(() => clearInterval(tick));
        setTimeout(r, 2_000);
      }),
    );
    slow.end();
    await reading;
    // The same agent's tunnel, another route's requests: they all complete.
    const times: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      const r = await front('t1.test', '/ping');
      times.push(performance.now() - t0);
      expect(r.status).toBe(200);
      expect(r.body).toBe('pong');
    }
    times.sort((a, b) => a - b);
    console.log(
      `slow reader (${slowBytes} bytes read): /ping p50 ${times[100]!.toFixed(1)} ms, p99 ${times[198]!.toFixed(1)} ms`,
    );
    slow.destroy();
  });

  it('ends a download at once when the agent is killed, answers 502 while away, serves again after', async () => {
    const t1 = byName('t1');
    let killed = false;
    const got = await download('t1.test', `/bytes?n=${1024 * MiB}`, {
      onData: (n) => {
        if (n > 16 * MiB && !killed) {
          killed = true;
          void t1.agent!.stop('SIGKILL');
        }
      },
    });
    expect(killed).toBe(true);
    expect(got.bytes).toBeLessThan(1024 * MiB);
    expect(got.error).toBeDefined();
    // Away: a clean 502, at once (the local endpoint resets the connection).
    const away = await front('t1.test');
    expect(away.status).toBe(502);
    await t1.agent!.start();
    await serves('t1.test', 'hello from t1');
  });

  it('counts streams, bytes and errors per agent', async () => {
    const got = await download('t1.test', `/bytes?n=${4 * MiB}`);
    expect(got.sha256).toBe(got.expected);
    const text = await (await fetch(`${berth.apiUrl}/metrics`)).text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? Number.NaN);
    expect(value(/^berth_tunnel_streams_total\{agent="t1",[^}]*\} (\d+)$/m)).toBeGreaterThanOrEqual(1);
    expect(
      value(/^berth_tunnel_bytes_total\{agent="t1",[^}]*direction="from_agent"\} (\d+)$/m),
    ).toBeGreaterThan(4 * MiB);
    expect(
      value(/^berth_tunnel_bytes_total\{agent="t1",[^}]*direction="to_agent"\} (\d+)$/m),
    ).toBeGreaterThan(0);
    expect(text).toMatch(/^berth_tunnel_streams\{agent="t2",[^}]*\} \d+$/m);
    expect(text).toMatch(/^# TYPE berth_tunnel_errors_total counter$/m);
    expect(value(/^berth_tunnel_endpoints (\d+)$/m)).toBeGreaterThanOrEqual(3);
  });

  it('comes back after a server restart', async () => {
    await berth.stop();
    await berth.restart();
    await serves('t1.test', 'hello from t1');
    await serves('t2.test', 'hello from t2');
  });

  it('refuses, at the agent, a server request for an address that is not one of its upstreams', async () => {
    const fake = await startFakeServer(key.split('.')[0]!);
    const metricsPort = await freePort();
    // Something listening on the agent's side that no route names: the agent must not dial it.
    let dialed = 0;
    const bait = await import('node:net').then(({ createServer }) => createServer(() => dialed++));
    const baitPort = await freePort();
    await new Promise<void>((r) => bait.listen(baitPort, '127.0.0.1', () => r()));
    registerCleanup(() => bait.close());
    const a = await startAgent({
      server: `http://127.0.0.1:${fake.port}`,
      key,
      docker: byName('t2').d.dockerHost,
      hostIp: '127.0.0.1',
      name: 'fake-tunnel',
      args: ['--tunnel', '--metrics-listen', `127.0.0.1:${metricsPort}`],
    });
    await waitUntil(() => fake.conns.at(-1)?.received.some((m) => m.type === 'snapshot') === true, {
      timeoutMs: 20_000,
      message: () => `no snapshot: ${a.output()}`,
    });
    // The fake server says nothing of tunnels: the agent says so.
    await waitUntil(() => /does not carry tunnels/.test(a.output()), {
      timeoutMs: 10_000,
      message: () => a.output(),
    });
    const snap = fake.conns.at(-1)!.received.find((m) => m.type === 'snapshot')!;
    expect(snap.snapshot.tunnel).toEqual({ maxStreams: 1024 });
    fake.send(JSON.stringify({ type: 'tunnel.open', id: 7, host: '127.0.0.1', port: baitPort }));
    fake.send(JSON.stringify({ type: 'tunnel.open', id: 8, host: 'metadata.internal', port: 80 }));
    await waitUntil(() => fake.conns.at(-1)!.received.filter((m) => m.type === 'tunnel.failed').length >= 2, {
      timeoutMs: 10_000,
      message: () => JSON.stringify(fake.conns.at(-1)!.received),
    });
    const failed = fake.conns.at(-1)!.received.filter((m) => m.type === 'tunnel.failed');
    expect(failed[0]).toMatchObject({ id: 7, code: 'REFUSED' });
    expect(failed[0].message).toContain(
      `127.0.0.1:${baitPort} is not the upstream of any route of this agent`,
    );
    expect(failed[1]).toMatchObject({ id: 8, code: 'REFUSED' });
    expect(failed[1].message).toMatch(/host must be an IP address/);
    expect(dialed).toBe(0);
    expect(a.output()).toMatch(/refused a tunnel request from the server/);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^berth_agent_tunnel_refused_total 2$/m);
    expect(metrics).toMatch(/^berth_agent_tunnel_streams 0$/m);
    await a.stop();
  });

  it("takes no data connection for another agent of the same key without that agent's session", async () => {
    // t1, t2 and direct share one key: holding it, claim t1's id on a data connection.
    const agents = JSON.parse((await berth.cli(['agents', 'list', '--json'])).stdout) as {
      id: string;
      name: string;
    }[];
    const t1 = agents.find((a) => a.name === 't1')!;
    const dataConnection = (headers: Record<string, string>) =>
      new Promise<number>((done, fail) => {
        const req = httpsRequest(`${berth.agentUrl}/agent/v1/tunnel`, {
          headers: {
            connection: 'Upgrade',
            upgrade: 'berth-tunnel/1',
            authorization: `Bearer ${key.split('.')[0]}`,
            'x-berth-agent-id': t1.id,
            ...headers,
          },
          rejectUnauthorized: false,
          agent: false,
        });
        req.on('upgrade', (_res, sock) => {
          sock.destroy();
          done(101);
        });
        req.on('response', (res) => {
          res.resume();
          done(res.statusCode ?? 0);
        });
        req.on('error', fail);
        req.end();
      });
    for (const stream of ['pool', '1'])
      for (const session of [{}, { 'x-berth-tunnel-session': 'A'.repeat(32) }])
        expect(
          await dataConnection({ 'x-berth-stream': stream, ...session }),
          `${stream} ${JSON.stringify(session)}`,
        ).toBe(404);
    expect(berth.output()).toMatch(/does not name the agent's current connection/);
    await serves('t1.test', 'hello from t1');
  });

  it('closes the tunnels of a revoked key', async () => {
    // An open TCP stream through t1's tunnel, idle.
    const s = netConnect({ host: '127.0.0.1', port: tcpFront, allowHalfOpen: true });
    await new Promise((r, f) => s.once('connect', r).once('error', f));
    s.write('ping');
    await new Promise((r) => s.once('data', r));
    let ended = false;
    // The forwarder closes the client's connection when its tunneled upstream is reset.
    for (const e of ['end', 'close']) s.on(e, () => (ended = true));
    s.on('error', () => {});
    const revoked = await berth.cli(['keys', 'revoke', 'hosts']);
    expect(revoked.code, revoked.stderr).toBe(0);
    await waitUntil(() => ended, {
      timeoutMs: 10_000,
      message: () => `the tunneled stream stayed open after revoking:\n${berth.output()}`,
    });
    expect(byName('t1').agent!.output()).toMatch(/server refused the agent|disconnected from server/);
  });
});
