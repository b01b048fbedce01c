// The image's HEALTHCHECK: GET /healthz from the Berth process in this container, at the address it
// listens on (the --api-listen of server and standalone, the --metrics-listen of an agent), read from
// that process's own arguments and environment so a flag or a BERTH_* variable is followed.
import { readdirSync, readFileSync } from 'node:fs';

const MAIN = '/app/dist/cli/main.js';

function berthProcess() {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      const at = argv.indexOf(MAIN);
      if (at < 0 || !['standalone', 'server', 'agent'].includes(argv[at + 1])) continue;
      const env = Object.fromEntries(
        readFileSync(`/proc/${pid}/environ`, 'utf8')
          .split('\0')
          .filter(Boolean)
          .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
      );
      return { command: argv[at + 1], args: argv.slice(at + 2), env };
    } catch {
      // gone, or not ours to read
    }
  }
  return undefined;
}

function setting(p, flag, fallback) {
  for (let i = 0; i < p.args.length; i++) {
    if (p.args[i] === `--${flag}`) return p.args[i + 1];
    if (p.args[i].startsWith(`--${flag}=`)) return p.args[i].slice(flag.length + 3);
  }
  const env = p.env[`BERTH_${flag.toUpperCase().replaceAll('-', '_')}`];
  return env || fallback;
}

const fail = (why) => {
  console.error(`unhealthy: ${why}`);
  process.exit(1);
};

const p = berthProcess();
if (!p) fail('no berth server, standalone or agent process in this container');
const listen = p.command === 'agent' ? setting(p, 'metrics-listen') : setting(p, 'api-listen', '127.0.0.1:7080');
if (!listen) {
  console.log('agent without --metrics-listen: no health endpoint; the process is running');
  process.exit(0);
}
const m = /^(?:\[([^\]]*)\]|([^:]*)):(\d+)$/.exec(listen);
if (!m) fail(`cannot read the listen address ${listen}`);
let host = m[1] ?? m[2];
if (['', '0.0.0.0'].includes(host)) host = '127.0.0.1';
if (host === '::') host = '::1';
const url = `http://${host.includes(':') ? `[${host}]` : host}:${m[3]}/healthz`;
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(4000) });
  if (!res.ok) fail(`${url} answered ${res.status}`);
  console.log(`${url}: ${res.status}`);
} catch (err) {
  fail(`${url}: ${err.cause?.message ?? err.message}`);
}
