// How many DNS queries the dynamic layout's responder answers while one host takes steady
// traffic through Caddy: berth standalone (its own Caddy, dynamic layout) on a private dockerd,
// one labelled container whose port is a Caddy static response (keep-alive, so the count is
// Caddy's SRV lookups, not dials of a closing upstream). A paced client sends requests at
// --rate per second for --seconds, first to the routed host, then to a host with no route
// (Berth's 404), and reads berth_dns_queries_total from /metrics before and after each phase
// (the responder writes its counters once a second). A quiet phase of the same length counts
// queries with no traffic at all. Query counts do not depend on the machine's load; the
// achieved rate is printed beside them. Asserts nothing.
//
//   npm run build && npx tsx bench/responder-qps.ts [--rate 2000] [--seconds 10] [--connections 16]
//     [--server-args '--traffic off'] [--json]
//
// BERTH_BIN runs another build (one from before a change, say); it must have
// berth_dns_queries_total.
import { Agent, request } from 'node:http';
import { BERTH_BIN, startBerth } from '../test/e2e/support/berth.js';
import { importBusybox, runHostContainer, startDockerd } from '../test/e2e/support/dockerd.js';
import { httpGet, waitUntil } from '../test/e2e/support/proc.js';
import {
  cleanupOnExit,
  fetchMetrics,
  flag,
  loadavg,
  metricValues,
  pct,
  sleep,
  staticUpstream,
} from './lib.js';

const RATE = flag('rate', 2000);
const SECONDS = flag('seconds', 10);
// Requests in flight at most: Caddy keeps up to 32 idle upstream connections per host, and more
// at once would make it dial (and look up the target's address) for the excess.
const CONNECTIONS = flag('connections', 16);
const asJson = process.argv.includes('--json');
// Extra server flags, one string (e.g. "--traffic off", to compare with a build without them).
const SERVER_ARGS = (() => {
  const i = process.argv.indexOf('--server-args');
  return i >= 0 ? (process.argv[i + 1] ?? '').split(' ').filter(Boolean) : [];
})();
const HOST = 'hot.qps.test';
const UNKNOWN = 'nobody.qps.test';
// The responder writes its counters once a second; wait past that before reading them.
const STATS_LAG_MS = 1_500;

interface Paced {
  sent: number;
  statuses: Map<number, number>;
  errors: number;
  achievedRps: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
}

/**
 * Requests at `rate` per second for `seconds`, each started when it is due (not when the last
 * one answered), over at most --connections keep-alive connections (a request due while all are busy waits
 * for one: the achieved rate says how close the run came).
 */
async function paced(port: number, host: string, rate: number, seconds: number): Promise<Paced> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  const statuses = new Map<number, number>();
  const lat: number[] = [];
  let sent = 0;
  let errors = 0;
  let open = 0;
  const total = Math.round(rate * seconds);
  const t0 = performance.now();
  let lastDone = t0;
  await new Promise<void>((resolve) => {
    const one = () => {
      const start = performance.now();
      open++;
      const req = request({ host: '127.0.0.1', port, path: '/', headers: { host }, agent }, (res) => {
        res.resume();
        res.on('end', () => {
          lat.push(performance.now() - start);
          statuses.set(res.statusCode ?? 0, (statuses.get(res.statusCode ?? 0) ?? 0) + 1);
          finish();
        });
      });
      req.on('error', () => {
        errors++;
        finish();
      });
      req.end();
    };
    const finish = () => {
      open--;
      lastDone = performance.now();
      if (sent === total && open === 0) resolve();
    };
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate));
      while (sent < due) {
        sent++;
        one();
      }
      if (sent < total) setTimeout(tick, 1);
    };
    tick();
  });
  agent.destroy();
  return {
    sent,
    statuses,
    errors,
    achievedRps: sent / ((lastDone - t0) / 1000),
    latencyP50Ms: pct(lat, 50),
    latencyP99Ms: pct(lat, 99),
  };
}

/** The responder's answers so far, by result, and their sum. */
async function queries(apiUrl: string): Promise<{ total: number; byResult: Record<string, number> }> {
  const values = metricValues(await fetchMetrics(apiUrl), 'berth_dns_queries_total');
  if (values.size === 0) throw new Error(`${BERTH_BIN} has no berth_dns_queries_total in /metrics`);
  const byResult: Record<string, number> = {};
  let total = 0;
  for (const [labels, v] of values) {
    byResult[/result="([^"]*)"/.exec(labels)?.[1] ?? labels] = v;
    total += v;
  }
  return { total, byResult };
}

const round1 = (x: number) => Math.round(x * 10) / 10;

const done = cleanupOnExit();
try {
  const say = (s: string) => {
    if (!asJson) console.log(s);
  };
  say(
    `responder queries: ${BERTH_BIN} ${SERVER_ARGS.join(' ')}, ${RATE} req/s for ${SECONDS} s per phase; load ${loadavg()}`,
  );
  const upPort = (await staticUpstream('hot')).port;
  const d = await startDockerd({ name: 'bqps' });
  await importBusybox(d);
  const berth = await startBerth({ docker: d.dockerHost, args: [...SERVER_ARGS, '--log-level', 'warn'] });
  await runHostContainer(d, 'hot', { 'berth.host': HOST, 'berth.port': String(upPort) }, ['sleep', '86400']);
  await waitUntil(
    async () => (await httpGet(`http://127.0.0.1:${berth.httpPort}/`, { host: HOST })).status === 200,
    { timeoutMs: 30_000, message: () => `${HOST} never served\n${berth.output().slice(-2000)}` },
  );
  // Warm Caddy's upstream connections and the client's, then count from a quiet start.
  await paced(berth.httpPort, HOST, Math.min(RATE, 500), 1);
  await sleep(STATS_LAG_MS);

  const phases: Record<string, unknown>[] = [];
  for (const [name, host] of [
    ['quiet', undefined],
    ['routed', HOST],
    ['unknown', UNKNOWN],
  ] as const) {
    const q0 = await queries(berth.apiUrl);
    const t0 = performance.now();
    let r: Paced | undefined;
    if (host) r = await paced(berth.httpPort, host, RATE, SECONDS);
    else await sleep(SECONDS * 1000);
    const elapsed = (performance.now() - t0) / 1000;
    await sleep(STATS_LAG_MS);
    const q1 = await queries(berth.apiUrl);
    const n = q1.total - q0.total;
    const byResult = Object.fromEntries(
      Object.entries(q1.byResult).map(([k, v]) => [k, v - (q0.byResult[k] ?? 0)]),
    );
    const qps = n / elapsed;
    const phase = {
      phase: name,
      host: host ?? null,
      seconds: round1(elapsed),
      requests: r?.sent ?? 0,
      achievedRps: r ? Math.round(r.achievedRps) : 0,
      statuses: r ? Object.fromEntries(r.statuses) : {},
      errors: r?.errors ?? 0,
      latencyP50Ms: r ? Math.round(r.latencyP50Ms * 100) / 100 : null,
      latencyP99Ms: r ? Math.round(r.latencyP99Ms * 100) / 100 : null,
      queries: n,
      queriesByResult: byResult,
      queriesPerSecond: round1(qps),
      // The figure the issue asks for: queries a second per 1,000 requests a second.
      queriesPerSecondPer1kRps: r ? Math.round((qps / (r.achievedRps / 1000)) * 100) / 100 : null,
    };
    phases.push(phase);
    say(
      `  ${name.padEnd(7)} ${host ? `${phase.requests} requests, ${phase.achievedRps} req/s achieved (statuses ${JSON.stringify(phase.statuses)}, errors ${phase.errors}, p50 ${phase.latencyP50Ms} ms, p99 ${phase.latencyP99Ms} ms)` : 'no requests'}: ${n} DNS queries ${JSON.stringify(byResult)} = ${phase.queriesPerSecond}/s${phase.queriesPerSecondPer1kRps !== null ? `, ${phase.queriesPerSecondPer1kRps}/s per 1,000 req/s` : ''}`,
    );
  }
  say(`load at the end ${loadavg()}`);
  if (asJson)
    console.log(
      JSON.stringify({
        bench: 'responder-qps',
        bin: BERTH_BIN,
        rate: RATE,
        connections: CONNECTIONS,
        serverArgs: SERVER_ARGS,
        seconds: SECONDS,
        routedQueriesPerSecondPer1kRps: phases[1]!.queriesPerSecondPer1kRps,
        unknownQueriesPerSecondPer1kRps: phases[2]!.queriesPerSecondPer1kRps,
        quietQueriesPerSecond: phases[0]!.queriesPerSecond,
        phases,
      }),
    );
  await berth.stop();
} finally {
  await done();
}
