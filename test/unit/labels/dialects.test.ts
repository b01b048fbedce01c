// What the golden files cannot show: several containers at once, what crosses the wire, and
// the Traefik rule reader on its own.
import { describe, expect, it } from 'vitest';
import { extractAll, extractRoutes } from '../../../src/labels/index.js';
import { parseRule } from '../../../src/labels/traefik.js';
import { parseAgentMessage, type SnapshotMessage } from '../../../src/model/protocol.js';
import { container } from './container.js';

const ctx = { hostIp: '127.0.0.2', labelPrefix: 'berth' };

const named = (id: string, name: string, labels: Record<string, string>) => container({ id, name, labels });

describe('label dialects', () => {
  it('a bad label in one dialect never affects other containers', () => {
    const { routes, diagnostics, explanations } = extractAll(
      [
        named('c1', 'bad-traefik', {
          'traefik.http.routers.x.rule': 'Host(`x.example.com`',
          'traefik.http.services.x.loadbalancer.server.port': '80',
        }),
        named('c2', 'caddy-app', { caddy: 'c.example.com', 'caddy.reverse_proxy': '{{upstreams 81}}' }),
        named('c3', 'bad-caddy', { caddy: 'd.example.com', 'caddy.reverse_proxy': '{{upstreams 0}}' }),
        named('c4', 'flare', {
          'dockflare.enable': 'true',
          'dockflare.hostname': 'f.example.com',
          'dockflare.service': 'http://flare:82',
        }),
        named('c5', 'plain', { maintainer: 'me' }),
      ],
      ctx,
    );
    expect(routes.map((r) => `${r.containerName} ${r.hosts.join(',')} ${r.upstream.port}`)).toEqual([
      'caddy-app c.example.com 81',
      'flare f.example.com 82',
    ]);
    expect(diagnostics.filter((d) => d.severity === 'error').map((d) => d.containerName)).toEqual([
      'bad-traefik',
      'bad-caddy',
    ]);
    expect([...explanations.keys()]).toEqual(['c1', 'c2', 'c3', 'c4']);
    expect(explanations.get('c1')?.dialect).toBe('traefik');
  });

  it('every diagnostic names container, label, value and what was expected', () => {
    const r = extractRoutes(
      named('c1', 'shop', { caddy: 'shop.example.com', 'caddy.reverse_proxy': '{{upstreams eighty}}' }),
      ctx,
    );
    expect(r.routes).toEqual([]);
    expect(r.diagnostics).toEqual([
      {
        severity: 'error',
        containerId: 'c1',
        containerName: 'shop',
        label: 'caddy.reverse_proxy',
        value: '{{upstreams eighty}}',
        message:
          'expected {{upstreams [http|https|h2c] [port]}} with a port number from 1 to 65535 ("eighty" is not one)',
      },
    ]);
  });

  it('sends the explanation in snapshots the server accepts, clipping long values', () => {
    const long = 'x'.repeat(5000);
    const c = named('c1', 'web', {
      'traefik.http.routers.web.rule': 'Host(`w.example.com`)',
      'traefik.http.services.web.loadbalancer.server.port': '80',
      'traefik.http.middlewares.h.headers.customresponseheaders.X-Long': long,
      caddy: 'w.example.com',
    });
    const r = extractRoutes(c, { ...ctx, dialects: ['traefik', 'caddy'] });
    const explain = r.explain!;
    expect(explain.dialect).toBe('traefik');
    const longLabel = explain.labels.find((l) => l.key.endsWith('X-Long'))!;
    expect(longLabel.value.length).toBeLessThanOrEqual(1000);
    expect(explain.labels.find((l) => l.key === 'caddy')).toMatchObject({ use: 'ignored' });
    const snapshot = {
      agentId: 'a',
      generation: 1,
      hostIp: '127.0.0.2',
      takenAt: 1,
      containers: [{ id: c.id, name: c.name, state: 'running', health: 'none', labelled: true, explain }],
      routes: r.routes,
      diagnostics: r.diagnostics,
    };
    const accepted = parseAgentMessage(JSON.stringify({ type: 'snapshot', snapshot })) as SnapshotMessage;
    expect(accepted.type).toBe('snapshot');
    expect(accepted.refused).toBeUndefined();
    const wrong = structuredClone(snapshot);
    wrong.containers[0]!.explain!.labels[0]!.use = 'maybe' as never;
    const refused = parseAgentMessage(JSON.stringify({ type: 'snapshot', snapshot: wrong }));
    expect((refused as SnapshotMessage).refused?.[0]?.message).toMatch(
      /container\.explain\.labels\.0\.use must be equal to one of the allowed values/,
    );
  });
});

describe('Traefik rules', () => {
  it.each([
    ['Host(`a.example.com`)', [{ hosts: ['a.example.com'], path: '/' }]],
    ['Host(`a.example.com`, `b.example.com`)', [{ hosts: ['a.example.com', 'b.example.com'], path: '/' }]],
    [
      'Host(`a.example.com`, `b.example.com`) && Host(`B.example.com`, `c.example.com`)',
      [{ hosts: ['b.example.com'], path: '/' }],
    ],
    [`${'('.repeat(64)}Host(\`a.example.com\`)${')'.repeat(64)}`, [{ hosts: ['a.example.com'], path: '/' }]],
    [
      'Host(`a.example.com`) && (PathPrefix(`/x`) || PathPrefix(`/y`))',
      [
        { hosts: ['a.example.com'], path: '/x' },
        { hosts: ['a.example.com'], path: '/y' },
      ],
    ],
    [
      'Host(`a.example.com`) && PathPrefix(`/api`) && PathPrefix(`/api/v1`)',
      [{ hosts: ['a.example.com'], path: '/api/v1' }],
    ],
    ['HostHeader("A.example.com")', [{ hosts: ['a.example.com'], path: '/' }]],
    // Each alternative gets the later conditions of its own (no term shares another's list).
    [
      '(Host(`a.example.com`) || Host(`b.example.com`)) && PathPrefix(`/x`) && PathPrefix(`/x/y`)',
      [
        { hosts: ['a.example.com'], path: '/x/y' },
        { hosts: ['b.example.com'], path: '/x/y' },
      ],
    ],
    [
      '(Host(`a.example.com`) && PathPrefix(`/a`) || Host(`b.example.com`)) && PathPrefix(`/b`)',
      [{ hosts: ['b.example.com'], path: '/b' }],
    ],
  ])('reads %s', (rule, terms) => {
    expect(parseRule(rule)).toMatchObject({ ok: true, terms });
  });

  it.each([
    ['Host(`a`)', []],
    ['Host(`a`, `b`) || HostHeader(`c`)', ['Host(…) with 2 values', 'HostHeader(…)']],
    ['Host(`a`) && PathPrefix(`/x`, `/y`)', ['PathPrefix(…) with 2 values']],
  ])('notes the Traefik v2 syntax in %s', (rule, v2) => {
    const r = parseRule(rule);
    expect(r.ok && r.v2.map((x) => x.what)).toEqual(v2);
  });

  it.each([
    ['Host(`a.example.com`) && Host(`b.example.com`)', true, /never match/],
    ['Host(`a.example.com`) && Headers(`X`, `y`)', true, /Headers matcher/],
    ['!Host(`a.example.com`)', true, /negation/],
    ['Host(`a.example.com`', false, /Host\( is not closed/],
    ['Host(`a.example.com`) &&', false, /ends early/],
    ['Host(`a`) Host(`b`)', false, /unexpected "Host"/],
    [`${'('.repeat(65)}Host(\`a\`)${')'.repeat(65)}`, false, /nest more than 64 deep/],
    ['Host("a\\x")', false, /escape Berth cannot read/],
    [
      `(${Array.from({ length: 9 }, (_, i) => `Host(\`h${i}\`)`).join(' || ')}) && (${Array.from({ length: 8 }, (_, i) => `PathPrefix(\`/p${i}\`)`).join(' || ')})`,
      true,
      /too many combinations/,
    ],
  ])('refuses %s', (rule, untranslatable, message) => {
    const r = parseRule(rule);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.untranslatable).toBe(untranslatable);
    expect(r.message).toMatch(message);
  });
});
