import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { LogGate } from '../../src/log-gate.js';

function capture() {
  const lines: { msg: string; repeated?: number }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { logger, lines };
}

describe('LogGate', () => {
  it('logs the first of a kind, counts repeats and summarises them once', () => {
    const { logger, lines } = capture();
    let now = 0;
    const gate = new LogGate(logger, 60_000, 1_000, () => now);
    for (let i = 0; i < 100_000; i++) gate.warn('bad:a1', { agent: 'a1' }, 'invalid message');
    gate.warn('bad:a2', { agent: 'a2' }, 'invalid message');
    expect(lines.map((l) => l.msg)).toEqual(['invalid message', 'invalid message']);
    now = 61_000;
    gate.warn('bad:a1', { agent: 'a1' }, 'invalid message');
    expect(lines[2]).toMatchObject({ repeated: 99_999 });
    expect(lines[2]!.msg).toContain('repeated 99999 more times');
    expect(lines[3]!.msg).toBe('invalid message');
    gate.close();
  });

  it('bounds the kinds it tracks', () => {
    const { logger, lines } = capture();
    const gate = new LogGate(logger, 60_000, 10, () => 0);
    for (let i = 0; i < 10_000; i++) gate.warn(`k${i}`, {}, 'distinct');
    expect(lines.length).toBe(10);
    gate.flushAll();
    expect(lines.at(-1)).toMatchObject({ repeated: 9_990 });
  });
});
