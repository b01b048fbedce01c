import { describe, expect, it } from 'vitest';
import {
  buildCaddyParts,
  canonicalJson,
  extractParts,
  mergeIntoConfig,
} from '../../../src/ingress/caddy/config.js';
import type { Site } from '../../../src/model/desired.js';

const site = (host: string, path = '/', over: Partial<Site> = {}): Site => ({
  host,
  path,
  stripPath: false,
  upstreams: [{ host: '127.0.0.1', port: 8080, scheme: 'http' }],
  routeKeys: ['a:r'],
  ...over,
});

const opts = { tls: 'off' as const, httpListen: '127.0.0.1:8080', httpsListen: ':443' };

describe('buildCaddyParts', () => {
  it('builds one host route with longest paths first, strip_path and a 404 fallback', () => {
    const parts = buildCaddyParts(
      [
        site('a.example.com'),
        site('a.example.com', '/api', { stripPath: true }),
        site('a.example.com', '/api/v2'),
      ],
      opts,
    );
    const server = parts.servers.berth_http;
    expect(server.listen).toEqual(['127.0.0.1:8080']);
    expect(server.automatic_https).toEqual({ disable: true });
    const sub = server.routes[0].handle[0].routes;
    expect(sub.map((r: { match?: { path: string[] }[] }) => r.match?.[0]?.path[0] ?? '/')).toEqual([
      '/api/v2',
      '/api',
      '/',
    ]);
    expect(sub[1].handle[0]).toEqual({ handler: 'rewrite', strip_path_prefix: '/api' });
    expect(server.routes.at(-1).handle[0].status_code).toBe(404);
  });

  it('orders exact hosts before wildcards and uses TLS to https upstreams', () => {
    const parts = buildCaddyParts(
      [
        site('*.example.com'),
        site('b.example.com', '/', { upstreams: [{ host: '::1', port: 8443, scheme: 'https' }] }),
      ],
      opts,
    );
    const routes = parts.servers.berth_http.routes;
    expect(routes[0].match[0].host).toEqual(['b.example.com']);
    expect(routes[1].match[0].host).toEqual(['*.example.com']);
    const proxy = routes[0].handle[0];
    expect(proxy.upstreams).toEqual([{ dial: '[::1]:8443' }]);
    expect(proxy.transport).toEqual({ protocol: 'http', tls: {} });
  });

  it("checks a tunneled https upstream's certificate for the address the agent dials", () => {
    const tunneled = {
      host: '127.77.0.3',
      port: 40001,
      scheme: 'https' as const,
      tlsServerName: '127.0.0.1',
    };
    const direct = { host: '10.0.0.5', port: 8443, scheme: 'https' as const };
    const transport = (upstreams: Site['upstreams']) =>
      buildCaddyParts([site('t.example.com', '/', { upstreams })], opts).servers.berth_http.routes[0]
        .handle[0].transport;
    expect(transport([tunneled])).toEqual({ protocol: 'http', tls: { server_name: '127.0.0.1' } });
    // Two agents' tunnels to the same address on each side: one name fits both.
    expect(transport([tunneled, { ...tunneled, host: '127.77.0.4' }]).tls).toEqual({
      server_name: '127.0.0.1',
    });
    // A direct upstream is checked for the address Caddy dials, as before; so is a group that
    // would need two names, since a handler has one.
    expect(transport([direct]).tls).toEqual({});
    expect(transport([direct, tunneled]).tls).toEqual({});
    expect(transport([tunneled, { ...tunneled, host: '127.77.0.4', tlsServerName: '10.1.1.1' }]).tls).toEqual(
      {},
    );
    // A name on an upstream that is not a tunnel endpoint is not taken (only the server sets one).
    expect(transport([{ ...direct, tlsServerName: 'evil.example' }]).tls).toEqual({});
  });

  it('speaks h2c to an h2c upstream, and matches an IPv6 literal host as Caddy sees it', () => {
    const parts = buildCaddyParts(
      [site('10::10', '/', { upstreams: [{ host: '127.0.0.1', port: 50051, scheme: 'h2c' }] })],
      opts,
    );
    const route = parts.servers.berth_http.routes[0];
    // Caddy's host matcher drops the brackets of a Host header such as [10::10]:8080.
    expect(route.match).toEqual([{ host: ['10::10'] }]);
    expect(route.handle[0]).toEqual({
      handler: 'reverse_proxy',
      upstreams: [{ dial: '127.0.0.1:50051' }],
      transport: { protocol: 'http', versions: ['h2c'] },
    });
  });

  it('adds a 404 inside a host that has no root path', () => {
    const sub = buildCaddyParts([site('a.example.com', '/api')], opts).servers.berth_http.routes[0].handle[0]
      .routes;
    expect(sub.at(-1).handle[0].status_code).toBe(404);
  });

  it('in TLS modes serves on the HTTPS listener, redirects plain HTTP, and owns one internal policy', () => {
    const parts = buildCaddyParts([site('a.example.com')], {
      tls: 'internal',
      httpListen: ':80',
      httpsListen: ':8443',
    });
    expect(parts.servers.berth_https.listen).toEqual([':8443']);
    expect(parts.servers.berth_http.routes[0].handle[0].headers.Location[0]).toBe(
      'https://{http.request.host}:8443{http.request.uri}',
    );
    expect(parts.tlsPolicy).toEqual({
      '@id': 'berth_tls',
      subjects: ['a.example.com'],
      issuers: [{ module: 'internal' }],
    });
  });
});

describe('--ui-host', () => {
  const ui = { host: 'berth.example.com', upstream: '127.0.0.1:7080' };

  it('serves the API before every agent route, refusing the agent path there', () => {
    const parts = buildCaddyParts([site('berth.example.com'), site('b.example.com')], { ...opts, ui });
    const routes = parts.servers.berth_http.routes;
    expect(routes[0].match).toEqual([{ host: ['berth.example.com'] }]);
    expect(routes[0].terminal).toBe(true);
    const [agentPath, proxy] = routes[0].handle[0].routes;
    expect(agentPath.match).toEqual([{ path: ['/agent/v1/connect', '/agent/*'] }]);
    expect(agentPath.handle[0]).toMatchObject({ handler: 'static_response', status_code: 404 });
    expect(proxy.handle[0]).toEqual({ handler: 'reverse_proxy', upstreams: [{ dial: '127.0.0.1:7080' }] });
  });

  it('gets a certificate from the internal CA even when no agent route exists yet', () => {
    const parts = buildCaddyParts([], { ...opts, tls: 'internal', ui });
    expect(parts.tlsPolicy.subjects).toEqual(['berth.example.com']);
    expect(parts.servers.berth_https.routes[0].match).toEqual([{ host: ['berth.example.com'] }]);
  });
});

describe('mergeIntoConfig', () => {
  it("replaces only Berth's servers and policy and keeps the operator's config", () => {
    const operator = {
      admin: { listen: 'localhost:2019' },
      apps: {
        http: {
          servers: {
            mine: { listen: [':9000'], routes: [{ handle: [{ handler: 'static_response' }] }] },
            berth_old: {},
          },
        },
        tls: {
          automation: {
            policies: [{ subjects: ['x.example.com'] }, { '@id': 'berth_tls', subjects: ['old'] }],
          },
        },
      },
    };
    const parts = buildCaddyParts([site('a.example.com')], {
      tls: 'internal',
      httpListen: ':80',
      httpsListen: ':443',
    });
    const merged = mergeIntoConfig(operator, parts);
    expect(Object.keys(merged.apps.http.servers).sort()).toEqual(['berth_http', 'berth_https', 'mine']);
    expect(merged.apps.http.servers.mine).toEqual(operator.apps.http.servers.mine);
    expect(merged.admin).toEqual(operator.admin);
    expect(merged.apps.tls.automation.policies).toEqual([parts.tlsPolicy, { subjects: ['x.example.com'] }]);
    expect(canonicalJson(extractParts(merged))).toBe(canonicalJson(parts));
    // the input is not modified
    expect(operator.apps.http.servers.berth_old).toEqual({});
  });

  it('answers 403 before proxying when a client is outside the allow-list', () => {
    const parts = buildCaddyParts([site('a.example.com', '/', { allow: ['10.0.0.0/8'] })], opts);
    const route = parts.servers.berth_http.routes[0];
    expect(route.handle[0]).toEqual({
      handler: 'subroute',
      routes: [
        {
          match: [{ not: [{ remote_ip: { ranges: ['10.0.0.0/8'] } }] }],
          handle: [expect.objectContaining({ handler: 'static_response', status_code: 403 })],
        },
      ],
    });
    expect(route.handle[1].handler).toBe('reverse_proxy');
  });

  it('canonicalJson ignores key order', () => {
    expect(canonicalJson({ b: 1, a: [{ y: 2, x: 1 }] })).toBe(canonicalJson({ a: [{ x: 1, y: 2 }], b: 1 }));
  });
});
