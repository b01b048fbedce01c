// Berth's TcpForwarder in a process of its own, so bench/tcp/run.mjs measures it the way it
// measures socat and HAProxy: one listener on 127.0.0.1:<listen> forwarding to
// 127.0.0.1:<upstream>, set up as `berth server` sets it up (src/server/run.ts): a pino logger at
// level info on stderr, the default idle timeout and connection limit, and one access-log line
// per connection appended to <access-log file> (as with --tcp-access-log). Prints "ready" once
// listening; stops on SIGTERM, SIGINT or when stdin closes.
// Usage: node bench/tcp/berth-forwarder.mjs <listen> <upstream> <access-log file>
//        node --import tsx bench/tcp/berth-forwarder.mjs <listen> <upstream> <file> --src
//        (--src loads src/ingress/tcp/forwarder.ts instead of the built dist/ copy)
import { createWriteStream } from 'node:fs';
import pino from 'pino';

const [listen, upstream, logFile] = process.argv.slice(2);
if (!listen || !upstream || !logFile) {
  process.stderr.write('usage: berth-forwarder.mjs <listen> <upstream> <access-log file> [--src]\n');
  process.exit(2);
}
const modulePath = process.argv.includes('--src')
  ? '../../src/ingress/tcp/forwarder.ts'
  : '../../dist/ingress/tcp/forwarder.js';
const { TcpForwarder } = await import(modulePath);

const log = createWriteStream(logFile, { flags: 'a', mode: 0o640 });
const logger = pino({ level: 'info', base: { cmd: 'server' } }, pino.destination(2));
const fw = new TcpForwarder({
  bind: '127.0.0.1',
  logger: logger.child({ component: 'tcp' }),
  accessLog: (line) => log.write(`${line}\n`),
  idleTimeoutMs: 3_600_000, // --tcp-idle-timeout's default
  maxConnections: 1024, // --tcp-max-connections's default
});
await fw.sync([
  {
    listen: Number(listen),
    upstreams: [{ host: '127.0.0.1', port: Number(upstream) }],
    allow: [],
    routeKeys: ['bench'],
  },
]);
const [status] = fw.status();
if (status?.state !== 'listening') {
  process.stderr.write(`berth forwarder did not start: ${status?.error ?? 'unknown'}\n`);
  process.exit(1);
}
process.stdout.write('ready\n');

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await fw.close();
  log.end(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('close', stop);
process.stdin.on('end', stop);
process.stdin.resume();
