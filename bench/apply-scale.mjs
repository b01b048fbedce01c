// Apply time against route count: Berth's CaddyTarget loading 100, 1k and 10k synthetic routes
// into a real Caddy (admin on a unix socket, listeners on 127.0.0.1), then the cost of one more
// route at each size, and of a pass where nothing changed. Prints figures; asserts nothing.
// Usage: npm run build && node bench/apply-scale.mjs [sizes=100,1000,10000]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { CaddyAdmin } from '../dist/ingress/caddy/admin.js';
import { CaddyTarget } from '../dist/ingress/caddy/target.js';

const sizes = (process.argv[2] ?? '100,1000,10000').split(',').map(Number);
const dir = mkdtempSync(join(tmpdir(), 'bench-apply-'));
const sock = join(dir, 'admin.sock');
writeFileSync(
  join(dir, 'base.json'),
  JSON.stringify({ admin: { listen: `unix/${sock}`, config: { persist: false } } }),
);
const caddy = spawn('caddy', ['run', '--config', join(dir, 'base.json')], {
  env: { ...process.env, XDG_DATA_HOME: join(dir, 'data'), XDG_CONFIG_HOME: join(dir, 'cfg'), HOME: dir },
  stdio: 'ignore',
});
const admin = new CaddyAdmin(`unix://${sock}`, { timeoutMs: 600_000 });
for (let i = 0; i < 100; i++) {
  try {
    if ((await admin.request('GET', '/config/')).status === 200) break;
  } catch {}
  await new Promise((r) => setTimeout(r, 100));
}

const site = (i) => ({
  host: `h${i}.bench.test`,
  path: '/',
  stripPath: false,
  upstreams: [{ host: '127.0.0.1', port: 10000 + (i % 50000), scheme: 'http' }],
  routeKeys: [`a:${i}`],
});
const target = new CaddyTarget(
  admin,
  { tls: 'off', httpListen: '127.0.0.1:18399', httpsListen: ':443' },
  pino({ level: 'silent' }),
);

const caddyRssMb = () =>
  Math.round(
    Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${caddy.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024,
  );

console.log('routes   full apply   +1 route   no-change pass   caddy RSS');
for (const n of sizes) {
  const sites = Array.from({ length: n }, (_, i) => site(i));
  let t = performance.now();
  await target.apply(sites);
  const full = performance.now() - t;
  sites.push(site(n));
  t = performance.now();
  await target.apply(sites);
  const one = performance.now() - t;
  t = performance.now();
  const r = await target.apply(sites);
  const none = performance.now() - t;
  console.log(
    `${String(n).padStart(6)}   ${full.toFixed(0).padStart(7)} ms   ${one.toFixed(0).padStart(6)} ms   ${none.toFixed(1).padStart(9)} ms${r.changed ? ' (!)' : ''}   ${String(caddyRssMb()).padStart(6)} MB`,
  );
}
caddy.kill('SIGTERM');
await new Promise((r) => caddy.once('exit', r));
rmSync(dir, { recursive: true, force: true });
