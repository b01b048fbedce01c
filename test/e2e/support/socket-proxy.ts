// A read-only Docker API proxy in the spirit of docker-socket-proxy (CONTAINERS=1 EVENTS=1
// VERSION=1 INFO=1 POST=0): GETs for those sections pass through to the unix socket, everything
// else is refused with 403. Lets a test prove the agent needs no more than that.
import { createServer, request, type Server } from 'node:http';
import { registerCleanup } from './cleanup.js';

const ALLOWED =
  /^\/(v[\d.]+\/)?(_ping|version|info|events|containers\/json|containers\/[A-Za-z0-9_.-]+\/json)(\?|$)/;

export interface SocketProxy {
  url: string;
  refused: string[];
  close(): Promise<void>;
}

export async function startReadOnlyProxy(
  socketPath: string,
  host: string,
  port: number,
): Promise<SocketProxy> {
  const refused: string[] = [];
  const server: Server = createServer((req, res) => {
    const url = req.url ?? '/';
    if ((req.method !== 'GET' && req.method !== 'HEAD') || !ALLOWED.test(url)) {
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
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const p: SocketProxy = {
    url: `tcp://${host}:${port}`,
    refused,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  registerCleanup(() => p.close());
  return p;
}
