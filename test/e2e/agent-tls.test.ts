// The agent channel over TLS, with real processes: an agent and its dockerd in a network namespace
// this test creates, joined to this one by a veth pair, connect to the server's --agent-listen on
// the veth address with nothing but the printed key. A relay in the test records the raw bytes on
// that wire; a TLS endpoint with another CA plays the man in the middle.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createTcpServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issueServerCert, spkiPin } from '../../src/tls/ca.js';
import { peerChain } from '../../src/tls/verify.js';
import { BERTH_BIN, type BerthProcess, inNetns, startBerth } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, type Logged, spawnLogged, waitUntil } from './support/proc.js';
import { startRedis } from './support/redis.js';

useCleanup();

// A /24 of our own for the veth pair, varied per run so that parallel runs do not meet.
const NET = 10 + ((process.pid % 200) + 20);
const SERVER_IP = `10.243.${NET}.1`;
const AGENT_IP = `10.243.${NET}.2`;
const VETH = `btls${process.pid % 100000}`;
const HOST = 'tls-web.test';
const WEB_PORT = 18_000 + (process.pid % 1000);
const BODY = 'served from inside the namespace';

let h: TestDockerd;
let berth: BerthProcess;
let agentPort: number;
let key: string;
let pin: string;
let agent: Logged;
let relay: Relay;

/** A TCP relay that keeps every byte it passes, both ways: the capture of the wire. */
interface Relay {
  port: number;
  bytes(): Buffer;
  close(): void;
}

async function startRelay(
  listenHost: string,
  to: { host: string; port: number; localAddress?: string },
): Promise<Relay> {
  const chunks: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createTcpServer((client) => {
    const upstream = netConnect({
      host: to.host,
      port: to.port,
      ...(to.localAddress ? { localAddress: to.localAddress } : {}),
    });
    sockets.add(client).add(upstream);
    client.on('data', (d) => {
      chunks.push(d);
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      chunks.push(d);
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  const port = await freePort(listenHost);
  await new Promise<void>((r) => server.listen(port, listenHost, () => r()));
  const r: Relay = {
    port,
    bytes: () => Buffer.concat(chunks),
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
  registerCleanup(() => r.close());
  return r;
}

/** `berth agent` inside the namespace, with the key in its environment only. */
function startNsAgent(name: string, server: string, agentKey: string, extra: string[] = []): Logged {
  const dir = mkdtempSync(join(tmpdir(), 'btls-agent-'));
  const [cmd, args] = inNetns(h.netns, process.execPath, [
    BERTH_BIN,
    'agent',
    '--server',
    server,
    '--docker',
    h.dockerHost,
    '--host-ip',
    AGENT_IP,
    '--name',
    name,
    '--data-dir',
    dir,
    '--report-interval',
    '1s',
    '--log-level',
    'debug',
    ...extra,
  ]);
  const p = spawnLogged(cmd, args, {
    env: { ...process.env, BERTH_AGENT_KEY: agentKey },
    logFile: join(dir, 'agent.log'),
  });
  registerCleanup(async () => {
    await p.stop('SIGTERM', 10_000);
    rmSync(dir, { recursive: true, force: true });
  });
  return p;
}

/** The pin of the CA a TLS listener presents (the last certificate of its chain). */
async function presentedPin(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host, port, rejectUnauthorized: false }, () => {
      const chain = peerChain(s.getPeerCertificate(true));
      s.destroy();
      resolve(spkiPin(chain[chain.length - 1]!));
    });
    s.on('error', reject);
  });
}

async function agentNames(b: BerthProcess): Promise<string[]> {
  const r = await b.cli(['agents', 'list', '--json']);
  if (r.code !== 0) throw new Error(`agents list failed: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { name: string }[]).map((a) => a.name);
}

beforeAll(async () => {
  h = await startDockerd({ name: 'tls', netns: true });
  execFileSync('ip', ['link', 'add', VETH, 'type', 'veth', 'peer', 'name', `${VETH}n`, 'netns', h.netns!]);
  registerCleanup(() => {
    try {
      execFileSync('ip', ['link', 'del', VETH], { stdio: 'ignore' });
    } catch {
      // gone with the namespace already
    }
  });
  execFileSync('ip', ['addr', 'add', `${SERVER_IP}/24`, 'dev', VETH]);
  execFileSync('ip', ['link', 'set', VETH, 'up']);
  execFileSync('ip', ['-n', h.netns!, 'addr', 'add', `${AGENT_IP}/24`, 'dev', `${VETH}n`]);
  execFileSync('ip', ['-n', h.netns!, 'link', 'set', `${VETH}n`, 'up']);
  await importBusybox(h);
  await runHostContainer(h, 'web', { 'berth.host': HOST, 'berth.port': String(WEB_PORT) }, [
    'sh',
    '-c',
    `mkdir -p /w && echo "${BODY}" > /w/index.html && exec httpd -f -p ${AGENT_IP}:${WEB_PORT} -h /w`,
  ]);

  agentPort = await freePort(SERVER_IP);
  berth = await startBerth({
    command: 'server',
    args: ['--agent-listen', `${SERVER_IP}:${agentPort}`, '--public-name', SERVER_IP],
  });
  // The agent's connection comes through the relay (from SERVER_IP): its routes may point at AGENT_IP.
  const created = await berth.cli([
    'keys',
    'create',
    '--name',
    'tls-hosts',
    '--auto-approve',
    '--upstreams',
    `${AGENT_IP}/32`,
  ]);
  expect(created.code, created.stderr).toBe(0);
  key = /^\s+(berth_agent_\S+)$/m.exec(created.stdout)?.[1] ?? '';
  pin = key.split('.')[1] ?? '';
  relay = await startRelay(SERVER_IP, { host: SERVER_IP, port: agentPort });
});

afterAll(async () => {
  await agent?.stop();
  await berth?.stop();
});

describe('agents over TLS', () => {
  it('prints one key string that pins the CA the agent listener presents', async () => {
    expect(key).toMatch(/^berth_agent_[A-Za-z0-9_-]{32}\.[A-Za-z0-9_-]{43}$/);
    expect(await presentedPin(SERVER_IP, agentPort)).toBe(pin);
    const shown = await berth.cli(['keys', 'show', 'tls-hosts']);
    expect(shown.stdout).toContain(`server pin: sha256:${pin}`);
    expect(shown.stdout).toContain(`agents connect to: https://${SERVER_IP}:${agentPort}`);
    // The CA's private key is in no API answer.
    const json = await berth.cli(['keys', 'show', 'tls-hosts', '--json']);
    expect(json.stdout).not.toMatch(/PRIVATE KEY/);
    expect(berth.output()).not.toMatch(/PRIVATE KEY/);
  });

  it('an agent in another namespace joins with only the key, and its routes serve at the front door', async () => {
    agent = startNsAgent('ns-host', `https://${SERVER_IP}:${relay.port}`, key);
    await agent.waitFor(/registered with server/, 30_000);
    await waitUntil(
      async () => {
        const r = await httpGet(`http://127.0.0.1:${berth.httpPort}/`, { host: HOST });
        return r.status === 200 && r.body.includes(BODY);
      },
      {
        timeoutMs: 30_000,
        message: async () =>
          `${HOST} never served: ${JSON.stringify(await berth.routes())}\n${agent.output()}\n${berth.output()}`,
      },
    );
    const agents = JSON.parse((await berth.cli(['agents', 'list', '--json'])).stdout);
    const a = agents.find((x: { name: string }) => x.name === 'ns-host');
    expect(a).toMatchObject({ status: 'online', hostIp: AGENT_IP });
    expect(a.cleartext).toBeUndefined();
    expect(agent.output()).not.toMatch(/without TLS/);
  });

  it('puts no key, hostname or label text on the wire', async () => {
    // A few heartbeats and a snapshot have crossed by now.
    await agent.waitFor((o) => (o.match(/registered with server/g) ?? []).length >= 1);
    const wire = relay.bytes();
    expect(wire.length).toBeGreaterThan(2_000);
    expect(wire[0]).toBe(0x16); // a TLS handshake record first
    const text = wire.toString('latin1');
    for (const secret of [
      key.split('.')[0]!,
      key.split('.')[0]!.slice(12),
      'ns-host',
      HOST,
      'berth.host',
      'Bearer',
      'snapshot',
      'heartbeat',
    ])
      expect(text, `"${secret}" crossed the wire in clear`).not.toContain(secret);
  });

  it('refuses a man in the middle with another CA: nothing sent, nothing registered, both fingerprints named', async () => {
    const mitmCa = createCa({ commonName: 'Mallory CA' });
    const mitmPin = spkiPin(mitmCa.cert);
    const leaf = issueServerCert(mitmCa, { names: [SERVER_IP] });
    let plaintext = 0;
    const mitm = createTlsServer(leaf, (sock) => {
      // It would pass everything on to the real server; the agent must never get this far.
      const up = tlsConnect({ host: SERVER_IP, port: agentPort, rejectUnauthorized: false });
      sock.on('data', (d) => {
        plaintext += d.length;
        up.write(d);
      });
      up.on('data', (d) => sock.write(d));
      sock.on('error', () => up.destroy());
      up.on('error', () => sock.destroy());
    });
    mitm.on('tlsClientError', () => {});
    const mitmPort = await freePort(SERVER_IP);
    await new Promise<void>((r) => mitm.listen(mitmPort, SERVER_IP, () => r()));
    registerCleanup(() => mitm.close());

    const victim = startNsAgent('mitm-victim', `https://${SERVER_IP}:${mitmPort}`, key);
    await victim.waitFor(/not from the CA this key pins/, 20_000);
    const line = victim
      .output()
      .split('\n')
      .find((l) => /not from the CA this key pins/.test(l))!;
    expect(line).toContain(`the key pins sha256:${pin}`);
    expect(line).toContain(`the server presented sha256:${mitmPin}`);
    expect(line).toContain('CN=Mallory CA');
    expect(JSON.parse(line)).toMatchObject({ problem: 'pin-mismatch', retryInMs: 30_000 });
    expect(line).not.toContain(key.split('.')[0]!);
    expect(plaintext).toBe(0);
    expect(await agentNames(berth)).not.toContain('mitm-victim');
    await victim.stop();
  });

  it('refuses http:// to the veth address at start (exit 2); with --insecure-transport it connects, warned and marked', async () => {
    const plain = startNsAgent('plain', `http://${SERVER_IP}:${agentPort}`, key);
    expect(await plain.exited).toBe(2);
    const ip = SERVER_IP.replace(/\./g, '\\.');
    expect(plain.output()).toMatch(
      new RegExp(`--server http://${ip}:\\d+: plain http:// to ${ip} would send the agent key`),
    );
    expect(plain.output()).not.toContain(key.split('.')[0]!);
    expect(await agentNames(berth)).not.toContain('plain');

    // The API's plain agent path, reached from the veth address (a relay from SERVER_IP to the
    // loopback API), as an agent from before TLS would: allowed with --insecure-transport.
    const api = new URL(berth.apiUrl);
    const toApi = await startRelay(SERVER_IP, {
      host: '127.0.0.1',
      port: Number(api.port),
      localAddress: SERVER_IP,
    });
    // With --tunnel: its data connections (the pre-opened ones) cross in clear too, and say so.
    const insecure = startNsAgent('plain-ok', `http://${SERVER_IP}:${toApi.port}`, key, [
      '--insecure-transport',
      '--tunnel',
    ]);
    await insecure.waitFor(/registered with server/, 20_000);
    expect(insecure.output()).toMatch(
      /without TLS \(--insecure-transport\): the agent key, snapshots and exec output cross the network in clear/,
    );
    await waitUntil(async () => /agent plain-ok connected without TLS from 10\.243/.test(berth.output()), {
      timeoutMs: 10_000,
      message: () => berth.output(),
    });
    await waitUntil(
      async () =>
        /a tunnel data connection of key tls-hosts came without TLS from 10\.243/.test(berth.output()),
      { timeoutMs: 10_000, message: () => berth.output() },
    );
    const listed = JSON.parse((await berth.cli(['agents', 'list', '--json'])).stdout);
    expect(listed.find((a: { name: string }) => a.name === 'plain-ok')).toMatchObject({ cleartext: true });
    expect(listed.find((a: { name: string }) => a.name === 'ns-host').cleartext).toBeUndefined();
    expect((await berth.cli(['agents', 'list'])).stdout).toMatch(/plain-ok\s+online, no TLS/);
    await insecure.stop();
    toApi.close();
    expect((await berth.cli(['agents', 'remove', 'plain-ok'])).code).toBe(0);
  });

  it('keeps the CA across a restart: the same pin, and the agent reconnects with the same key', async () => {
    await berth.stop();
    await berth.restart();
    expect(await presentedPin(SERVER_IP, agentPort)).toBe(pin);
    expect((await berth.cli(['keys', 'show', 'tls-hosts'])).stdout).toContain(`sha256:${pin}`);
    await agent.waitFor((o) => (o.match(/registered with server/g) ?? []).length >= 2, 30_000);
    await waitUntil(
      async () => {
        const agents = JSON.parse((await berth.cli(['agents', 'list', '--json'])).stdout);
        return agents.some(
          (a: { name: string; status: string }) => a.name === 'ns-host' && a.status === 'online',
        );
      },
      { timeoutMs: 20_000, message: () => `the agent never came back:\n${agent.output()}` },
    );
  });

  it('closes a revoked key’s connection over TLS, and refuses it from then on', async () => {
    const r = await berth.cli(['keys', 'revoke', 'tls-hosts']);
    expect(r.code, r.stderr).toBe(0);
    await agent.waitFor(/"code":4003.*disconnected from server/, 10_000);
    await agent.waitFor(/server refused the agent: unknown, revoked or expired agent key/, 20_000);
  });
});

describe('agents over TLS with a shared Redis store', () => {
  it('two replicas present the same CA', async () => {
    const redis = await startRedis();
    registerCleanup(() => redis.stop());
    const env = { BERTH_ADMIN_TOKEN: 'berth_admin_tls-replicas-test-token-0123456789' };
    const [a, b] = await Promise.all(
      [0, 1].map(() => startBerth({ command: 'server', env, args: ['--store', redis.url] })),
    );
    const pinOf = (x: BerthProcess) => {
      const u = new URL(x!.agentUrl);
      return presentedPin(u.hostname, Number(u.port));
    };
    const [pa, pb] = await Promise.all([pinOf(a!), pinOf(b!)]);
    expect(pa).toBe(pb);
    expect(pa).not.toBe(pin); // its own store, its own CA
    // Keys made on either replica carry that pin.
    const k = await b!.cli(['keys', 'create', '--name', 'replicated', '--json']);
    expect(JSON.parse(k.stdout).secret.split('.')[1]).toBe(pa);
    await Promise.all([a!.stop(), b!.stop()]);
  });
});

describe('an operator chain (--agent-tls-cert) and --ca-file', () => {
  it('presents the operator chain, keys pin its last certificate, an old key joins with --ca-file, an uncovered address is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'btls-op-'));
    registerCleanup(() => rmSync(dir, { recursive: true, force: true }));
    const ca = createCa({ commonName: 'Operator CA' });
    const leaf = issueServerCert(ca, { names: ['127.0.0.1'] });
    writeFileSync(join(dir, 'chain.pem'), leaf.cert);
    writeFileSync(join(dir, 'key.pem'), leaf.key, { mode: 0o600 });
    writeFileSync(join(dir, 'ca.pem'), ca.cert);
    const b = await startBerth({
      command: 'server',
      args: ['--agent-tls-cert', join(dir, 'chain.pem'), '--agent-tls-key', join(dir, 'key.pem')],
    });
    const u = new URL(b.agentUrl);
    expect(await presentedPin(u.hostname, Number(u.port))).toBe(spkiPin(ca.cert));
    const k = JSON.parse(
      (await b.cli(['keys', 'create', '--name', 'op', '--auto-approve', '--json'])).stdout,
    );
    expect(k.secret.split('.')[1]).toBe(spkiPin(ca.cert));
    expect((await b.cli(['keys', 'show', 'op'])).stdout).toMatch(/the last certificate of --agent-tls-cert/);
    // A rotation prints a new pinned key; the old one stays valid for the overlap.
    const rotated = await b.cli(['keys', 'rotate', 'op']);
    expect(rotated.stdout).toMatch(new RegExp(`berth_agent_[A-Za-z0-9_-]{32}\\.${spkiPin(ca.cert)}`));

    // An agent from before pins: the old key string (no pin), the operator's CA in --ca-file.
    const oldKey = k.secret.split('.')[0];
    const adir = mkdtempSync(join(tmpdir(), 'btls-opa-'));
    registerCleanup(() => rmSync(adir, { recursive: true, force: true }));
    const p = spawnLogged(
      process.execPath,
      [
        BERTH_BIN,
        'agent',
        '--server',
        b.agentUrl,
        '--ca-file',
        join(dir, 'ca.pem'),
        '--docker',
        `unix://${join(adir, 'no-docker.sock')}`,
        '--data-dir',
        adir,
        '--name',
        'op-agent',
      ],
      { env: { ...process.env, BERTH_AGENT_KEY: oldKey } },
    );
    registerCleanup(() => p.stop('SIGTERM', 10_000));
    await p.waitFor(/registered with server/, 20_000);
    expect(p.output()).not.toMatch(/carries no server pin/); // --ca-file is the check here
    await p.stop();
    // Without --ca-file, that old key checks the system CAs, which do not know this one.
    const q = spawnLogged(
      process.execPath,
      [
        BERTH_BIN,
        'agent',
        '--server',
        b.agentUrl,
        '--docker',
        `unix://${join(adir, 'no-docker.sock')}`,
        '--data-dir',
        adir,
      ],
      { env: { ...process.env, BERTH_AGENT_KEY: oldKey } },
    );
    registerCleanup(() => q.stop('SIGTERM', 10_000));
    await q.waitFor(/this agent key carries no server pin/, 10_000);
    await q.waitFor(/the server's certificate is not trusted: .*this key has no pin/, 20_000);
    await q.stop();

    // The right CA, but an address its certificate does not cover (127.0.0.3, through a relay).
    const detour = await startRelay('127.0.0.3', { host: u.hostname, port: Number(u.port) });
    const w = spawnLogged(
      process.execPath,
      [
        BERTH_BIN,
        'agent',
        '--server',
        `https://127.0.0.3:${detour.port}`,
        '--docker',
        `unix://${join(adir, 'no-docker.sock')}`,
        '--data-dir',
        adir,
        '--name',
        'wrong-address',
      ],
      { env: { ...process.env, BERTH_AGENT_KEY: k.secret } },
    );
    registerCleanup(() => w.stop('SIGTERM', 10_000));
    await w.waitFor(
      /does not cover 127\.0\.0\.3 \(it covers IP Address:127\.0\.0\.1\).*--public-name 127\.0\.0\.3/,
      20_000,
    );
    await w.stop();
    expect(await agentNames(b)).not.toContain('wrong-address');
    await b.stop();
  });
});
