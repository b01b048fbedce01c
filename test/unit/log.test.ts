import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { jsonLogger, type LevelName, type Logger } from '../../src/log.js';

// pino is the reference: the same calls through both must give the same lines.
function both(level: LevelName) {
  const ours: string[] = [];
  const theirs: string[] = [];
  const a = jsonLogger({ level, base: { cmd: 'agent' }, write: (l) => ours.push(l), clock: () => 1234 });
  const b = pino(
    { level, base: { cmd: 'agent' }, timestamp: () => ',"time":1234' },
    { write: (l: string) => theirs.push(l) },
  );
  return { a, b: b as unknown as Logger, ours, theirs };
}

const calls: [keyof Omit<Logger, 'child'>, ...unknown[]][] = [
  ['info', { hostIp: '127.0.0.1', chosen: 'docker host' }, 'host IP for published and host-network ports'],
  ['warn', 'just a message'],
  ['error', { server: 'https://s:7443', err: 'connect ECONNREFUSED 127.0.0.1:7443' }, 'cannot connect'],
  ['debug', { err: 'read ECONNRESET' }, 'connection error'],
  ['info', { decision: 'denied', reason: 'no rule allows "rm -rf /"\n\ttab \\ back' }, 'exec denied'],
  [
    'info',
    { exitCode: 0, durationMs: 12.5, bytes: 0, truncated: false, argv: ['ls', '-l'] },
    'exec finished',
  ],
  ['info', { nested: { a: [1, undefined, 'z'], d: new Date(0), u: undefined }, none: null }, 'nested'],
  ['warn', { skipped: undefined, f: () => 1, nan: Number.NaN, inf: -Infinity }, 'left out and null'],
  ['info', { err: new TypeError('boom') }, 'an Error object'],
  ['error', { only: 'fields' }],
  ['info', {}, 'empty fields'],
  ['info', { unicode: 'é → 日本 \u2028 emoji 🚢', long: 'x'.repeat(300) }, `long ${'y'.repeat(150)}`],
  ['warn', { cmd: 'a field named like a base field', msg: 'and one like the message' }, 'outer'],
];

describe('jsonLogger writes pino lines', () => {
  it.each(['debug', 'info', 'warn', 'error', 'trace', 'silent'] as const)('at level %s', (level) => {
    const { a, b, ours, theirs } = both(level);
    for (const log of [a, b]) {
      const child = log.child({ component: 'link', n: 1 });
      const grandchild = child.child({ stream: 7 });
      for (const [fn, ...args] of calls) {
        for (const l of [log, child, grandchild]) (l[fn] as (...x: unknown[]) => void)(...args);
      }
    }
    expect(ours).toEqual(theirs);
    if (level !== 'silent') expect(ours.length).toBeGreaterThan(0);
  });

  it('writes whole lines to a file descriptor', () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-log-'));
    try {
      const file = join(dir, 'out.log');
      const fd = openSync(file, 'w');
      const log = jsonLogger({ level: 'info', base: { cmd: 'agent' }, fd, clock: () => 5 });
      log.info({ a: 1 }, 'one');
      log.debug('dropped');
      log.child({ component: 'x' }).warn('two');
      closeSync(fd);
      expect(readFileSync(file, 'utf8')).toBe(
        '{"level":30,"time":5,"cmd":"agent","a":1,"msg":"one"}\n{"level":40,"time":5,"cmd":"agent","component":"x","msg":"two"}\n',
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
