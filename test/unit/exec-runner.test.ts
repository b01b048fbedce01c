// The agent's exec runner with a stand-in Docker: a command that outlives its kill keeps its slot
// until it ends, so maxConcurrent bounds the processes, not only the requests.
import { describe, expect, it } from 'vitest';
import type { DockerSource } from '../../src/agent/docker.js';
import { DEFAULT_POLICY } from '../../src/agent/exec-policy.js';
import { ExecRunner } from '../../src/agent/exec-runner.js';
import { jsonLogger } from '../../src/log.js';
import type { ExecEvent } from '../../src/model/protocol.js';

describe('ExecRunner', () => {
  it('keeps the slot of a command that did not end after its kill until it ends', async () => {
    const events: ExecEvent[] = [];
    const ends: (() => void)[] = [];
    const source = {
      inspect: async () => ({
        id: 'c0ffee000001',
        name: 'app',
        labels: { 'berth.exec.allow': 'sleep *' },
        running: true,
      }),
      // Docker reports no PID (the agent is outside the host's PID namespace): the kill fails.
      exec: async () => ({
        hostPid: async () => undefined,
        done: new Promise<{ exitCode: number | null }>((r) => ends.push(() => r({ exitCode: 137 }))),
      }),
    } as unknown as DockerSource;
    const runner = new ExecRunner({
      source,
      policy: { ...DEFAULT_POLICY, maxConcurrent: 1 },
      labelPrefix: 'berth',
      logger: jsonLogger({ level: 'silent', base: {} }),
      send: (e) => events.push(e),
      killGraceMs: 20,
    });
    const req = (id: string) => ({
      type: 'exec' as const,
      id,
      container: 'app',
      argv: ['sleep', '600'],
      timeoutMs: 20,
    });
    await runner.handle(req('first'));
    const first = events.filter((e) => e.id === 'first').map((e) => e.type);
    expect(first).toEqual(['exec.started', 'exec.exit']);
    expect(events.find((e) => e.id === 'first' && e.type === 'exec.exit')).toMatchObject({
      exitCode: null,
      timedOut: true,
    });
    // Its process still runs: the next request is busy, and says why.
    await runner.handle(req('second'));
    expect(events.find((e) => e.id === 'second')).toMatchObject({
      type: 'exec.error',
      code: 'BUSY',
      message: expect.stringMatching(
        /1 commands already running on this agent, 1 of them still running after their kill failed \(limit 1\)/,
      ),
    });
    // It ends at last: the slot is free again.
    ends.shift()!();
    await new Promise((r) => setImmediate(r));
    const third = runner.handle(req('third'));
    await new Promise((r) => setTimeout(r, 5));
    expect(events.find((e) => e.id === 'third')?.type).toBe('exec.started');
    ends.shift()!();
    await third;
  });
});
