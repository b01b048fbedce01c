// The DNS table as the server hands it to the responder: one file, `table.log`, holding a header,
// the whole table as its first record, then patches appended as routes change. The responder
// reads only what was appended since it last looked, so a change costs it the size of the
// change, not of the table (re-reading a 50k-host JSON file on every change cost most of a core).
//
// Crash safety: a new base is written to a temporary file and renamed over the old one, so the
// file at the path always starts with a whole table. Each record carries its length and a CRC32:
// a record still being appended (or cut short by a crash) is simply not read yet, and a record
// that is damaged or makes no sense stops reading that file with an error, the table as of the
// last good record kept. The writer starts a new file (a compaction) once the patches outgrow
// the base, and on every start, so a damaged file is replaced soon.
//
//   "BERTH-DNS-TABLE 1\n" · ( u32 length · u32 crc32 · JSON payload )*
//   payload: {"full":{host:[[ip,port],…],…}} first, then {"set":{host:[[ip,port],…]},"del":[host,…]}
import {
  closeSync,
  fstatSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { crc32 } from 'node:zlib';
import type { HostTable, SrvTarget } from './responder.js';

export const LOG_MAGIC = Buffer.from('BERTH-DNS-TABLE 1\n', 'latin1');
/** The largest record a reader accepts: a 50k-host base is about 3 MB. */
export const MAX_RECORD_BYTES = 256 * 1024 * 1024;
const MAX_TARGETS = 1_000;
const BASE_CHUNK = 1_000;

/** One record, framed. */
export function frame(payload: string): Buffer {
  const body = Buffer.from(payload, 'utf8');
  const b = Buffer.allocUnsafe(8 + body.length);
  b.writeUInt32BE(body.length, 0);
  b.writeUInt32BE(crc32(body), 4);
  body.copy(b, 8);
  return b;
}

/**
 * The server's side. Entry texts are `"host":[[ip,port],…]` (JSON object members), so a base and
 * a patch are joined from the texts the table already keeps, never re-encoded.
 */
export class TableLogWriter {
  private fd?: number;
  private baseBytes = 0;
  private patchBytes = 0;
  compactions = 0;

  constructor(
    private readonly file: string,
    /** Compact once the patches exceed the base by this factor (and this many bytes). */
    private readonly o: { factor?: number; minBytes?: number } = {},
  ) {}

  /**
   * Writes a new file holding the whole table (atomically: temp file, then rename). The table goes
   * in records of BASE_CHUNK hosts, the first a "full" and the rest patches: a reader parses
   * small pieces (its heap stays small) and, the file being whole once renamed, still swaps in
   * the whole table at once.
   */
  writeFull(entries: Iterable<string>): void {
    const parts: Buffer[] = [LOG_MAGIC];
    let chunk: string[] = [];
    const flush = () => {
      const members = chunk.join(',');
      parts.push(frame(parts.length === 1 ? `{"full":{${members}}}` : `{"set":{${members}},"del":[]}`));
      chunk = [];
    };
    for (const e of entries) {
      chunk.push(e);
      if (chunk.length >= BASE_CHUNK) flush();
    }
    if (chunk.length > 0 || parts.length === 1) flush();
    const body = Buffer.concat(parts);
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, body);
    renameSync(tmp, this.file);
    this.close();
    this.fd = openSync(this.file, 'a');
    this.baseBytes = body.length;
    this.patchBytes = 0;
    this.compactions++;
  }

  /** Appends one patch; false when there is no file yet or it is time to write a whole one. */
  append(set: Iterable<string>, del: Iterable<string>): boolean {
    if (this.fd === undefined) return false;
    const limit = Math.max(this.baseBytes * (this.o.factor ?? 1), this.o.minBytes ?? 64 * 1024);
    if (this.patchBytes > limit) return false;
    const rec = frame(`{"set":{${[...set].join(',')}},"del":${JSON.stringify([...del])}}`);
    // One write of the whole record: a reader sees it whole, or a prefix it waits past.
    let off = 0;
    while (off < rec.length) off += writeSync(this.fd, rec, off);
    this.patchBytes += rec.length;
    return true;
  }

  /** Whether the file at the path is still the one being appended to. */
  intact(): boolean {
    if (this.fd === undefined) return false;
    try {
      return statSync(this.file).ino === fstatSync(this.fd).ino;
    } catch {
      return false;
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

export interface ReadResult {
  /** Whether the table changed (a new file, or patches applied). */
  changed: boolean;
  /** A damaged or hostile file: reading it stopped here, the table kept as of the last good record. */
  error?: string;
}

/**
 * The responder's side: follows the file, applying each complete record once. `table` is the
 * live map (patched in place); a new file is read into a new map, swapped in only once its base
 * is whole and valid.
 */
export class TableLogReader {
  table: HostTable = new Map();
  private fd?: number;
  private ino = -1;
  private offset = 0;
  /**
   * The file whose damage was reported: nothing more is read from it. Its descriptor stays open
   * so that its inode number cannot name the next file.
   */
  private broken = -1;
  private brokenFd?: number;

  constructor(private readonly file: string) {}

  /** Reads what is new; never throws for what the file holds. */
  poll(): ReadResult {
    let st: { ino: number; size: number };
    try {
      st = statSync(this.file);
    } catch {
      return { changed: false }; // no file (yet): keep answering from what we have
    }
    if (st.ino === this.broken) return { changed: false };
    if (this.brokenFd !== undefined) {
      closeSync(this.brokenFd);
      this.brokenFd = undefined;
    }
    if (st.ino !== this.ino) return this.openNew();
    return this.readMore(this.table, false);
  }

  close(): void {
    for (const fd of [this.fd, this.brokenFd]) if (fd !== undefined) closeSync(fd);
    this.fd = undefined;
    this.brokenFd = undefined;
  }

  private markBroken(fd: number, ino: number): void {
    if (this.brokenFd !== undefined && this.brokenFd !== fd) closeSync(this.brokenFd);
    this.brokenFd = fd;
    this.broken = ino;
  }

  private openNew(): ReadResult {
    let fd: number;
    try {
      fd = openSync(this.file, 'r');
    } catch {
      return { changed: false };
    }
    const ino = fstatSync(fd).ino;
    const magic = Buffer.alloc(LOG_MAGIC.length);
    const n = readSync(fd, magic, 0, magic.length, 0);
    if (n < magic.length || !magic.equals(LOG_MAGIC)) {
      this.markBroken(fd, ino);
      return { changed: false, error: `${this.file}: not a Berth DNS table (bad header)` };
    }
    const prev = { fd: this.fd, ino: this.ino, offset: this.offset };
    this.fd = fd;
    this.ino = ino;
    this.offset = LOG_MAGIC.length;
    const fresh: HostTable = new Map();
    const r = this.readMore(fresh, true);
    if (this.offset === LOG_MAGIC.length) {
      // No whole, valid base: stay on the old file and table. The writer renames whole files
      // into place, so a base cut short is damage, not a write in progress.
      this.fd = prev.fd;
      this.ino = prev.ino;
      this.offset = prev.offset;
      this.markBroken(fd, ino);
      return { changed: false, error: r.error ?? `${this.file}: the table record is cut short` };
    }
    if (prev.fd !== undefined) closeSync(prev.fd);
    this.table = fresh;
    return { changed: true, error: r.error };
  }

  /** Applies the complete records after `offset`; stops at the first incomplete or bad one. */
  private readMore(table: HostTable, expectBase: boolean): ReadResult {
    const fd = this.fd;
    if (fd === undefined) return { changed: false };
    const size = fstatSync(fd).size;
    if (size < this.offset) return this.fail(false, 'shrank under the reader');
    let changed = false;
    const head = Buffer.alloc(8);
    while (size - this.offset >= 8) {
      readSync(fd, head, 0, 8, this.offset);
      const len = head.readUInt32BE(0);
      if (len > MAX_RECORD_BYTES)
        return this.fail(changed, `record at byte ${this.offset} claims ${len} bytes`);
      if (size - this.offset - 8 < len) break; // still being written
      const body = Buffer.allocUnsafe(len);
      readSync(fd, body, 0, len, this.offset + 8);
      if (crc32(body) !== head.readUInt32BE(4))
        return this.fail(changed, `record at byte ${this.offset}: bad checksum`);
      let rec: unknown;
      try {
        rec = JSON.parse(body.toString('utf8'));
      } catch {
        return this.fail(changed, `record at byte ${this.offset}: not JSON`);
      }
      const err = apply(table, rec, expectBase && this.offset === LOG_MAGIC.length);
      if (err) return this.fail(changed, `record at byte ${this.offset}: ${err}`);
      this.offset += 8 + len;
      changed = true;
    }
    return { changed };
  }

  private fail(changed: boolean, error: string): ReadResult {
    // Keeps reading nothing more from this file; its fd stays this.fd (the table as of here).
    this.broken = this.ino;
    return { changed, error: `${this.file}: ${error}` };
  }
}

/** Applies one record after checking all of it: a bad record changes nothing. */
function apply(table: HostTable, rec: unknown, base: boolean): string | undefined {
  if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) return 'not an object';
  const r = rec as Record<string, unknown>;
  if (base !== 'full' in r) return base ? 'the first record is not the whole table' : 'a second whole table';
  const set = base ? r.full : r.set;
  const del = base ? [] : r.del;
  if (typeof set !== 'object' || set === null || Array.isArray(set)) return 'hosts are not an object';
  if (!Array.isArray(del) || !del.every((h) => typeof h === 'string')) return '"del" is not a list of hosts';
  const parsed: [string, SrvTarget[]][] = [];
  for (const host in set) {
    const targets = targetsOf((set as Record<string, unknown>)[host]);
    if (!targets) return `the upstreams of ${JSON.stringify(host.slice(0, 100))} are not [[ip, port], …]`;
    parsed.push([host, targets]);
  }
  for (const h of del as string[]) table.delete(h);
  for (const [h, t] of parsed) table.set(h, t);
  return undefined;
}

function targetsOf(ups: unknown): SrvTarget[] | undefined {
  if (!Array.isArray(ups) || ups.length > MAX_TARGETS) return undefined;
  const out: SrvTarget[] = [];
  for (const u of ups) {
    if (!Array.isArray(u) || u.length !== 2) return undefined;
    const [host, port] = u as unknown[];
    if (typeof host !== 'string' || host.length > 64) return undefined;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65_535) return undefined;
    out.push({ host, port });
  }
  return out;
}
