// The logger the agent's code takes, and a small one that writes pino's lines. The server and its
// sidecars log through pino; `berth agent` uses jsonLogger() instead, because pino and its
// helpers (a worker thread pool for transports among them) are about 1 MiB of an idle agent's
// RSS, and the agent needs none of what pino adds: it logs objects of plain values to stderr.
// Lines are pino's, byte for byte but for the time: {"level":30,"time":…, base fields, child
// bindings, the call's fields, "msg"} (test/unit/log.test.ts compares them with pino's).
import { writeSync } from 'node:fs';

export interface LogFn {
  (fields: object, msg?: string): void;
  (msg: string): void;
}

/** What the agent's modules need of a logger; a pino Logger is one. */
export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  child(bindings: Record<string, unknown>): Logger;
}

const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity } as const;
export type LevelName = keyof typeof LEVELS;

/** One field as pino writes it (`,"key":value`), or '' for what pino leaves out. */
function field(key: string, value: unknown): string {
  let v: string | undefined;
  switch (typeof value) {
    case 'undefined':
    case 'function':
    case 'symbol':
      return '';
    case 'number':
      v = Number.isFinite(value) ? String(value) : 'null';
      break;
    case 'bigint':
      v = String(value);
      break;
    default:
      v =
        key === 'err' && value instanceof Error
          ? json(
              Object.assign(
                { type: value.constructor.name, message: value.message, stack: value.stack },
                value,
              ),
            )
          : json(value);
  }
  return v === undefined ? '' : `,${JSON.stringify(key)}:${v}`;
}

function json(value: unknown): string | undefined {
  try {
    return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? Number(v) : v));
  } catch {
    // A cycle, say: pino would write a marker too rather than lose the line.
    return JSON.stringify('[unserializable]');
  }
}

function fields(obj: object): string {
  let out = '';
  for (const [k, v] of Object.entries(obj)) out += field(k, v);
  return out;
}

/** Writes the whole line at once, waiting out a full pipe as pino's destination does. */
function writeLine(fd: number, line: string): void {
  let buf = Buffer.from(line);
  for (;;) {
    try {
      const n = writeSync(fd, buf);
      if (n === buf.length) return;
      buf = buf.subarray(n);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EAGAIN' && code !== 'EBUSY') throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    }
  }
}

/** pino({ level, base }, pino.destination(fd))'s lines, for plain objects and a message. */
export function jsonLogger(o: {
  level: LevelName;
  base: Record<string, unknown>;
  fd?: number;
  /** Where lines go instead of the fd (tests). */
  write?: (line: string) => void;
  clock?: () => number;
}): Logger {
  const threshold = LEVELS[o.level];
  const write = o.write ?? ((line: string) => writeLine(o.fd ?? 2, line));
  const clock = o.clock ?? Date.now;
  const make = (bindings: string): Logger => {
    const at =
      (level: number): LogFn =>
      (a: object | string, msg?: string) => {
        if (level < threshold) return;
        let line = `{"level":${level},"time":${clock()}${bindings}`;
        if (typeof a === 'string') msg = a;
        else if (a !== null && a !== undefined) line += fields(a);
        if (msg !== undefined) line += `,"msg":${JSON.stringify(msg)}`;
        write(`${line}}\n`);
      };
    return {
      debug: at(LEVELS.debug),
      info: at(LEVELS.info),
      warn: at(LEVELS.warn),
      error: at(LEVELS.error),
      child: (more) => make(bindings + fields(more)),
    };
  };
  return make(fields(o.base));
}
