import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RouteView } from '../../../src/model/api.js';
import { EventBus } from '../../../src/server/events.js';
import { MAX_REJECTED_EVENTS, RouteEvents } from '../../../src/server/route-events.js';

afterEach(() => {
  vi.useRealTimers();
});

const errored = (i: number, message = 'outside the domains allowed'): RouteView => ({
  id: `c${i}/default`,
  kind: 'http',
  agentId: 'a1',
  agentName: 'h1',
  hosts: [`r${i}.example.test`],
  path: '/',
  stripPath: false,
  upstreams: ['http://127.0.0.2:80'],
  container: { id: `c${i}`, name: `c${i}` },
  status: 'error',
  errors: [message],
});

describe('RouteEvents', () => {
  it('announces each newly rejected route once, and past the cap one summary instead of a flood', () => {
    vi.useFakeTimers();
    const events = new EventBus(10_000);
    let errors = Array.from({ length: 250 }, (_, i) => errored(i));
    const re = new RouteEvents({ events, errors: () => errors });
    re.passed(1, 0);
    vi.advanceTimersByTime(1_000);
    const rejected = events.recent().filter((e) => e.type === 'route.rejected');
    expect(rejected).toHaveLength(MAX_REJECTED_EVENTS + 1);
    expect(rejected[0]!.message).toBe('r0.example.test (h1/c0): outside the domains allowed');
    expect(rejected.at(-1)!.message).toBe('and 150 more routes newly rejected (berth routes lists them all)');
    // The same errors again: nothing new. One route's error changes: that one alone.
    const seen = events.recent().length;
    re.passed(1, 0);
    vi.advanceTimersByTime(1_000);
    expect(events.recent().filter((e) => e.type === 'route.rejected').length).toBe(rejected.length);
    errors = [...errors.slice(1), errored(0, 'the agent has too many routes')];
    re.passed(1, 0);
    vi.advanceTimersByTime(1_000);
    const later = events.recent(seen).filter((e) => e.type === 'route.rejected');
    expect(later.map((e) => e.message)).toEqual(['r0.example.test (h1/c0): the agent has too many routes']);
    re.stop();
  });

  it('yields to the event loop during a long scan, and still announces every route it found', async () => {
    const events = new EventBus(10_000);
    const busy = (ms: number) => {
      const until = performance.now() + ms;
      while (performance.now() < until);
    };
    let done = false;
    let ranBetween = false;
    function* errors(): Generator<RouteView | undefined> {
      for (let i = 0; i < 4; i++) {
        yield errored(i);
        busy(12); // longer than a slice: the scan must yield here
        yield undefined;
      }
      done = true;
    }
    const re = new RouteEvents({ events, errors });
    re.passed(1, 0);
    await new Promise((resolve) => setTimeout(resolve, 5)); // the scan starts on its timer
    setImmediate(() => {
      ranBetween = !done;
    });
    await vi.waitFor(() => expect(done).toBe(true));
    await new Promise((resolve) => setImmediate(resolve));
    expect(ranBetween).toBe(true);
    expect(events.recent().filter((e) => e.type === 'route.rejected')).toHaveLength(4);
    re.stop();
  });
});
