// A compromised server against a real agent: a fake server (a small ws server speaking the agent
// protocol) sends a real `berth agent` process a corpus of hostile messages, with valid exec
// requests interleaved, while the agent reads a real private dockerd through a recording proxy.
// The agent runs under strace, so a DNS lookup (or any connection but the two it needs) shows.
import { mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BERTH_BIN } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { importBusybox, isAlive, startDockerd, type TestDockerd } from './support/dockerd.js';
import { type FakeServer, type Msg, startFakeServer } from './support/fake-server.js';
import { freePort } from './support/ports.js';
import { type Logged, spawnLogged, waitUntil } from './support/proc.js';
import { type SocketProxy, startDockerProxy } from './support/socket-proxy.js';

useCleanup();

const KEY = 'berth_agent_corpus-test-key';
const IMAGE = 'berth-test/busybox:latest';

interface TracedAgent {
  proc: Logged;
  /** The agent's own PID (strace's child). */
  pid: number;
  straceFile: string;
}

/** `berth agent` under `strace -f -e trace=connect`, so every connection attempt is on record. */
async function startTracedAgent(
  server: FakeServer,
  docker: string,
  args: string[] = [],
): Promise<TracedAgent> {
  const dir = mkdtempSync(join(tmpdir(), 'bah-'));
  const keyFile = join(dir, 'agent.key');
  writeFileSync(keyFile, `${KEY}\n`, { mode: 0o600 });
  const straceFile = join(dir, 'connect.trace');
  const proc = spawnLogged(
    'strace',
    [
      '-f',
      '-qq',
      '--seccomp-bpf',
      '-e',
      'trace=connect',
      '-o',
      straceFile,
      process.execPath,
      BERTH_BIN,
      'agent',
      '--server',
      `http://127.0.0.1:${server.port}`,
      '--key-file',
      keyFile,
      '--docker',
      docker,
      '--host-ip',
      '127.0.0.1',
      '--name',
      'corpus',
      '--data-dir',
      join(dir, 'data'),
      '--report-interval',
      '1s',
      '--log-level',
      'debug',
      ...args,
    ],
    { logFile: join(dir, 'agent.log') },
  );
  // strace's child that runs the agent (strace may first fork a short-lived child of its own).
  const node = realpathSync(process.execPath);
  let pid = -1;
  await waitUntil(
    () => {
      try {
        const children = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8')
          .trim()
          .split(' ');
        // strace's own short-lived child has the same command line (strace's, which names the
        // agent): only a child that is node itself, running the agent, is the agent.
        pid = Number(
          children.find(
            (c) =>
              realpathSync(`/proc/${c}/exe`) === node &&
              readFileSync(`/proc/${c}/cmdline`, 'utf8').includes(`${BERTH_BIN}\0agent\0`),
          ) ?? -1,
        );
      } catch {
        pid = -1;
      }
      return pid > 0;
    },
    { timeoutMs: 10_000, message: () => `strace started no agent:\n${proc.output()}` },
  );
  registerCleanup(async () => {
    if (isAlive(pid)) process.kill(pid, 'SIGTERM');
    await proc.stop('SIGTERM', 10_000);
    rmSync(dir, { recursive: true, force: true });
  });
  return { proc, pid, straceFile };
}

/** What one corpus message should get back. */
type Expect =
  | { reply: 'error'; id: string; match: RegExp }
  | { reply: 'none' }
  | { reply: 'exit'; id: string; stdout: string }
  | { reply: 'denied'; id: string }
  | { reply: 'not-found'; id: string };

interface Item {
  name: string;
  frame: string | Buffer;
  binary?: boolean;
  expect: Expect;
}

let h: TestDockerd;
let proxy: SocketProxy;
let policy: string;
let targetId: string;

beforeAll(async () => {
  h = await startDockerd({ name: 'corpus' });
  await importBusybox(h, IMAGE);
  targetId = (
    await h.run([
      'run',
      '-d',
      '--network',
      'none',
      '--name',
      'target',
      '-l',
      'berth.exec.allow=echo hello *',
      IMAGE,
      'sleep',
      '100000',
    ])
  ).stdout.trim();
  proxy = await startDockerProxy(h.socket, '127.0.0.1', await freePort(), { readOnly: false });
  const policyDir = mkdtempSync(join(tmpdir(), 'bap-'));
  registerCleanup(() => rmSync(policyDir, { recursive: true, force: true }));
  policy = join(policyDir, 'policy.json');
  writeFileSync(policy, JSON.stringify({ maxConcurrent: 64 }));
});

const execFrame = (id: unknown, over: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: 'exec',
    id,
    container: 'target',
    argv: ['echo', 'hello', 'x'],
    timeoutMs: 10_000,
    ...over,
  });

/** The corpus, valid requests interleaved. Ids are unique so every answer can be told apart. */
function corpus(): Item[] {
  const items: Item[] = [];
  let n = 0;
  const bad = (name: string, over: Record<string, unknown>, match: RegExp) => {
    const id = `bad-${++n}`;
    items.push({ name, frame: execFrame(id, over), expect: { reply: 'error', id, match } });
  };
  let v = 0;
  const valid = (container: string) => {
    const id = `ok-${++v}`;
    items.push({
      name: `valid exec in ${container}`,
      frame: execFrame(id, { container, argv: ['echo', 'hello', id] }),
      expect: { reply: 'exit', id, stdout: `hello ${id}\n` },
    });
  };
  const silent = (name: string, frame: string | Buffer, binary = false) =>
    items.push({ name, frame, binary, expect: { reply: 'none' } });

  const CONTAINER = /^invalid exec request: container must be a Docker container id or name/;
  for (const c of [
    'a/b',
    '/target',
    'target/../../containers/json',
    '../../version?',
    '../../containers/json?all=1',
    '..',
    '.',
    '..%2F..%2Fversion',
    '%2e%2e',
    'target%2F..',
    'target?all=1',
    'target#x',
    '',
    ' target',
    'target\n',
    '\u202etarget',
    'target\u0000',
    '//evil.example/x',
    'http://evil.example/',
    '@evil.example',
    'x'.repeat(100_000),
    '-target',
  ]) {
    bad(`container ${JSON.stringify(c.slice(0, 40))}`, { container: c }, CONTAINER);
    if (n % 5 === 0) valid('target');
  }
  for (const c of [5, null, ['target'], {}])
    bad(`container ${JSON.stringify(c)}`, { container: c }, CONTAINER);
  valid(targetId);

  const ARGV = /^invalid exec request: argv must be an array of strings/;
  for (const a of [
    'echo hello x',
    7,
    { 0: 'echo' },
    ['echo', 1],
    [null],
    [],
    Array(10_000).fill('echo'),
    ['echo', 'x'.repeat(1_000_000)],
    [['echo']],
    true,
    null,
  ]) {
    bad(`argv ${JSON.stringify(a).slice(0, 40)}`, { argv: a }, ARGV);
  }
  bad('argv missing', { argv: undefined }, ARGV);
  valid(targetId.slice(0, 12));

  const TIMEOUT = /^invalid exec request: timeoutMs must be a positive whole number/;
  for (const t of [-1, 'NaN', 1e308, 0, 1.5, null, '1000', undefined]) {
    bad(`timeoutMs ${JSON.stringify(t)}`, { timeoutMs: t }, TIMEOUT);
  }
  valid('target');

  const RULES = /^invalid exec request: serverRules must be an array of strings/;
  for (const r of ['echo hello *', [1], { a: 1 }, Array(5_000).fill('echo *'), ['x'.repeat(2_000)], null]) {
    bad(`serverRules ${JSON.stringify(r).slice(0, 40)}`, { serverRules: r }, RULES);
  }

  // No usable id: nothing to answer, so only logged; and nothing runs, although argv is fine.
  for (const id of [undefined, 5, {}, '', 'x'.repeat(100), 'a\nb', ['id'], null]) {
    silent(`id ${JSON.stringify(id)}`, execFrame(id, { argv: ['echo', 'hello', 'noid'] }));
  }
  silent('a binary frame', Buffer.from(execFrame('bin-1', { argv: ['echo', 'hello', 'bin'] })), true);
  for (const t of [5, null, ['exec'], true]) silent(`type ${JSON.stringify(t)}`, JSON.stringify({ type: t }));
  for (const t of [
    'tunnel.open',
    'exec.v2',
    'EXEC',
    '',
    'x'.repeat(10_000),
    '__proto__',
    'constructor',
    'toString',
  ]) {
    silent(`unknown type ${t.slice(0, 20)}`, JSON.stringify({ type: t, id: 'unknown-1', argv: ['echo'] }));
  }
  for (const raw of ['not json', '{', '', '}', '\u0000', 'undefined', 'NaN', '{"type":"exec",']) {
    silent(`non-JSON ${JSON.stringify(raw)}`, raw);
  }
  for (const raw of ['42', '"exec"', 'null', 'true', '[]', '[{"type":"exec","id":"arr-1"}]']) {
    silent(`JSON ${raw}`, raw);
  }
  silent('nested arrays, a million deep', `${'['.repeat(1_000_000)}${']'.repeat(1_000_000)}`);
  silent('nested objects, 200k deep', `${'{"a":'.repeat(200_000)}1${'}'.repeat(200_000)}`);
  items.push({
    name: 'argv nested 100k deep',
    frame: `{"type":"exec","id":"deep-1","container":"target","timeoutMs":1000,"argv":${'['.repeat(100_000)}${']'.repeat(100_000)}}`,
    expect: { reply: 'error', id: 'deep-1', match: ARGV },
  });
  for (const w of [
    { type: 'welcome', agentId: 'a\r\nx-evil: 1', status: 'approved' },
    { type: 'welcome', agentId: 5, status: 'approved' },
    { type: 'welcome' },
    { type: 'welcome', agentId: 'x'.repeat(1_000), status: 'approved' },
    { type: 'error', message: 5 },
    { type: 'error', message: 'x'.repeat(100_000) },
    { type: 'error' },
    { type: 'error', message: '\u001b]0;pwned\u0007\u001b[2J' },
    { type: 'resync' },
  ]) {
    silent(`${w.type} ${JSON.stringify(w).slice(0, 40)}`, JSON.stringify(w));
  }
  // __proto__ in JSON is an own key, not a prototype: argv inside it is not argv.
  items.push({
    name: '__proto__ carrying argv',
    frame:
      '{"type":"exec","id":"proto-1","container":"target","timeoutMs":1000,"__proto__":{"argv":["echo","hello","p"]}}',
    expect: { reply: 'error', id: 'proto-1', match: /argv must be an array of strings .*: it is missing/ },
  });
  valid('target');
  items.push({
    name: 'valid shape, denied by policy',
    frame: execFrame('deny-1', { argv: ['touch', '/tmp/pwned'] }),
    expect: { reply: 'denied', id: 'deny-1' },
  });
  items.push({
    name: 'valid shape, no such container',
    frame: execFrame('gone-1', { container: 'nosuch' }),
    expect: { reply: 'not-found', id: 'gone-1' },
  });
  // A flood: the same bad message 1,000 times without an id, and 1,000 times with one.
  for (let i = 0; i < 1_000; i++) silent('flood without id', '{"type":"exec","container":"a/b"}');
  for (let i = 0; i < 1_000; i++) {
    items.push({
      name: 'flood with ids',
      frame: execFrame(`flood-${i}`, { argv: 'echo hello flood' }),
      expect: { reply: 'error', id: `flood-${i}`, match: ARGV },
    });
    if (i % 250 === 0) valid('target');
  }
  return items;
}

/** Docker API paths a well-behaved agent uses, its container refs all plain ids or names. */
const DOCKER_OK =
  /^(GET|HEAD|POST) \/(v[\d.]+\/)?(_ping|version|info|events(\?.*)?|containers\/json(\?.*)?|containers\/[a-zA-Z0-9][a-zA-Z0-9_.-]*\/(json|exec)|exec\/[0-9a-f]{64}\/(start|json))$/;

/** connect() calls other than to the fake server and the Docker proxy (a DNS lookup would be one). */
function strayConnects(file: string, allowedPorts: number[], socket?: string): string[] {
  const lines = readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.includes('connect('));
  return lines.filter((l) => {
    if (socket && l.includes(`sa_family=AF_UNIX, sun_path="${socket}"`)) return false;
    const m = /sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("127\.0\.0\.1"\)/.exec(l);
    return !m || !allowedPorts.includes(Number(m[1]));
  });
}

// On the Docker socket, the old agent given "/target" looked up the host "containers" and died;
// through the TCP proxy (as with docker-socket-proxy) every path it asks for is on record.
describe.each([
  { mode: 'reading Docker through a recording TCP proxy', tcp: true },
  { mode: 'reading the Docker socket', tcp: false },
])('a real agent against a hostile server, $mode', ({ tcp }) => {
  let server: FakeServer;
  let agent: TracedAgent;
  /** false while the agent lives (for waitUntil); throws at once, with its output, once it died. */
  const alive = (): false => {
    if (!isAlive(agent.pid)) throw new Error(`the agent died:\n${agent.proc.output()}`);
    return false;
  };

  beforeAll(async () => {
    server = await startFakeServer(KEY);
    agent = await startTracedAgent(server, tcp ? proxy.url : h.dockerHost, ['--exec-policy', policy]);
    // Connected, welcomed, and reading Docker: its first snapshot names the target container.
    await waitUntil(
      () =>
        server.conns[0]?.received.some(
          (m) => m.type === 'snapshot' && m.snapshot.containers.some((c: Msg) => c.name === 'target'),
        ) ?? false,
      { timeoutMs: 30_000, message: () => `the agent never reported a snapshot:\n${agent.proc.output()}` },
    );
  });

  afterAll(async () => {
    if (agent && isAlive(agent.pid)) process.kill(agent.pid, 'SIGTERM');
    await agent?.proc.stop('SIGTERM', 10_000);
  });

  const counts = { sent: 0, errorsReplied: 0, valid: 0, silent: 0 };

  it('answers every malformed exec request with one exec.error, runs the valid ones, never dies', async () => {
    const items = corpus();
    for (const it of items) server.send(it.frame, it.binary);
    // A last valid request: the agent handles messages in order, so once it is answered, every
    // answer to what came before has been sent too.
    server.send(execFrame('marker', { argv: ['echo', 'hello', 'marker'] }));
    await waitUntil(() => server.events.get('marker')?.some((e) => e.type === 'exec.exit') || alive(), {
      timeoutMs: 60_000,
      message: () => `no answer to the marker request:\n${agent.proc.output()}`,
    });
    const expected = items.map((i) => i.expect);
    await waitUntil(
      () =>
        expected.every(
          (e) =>
            e.reply === 'none' ||
            server.events.get(e.id)?.some((x) => ['exec.exit', 'exec.error', 'exec.denied'].includes(x.type)),
        ) || alive(),
      { timeoutMs: 60_000, message: () => `answers missing:\n${agent.proc.output()}` },
    );
    expect(isAlive(agent.pid), `the agent died:\n${agent.proc.output()}`).toBe(true);
    expect(server.conns).toHaveLength(1); // never even reconnected

    const answered = new Set<string>();
    for (const it of items) {
      const e = it.expect;
      if (e.reply === 'none') {
        counts.silent++;
        continue;
      }
      answered.add(e.id);
      const got = server.events.get(e.id) ?? [];
      if (e.reply === 'error') {
        expect(got, it.name).toHaveLength(1);
        expect(got[0], it.name).toMatchObject({ type: 'exec.error', code: 'FAILED' });
        expect(got[0]!.message, it.name).toMatch(e.match);
        counts.errorsReplied++;
      } else if (e.reply === 'exit') {
        expect(
          got.map((x) => x.type),
          it.name,
        ).toEqual(['exec.started', 'exec.output', 'exec.exit']);
        expect(Buffer.from(got[1]!.data, 'base64').toString(), it.name).toBe(e.stdout);
        expect(got[2], it.name).toMatchObject({ exitCode: 0, timedOut: false, truncated: false });
        counts.valid++;
      } else if (e.reply === 'denied') {
        expect(got.map((x) => x.type)).toEqual(['exec.denied']);
      } else {
        expect(got).toMatchObject([{ type: 'exec.error', code: 'NOT_FOUND' }]);
      }
    }
    // Nothing else was answered: not the binary frame, not the requests without a usable id.
    const unexpected = [...server.events.keys()].filter((id) => !answered.has(id) && id !== 'marker');
    expect(unexpected).toEqual([]);
    counts.sent += items.length + 1;

    // Docker saw only plain references, and only the valid requests ran anything.
    if (tcp) {
      const stray = proxy.requests.filter((r) => !DOCKER_OK.test(r));
      expect(stray).toEqual([]);
      const runs = proxy.requests.filter((r) => /^POST \/(v[\d.]+\/)?containers\/[^/]+\/exec$/.test(r));
      expect(runs).toHaveLength(counts.valid + 1); // + the marker
    }
    // No DNS lookup, no connection anywhere but the server and Docker (over TCP, the proxy).
    const ports = [server.port, ...(tcp ? [Number(proxy.url.split(':').at(-1))] : [])];
    expect(strayConnects(agent.straceFile, ports, tcp ? undefined : h.socket)).toEqual([]);

    // A flood writes a few lines, not thousands.
    const log = readFileSync(join(agent.straceFile, '..', 'agent.log'), 'utf8');
    const refusals = log.split('\n').filter((l) => l.includes('refused an invalid message from the server'));
    expect(refusals.length).toBeGreaterThan(0);
    expect(refusals.length).toBeLessThan(100);
    expect(log).not.toMatch(/unhandled rejection|exec handler failed|error handling a server message/);
    console.log(
      `exec corpus: ${counts.sent} messages sent (${items.length - counts.silent} exec requests with a usable id, ` +
        `${counts.silent} without or not exec), ${counts.errorsReplied} exec.error replies, ${counts.valid} valid ` +
        `requests run, ${refusals.length} refusal log lines, 0 crashes`,
    );
  });

  it('drops the connection on a 20 MiB frame or invalid UTF-8, reconnects, and carries on', async () => {
    const before = server.conns.length;
    server.send(execFrame('huge-1', { argv: ['echo', 'x'.repeat(20 << 20)] }));
    await waitUntil(() => server.conns.length === before + 1 || alive(), {
      timeoutMs: 30_000,
      message: () => `no reconnect after the 20 MiB frame:\n${agent.proc.output()}`,
    });
    expect(server.conns[before - 1]!.closed).toBe(1009);
    server.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), false); // a text frame that is not UTF-8
    await waitUntil(() => server.conns.length === before + 2 || alive(), {
      timeoutMs: 30_000,
      message: () => `no reconnect after invalid UTF-8:\n${agent.proc.output()}`,
    });
    expect(server.conns[before]!.closed).toBe(1007);
    server.send(execFrame('after-1', { argv: ['echo', 'hello', 'after'] }));
    server.send(execFrame('after-2', { container: 'a/b' }));
    await waitUntil(() => server.events.get('after-1')?.some((e) => e.type === 'exec.exit') || alive(), {
      timeoutMs: 30_000,
      message: () => `no answer after reconnecting:\n${agent.proc.output()}`,
    });
    expect(server.events.get('huge-1')).toBeUndefined();
    expect(server.events.get('after-2')).toMatchObject([
      { type: 'exec.error', message: /container must be/ },
    ]);
    expect(isAlive(agent.pid)).toBe(true);
    counts.sent += 4;
  });

  it('stops cleanly when asked, having never crashed', async () => {
    expect(isAlive(agent.pid)).toBe(true);
    process.kill(agent.pid, 'SIGTERM');
    const code = await agent.proc.exited; // strace exits with its tracee's status
    expect(code, agent.proc.output()).toBe(0);
    console.log(
      `exec corpus totals: ${counts.sent} messages sent, ${counts.errorsReplied} errors replied, crashes: 0`,
    );
  });
});
