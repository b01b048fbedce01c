// Label parse times: the slowest cases of the fuzz corpus (test/unit/labels/fuzz-corpus.ts) and
// the pathological inputs of issue 13, each through the whole extraction (label caps included)
// and, where the cap would refuse the input unread, through the dialect's parser alone, to show
// that the parser itself stays linear beyond the cap.
//
//   npx tsx bench/labels.ts [--count 10000] [--top 5] [--only <substring>] [--json]
import { performance } from 'node:perf_hooks';
import { parseBerthLabels } from '../src/labels/berth.js';
import { parseCaddyLabels } from '../src/labels/caddy.js';
import { parseDockflareLabels } from '../src/labels/dockflare.js';
import type { DialectResult } from '../src/labels/draft.js';
import { extractRoutes } from '../src/labels/index.js';
import { parseTraefikLabels } from '../src/labels/traefik.js';
import type { ContainerInfo } from '../src/model/types.js';
import { container } from '../test/unit/labels/container.js';
import { FUZZ_COUNT, FUZZ_SEED, fuzzCase, fuzzCorpus } from '../test/unit/labels/fuzz-corpus.js';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : dflt;
};
const COUNT = Number(arg('count', String(FUZZ_COUNT)));
const TOP = Number(arg('top', '5'));
const ONLY = arg('only', '');
const JSON_OUT = process.argv.includes('--json');
const ctx = { hostIp: '127.0.0.2', labelPrefix: 'berth' };

/** Best of `runs` (after one warm-up when the first run is quick), in ms. */
function time(fn: () => unknown, runs = 3): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    fn();
    const ms = performance.now() - t;
    best = Math.min(best, ms);
    if (ms > 2000) break; // a slow case is slow enough measured once
  }
  return best;
}

const hosts = (n: number) => Array.from({ length: n }, (_, i) => `h${i}.example.com`);
const hostArgs = (n: number) =>
  hosts(n)
    .map((h) => `\`${h}\``)
    .join(', ');
/** As many distinct hostnames as fit in `bytes` characters, joined by `sep`. */
const hostsUpTo = (bytes: number, sep: string, wrap = (h: string) => h) => {
  const out: string[] = [];
  let n = 0;
  for (let i = 0; ; i++) {
    const h = wrap(`h${i}.example.com`);
    if (n + h.length + sep.length > bytes) return out.join(sep);
    out.push(h);
    n += h.length + sep.length;
  }
};
/** Exactly `bytes` characters, by repeating a unit and trimming. */
const fill = (unit: string, bytes: number) => unit.repeat(Math.ceil(bytes / unit.length)).slice(0, bytes);
const KIB64 = 64 * 1024;

interface Pathological {
  name: string;
  labels: Record<string, string>;
  parser: (c: ContainerInfo) => DialectResult;
}

const traefikHost = (n: number): Pathological => ({
  name: `traefik Host() with ${n} arguments`,
  labels: {
    'traefik.http.routers.r.rule': `Host(${hostArgs(n)})`,
    'traefik.http.services.r.loadbalancer.server.port': '80',
  },
  parser: parseTraefikLabels,
});

const PATHOLOGICAL: Pathological[] = [
  traefikHost(16_000),
  traefikHost(50_000),
  {
    name: 'berth.host with 100000 names',
    labels: { 'berth.host': hosts(100_000).join(','), 'berth.port': '80' },
    parser: (c) => parseBerthLabels(c, 'berth'),
  },
  {
    name: 'berth.host of 64 KiB',
    labels: { 'berth.host': hostsUpTo(KIB64, ','), 'berth.port': '80' },
    parser: (c) => parseBerthLabels(c, 'berth'),
  },
  {
    name: 'traefik rule of 64 KiB (Host args)',
    labels: {
      'traefik.http.routers.r.rule': `Host(${hostsUpTo(KIB64 - 6, ', ', (h) => `\`${h}\``)})`,
    },
    parser: parseTraefikLabels,
  },
  {
    name: 'traefik rule of 64 KiB (|| alternatives)',
    labels: {
      'traefik.http.routers.r.rule': `${fill('Host(`a.example.com`) || ', KIB64 - 100)}Host(\`b.example.com\`)`,
    },
    parser: parseTraefikLabels,
  },
  {
    name: 'traefik rule of 64 KiB of "("',
    labels: { 'traefik.http.routers.r.rule': fill('(', KIB64) },
    parser: parseTraefikLabels,
  },
  {
    name: 'traefik rule of 64 KiB, unclosed quotes',
    labels: { 'traefik.http.routers.r.rule': `Host(${fill('"\\', KIB64 - 10)}` },
    parser: parseTraefikLabels,
  },
  {
    name: 'caddy site of 64 KiB',
    labels: { caddy: hostsUpTo(KIB64, ' '), 'caddy.reverse_proxy': '{{upstreams 80}}' },
    parser: parseCaddyLabels,
  },
  {
    name: 'caddy reverse_proxy of 64 KiB of "{{upstreams "',
    labels: { caddy: 'a.example.com', 'caddy.reverse_proxy': fill('{{upstreams ', KIB64) },
    parser: parseCaddyLabels,
  },
  {
    name: 'caddy reverse_proxy of 64 KiB of upstreams',
    labels: { caddy: 'a.example.com', 'caddy.reverse_proxy': fill('{{upstreams 80}} ', KIB64) },
    parser: parseCaddyLabels,
  },
  {
    name: 'dockflare hostname of 64 KiB',
    labels: {
      'dockflare.enable': 'true',
      'dockflare.hostname': hostsUpTo(KIB64, ','),
      'dockflare.service': 'http://app:80',
    },
    parser: parseDockflareLabels,
  },
  {
    name: '500 caddy sites of 60 hosts',
    labels: Object.fromEntries(
      Array.from({ length: 500 }, (_, i) => [
        [
          `caddy_${i}`,
          hosts(60)
            .map((h) => `s${i}.${h}`)
            .join(' '),
        ],
        [`caddy_${i}.reverse_proxy`, '{{upstreams 80}}'],
      ]).flat(),
    ),
    parser: parseCaddyLabels,
  },
];

interface Row {
  name: string;
  valueBytes: number;
  extractMs: number;
  parserMs?: number;
  outcome: string;
}

function outcome(r: { routes: unknown[]; diagnostics: { severity: string; message: string }[] }): string {
  const err = r.diagnostics.find((d) => d.severity === 'error');
  const text = err
    ? `error: ${err.message}`
    : `${r.routes.length} route(s), ${r.diagnostics.length} diagnostic(s)`;
  return text.length > 100 ? `${text.slice(0, 99)}…` : text;
}

const rows: Row[] = [];
for (const p of PATHOLOGICAL) {
  if (ONLY && !p.name.includes(ONLY)) continue;
  const c = container({ labels: p.labels, exposed: [80] });
  const valueBytes = Math.max(...Object.values(p.labels).map((v) => v.length));
  let result: ReturnType<typeof extractRoutes> | undefined;
  const extractMs = time(() => {
    result = extractRoutes(c, ctx);
  });
  const parserMs = time(() => p.parser(c));
  const row: Row = { name: p.name, valueBytes, extractMs, parserMs, outcome: outcome(result!) };
  rows.push(row);
  console.log(
    `${p.name.padEnd(44)} ${String(valueBytes).padStart(8)} B  extract ${extractMs.toFixed(2).padStart(9)} ms  parser alone ${parserMs.toFixed(2).padStart(9)} ms  ${row.outcome}`,
  );
}

let worst: { index: number; kind: string; ms: number }[] = [];
let corpusMs = 0;
if (!ONLY || 'fuzz'.includes(ONLY)) {
  const times: { index: number; kind: string; ms: number }[] = [];
  const t0 = performance.now();
  for (const f of fuzzCorpus(FUZZ_SEED, COUNT)) {
    const t = performance.now();
    extractRoutes(f.container, ctx);
    times.push({ index: f.index, kind: f.kind, ms: performance.now() - t });
  }
  corpusMs = performance.now() - t0;
  // Re-time the slowest on their own (the first pass includes JIT warm-up and GC pauses).
  const slowest = times.sort((a, b) => b.ms - a.ms).slice(0, Math.max(TOP * 4, 20));
  for (const s of slowest) {
    const c = fuzzCase(FUZZ_SEED, s.index).container;
    s.ms = time(() => extractRoutes(c, ctx));
  }
  worst = slowest.sort((a, b) => b.ms - a.ms).slice(0, TOP);
  console.log(
    `\nfuzz corpus: ${COUNT} label sets (seed ${FUZZ_SEED}) in ${(corpusMs / 1000).toFixed(2)} s; slowest:`,
  );
  for (const w of worst)
    console.log(`  #${String(w.index).padEnd(5)} ${w.ms.toFixed(2).padStart(9)} ms  ${w.kind.slice(0, 90)}`);
}

if (JSON_OUT) {
  console.log(
    JSON.stringify({
      bench: 'labels',
      pathological: rows,
      fuzz: { count: COUNT, seed: FUZZ_SEED, totalMs: Math.round(corpusMs), worst },
      worstFuzzMs: worst[0]?.ms ?? null,
    }),
  );
}
