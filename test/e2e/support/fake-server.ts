// The server side of the agent protocol, just enough to talk to one agent: it accepts the
// agent's upgrade at /agent/v1/connect (checking the key), sends welcome, records what the agent
// sends, and lets a test send it anything at all.
import { type WebSocket, WebSocketServer } from 'ws';
import { registerCleanup } from './cleanup.js';
import { freePort } from './ports.js';

// biome-ignore lint/suspicious/noExplicitAny: the fake server reads whatever the agent sends.
export type Msg = Record<string, any>;

export interface FakeServer {
  port: number;
  /** Every connection the agent made, newest last, with what it sent and how it closed. */
  conns: { ws: WebSocket; received: Msg[]; closed?: number }[];
  /** Exec events by request id, over all connections. */
  events: Map<string, Msg[]>;
  sent: number;
  send(frame: string | Buffer, binary?: boolean): void;
}

export async function startFakeServer(key: string): Promise<FakeServer> {
  const port = await freePort();
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/agent/v1/connect' });
  const f: FakeServer = {
    port,
    conns: [],
    events: new Map(),
    sent: 0,
    send(frame, binary = false) {
      const ws = f.conns.at(-1)?.ws;
      if (!ws) throw new Error('the agent is not connected');
      ws.send(frame, { binary });
      f.sent++;
    },
  };
  wss.on('connection', (ws, req) => {
    if (req.headers.authorization !== `Bearer ${key}`) return ws.close(4001, 'bad key');
    const conn: FakeServer['conns'][number] = { ws, received: [] };
    f.conns.push(conn);
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString()) as Msg;
      conn.received.push(m);
      if (typeof m.type === 'string' && m.type.startsWith('exec.')) {
        f.events.set(m.id, [...(f.events.get(m.id) ?? []), m]);
      }
    });
    ws.on('close', (code) => {
      conn.closed = code;
    });
    ws.send(JSON.stringify({ type: 'welcome', agentId: 'ag_corpus', status: 'approved', heartbeatMs: 1000 }));
  });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  registerCleanup(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  );
  return f;
}
