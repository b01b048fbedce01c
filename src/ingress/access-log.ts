// Where access-log lines go: stdout, nowhere, or a file that is rotated by size (keeping a few
// old files) or reopened on demand (SIGHUP, after logrotate moved it). The HTTP access log (in the
// server) and the TCP forwarder's log (in its own process) both write through this.
import { closeSync, fstatSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';

export interface AccessLogTarget {
  /** 'stdout', 'off', or an absolute file path. */
  to: string;
  /** Rotate when the file would grow past this many bytes (absent: never, leave it to logrotate). */
  maxBytes?: number;
  /** Rotated files kept: FILE.1 (newest) … FILE.<keep>. */
  keep?: number;
}

const FLUSH_MS = 25;
const FLUSH_LINES = 512;

export class AccessLogWriter {
  private fd?: number;
  private size = 0;
  /** Why the last write failed, once per failure streak (the caller logs it). */
  private failing = false;
  private pending: string[] = [];
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly t: AccessLogTarget,
    private readonly onError: (message: string) => void = () => {},
  ) {
    if (this.isFile) this.open();
  }

  get enabled(): boolean {
    return this.t.to !== 'off';
  }

  private get isFile(): boolean {
    return this.t.to !== 'off' && this.t.to !== 'stdout';
  }

  /** One line (without its newline). */
  write(line: string): void {
    this.writeLines([line]);
  }

  /**
   * Several lines. They are gathered for up to FLUSH_MS (or FLUSH_LINES lines) and written in one
   * system call: at thousands of requests a second, a write per request cost more than the rest
   * of the work on a line. A crash loses at most those few milliseconds of lines.
   */
  writeLines(lines: string[]): void {
    if (!this.enabled || lines.length === 0) return;
    for (const l of lines) this.pending.push(l);
    if (this.pending.length >= FLUSH_LINES) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Writes what is gathered now. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const lines = this.pending;
    this.pending = [];
    if (!this.isFile) {
      process.stdout.write(`${lines.join('\n')}\n`);
      return;
    }
    const max = this.t.maxBytes;
    if (max === undefined) {
      this.append(`${lines.join('\n')}\n`);
      return;
    }
    // With rotation, a file never grows past the limit: the batch is cut where the next would.
    let chunk = '';
    let chunkBytes = 0;
    for (const l of lines) {
      const b = Buffer.byteLength(l) + 1;
      if (this.size + chunkBytes + b > max && this.size + chunkBytes > 0) {
        if (chunk) this.append(chunk);
        chunk = '';
        chunkBytes = 0;
        this.rotate();
      }
      chunk += `${l}\n`;
      chunkBytes += b;
    }
    if (chunk) this.append(chunk);
  }

  private append(text: string): void {
    if (this.fd === undefined) this.open();
    if (this.fd === undefined) return;
    try {
      // Synchronous: once flushed, a line is in the file (the page cache) before the next batch,
      // so rotation loses nothing, and no queue grows under load.
      writeSync(this.fd, text);
      this.size += Buffer.byteLength(text);
      this.failing = false;
    } catch (err) {
      this.fail(`cannot write ${this.t.to}: ${(err as Error).message}`);
    }
  }

  /** Closes and opens the file again by name: after logrotate moved it away (SIGHUP). */
  reopen(): void {
    if (!this.isFile) return;
    this.flush();
    this.close();
    this.open();
  }

  close(): void {
    this.flush();
    if (this.fd === undefined) return;
    try {
      closeSync(this.fd);
    } catch {
      // already gone
    }
    this.fd = undefined;
  }

  private open(): void {
    try {
      this.fd = openSync(this.t.to, 'a', 0o640);
      this.size = fstatSync(this.fd).size;
      this.failing = false;
    } catch (err) {
      this.fd = undefined;
      this.fail(`cannot open ${this.t.to}: ${(err as Error).message}`);
    }
  }

  /** FILE → FILE.1 → FILE.2 …; the oldest beyond `keep` is removed. */
  private rotate(): void {
    this.close();
    const keep = this.t.keep ?? 5;
    const file = this.t.to;
    try {
      rmSync(`${file}.${keep}`, { force: true });
      for (let i = keep - 1; i >= 1; i--) {
        if (exists(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
      }
      if (keep >= 1) renameSync(file, `${file}.1`);
      else rmSync(file, { force: true });
    } catch (err) {
      this.fail(`cannot rotate ${file}: ${(err as Error).message}`);
    }
    this.open();
  }

  private fail(message: string): void {
    if (this.failing) return;
    this.failing = true;
    this.onError(message);
  }
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}
