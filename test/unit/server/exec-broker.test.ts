// The server's side of exec, with a stand-in agent: a request ends even when the agent never
// reports its end, and the output relayed for one request is bounded.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { ExecEvent, ExecRequest } from '../../../src/model/protocol.js';
import { ExecBroker } from '../../../src/server/exec.js';
import type { Registry } from '../../../src/server/registry.js';
import type { Store } from '../../../src/store/store.js';

function broker(
  answer: (req: ExecRequest, b: ExecBroker) => void,
  o: { graceMs?: number; maxOutputBytes?: number },
) {
  const audits: { decision: string; reason?: string }[] = [];
  const registry = {
    listAgents: () => [{ id: 'a1', name: 'host1' }],
    snapshotOf: () => ({ containers: [{ id: 'c0ffee0000010000', name: 'app', state: 'running' }] }),
    reporting: () => [],
  } as unknown as Registry;
  const store = {
    addAudit: async (a: { decision: string; reason?: string }) => void audits.push(a),
  } as unknown as Store;
  const b: ExecBroker = new ExecBroker({
    registry,
    store,
    logger: pino({ level: 'silent' }),
    channel: (_agent, req) => {
      setImmediate(() => answer(req, b));
      return true;
    },
    isConnected: () => true,
    ...o,
  });
  return { b, audits };
}

const call = { target: 'app', argv: ['date'], timeoutMs: 50, requester: 'test' };

describe('ExecBroker', () => {
  it('ends a request whose agent never reports an end, and audits it', async () => {
    const { b, audits } = broker(() => {}, { graceMs: 50 });
    await expect(b.run(call, () => {})).rejects.toThrow(
      /agent host1 reported no end within 100 ms \(the timeout and 50 ms to stop the command\); the request ends here/,
    );
    expect(audits).toMatchObject([{ decision: 'error', reason: expect.stringMatching(/reported no end/) }]);
  });

  it('ends a request once its output passes the cap, and relays nothing past it', async () => {
    const chunk = Buffer.alloc(400, 'x').toString('base64');
    const { b } = broker(
      (req, self) => {
        self.onAgentEvent('a1', { type: 'exec.started', id: req.id });
        for (let i = 0; i < 5; i++)
          self.onAgentEvent('a1', { type: 'exec.output', id: req.id, stream: 'stdout', data: chunk });
        self.onAgentEvent('a1', { type: 'exec.exit', id: req.id, exitCode: 0, durationMs: 1 } as ExecEvent);
      },
      { maxOutputBytes: 1000 },
    );
    const events: ExecEvent[] = [];
    await b.run(call, (e) => events.push(e));
    expect(events.map((e) => e.type)).toEqual(['exec.started', 'exec.output', 'exec.output', 'exec.error']);
    expect(events.at(-1)).toMatchObject({ message: expect.stringMatching(/output passed 1000 bytes/) });
  });

  it('waits for a request with a timeout past what a timer can hold (30 days) instead of ending it at once', async () => {
    const { b } = broker(
      (req, self) =>
        setTimeout(() => {
          self.onAgentEvent('a1', { type: 'exec.started', id: req.id });
          self.onAgentEvent('a1', { type: 'exec.exit', id: req.id, exitCode: 0, durationMs: 1 } as ExecEvent);
        }, 30),
      {},
    );
    const events: ExecEvent[] = [];
    await b.run({ ...call, timeoutMs: 30 * 86_400_000 }, (e) => events.push(e));
    expect(events.map((e) => e.type)).toEqual(['exec.started', 'exec.exit']);
  });

  it('passes a request that ends in time through untouched', async () => {
    const { b, audits } = broker(
      (req, self) => {
        self.onAgentEvent('a1', { type: 'exec.started', id: req.id });
        self.onAgentEvent('a1', { type: 'exec.exit', id: req.id, exitCode: 0, durationMs: 1 } as ExecEvent);
      },
      { graceMs: 50 },
    );
    const events: ExecEvent[] = [];
    await b.run(call, (e) => events.push(e));
    await new Promise((r) => setTimeout(r, 150)); // past the deadline: nothing more comes
    expect(events.map((e) => e.type)).toEqual(['exec.started', 'exec.exit']);
    expect(audits).toMatchObject([{ decision: 'allowed' }]);
  });
});
