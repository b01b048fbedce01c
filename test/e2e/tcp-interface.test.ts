// --tcp-bind with an interface name: Berth, its dockerd and a dummy interface all live in a
// network namespace this test creates; the listener follows the interface's address.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, inNetns, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { waitUntil } from './support/proc.js';

useCleanup();

const run = promisify(execFile);
const IMAGE = 'berth-test/busybox:latest';
const LISTEN = 4003;
const UPSTREAM = 4001;
let h: TestDockerd;
let berth: BerthProcess;

async function ns(cmd: string, args: string[]) {
  const [c, a] = inNetns(h.netns, cmd, args);
  return run(c, a, { timeout: 15_000 });
}

/** One line through the listener at `addr`, from inside the namespace; '' when it fails. */
async function talk(addr: string): Promise<string> {
  try {
    const r = await ns('busybox', ['sh', '-c', `echo hi | busybox nc -w 3 ${addr} ${LISTEN}`]);
    return r.stdout;
  } catch {
    return '';
  }
}

beforeAll(async () => {
  h = await startDockerd({ name: 'tcpif', netns: true });
  // A veth pair stands in for tailscale0 (this kernel has no dummy interface module); both ends
  // stay inside the namespace.
  await ns('ip', ['link', 'add', 'berth0', 'type', 'veth', 'peer', 'name', 'berth0p']);
  await ns('ip', ['addr', 'add', '10.77.0.1/32', 'dev', 'berth0']);
  await ns('ip', ['link', 'set', 'berth0p', 'up']);
  await ns('ip', ['link', 'set', 'berth0', 'up']);
  await importBusybox(h, IMAGE);
  await runHostContainer(
    h,
    'ib',
    { 'berth.tcp.live.listen': String(LISTEN), 'berth.tcp.live.port': String(UPSTREAM) },
    ['nc', '-ll', '-p', String(UPSTREAM), '-e', 'sh', '-c', 'echo live; exec cat'],
  );
  berth = await startBerth({
    docker: h.dockerHost,
    netns: h.netns,
    args: ['--tcp-bind', 'berth0'],
  });
});

afterAll(async () => {
  await berth?.stop();
});

describe('--tcp-bind <interface>', () => {
  it("binds to the interface's address and moves when the address changes", async () => {
    await waitUntil(async () => (await talk('10.77.0.1')) === 'live\nhi\n', {
      timeoutMs: 20_000,
      message: async () =>
        `no answer on 10.77.0.1: ${JSON.stringify(await berth.routes())}\n${berth.output()}`,
    });
    // Nothing listens on the namespace's loopback: only the interface's address is bound.
    expect(await talk('127.0.0.1')).toBe('');
    const routes = await berth.routes();
    expect(routes.find((r) => r.kind === 'tcp')).toMatchObject({ listen: LISTEN, status: 'applied' });

    await ns('ip', ['addr', 'del', '10.77.0.1/32', 'dev', 'berth0']);
    await ns('ip', ['addr', 'add', '10.77.0.2/32', 'dev', 'berth0']);
    await waitUntil(async () => (await talk('10.77.0.2')) === 'live\nhi\n', {
      timeoutMs: 15_000,
      message: () => `listener never moved to 10.77.0.2\n${berth.output()}`,
    });
    expect(berth.output()).toMatch(/tcp bind address changed; re-binding listeners/);
  });
});
