// berth exec through a remote agent, against real containers on a private dockerd that runs in
// its own network namespace (so `swarm init` creates its networks there, not on this machine).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { waitUntil } from './support/proc.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
let server: BerthProcess;
let h: TestDockerd;
let agent: AgentProcess;
let metricsPort: number;

const RULES = {
  'berth.exec.allow': 'echo hello *',
  'berth.exec.allow.1': 'sleep *',
  'berth.exec.allow.2': 'seq 1 *',
  'berth.exec.allow.3': 'false',
  'berth.exec.allow.4': 'cat ...',
  'berth.exec.allow.5': 'echo ...',
  'berth.exec.allow.6': 'busybox top -b -n 3 -d 1',
};

async function exec(args: string[]) {
  return server.cli(['exec', ...args]);
}

/** Whether a file exists in the container, asked of Docker directly (not through Berth). */
async function exists(container: string, path: string): Promise<boolean> {
  return (await h.docker(['exec', container, 'test', '-e', path])).code === 0;
}

beforeAll(async () => {
  h = await startDockerd({ name: 'exec', netns: true });
  await importBusybox(h, IMAGE);
  const labels = Object.entries(RULES).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  await h.run(['run', '-d', '--network', 'host', '--name', 'app', ...labels, IMAGE, 'sleep', '100000']);
  await h.run(['run', '-d', '--network', 'host', '--name', 'plain', IMAGE, 'sleep', '100000']);
  server = await startBerth({ command: 'server' });
  const k = JSON.parse(
    (await server.cli(['keys', 'create', '--name', 'exec-host', '--auto-approve', '--json'])).stdout,
  );
  const policy = join(server.dataDir, 'exec-policy.json');
  metricsPort = await freePort();
  writeFileSync(
    policy,
    JSON.stringify({ maxOutputBytes: 10_000, maxConcurrent: 2, allow: { plain: ['id'] } }),
  );
  agent = await startAgent({
    server: server.apiUrl,
    key: k.secret,
    docker: h.dockerHost,
    hostIp: '127.0.0.2',
    name: 'exechost',
    args: ['--exec-policy', policy, '--metrics-listen', `127.0.0.1:${metricsPort}`],
  });
  await waitUntil(async () => (await server.cli(['exec', 'app', '--', 'echo', 'hello', 'x'])).code === 0, {
    timeoutMs: 20_000,
    message: () => `agent never ready for exec:\n${agent.output()}`,
  });
});

afterAll(async () => {
  await agent?.stop();
  await server?.stop();
});

describe('berth exec', () => {
  it('runs an allowed command with its output and exit code', async () => {
    const ok = await exec(['app', '--', 'echo', 'hello', 'world']);
    expect(ok).toMatchObject({ code: 0, stdout: 'hello world\n' });
    const fail = await exec(['app', '--', 'false']);
    expect(fail.code).toBe(1);
    const stderr = await exec(['app', '--', 'cat', '/no/such/file']);
    expect(stderr.code).toBe(1);
    expect(stderr.stderr).toMatch(/can't open '\/no\/such\/file'/);
    const json = JSON.parse((await exec(['app', '--json', '--', 'echo', 'hello', 'json'])).stdout);
    expect(json).toMatchObject({ exitCode: 0, stdout: 'hello json\n', timedOut: false, truncated: false });
    // Rules from the agent's policy file apply too.
    expect((await exec(['plain', '--', 'id'])).stdout).toMatch(/uid=0/);
  });

  it('denies a command no rule allows, says which rules it considered, and runs nothing', async () => {
    const r = await exec(['app', '--', 'touch', '/tmp/marker']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /denied by agent exechost: no rule of container app matches; considered: "echo hello \*", "sleep \*"/,
    );
    expect(await exists('app', '/tmp/marker')).toBe(false);
    const api = await fetch(`${server.apiUrl}/api/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ target: 'app', argv: ['touch', '/tmp/marker'] }),
    });
    expect(api.status).toBe(403);
    const body = await api.json();
    expect(body.error.code).toBe('EXEC_DENIED');
    expect(body.error.details.considered).toEqual(Object.values(RULES));
    const none = await exec(['plain', '--', 'touch', '/tmp/marker']);
    expect(none.stderr).toMatch(/no rule of container plain matches/);
  });

  it.each([
    ['semicolon', ['echo', 'a;touch', '/tmp/pwned']],
    ['and-and', ['echo', 'a', '&&', 'touch', '/tmp/pwned']],
    ['pipe', ['echo', 'a|touch', '/tmp/pwned']],
    ['command substitution', ['echo', '$(touch /tmp/pwned)']],
    ['backticks', ['echo', '`touch /tmp/pwned`']],
    ['newline', ['echo', 'a\ntouch /tmp/pwned']],
    ['glob', ['echo', '/tmp/*']],
    ['very long argument', ['echo', 'x'.repeat(5_000)]],
  ])('never lets %s reach a shell or run', async (_name, argv) => {
    const r = await exec(['app', '--', ...argv]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/denied by agent exechost: argument \d+ /);
    expect(await exists('app', '/tmp/pwned')).toBe(false);
  });

  it('kills a command at its timeout', async () => {
    const t0 = Date.now();
    const r = await exec(['app', '--timeout', '1s', '--', 'sleep', '30']);
    expect(r.code).toBe(124);
    expect(r.stderr).toMatch(/timed out; the command was killed/);
    expect(Date.now() - t0).toBeLessThan(10_000);
    const top = await h.run(['top', 'app']);
    expect(top.stdout).not.toMatch(/sleep 30/);
  });

  it('holds the output cap and stops the command', async () => {
    const r = JSON.parse((await exec(['app', '--json', '--', 'seq', '1', '1000000'])).stdout);
    expect(r.truncated).toBe(true);
    expect(r.stdoutBytes).toBe(10_000);
    expect(r.stdout.length).toBe(10_000);
    expect(r.stdout.startsWith('1\n2\n3\n')).toBe(true);
  });

  it('streams output live through the HTTP API, before the command ends', async () => {
    const res = await fetch(`${server.apiUrl}/api/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ target: 'app', argv: ['busybox', 'top', '-b', '-n', '3', '-d', '1'] }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/x-ndjson');
    const seen: { at: number; line: Record<string, unknown> }[] = [];
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) if (l) seen.push({ at: Date.now(), line: JSON.parse(l) });
    }
    expect(seen[0].line).toMatchObject({ started: { container: 'app', rule: 'busybox top -b -n 3 -d 1' } });
    const outputs = seen.filter((s) => s.line.stream === 'stdout');
    const exit = seen.find((s) => s.line.exit);
    expect(exit?.line.exit).toMatchObject({ exitCode: 0, timedOut: false });
    // top prints a frame a second: the first frame reaches us while the command still runs.
    expect(outputs.length).toBeGreaterThanOrEqual(3);
    expect((exit?.at ?? 0) - outputs[0].at).toBeGreaterThanOrEqual(1_000);
    const text = outputs.map((o) => Buffer.from(String(o.line.data), 'base64').toString()).join('');
    expect(text.match(/^Mem:/gm)?.length).toBe(3);
  });

  it('caps concurrent commands per agent and says so', async () => {
    const runs = await Promise.all([1, 2, 3].map(() => exec(['app', '--', 'sleep', '3'])));
    const busy = runs.filter((r) => r.code !== 0);
    expect(runs.filter((r) => r.code === 0)).toHaveLength(2);
    expect(busy).toHaveLength(1);
    expect(busy[0].stderr).toMatch(/2 commands already running on this agent \(limit 2\)/);
    // Once they finish, the slot is free again.
    expect((await exec(['app', '--', 'echo', 'hello', 'again'])).stdout).toBe('hello again\n');
  });

  it('rejects hostile API bodies with a clear 400', async () => {
    const post = (body: unknown) =>
      fetch(`${server.apiUrl}/api/exec`, {
        method: 'POST',
        headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const empty = await post({ target: 'app', argv: [] });
    expect(empty.status).toBe(400);
    expect((await empty.json()).error.message).toMatch(/body.argv: must NOT have fewer than 1 items/);
    const shell = await post({ target: 'app', argv: 'rm -rf /' });
    expect((await shell.json()).error.message).toMatch(/body.argv: must be array/);
    const bad = await post({ target: 'app', argv: ['echo'], timeout: 'forever' });
    expect((await bad.json()).error.message).toMatch(/body.timeout: "forever" is not a duration/);
  });

  it('records every request, allowed or denied, in the audit', async () => {
    const entries = JSON.parse((await server.cli(['audit', '--json'])).stdout);
    const allowed = entries.find((e: { argv: string[] }) => e.argv.join(' ') === 'echo hello world');
    expect(allowed).toMatchObject({
      decision: 'allowed',
      exitCode: 0,
      agentName: 'exechost',
      container: 'app',
    });
    expect(allowed.requester).toMatch(/^admin@/);
    expect(allowed.durationMs).toBeGreaterThanOrEqual(0);
    const denied = entries.find((e: { argv: string[] }) => e.argv.join(' ') === 'touch /tmp/marker');
    expect(denied).toMatchObject({ decision: 'denied' });
    expect(entries.find((e: { timedOut?: boolean }) => e.timedOut)).toMatchObject({ argv: ['sleep', '30'] });
    expect((await server.cli(['audit'])).stdout).toMatch(/DECISION/);
  });

  it('resolves a Swarm service to a running task and runs there', async () => {
    await h.run(['swarm', 'init', '--advertise-addr', '127.0.0.1', '--default-addr-pool', '10.232.0.0/16']);
    await h.run([
      'service',
      'create',
      '--detach',
      '--name',
      'photos',
      '--network',
      'host',
      '--container-label',
      'berth.exec.allow=echo hello *',
      IMAGE,
      'sleep',
      '100000',
    ]);
    await waitUntil(async () => (await exec(['photos', '--', 'echo', 'hello', 'swarm'])).code === 0, {
      timeoutMs: 60_000,
      message: async () =>
        `service never reachable: ${JSON.stringify(await exec(['photos', '--', 'echo', 'hello', 'swarm']))}\n` +
        `agents: ${(await server.cli(['agents', 'list', '--json'])).stdout}\nps: ${(await h.docker(['ps', '-a'])).stdout}`,
    });
    expect((await exec(['photos', '--', 'echo', 'hello', 'swarm'])).stdout).toBe('hello swarm\n');
    await h.run(['service', 'rm', 'photos']);
    await h.run(['swarm', 'leave', '--force']);
  });

  it('lets the server narrow per key, never widen', async () => {
    const k = JSON.parse(
      (
        await server.cli([
          'keys',
          'create',
          '--name',
          'narrow',
          '--auto-approve',
          '--exec-allow',
          'echo hello *',
          '--json',
        ])
      ).stdout,
    );
    const narrow = await startAgent({
      server: server.apiUrl,
      key: k.secret,
      docker: h.dockerHost,
      hostIp: '127.0.0.2',
      name: 'narrowhost',
    });
    await waitUntil(
      async () => (await exec(['--agent', 'narrowhost', 'app', '--', 'echo', 'hello', 'n'])).code === 0,
      {
        timeoutMs: 20_000,
        message: () => `narrow agent not ready\n${narrow.output()}`,
      },
    );
    const r = await exec(['--agent', 'narrowhost', 'app', '--', 'false']);
    expect(r.stderr).toMatch(/the server's key policy does not allow this command/);
    // A server rule the agent does not have still does not run: the agent's rules come first.
    const both = await exec(['--agent', 'narrowhost', 'app', '--', 'touch', '/tmp/marker']);
    expect(both.stderr).toMatch(/no rule of container app matches/);
    // Without --agent, "app" is ambiguous now that two agents see it.
    expect((await exec(['app', '--', 'false'])).stderr).toMatch(
      /names containers on several agents \(.*\); pick one with --agent/,
    );
    await narrow.stop();
  });

  it('counts requests, convergence and agents in the server and agent metrics', async () => {
    const agentMetrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(agentMetrics).toMatch(/^berth_agent_connected 1$/m);
    expect(agentMetrics).toMatch(/^berth_agent_exec_requests_total\{outcome="allowed"\} [1-9]/m);
    expect(agentMetrics).toMatch(/^berth_agent_exec_requests_total\{outcome="denied"\} [1-9]/m);
    expect(agentMetrics).toMatch(/^berth_agent_snapshots_sent_total [1-9]/m);
    const m = await (await fetch(`${server.apiUrl}/metrics`)).text();
    expect(m).toMatch(/^berth_agents\{status="online"\} [1-9]/m);
    expect(m).toMatch(/^berth_exec_requests_total\{outcome="allowed"\} [1-9]/m);
    expect(m).toMatch(/^berth_convergence_seconds_count [1-9]/m);
    expect(m).toMatch(/^berth_convergence_seconds_bucket\{le="\+Inf"\} [1-9]/m);
    expect(m).toMatch(/^# TYPE berth_caddy_apply_seconds histogram$/m);
  });

  it('reports a gone container and an offline agent clearly', async () => {
    expect((await exec(['--agent', 'exechost', 'nothere', '--', 'echo', 'hello', 'x'])).stderr).toMatch(
      /no container or service "nothere" on agent exechost/,
    );
    // Audited too: a request for nothing is a request.
    const entries = JSON.parse((await server.cli(['audit', '--json'])).stdout);
    expect(entries.find((e: { container: string }) => e.container === 'nothere')).toMatchObject({
      decision: 'error',
      reason: expect.stringMatching(/no container or service "nothere"/),
    });
    await agent.stop();
    const r = await exec(['--agent', 'exechost', 'app', '--', 'echo', 'hello', 'x']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/agent exechost is offline; nothing was run/);
  });
});
