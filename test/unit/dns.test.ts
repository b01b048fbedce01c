import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { buildCaddyParts, splitSites } from '../../src/ingress/caddy/config.js';
import { DnsResponder, labelFor } from '../../src/ingress/dns/responder.js';
import { notFoundListener, runDnsServer, tableFromSites } from '../../src/ingress/dns/sidecar.js';
import type { Site } from '../../src/model/desired.js';

/** A DNS query for one name and type, as Go's resolver sends it. */
function query(name: string, type: number, id = 0x1234): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const header = Buffer.from([id >> 8, id & 255, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([header, ...labels, Buffer.from([0, type >> 8, type & 255, 0, 1])]);
}

const rcode = (b: Buffer) => b[3]! & 0x0f;
const answers = (b: Buffer) => b.readUInt16BE(6);

describe('DNS responder', () => {
  const dns = new DnsResponder({ zone: 'berth.internal', notFound: { host: '127.0.0.1', port: 9 } });
  dns.setTable(
    new Map([
      [
        'a.test',
        [
          { host: '127.0.0.2', port: 8080 },
          { host: '127.0.0.3', port: 8081 },
        ],
      ],
      ['*.wild.test', [{ host: 'fd00::1', port: 80 }]],
    ]),
  );

  it('answers SRV for known hosts and wildcards; an unknown host is a name error, never an answer', () => {
    const a = dns.answer(query('a.test.berth.internal', 33), 512)!;
    expect(rcode(a)).toBe(0);
    expect(answers(a)).toBe(2);
    expect(a.readUInt16BE(0)).toBe(0x1234);
    expect(a.includes(Buffer.from(labelFor('127.0.0.3')))).toBe(true);
    expect(answers(dns.answer(query('x.y.wild.test.berth.internal', 33), 512)!)).toBe(1);
    // Caddy caches answers for its refresh, but not errors: an answer for a host asked for just
    // before its route existed would keep the route dark that long.
    const unknown = dns.answer(query('nobody.test.berth.internal', 33), 512)!;
    expect(rcode(unknown)).toBe(3);
    expect(answers(unknown)).toBe(0);
    expect(rcode(dns.answer(query('nobody.test.berth.internal', 1), 512)!)).toBe(3);
  });

  it('answers A and AAAA for the target names it hands out, and refuses other zones', () => {
    const a = dns.answer(query(`${labelFor('127.0.0.2')}.berth.internal`, 1), 512)!;
    expect([...a.subarray(a.length - 4)]).toEqual([127, 0, 0, 2]);
    const aaaa = dns.answer(query(`${labelFor('fd00::1')}.berth.internal`, 28), 512)!;
    expect(aaaa.subarray(aaaa.length - 16).toString('hex')).toBe('fd000000000000000000000000000001');
    expect(rcode(dns.answer(query('example.com', 1), 512)!)).toBe(5);
  });

  it('survives garbage and truncates what does not fit in UDP', () => {
    expect(dns.answer(Buffer.from([1, 2, 3]), 512)).toBeUndefined();
    expect(rcode(dns.answer(Buffer.alloc(20, 0xff), 512)!)).toBe(1);
    const big = new DnsResponder({ zone: 'z', notFound: { host: '127.0.0.1', port: 9 } });
    big.setTable(
      new Map([['h', Array.from({ length: 40 }, (_, i) => ({ host: `127.0.1.${i}`, port: 80 }))]]),
    );
    const udp = big.answer(query('h.z', 33), 512)!;
    expect(udp[2]! & 0x02).toBe(0x02);
    expect(answers(big.answer(query('h.z', 33), 65_535)!)).toBe(40);
  });
});

describe('dynamic Caddy layout', () => {
  const site = (host: string, over: Partial<Site> = {}): Site => ({
    host,
    path: '/',
    stripPath: false,
    upstreams: [{ host: '127.0.0.1', port: 80, scheme: 'http' }],
    routeKeys: ['a:r'],
    ...over,
  });

  it('serves simple hosts through DNS and writes only the others into the config', () => {
    const sites = [
      site('simple.test'),
      site('paths.test'),
      site('paths.test', { path: '/api' }),
      site('private.test', { allow: ['10.0.0.0/8'] }),
      site('tls.test', { upstreams: [{ host: '127.0.0.1', port: 443, scheme: 'https' }] }),
      site('grpc.test', { upstreams: [{ host: '127.0.0.1', port: 50051, scheme: 'h2c' }] }),
      // No DNS name can carry an IPv6 literal.
      site('10::10'),
    ];
    const { dynamic, explicit } = splitSites(sites);
    expect(dynamic.map((s) => s.host)).toEqual(['simple.test']);
    expect(explicit.map((s) => s.host)).toEqual([
      'paths.test',
      'paths.test',
      'private.test',
      'tls.test',
      'grpc.test',
      '10::10',
    ]);
    const opts = {
      tls: 'off' as const,
      httpListen: ':80',
      httpsListen: ':443',
      dynamic: { resolver: '127.0.0.1:5353', zone: 'berth.internal', notFound: '127.0.0.1:9', refresh: '1s' },
    };
    const routes = buildCaddyParts(sites, opts, 'v1').servers.berth_http.routes;
    expect(JSON.stringify(routes)).not.toContain('simple.test');
    const last = routes[routes.length - 1];
    expect(last['@id']).toBe('v1');
    expect(last.handle[0].dynamic_upstreams).toMatchObject({
      source: 'srv',
      name: '{http.request.host}.berth.internal',
    });
    expect(last.handle[0].upstreams).toEqual([{ dial: '127.0.0.1:9' }]);
    // The same config whatever the simple hosts are: their changes need no apply.
    const other = buildCaddyParts([...sites.slice(1), site('new.test')], opts, 'v1');
    expect(JSON.stringify(other)).toBe(JSON.stringify(buildCaddyParts(sites, opts, 'v1')));
  });

  it('keeps a host in DNS while it moves into the config, but not once it is gone', () => {
    const before = tableFromSites([site('moving.test'), site('gone.test'), site('stays.test')]);
    expect(Object.keys(before).sort()).toEqual(['gone.test', 'moving.test', 'stays.test']);
    const after = [site('moving.test'), site('moving.test', { path: '/api' }), site('stays.test')];
    // Before the apply: moving.test is still reached through DNS; gone.test leaves at once.
    expect(tableFromSites(after, before)).toEqual({
      'moving.test': [['127.0.0.1', 80]],
      'stays.test': [['127.0.0.1', 80]],
    });
    // Once applied: only what the catch-all serves.
    expect(tableFromSites(after)).toEqual({ 'stays.test': [['127.0.0.1', 80]] });
  });

  it('writes every host and upstream as JSON reads it back, plain or not', () => {
    const odd = ['we"ird.test', 'back\\slash.test', 'ünï.test', 'tab\t.test', '*.wild.test'];
    const sites = odd.map((h, i) =>
      site(h, {
        upstreams: [
          { host: i % 2 ? `up"${i}` : '10.0.0.1', port: 80 + i, scheme: 'http' },
          { host: 'b.internal', port: 8080, scheme: 'http' },
        ],
      }),
    );
    const table = tableFromSites(sites);
    expect(Object.keys(table).sort()).toEqual([...odd].sort());
    for (const [i, h] of odd.entries())
      expect(table[h]).toEqual([
        [i % 2 ? `up"${i}` : '10.0.0.1', 80 + i],
        ['b.internal', 8080],
      ]);
  });
});

describe('DNS responder answering unknown hosts (with the forwarding not-found listener)', () => {
  it('answers an unknown host with the not-found listener, which Caddy may cache', () => {
    const dns = new DnsResponder({
      zone: 'berth.internal',
      notFound: { host: '127.0.0.1', port: 9 },
      answerUnknown: true,
    });
    const a = dns.answer(query('nobody.test.berth.internal', 33), 512)!;
    expect(rcode(a)).toBe(0);
    expect(answers(a)).toBe(1);
    expect(a.includes(Buffer.from(labelFor('127.0.0.1')))).toBe(true);
    expect(a.includes(Buffer.from([0, 9, labelFor('127.0.0.1').length]))).toBe(true); // port 9, then the name
    // Only SRV: other types for a name no one routes stay a name error.
    expect(rcode(dns.answer(query('nobody.test.berth.internal', 1), 512)!)).toBe(3);
    expect(dns.stats).toMatchObject({ answered: 0, notFound: 2 });
  });
});

describe('notFoundListener', () => {
  it('answers 404 for a host no route serves, and forwards requests and WebSockets to one routed since', async () => {
    const upstream = createServer((req, res) => res.end(`upstream saw ${req.headers.host} ${req.url}`));
    const wss = new WebSocketServer({ server: upstream });
    wss.on('connection', (s) => s.on('message', (m) => s.send(`echo:${m}`)));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const port = (upstream.address() as AddressInfo).port;
    const table = new Map<string, { host: string; port: number }[]>();
    const nf = notFoundListener((h) => table.get(h));
    await new Promise<void>((r) => nf.listen(0, '127.0.0.1', r));
    const nfPort = (nf.address() as AddressInfo).port;
    const get = (host: string) =>
      new Promise<string>((resolve, reject) => {
        const q = request({ host: '127.0.0.1', port: nfPort, path: '/p?q=1', headers: { host } }, (r) => {
          let body = '';
          r.on('data', (c) => (body += c));
          r.on('end', () => resolve(`${r.statusCode} ${body}`));
        });
        q.on('error', reject);
        q.end();
      });
    try {
      expect(await get('late.test')).toBe('404 berth: no route for this host or path\n');
      table.set('late.test', [{ host: '127.0.0.1', port }]);
      expect(await get('late.test:8080')).toBe('200 upstream saw late.test:8080 /p?q=1');
      const ws = new WebSocket(`ws://127.0.0.1:${nfPort}/`, { headers: { host: 'late.test' } });
      await new Promise((r, j) => ws.once('open', r).once('error', j));
      ws.send('hi');
      expect(String(await new Promise((r) => ws.once('message', r)))).toBe('echo:hi');
      ws.close();
      const refused = new WebSocket(`ws://127.0.0.1:${nfPort}/`, { headers: { host: 'other.test' } });
      const status = await new Promise((r) =>
        refused.once('unexpected-response', (_q, res) => r(res.statusCode)),
      );
      expect(status).toBe(404);
    } finally {
      nf.close();
      wss.close();
      upstream.close();
    }
  });
});

describe('berth dns-server', () => {
  /** A free TCP port on 127.0.0.1 (the responder takes UDP and TCP on its DNS port). */
  const freePort = () =>
    new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address() as AddressInfo;
        s.close(() => resolve(port));
      });
    });

  it('forwards late routes from its not-found listener only when it listens on loopback', async () => {
    const upstream = createServer((_req, res) => res.end('routed'));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const up = (upstream.address() as AddressInfo).port;
    const status = async (listenHost: string) => {
      const dataDir = mkdtempSync(join(tmpdir(), 'berth-dns-'));
      mkdirSync(join(dataDir, 'dns'));
      const cfg = { host: listenHost, dnsPort: await freePort(), notFoundPort: await freePort() };
      writeFileSync(join(dataDir, 'dns', 'config.json'), JSON.stringify(cfg));
      writeFileSync(join(dataDir, 'dns', 'table.json'), JSON.stringify({ 'late.test': [['127.0.0.1', up]] }));
      const dns = await runDnsServer(dataDir, pino({ level: 'silent' }));
      try {
        // The table is read once the server is up; the forwarded answer or the 404 says which.
        let last = '';
        for (let i = 0; i < 50 && last !== '200 routed'; i++) {
          last = await new Promise<string>((resolve, reject) => {
            const q = request(
              { host: '127.0.0.1', port: cfg.notFoundPort, path: '/', headers: { host: 'late.test' } },
              (r) => {
                let body = '';
                r.on('data', (c) => (body += c));
                r.on('end', () => resolve(`${r.statusCode} ${body}`));
              },
            );
            q.on('error', reject);
            q.end();
          });
          if (last !== '200 routed') await new Promise((r) => setTimeout(r, 20));
        }
        return last;
      } finally {
        await dns.stop();
        rmSync(dataDir, { recursive: true, force: true });
      }
    };
    try {
      expect(await status('127.0.0.1')).toBe('200 routed');
      // On any other address, whoever reaches the listener would reach the upstreams past Caddy.
      expect(await status('0.0.0.0')).toBe('404 berth: no route for this host or path\n');
    } finally {
      upstream.close();
    }
  });
});
