// The agent's limit on data connections opened at once (Turns): never more than `max` running,
// the rest in order (a stream's ahead of a pool refill), each turn given back however its task ends.
import { describe, expect, it } from 'vitest';
import { Turns } from '../../../src/agent/tunnel.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('Turns', () => {
  it('runs at most max tasks at once and the rest in arrival order, each as a turn frees', async () => {
    const turns = new Turns(4);
    const release: (() => void)[] = [];
    const started: number[] = [];
    let running = 0;
    let most = 0;
    const all = Array.from({ length: 10 }, (_, i) =>
      turns.run(async () => {
        started.push(i);
        running++;
        most = Math.max(most, running);
        await new Promise<void>((r) => release.push(r));
        running--;
        return i * 2;
      }),
    );
    await tick();
    expect(started).toEqual([0, 1, 2, 3]);
    expect(turns.load).toEqual({ running: 4, waiting: 6 });
    release.shift()!();
    await tick();
    await tick();
    expect(started).toEqual([0, 1, 2, 3, 4]);
    while (started.length < 10 || release.length > 0) {
      release.shift()?.();
      await tick();
      await tick();
    }
    expect(await Promise.all(all)).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    expect(most).toBe(4);
    expect(started).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(turns.load).toEqual({ running: 0, waiting: 0 });
  });

  it('gives a freed turn to urgent tasks first, in their order, then to the rest in theirs', async () => {
    const turns = new Turns(1);
    const started: string[] = [];
    const release: (() => void)[] = [];
    const task = (name: string) => async () => {
      started.push(name);
      await new Promise<void>((r) => release.push(r));
    };
    const all = [
      turns.run(task('pool 1')),
      turns.run(task('pool 2')),
      turns.run(task('pool 3')),
      turns.run(task('stream a'), true),
      turns.run(task('stream b'), true),
    ];
    await tick();
    expect(started).toEqual(['pool 1']);
    expect(turns.load).toEqual({ running: 1, waiting: 4 });
    while (started.length < 5 || release.length > 0) {
      release.shift()?.();
      await tick();
      await tick();
    }
    await Promise.all(all);
    expect(started).toEqual(['pool 1', 'stream a', 'stream b', 'pool 2', 'pool 3']);
    expect(turns.load).toEqual({ running: 0, waiting: 0 });
  });

  it('lets a task that never settles hold its turn for maxMs only', async () => {
    const turns = new Turns(1, 50);
    const t0 = Date.now();
    void turns.run(() => new Promise<never>(() => {}));
    expect(turns.load).toEqual({ running: 1, waiting: 0 });
    expect(await turns.run(async () => Date.now() - t0)).toBeGreaterThanOrEqual(45);
    // The hung task keeps no turn: the next one starts at once, not queued behind it.
    expect(turns.load).toEqual({ running: 0, waiting: 0 });
    const next = turns.run(async () => 'ran');
    expect(turns.load).toEqual({ running: 1, waiting: 0 });
    expect(await next).toBe('ran');
  });

  it('gives the turn back when a task fails, and the failure reaches its caller', async () => {
    const turns = new Turns(1);
    const failed = turns.run(async () => {
      throw new Error('handshake refused');
    });
    const next = turns.run(async () => 'next ran');
    await expect(failed).rejects.toThrow('handshake refused');
    expect(await next).toBe('next ran');
    expect(turns.load).toEqual({ running: 0, waiting: 0 });
  });
});
