// A fake agent: a WebSocket client with a real key that says whatever a test wants it to say.
import WebSocket from 'ws';
import { AGENT_PATH } from '../../../src/model/protocol.js';
import type { RouteSpec, Snapshot } from '../../../src/model/types.js';
import { registerCleanup } from './cleanup.js';

export interface FakeAgent {
  ws: WebSocket;
  agentId: string;
  /** Messages the server sent after the welcome. */
  received: { type: string; message?: string }[];
  closed: Promise<number>;
  snapshot(routes: Partial<RouteSpec>[], over?: Partial<Snapshot>): void;
}

/**
 * A fake agent with a real key, speaking the real protocol from this process: for hostile-agent
 * tests and benchmarks. `snapshot()` fills in whatever a route needs, with a spoofed container
 * name and an "older than anyone" creation time unless told otherwise.
 */
export function connectFakeAgent(
  apiUrl: string,
  secret: string,
  name: string,
  options: WebSocket.ClientOptions = {},
): Promise<FakeAgent> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${apiUrl.replace(/^http/, 'ws')}${AGENT_PATH}`, {
      ...options,
      headers: { authorization: `Bearer ${secret}`, 'x-berth-agent-name': name },
    });
    registerCleanup(() => ws.terminate());
    const received: FakeAgent['received'] = [];
    const closed = new Promise<number>((done) => ws.on('close', (code) => done(code)));
    let generation = 1;
    ws.once('error', reject);
    ws.on('message', (raw) => {
      const msg = JSON.parse(raw.toString());
      if (msg.type !== 'welcome') {
        received.push(msg);
        return;
      }
      resolve({
        ws,
        agentId: msg.agentId,
        received,
        closed,
        snapshot(routes, over = {}) {
          const full = routes.map((r, i) => ({
            id: `evil${i}/default`,
            group: 'default',
            hosts: ['evil.rt.test'],
            path: '/',
            stripPath: false,
            upstream: { host: '127.0.0.1', port: 9, scheme: 'http' },
            containerId: `evil${i}`,
            containerName: 'victim', // a spoofed name, to blame someone else
            containerCreated: -1e15, // "older than anyone"
            ...r,
          }));
          const s = {
            agentId: msg.agentId,
            generation: generation++,
            hostIp: '127.0.0.1',
            takenAt: Date.now(),
            containers: full.map((r) => ({
              id: r.containerId,
              name: r.containerName,
              state: 'running',
              health: 'none',
              labelled: true,
            })),
            routes: full,
            diagnostics: [],
            ...over,
          };
          ws.send(JSON.stringify({ type: 'snapshot', snapshot: s }));
        },
      });
    });
  });
}
