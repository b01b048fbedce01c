// Labels are whatever a container's owner wrote: `berth routes` and `berth explain` must show
// terminal controls in them escaped, so an owner cannot clear the screen, retitle the terminal
// or rewrite who owns a route. --json stays exact.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { waitUntil } from './support/proc.js';

useCleanup();

/** An unknown berth.* label (an error on the container) whose key and value carry escapes. */
const KEY = 'berth.x\u001b]0;owned\u0007\r\u202eevil';
const VALUE = 'v\u001b[2J\u001b[1;1H\u009b';
const KEY_SHOWN = 'berth.x\\x1b]0;owned\\x07\\r\\u202eevil';
/** What a terminal would act on: any control, C1, bidi or format character (newlines aside). */
const RAW = /(?!\n)[\p{Cc}\p{Cf}]/u;

let h: TestDockerd;
let berth: BerthProcess;

beforeAll(async () => {
  h = await startDockerd({ name: 'esc' });
  await importBusybox(h);
  await runHostContainer(h, 'esc', { 'berth.host': 'esc.test', 'berth.port': '8080', [KEY]: VALUE }, [
    'sleep',
    '100000',
  ]);
  berth = await startBerth({ docker: h.dockerHost });
  await waitUntil(async () => (await berth.routes()).some((r) => r.errors.some((e) => e.includes(KEY))), {
    timeoutMs: 30_000,
    message: async () => `no error route for the escaped label: ${JSON.stringify(await berth.routes())}`,
  });
});

afterAll(async () => {
  await berth?.stop();
});

describe('CLI output of hostile labels', () => {
  it('berth routes shows the label escaped, and --json keeps it exact', async () => {
    const r = await berth.cli(['routes']);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(RAW);
    expect(r.stdout).toContain(`label ${KEY_SHOWN}=`);
    const routes = JSON.parse((await berth.cli(['routes', '--json'])).stdout);
    expect(routes.flatMap((x: { errors: string[] }) => x.errors).some((e: string) => e.includes(KEY))).toBe(
      true,
    );
  });

  it('berth explain shows the key and value escaped', async () => {
    const r = await berth.cli(['explain', 'esc']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(RAW);
    expect(r.stdout).toContain(KEY_SHOWN);
    expect(r.stdout).toContain('\\x9b'); // the C1 CSI in the value, which JSON quoting leaves raw
    const j = JSON.parse((await berth.cli(['explain', 'esc', '--json'])).stdout);
    expect(j.labels.find((l: { key: string }) => l.key === KEY)?.value).toBe(VALUE);
  });
});
