// An upstream for tunnel tests and benches, run as a process inside a tunnel host's network
// namespace on its loopback (where nothing outside the namespace can reach it):
//   node tunnel-app.mjs <host> <httpPort> <tcpEchoPort> <name> [https:<port>:<certFile>:<keyFile> …]
// HTTP: GET / (its name), GET /bytes?n=N (N deterministic bytes, x-sha256 header), POST /upload
// (sha256 and length of the body), GET /sse (an event every 100 ms), GET /ping (tiny), a WebSocket
// echo at /ws. TCP: an echo that, on the client's half-close, writes "bye <bytes>" and ends.
// HTTPS (each `https:` argument, on the same host): any request is answered with JSON naming the
// app and saying whether the connection it came on is TLS (`encrypted`) and the SNI it carried.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createTcpServer } from 'node:net';
import { WebSocketServer } from 'ws';

const [host = '127.0.0.1', httpPort = '0', tcpPort = '0', name = 'app', ...tls] = process.argv.slice(2);

/** 1 MiB of bytes derived from "berth": chunk i of a stream is this with i in its first 8 bytes. */
const BLOCK = (() => {
  const b = Buffer.alloc(1 << 20);
  let h = createHash('sha256').update('berth').digest();
  for (let o = 0; o < b.length; o += 32) {
    h.copy(b, o);
    h = createHash('sha256').update(h).digest();
  }
  return b;
})();

function chunk(i, len) {
  const c = Buffer.from(BLOCK.subarray(0, len));
  c.writeBigUInt64BE(BigInt(i), 0);
  return c;
}

function sha256Of(n) {
  const h = createHash('sha256');
  for (let i = 0, left = n; left > 0; i++, left -= BLOCK.length)
    h.update(chunk(i, Math.min(left, BLOCK.length)));
  return h.digest('hex');
}

const hashes = new Map();
const http = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  if (url.pathname === '/bytes') {
    const n = Number(url.searchParams.get('n') ?? 0);
    if (!hashes.has(n)) hashes.set(n, sha256Of(n));
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': n,
      'x-sha256': hashes.get(n),
    });
    let i = 0;
    let left = n;
    const pump = () => {
      while (left > 0) {
        const len = Math.min(left, BLOCK.length);
        left -= len;
        if (!res.write(chunk(i++, len))) return res.once('drain', pump);
      }
      res.end();
    };
    pump();
    return;
  }
  if (url.pathname === '/upload') {
    const h = createHash('sha256');
    let bytes = 0;
    req.on('data', (c) => {
      bytes += c.length;
      h.update(c);
    });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ bytes, sha256: h.digest('hex') }));
    });
    return;
  }
  if (url.pathname === '/sse') {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    let n = 0;
    const t = setInterval(() => res.write(`id: ${++n}\ndata: tick ${n} from ${name}\n\n`), 100);
    req.on('close', () => clearInterval(t));
    return;
  }
  if (url.pathname === '/ping') {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 4 });
    res.end('pong');
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(`hello from ${name}\n`);
});
const wss = new WebSocketServer({ server: http, path: '/ws' });
wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));
http.keepAliveTimeout = 60_000;

const tcp = createTcpServer({ allowHalfOpen: true }, (s) => {
  let bytes = 0;
  s.on('data', (d) => {
    bytes += d.length;
    s.write(d);
  });
  s.on('end', () => s.end(`bye ${bytes}\n`));
  s.on('error', () => s.destroy());
});

const listen = (server, port) => new Promise((done) => server.listen(Number(port), host, () => done()));
const https = tls.map((arg) => {
  const [, port, cert, key] = arg.split(':');
  const server = createHttpsServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        name,
        port: Number(port),
        encrypted: req.socket.encrypted === true,
        servername: req.socket.servername || null,
      }),
    );
  });
  return { server, port };
});

await listen(http, httpPort);
await listen(tcp, tcpPort);
for (const h of https) await listen(h.server, h.port);
process.stdout.write(
  `listening ${[http, tcp, ...https.map((h) => h.server)].map((s) => s.address().port).join(' ')}\n`,
);
process.on('SIGTERM', () => process.exit(0));
