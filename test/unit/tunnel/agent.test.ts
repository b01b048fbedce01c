// The agent's side of tunnels with real loopback sockets: it dials only its own routes' upstreams,
// keeps to --tunnel-max-streams, and checks an open request on a pre-opened connection as one from
// the WebSocket. The "server" here answers data connections' upgrades and records them.
import { createServer, type Server, type Socket } from 'node:net';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_DIALS, TunnelClient } from '../../../src/agent/tunnel.js';
import { renderMetrics } from '../../../src/metrics.js';
import type { TunnelFailed } from '../../../src/model/protocol.js';
import type { RouteSpec } from '../../../src/model/types.js';

let upstream: Server;
let upstreamPort: number;
let dialed: number;
let server: Server;
let serverPort: number;
let dataConns: { sock: Socket; head: string }[];
let failed: TunnelFailed[];
let client: TunnelClient;
/** While set, the server holds its answers to data connections here. */
let held: (() => void)[] | undefined;

const listen = (s: Server) =>
  new Promise<number>((r) => s.listen(0, '127.0.0.1', () => r((s.address() as { port: number }).port)));
const route = (port: number): RouteSpec => ({
  id: 'c/default',
  group: 'default',
  hosts: ['a.test'],
  path: '/',
  stripPath: false,
  upstream: { host: '127.0.0.1', port, scheme: 'http' },
  containerId: 'c',
  containerName: 'n',
  containerCreated: 1,
});
/** One sample of the client's metrics, as Prometheus would read it. */
const metric = (c: TunnelClient, sample: string) => {
  const line = renderMetrics(c.metrics())
    .split('\n')
    .find((l) => l.startsWith(`${sample} `));
  return line === undefined ? undefined : Number(line.slice(sample.length + 1));
};
const waitFor = async (ok: () => boolean) => {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(ok()).toBe(true);
};

function makeClient(maxStreams: number): TunnelClient {
  const c = new TunnelClient({
    maxStreams,
    logger: pino({ level: 'silent' }),
    target: () => ({ server: `http://127.0.0.1:${serverPort}`, trust: {}, key: 'secret', agentId: 'ag1' }),
    send: (m) => failed.push(m),
  });
  c.setRoutes({ routes: [route(upstreamPort)], tcp: [] });
  return c;
}

beforeEach(async () => {
  held = undefined;
  dialed = 0;
  dataConns = [];
  failed = [];
  upstream = createServer({ allowHalfOpen: true }, (s) => {
    dialed++;
    s.on('data', (d) => s.write(`echo:${d}`));
    s.on('error', () => {});
  });
  upstreamPort = await listen(upstream);
  server = createServer({ allowHalfOpen: true }, (sock) => {
    let head = '';
    const onData = (d: Buffer) => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      sock.off('data', onData);
      dataConns.push({ sock, head });
      const answer = () =>
        sock.write(
          'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: berth-tunnel/1\r\n\r\n',
        );
      if (held) held.push(answer);
      else answer();
    };
    sock.on('data', onData);
    sock.on('error', () => {});
  });
  serverPort = await listen(server);
  client = makeClient(2);
});

afterEach(() => {
  client.closeAll();
  for (const c of dataConns) c.sock.destroy();
  upstream.close();
  server.close();
});

describe('TunnelClient', () => {
  it("opens a stream to its own route's upstream over a data connection carrying its key", async () => {
    client.handleOpen({ type: 'tunnel.open', id: 5, host: '127.0.0.1', port: upstreamPort });
    await waitFor(() => dataConns.length === 1);
    const { sock, head } = dataConns[0]!;
    expect(head).toMatch(/^GET \/agent\/v1\/tunnel HTTP\/1\.1\r\n/);
    expect(head).toContain('Authorization: Bearer secret\r\n');
    expect(head).toContain('X-Berth-Agent-Id: ag1\r\n');
    expect(head).toContain('X-Berth-Stream: 5\r\n');
    const answer = new Promise<string>((r) => sock.once('data', (d) => r(d.toString())));
    await waitFor(() => client.open === 1 && dialed === 1);
    sock.write('hello');
    expect(await answer).toBe('echo:hello');
    expect(failed).toEqual([]);
  });

  it('refuses anything else without dialing it or the server', async () => {
    client.handleOpen({ type: 'tunnel.open', id: 6, host: '127.0.0.1', port: serverPort });
    client.handleOpen({ type: 'tunnel.open', id: 7, host: '10.0.0.1', port: upstreamPort });
    expect(failed.map((f) => [f.id, f.code])).toEqual([
      [6, 'REFUSED'],
      [7, 'REFUSED'],
    ]);
    await new Promise((r) => setTimeout(r, 50));
    expect(dataConns).toEqual([]);
    expect(dialed).toBe(0);
    expect(client.counters.refused).toBe(2);
  });

  it(`opens at most ${MAX_DIALS} data connections at once; the other streams wait their turn`, async () => {
    client.closeAll();
    client = makeClient(16);
    held = [];
    for (let id = 1; id <= 10; id++)
      client.handleOpen({ type: 'tunnel.open', id, host: '127.0.0.1', port: upstreamPort });
    await waitFor(() => dataConns.length === MAX_DIALS);
    await new Promise((r) => setTimeout(r, 100));
    // Unanswered, the first turns are still taken: nobody else has dialed.
    expect(dataConns.length).toBe(MAX_DIALS);
    expect(metric(client, 'berth_agent_tunnel_dials{state="waiting"}')).toBe(10 - MAX_DIALS);
    for (let answered = 0; answered < 10; answered++) {
      await waitFor(() => held!.length > answered);
      held[answered]!();
    }
    await waitFor(() => dataConns.length === 10 && client.open === 10 && dialed === 10);
    const ids = dataConns.map((c) => Number(/X-Berth-Stream: (\d+)/.exec(c.head)![1]));
    expect(ids).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    // Every turn given back once the last answers are read.
    await waitFor(() => metric(client, 'berth_agent_tunnel_dials{state="opening"}') === 0);
    expect(failed).toEqual([]);
  });

  it('keeps to --tunnel-max-streams', async () => {
    for (const id of [1, 2, 3])
      client.handleOpen({ type: 'tunnel.open', id, host: '127.0.0.1', port: upstreamPort });
    expect(failed).toEqual([expect.objectContaining({ id: 3, code: 'BUSY' })]);
    await waitFor(() => dataConns.length === 2);
  });

  it('checks an open request on a pre-opened connection as one from the WebSocket', async () => {
    client.closeAll();
    client = makeClient(16);
    client.linkUp();
    await waitFor(() => dataConns.length === 4); // the pool
    expect(dataConns[0]!.head).toContain('X-Berth-Stream: pool\r\n');
    const [a, b, c] = dataConns;
    // Its own upstream: dialed, and the bytes after the line reach it.
    const answer = new Promise<string>((r) => a!.sock.once('data', (d) => r(d.toString())));
    a!.sock.write(
      `${JSON.stringify({ type: 'tunnel.open', id: 11, host: '127.0.0.1', port: upstreamPort })}\nping`,
    );
    expect(await answer).toBe('echo:ping');
    // Another address: refused, reset, answered on the WebSocket.
    const closed = new Promise((r) => b!.sock.once('close', r));
    b!.sock.write(
      `${JSON.stringify({ type: 'tunnel.open', id: 12, host: '127.0.0.1', port: serverPort })}\n`,
    );
    await closed;
    // Not a valid request at all.
    const closed2 = new Promise((r) => c!.sock.once('close', r));
    c!.sock.write('{"type":"tunnel.open","id":13,"host":"evil.example","port":80}\n');
    await closed2;
    await waitFor(() => failed.length === 2);
    expect(failed.map((f) => [f.id, f.code])).toEqual([
      [12, 'REFUSED'],
      [13, 'REFUSED'],
    ]);
    expect(dialed).toBe(1);
    // Used connections are replaced.
    await waitFor(() => dataConns.length >= 6);
  });
});
