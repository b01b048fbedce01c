// A read-only Docker API proxy in the spirit of docker-socket-proxy (CONTAINERS=1 EVENTS=1
// VERSION=1 INFO=1 POST=0): GETs for those sections pass through to the unix socket, everything
// else is refused with 403. Lets a test prove the agent needs no more than that. With
// `readOnly: false` everything passes (exec's upgraded streams too) and is only recorded, so a
// test can see every path the agent asked Docker for.
import { createServer, request, type Server } from 'node:http';
import { connect } from 'node:net';
import { registerCleanup } from './cleanup.js';

const ALLOWED =
  /^\/(v[\d.]+\/)?(_ping|version|info|events|containers\/json|containers\/[A-Za-z0-9_.-]+\/json)(\?|$)/;

export interface SocketProxy {
  url: string;
  refused: string[];
  /** Every request, as `METHOD /path?query` exactly as the client sent it. */
  requests: string[];
  close(): Promise<void>;
}

export function startReadOnlyProxy(socketPath: string, host: string, port: number): Promise<SocketProxy> {
  return startDockerProxy(socketPath, host, port, { readOnly: true });
}

export async function startDockerProxy(
  socketPath: string,
  host: string,
  port: number,
  o: { readOnly: boolean },
): Promise<SocketProxy> {
  const refused: string[] = [];
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const url = req.url ?? '/';
    requests.push(`${req.method} ${url}`);
    if (o.readOnly && ((req.method !== 'GET' && req.method !== 'HEAD') || !ALLOWED.test(url))) {
      refused.push(`${req.method} ${url}`);
      res.writeHead(403, { 'content-type': 'text/plain' }).end('forbidden by the read-only proxy\n');
      return;
    }
    const up = request({ socketPath, path: url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      res.flushHeaders(); // the events stream sends headers long before its first event
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  // exec's start is an HTTP upgrade: replay the request on a raw connection and splice the two.
  server.on('upgrade', (req, socket, head) => {
    requests.push(`${req.method} ${req.url}`);
    if (o.readOnly) {
      refused.push(`${req.method} ${req.url}`);
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const up = connect(socketPath, () => {
      const headers: string[] = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2)
        headers.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${req.method} ${req.url} HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n`);
      if (head.length > 0) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const p: SocketProxy = {
    url: `tcp://${host}:${port}`,
    refused,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  registerCleanup(() => p.close());
  return p;
}
