// Prometheus text exposition for what the server counts. Pure rendering: callers pass numbers.
import type { TcpForwarder } from '../ingress/tcp/forwarder.js';

interface Sample {
  labels: Record<string, string | number>;
  value: number;
}

interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  samples: Sample[];
}

export function renderMetrics(families: Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels)
        .map(
          ([k, v]) => `${k}="${String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`,
        )
        .join(',');
      out.push(`${f.name}${labels ? `{${labels}}` : ''} ${s.value}`);
    }
  }
  return `${out.join('\n')}\n`;
}

/** TCP listeners: connections by outcome, bytes each way, and open connections. */
export function tcpMetrics(tcp: Pick<TcpForwarder, 'counters' | 'status'>): Family[] {
  const counters = [...tcp.counters()];
  const active = new Map(tcp.status().map((l) => [l.listen, l.active]));
  return [
    {
      name: 'berth_tcp_connections_total',
      help: 'TCP connections by listener and how they ended',
      type: 'counter',
      samples: counters.flatMap(([listen, c]) =>
        Object.entries(c.closed).map(([reason, n]) => ({
          labels: { listener: listen, reason },
          value: n ?? 0,
        })),
      ),
    },
    {
      name: 'berth_tcp_bytes_total',
      help: 'Bytes through TCP listeners (in: client to upstream; out: upstream to client), counted when connections end',
      type: 'counter',
      samples: counters.flatMap(([listen, c]) => [
        { labels: { listener: listen, direction: 'in' }, value: c.bytesIn },
        { labels: { listener: listen, direction: 'out' }, value: c.bytesOut },
      ]),
    },
    {
      name: 'berth_tcp_active_connections',
      help: 'Open TCP connections by listener',
      type: 'gauge',
      samples: [...active].map(([listen, n]) => ({ labels: { listener: listen }, value: n })),
    },
  ];
}

export type { Family as MetricFamily };
