import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { AGENT_HEAP_FLAGS, agentHeapFlags } from '../../src/cli/main.js';

/**
 * The young generation's size (MiB, both semi-spaces) in a fresh node that sets `flags` once it
 * runs, as the agent does, and then allocates a burst that keeps much alive (which makes V8 grow it).
 */
function youngAfterBurst(flags: string | undefined): number {
  const script = `
    const v8 = await import('node:v8');
    ${flags ? `v8.setFlagsFromString(${JSON.stringify(flags)});` : ''}
    const keep = [];
    for (let i = 0; i < 200000; i++) {
      keep.push({ a: i, b: 'x' + i, c: [i, i] });
      if (keep.length > 50000) keep.splice(0, 25000);
    }
    const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
    console.log(young.space_size / 1048576);`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return Number(out.trim());
}

describe("the agent's young generation", () => {
  it('stays at its starting size through a burst, where V8 alone grows it', () => {
    expect(youngAfterBurst(undefined)).toBeGreaterThan(4);
    expect(youngAfterBurst(AGENT_HEAP_FLAGS)).toBeLessThanOrEqual(2);
  });

  it("is left to node's own flags when they size it", () => {
    expect(agentHeapFlags([])).toBe(AGENT_HEAP_FLAGS);
    expect(agentHeapFlags(['--max-semi-space-size=8'])).toBeUndefined();
    expect(agentHeapFlags(['--semi-space-growth-factor=2'])).toBeUndefined();
    expect(agentHeapFlags([], '--max-semi-space-size=64 --enable-source-maps')).toBeUndefined();
    expect(agentHeapFlags([], '--enable-source-maps')).toBe(AGENT_HEAP_FLAGS);
  });
});
