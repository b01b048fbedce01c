// A hostile agent against a real server: it holds a valid key and speaks the real protocol, and
// tries to take another agent's hostname, to claim a public suffix, to point the front door at
// the server's own listeners or at cloud metadata, to stall the server with huge or endless
// messages, to flood it with enrolments, and to freeze itself with an absurd generation. A real
// agent on its own dockerd (127.0.0.2) is the victim, and also carries one bad container.
import { readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_PATH } from '../../src/model/protocol.js';
import type { Snapshot } from '../../src/model/types.js';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runWebContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { connectFakeAgent } from './support/fake-agent.js';
import { watchHealth } from './support/health-watch.js';
import { httpGet, waitUntil } from './support/proc.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
let server: BerthProcess;
let host: TestDockerd;
let victim: AgentProcess;

const front = (h: string, path = '/') => httpGet(`http://127.0.0.1:${server.httpPort}${path}`, { host: h });
const routeOf = async (pred: (r: Awaited<ReturnType<BerthProcess['routes']>>[number]) => boolean) =>
  (await server.routes()).find(pred);

async function key(name: string, ...flags: string[]): Promise<string> {
  const r = await server.cli(['keys', 'create', '--name', name, ...flags, '--json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout).secret;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** The server's log, all of it (the process wrapper keeps only the last lines). */
function serverLog(): string {
  return readdirSync(server.dataDir)
    .filter((f) => /^berth-\d+\.log$/.test(f))
    .map((f) => readFileSync(join(server.dataDir, f), 'utf8'))
    .join('');
}

beforeAll(async () => {
  host = await startDockerd({ name: 'victim' });
  await importBusybox(host, IMAGE);
  server = await startBerth({ command: 'server', args: ['--agent-heartbeat', '1s'] });
  victim = await startAgent({
    server: server.apiUrl,
    key: await key('victims', '--auto-approve'),
    docker: host.dockerHost,
    hostIp: '127.0.0.2',
    name: 'host-v',
  });
  await runWebContainer(
    host,
    'victim',
    { 'berth.host': 'victim.rt.test' },
    { ip: '127.0.0.2', body: 'the real victim' },
  );
  await runWebContainer(host, 'fine', { 'berth.host': 'fine.rt.test' }, { ip: '127.0.0.2', body: 'fine' });
  const many = Array.from({ length: 101 }, (_, i) => `n${i}.rt.test`).join(',');
  await runWebContainer(host, 'hundred', { 'berth.host': many }, { ip: '127.0.0.2', body: 'too many' });
  await waitUntil(async () => (await front('victim.rt.test')).body.includes('the real victim'), {
    timeoutMs: 20_000,
    message: () => `victim never served\n${server.output()}\n${victim.output()}`,
  });
});

afterAll(async () => {
  await victim?.stop();
  await server?.stop();
});

describe('a hostile agent', () => {
  it('cannot take another agent’s hostname with a spoofed creation time, nor claim a public suffix', async () => {
    const evil = await connectFakeAgent(server.apiUrl, await key('evil', '--auto-approve'), 'evil');
    evil.snapshot([{ hosts: ['victim.rt.test'] }, { hosts: ['*.com'] }, { hosts: ['*.co.uk'] }]);
    await waitUntil(
      async () =>
        (await routeOf((r) => r.agentName === 'evil' && r.hosts.includes('*.com')))?.status === 'error',
      {
        timeoutMs: 15_000,
        message: async () => `no refusal: ${JSON.stringify(await server.routes())}`,
      },
    );
    const taken = await routeOf((r) => r.agentName === 'evil' && r.hosts.includes('victim.rt.test'));
    expect(taken!.status).toBe('error');
    expect(taken!.errors[0]).toMatch(
      /victim\.rt\.test is already claimed by container victim \(\w{12}\) on host-v/,
    );
    const mine = await routeOf((r) => r.agentName === 'host-v' && r.hosts.includes('victim.rt.test'));
    expect(mine).toMatchObject({ status: 'applied', errors: [] });
    expect((await front('victim.rt.test')).body).toContain('the real victim');
    const wide = await routeOf((r) => r.agentName === 'evil' && r.hosts.includes('*.com'));
    expect(wide!.errors[0]).toBe(
      '*.com would claim every name under the public suffix com; no agent may claim that',
    );
    expect((await front('random-bank.com')).status).toBe(404);
    // It holds on whatever it sends later: the victim's claim stays first.
    evil.snapshot([{ hosts: ['victim.rt.test'], containerCreated: -9e15 }]);
    await new Promise((r) => setTimeout(r, 1_000));
    expect((await front('victim.rt.test')).body).toContain('the real victim');
    evil.ws.close();
  });

  it('cannot point the front door at the server’s own listeners, metadata or names', async () => {
    const dns = JSON.parse(readFileSync(join(server.dataDir, 'dns', 'config.json'), 'utf8'));
    const apiPort = Number(new URL(server.apiUrl).port);
    const evil = await connectFakeAgent(
      server.apiUrl,
      await key('ssrf', '--domains', '*.ssrf.test', '--auto-approve'),
      'ssrf',
    );
    const targets: [string, string, number][] = [
      ['api.ssrf.test', '127.0.0.1', apiPort],
      ['dns.ssrf.test', dns.host, dns.dnsPort],
      ['front.ssrf.test', '127.0.0.1', server.httpPort],
      ['meta.ssrf.test', '169.254.169.254', 80],
      ['gcp.ssrf.test', 'metadata.google.internal', 80],
      ['lan.ssrf.test', '10.1.2.3', 80],
    ];
    evil.snapshot(
      targets.map(([h, ip, port], i) => ({
        hosts: [h],
        upstream: { host: ip, port, scheme: 'http' as const },
        containerId: `s${i}`,
        containerName: `s${i}`,
      })),
    );
    await waitUntil(
      async () =>
        (await server.routes()).filter((r) => r.agentName === 'ssrf' && r.status === 'error').length ===
        targets.length,
      {
        timeoutMs: 15_000,
        message: async () =>
          `not all refused: ${JSON.stringify((await server.routes()).filter((r) => r.agentName === 'ssrf'))}`,
      },
    );
    const routes = (await server.routes()).filter((r) => r.agentName === 'ssrf');
    const errorOf = (h: string) => routes.find((r) => r.hosts.includes(h))!.errors.join('; ');
    expect(errorOf('api.ssrf.test')).toMatch(/this server's own admin API/);
    expect(errorOf('dns.ssrf.test')).toMatch(/DNS responder/);
    expect(errorOf('front.ssrf.test')).toMatch(/front door/);
    expect(errorOf('meta.ssrf.test')).toMatch(/link-local, metadata/);
    expect(errorOf('gcp.ssrf.test')).toMatch(/is a name, not an IP address/);
    expect(errorOf('lan.ssrf.test')).toMatch(/not this agent's host/);
    for (const [h] of targets) {
      const r = await front(h, '/%61pi/keys');
      expect(r.status, h).toBe(404);
      expect(r.body).not.toContain('"keys"');
    }
    // A Swarm task's upstream is checked as its node's agent would be; outside a swarm, a route
    // dressed as one is refused, not let through unchecked.
    evil.snapshot([
      {
        hosts: ['task.ssrf.test'],
        upstream: { host: '127.0.0.1', port: apiPort, scheme: 'http' as const },
        containerId: 'task',
        containerName: 'task',
        swarm: { serviceId: 'svc', service: 'svc', task: 't1', node: 'n1' },
      },
    ]);
    await waitUntil(
      async () =>
        (await server.routes()).some(
          (r) =>
            r.agentName === 'ssrf' && r.status === 'error' && /reports no swarm/.test(r.errors.join(' ')),
        ),
      {
        timeoutMs: 15_000,
        message: async () => JSON.stringify((await server.routes()).filter((r) => r.agentName === 'ssrf')),
      },
    );
    const task = await front('task.ssrf.test', '/%61pi/keys');
    expect(task.status).toBe(404);
    expect(task.body).not.toContain('"keys"');
    evil.ws.close();
  });

  it('refuses only the container with 101 hostnames; the rest of its host serves', async () => {
    await waitUntil(async () => (await routeOf((r) => r.container.name === 'hundred'))?.status === 'error', {
      timeoutMs: 15_000,
      message: async () =>
        `hundred never refused: ${JSON.stringify(await server.routes())}\n${victim.output()}`,
    });
    const hundred = (await server.routes()).filter((r) => r.container.name === 'hundred');
    expect(hundred.every((r) => r.status === 'error')).toBe(true);
    expect(hundred.flatMap((r) => r.errors).join(' ')).toMatch(/hundred|100/);
    expect((await front('fine.rt.test')).body).toContain('fine');
    expect((await front('n0.rt.test')).status).toBe(404);
    // New containers on that host still route: its snapshots are not refused as a whole.
    await runWebContainer(
      host,
      'later',
      { 'berth.host': 'later.rt.test' },
      { ip: '127.0.0.2', body: 'later' },
    );
    await waitUntil(async () => (await front('later.rt.test')).body.includes('later'), {
      timeoutMs: 20_000,
      message: 'a new container on the host with a bad container never routed',
    });
  });

  it('cannot stall the server with a 64 MiB snapshot, nor grow it', async () => {
    const evil = await connectFakeAgent(server.apiUrl, await key('huge', '--auto-approve'), 'huge');
    const before = rssKiB(server.pid);
    const health = watchHealth(`${server.apiUrl}/healthz`);
    let peak = before;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssKiB(server.pid));
    }, 20);
    const big = `{"type":"snapshot","snapshot":{"agentId":"x","generation":1,"hostIp":"127.0.0.1","takenAt":1,"containers":[],"routes":[],"diagnostics":[],"pad":"${'x'.repeat(64 << 20)}"}}`;
    evil.ws.send(big);
    const code = await evil.closed;
    await new Promise((r) => setTimeout(r, 500));
    clearInterval(sampler);
    const h = await health.stop();
    console.log(
      `64 MiB snapshot: closed with ${code}; server RSS ${before} → peak ${peak} KiB; /healthz ${h.ok} ok, ${h.failed} failed, slowest ${h.maxMs.toFixed(1)} ms`,
    );
    expect(code).toBe(1009);
    expect(h.failed).toBe(0);
    expect(h.ok).toBeGreaterThan(0);
    expect(peak).toBeLessThan(2 * before);
    expect(serverLog()).toMatch(/over --agent-max-message/);
  });

  it('keeps answering while an agent sends its worst snapshots back to back', async () => {
    const evil = await connectFakeAgent(server.apiUrl, await key('worst', '--auto-approve'), 'worst');
    const health = watchHealth(`${server.apiUrl}/healthz`);
    // Just under the 8 MiB limit: many items, each checked on its own.
    const diagnostics = Array.from({ length: 19_000 }, (_, i) => ({
      severity: 'warning',
      containerId: `w${i % 500}`,
      containerName: `w${i % 500}`,
      label: 'berth.host',
      value: 'v'.repeat(100),
      message: 'm'.repeat(200),
    }));
    for (let i = 0; i < 10; i++)
      evil.snapshot(
        [{ hosts: [`w${i}.worst.test`], upstream: { host: '127.0.0.1', port: 8000 + i, scheme: 'http' } }],
        { diagnostics } as Partial<Snapshot>,
      );
    await waitUntil(async () => (await server.routes()).some((r) => r.hosts.includes('w9.worst.test')), {
      timeoutMs: 60_000,
      message: 'the last snapshot never landed',
    });
    const h = await health.stop();
    console.log(`worst snapshots: /healthz ${h.ok} ok, ${h.failed} failed, slowest ${h.maxMs.toFixed(1)} ms`);
    expect(h.failed).toBe(0);
    // Only the newest waiting snapshot is checked: no backlog of stale ones.
    const metrics = await (await fetch(`${server.apiUrl}/metrics`)).text();
    const superseded = Number(/berth_agent_messages_total\{outcome="superseded"\} (\d+)/.exec(metrics)?.[1]);
    expect(superseded).toBeGreaterThan(0);
    evil.ws.close();
  });

  it('cannot enrol 1,000 agents with one key', async () => {
    const pendingKey = await key('flood');
    const status = (name: string, secret: string) =>
      new Promise<number>((resolve) => {
        const req = request(`${server.apiUrl}${AGENT_PATH}`, {
          agent: false,
          headers: {
            connection: 'Upgrade',
            upgrade: 'websocket',
            'sec-websocket-version': '13',
            'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
            authorization: `Bearer ${secret}`,
            'x-berth-agent-name': name,
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
    const counts = new Map<number, number>();
    for (let i = 0; i < 1_000; i += 25) {
      const batch = await Promise.all(
        Array.from({ length: 25 }, (_, j) => status(`flood${i + j}`, pendingKey)),
      );
      for (const s of batch) counts.set(s, (counts.get(s) ?? 0) + 1);
    }
    console.log(`1,000 enrolments: ${JSON.stringify(Object.fromEntries(counts))}`);
    expect(counts.get(101)).toBe(20);
    expect(counts.get(429)).toBe(980);
    const agents = JSON.parse((await server.cli(['agents', 'list', '--json'])).stdout) as {
      keyName?: string;
    }[];
    expect(agents.filter((a) => a.keyName === 'flood')).toHaveLength(20);
    // An auto-approving key is held to its enrolment rate instead.
    const autoKey = await key('flood-auto', '--auto-approve');
    const auto = await Promise.all(Array.from({ length: 100 }, (_, j) => status(`auto${j}`, autoKey)));
    expect(auto.filter((s) => s === 101)).toHaveLength(60);
    expect(auto.filter((s) => s === 429)).toHaveLength(40);
  });

  it('cannot freeze its own updates with a 1e308 generation', async () => {
    const evil = await connectFakeAgent(server.apiUrl, await key('gen', '--auto-approve'), 'gen');
    evil.snapshot([{ hosts: ['gen1.rt.test'] }], { generation: 1e308 });
    await waitUntil(async () => evil.received.some((m) => m.type === 'error'), { timeoutMs: 10_000 });
    expect(evil.received.find((m) => m.type === 'error')!.message).toMatch(
      /generation must be <= 9007199254740991/,
    );
    evil.snapshot([{ hosts: ['gen2.rt.test'] }], { generation: 5 });
    await waitUntil(async () => (await server.routes()).some((r) => r.hosts.includes('gen2.rt.test')), {
      timeoutMs: 10_000,
      message: 'a later snapshot was frozen out',
    });
    evil.ws.close();
  });

  it('floods the log with nothing: 100,000 invalid messages make a few lines', async () => {
    const evil = await connectFakeAgent(server.apiUrl, await key('noise', '--auto-approve'), 'noise');
    for (let i = 0; i < 100_000; i++) evil.ws.send('{');
    await waitUntil(async () => evil.received.length >= 100_000, { timeoutMs: 60_000, intervalMs: 200 });
    const lines = serverLog()
      .split('\n')
      .filter((l) => l.includes('invalid message from agent') && l.includes(evil.agentId));
    console.log(`100,000 invalid messages: ${lines.length} log lines`);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(3);
    expect((await fetch(`${server.apiUrl}/healthz`)).ok).toBe(true);
    evil.ws.close();
  });
});
