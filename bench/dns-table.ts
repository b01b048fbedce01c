// What route changes cost the dynamic layout's DNS responder (`berth dns-server`, its own
// process) at a large table: the server's DnsSidecar of each build publishes `--hosts` hosts,
// then `--rate` changes a second for `--seconds` (each change: one host removed, one added and
// one moved, as an agent's container stopping, starting or restarting elsewhere), with the
// reconciler's SiteChanges. Prints the responder's CPU (user + system over the change phase) and
// RSS (at the end and peak), the server side's publish time per change, and how long a new host
// took to be answered (SRV over UDP, polled every ms; every 10th change). Several builds run one
// after the other in one invocation (`--bins dist,/path/to/old/dist`, default `BERTH_BIN` or
// dist), so their figures can be compared under the same load. Everything on 127.0.0.1.
//
//   npm run build && npx tsx bench/dns-table.ts [--hosts 50000] [--rate 5] [--seconds 30]
//     [--bins dist,../old/dist] [--json]
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import type { Site, SiteChanges } from '../src/model/desired.js';
import { flag, loadavg, pct, pidFrom, procSample, siteTo, sleep } from './lib.js';

const HOSTS = flag('hosts', 50_000);
const RATE = flag('rate', 5);
const SECONDS = flag('seconds', 30);
const JSON_OUT = process.argv.includes('--json');
const binsArg = process.argv.indexOf('--bins');
const BINS = (binsArg > 0 ? process.argv[binsArg + 1]! : (process.env.BERTH_BIN ?? 'dist')).split(',');

interface Sidecar {
  start(): Promise<void>;
  stop(): Promise<void>;
  publish(sites: readonly Site[], o?: { transition?: boolean }, changes?: SiteChanges): Promise<void>;
  readonly addresses: { resolver: string };
}

function srvQuery(name: string, id: number): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const header = Buffer.from([id >> 8, id & 255, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 33, 0, 1])]);
}

/** Polls SRV for `host` until answered (rcode 0 with an answer); ms it took, NaN after 10 s. */
async function answeredAfter(resolver: string, host: string): Promise<number> {
  const [addr, port] = [
    resolver.slice(0, resolver.lastIndexOf(':')),
    Number(resolver.slice(resolver.lastIndexOf(':') + 1)),
  ];
  const sock = createSocket('udp4');
  const t = performance.now();
  let id = 1;
  try {
    while (performance.now() - t < 10_000) {
      const reply = await new Promise<Buffer | undefined>((res) => {
        const timer = setTimeout(() => res(undefined), 200);
        sock.once('message', (m) => {
          clearTimeout(timer);
          res(m);
        });
        sock.send(srvQuery(`${host}.berth.internal`, id++ & 0xffff), port, addr);
      });
      if (reply && (reply[3]! & 0x0f) === 0 && reply.readUInt16BE(6) > 0) return performance.now() - t;
      await sleep(1);
    }
    return Number.NaN;
  } finally {
    sock.close();
  }
}

interface Row {
  bin: string;
  hosts: number;
  changes: number;
  responderCpuPct: number;
  responderLoadedRssMiB: number;
  responderRssMiB: number;
  responderPeakRssMiB: number;
  publishP50Ms: number;
  publishP99Ms: number;
  visibleP50Ms: number;
  visibleP99Ms: number;
}

async function run(bin: string): Promise<Row> {
  const dist = resolve(bin);
  const { DnsSidecar } = (await import(pathToFileURL(join(dist, 'ingress/dns/sidecar.js')).href)) as {
    DnsSidecar: new (o: unknown) => Sidecar;
  };
  const dataDir = mkdtempSync(join(tmpdir(), 'bench-dns-table-'));
  const dns = new DnsSidecar({
    dataDir,
    listen: '127.0.0.1:0',
    command: [process.execPath, join(dist, 'cli/main.js')],
    logger: pino({ level: 'silent' }),
  });
  try {
    await dns.start();
    let sites: Site[] = Array.from({ length: HOSTS }, (_, i) =>
      siteTo(`h${i}.bench.test`, 10_000 + (i % 50_000)),
    );
    await dns.publish(sites);
    await answeredAfter(dns.addresses.resolver, `h${HOSTS - 1}.bench.test`);
    await sleep(2_000); // let the first load settle (and its garbage go)
    const pid = pidFrom(join(dataDir, 'dns', 'dns.pid'));
    const before = procSample(pid)!;
    const publishMs: number[] = [];
    const visibleMs: number[] = [];
    const n = Math.round(RATE * SECONDS);
    const t0 = performance.now();
    for (let k = 0; k < n; k++) {
      // One host goes, one comes, one moves: what an agent's snapshot brings now and then.
      const gone = sites[k % sites.length]!;
      const moved = sites[(k * 7 + 3) % sites.length]!;
      const movedTo = siteTo(moved.host, moved.upstreams[0]!.port + 1);
      const added = siteTo(`new${k}.bench.test`, 20_000 + (k % 10_000));
      const removed = gone === moved ? [gone] : [gone, moved];
      const next = sites.filter((s) => s !== gone && s !== moved);
      next.push(...(gone === moved ? [] : [movedTo]), added);
      const changes: SiteChanges = {
        since: sites,
        added: gone === moved ? [added] : [movedTo, added],
        removed,
      };
      sites = next;
      const t = performance.now();
      await dns.publish(sites, {}, changes);
      publishMs.push(performance.now() - t);
      if (k % 10 === 0) visibleMs.push(await answeredAfter(dns.addresses.resolver, added.host));
      const due = t0 + ((k + 1) * 1000) / RATE;
      await sleep(Math.max(0, due - performance.now()));
    }
    const elapsed = (performance.now() - t0) / 1000;
    const nowPid = pidFrom(join(dataDir, 'dns', 'dns.pid'));
    const after = nowPid === pid ? procSample(pid) : undefined;
    if (!after)
      throw new Error(
        `${bin}: the responder ${pid} exited (now ${nowPid}) during the run:\n${readFileSync(join(dataDir, 'dns', 'dns.log'), 'utf8').slice(-2000)}`,
      );
    const r2 = (x: number) => Math.round(x * 100) / 100;
    return {
      bin,
      hosts: HOSTS,
      changes: n,
      responderCpuPct: r2(((after.cpuSeconds - before.cpuSeconds) / elapsed) * 100),
      responderLoadedRssMiB: Math.round(before.rssMb),
      responderRssMiB: Math.round(after.rssMb),
      responderPeakRssMiB: Math.round(after.hwmMb),
      publishP50Ms: r2(pct(publishMs, 50)),
      publishP99Ms: r2(pct(publishMs, 99)),
      visibleP50Ms: r2(pct(visibleMs, 50)),
      visibleP99Ms: r2(pct(visibleMs, 99)),
    };
  } finally {
    await dns.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const rows: Row[] = [];
for (const bin of BINS) rows.push(await run(bin));
console.log(
  `dns table — ${cpus().length} CPUs, ${HOSTS} hosts, ${RATE} changes/s for ${SECONDS} s; load ${loadavg()}`,
);
console.table(rows);
if (JSON_OUT)
  console.log(JSON.stringify({ bench: 'dns-table', hosts: HOSTS, rate: RATE, seconds: SECONDS, rows }));
