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

export class AccessLogWriter {
  private fd?: number;
  private size = 0;
  /** Why the last write failed, once per failure streak (the caller logs it). */
  private failing = false;

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

  /** Several lines in one write (what one read from Caddy's stream gave). */
  writeLines(lines: string[]): void {
    if (!this.enabled || lines.length === 0) return;
    const text = `${lines.join('\n')}\n`;
    if (!this.isFile) {
      process.stdout.write(text);
      return;
    }
    const bytes = Buffer.byteLength(text);
    if (this.t.maxBytes !== undefined && this.size > 0 && this.size + bytes > this.t.maxBytes) this.rotate();
    if (this.fd === undefined) this.open();
    if (this.fd === undefined) return;
    try {
      // Synchronous and unbuffered: a line is on disk (in the page cache) before the next one, so
      // rotation and a crash lose nothing already written, and no queue grows under load.
      writeSync(this.fd, text);
      this.size += bytes;
      this.failing = false;
    } catch (err) {
      this.fail(`cannot write ${this.t.to}: ${(err as Error).message}`);
    }
  }

  /** Closes and opens the file again by name: after logrotate moved it away (SIGHUP). */
  reopen(): void {
    if (!this.isFile) return;
    this.close();
    this.open();
  }

  close(): void {
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
