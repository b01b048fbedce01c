// The traffic pipeline's own thread: it reads Caddy's request lines, counts them and writes the
// access log, whatever the server's main loop is doing. Caddy writes every request line to the
// socket synchronously: a reader that stalls (a reconcile pass of a second at 50k routes) would
// stall the front door's requests. The main thread sends the routes and the TCP figures, and
// asks for counts; nothing else crosses.
import { parentPort, workerData } from 'node:worker_threads';
import { type AccessLogTarget, AccessLogWriter } from '../ingress/access-log.js';
import { type ParseOptions, TrafficListener } from '../ingress/caddy/traffic.js';
import { Traffic, type TrafficRoute } from './traffic.js';

export interface TrafficWorkerData {
  socketPath: string;
  parse: ParseOptions;
  maxHosts: number;
  log: AccessLogTarget;
}

/** Main → worker. `id` is answered by a reply with the same id. */
export type ToWorker =
  | { type: 'routes'; removed: { host: string; path: string }[]; added: TrafficRoute[] }
  | {
      type: 'tick';
      tcp: [number, Parameters<Traffic['tick']>[0] extends Map<number, infer C> ? C : never][];
      active: [number, number][];
    }
  | { type: 'snapshot'; id: number; replica: string; recentSlots?: number }
  | { type: 'families'; id: number }
  | { type: 'owners'; id: number }
  | { type: 'reopen' }
  | { type: 'stop'; id: number };

/** Worker → main. */
export type FromWorker =
  | { type: 'ready'; address: string }
  | { type: 'reply'; id: number; value: unknown }
  | { type: 'log'; level: 'warn' | 'error'; message: string };

const port = parentPort;
if (port) {
  const d = workerData as TrafficWorkerData;
  const log = new AccessLogWriter(d.log, (message) =>
    port.postMessage({
      type: 'log',
      level: 'warn',
      message: `HTTP access log not written: ${message}`,
    } satisfies FromWorker),
  );
  const traffic = new Traffic({ maxHosts: d.maxHosts, log });
  const listener = new TrafficListener({
    socketPath: d.socketPath,
    parse: d.parse,
    onRequests: (requests) => traffic.record(requests),
  });
  const reply = (id: number, value: unknown) =>
    port.postMessage({ type: 'reply', id, value } satisfies FromWorker);
  port.on('message', async (m: ToWorker) => {
    switch (m.type) {
      case 'routes':
        return traffic.patchRoutes(m.removed, m.added);
      case 'tick':
        return traffic.tick(new Map(m.tcp), new Map(m.active));
      case 'snapshot':
        return reply(m.id, traffic.snapshot(m.replica, m.recentSlots));
      case 'families':
        return reply(m.id, traffic.families(listener.counters));
      case 'owners':
        return reply(m.id, [...traffic.owners()]);
      case 'reopen':
        return log.reopen();
      case 'stop':
        await listener.stop();
        await log.close();
        return reply(m.id, true);
    }
  });
  listener.start().then(
    () => port.postMessage({ type: 'ready', address: listener.address } satisfies FromWorker),
    (err: Error) =>
      port.postMessage({
        type: 'log',
        level: 'error',
        message: `cannot listen for request lines: ${err.message}`,
      } satisfies FromWorker),
  );
}
