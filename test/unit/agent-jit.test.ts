import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { LEAN_FLAGS, STREAM_COMPILERS } from '../../src/agent/jit.js';

// V8's %GetOptimizationStatus bits (src/runtime/runtime-test.cc, the same in Node 20 to 24).
const OPTIMIZED = 1 << 4;
const INTERPRETED = 1 << 7;
const BASELINE = 1 << 15;

/**
 * A hot function's status in a fresh node that sets `flags` after it ran hot once under
 * LEAN_FLAGS, as an agent does at its first stream: [before, after].
 */
function statusAfter(flags: string): [number, number] {
  const script = `
    const { setFlagsFromString } = await import('node:v8');
    setFlagsFromString(${JSON.stringify(LEAN_FLAGS)});
    function hot(a, b) { return a.length + b.length; }
    const run = () => { let s = 0; for (let i = 0; i < 1e6; i++) s += hot('ab', 'c' + (i & 7)); return s; };
    run();
    const before = %GetOptimizationStatus(hot);
    setFlagsFromString(${JSON.stringify(flags)});
    for (let k = 0; k < 20; k++) { run(); await new Promise((r) => setTimeout(r, 5)); }
    console.log(JSON.stringify([before, %GetOptimizationStatus(hot)]));`;
  const out = execFileSync(
    process.execPath,
    ['--allow-natives-syntax', '--input-type=module', '-e', script],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  return JSON.parse(out.trim()) as [number, number];
}

describe("a tunnel agent's compilers", () => {
  it('run a hot function interpreted while lean, then baseline-compiled and never optimized', () => {
    const [before, after] = statusAfter(STREAM_COMPILERS);
    expect(before & INTERPRETED).toBe(INTERPRETED);
    expect(before & (BASELINE | OPTIMIZED)).toBe(0);
    expect(after & BASELINE).toBe(BASELINE);
    expect(after & OPTIMIZED).toBe(0);
  });

  it('the same check sees an optimizer when one is turned on (it can fail)', () => {
    const [, after] = statusAfter(`${STREAM_COMPILERS} --opt`);
    expect(after & OPTIMIZED).toBe(OPTIMIZED);
  });
});
