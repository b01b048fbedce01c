// Two `berth server` replicas sharing one Redis store and one operator Caddy, as they would behind
// one address: agents enrol through either, each replica sees the other's changes, exactly one
// applies to Caddy at a time, and killing that one mid-apply hands the front door to the other.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from './support/berth.js';
import { startOperatorCaddy } from './support/caddy.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runWebContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';
import { startRedis, type TestRedis } from './support/redis.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
const TOKEN = `berth_admin_${randomBytes(16).toString('hex')}`;
let h2: TestDockerd;
let h3: TestDockerd;
let a: BerthProcess;
let b: BerthProcess;
let httpPort: number;
let redis: TestRedis;
/** The replica still running after the failover test. */
let survivor: BerthProcess;
const agents: Record<string, AgentProcess> = {};

const get = (host: string, path = '/') => httpGet(`http://127.0.0.1:${httpPort}${path}`, { host });
const serves = (host: string, body: string, path = '/') =>
  waitUntil(async () => (await get(host, path)).body.includes(body), {
    timeoutMs: 30_000,
    intervalMs: 100,
    message: async () =>
      `${host}${path} never served ${body}: ${JSON.stringify(await get(host, path))}\nA:\n${a.output().slice(-3000)}\nB:\n${b.output().slice(-3000)}`,
  });

async function json(replica: BerthProcess, args: string[]) {
  const r = await replica.cli([...args, '--json']);
  if (r.code !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Which replica holds the Caddy lease, as each of them reports it. */
async function holders(): Promise<{ a?: string; b?: string; mineA: boolean; mineB: boolean }> {
  const [sa, sb] = await Promise.all([a.status(), b.status()]);
  return {
    a: sa.caddy[0]?.lease?.holder,
    b: sb.caddy[0]?.lease?.holder,
    mineA: Boolean(sa.caddy[0]?.lease?.mine),
    mineB: Boolean(sb.caddy[0]?.lease?.mine),
  };
}

beforeAll(async () => {
  let caddy: Awaited<ReturnType<typeof startOperatorCaddy>>;
  [redis, caddy] = await Promise.all([startRedis(), startOperatorCaddy()]);
  [h2, h3] = await Promise.all([startDockerd({ name: 'rep2' }), startDockerd({ name: 'rep3' })]);
  await Promise.all([importBusybox(h2, IMAGE), importBusybox(h3, IMAGE)]);
  httpPort = await freePort();
  const replica = () =>
    startBerth({
      command: 'server',
      httpPort,
      env: { BERTH_ADMIN_TOKEN: TOKEN },
      args: ['--store', redis.url, '--caddy-admin', caddy.adminUrl, '--agent-heartbeat', '1s'],
    });
  a = await replica();
  b = await replica();
});

afterAll(async () => {
  for (const ag of Object.values(agents)) await ag.stop();
  await Promise.all([a?.stop(), b?.stop()]);
});

describe('server replicas on one Redis store', () => {
  it('share keys, agents and routes; exactly one replica applies to Caddy', async () => {
    // A key made on A enrols an agent through B.
    const k = await json(a, ['keys', 'create', '--name', 'rep2', '--auto-approve']);
    agents.h2 = await startAgent({
      server: `${b.apiUrl},${a.apiUrl}`,
      key: k.secret,
      docker: h2.dockerHost,
      hostIp: '127.0.0.2',
      name: 'rep2',
    });
    await runWebContainer(h2, 'app2', { 'berth.host': 'app.rep.test' }, { ip: '127.0.0.2' });
    await serves('app.rep.test', 'body of app2');
    for (const r of [a, b]) {
      await waitUntil(
        async () => (await r.routes()).find((x) => x.hosts.includes('app.rep.test'))?.status === 'applied',
        {
          timeoutMs: 15_000,
          message: async () => `route not applied on ${r.apiUrl}: ${JSON.stringify(await r.routes())}`,
        },
      );
      const [agent] = await json(r, ['agents', 'list']);
      expect(agent).toMatchObject({ name: 'rep2', status: 'online', hostIp: '127.0.0.2', routes: 1 });
    }
    const h = await holders();
    expect([h.mineA, h.mineB].filter(Boolean)).toHaveLength(1);
    expect(h.a).toBeTruthy();
    expect(h.a).toBe(h.b);
  });

  it("counts each replica's own front door, and each replica's Traffic view sums them all", async () => {
    for (let i = 0; i < 5; i++) expect((await get('app.rep.test')).status).toBe(200);
    const h = await holders();
    const [holder, other] = h.mineA ? [a, b] : [b, a];
    const requests = async (r: BerthProcess) =>
      (await (await fetch(`${r.apiUrl}/metrics`)).text())
        .split('\n')
        .filter((l) => l.startsWith('berth_http_requests_total{host="app.rep.test"'))
        .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    // The shared Caddy streams its request lines to the replica that applied its config.
    await waitUntil(async () => (await requests(holder)) >= 5, { message: 'the holder counted nothing' });
    const counted = await requests(holder);
    expect(await requests(other)).toBe(0);
    // Both replicas' views show the sum, from the summaries they exchange through Redis.
    for (const r of [holder, other]) {
      await waitUntil(
        async () => {
          const t = await (
            await fetch(`${r.apiUrl}/api/traffic`, { headers: { authorization: `Bearer ${TOKEN}` } })
          ).json();
          const host = t.hosts.find((x: { host: string }) => x.host === 'app.rep.test');
          return t.replicas.length === 2 && host?.total.requests === counted;
        },
        {
          timeoutMs: 15_000,
          message: `replica ${r.apiUrl} never showed ${counted} requests summed over 2 replicas`,
        },
      );
    }
  });

  it('revokes a key on every replica within a second', async () => {
    const k = await json(b, ['keys', 'create', '--name', 'rep3', '--auto-approve']);
    // Connected to A; the key is revoked through B.
    agents.h3 = await startAgent({
      server: `${a.apiUrl},${b.apiUrl}`,
      key: k.secret,
      docker: h3.dockerHost,
      hostIp: '127.0.0.3',
      name: 'rep3',
    });
    await runWebContainer(h3, 'app3', { 'berth.host': 'app3.rep.test' }, { ip: '127.0.0.3' });
    await serves('app3.rep.test', 'body of app3');
    const res = await fetch(`${b.apiUrl}/api/keys/rep3/revoke`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    const t0 = Date.now();
    expect(res.status).toBe(200);
    await waitUntil(async () => agents.h3!.output().includes('disconnected from server'), {
      timeoutMs: 5_000,
      intervalMs: 20,
      message: () => `agent never disconnected\n${agents.h3!.output()}`,
    });
    const ms = Date.now() - t0;
    console.log(`[figure] key revoked on replica B → agent on replica A disconnected in ${ms} ms`);
    expect(ms).toBeLessThan(1_000);
    // It tries the other replica next: refused there too.
    await waitUntil(async () => /server refused the agent/.test(agents.h3!.output()), {
      timeoutMs: 10_000,
      message: () => `agent was not refused\n${agents.h3!.output()}`,
    });
    for (const r of [a, b]) {
      const agent = (await json(r, ['agents', 'list'])).find((x: { name: string }) => x.name === 'rep3');
      expect(agent.status).toBe('revoked');
    }
    await waitUntil(async () => (await get('app3.rep.test')).status === 404, {
      timeoutMs: 15_000,
      message: 'revoked agent still served',
    });
    expect((await get('app.rep.test')).body).toContain('body of app2');
  });

  it('keeps serving when the applying replica dies mid-apply; the other takes over', async () => {
    const h = await holders();
    const [holder, other] = h.mineA ? [a, b] : [b, a];
    survivor = other;
    // Traffic all along, through the shared Caddy.
    let ok = 0;
    const failures: string[] = [];
    let running = true;
    const traffic = (async () => {
      const deadline = Date.now() + 120_000;
      while (running && Date.now() < deadline) {
        const r = await get('app.rep.test');
        if (r.body.includes('body of app2')) ok++;
        else failures.push(`${r.status} ${r.body.slice(0, 80)}`);
        await new Promise((res) => setTimeout(res, 20));
      }
    })();
    // A route with a path needs its own Caddy config: an apply. Kill the holder as it starts.
    const before = holder.output().split('applying routes to caddy').length;
    await runWebContainer(
      h2,
      'api2',
      { 'berth.host': 'app.rep.test', 'berth.path': '/api', 'berth.strip_path': 'true' },
      { ip: '127.0.0.2' },
    );
    await waitUntil(async () => holder.output().split('applying routes to caddy').length > before, {
      timeoutMs: 20_000,
      intervalMs: 5,
      message: () => `the holder never started an apply\n${holder.output().slice(-3000)}`,
    });
    await holder.kill();
    const killedAt = Date.now();

    // The other replica takes the lease and applies; the agent moves to it if it was on the holder.
    await waitUntil(async () => Boolean((await other.status()).caddy[0]?.lease?.mine), {
      timeoutMs: 15_000,
      message: async () => `no takeover: ${JSON.stringify((await other.status()).caddy)}`,
    });
    console.log(
      `[figure] applying replica killed → the other holds the Caddy lease in ${Date.now() - killedAt} ms`,
    );
    await serves('app.rep.test', 'body of api2', '/api/');
    // A change after the takeover is applied by the survivor.
    await runWebContainer(h2, 'late2', { 'berth.host': 'late.rep.test' }, { ip: '127.0.0.2' });
    await serves('late.rep.test', 'body of late2');
    running = false;
    await traffic;
    console.log(`[figure] requests through the failover: ${ok} served, ${failures.length} failed`);
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(20);
    const agent = (await json(other, ['agents', 'list'])).find((x: { name: string }) => x.name === 'rep2');
    expect(agent).toMatchObject({ status: 'online' });
  });

  it('keeps serving while Redis is away, and catches up when it returns', async () => {
    redis.pause();
    try {
      const seen: number[] = [];
      for (let i = 0; i < 20; i++) {
        seen.push((await get('app.rep.test')).status);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(seen.every((st) => st === 200)).toBe(true);
      // A change made meanwhile reaches the front door once Redis is back.
      await runWebContainer(h2, 'away2', { 'berth.host': 'away.rep.test' }, { ip: '127.0.0.2' });
    } finally {
      redis.resume();
    }
    await serves('away.rep.test', 'body of away2');
    await waitUntil(async () => Boolean((await survivor.status()).caddy[0]?.lease?.mine), {
      timeoutMs: 15_000,
      message: 'the surviving replica did not hold its lease again',
    });
  });
});
