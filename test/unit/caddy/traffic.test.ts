import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ACCESS_LOGGER,
  buildCaddyParts,
  canonicalJson,
  extractParts,
  mergeIntoConfig,
} from '../../../src/ingress/caddy/config.js';
import {
  bareHost,
  type HttpAccess,
  MAX_LINE_BYTES,
  parseCaddyAccess,
  TrafficListener,
} from '../../../src/ingress/caddy/traffic.js';
import type { Site } from '../../../src/reconcile/desired.js';

const site = (host: string): Site => ({
  host,
  path: '/',
  stripPath: false,
  upstreams: [{ host: '127.0.0.1', port: 8080, scheme: 'http' }],
  routeKeys: ['a:r'],
});
const traffic = { address: 'unix//d/traffic.sock', query: false };
const opts = { tls: 'off' as const, httpListen: '127.0.0.1:8080', httpsListen: ':443' };

// A line as Caddy 2.6.2 writes it with Berth's encoder (level, logger and message left out).
const LINE =
  '{"ts":1796168660.0871878,"request":{"remote_ip":"127.0.0.1","remote_port":"41426","proto":"HTTP/1.1","method":"POST","host":"App.Test:23080","uri":"/post"},"user_id":"ip-10-0-0-5.berth.internal.:8080 16","duration":0.000414094,"size":5,"status":201}';

describe('Caddy request lines', () => {
  it('reads a line: start time, client, bare host, upstream from the SRV name, sizes', () => {
    expect(parseCaddyAccess(LINE, { zone: 'berth.internal', notFound: '127.0.0.1:9' })).toEqual({
      start: 1796168660087,
      client: '127.0.0.1:41426',
      host: 'app.test',
      method: 'POST',
      path: '/post',
      proto: 'HTTP/1.1',
      status: 201,
      bytesIn: 16,
      bytesOut: 5,
      durationMs: 0.414,
      upstream: '10.0.0.5:8080',
    });
  });

  it('has no upstream for Berth-made answers (no proxy, or the not-found responder)', () => {
    const noProxy = LINE.replace('ip-10-0-0-5.berth.internal.:8080 16', ' ');
    expect(parseCaddyAccess(noProxy)?.upstream).toBeNull();
    expect(parseCaddyAccess(noProxy)?.bytesIn).toBe(0);
    const notFound = LINE.replace('ip-10-0-0-5.berth.internal.:8080', 'ip-127-0-0-1.berth.internal.:9');
    expect(
      parseCaddyAccess(notFound, { zone: 'berth.internal', notFound: '127.0.0.1:9' })?.upstream,
    ).toBeNull();
    // The static layout dials addresses as they are.
    const staticLine = LINE.replace('ip-10-0-0-5.berth.internal.:8080', '10.1.2.3:80');
    expect(parseCaddyAccess(staticLine, {})?.upstream).toBe('10.1.2.3:80');
  });

  it('reads status 0 of an upgraded connection as 101, and keeps 0 for a client that left', () => {
    const ws = LINE.replace('"status":201', '"status":0').replace('.:8080 16"', '.:8080  websocket"');
    expect(parseCaddyAccess(ws, { zone: 'berth.internal' })?.status).toBe(101);
    const left = LINE.replace('"status":201', '"status":0');
    expect(parseCaddyAccess(left, { zone: 'berth.internal' })?.status).toBe(0);
  });

  it('refuses what is not a request line', () => {
    for (const bad of ['', 'nope', '{}', '{"ts":1}', '{"ts":1,"status":200}', '[1]'])
      expect(parseCaddyAccess(bad), bad).toBeUndefined();
  });

  it('strips ports and brackets from hosts', () => {
    expect(bareHost('A.Example.com:443')).toBe('a.example.com');
    expect(bareHost('[::1]:80')).toBe('::1');
    expect(bareHost('fe80::1')).toBe('fe80::1');
  });
});

describe('TrafficListener', () => {
  it('reads every line once and in order, however the writes cut them, skipping one too long', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tl-'));
    const got: HttpAccess[] = [];
    const listener = new TrafficListener({
      socketPath: join(dir, 'traffic.sock'),
      onRequests: (r) => got.push(...r),
    });
    await listener.start();
    try {
      const lines = Array.from({ length: 3000 }, (_, i) => LINE.replace('"size":5', `"size":${i}`));
      const long = LINE.replace('/post', `/${'x'.repeat(MAX_LINE_BYTES)}`);
      const text = `${lines.slice(0, 1000).join('\n')}\n${long}\nnot json\n${lines.slice(1000).join('\n')}\n`;
      const c = connect(join(dir, 'traffic.sock'));
      await new Promise((r) => c.once('connect', r));
      // Pieces of every size, some a few bytes, some many lines, a few pauses between them.
      for (let at = 0, n = 1; at < text.length; at += n, n = (n * 7 + 13) % 40_000) {
        c.write(text.slice(at, at + n));
        if (n % 5 === 0) await new Promise((r) => setTimeout(r, 1));
      }
      await new Promise<void>((r) => c.end(r));
      const deadline = Date.now() + 10_000;
      while (got.length < lines.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(got.map((a) => a.bytesOut)).toEqual(lines.map((_, i) => i));
      expect(listener.counters).toEqual({ lines: 3002, unreadable: 2 });
    } finally {
      await listener.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Caddy config with request lines', () => {
  it('logs the routing server to a net writer, with headers and query strings filtered out in Caddy', () => {
    const parts = buildCaddyParts([site('a.test')], { ...opts, traffic });
    const server = parts.servers.berth_http;
    expect(server.logs).toEqual({ default_logger_name: 'berth_access' });
    expect(server.routes[0]).toEqual({
      handle: [
        {
          handler: 'map',
          source: '{http.request.host}',
          destinations: ['{http.auth.user.id}'],
          defaults: [
            '{http.reverse_proxy.upstream.hostport} {http.request.header.Content-Length} {http.request.header.Upgrade}',
          ],
        },
      ],
    });
    const log = parts.logs?.berth_access;
    expect(log.writer).toEqual({ output: 'net', address: 'unix//d/traffic.sock', dial_timeout: '2s' });
    expect(log.include).toEqual([ACCESS_LOGGER]);
    expect(Object.keys(log.encoder.fields).sort()).toEqual([
      'request>headers',
      'request>tls',
      'request>uri',
      'resp_headers',
    ]);
    expect(new RegExp(log.encoder.fields['request>uri'].regexp).test('/x?token=1')).toBe(true);
    const withQuery = buildCaddyParts([site('a.test')], { ...opts, traffic: { ...traffic, query: true } });
    expect(withQuery.logs?.berth_access.encoder.fields['request>uri']).toBeUndefined();
    // With TLS, the plain-HTTP server only redirects: it logs nothing.
    const tls = buildCaddyParts([site('a.test')], { ...opts, tls: 'internal', traffic });
    expect(tls.servers.berth_https.logs).toBeDefined();
    expect(tls.servers.berth_http.logs).toBeUndefined();
  });

  it('changes nothing without it', () => {
    const parts = buildCaddyParts([site('a.test')], opts);
    expect(parts.logs).toBeUndefined();
    expect(parts.servers.berth_http.logs).toBeUndefined();
    expect(parts.servers.berth_http.routes[0].match).toEqual([{ host: ['a.test'] }]);
  });

  it("merges into the operator's logging: its logs kept, the default log excludes Berth's logger", () => {
    const operator = {
      logging: {
        logs: { default: { level: 'WARN' }, mine: { writer: { output: 'stdout' } }, berth_old: {} },
      },
    };
    const merged = mergeIntoConfig(operator, buildCaddyParts([site('a.test')], { ...opts, traffic }));
    expect(Object.keys(merged.logging.logs).sort()).toEqual(['berth_access', 'default', 'mine']);
    expect(merged.logging.logs.default).toEqual({ level: 'WARN', exclude: [ACCESS_LOGGER] });
    expect(merged.logging.logs.mine).toBe(operator.logging.logs.mine);
    // Merging again does not add the exclusion twice; the drift check sees what was sent.
    const again = mergeIntoConfig(merged, buildCaddyParts([site('a.test')], { ...opts, traffic }));
    expect(again.logging.logs.default.exclude).toEqual([ACCESS_LOGGER]);
    expect(canonicalJson(extractParts(again).logs)).toBe(
      canonicalJson(buildCaddyParts([site('a.test')], { ...opts, traffic }).logs),
    );
    // A default log that includes only other namespaces needs no exclusion.
    const narrow = mergeIntoConfig(
      { logging: { logs: { default: { include: ['tls'] } } } },
      buildCaddyParts([], { ...opts, traffic }),
    );
    expect(narrow.logging.logs.default).toEqual({ include: ['tls'] });
    // Turned off again: Berth's entries and its exclusion go; the operator's settings stay.
    const off = mergeIntoConfig(again, buildCaddyParts([site('a.test')], opts));
    expect(off.logging.logs).toEqual({ default: { level: 'WARN' }, mine: operator.logging.logs.mine });
    expect(mergeIntoConfig({}, buildCaddyParts([], opts)).logging).toBeUndefined();
  });
});
