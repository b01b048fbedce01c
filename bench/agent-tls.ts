// What TLS costs the agent channel: one `berth server`, agents simulated in this process speaking
// the real protocol, over TLS to --agent-listen (the chain checked against the key's pin, as
// `berth agent` does, by the same code) and in clear to the API's agent path, side by side.
//
//   connect: TCP + TLS handshake (pin check included), then the WebSocket upgrade (key checked,
//            agent registered) to the welcome, then the first snapshot (50 routes) until the
//            server lists its routes; fresh agents, rounds alternating TLS / plain
//   heartbeat round trip: WebSocket ping → pong with each heartbeat, one connection each, with
//            `--background N` other agents heartbeating meanwhile (both kinds, half each)
//
//   npm run build && npx tsx bench/agent-tls.ts [--rounds 20] [--pings 500] [--background 200] [--json]
import { randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import WebSocket from 'ws';
import { secureDial } from '../src/agent/dial.js';
import { parseAgentKey } from '../src/model/agent-key.js';
import { AGENT_PATH } from '../src/model/protocol.js';
import type { Snapshot } from '../src/model/types.js';
import { startBerth } from '../test/e2e/support/berth.js';
import { cleanupOnExit, flag, loadavg, pct, procSample, sleep } from './lib.js';

const ROUNDS = flag('rounds', 20);
const PINGS = flag('pings', 500);
const BACKGROUND = process.argv.includes('--background') ? flag('background', 200) : 200;
const ROUTES = 50;
const asJson = process.argv.includes('--json');
const done = cleanupOnExit();

type Kind = 'tls' | 'plain';

function snapshot(agentId: string, name: string): Snapshot {
  const containers = Array.from({ length: ROUTES }, (_, j) => ({
    id: randomBytes(32).toString('hex'),
    name: `${name}-c${j}`,
  }));
  return {
    agentId,
    generation: 1,
    hostIp: '127.0.0.1',
    takenAt: Date.now(),
    containers: containers.map((c) => ({
      id: c.id,
      name: c.name,
      state: 'running',
      health: 'none' as const,
      labelled: true,
    })),
    routes: containers.map((c, j) => ({
      id: `${c.id}/default`,
      group: 'default',
      hosts: [`c${j}.${name}.tlsbench.test`],
      path: '/',
      stripPath: false,
      upstream: { host: '127.0.0.1', port: 9 + j, scheme: 'http' as const },
      containerId: c.id,
      containerName: c.name,
      containerCreated: Math.floor(Date.now() / 1000) - 60,
    })),
    tcp: [],
    diagnostics: [],
  };
}

interface Conn {
  ws: WebSocket;
  agentId: string;
  tcpTlsMs: number;
  welcomeMs: number;
}

async function connect(
  kind: Kind,
  urls: { api: string; agent: string },
  key: { secret: string; pin?: string },
  name: string,
): Promise<Conn> {
  const t0 = performance.now();
  let socket: TLSSocket | undefined;
  const url =
    kind === 'tls'
      ? `${urls.agent.replace(/^https/, 'wss')}${AGENT_PATH}`
      : `${urls.api.replace(/^http/, 'ws')}${AGENT_PATH}`;
  if (kind === 'tls') socket = await secureDial(new URL(url), { pin: key.pin });
  const t1 = performance.now();
  const ws = new WebSocket(url, {
    headers: {
      authorization: `Bearer ${key.secret}`,
      'x-berth-agent-name': name,
      'x-berth-agent-version': 'bench',
    },
    perMessageDeflate: false,
    ...(socket ? { createConnection: () => socket } : {}),
  });
  const agentId = await new Promise<string>((resolve, reject) => {
    ws.once('message', (d) => resolve(JSON.parse(d.toString()).agentId));
    ws.once('unexpected-response', (_q, r) => reject(new Error(`upgrade refused: ${r.statusCode}`)));
    ws.once('error', reject);
  });
  return { ws, agentId, tcpTlsMs: t1 - t0, welcomeMs: performance.now() - t1 };
}

async function main(): Promise<void> {
  const berth = await startBerth({ command: 'server', args: ['--log-level', 'warn'] });
  const admin = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${berth.apiUrl}${path}`, {
      headers: { authorization: `Bearer ${berth.token}` },
    });
    return (await res.json()) as T;
  };
  // A key enrols at most 60 new agents a minute: a fresh key every 50 agents.
  let keys = 0;
  let enrolled = 0;
  let key = parseAgentKey('x');
  const nextKey = async () => {
    const created = await berth.cli([
      'keys',
      'create',
      '--name',
      `bench-${keys++}`,
      '--auto-approve',
      '--json',
    ]);
    key = parseAgentKey(JSON.parse(created.stdout).secret);
    if (!key.pin) throw new Error('the key carries no pin');
  };
  await nextKey();
  const fresh = async () => {
    if (++enrolled % 50 === 0) await nextKey();
    return key;
  };
  const urls = { api: berth.apiUrl, agent: berth.agentUrl };
  const say = (s: string) => !asJson && console.log(s);
  say(`agent channel: TLS (${berth.agentUrl}) against plain (${berth.apiUrl}); load ${loadavg()}`);

  // ---- connect and first snapshot, fresh agents, alternating
  const res: Record<Kind, { handshake: number[]; welcome: number[]; snapshot: number[]; total: number[] }> = {
    tls: { handshake: [], welcome: [], snapshot: [], total: [] },
    plain: { handshake: [], welcome: [], snapshot: [], total: [] },
  };
  for (let i = 0; i < ROUNDS; i++) {
    for (const kind of (i % 2 ? ['plain', 'tls'] : ['tls', 'plain']) as Kind[]) {
      const name = `${kind}-r${i}`;
      const c = await connect(kind, urls, await fresh(), name);
      const t = performance.now();
      c.ws.send(JSON.stringify({ type: 'snapshot', snapshot: snapshot(c.agentId, name) }));
      for (;;) {
        const { agents } = await admin<{ agents: { id: string; routes: number }[] }>('/api/agents');
        if (agents.find((a) => a.id === c.agentId)?.routes === ROUTES) break;
        await sleep(2);
      }
      const snapMs = performance.now() - t;
      res[kind].handshake.push(c.tcpTlsMs);
      res[kind].welcome.push(c.welcomeMs);
      res[kind].snapshot.push(snapMs);
      res[kind].total.push(c.tcpTlsMs + c.welcomeMs + snapMs);
      c.ws.close();
      await admin(`/api/agents`); // settle
    }
  }

  // ---- heartbeat round trips with a fleet heartbeating meanwhile
  const background: WebSocket[] = [];
  for (let i = 0; i < BACKGROUND; i++) {
    const kind: Kind = i % 2 ? 'plain' : 'tls';
    const c = await connect(kind, urls, await fresh(), `bg-${i}`);
    c.ws.send(JSON.stringify({ type: 'snapshot', snapshot: snapshot(c.agentId, `bg-${i}`) }));
    background.push(c.ws);
  }
  const beat = (ws: WebSocket) =>
    ws.send(JSON.stringify({ type: 'heartbeat', version: 'bench', intervalMs: 1000, sentAt: Date.now() }));
  const fleet = setInterval(() => {
    for (const ws of background) beat(ws);
  }, 1000);
  const probes = {
    tls: await connect('tls', urls, await fresh(), 'probe-tls'),
    plain: await connect('plain', urls, await fresh(), 'probe-plain'),
  };
  const rtt: Record<Kind, number[]> = { tls: [], plain: [] };
  const before = procSample(berth.pid);
  for (let i = 0; i < PINGS; i++) {
    for (const kind of (i % 2 ? ['plain', 'tls'] : ['tls', 'plain']) as Kind[]) {
      const ws = probes[kind].ws;
      const t = performance.now();
      await new Promise<void>((resolve) => {
        ws.once('pong', () => resolve());
        beat(ws);
        ws.ping();
      });
      rtt[kind].push(performance.now() - t);
    }
    await sleep(10);
  }
  const after = procSample(berth.pid);
  clearInterval(fleet);
  for (const ws of [...background, probes.tls.ws, probes.plain.ws]) ws.close();

  const ms = (xs: number[], p: number) => Number(pct(xs, p).toFixed(2));
  const summary = {
    rounds: ROUNDS,
    routesPerSnapshot: ROUTES,
    background: BACKGROUND,
    pings: PINGS,
    ...Object.fromEntries(
      (['tls', 'plain'] as Kind[]).map((k) => [
        k,
        {
          handshakeMsP50: ms(res[k].handshake, 50),
          welcomeMsP50: ms(res[k].welcome, 50),
          firstSnapshotMsP50: ms(res[k].snapshot, 50),
          connectToSnapshotMsP50: ms(res[k].total, 50),
          connectToSnapshotMsP99: ms(res[k].total, 99),
          heartbeatRttMsP50: ms(rtt[k], 50),
          heartbeatRttMsP99: ms(rtt[k], 99),
        },
      ]),
    ),
    serverRssMb: after ? Number(after.rssMb.toFixed(0)) : undefined,
    serverCpuSecondsDuringPings:
      before && after ? Number((after.cpuSeconds - before.cpuSeconds).toFixed(2)) : undefined,
    load: loadavg(),
  } as Record<string, unknown>;
  if (asJson) console.log(JSON.stringify(summary));
  else {
    const row = (label: string, f: (k: Kind) => string) =>
      console.log(`  ${label.padEnd(52)} ${f('tls').padStart(10)} ${f('plain').padStart(10)}`);
    console.log(`\n  ${''.padEnd(52)} ${'TLS'.padStart(10)} ${'plain'.padStart(10)}`);
    const s = summary as Record<Kind, Record<string, number>>;
    row('TCP + TLS handshake, pin checked (plain: -), p50 ms', (k) => s[k].handshakeMsP50!.toFixed(2));
    row('upgrade to welcome (plain: with TCP), p50 ms', (k) => s[k].welcomeMsP50!.toFixed(2));
    row(`first snapshot (${ROUTES} routes) stored, p50 ms`, (k) => s[k].firstSnapshotMsP50!.toFixed(2));
    row('connect → snapshot stored, p50 ms', (k) => s[k].connectToSnapshotMsP50!.toFixed(2));
    row('connect → snapshot stored, p99 ms', (k) => s[k].connectToSnapshotMsP99!.toFixed(2));
    row(`heartbeat round trip p50 ms (${BACKGROUND} agents beating)`, (k) =>
      s[k].heartbeatRttMsP50!.toFixed(2),
    );
    row('heartbeat round trip p99 ms', (k) => s[k].heartbeatRttMsP99!.toFixed(2));
    console.log(
      `  ${ROUNDS} rounds each; ${PINGS} pings each; server RSS ${summary.serverRssMb} MiB; load ${summary.load}`,
    );
  }
  await berth.stop();
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(done);
