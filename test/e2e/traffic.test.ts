// Traffic you can see, through real Caddy and real requests: /metrics counts exactly the requests
// made (per route host and status class, in both layouts), the access log has one line per
// request (a WebSocket upgrade and a TCP connection included) and no credentials, the cardinality
// guard holds at 10,000 hosts, and the Traffic page shows what /metrics says (screenshot in
// test-output/ui/traffic.png).
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type BrowserContext, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { type BerthProcess, startBerth } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import {
  importBusybox,
  runHostContainer,
  runWebContainer,
  startDockerd,
  type TestDockerd,
} from './support/dockerd.js';
import { connectFakeAgent } from './support/fake-agent.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';

useCleanup();

const SECRET = 'sekrit-7c1f9a';
const SHOTS = resolve(import.meta.dirname, '../../test-output/ui');
let d: TestDockerd;
let berth: BerthProcess;
let logDir: string;
const accessLog = () => join(logDir, 'access.log');
const tcpLog = () => join(logDir, 'tcp.log');

const lines = (file: string): Record<string, unknown>[] => {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
};

/** `name{labels}` → value, for one family of a /metrics text. */
async function metric(b: BerthProcess, name: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${b.apiUrl}/metrics`)).text();
  const out = new Map<string, number>();
  for (const l of text.split('\n')) {
    if (!l.startsWith(`${name}{`)) continue;
    const i = l.lastIndexOf(' ');
    out.set(l.slice(name.length, i), Number(l.slice(i + 1)));
  }
  return out;
}

/** Per host and class, what the test itself saw: the figures /metrics must show. */
class Expected {
  readonly counts = new Map<string, number>();
  add(host: string, status: number) {
    const key = `{host="${host}",code_class="${Math.floor(status / 100)}xx"}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }
}

function send(
  port: number,
  host: string,
  path: string,
  o: { method?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<number> {
  return new Promise((done, fail) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: o.method ?? 'GET',
        headers: { host, ...o.headers },
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => done(res.statusCode ?? 0));
      },
    );
    req.on('error', fail);
    req.end(o.body);
  });
}

async function serves(b: BerthProcess, host: string, status: number) {
  await waitUntil(
    async () => (await httpGet(`http://127.0.0.1:${b.httpPort}/`, { host })).status === status,
    { timeoutMs: 30_000, message: () => `${host} never answered ${status}\n${b.output().slice(-3000)}` },
  );
}

const delta = (after: Map<string, number>, before: Map<string, number>) =>
  new Map(
    [...after].map(([k, v]) => [k, v - (before.get(k) ?? 0)]).filter(([, v]) => v !== 0) as [
      string,
      number,
    ][],
  );

beforeAll(async () => {
  d = await startDockerd({ name: 'traffic' });
  await importBusybox(d);
  logDir = mkdtempSync(join(tmpdir(), 'btraffic-'));
  registerCleanup(() => rmSync(logDir, { recursive: true, force: true }));
  berth = await startBerth({
    docker: d.dockerHost,
    args: ['--access-log', accessLog(), '--tcp-access-log', tcpLog(), '--tcp-bind', '127.0.0.1'],
  });
});

afterAll(async () => {
  await berth?.stop();
});

describe('HTTP traffic, dynamic layout', () => {
  const expected = new Expected();
  let tcpListen: number;

  it('counts every request exactly per host and status class, one access-log line each', async () => {
    await runWebContainer(d, 'okweb', { 'berth.host': 'ok.test' });
    const closed = await freePort();
    await runHostContainer(d, 'badweb', { 'berth.host': 'bad.test', 'berth.port': String(closed) }, [
      'sleep',
      '100000',
    ]);
    await serves(berth, 'ok.test', 200);
    await serves(berth, 'bad.test', 502);

    // A WebSocket upstream (the test's own), and a TCP route to an echo server.
    const wsPort = await freePort();
    const wss = new WebSocketServer({ host: '127.0.0.1', port: wsPort });
    registerCleanup(() => new Promise((r) => wss.close(() => r(undefined))));
    wss.on('connection', (s) => s.on('message', (m) => s.send(`echo:${m}`)));
    await runHostContainer(d, 'wsweb', { 'berth.host': 'ws.test', 'berth.port': String(wsPort) }, [
      'sleep',
      '100000',
    ]);
    await serves(berth, 'ws.test', 426);
    const echoPort = await freePort();
    const echo = createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(echoPort, '127.0.0.1', r));
    registerCleanup(() => new Promise((r) => echo.close(() => r(undefined))));
    tcpListen = await freePort();
    await runHostContainer(
      d,
      'tcpecho',
      { 'berth.tcp.echo.listen': String(tcpListen), 'berth.tcp.echo.port': String(echoPort) },
      ['sleep', '100000'],
    );
    await waitUntil(
      async () => (await berth.routes()).some((r) => r.kind === 'tcp' && r.status === 'applied'),
      {
        timeoutMs: 20_000,
        message: 'the TCP route never applied',
      },
    );

    // Everything before this point (the polls above) is the baseline.
    await waitUntil(async () => lines(accessLog()).length > 0, { message: 'no access-log line at all' });
    const before = await metric(berth, 'berth_http_requests_total');
    const logStart = lines(accessLog()).length;
    const tcpStart = lines(tcpLog()).length;
    const port = berth.httpPort;
    const made: { host: string; path: string; status: number }[] = [];
    const go = async (host: string, path: string, o?: Parameters<typeof send>[3]) => {
      const status = await send(port, host, path, o);
      expected.add(host, status);
      made.push({ host, path: path.split('?')[0]!, status });
    };
    for (let i = 0; i < 7; i++) await go('ok.test', '/');
    for (let i = 0; i < 3; i++) await go('ok.test', '/nope.html');
    for (let i = 0; i < 2; i++) await go('bad.test', '/');
    await go('nobody.test', '/');
    expected.counts.delete('{host="nobody.test",code_class="4xx"}');
    expected.add('other', 404);
    // Credentials in headers and in the query string.
    await go('ok.test', `/?token=${SECRET}&x=1`, {
      headers: { authorization: `Bearer ${SECRET}`, cookie: `session=${SECRET}` },
    });
    await go('ok.test', '/', {
      method: 'POST',
      body: 'x'.repeat(11),
      headers: { 'content-type': 'text/plain' },
    });

    const ws = new WebSocket(`ws://127.0.0.1:${port}/chat`, { headers: { host: 'ws.test' } });
    await new Promise((r, j) => {
      ws.once('open', r);
      ws.once('error', j);
    });
    const reply = new Promise<string>((r) => ws.once('message', (m) => r(String(m))));
    ws.send('hi');
    expect(await reply).toBe('echo:hi');
    await new Promise((r) => {
      ws.once('close', r);
      ws.close();
    });
    expected.add('ws.test', 101);
    made.push({ host: 'ws.test', path: '/chat', status: 101 });

    const sock = connect(tcpListen, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.end('ping');
    let got = '';
    for await (const c of sock) got += c;
    expect(got).toBe('ping');

    await waitUntil(
      () => lines(accessLog()).length - logStart >= made.length && lines(tcpLog()).length > tcpStart,
      {
        timeoutMs: 15_000,
        message: () => `access log has ${lines(accessLog()).length - logStart} of ${made.length} lines`,
      },
    );
    // Other lines could only come late: give them a moment, then the count must still match.
    await new Promise((r) => setTimeout(r, 300));
    const logged = lines(accessLog()).slice(logStart);
    expect(logged.map((l) => ({ host: l.host, path: l.path, status: l.status }))).toEqual(made);
    const tcpLines = lines(tcpLog()).slice(tcpStart);
    expect(tcpLines).toHaveLength(1);
    expect(tcpLines[0]).toMatchObject({
      upstream: `127.0.0.1:${echoPort}`,
      bytesIn: 4,
      bytesOut: 4,
      reason: 'done',
    });

    const ok = logged[0]!;
    expect(ok).toMatchObject({ method: 'GET', status: 200, route: 'ok.test', owner: { container: 'okweb' } });
    expect(ok.upstream).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(logged.find((l) => l.host === 'nobody.test')).toMatchObject({
      upstream: null,
      route: null,
      owner: null,
    });
    expect(logged.find((l) => l.method === 'POST')).toMatchObject({ bytesIn: 11 });
    expect(logged.find((l) => l.host === 'ws.test')).toMatchObject({
      status: 101,
      owner: { container: 'wsweb' },
    });

    expect(delta(await metric(berth, 'berth_http_requests_total'), before)).toEqual(expected.counts);
    const hist = await metric(berth, 'berth_http_request_duration_seconds_count');
    expect(hist.get('{host="bad.test"}')).toBeGreaterThanOrEqual(2);
  });

  it('never writes credentials: not in the access log, Caddy log, server output or TCP log', () => {
    const files = [accessLog(), tcpLog(), join(berth.dataDir, 'caddy.log')];
    for (const f of files) expect(readFileSync(f, 'utf8'), f).not.toContain(SECRET);
    expect(berth.output()).not.toContain(SECRET);
    // The request is there, its query string is not.
    expect(readFileSync(accessLog(), 'utf8')).toMatch(/"path":"\/","proto"/);
  });

  it('shows the same figures on the Traffic page as /metrics', async () => {
    mkdirSync(SHOTS, { recursive: true });
    const profile = mkdtempSync(join(tmpdir(), 'bchrome-'));
    const browser: BrowserContext = await chromium.launchPersistentContext(profile, {
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
      ],
      viewport: { width: 1400, height: 900 },
    });
    registerCleanup(async () => {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    });
    const page = await browser.newPage();
    await page.goto(`${berth.apiUrl}/ui/`);
    await page.fill('input[name=token]', berth.token);
    await page.click('button[type=submit]');
    await page.waitForSelector('#nav:not([hidden])');
    await page.goto(`${berth.apiUrl}/ui/#/traffic`);
    await page.waitForSelector('#traffic tr[data-host="ok.test"]');
    // TCP figures are sampled every 5 s.
    await page.waitForSelector(
      `#traffic-tcp tr[data-listener="${tcpListen}"] td[data-field="connections"]:text("1")`,
      {
        timeout: 15_000,
      },
    );
    const m = await metric(berth, 'berth_http_requests_total');
    for (const host of ['ok.test', 'bad.test', 'ws.test']) {
      const row = page.locator(`#traffic tr[data-host="${host}"]`);
      for (const cls of ['2xx', '4xx', '5xx'] as const) {
        const want = m.get(`{host="${host}",code_class="${cls}"}`) ?? 0;
        expect(await row.locator(`td[data-field="${cls}"]`).textContent(), `${host} ${cls}`).toBe(
          String(want),
        );
      }
      const total = [...m].filter(([k]) => k.startsWith(`{host="${host}"`)).reduce((a, [, v]) => a + v, 0);
      expect(await row.locator('td[data-field="total"]').textContent()).toBe(String(total));
    }
    expect(await page.locator('#traffic tr[data-host="ok.test"] td').nth(1).textContent()).toContain('okweb');
    // Sorted by error rate, the failing host comes first.
    await page.click('#sort-errors');
    await page.waitForSelector('#sort-errors.primary');
    expect(await page.locator('#traffic tbody tr').first().getAttribute('data-host')).toBe('bad.test');
    // The per-route panel, with its four charts.
    await page.click('#traffic tr[data-host="ok.test"]');
    await page.waitForSelector('#route-panel[data-host="ok.test"]');
    expect(await page.locator('#route-panel svg.chart').count()).toBe(4);
    expect(await page.locator('#route-panel svg.chart polyline').count()).toBeGreaterThan(0);
    await page.screenshot({ path: join(SHOTS, 'traffic.png'), fullPage: true });
  });

  it('berth top --json prints one snapshot with the same totals', async () => {
    const r = await berth.cli(['top', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    const m = await metric(berth, 'berth_http_requests_total');
    const ok = report.hosts.find((h: { host: string }) => h.host === 'ok.test');
    expect(ok.total.byClass['2xx']).toBe(m.get('{host="ok.test",code_class="2xx"}'));
    expect(report.tcp.map((t: { listener: string }) => t.listener)).toEqual([String(tcpListen)]);
  });
});

describe('HTTP traffic, static layout', () => {
  it('counts the same way when every host is in the config', async () => {
    const b = await startBerth({
      docker: d.dockerHost,
      args: ['--caddy-layout', 'static', '--access-log', 'off'],
    });
    await serves(b, 'ok.test', 200);
    const before = await metric(b, 'berth_http_requests_total');
    const expected = new Expected();
    for (const [host, path] of [
      ['ok.test', '/'],
      ['ok.test', '/'],
      ['ok.test', '/missing'],
      ['bad.test', '/'],
      ['elsewhere.test', '/'],
    ] as const)
      expected.add(host === 'elsewhere.test' ? 'other' : host, await send(b.httpPort, host, path));
    await waitUntil(
      async () => {
        const got = delta(await metric(b, 'berth_http_requests_total'), before);
        return [...expected.counts].every(([k, v]) => got.get(k) === v);
      },
      {
        message: async () => JSON.stringify([...delta(await metric(b, 'berth_http_requests_total'), before)]),
      },
    );
    expect(delta(await metric(b, 'berth_http_requests_total'), before)).toEqual(expected.counts);
    await b.stop();
  });
});

describe('cardinality guard', () => {
  it('keeps /metrics to --metrics-max-hosts host series at 10,000 hosts; the rest is "other"', async () => {
    const server = await startBerth({
      command: 'server',
      args: ['--metrics-max-hosts', '500', '--access-log', 'off'],
    });
    const upstream = await freePort();
    const web = (await import('node:http')).createServer((_q, s) => s.end('ok'));
    await new Promise<void>((r) => web.listen(upstream, '127.0.0.1', r));
    registerCleanup(() => new Promise((r) => web.close(() => r(undefined))));
    const k = await server.cli(['keys', 'create', '--name', 'many', '--auto-approve', '--json']);
    const agent = await connectFakeAgent(server.apiUrl, JSON.parse(k.stdout).secret, 'many');
    const hosts = Array.from({ length: 10_000 }, (_, i) => `h${i}.many.test`);
    agent.snapshot(
      hosts.map((h, i) => ({
        id: `c${i}/web`,
        hosts: [h],
        containerId: `c${i}`,
        containerName: `web${i}`,
        upstream: { host: '127.0.0.1', port: upstream, scheme: 'http' },
      })),
    );
    await serves(server, 'h9999.many.test', 200);
    // The lines of serves()'s own requests may still be on their way: count from when they are in.
    const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    let before = await metric(server, 'berth_http_requests_total');
    await waitUntil(
      async () => {
        await new Promise((r) => setTimeout(r, 500));
        const now = await metric(server, 'berth_http_requests_total');
        const settled = total(now) === total(before) && total(now) > 0;
        before = now;
        return settled;
      },
      { timeoutMs: 20_000 },
    );
    const { Agent } = await import('node:http');
    const keepAlive = new Agent({ keepAlive: true, maxSockets: 8 });
    registerCleanup(() => keepAlive.destroy());
    const get = (host: string) =>
      new Promise<number>((done, fail) => {
        const req = request(
          { host: '127.0.0.1', port: server.httpPort, path: '/', headers: { host }, agent: keepAlive },
          (res) => {
            res.resume();
            res.on('end', () => done(res.statusCode ?? 0));
          },
        );
        req.on('error', fail);
        req.end();
      });
    let ok = 0;
    for (let i = 0; i < hosts.length; i += 8) {
      const statuses = await Promise.all(hosts.slice(i, i + 8).map(get));
      ok += statuses.filter((s) => s === 200).length;
    }
    expect(ok).toBe(10_000);
    let got = new Map<string, number>();
    await waitUntil(
      async () => {
        got = delta(await metric(server, 'berth_http_requests_total'), before);
        return [...got.values()].reduce((a, b) => a + b, 0) === 10_000;
      },
      {
        timeoutMs: 20_000,
        message: () => `counted ${[...got.values()].reduce((a, b) => a + b, 0)} of 10000`,
      },
    );
    const all = await metric(server, 'berth_http_requests_total');
    const series = new Set([...all.keys()].map((k) => /host="([^"]*)"/.exec(k)![1]));
    expect(series.size).toBe(501);
    expect(series.has('other')).toBe(true);
    // Each host was asked once: 500 of them with a series of their own, the other 9,500 as one.
    expect(got.get('{host="other",code_class="2xx"}')).toBe(9_500);
    expect([...got].filter(([k]) => !k.includes('host="other"')).every(([, v]) => v === 1)).toBe(true);
    await server.stop();
  });
});
