import { mkdtempSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { topScreen } from '../../../src/cli/top.js';
import { AccessLogWriter } from '../../../src/ingress/access-log.js';
import type { HttpAccess } from '../../../src/ingress/caddy/traffic.js';
import { renderMetrics } from '../../../src/metrics.js';
import {
  foldReplica,
  quantileMs,
  SLOT_MS,
  Traffic,
  type TrafficRoute,
  trafficReport,
  trafficRoutes,
} from '../../../src/server/traffic.js';

const req = (host: string, over: Partial<HttpAccess> = {}): HttpAccess => ({
  start: 1_000,
  client: '127.0.0.1:5000',
  host,
  method: 'GET',
  path: '/',
  proto: 'HTTP/1.1',
  status: 200,
  bytesIn: 0,
  bytesOut: 10,
  durationMs: 3,
  upstream: '10.0.0.1:80',
  ...over,
});

/** A site and its one owner, as the server hands them over (several of one host and path add up). */
const route = (
  host: string,
  over: { path?: string; container?: { id: string; name: string }; upstreams?: string[] } = {},
): TrafficRoute => ({
  host,
  path: over.path ?? '/',
  owners: [
    {
      agent: 'host-a',
      container: over.container?.name ?? 'web',
      upstream: (over.upstreams?.[0] ?? 'http://10.0.0.1:80').replace(/^[a-z0-9]+:\/\//, ''),
    },
  ],
});

const off = new AccessLogWriter({ to: 'off' });
const metric = (text: string, name: string) =>
  Object.fromEntries(
    text
      .split('\n')
      .filter((l) => l.startsWith(`${name}{`))
      .map((l) => [l.slice(name.length, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))]),
  );

describe('trafficRoutes', () => {
  it('names each site with the owners of its route keys, leaving out keys no agent reports', () => {
    const owners = new Map([
      ['a1:c1/default', { agent: 'host-a', container: 'web', upstream: '10.0.0.1:80' }],
    ]);
    expect(
      trafficRoutes([{ host: 'a.test', path: '/', routeKeys: ['a1:c1/default', 'gone:x'] }], (k) =>
        owners.get(k),
      ),
    ).toEqual([{ host: 'a.test', path: '/', owners: [owners.get('a1:c1/default')] }]);
  });
});

describe('Traffic', () => {
  it('counts requests per route host and status class, with a histogram and bytes', () => {
    const t = new Traffic({ maxHosts: 10, log: off, now: () => 100 * SLOT_MS });
    t.setRoutes([route('a.test'), route('*.b.test')]);
    t.record([
      req('a.test'),
      req('a.test', { status: 404, durationMs: 30 }),
      req('x.b.test', { status: 503, bytesIn: 7 }),
      req('y.b.test', { status: 101 }),
      req('nobody.test', { status: 404 }),
    ]);
    const text = renderMetrics(t.families({ lines: 6, unreadable: 1 }));
    expect(metric(text, 'berth_http_requests_total')).toEqual({
      '{host="a.test",code_class="2xx"}': 1,
      '{host="a.test",code_class="4xx"}': 1,
      '{host="*.b.test",code_class="1xx"}': 1,
      '{host="*.b.test",code_class="5xx"}': 1,
      '{host="other",code_class="4xx"}': 1,
    });
    expect(text).toContain('berth_http_request_duration_seconds_bucket{host="a.test",le="0.005"} 1');
    expect(text).toContain('berth_http_request_duration_seconds_bucket{host="a.test",le="0.05"} 2');
    expect(text).toContain('berth_http_request_duration_seconds_count{host="a.test"} 2');
    expect(text).toContain('berth_http_bytes_total{host="*.b.test",direction="in"} 7');
    expect(text).toContain('berth_http_log_lines_total{outcome="unreadable"} 1');
  });

  it('takes changes to the routes as patches: removed sites stop counting, added ones start', () => {
    const t = new Traffic({ maxHosts: 10, log: off, now: () => 100 * SLOT_MS });
    t.setRoutes([route('a.test'), route('a.test', { path: '/api' }), route('b.test')]);
    t.patchRoutes(
      [
        { host: 'a.test', path: '/api' },
        { host: 'b.test', path: '/' },
      ],
      [route('c.test'), route('a.test', { path: '/v2' })],
    );
    t.record([req('a.test'), req('b.test'), req('c.test')]);
    expect(
      metric(renderMetrics(t.families({ lines: 3, unreadable: 0 })), 'berth_http_requests_total'),
    ).toEqual({
      '{host="a.test",code_class="2xx"}': 1,
      '{host="c.test",code_class="2xx"}': 1,
      '{host="other",code_class="2xx"}': 1,
    });
  });

  it('gives at most maxHosts hosts series of their own, at 10,000 hosts; the rest is "other"', () => {
    const t = new Traffic({ maxHosts: 1000, log: off, now: () => 100 * SLOT_MS });
    const hosts = Array.from({ length: 10_000 }, (_, i) => `h${i}.test`);
    t.setRoutes(hosts.map((h) => route(h)));
    t.record(hosts.map((h) => req(h)));
    t.record(hosts.slice(0, 10).map((h) => req(h))); // known hosts keep their series
    const counts = metric(
      renderMetrics(t.families({ lines: 0, unreadable: 0 })),
      'berth_http_requests_total',
    );
    expect(Object.keys(counts)).toHaveLength(1001);
    expect(counts['{host="other",code_class="2xx"}']).toBe(9_000);
    expect(counts['{host="h0.test",code_class="2xx"}']).toBe(2);
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(10_010);
  });

  it('writes one access-log line per request with its route and owner, never a query string', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tr-'));
    const log = new AccessLogWriter({ to: join(dir, 'access.log') });
    const t = new Traffic({ maxHosts: 10, log });
    t.setRoutes([
      route('a.test'),
      route('a.test', {
        path: '/api',
        container: { id: 'c2', name: 'api' },
        upstreams: ['http://10.0.0.2:80'],
      }),
      route('lb.test', { container: { id: 'c3', name: 'one' }, upstreams: ['http://10.0.0.3:80'] }),
      route('lb.test', { container: { id: 'c4', name: 'two' }, upstreams: ['http://10.0.0.4:80'] }),
    ]);
    t.record([
      req('a.test', { path: '/api/v1' }),
      req('a.test', { path: '/apix' }),
      req('lb.test', { upstream: '10.0.0.4:80' }),
      req('gone.test', { upstream: null, status: 404 }),
    ]);
    log.close();
    const lines = readFileSync(join(dir, 'access.log'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.route, l.owner?.container ?? null])).toEqual([
      ['a.test/api', 'api'],
      ['a.test', 'web'],
      ['lb.test', 'two'],
      [null, null],
    ]);
    expect(Object.keys(lines[0])).toEqual([
      'time',
      'client',
      'host',
      'method',
      'path',
      'proto',
      'status',
      'bytesIn',
      'bytesOut',
      'durationMs',
      'upstream',
      'route',
      'owner',
    ]);
  });

  it('sums replicas in the report: totals, slots by time, rates over the last minute', () => {
    let now = 1_000 * SLOT_MS;
    const a = new Traffic({ maxHosts: 10, log: off, now: () => now });
    const b = new Traffic({ maxHosts: 10, log: off, now: () => now });
    a.setRoutes([route('a.test')]);
    b.setRoutes([route('a.test')]);
    a.record([req('a.test'), req('a.test', { status: 500 })]);
    b.record([req('a.test', { durationMs: 200 })]);
    now += SLOT_MS;
    b.record([req('a.test')]);
    now += SLOT_MS / 2;
    // B publishes its newest slots twice; folding them keeps both slots once.
    const seen = foldReplica(foldReplica(undefined, b.snapshot('b', 3)), b.snapshot('b', 1));
    const r = trafficReport({
      replicas: [a.snapshot('a'), seen],
      self: 'a',
      now,
      owners: a.owners(),
      enabled: true,
    });
    const h = r.hosts[0]!;
    expect(h.host).toBe('a.test');
    expect(h.total.requests).toBe(4);
    expect(h.total.byClass).toEqual({ none: 0, '1xx': 0, '2xx': 3, '3xx': 0, '4xx': 0, '5xx': 1 });
    expect(h.owners).toEqual([{ agent: 'host-a', container: 'web', path: '/' }]);
    expect(h.series.requestsPerSecond.slice(-3)).toEqual([0, 3 / 5, 1 / 5]);
    expect(h.series.errorsPerSecond.at(-2)).toBe(1 / 5);
    expect(h.now.requestsPerSecond).toBeCloseTo(4 / 57.5, 3);
    expect(h.now.errorRate).toBe(0.25);
    expect(h.series.p99Ms.at(-2)).toBeGreaterThan(100);
    expect(h.series.p50Ms.at(-3)).toBeNull();
    expect(r.replicas.map((x) => [x.replica, x.self])).toEqual([
      ['a', true],
      ['b', false],
    ]);
    expect(topScreen(r, 10).join('\n')).toMatch(/a\.test\s+0\.1\s+25\.0%/);
  });

  it('samples TCP listeners into slots from the forwarder counters', () => {
    let now = 10 * SLOT_MS;
    const t = new Traffic({ maxHosts: 10, log: off, now: () => now });
    const counters = (done: number, bytes: number) =>
      new Map([
        [
          4003,
          { accepted: done, denied: 0, refused: 0, bytesIn: bytes, bytesOut: bytes * 2, closed: { done } },
        ],
      ]);
    t.tick(counters(2, 100), new Map([[4003, 1]]));
    now += SLOT_MS;
    t.tick(counters(5, 400), new Map([[4003, 0]]));
    const r = trafficReport({
      replicas: [t.snapshot('x')],
      self: 'x',
      now,
      owners: new Map(),
      enabled: true,
    });
    expect(r.tcp).toHaveLength(1);
    expect(r.tcp[0]!.total).toEqual({ connections: 5, bytesIn: 400, bytesOut: 800 });
    expect(r.tcp[0]!.series.connectionsPerSecond.slice(-2)).toEqual([2 / 5, 3 / 5]);
    expect(r.tcp[0]!.active).toBe(0);
  });

  it('interpolates quantiles inside buckets', () => {
    const b = new Array(14).fill(0);
    b[3] = 100; // (5 ms, 10 ms]
    expect(quantileMs(b, 0.5)).toBe(7.5);
    expect(quantileMs(new Array(14).fill(0), 0.5)).toBeNull();
    b[13] = 1; // past the last bound
    expect(quantileMs(b, 1)).toBe(10_000);
  });
});

describe('AccessLogWriter', () => {
  it('rotates by size, keeping N files, and reopens a moved file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'al-'));
    const file = join(dir, 'access.log');
    const w = new AccessLogWriter({ to: file, maxBytes: 100, keep: 2 });
    for (let i = 0; i < 20; i++) w.write(`line ${String(i).padStart(2, '0')} ${'x'.repeat(30)}`);
    w.close();
    expect(readdirSync(dir).sort()).toEqual(['access.log', 'access.log.1', 'access.log.2']);
    for (const f of readdirSync(dir)) expect(readFileSync(join(dir, f)).length).toBeLessThanOrEqual(100);
    expect(readFileSync(file, 'utf8')).toMatch(/line 19/);
    expect(readFileSync(`${file}.1`, 'utf8')).toMatch(/line 1[67]/);

    const moved = join(dir, 'moved.log');
    const w2 = new AccessLogWriter({ to: join(dir, 'b.log') });
    w2.write('before');
    renameSync(join(dir, 'b.log'), moved);
    w2.write('still to the moved file');
    w2.reopen();
    w2.write('after reopen');
    w2.close();
    expect(readFileSync(moved, 'utf8')).toBe('before\nstill to the moved file\n');
    expect(readFileSync(join(dir, 'b.log'), 'utf8')).toBe('after reopen\n');
  });
});
