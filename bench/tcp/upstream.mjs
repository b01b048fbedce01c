// The upstream for bench/tcp/run.mjs: a plain Node TCP server on 127.0.0.1 that every target
// (direct, Berth, socat, HAProxy) reaches, run as a process of its own. Each connection opens
// with a 9-byte header, one mode byte and a 64-bit big-endian length:
//   'S' n  send n bytes to the client, then end            (download throughput)
//   'R' n  read n bytes from the client, then answer 'K'   (upload throughput)
//   'E' 0  echo everything back until the client ends      (latency, connection setup)
// Usage: node bench/tcp/upstream.mjs — prints {"port":N} on stdout, exits when stdin closes.
import { createServer } from 'node:net';
import { writeBytes } from './bytes.mjs';

const HEADER_BYTES = 9;

function receiveBytes(sock, total, first) {
  let got = first.length;
  const check = () => {
    if (got < total) return false;
    sock.off('data', onData);
    sock.end('K');
    return true;
  };
  const onData = (d) => {
    got += d.length;
    check();
  };
  if (!check()) sock.on('data', onData);
}

function echo(sock, first) {
  if (first.length > 0) sock.write(first);
  sock.on('data', (d) => sock.write(d));
}

function onConnection(sock) {
  sock.setNoDelay(true);
  sock.on('error', () => sock.destroy());
  let head = Buffer.alloc(0);
  const onHead = (data) => {
    head = head.length === 0 ? data : Buffer.concat([head, data]);
    if (head.length < HEADER_BYTES) return;
    sock.off('data', onHead);
    const mode = String.fromCharCode(head[0]);
    const n = Number(head.readBigUInt64BE(1));
    const rest = head.subarray(HEADER_BYTES);
    if (mode === 'S') void writeBytes(sock, n).then(() => sock.end());
    else if (mode === 'R') receiveBytes(sock, n, rest);
    else if (mode === 'E') echo(sock, rest);
    else sock.destroy();
  };
  sock.on('data', onHead);
}

const server = createServer(onConnection);
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
// The runner holds our stdin open; when it goes away (even killed), so do we.
process.stdin.on('close', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
