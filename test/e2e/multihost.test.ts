// One berth server and its Caddy; two simulated hosts, each a private dockerd with its own
// loopback address (127.0.0.2, 127.0.0.3) and a `berth agent` enrolled with its own key.
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runWebContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';
import { type SocketProxy, startReadOnlyProxy } from './support/socket-proxy.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
let server: BerthProcess;
let h2: TestDockerd;
let h3: TestDockerd;
const agents: Record<string, AgentProcess> = {};
let proxy: SocketProxy;

const web = (d: TestDockerd, ip: string, name: string, labels: Record<string, string>) =>
  runWebContainer(d, name, labels, { ip, body: `${name}@${ip}` });

const get = (host: string) => httpGet(`http://127.0.0.1:${server.httpPort}/`, { host });
const serves = (host: string, body: string, timeoutMs = 20_000) =>
  waitUntil(async () => (await get(host)).body.includes(body), {
    timeoutMs,
    intervalMs: 100,
    message: async () =>
      `${host} never served ${body}: ${JSON.stringify(await get(host))}\n${server.output().slice(-3000)}`,
  });
const notServed = (host: string) =>
  waitUntil(async () => (await get(host)).status === 404, {
    timeoutMs: 20_000,
    message: `${host} still served`,
  });

async function keys(args: string[]) {
  const r = await server.cli(['keys', ...args, '--json']);
  if (r.code !== 0) throw new Error(`keys ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

// biome-ignore lint/suspicious/noExplicitAny: tests read whichever fields they check.
async function agentList(): Promise<Record<string, any>[]> {
  const r = await server.cli(['agents', 'list', '--json']);
  return JSON.parse(r.stdout);
}

const agentNamed = async (name: string) => (await agentList()).find((a) => a.name === name);

/**
 * An upgrade request to the agent endpoint with the given key, from 127.0.0.9 so the rate limit it
 * provokes does not touch the agents' address: the status the server answers.
 */
function upgradeStatus(key: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(`${server.apiUrl}/agent/v1/connect`, {
      localAddress: '127.0.0.9',
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        authorization: `Bearer ${key}`,
      },
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 101);
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

beforeAll(async () => {
  [h2, h3] = await Promise.all([startDockerd({ name: 'host2' }), startDockerd({ name: 'host3' })]);
  await Promise.all([importBusybox(h2, IMAGE), importBusybox(h3, IMAGE)]);
  server = await startBerth({
    command: 'server',
    args: ['--offline-grace', '4s', '--agent-heartbeat', '1s'],
  });
});

afterAll(async () => {
  for (const a of Object.values(agents)) await a.stop();
  await server?.stop();
});

describe('multi-host', () => {
  it('refuses unknown and malformed keys with 401, leaves no trace, and rate-limits repeats', async () => {
    expect(await upgradeStatus('berth_agent_not_a_real_key')).toBe(401);
    expect(await upgradeStatus('')).toBe(401);
    expect(await agentList()).toEqual([]);
    // The server allows 10 failures a minute per address; the 11th is refused outright.
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push(await upgradeStatus(`wrong-${i}`));
    expect(statuses.slice(-1)).toEqual([429]);
    expect((await agentList()).length).toBe(0);
  });

  it('enrols an agent as pending, serves its routes only once approved', async () => {
    const k = await keys(['create', '--name', 'host2']);
    expect(k.secret).toMatch(/^berth_agent_/);
    expect(JSON.stringify(await keys(['list']))).not.toContain(k.secret);
    // host2 reads Docker only through a read-only proxy over TCP, as with docker-socket-proxy.
    proxy = await startReadOnlyProxy(h2.socket, '127.0.0.2', await freePort('127.0.0.2'));
    agents.h2 = await startAgent({
      server: server.apiUrl,
      key: k.secret,
      docker: proxy.url,
      hostIp: '127.0.0.2',
      name: 'host2',
    });
    await web(h2, '127.0.0.2', 'app2', { 'berth.host': 'app.h2.test' });
    await waitUntil(async () => (await agentNamed('host2'))?.status === 'pending', {
      timeoutMs: 15_000,
      message: async () =>
        `host2 never pending: ${JSON.stringify(await agentList())}\n${agents.h2!.output()}`,
    });
    await waitUntil(async () => (await server.routes()).some((r) => r.hosts.includes('app.h2.test')), {
      timeoutMs: 15_000,
      message: 'snapshot of a pending agent not stored',
    });
    const pending = (await server.routes()).find((r) => r.hosts.includes('app.h2.test'))!;
    expect(pending.status).toBe('pending');
    expect(pending.note).toMatch(/pending approval/);
    expect((await get('app.h2.test')).status).toBe(404);

    const approved = await server.cli(['agents', 'approve', 'host2']);
    expect(approved.stdout).toMatch(/approved agent host2/);
    await serves('app.h2.test', 'app2@127.0.0.2');
    const a = await agentNamed('host2');
    expect(a).toMatchObject({ status: 'online', hostIp: '127.0.0.2', version: '0.1.0', routes: 1 });
    expect(a!.heartbeatAgeSeconds).toBeLessThan(5);
    expect(a!.dockerVersion).toMatch(/^\d+\./);
    expect(proxy.refused).toEqual([]);
  });

  it('limits a key to its domains: a claim outside is an error on that route only', async () => {
    const k = await keys(['create', '--name', 'host3', '--domains', '*.h3.test,h3.test', '--auto-approve']);
    agents.h3 = await startAgent({
      server: server.apiUrl,
      key: k.secret,
      docker: h3.dockerHost,
      hostIp: '127.0.0.3',
      name: 'host3',
    });
    await web(h3, '127.0.0.3', 'mine3', { 'berth.host': 'mine.h3.test' });
    await web(h3, '127.0.0.3', 'thief3', { 'berth.host': 'app.h2.test,bank.test' });
    await serves('mine.h3.test', 'mine3@127.0.0.3');
    await waitUntil(
      async () => (await server.routes()).find((r) => r.container.name === 'thief3')?.status === 'error',
      {
        timeoutMs: 15_000,
        message: 'thief never rejected',
      },
    );
    const thief = (await server.routes()).find((r) => r.container.name === 'thief3')!;
    expect(thief.errors[0]).toBe(
      'app.h2.test, bank.test are outside the domains allowed for key host3 (*.h3.test, h3.test)',
    );
    expect((await get('app.h2.test')).body).toContain('app2@127.0.0.2');
    expect((await get('bank.test')).status).toBe(404);
  });

  it('load-balances one hostname across hosts with a shared group, and resolves conflicts by age', async () => {
    // host2's key has no --domains: it may claim pool.h3.test while nobody holds it. host3's
    // key names *.h3.test, so host3 may join host2's group there.
    await web(h2, '127.0.0.2', 'pool2', { 'berth.host': 'pool.h3.test', 'berth.group': 'pool' });
    await serves('pool.h3.test', 'pool2@127.0.0.2');
    await web(h3, '127.0.0.3', 'pool3', { 'berth.host': 'pool.h3.test', 'berth.group': 'pool' });
    const seen = new Set<string>();
    await waitUntil(
      async () => {
        seen.add((await get('pool.h3.test')).body.trim());
        return seen.has('pool2@127.0.0.2') && seen.has('pool3@127.0.0.3');
      },
      { timeoutMs: 20_000, intervalMs: 20, message: () => `saw only ${[...seen].join(', ')}` },
    );
    // Same hostname, no shared group: the older container keeps it, the younger shows who won.
    await web(h3, '127.0.0.3', 'solo3', { 'berth.host': 'solo.h3.test' });
    await serves('solo.h3.test', 'solo3@127.0.0.3');
    await new Promise((r) => setTimeout(r, 1100));
    await web(h2, '127.0.0.2', 'solo2', { 'berth.host': 'solo.h3.test' });
    await waitUntil(
      async () => (await server.routes()).find((r) => r.container.name === 'solo2')?.status === 'error',
      {
        timeoutMs: 15_000,
        message: 'no conflict reported',
      },
    );
    const loser = (await server.routes()).find((r) => r.container.name === 'solo2')!;
    expect(loser.errors[0]).toMatch(
      /solo\.h3\.test is already claimed by container solo3 \(\w{12}\) on host3/,
    );
    expect((await get('solo.h3.test')).body).toContain('solo3@127.0.0.3');
  });

  it('keeps an offline agent’s routes for the grace, then withdraws them; a restart is the same agent', async () => {
    const before = await agentNamed('host3');
    await agents.h3!.stop('SIGKILL');
    await waitUntil(async () => (await agentNamed('host3'))?.status === 'offline', {
      timeoutMs: 10_000,
      message: 'never offline',
    });
    expect((await get('mine.h3.test')).body).toContain('mine3'); // within the 4 s grace
    await notServed('mine.h3.test');
    const withdrawn = (await server.routes()).find((r) => r.container.name === 'mine3')!;
    expect(withdrawn.note).toMatch(/offline/);

    await h3.run(['rm', '-f', 'thief3']); // changed while the agent was away
    await agents.h3!.start();
    await serves('mine.h3.test', 'mine3@127.0.0.3');
    const after = await agentList();
    expect(after.filter((a) => a.name === 'host3')).toHaveLength(1);
    expect(after.find((a) => a.name === 'host3')!.id).toBe(before!.id);
    await waitUntil(async () => !(await server.routes()).some((r) => r.container.name === 'thief3'), {
      timeoutMs: 10_000,
      message: 'state from before the outage left behind',
    });
  });

  it('server restart: routes stay, nothing flaps, agents come back', async () => {
    await serves('app.h2.test', 'app2@127.0.0.2');
    let failures = 0;
    let probes = 0;
    let probing = true;
    const probe = (async () => {
      while (probing) {
        probes++;
        if ((await get('app.h2.test')).status !== 200) failures++;
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await server.kill(); // a crash: Caddy keeps serving
    // The agent keeps watching while the server is away, and reports on reconnect.
    await web(h2, '127.0.0.2', 'late2', { 'berth.host': 'late.h2.test' });
    await server.restart();
    await waitUntil(async () => (await agentNamed('host2'))?.status === 'online', {
      timeoutMs: 20_000,
      message: 'host2 never back',
    });
    await new Promise((r) => setTimeout(r, 1500));
    probing = false;
    await probe;
    console.log(`[figure] server crash + restart: ${failures} failed of ${probes} requests`);
    expect(probes).toBeGreaterThan(20);
    expect(failures).toBe(0);
    await serves('late.h2.test', 'late2@127.0.0.2');

    // A graceful restart with every agent away: the store alone brings the routes back.
    await agents.h2!.stop();
    await agents.h3!.stop();
    await server.stop();
    await server.restart();
    await serves('app.h2.test', 'app2@127.0.0.2', 10_000);
    await serves('mine.h3.test', 'mine3@127.0.0.3', 10_000);
    await agents.h2!.start();
    await agents.h3!.start();
  });

  it('revoking a key disconnects its agent within a second and withdraws its routes', async () => {
    await waitUntil(async () => (await agentNamed('host3'))?.status === 'online', {
      timeoutMs: 20_000,
      message: 'host3 offline',
    });
    await serves('mine.h3.test', 'mine3@127.0.0.3');
    const res = await fetch(`${server.apiUrl}/api/keys/host3/revoke`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}` },
    });
    const t0 = Date.now();
    expect(res.status).toBe(200);
    await waitUntil(async () => agents.h3!.output().includes('disconnected from server'), {
      timeoutMs: 5_000,
      intervalMs: 20,
      message: 'agent never disconnected',
    });
    const ms = Date.now() - t0;
    console.log(`[figure] key revoked → agent disconnected in ${ms} ms`);
    expect(ms).toBeLessThan(1_000);
    expect((await agentNamed('host3'))!.status).toBe('revoked');
    await notServed('mine.h3.test');
    expect((await get('app.h2.test')).body).toContain('app2');
  });

  it('rotating a key keeps the old one valid for the overlap', async () => {
    const r = await keys(['rotate', 'host2', '--overlap', '1h']);
    expect(r.secret).toMatch(/^berth_agent_/);
    expect(r.key.previousValidUntil).toBeTruthy();
    // The running agent still holds the old key: it reconnects with it.
    await agents.h2!.stop();
    await agents.h2!.start();
    await waitUntil(async () => (await agentNamed('host2'))?.status === 'online', {
      timeoutMs: 20_000,
      message: 'old key refused',
    });
    await server.cli(['agents', 'remove', 'host2']);
    await notServed('app.h2.test');
  });
});
