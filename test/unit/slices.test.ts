import { describe, expect, it } from 'vitest';
import { drain, inSlices, nextTurn } from '../../src/model/slices.js';

/** Records, per turn of the event loop, how many job slices ran in it. */
function turnCounter() {
  const perTurn: number[] = [0];
  let stopped = false;
  const turn = () => {
    if (stopped) return;
    perTurn.push(0);
    setImmediate(turn);
  };
  setImmediate(turn);
  return {
    slice: () => perTurn[perTurn.length - 1]!++,
    stop: () => {
      stopped = true;
      return perTurn;
    },
  };
}

describe('slices', () => {
  it('resumes one waiting job per turn of the event loop, first come first served', async () => {
    const c = turnCounter();
    const order: string[] = [];
    const job = async (name: string) => {
      for (let i = 0; i < 5; i++) {
        c.slice();
        order.push(`${name}${i}`);
        await nextTurn();
      }
    };
    await Promise.all([job('a'), job('b'), job('c')]);
    const perTurn = c.stop();
    // The first slice of each job runs when it starts; every later one in a turn of its own.
    expect(Math.max(...perTurn.slice(1))).toBe(1);
    expect(order.slice(3)).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'c2', 'a3', 'b3', 'c3', 'a4', 'b4', 'c4']);
  });

  it('inSlices gives the same result as drain, and yields only when a slice has run its time', async () => {
    function* steps(n: number): Generator<void, number> {
      let sum = 0;
      for (let i = 0; i < n; i++) {
        sum += i;
        yield;
      }
      return sum;
    }
    expect(await inSlices(steps(10_000))).toBe(drain(steps(10_000)));
    const c = turnCounter();
    let turnsSeen = 0;
    function* slow(): Generator<void, string> {
      for (let i = 0; i < 4; i++) {
        const until = performance.now() + 3;
        while (performance.now() < until) {}
        turnsSeen++;
        yield;
      }
      return 'done';
    }
    expect(await inSlices(slow(), 2)).toBe('done');
    const perTurn = c.stop();
    expect(turnsSeen).toBe(4);
    // Each 3 ms step is over the 2 ms slice, so every one after the first ran in a later turn.
    expect(perTurn.length).toBeGreaterThanOrEqual(4);
  });
});
