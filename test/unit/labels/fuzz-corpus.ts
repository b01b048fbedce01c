// Generated label sets for the label fuzz test and bench/labels.ts: the four dialects, valid and
// hostile, from a seeded PRNG so every run (and every failure) is reproducible from its seed.
import type { ContainerInfo } from '../../../src/model/types.js';

/** mulberry32: small, fast, good enough to spread cases; not for anything secret. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface FuzzCase {
  /** Index in the corpus: `fuzzCase(seed, index)` rebuilds this case alone. */
  index: number;
  /** What the generator meant to build, for reading a failure. */
  kind: string;
  container: ContainerInfo;
}

type Rand = () => number;
type Labels = Record<string, string>;

const int = (r: Rand, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const chance = (r: Rand, p: number) => r() < p;

const NASTY = [
  '\u0000',
  '\u0007',
  '\u001b[2J',
  '\u001b]0;title\u0007',
  '\r',
  '\n',
  '\t',
  '\u202e',
  '\ud800',
  '\udfff',
  '😀',
  'İ',
  'ß',
  'é',
  '\u200b',
  '{{',
  '}}',
  '`',
  '"',
  "'",
  '\\',
  '(',
  ')',
  ',',
  '&&',
  '||',
  '!',
  '*',
  '@',
  '/',
  '//',
  '..',
  ':',
  '[',
  ']',
  '%',
  '$',
  ' ',
  '.',
  '_',
  '-',
];

/** Sizes just under, at and over every limit Berth has, and a few others. */
const SIZES = [0, 1, 63, 64, 253, 254, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536, 65537, 200_000];

/** Letters and digits, with inner dashes: a valid hostname label and route name. */
function word(r: Rand, n = int(r, 1, 12)): string {
  let s = '';
  for (let i = 0; i < n; i++) {
    const inner = i > 0 && i < n - 1;
    s += 'abcdefghijklmnopqrstuvwxyz0123456789-'[int(r, 0, inner ? 36 : 35)];
  }
  return s;
}

function host(r: Rand): string {
  const roll = r();
  if (roll < 0.8) return `${word(r)}.example.com`;
  if (roll < 0.85) return `*.${word(r)}.test`;
  if (roll < 0.88) return `${int(r, 0, 255)}.${int(r, 0, 255)}.${int(r, 0, 255)}.${int(r, 0, 255)}`;
  if (roll < 0.93) return pick(r, ['[::1]', '10::10', 'localhost', 'EXAMPLE.COM.', 'a..b', '-x.com']);
  return garbage(r, int(r, 0, 30));
}

function garbage(r: Rand, n: number): string {
  let s = '';
  while (s.length < n) s += chance(r, 0.3) ? pick(r, NASTY) : word(r, 3);
  return s.slice(0, n);
}

/** A long run of one hostile pattern, built by repeating (so big cases are cheap to make). */
function big(r: Rand, n: number): string {
  const unit = pick(r, [
    'a',
    'a.',
    '{{upstreams ',
    '(',
    '`',
    '"',
    '\\',
    'Host(`a.example.com`) || ',
    'x.example.com,',
    '😀',
    '\u0000',
    ' ',
    garbage(r, 8),
  ]);
  return unit.repeat(Math.ceil(n / unit.length)).slice(0, n);
}

function hostList(r: Rand, n: number, sep = ','): string {
  const hs: string[] = [];
  for (let i = 0; i < n; i++) hs.push(chance(r, 0.97) ? `h${i}.${word(r, 4)}.example.com` : host(r));
  return hs.join(sep);
}

function port(r: Rand): string {
  return chance(r, 0.93)
    ? String(int(r, 1, 65535))
    : pick(r, ['0', '65536', 'eighty', '', ' 80 ', '-1', '1e3']);
}

function path(r: Rand): string {
  return chance(r, 0.8)
    ? `/${word(r)}${chance(r, 0.3) ? `/${word(r)}` : ''}`
    : pick(r, ['/', '', 'api', '/a b', '/x*', `/${'a'.repeat(1100)}`, '//x', '/%00', '/é']);
}

function berth(r: Rand): Labels {
  const l: Labels = {};
  l['berth.host'] = hostList(r, int(r, 1, 4));
  if (chance(r, 0.7)) l['berth.port'] = port(r);
  if (chance(r, 0.3)) l['berth.path'] = path(r);
  if (chance(r, 0.2)) l['berth.strip_path'] = pick(r, ['true', 'false', 'true', 'maybe']);
  if (chance(r, 0.2)) l['berth.scheme'] = pick(r, ['http', 'https', 'http', 'h2c', 'ftp']);
  if (chance(r, 0.2)) l['berth.allow'] = pick(r, ['10.0.0.0/8', '127.0.0.1,::1', '10.0.0.0/8', 'nope', '']);
  for (let g = 0, n = chance(r, 0.3) ? int(r, 1, 5) : 0; g < n; g++) {
    const name = chance(r, 0.9) ? word(r, 5) : garbage(r, 6);
    l[`berth.${name}.host`] = hostList(r, int(r, 1, 3));
    if (chance(r, 0.5)) l[`berth.${name}.port`] = port(r);
    if (chance(r, 0.3)) l[`berth.${name}.path`] = path(r);
  }
  if (chance(r, 0.2)) {
    const name = word(r, 4);
    l[`berth.tcp.${name}.listen`] = port(r);
    l[`berth.tcp.${name}.port`] = port(r);
  }
  if (chance(r, 0.2)) l['berth.exec.allow'] = pick(r, ['ls', 'php occ ...', 'x '.repeat(700)]);
  return l;
}

function rule(r: Rand, depth = 0): string {
  const roll = r();
  if (depth > 3 || roll < 0.4) {
    const args = Array.from({ length: int(r, 1, 3) }, () => `\`${host(r)}\``).join(', ');
    return `Host(${args})`;
  }
  if (roll < 0.55) return `PathPrefix(\`${path(r)}\`)`;
  if (roll < 0.65) return `(${rule(r, depth + 1)})`;
  if (roll < 0.8) return `${rule(r, depth + 1)} && ${rule(r, depth + 1)}`;
  if (roll < 0.9) return `${rule(r, depth + 1)} || ${rule(r, depth + 1)}`;
  return pick(r, [
    '!Host(`x.com`)',
    'Headers(`X`, `y`)',
    'Host(*)',
    'Host(`a`',
    'Host("a\\x")',
    'HostSNI(`*`)',
  ]);
}

function traefik(r: Rand): Labels {
  const l: Labels = {};
  if (chance(r, 0.6)) l['traefik.enable'] = pick(r, ['true', 'true', 'true', 'false', 'yes', 'nope']);
  const routers = int(r, 0, 4);
  const services = int(r, 0, 2);
  for (let i = 0; i < routers; i++) {
    const name = chance(r, 0.9) ? word(r, 5) : garbage(r, 6);
    if (chance(r, 0.9)) l[`traefik.http.routers.${name}.rule`] = rule(r);
    if (chance(r, 0.3)) l[`traefik.http.routers.${name}.entrypoints`] = 'websecure';
    if (chance(r, 0.3) && services > 0) l[`traefik.http.routers.${name}.service`] = `s${int(r, 0, services)}`;
    if (chance(r, 0.2))
      l[`traefik.http.routers.${name}.middlewares`] = pick(r, ['auth', 'ips', 'x@file', '']);
    if (chance(r, 0.1)) l[`traefik.http.routers.${name}.rulesyntax`] = pick(r, ['v2', 'v3', 'v9']);
  }
  for (let i = 0; i < services; i++) {
    if (chance(r, 0.8)) l[`traefik.http.services.s${i}.loadbalancer.server.port`] = port(r);
    if (chance(r, 0.2))
      l[`traefik.http.services.s${i}.loadbalancer.server.scheme`] = pick(r, ['http', 'https', 'h2c']);
    if (chance(r, 0.1)) l[`traefik.http.services.s${i}.loadbalancer.server.url`] = 'http://1.2.3.4:5678';
  }
  if (chance(r, 0.2)) l['traefik.http.middlewares.auth.basicauth.users'] = 'u:$apr1$x';
  if (chance(r, 0.2)) l['traefik.http.middlewares.ips.ipallowlist.sourcerange'] = '10.0.0.0/8';
  if (chance(r, 0.1)) l['traefik.tcp.routers.t.rule'] = 'HostSNI(`*`)';
  return l;
}

function caddy(r: Rand): Labels {
  const l: Labels = {};
  const sites = int(r, 1, 3);
  for (let i = 0; i < sites; i++) {
    const k = i === 0 ? 'caddy' : `caddy_${i}`;
    l[k] = chance(r, 0.9)
      ? hostList(r, int(r, 1, 3), pick(r, [',', ' ', ', ']))
      : pick(r, ['', '(snip)', ':80']);
    const roll = r();
    const up = () =>
      pick(r, [
        `{{upstreams ${port(r)}}}`,
        `{{upstreams https ${port(r)}}}`,
        '{{upstreams}}',
        `{{upstreams h2c ${port(r)}}}`,
        'localhost:8080',
        '1.2.3.4:80',
        '{{ upstreams',
      ]);
    if (roll < 0.5) l[`${k}.reverse_proxy`] = up();
    else if (roll < 0.7) l[`${k}.handle_path`] = '/api/*';
    else if (roll < 0.8) l[`${k}.route`] = '/x/*';
    else l[`${k}.${int(r, 0, 9)}_reverse_proxy`] = `${path(r)}* ${up()}`;
    if (l[`${k}.handle_path`]) l[`${k}.handle_path.reverse_proxy`] = up();
    if (l[`${k}.route`]) {
      l[`${k}.route.0_uri`] = 'strip_prefix /x';
      l[`${k}.route.1_reverse_proxy`] = up();
    }
    if (chance(r, 0.1)) l[`${k}.basic_auth`] = 'u hash';
    if (chance(r, 0.1)) l[`${k}.tls`] = 'internal';
  }
  if (chance(r, 0.1)) l.caddy_ingress_network = pick(r, ['front', 'bad name']);
  return l;
}

function dockflare(r: Rand): Labels {
  const p = chance(r, 0.9) ? 'dockflare.' : 'cloudflare.tunnel.';
  const l: Labels = {};
  if (chance(r, 0.9)) l[`${p}enable`] = pick(r, ['true', 'true', 'true', 'false', 'perhaps']);
  l[`${p}hostname`] = hostList(r, int(r, 1, 2));
  l[`${p}service`] = pick(r, [
    'http://app:8080',
    'https://localhost',
    'http://other:1',
    'tcp://app:22',
    'app',
  ]);
  if (chance(r, 0.2)) l[`${p}path`] = path(r);
  for (let i = 0, n = chance(r, 0.2) ? int(r, 1, 3) : 0; i < n; i++) {
    l[`${p}${i}.hostname`] = hostList(r, 1);
    if (chance(r, 0.5)) l[`${p}${i}.service`] = `http://app:${port(r)}`;
  }
  if (chance(r, 0.1)) l[`${p}access.policy`] = 'bypass';
  return l;
}

const DIALECTS = [berth, traefik, caddy, dockflare];

/** One hostile change to an otherwise ordinary label set. */
function mutate(r: Rand, l: Labels): string {
  const keys = Object.keys(l);
  const key = keys.length > 0 ? pick(r, keys) : 'berth.host';
  const roll = int(r, 0, 13);
  switch (roll) {
    case 0: {
      l[key] = big(r, pick(r, SIZES));
      return `huge value in ${key}`;
    }
    case 1: {
      const n = pick(r, [99, 100, 101, 150, 5000]);
      const k = pick(r, ['berth.host', 'caddy', 'dockflare.hostname', 'berth.g.host']);
      l[k] = hostList(r, n);
      if (k === 'caddy') l['caddy.reverse_proxy'] = '{{upstreams 80}}';
      if (k === 'dockflare.hostname') {
        l['dockflare.enable'] = 'true';
        l['dockflare.service'] = 'http://app:80';
      }
      return `${n} hosts in ${k}`;
    }
    case 2: {
      const n = pick(r, [99, 100, 101, 1000, 5000]);
      const args = Array.from({ length: n }, (_, i) => `\`h${i}.example.com\``).join(',');
      l['traefik.http.routers.many.rule'] = pick(r, [`Host(${args})`, `Host(${args}) && PathPrefix(\`/a\`)`]);
      return `Host() with ${n} arguments`;
    }
    case 3: {
      const d = pick(r, [10, 64, 65, 1000, 20_000]);
      l['traefik.http.routers.deep.rule'] =
        `${'('.repeat(d)}Host(\`a.example.com\`)${')'.repeat(chance(r, 0.5) ? d : d - 1)}`;
      return `${d} nested parentheses`;
    }
    case 4: {
      l[key] = `${l[key] ?? ''}${pick(r, ['`', '"', '{{', '(', '[', '\\'])}${garbage(r, int(r, 0, 40))}`;
      return `unbalanced quote in ${key}`;
    }
    case 5: {
      l[key] = garbage(r, int(r, 1, 300));
      return `control and unicode characters in ${key}`;
    }
    case 6: {
      const n = pick(r, [1023, 1024, 1025, 5000, 70_000]);
      const k = `${key}.${'k'.repeat(n)}`;
      l[k] = 'x';
      return `key of ${k.length} characters`;
    }
    case 7: {
      const n = pick(r, [999, 1000, 1001, 3000]);
      const prefix = pick(r, ['berth.g', 'caddy.header_', 'traefik.http.routers.r', 'dockflare.', 'x']);
      for (let i = 0; i < n; i++) l[`${prefix}${i}.host`] = `h${i}.example.com`;
      return `${n} labels with prefix ${prefix}`;
    }
    case 8: {
      const n = pick(r, SIZES);
      l['com.docker.compose.project'] = 'p';
      l['com.docker.compose.service'] = 's'.repeat(n);
      return `compose service of ${n} characters`;
    }
    case 9: {
      const n = pick(r, [63, 65, 70, 1000]);
      for (let i = 0; i < n; i++)
        l[`berth.exec.allow.${i}`] = i % 3 === 0 ? `cmd ${'a'.repeat(1100)}` : `ls ${i}`;
      return `${n} exec rules`;
    }
    case 10: {
      const n = pick(r, [3000, 20_000]);
      l['caddy.reverse_proxy'] = '{{upstreams '.repeat(n);
      l.caddy = l.caddy ?? 'a.example.com';
      return `${n} unclosed {{upstreams`;
    }
    case 11: {
      const n = pick(r, [100, 1000]);
      l['traefik.http.routers.mw.middlewares'] = Array.from({ length: n }, (_, i) => `m${i}@file`).join(',');
      l['traefik.http.routers.mw.rule'] = 'Host(`mw.example.com`)';
      return `${n} middlewares`;
    }
    case 12: {
      const n = pick(r, [64, 65, 300]);
      const terms = Array.from({ length: n }, (_, i) => `Host(\`h${i}.example.com\`)`).join(' || ');
      l['traefik.http.routers.or.rule'] = `(${terms}) && (PathPrefix(\`/a\`) || PathPrefix(\`/b\`))`;
      return `${n} alternatives`;
    }
    default: {
      const v = l[key] ?? '';
      const n = pick(r, [1024, 4096, 65536]);
      l[key] = v.length >= n ? v.slice(0, n) : v + 'x'.repeat(n - v.length);
      return `${key} at exactly ${n} characters`;
    }
  }
}

function containerFor(r: Rand, index: number, labels: Labels): ContainerInfo {
  const id = index.toString(16).padStart(12, '0') + 'f'.repeat(52);
  const mode = pick(r, ['host', 'bridge', 'front']);
  const networks: Record<string, string> =
    mode === 'host'
      ? {}
      : chance(r, 0.85)
        ? { front: `10.1.${index % 250}.${(index >> 8) % 250}` }
        : { a: '10.2.0.2', b: '10.3.0.2' };
  const privatePort = int(r, 1, 9000);
  return {
    id,
    name: chance(r, 0.97) ? `app-${index}` : garbage(r, pick(r, [5, 2000])),
    created: 1_700_000_000 + index,
    labels,
    state: pick(r, ['running', 'running', 'running', 'exited']),
    health: pick(r, ['none', 'none', 'healthy', 'starting', 'unhealthy'] as const),
    networkMode: mode,
    networks,
    ports: chance(r, 0.3) ? [{ privatePort, publicPort: int(r, 1024, 65535), ip: '', type: 'tcp' }] : [],
    exposed: chance(r, 0.6) ? [privatePort, ...(chance(r, 0.2) ? [privatePort + 1] : [])] : [],
  };
}

/** Case `index` of the corpus of `seed`. */
export function fuzzCase(seed: number, index: number): FuzzCase {
  const r = prng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  const labels: Labels = {};
  const kinds: string[] = [];
  // Mostly one dialect, sometimes two (precedence), now and then none at all.
  const n = chance(r, 0.15) ? 2 : chance(r, 0.05) ? 0 : 1;
  for (let i = 0; i < n; i++) {
    const d = pick(r, DIALECTS);
    Object.assign(labels, d(r));
    kinds.push(d.name);
  }
  if (chance(r, 0.2)) {
    labels['com.docker.compose.project'] = 'shop';
    labels['com.docker.compose.service'] = 'web';
  }
  for (let m = chance(r, 0.5) ? int(r, 1, 2) : 0; m > 0; m--) kinds.push(mutate(r, labels));
  return { index, kind: kinds.join('; ') || 'no labels', container: containerFor(r, index, labels) };
}

export function* fuzzCorpus(seed: number, count: number): Generator<FuzzCase> {
  for (let i = 0; i < count; i++) yield fuzzCase(seed, i);
}

export const FUZZ_SEED = 0x5eed_13;
export const FUZZ_COUNT = 10_000;
