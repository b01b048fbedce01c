// The server's side of tunnels with real loopback sockets: endpoints, the pairing of a front
// connection with the data connection its agent opens, and everything refused on the way.
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ServerMessage } from '../../../src/model/protocol.js';
import { TunnelBroker } from '../../../src/server/tunnel-broker.js';
import type { KeyRecord } from '../../../src/store/store.js';

const key = (id: string): KeyRecord => ({
  id,
  name: id,
  hash: 'h',
  domains: [],
  autoApprove: true,
  createdAt: 0,
});

let broker: TunnelBroker;
let sent: { agentId: string; msg: ServerMessage }[];
let online: Set<string>;
/** Where "agents" hand their data connections in: each accepted socket goes to attachData. */
let dataServer: Server;
let dataPort: number;
let nextHeaders: Record<string, string>;
let nextKey: KeyRecord;
/** Each online agent's session token, as its WebSocket's welcome would carry it. */
let tokens: Record<string, string>;

beforeEach(async () => {
  sent = [];
  online = new Set(['A', 'B', 'C']);
  broker = new TunnelBroker({
    logger: pino({ level: 'silent' }),
    send: (agentId, msg) => {
      if (!online.has(agentId)) return false;
      sent.push({ agentId, msg });
      return true;
    },
    // C is another agent enrolled with A's key.
    keyOf: (agentId) => ({ A: 'kA', B: 'kB', C: 'kA' })[agentId],
    nameOf: (agentId) => agentId,
    connected: (agentId) => online.has(agentId),
  });
  await broker.start();
  tokens = Object.fromEntries([...online].map((a) => [a, broker.openSession(a, true)!]));
  dataServer = createServer({ allowHalfOpen: true }, (sock) => {
    broker.attachData(nextKey, { upgrade: 'berth-tunnel/1', ...nextHeaders }, sock, Buffer.alloc(0));
  });
  await new Promise<void>((r) => dataServer.listen(0, '127.0.0.1', () => r()));
  dataPort = (dataServer.address() as { port: number }).port;
});

afterEach(async () => {
  await broker.close();
  dataServer.close();
});

const waitFor = async (ok: () => boolean) => {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(ok()).toBe(true);
};

/** A front connection to an endpoint; resolves when it is closed, with what it read. */
function front(host: string, port: number) {
  const s = netConnect({ host, port, allowHalfOpen: true });
  let got = '';
  s.on('data', (d) => {
    got += d;
  });
  const closed = new Promise<{ got: string; error?: string }>((r) => {
    s.on('error', (e) => r({ got, error: (e as NodeJS.ErrnoException).code }));
    s.on('close', () => r({ got }));
  });
  return { s, closed, got: () => got };
}

/**
 * A data connection as an agent opens it; resolves with the socket once the server answered. It
 * names the session of the agent it claims to be unless the headers say otherwise.
 */
async function dataConnection(
  k: string,
  headers: Record<string, string>,
): Promise<{ sock: Socket; head: string }> {
  nextKey = key(k);
  const session = tokens[headers['x-berth-agent-id'] ?? ''];
  nextHeaders =
    'x-berth-tunnel-session' in headers || !session
      ? headers
      : { ...headers, 'x-berth-tunnel-session': session };
  const sock = netConnect({ host: '127.0.0.1', port: dataPort, allowHalfOpen: true });
  sock.on('error', () => {});
  const head = await new Promise<string>((r) => {
    let text = '';
    const onData = (d: Buffer) => {
      text += d.toString('latin1');
      if (text.includes('\r\n\r\n')) {
        sock.off('data', onData);
        r(text);
      }
    };
    sock.on('data', onData);
    sock.on('close', () => r(text));
  });
  return { sock, head };
}

describe('TunnelBroker', () => {
  it("pairs a front connection with its agent's data connection, both ways and with half-close", async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 8080 }], 8)('127.0.0.1', 8080)!;
    expect(ep.host).toBe('127.77.0.1');
    const f = front(ep.host, ep.port);
    await waitFor(() => sent.length === 1);
    expect(sent[0]).toMatchObject({
      agentId: 'A',
      msg: { type: 'tunnel.open', host: '127.0.0.1', port: 8080 },
    });
    const id = (sent[0]!.msg as { id: number }).id;
    const { sock, head } = await dataConnection('kA', {
      'x-berth-agent-id': 'A',
      'x-berth-stream': String(id),
    });
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    f.s.write('request');
    const fromFront = await new Promise<string>((r) => sock.once('data', (d) => r(d.toString())));
    expect(fromFront).toBe('request');
    sock.end('answer');
    f.s.end();
    expect(await f.closed).toEqual({ got: 'answer' });
  });

  it("never hands a stream to another agent's key, or to a stream it did not ask for", async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 80 }], 8)('127.0.0.1', 80)!;
    front(ep.host, ep.port);
    await waitFor(() => sent.length === 1);
    const id = String((sent[0]!.msg as { id: number }).id);
    for (const [k, headers] of [
      ['kB', { 'x-berth-agent-id': 'A', 'x-berth-stream': id }],
      ['kB', { 'x-berth-agent-id': 'B', 'x-berth-stream': id }],
      ['kA', { 'x-berth-agent-id': 'A', 'x-berth-stream': '999' }],
      ['kB', { 'x-berth-agent-id': 'A', 'x-berth-stream': 'pool' }],
    ] as const) {
      const { head } = await dataConnection(k, headers);
      expect(head).toMatch(/^HTTP\/1\.1 404 /);
    }
    // The right one is still welcome.
    expect((await dataConnection('kA', { 'x-berth-agent-id': 'A', 'x-berth-stream': id })).head).toMatch(
      / 101 /,
    );
  });

  it("takes a data connection only from the agent's current connection, not from another agent of its key", async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 85 }], 8)('127.0.0.1', 85)!;
    front(ep.host, ep.port);
    await waitFor(() => sent.length === 1);
    const id = String((sent[0]!.msg as { id: number }).id);
    // C holds A's key and claims to be A: without A's token it gets neither the stream nor the pool.
    for (const session of [tokens.C!, '', 'x'.repeat(32)])
      for (const stream of [id, 'pool']) {
        const h = { 'x-berth-agent-id': 'A', 'x-berth-stream': stream, 'x-berth-tunnel-session': session };
        expect((await dataConnection('kA', h)).head, `${stream} ${session}`).toMatch(/^HTTP\/1\.1 404 /);
      }
    const { sock: pooled } = await dataConnection('kA', {
      'x-berth-agent-id': 'A',
      'x-berth-stream': 'pool',
    });
    // A connects again (its WebSocket replaced): the old token no longer counts, and what was
    // pre-opened for the old connection is closed.
    const old = tokens.A!;
    const closed = new Promise<void>((r) => pooled.once('end', () => r()));
    tokens.A = broker.openSession('A', true)!;
    expect(tokens.A).not.toBe(old);
    await closed;
    const stale = { 'x-berth-agent-id': 'A', 'x-berth-stream': id, 'x-berth-tunnel-session': old };
    expect((await dataConnection('kA', stale)).head).toMatch(/ 404 /);
    expect((await dataConnection('kA', { 'x-berth-agent-id': 'A', 'x-berth-stream': id })).head).toMatch(
      / 101 /,
    );
  });

  it('checks only the key of an agent older than session tokens, and names a malformed header', async () => {
    broker.openSession('A', false);
    const pool = { 'x-berth-agent-id': 'A', 'x-berth-stream': 'pool', 'x-berth-tunnel-session': '' };
    expect((await dataConnection('kA', pool)).head).toMatch(/ 101 /);
    for (const [headers, error] of [
      [
        { 'x-berth-agent-id': 'A', 'x-berth-stream': 'pools' },
        /X-Berth-Stream must be \\"pool\\" or a stream number/,
      ],
      [{ 'x-berth-agent-id': 'A' }, /X-Berth-Stream must be/],
      [{ 'x-berth-stream': 'pool' }, /X-Berth-Agent-Id is missing/],
    ] as const) {
      const { head } = await dataConnection('kA', headers);
      expect(head).toMatch(/^HTTP\/1\.1 400 /);
      expect(head).toMatch(error);
    }
  });

  it('uses a pre-opened connection: the open request first, then the bytes', async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 81 }], 8)('127.0.0.1', 81)!;
    const { sock } = await dataConnection('kA', { 'x-berth-agent-id': 'A', 'x-berth-stream': 'pool' });
    await new Promise((r) => setTimeout(r, 20));
    const f = front(ep.host, ep.port);
    f.s.write('hi');
    let got = '';
    await new Promise<void>((r) =>
      sock.on('data', (d) => {
        got += d;
        if (got.endsWith('hi')) r();
      }),
    );
    const [line, rest] = got.split('\n');
    expect(JSON.parse(line!)).toMatchObject({ type: 'tunnel.open', host: '127.0.0.1', port: 81 });
    expect(rest).toBe('hi');
    expect(sent).toEqual([]); // nothing on the WebSocket
    sock.destroy();
  });

  it('resets at once while the agent is away, and past its stream limit', async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 82 }], 2)('127.0.0.1', 82)!;
    front(ep.host, ep.port);
    front(ep.host, ep.port);
    await waitFor(() => sent.length === 2);
    const opens = () => sent.filter((x) => x.msg.type === 'tunnel.open').length;
    const third = await front(ep.host, ep.port).closed;
    expect(third.got).toBe('');
    expect(opens()).toBe(2); // the third was never asked for
    broker.agentGone('A');
    online.delete('A');
    const away = await front(ep.host, ep.port).closed;
    expect(away).toMatchObject({ got: '' });
    expect(opens()).toBe(2);
    const m = broker.metrics().find((x) => x.name === 'berth_tunnel_errors_total')!;
    expect(m.samples.map((s) => [s.labels.reason, s.value])).toEqual(
      expect.arrayContaining([
        ['limit', 1],
        ['offline', 1],
        ['agent-gone', 2],
      ]),
    );
  });

  it("ends an agent's open streams when it goes, and its endpoints when it is removed", async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 83 }], 8)('127.0.0.1', 83)!;
    const f = front(ep.host, ep.port);
    await waitFor(() => sent.length === 1);
    const id = String((sent[0]!.msg as { id: number }).id);
    await dataConnection('kA', { 'x-berth-agent-id': 'A', 'x-berth-stream': id });
    broker.dropAgent('A');
    expect((await f.closed).got).toBe('');
    // No endpoint is left for A: another agent's upstream may get the address later, never A's stream.
    const ep2 = broker.endpoints('B', [{ host: '127.0.0.1', port: 83 }], 8)('127.0.0.1', 83)!;
    expect(ep2.host).not.toBe(ep.host);
  });

  it('releases the endpoints of upstreams an agent no longer names, resetting their streams', async () => {
    const ep = broker.endpoints('A', [{ host: '127.0.0.1', port: 84 }], 8)('127.0.0.1', 84)!;
    const f = front(ep.host, ep.port);
    await waitFor(() => sent.length === 1);
    broker.endpoints('A', [], 8);
    await f.closed;
    expect(sent.some((x) => x.msg.type === 'tunnel.cancel')).toBe(true);
  });
});
