// The DNS responder runs as its own small process (`berth dns-server`), like Caddy: if the
// Berth server dies, Caddy keeps asking it and it keeps answering from the last table, so the
// front door keeps serving. The server hands it the table as a file, `table.log` (table-log.ts):
// the whole table, then patches appended per change, which the sidecar applies within
// milliseconds, reading only what was appended. A restarted server adopts the running sidecar
// when it reads that format, and replaces one from before it (which read only `table.json`).
import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  watch,
  writeFileSync,
} from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { connect, createServer as netServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { isLoopbackHost } from '../../config.js';
import type { Site, SiteChanges } from '../../model/desired.js';
import { drain, inSlices, pauseEvery } from '../../model/slices.js';
import { SiteSplit } from '../caddy/config.js';
import { bareHost } from '../caddy/traffic.js';
import { alive, readPid, stopPid } from '../pid.js';
import { DnsResponder, type HostTable, type SrvTarget } from './responder.js';
import { TableLogReader, TableLogWriter } from './table-log.js';

export const ZONE = 'berth.internal';
/** What a responder that reads `table.log` writes to `dns/format`, with its PID. */
const TABLE_FORMAT = 'table.log 1';
const NOT_FOUND_BODY = 'berth: no route for this host or path\n';

interface SidecarConfig {
  host: string;
  dnsPort: number;
  notFoundPort: number;
}

/** The table file: host → [[ip, port], …]. */
type TableFile = Record<string, [string, number][]>;

/**
 * The hosts Caddy reaches through DNS. With `keep` (the table Caddy may be using now), a host that
 * moves into Caddy's own config (it gained a path, say) keeps its old entry until that config has
 * landed: until then the catch-all still serves it, instead of a 404.
 */
export function tableFromSites(sites: readonly Site[], keep?: TableFile): TableFile {
  const t = new DnsTable();
  if (keep)
    for (const [host, ups] of Object.entries(keep))
      t.entries.set(
        host,
        entryText(
          host,
          ups.map(([h, port]) => ({ host: h, port })),
        ),
      );
  return JSON.parse(t.update(sites, { transition: keep !== undefined }) ?? t.text()) as TableFile;
}

/**
 * A host's entry: the site DNS serves for it, or the text of one taken from a file (`keep`). The
 * text of a site is made when it is written, not kept: at 50k hosts that is 5 MiB the server
 * would hold for a file it only appends to.
 */
type Entry = Site | string;

const textOf = (e: Entry): string => (typeof e === 'string' ? e : entryText(e.host, e.upstreams));

/**
 * `"host":[[ip,port],…]`, the table file's text for one host. Host names and addresses are plain
 * (checked at admission): quoted as they are, several times faster than JSON.stringify, which a
 * whole table's 50k entries would wait on. Anything else is encoded.
 */
function entryText(host: string, ups: readonly { host: string; port: number }[]): string {
  let text = `${quoted(host)}:[`;
  for (let i = 0; i < ups.length; i++) {
    const u = ups[i]!;
    text += `${i > 0 ? ',' : ''}[${quoted(u.host)},${Number(u.port)}]`;
  }
  return `${text}]`;
}

const PLAIN = /^[\w.:*-]*$/;
const quoted = (s: string) => (PLAIN.test(s) ? `"${s}"` : JSON.stringify(s));

/** Whether two entries write the same text (a site the desired state made anew, say). */
function sameEntry(a: Entry, b: Entry): boolean {
  if (a === b) return true;
  if (typeof a === 'string' || typeof b === 'string') return textOf(a) === textOf(b);
  if (a.host !== b.host || a.upstreams.length !== b.upstreams.length) return false;
  return a.upstreams.every((u, i) => u.host === b.upstreams[i]!.host && u.port === b.upstreams[i]!.port);
}

/**
 * The table, kept between passes: with the changes since the sites it last saw, only the hosts
 * they touch are looked at again (and those it kept aside for a transition). The split may be
 * shared with the Caddy targets of the same pass (whichever reads first works it out).
 */
export class DnsTable {
  /** Host → its entry: what the file holds (or will, once written). */
  readonly entries = new Map<string, Entry>();
  /** The sites this table was last brought to. */
  private seen?: readonly Site[];
  /** Hosts kept at their old entry while they move into Caddy's config. */
  private keptAside = new Set<string>();
  /** Hosts whose entry changed since the last takePatch(). */
  private dirty = new Set<string>();

  constructor(private readonly split: SiteSplit = new SiteSplit()) {}

  /** The new file text, or undefined when nothing in it changed. */
  update(sites: readonly Site[], o: { transition?: boolean }, changes?: SiteChanges): string | undefined {
    return drain(this.updateSteps(sites, o, changes)) ? this.text() : undefined;
  }

  /** As update, with pause points: a hostile agent's snapshot changes 25k hosts at once. */
  *updateSteps(
    sites: readonly Site[],
    o: { transition?: boolean },
    changes?: SiteChanges,
  ): Generator<void, boolean> {
    const hosts = yield* this.split.hostsSinceSteps(this.seen, sites, changes);
    this.seen = sites;
    const pause = pauseEvery();
    const kept = new Set<string>();
    let changed = false;
    const place = (host: string) => {
      const site = this.split.dynamic.get(host);
      const before = this.entries.get(host);
      let after: Entry | undefined;
      if (site) after = site;
      else if (o.transition && before !== undefined && this.split.has(host)) {
        after = before;
        kept.add(host);
      }
      if (after === before) return;
      if (after !== undefined && before !== undefined && sameEntry(after, before)) {
        // The same text: hold the new site (the old one is garbage), nothing to write.
        this.entries.set(host, after);
        return;
      }
      changed = true;
      this.dirty.add(host);
      if (after === undefined) this.entries.delete(host);
      else this.entries.set(host, after);
    };
    if (hosts === undefined) {
      for (const host of [...this.entries.keys()]) {
        if (pause()) yield;
        if (!this.split.dynamic.has(host)) place(host);
      }
      for (const host of [...this.split.dynamic.keys()]) {
        if (pause()) yield;
        place(host);
      }
    } else {
      for (const host of hosts) {
        if (pause()) yield;
        place(host);
      }
      for (const host of this.keptAside) if (!hosts.has(host)) place(host);
    }
    this.keptAside = kept;
    return changed || hosts === undefined;
  }

  /** Every entry's text, as the file holds them, with pause points (tens of ms at 50k hosts). */
  *textSteps(): Generator<void, string[]> {
    const pause = pauseEvery();
    const out: string[] = [];
    for (const e of this.entries.values()) {
      if (pause()) yield;
      out.push(textOf(e));
    }
    return out;
  }

  text(): string {
    return `{${drain(this.textSteps()).join(',')}}`;
  }

  /** The entries set and the hosts removed since the last call. */
  takePatch(): { set: string[]; del: string[] } {
    const set: string[] = [];
    const del: string[] = [];
    for (const host of this.dirty) {
      const e = this.entries.get(host);
      if (e === undefined) del.push(host);
      else set.push(textOf(e));
    }
    this.dirty.clear();
    return { set, del };
  }
}

function toHostTable(t: TableFile): HostTable {
  return new Map(Object.entries(t).map(([h, ups]) => [h, ups.map(([host, port]) => ({ host, port }))]));
}

const paths = (dataDir: string) => {
  const dir = join(dataDir, 'dns');
  return {
    dir,
    config: join(dir, 'config.json'),
    /** What servers before table.log wrote (and a responder still reads, for a downgrade). */
    legacyTable: join(dir, 'table.json'),
    table: join(dir, 'table.log'),
    pid: join(dir, 'dns.pid'),
    format: join(dir, 'format'),
    stats: join(dir, 'stats.json'),
  };
};

/** `berth dns-server --data-dir D`: serve until SIGTERM. */
export async function runDnsServer(dataDir: string, logger: Logger): Promise<{ stop(): Promise<void> }> {
  const p = paths(dataDir);
  const cfg = JSON.parse(readFileSync(p.config, 'utf8')) as SidecarConfig;
  // The not-found listener forwards late routes only on loopback: on any other address, whoever
  // reaches it would reach the dynamic hosts' upstreams (tunnel endpoints among them) past the
  // front door. There it is a 404 only, and unknown hosts are name errors again (asked per
  // request, so a route is still live on the first ask).
  const forward = isLoopbackHost(cfg.host);
  const dns = new DnsResponder({
    zone: ZONE,
    notFound: { host: cfg.host, port: cfg.notFoundPort },
    answerUnknown: forward,
  });
  const notFound = notFoundListener(forward ? (host) => dns.lookup(host) : () => undefined);
  await new Promise<void>((resolve) => notFound.listen(cfg.notFoundPort, cfg.host, resolve));
  const log = new TableLogReader(p.table);
  let legacyMtime = -1;
  let reported = '';
  const mtime = (f: string) => {
    try {
      return statSync(f).mtimeMs;
    } catch {
      return -1;
    }
  };
  const reload = () => {
    // An older server (a downgrade) writes only table.json: whichever file changed last wins.
    const lm = mtime(p.legacyTable);
    if (lm !== legacyMtime && lm >= mtime(p.table)) {
      legacyMtime = lm;
      try {
        dns.setTable(toHostTable(JSON.parse(readFileSync(p.legacyTable, 'utf8'))));
        logger.info('dns table read from table.json (written by an older Berth)');
      } catch (err) {
        logger.debug({ err: (err as Error).message }, 'dns table.json not read');
      }
      return;
    }
    const r = log.poll();
    if (r.changed) {
      dns.setTable(log.table);
      logger.debug({ hosts: log.table.size }, 'dns table updated');
    }
    // A damaged file: reported once, the table as of its last good record kept.
    if (r.error && r.error !== reported)
      logger.error({ err: r.error }, 'dns table: stopped reading a damaged file');
    reported = r.error ?? reported;
  };
  reload();
  await dns.listen(cfg.host, cfg.dnsPort);
  const watcher = watch(p.dir, (_event, file) => {
    if (file === 'table.log' || file === 'table.json') reload();
  });
  // Counters for the server's /metrics, written once a second when they moved.
  let lastStats = '';
  const writeStats = () => {
    const text = JSON.stringify(dns.stats);
    if (text === lastStats) return;
    lastStats = text;
    try {
      writeFileSync(`${p.stats}.tmp`, text);
      renameSync(`${p.stats}.tmp`, p.stats);
    } catch (err) {
      logger.debug({ err: (err as Error).message }, 'dns stats not written');
    }
  };
  const poll = setInterval(() => {
    reload();
    writeStats();
  }, 1_000);
  writeFileSync(p.pid, String(process.pid));
  writeFileSync(p.format, JSON.stringify({ pid: process.pid, table: TABLE_FORMAT }));
  logger.info(
    { dns: `${cfg.host}:${cfg.dnsPort}`, notFound: `${cfg.host}:${cfg.notFoundPort}` },
    'dns responder up',
  );
  return {
    async stop() {
      clearInterval(poll);
      watcher.close();
      log.close();
      await dns.close();
      await new Promise<void>((r) => notFound.close(() => r()));
      // Gone for good: a PID left behind could name some other process later.
      rmSync(p.pid, { force: true });
    },
  };
}

/**
 * Where Caddy sends a host the responder did not know when Caddy last asked (it keeps that answer
 * for its refresh, 1 s): a clean 404, unless a route for the host has appeared since, which this
 * forwards to, so the route is live at once. Only for that second; Caddy's next lookup goes direct.
 */
export function notFoundListener(lookup: (host: string) => SrvTarget[] | undefined): Server {
  const targetOf = (hostHeader: string | undefined) => {
    const ts = hostHeader ? lookup(bareHost(hostHeader)) : undefined;
    return ts && ts.length > 0 ? ts[Math.floor(Math.random() * ts.length)] : undefined;
  };
  const server = createServer((req, res) => {
    const t = targetOf(req.headers.host);
    if (!t) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(NOT_FOUND_BODY);
      return;
    }
    const up = httpRequest({
      host: t.host,
      port: t.port,
      method: req.method,
      path: req.url,
      headers: req.headers,
    });
    up.on('response', (r) => {
      res.writeHead(r.statusCode ?? 502, r.rawHeaders);
      r.pipe(res);
    });
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain; charset=utf-8' });
      res.end();
    });
    req.pipe(up);
  });
  // A WebSocket to a host routed within that second: the upgrade request, replayed, then bytes.
  server.on('upgrade', (req, sock: Socket, head: Buffer) => {
    sock.on('error', () => sock.destroy());
    const t = targetOf(req.headers.host);
    if (!t) {
      sock.end(
        `HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(NOT_FOUND_BODY)}\r\nconnection: close\r\n\r\n${NOT_FOUND_BODY}`,
      );
      return;
    }
    const up = connect({ host: t.host, port: t.port }, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2)
        lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length > 0) up.write(head);
      up.pipe(sock).pipe(up);
    });
    up.on('error', () => sock.destroy());
    sock.on('close', () => up.destroy());
  });
  return server;
}

export interface SidecarOptions {
  dataDir: string;
  /** "host:port"; port 0 picks a free one once, then keeps it across restarts. */
  listen: string;
  /** argv that runs `berth dns-server` (node + this CLI). */
  command: string[];
  logger: Logger;
  /** The split the Caddy targets of the same passes read (one per pass instead of one each). */
  split?: SiteSplit;
}

/**
 * The server's side: keeps the sidecar running, hands it tables, stops it on a clean exit. It is the
 * reconciler's `DnsTableSync` (reconcile/data-plane.ts).
 */
export class DnsSidecar {
  private child?: ChildProcess;
  private adopted?: number;
  private timer?: NodeJS.Timeout;
  private stopping = false;
  private cfg?: SidecarConfig;
  private readonly table: DnsTable;
  private log?: TableLogWriter;
  restarts = 0;

  constructor(private readonly o: SidecarOptions) {
    this.table = new DnsTable(o.split);
  }

  /** The responder's counters, as it last wrote them (once a second); zeros before it has. */
  stats(): { queries: number; answered: number; notFound: number; errors: number } {
    try {
      return JSON.parse(readFileSync(paths(this.o.dataDir).stats, 'utf8'));
    } catch {
      return { queries: 0, answered: 0, notFound: 0, errors: 0 };
    }
  }

  /** The resolver and not-found addresses for Caddy's config. */
  get addresses(): { resolver: string; notFound: string } {
    const c = this.cfg!;
    return { resolver: `${c.host}:${c.dnsPort}`, notFound: `${c.host}:${c.notFoundPort}` };
  }

  async start(): Promise<void> {
    const p = paths(this.o.dataDir);
    mkdirSync(p.dir, { recursive: true, mode: 0o700 });
    this.cfg = await this.config(p.config);
    const pid = readPid(p.pid);
    const running = pid !== undefined && alive(pid) && (await answering(this.cfg));
    if (running && readsTableLog(p.format, pid)) {
      this.adopted = pid;
      this.o.logger.info({ pid }, 'adopted the DNS responder left running by a previous Berth');
    } else {
      if (running && isDnsServer(pid)) {
        // One from before table.log would never see a change: replace it. Until the new one
        // answers (well under a second), Caddy sends these hosts to its not-found upstream.
        this.o.logger.info({ pid }, 'replacing the DNS responder left running by an older Berth');
        await stopPid(pid);
      }
      await this.spawn();
    }
    // Restart it if it dies (checked, not awaited: the table file carries the state).
    this.timer = setInterval(() => {
      const live = this.child?.pid ?? this.adopted;
      if (!this.stopping && live && !alive(live)) {
        this.adopted = undefined;
        this.child = undefined;
        this.restarts++;
        this.o.logger.warn('DNS responder died; starting a new one');
        void this.spawn();
      }
    }, 500);
  }

  /**
   * Writes the table for the sidecar (atomically); unchanged tables are not rewritten. Before an
   * apply (`transition`), hosts leaving the table for Caddy's config keep their entries.
   */
  async publish(
    sites: readonly Site[],
    o: { transition?: boolean } = {},
    changes?: SiteChanges,
  ): Promise<void> {
    const changed = await inSlices(this.table.updateSteps(sites, o, changes));
    const p = paths(this.o.dataDir);
    // A full pass also repairs a file removed or replaced behind our back.
    const intact = this.log?.intact() ?? false;
    if (!changed && intact) return;
    const patch = this.table.takePatch();
    if (intact && patch.set.length + patch.del.length === 0) return;
    if (!intact || !this.log!.append(patch.set, patch.del)) {
      const texts = await inSlices(this.table.textSteps());
      this.log ??= new TableLogWriter(p.table);
      this.log.writeFull(texts);
      // The file an older server wrote; a responder prefers whichever changed last.
      rmSync(p.legacyTable, { force: true });
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.timer);
    this.log?.close();
    const pid = this.child?.pid ?? this.adopted;
    if (pid) await stopPid(pid);
  }

  private async config(file: string): Promise<SidecarConfig> {
    const [host, portText] = splitHostPort(this.o.listen);
    if (existsSync(file)) {
      const c = JSON.parse(readFileSync(file, 'utf8')) as SidecarConfig;
      const port = Number(portText);
      if (c.host === host && (port === 0 || port === c.dnsPort)) return c;
    }
    const dnsPort = Number(portText) || (await freeUdpTcpPort(host));
    const c: SidecarConfig = { host, dnsPort, notFoundPort: await freeUdpTcpPort(host) };
    writeFileSync(file, JSON.stringify(c));
    return c;
  }

  private async spawn(): Promise<void> {
    const [cmd, ...args] = this.o.command;
    const log = openSync(join(paths(this.o.dataDir).dir, 'dns.log'), 'a');
    // Detached, with its output in a file: it must outlive a Berth that crashed.
    const child = spawn(cmd!, [...args, 'dns-server', '--data-dir', this.o.dataDir], {
      detached: true,
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    child.unref();
    this.child = child;
    for (let i = 0; i < 100; i++) {
      if (await answering(this.cfg!)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    this.o.logger.error('the DNS responder did not start; see dns/dns.log in the data dir');
  }
}

/** Whether the responder with this PID said it reads table.log. */
function readsTableLog(formatFile: string, pid: number): boolean {
  try {
    const f = JSON.parse(readFileSync(formatFile, 'utf8')) as { pid?: unknown; table?: unknown };
    return f.pid === pid && f.table === TABLE_FORMAT;
  } catch {
    return false;
  }
}

/** Whether that PID runs `berth dns-server` (and not a process that got its number since). */
function isDnsServer(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('dns-server');
  } catch {
    return false;
  }
}

function splitHostPort(listen: string): [string, string] {
  const i = listen.lastIndexOf(':');
  return [listen.slice(0, i).replace(/^\[|\]$/g, '') || '127.0.0.1', listen.slice(i + 1)];
}

/** Whether the responder's TCP port accepts a connection. */
function answering(c: SidecarConfig): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: c.host, port: c.dnsPort }, () => {
      sock.destroy();
      resolve(true);
    });
    sock.on('error', () => resolve(false));
    sock.setTimeout(500, () => {
      sock.destroy();
      resolve(false);
    });
  });
}

/** A port free for TCP (UDP on the same number is almost always free too; the listen checks). */
function freeUdpTcpPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = netServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
