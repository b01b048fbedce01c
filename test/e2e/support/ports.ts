import { createServer } from 'node:net';

/**
 * Ports this process already handed out. The kernel may give a just-closed port to the next
 * bind(0): without this, two containers started together could be told the same port, and the
 * second would die on bind (seen: one of 100 containers in a burst never served).
 */
const given = new Set<string>();

/** A port free on the given loopback address right now, and never handed out before here. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let tries = 0; tries < 1000; tries++) {
    const port = await bindZero(host);
    if (given.has(`${host}:${port}`)) continue;
    given.add(`${host}:${port}`);
    return port;
  }
  throw new Error(`no fresh free port on ${host} after 1000 tries`);
}

function bindZero(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}
