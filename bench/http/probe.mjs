// The HTTP side of bench/caddy-layouts.ts, run as a process of its own so that what it measures is
// Caddy and the DNS responder, not the garbage collector of the bench process (which holds every
// site of the run, 50k of them). It serves the upstream (`ok`) and, when asked, sends requests one
// after another on one keep-alive connection and answers with their times.
// Usage: node bench/http/probe.mjs HOST — prints {"port":N} on stdout (the upstream, on HOST), then
// reads one JSON request per line on stdin: {"port":P,"host":H,"requests":N,"warmup":W}, and
// prints {"ms":[…]} for each; exits when stdin closes.
import { Agent, createServer, request } from 'node:http';
import { createInterface } from 'node:readline';

const upstream = createServer((_q, s) => s.end('ok\n'));
upstream.listen(0, process.argv[2] ?? '127.0.0.2', () => {
  process.stdout.write(`${JSON.stringify({ port: upstream.address().port })}\n`);
});

const agent = new Agent({ keepAlive: true, maxSockets: 1 });
function get(port, host) {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/', headers: { host }, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

const lines = createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  const { port, host, requests, warmup } = JSON.parse(line);
  for (let i = 0; i < warmup; i++) await get(port, host);
  const ms = [];
  let failed = 0;
  for (let i = 0; i < requests; i++) {
    const t = performance.now();
    if ((await get(port, host)) !== 200) failed++;
    ms.push(performance.now() - t);
  }
  process.stdout.write(`${JSON.stringify({ ms, failed })}\n`);
});
lines.on('close', () => {
  agent.destroy();
  upstream.close();
  process.exit(0);
});
