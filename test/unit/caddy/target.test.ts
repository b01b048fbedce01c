// CaddyTarget against a fake of its admin client: what it sends, when it sends nothing, how a
// config Caddy rejects is bisected down to the sites at fault, and how drift is noticed. The
// fake judges configs by the hosts they route; real Caddy stays in the e2e tests.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import {
  type AdminResponse,
  type CaddyAdminClient,
  CaddyRejectedError,
} from '../../../src/ingress/caddy/admin.js';
import type { CaddyBuildOptions, Json } from '../../../src/ingress/caddy/config.js';
import { CaddyTarget } from '../../../src/ingress/caddy/target.js';
import { type Site, siteSignature } from '../../../src/model/desired.js';

/** Hosts a config routes explicitly (every `match: [{ host: [...] }]` in it). */
function routedHosts(v: Json, out: string[] = []): string[] {
  if (Array.isArray(v)) for (const x of v) routedHosts(x, out);
  else if (v && typeof v === 'object') {
    for (const m of Array.isArray(v.match) ? v.match : []) if (Array.isArray(m?.host)) out.push(...m.host);
    for (const x of Object.values(v)) routedHosts(x, out);
  }
  return out;
}

function hasId(v: Json, id: string): boolean {
  if (Array.isArray(v)) return v.some((x) => hasId(x, id));
  if (v && typeof v === 'object') return v['@id'] === id || Object.values(v).some((x) => hasId(x, id));
  return false;
}

/**
 * Caddy as the target sees it: one config, replaced whole by a load. A config routing a host in
 * `rejects` is refused with that host's message, and Caddy keeps the config it had.
 */
class FakeAdmin implements CaddyAdminClient {
  readonly display = 'fake-caddy:2019';
  config: Json = { apps: { http: { servers: { operator: { listen: [':9000'], routes: [] } } } } };
  rejects = new Map<string, string>();
  down = false;
  /** The hosts of every load asked for, accepted or not. */
  loads: string[][] = [];

  async request(method: string, path: string): Promise<AdminResponse> {
    if (this.down) throw new Error('connect ECONNREFUSED');
    const id = /^\/id\/(.+)$/.exec(path)?.[1];
    if (method === 'GET' && id) return { status: hasId(this.config, id) ? 200 : 404, body: '' };
    return { status: 404, body: '' };
  }

  async getConfig(): Promise<Json> {
    if (this.down) throw new Error('connect ECONNREFUSED');
    return structuredClone(this.config);
  }

  async load(config: Json): Promise<void> {
    if (this.down) throw new Error('connect ECONNREFUSED');
    const hosts = routedHosts(config);
    this.loads.push(hosts);
    const bad = hosts.find((h) => this.rejects.has(h));
    if (bad) throw new CaddyRejectedError(400, this.rejects.get(bad)!);
    this.config = structuredClone(config);
  }

  /** Hosts Berth's servers route now. */
  served(): string[] {
    const servers = this.config.apps.http.servers;
    return routedHosts(
      Object.keys(servers)
        .filter((n) => n.startsWith('berth_'))
        .map((n) => servers[n]),
    ).sort();
  }
}

const site = (host: string, over: Partial<Site> = {}): Site => ({
  host,
  path: '/',
  stripPath: false,
  upstreams: [{ host: '127.0.0.1', port: 8080, scheme: 'http' }],
  routeKeys: [`a:${host}`],
  ...over,
});
const sites = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => site(`${prefix}${i}.test`));
const sigs = (list: Site[]) => new Set(list.map(siteSignature));
const hostsOf = (list: Site[]) => list.map((s) => s.host).sort();

const OFF: CaddyBuildOptions = { tls: 'off', httpListen: '127.0.0.1:8080', httpsListen: '127.0.0.1:8443' };

function target(opts: CaddyBuildOptions = OFF) {
  const admin = new FakeAdmin();
  const warnings: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (l: string) => warnings.push(JSON.parse(l).msg) });
  return { admin, warnings, t: new CaddyTarget(admin, opts, logger) };
}

describe('CaddyTarget: applies', () => {
  it('loads the sites into the live config, keeping the operator’s own server', async () => {
    const { admin, t } = target();
    const list = sites('a', 3);
    const r = await t.apply(list);
    expect(r).toMatchObject({ changed: true, loads: 1, quarantined: new Map() });
    expect(r.served).toEqual(sigs(list));
    expect(admin.served()).toEqual(hostsOf(list));
    expect(admin.config.apps.http.servers.operator).toEqual({ listen: [':9000'], routes: [] });
    expect(t.stats).toMatchObject({ loads: 1, lastError: '', reachable: true });
  });

  it('sends nothing when Caddy already has the same sites, in any order', async () => {
    const { admin, t } = target();
    const list = sites('a', 4);
    await t.apply(list);
    const again = await t.apply([...list].reverse().map((s) => ({ ...s })));
    expect(again).toMatchObject({ changed: false, loads: 0 });
    expect(again.served).toEqual(sigs(list));
    expect(admin.loads).toHaveLength(1);
    const changed = await t.apply([...list, site('new.test')]);
    expect(changed.changed).toBe(true);
    expect(admin.loads).toHaveLength(2);
  });

  it('sends everything again after invalidate()', async () => {
    const { admin, t } = target();
    await t.apply(sites('a', 2));
    t.invalidate();
    expect((await t.apply(sites('a', 2))).changed).toBe(true);
    expect(admin.loads).toHaveLength(2);
  });

  it('throws when Caddy is unreachable, records why, and sends on the next apply', async () => {
    const { admin, t } = target();
    const list = sites('a', 2);
    admin.down = true;
    await expect(t.apply(list)).rejects.toThrow(/ECONNREFUSED/);
    expect(t.stats.lastError).toMatch(/ECONNREFUSED/);
    admin.down = false;
    expect(await t.apply(list)).toMatchObject({ changed: true, loads: 1 });
    expect(t.stats.lastError).toBe('');
    expect(admin.served()).toEqual(hostsOf(list));
  });

  it('counts hosts served through DNS in the dynamic layout without loading a config for them', async () => {
    const dynamic = {
      resolver: '127.0.0.1:5353',
      zone: 'berth.internal',
      notFound: '127.0.0.1:9',
      refresh: '1s',
    };
    const { admin, t } = target({ ...OFF, dynamic });
    const explicit = site('paths.test', { path: '/api' });
    const first = await t.apply([explicit, site('simple.test')]);
    for (const sig of sigs([explicit, site('simple.test')])) expect(first.served.has(sig)).toBe(true);
    expect(first.served.has(siteSignature(site('nope.test')))).toBe(false);
    // Same host, other upstreams: not what is served.
    expect(first.served.has(siteSignature({ ...site('simple.test'), upstreams: [] }))).toBe(false);
    expect(admin.served()).toEqual(['paths.test']);
    // Another simple host: nothing for Caddy to do, and it is served.
    const second = await t.apply([explicit, site('simple.test'), site('other.test')]);
    expect(second.changed).toBe(false);
    expect(second.served.has(siteSignature(site('other.test')))).toBe(true);
    expect(admin.loads).toHaveLength(1);
  });
});

describe('CaddyTarget: a config Caddy rejects', () => {
  it('quarantines only the offending sites, with Caddy’s error, and applies the rest', async () => {
    const { admin, t, warnings } = target();
    const old = sites('old', 3);
    await t.apply(old);
    const fresh = sites('new', 6);
    admin.rejects.set('new1.test', 'loading new config: new1.test: invalid upstream');
    admin.rejects.set('new4.test', 'loading new config: new4.test: bad matcher');
    const r = await t.apply([...old, ...fresh]);
    expect(r.changed).toBe(true);
    expect(r.quarantined).toEqual(
      new Map([
        [siteSignature(fresh[1]!), 'loading new config: new1.test: invalid upstream'],
        [siteSignature(fresh[4]!), 'loading new config: new4.test: bad matcher'],
      ]),
    );
    const good = [...old, ...fresh.filter((_, i) => i !== 1 && i !== 4)];
    expect(r.served).toEqual(sigs(good));
    expect(admin.served()).toEqual(hostsOf(good));
    expect(r.loads).toBe(admin.loads.length - 1);
    expect(warnings).toContain('Caddy rejected some routes; applied the rest');
  });

  it('never loads a config without the sites Caddy accepted before', async () => {
    const { admin, t } = target();
    const old = sites('old', 2);
    await t.apply(old);
    admin.rejects.set('new0.test', 'nope');
    admin.loads = [];
    await t.apply([...old, ...sites('new', 4)]);
    for (const hosts of admin.loads) expect(hosts).toEqual(expect.arrayContaining(hostsOf(old)));
  });

  it('finds one bad site among many by halving, not by trying each alone', async () => {
    const { admin, t } = target();
    const many = sites('s', 64);
    admin.rejects.set('s37.test', 'bad');
    const r = await t.apply(many);
    expect([...r.quarantined.keys()]).toEqual([siteSignature(many[37]!)]);
    expect(r.served.size).toBe(63);
    // All, the known base, then two loads per halving (log2 64 = 6), and the final load.
    expect(r.loads).toBeLessThanOrEqual(16);
  });

  it('keeps a quarantined site out of later applies without asking Caddy again', async () => {
    const { admin, t } = target();
    admin.rejects.set('a1.test', 'bad');
    const list = sites('a', 3);
    await t.apply(list);
    const loads = admin.loads.length;
    const again = await t.apply(list);
    expect(again.changed).toBe(false);
    expect([...again.quarantined.values()]).toEqual(['bad']);
    expect(admin.loads).toHaveLength(loads);
  });

  it('tries quarantined sites again after forgetRejections(), and serves them once Caddy accepts', async () => {
    const { admin, t } = target();
    admin.rejects.set('a1.test', 'bad');
    const list = sites('a', 3);
    await t.apply(list);
    admin.rejects.clear();
    t.forgetRejections();
    const r = await t.apply(list);
    expect(r).toMatchObject({ changed: true, quarantined: new Map() });
    expect(admin.served()).toEqual(hostsOf(list));
  });

  it('throws, naming Caddy’s error, when even the sites Caddy accepted before are rejected', async () => {
    const { admin, t } = target();
    const old = sites('old', 2);
    await t.apply(old);
    admin.rejects.set('old0.test', 'Caddy changed its mind');
    await expect(t.apply([...old, site('new.test')])).rejects.toThrow(
      "Caddy rejects Berth's config even without new routes: Caddy changed its mind",
    );
    expect(t.stats.failures).toBe(1);
    expect(t.stats.lastError).toBe(
      "Caddy rejects Berth's config even without new routes: Caddy changed its mind",
    );
    expect(admin.served()).toEqual(hostsOf(old));
  });
});

describe('CaddyTarget: drift', () => {
  it('is not drifted while Caddy holds what was sent', async () => {
    const { t } = target();
    expect(await t.drifted()).toBe(true); // nothing sent yet
    await t.apply(sites('a', 2));
    expect(await t.drifted()).toBe(false);
  });

  it('notices a replaced config (Caddy restarted) and sends everything on the next apply', async () => {
    const { admin, t } = target();
    const list = sites('a', 2);
    await t.apply(list);
    admin.config = { apps: {} };
    expect(await t.drifted()).toBe(true);
    expect(await t.apply(list)).toMatchObject({ changed: true });
    expect(admin.served()).toEqual(hostsOf(list));
  });

  it('notices an edit of Berth’s part that keeps the version id on the full comparison', async () => {
    const { admin, t } = target();
    await t.apply(sites('a', 2));
    admin.config.apps.http.servers.berth_http.listen = [':1'];
    expect(await t.drifted(2)).toBe(false); // the cheap check sees the version id
    expect(await t.drifted(2)).toBe(true); // every 2nd check compares the whole part
  });

  it('counts an unreachable Caddy as drift and records it', async () => {
    const { admin, t } = target();
    await t.apply(sites('a', 1));
    admin.down = true;
    expect(await t.drifted()).toBe(true);
    expect(t.stats).toMatchObject({ reachable: false, lastError: 'connect ECONNREFUSED' });
    admin.down = false;
    expect((await t.apply(sites('a', 1))).changed).toBe(true);
  });
});
