// `berth top`: the front door's traffic in the terminal, busiest routes first, refreshed every
// --interval until Ctrl-C; `--json` prints one snapshot. The figures are the Traffic page's
// (GET /api/traffic), summed over every replica.
import type { ClientConfig } from '../config.js';
import type { TrafficReport } from '../model/api.js';
import type { ApiClient } from './client.js';
import { json, line, type Out, ours, type Printable, table } from './format.js';

const ms = (v: number | null) => (v === null ? '-' : v < 10 ? v.toFixed(2) : v.toFixed(0));
const pct = (v: number) => `${(v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1)}%`;

/** Bytes per second, short: 950 B/s, 12.3 KB/s, 4.1 MB/s. */
export function rate(bytes: number): string {
  if (bytes < 1000) return `${Math.round(bytes)} B/s`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} KB/s`;
  if (bytes < 1e9) return `${(bytes / 1e6).toFixed(1)} MB/s`;
  return `${(bytes / 1e9).toFixed(1)} GB/s`;
}

/** One screen of `berth top`: pure, so it is tested without a terminal. */
export function topScreen(r: TrafficReport, limit: number): Printable[] {
  const replicas = r.replicas.length > 1 ? `, ${r.replicas.length} replicas summed` : '';
  const out: Printable[] = [
    line`berth top: ${new Date(r.at).toISOString()}, rates over the last minute${replicas}`,
  ];
  if (!r.enabled) out.push(ours('(Caddy streams no request lines: HTTP figures are off, see --traffic)'));
  const hosts = r.hosts.slice(0, limit);
  out.push(
    hosts.length === 0
      ? ours('no HTTP requests yet')
      : table(
          ['HOST', 'REQ/S', '5XX', 'P50 MS', 'P99 MS', 'IN', 'OUT', 'REQUESTS', 'OWNER'],
          hosts.map((h) => [
            h.host,
            h.now.requestsPerSecond.toFixed(1),
            pct(h.now.errorRate),
            ms(h.now.p50Ms),
            ms(h.now.p99Ms),
            rate(h.now.bytesInPerSecond),
            rate(h.now.bytesOutPerSecond),
            String(h.total.requests),
            [...new Set(h.owners.map((o) => `${o.agent}/${o.container}`))].join(',') || '-',
          ]),
        ),
  );
  if (r.hosts.length > limit) out.push(line`… ${r.hosts.length - limit} more hosts (--limit)`);
  if (r.tcp.length > 0) {
    out.push(
      ours(''),
      table(
        ['TCP', 'OPEN', 'CONN/S', 'IN', 'OUT', 'CONNECTIONS'],
        r.tcp.map((t) => [
          `:${t.listener}`,
          String(t.active),
          t.now.connectionsPerSecond.toFixed(1),
          rate(t.now.bytesInPerSecond),
          rate(t.now.bytesOutPerSecond),
          String(t.total.connections),
        ]),
      ),
    );
  }
  return out;
}

export async function topCommand(
  config: ClientConfig,
  api: ApiClient,
  out: Out,
  o: { signal?: AbortSignal } = {},
): Promise<number> {
  if (config.json) {
    out(json(await api.get<TrafficReport>('/api/traffic')));
    return 0;
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  o.signal?.addEventListener('abort', onSignal);
  try {
    while (!stop.signal.aborted) {
      const screen = topScreen(await api.get<TrafficReport>('/api/traffic'), config.limit);
      // Home and clear, then the screen: one write, so it does not flicker.
      out(ours(`\x1b[H\x1b[2J${screen.join('\n')}`));
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(500, config.intervalMs));
        stop.signal.addEventListener('abort', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  } finally {
    process.off('SIGINT', onSignal);
  }
  return 0;
}
