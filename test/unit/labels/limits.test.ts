// The sizes agent and server agree on (model/limits.ts): a label set beyond one of them is an
// error on its own container, and the snapshot it travels in still passes the server's validator.
import { describe, expect, it } from 'vitest';
import { DEFAULT_POLICY, rulesFor } from '../../../src/agent/exec-policy.js';
import { snapshotContent } from '../../../src/agent/snapshot.js';
import { extractRoutes } from '../../../src/labels/index.js';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_EXEC_RULES,
  MAX_HOSTS_PER_ROUTE,
  MAX_LABEL_VALUE,
  MAX_REPORT_BYTES_PER_CONTAINER,
} from '../../../src/model/limits.js';
import { parseAgentMessage } from '../../../src/model/protocol.js';
import type { ContainerInfo } from '../../../src/model/types.js';
import { container } from './container.js';

const ctx = { hostIp: '127.0.0.2', labelPrefix: 'berth' };
const hosts = (n: number, len = 0) =>
  Array.from({ length: n }, (_, i) => `h${i}.${'x'.repeat(len)}${len ? '.' : ''}example.com`);

function snapshot(cs: ContainerInfo[]) {
  const content = snapshotContent(cs, ctx, { execRules: (c) => rulesFor(c, DEFAULT_POLICY, 'berth') });
  const raw = JSON.stringify({
    type: 'snapshot',
    snapshot: { agentId: 'a', generation: 1, hostIp: ctx.hostIp, takenAt: 1, ...content },
  });
  const m = parseAgentMessage(raw);
  if (m.type !== 'snapshot') throw new Error('not a snapshot');
  return { ...m.snapshot, bytes: Buffer.byteLength(raw) };
}

/** A plain berth route plus the labels under test. */
const routed = (labels: Record<string, string>, over: Partial<ContainerInfo> = {}) =>
  container({ ...over, labels: { 'berth.host': 'a.example.com', 'berth.port': '80', ...labels } });

const good = routed({ 'berth.host': 'ok.example.com' }, { id: 'good', name: 'good' });

const errors = (r: { diagnostics: { severity: string; label: string; message: string }[] }) =>
  r.diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.label}: ${d.message}`);

describe('label limits', () => {
  it(`${MAX_HOSTS_PER_ROUTE + 1} names in berth.host: an error on that container only`, () => {
    const bad = routed({ 'berth.host': hosts(101).join(',') }, { id: 'bad', name: 'bad' });
    expect(errors(extractRoutes(bad, ctx))).toEqual([
      'berth.host: 101 hostnames in one route; at most 100 are allowed (split them over several routes)',
    ]);
    const s = snapshot([bad, good]);
    expect(s.routes.map((r) => r.containerId)).toEqual(['good']);
    const ok = routed({ 'berth.host': hosts(100).join(',') });
    expect(extractRoutes(ok, ctx).routes[0]?.hosts).toHaveLength(100);
  });

  it('more than 100 hostnames in a Traefik Host() or a caddy site', () => {
    const t = container({
      labels: {
        'traefik.http.routers.r.rule': `Host(${hosts(150)
          .map((h) => `\`${h}\``)
          .join(', ')})`,
        'traefik.http.services.r.loadbalancer.server.port': '80',
      },
    });
    expect(errors(extractRoutes(t, ctx))).toEqual([
      'traefik.http.routers.r.rule: 150 hostnames in one route; at most 100 are allowed (split them over several routes)',
    ]);
    const c = container({
      labels: { caddy: hosts(101).join(' '), 'caddy.reverse_proxy': '{{upstreams 80}}' },
    });
    expect(errors(extractRoutes(c, ctx))[0]).toMatch(/^caddy\.reverse_proxy: 101 hostnames in one route/);
  });

  it(`a value over ${MAX_LABEL_VALUE} characters is refused unread, naming the label and its size`, () => {
    const rule = `Host(\`a.example.com\`) && ${'('.repeat(MAX_LABEL_VALUE)}`;
    const big = container({ labels: { 'traefik.http.routers.r.rule': rule } });
    const r = extractRoutes(big, ctx);
    expect(errors(r)).toEqual([
      `traefik.http.routers.r.rule: label traefik.http.routers.r.rule is ${rule.length} characters (64 KiB); at most 65536 (64 KiB) are read, so it is not parsed and the container is not routed`,
    ]);
    expect(r.diagnostics[0]!.value!.length).toBeLessThanOrEqual(4096);
    expect(r.explain?.labels[0]).toMatchObject({ use: 'error' });
    const atLimit = routed({ 'berth.host': `a.example.com${' '.repeat(MAX_LABEL_VALUE - 13)}` });
    expect(extractRoutes(atLimit, ctx).routes).toHaveLength(1);
  });

  it('a label key over 1024 characters and more than 1000 labels are errors', () => {
    const key = container({ labels: { [`berth.${'g'.repeat(1100)}.host`]: 'a.example.com' } });
    const r = extractRoutes(key, ctx);
    expect(errors(r)).toHaveLength(1);
    expect(errors(r)[0]).toMatch(/label key of 1111 characters; at most 1024 are read/);
    expect(r.diagnostics[0]!.label.length).toBeLessThanOrEqual(1024);
    const many = container({
      labels: Object.fromEntries(
        Array.from({ length: 1001 }, (_, i) => [`berth.g${i}.host`, `g${i}.example.com`]),
      ),
    });
    expect(errors(extractRoutes(many, ctx))).toEqual([
      ': the container has 1001 berth labels; at most 1000 are read, so it is not routed',
    ]);
    snapshot([key, many, good]);
  });

  it('a route name, path, allow-list or compose group beyond the schema is an error', () => {
    const longKey = container({
      labels: { caddy: 'a.example.com', [`caddy.reverse_proxy_${'0'.repeat(1000)}1`]: '{{upstreams 80}}' },
    });
    expect(errors(extractRoutes(longKey, ctx))[0]).toMatch(
      /the route's name \(\d+ characters, from the label key\) is longer than 1024/,
    );
    const path = routed({ 'berth.path': `/${'p'.repeat(1100)}` });
    expect(errors(extractRoutes(path, ctx))).toEqual([
      'berth.path: expected a path prefix of at most 1024 characters',
    ]);
    const allow = routed({
      'berth.allow': Array.from({ length: 300 }, (_, i) => `10.0.${i >> 8}.${i & 255}`).join(','),
    });
    expect(errors(extractRoutes(allow, ctx))).toEqual([
      'berth.allow: expected at most 256 networks (300 are given)',
    ]);
    const compose = routed({
      'com.docker.compose.project': 'p',
      'com.docker.compose.service': 's'.repeat(2000),
    });
    expect(errors(extractRoutes(compose, ctx))).toEqual([
      'com.docker.compose.service: the load-balancing group is 2010 characters long; at most 1024 are allowed',
    ]);
    const s = snapshot([longKey, path, allow, compose, good]);
    expect(s.routes.map((r) => r.containerId)).toEqual(['good']);
    expect(s.containers.find((c) => c.id === compose.id)?.service).toBeUndefined();
  });

  it('exec rules longer than 1024 characters are left out one by one, with a warning', () => {
    const labels: Record<string, string> = {
      'berth.exec.allow': 'ls',
      'berth.exec.allow.1': `echo ${'a '.repeat(600)}`,
    };
    for (let i = 2; i < 70; i++) labels[`berth.exec.allow.${i}`] = `cat f${i}`;
    const s = snapshot([container({ labels }), good]);
    const c = s.containers.find((x) => x.id === 'c0ffee000001')!;
    expect(c.execRules).toHaveLength(MAX_EXEC_RULES);
    expect(c.execRules![0]).toBe('ls');
    expect(c.execRules!.every((r) => r.length <= 1024)).toBe(true);
    expect(
      s.diagnostics
        .filter((d) => d.containerId === c.id)
        .map((d) => `${d.severity} ${d.label}: ${d.message}`),
    ).toEqual([
      'warning berth.exec.allow.1: exec rule of 1205 characters is not listed: at most 1024 are reported; it still applies on this host',
      'warning berth.exec.allow: 69 exec rules apply to this container; only the first 64 are listed (all of them still apply on this host)',
    ]);
  });

  it("one container's diagnostics and explanation stay within their budget, errors kept", () => {
    const labels: Record<string, string> = {
      caddy: 'a.example.com',
      'caddy.reverse_proxy': '{{upstreams 80}}',
    };
    for (let i = 0; i < 900; i++) labels[`caddy.header_${i}`] = `X-${i} ${'v'.repeat(5000)}`;
    labels['caddy.reverse_proxy'] = '{{upstreams nope}}';
    labels['caddy.zz_bad'] = 'x';
    const c = container({ labels });
    const r = extractRoutes(c, ctx);
    const bytes =
      Buffer.byteLength(JSON.stringify(r.diagnostics)) + Buffer.byteLength(JSON.stringify(r.explain));
    expect(bytes).toBeLessThanOrEqual(MAX_REPORT_BYTES_PER_CONTAINER);
    expect(r.diagnostics.every((d) => (d.value?.length ?? 0) <= 4096 && d.message.length <= 4096)).toBe(true);
    const summary = r.diagnostics.find((d) => /more diagnostics/.test(d.message));
    expect(summary?.message).toMatch(/^\d+ more diagnostics \(\d+ errors\) are not reported/);
    expect(r.diagnostics.some((d) => d.severity === 'error')).toBe(true);
    expect(r.diagnostics.some((d) => /explanation of \d+ more labels is left out/.test(d.message))).toBe(
      true,
    );
    snapshot([c, good]);
  });

  it('a container whose routes would take too much of the snapshot is an error; a full snapshot refuses the rest', () => {
    const sites = (n: number) =>
      Object.fromEntries(
        Array.from({ length: n }, (_, i) => [
          [
            `caddy_${i}`,
            hosts(100, 40)
              .map((h) => `s${i}${h}`)
              .join(' '),
          ],
          [`caddy_${i}.reverse_proxy`, '{{upstreams 80}}'],
        ]).flat(),
      );
    const huge = container({ labels: sites(60) });
    expect(errors(extractRoutes(huge, ctx))).toEqual([
      expect.stringMatching(
        /^: the container's 60 routes take \d+ KiB of the snapshot; one container may add at most 192 KiB/,
      ),
    ]);
    // Each of these is within its own limits (about 100 KiB); 120 of them do not fit in one snapshot.
    const many = Array.from({ length: 120 }, (_, i) =>
      container({ id: `c${String(i).padStart(3, '0')}`, name: `n${i}`, labels: sites(12) }),
    );
    const s = snapshot([good, ...many]);
    expect(s.bytes).toBeLessThanOrEqual(DEFAULT_MAX_MESSAGE_BYTES);
    expect(s.routes.some((r) => r.containerId === 'good')).toBe(true);
    const refused = s.diagnostics.filter((d) =>
      /the snapshot of this host would exceed 8 MiB/.test(d.message),
    );
    expect(refused.length).toBeGreaterThan(0);
    expect(s.routes.some((r) => r.containerId === refused[0]!.containerId)).toBe(false);
  });

  it('a container name beyond 1024 characters is clipped, not fatal', () => {
    const c = routed({}, { name: 'n'.repeat(3000) });
    const s = snapshot([c]);
    expect(s.routes[0]?.containerName.length).toBeLessThanOrEqual(1024);
    expect(s.containers[0]?.name.length).toBeLessThanOrEqual(1024);
  });
});
