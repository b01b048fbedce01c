// Prometheus text exposition for what the server counts. Pure rendering: callers pass numbers.
import type { TcpForwarder } from './ingress/tcp/forwarder.js';

interface Sample {
  /** Appended to the family name (histograms: _bucket, _sum, _count). */
  suffix?: string;
  labels: Record<string, string | number>;
  value: number;
}

interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
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
      out.push(`${f.name}${s.suffix ?? ''}${labels ? `{${labels}}` : ''} ${s.value}`);
    }
  }
  return `${out.join('\n')}\n`;
}

/** A Prometheus histogram with fixed buckets (seconds). */
export class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly buckets = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  ) {
    this.counts = buckets.map(() => 0);
  }

  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    this.buckets.forEach((b, i) => {
      if (seconds <= b) this.counts[i]!++;
    });
  }

  family(): Family {
    return {
      name: this.name,
      help: this.help,
      type: 'histogram',
      samples: histogramSamples(this.buckets, this.counts, this.sum, this.count, {}),
    };
  }
}

/** One histogram's samples: `cumulative[i]` counts observations ≤ buckets[i]. */
export function histogramSamples(
  buckets: readonly number[],
  cumulative: readonly number[],
  sum: number,
  count: number,
  labels: Record<string, string | number>,
): Sample[] {
  return [
    ...buckets.map((b, i) => ({
      suffix: '_bucket',
      labels: { ...labels, le: String(b) },
      value: cumulative[i] ?? 0,
    })),
    { suffix: '_bucket', labels: { ...labels, le: '+Inf' }, value: count },
    { suffix: '_sum', labels, value: Math.round(sum * 1e6) / 1e6 },
    { suffix: '_count', labels, value: count },
  ];
}

/** A family of one unlabelled value, or one value per label set. */
export function simple(
  name: string,
  help: string,
  type: 'counter' | 'gauge',
  values: number | [Record<string, string | number>, number][],
): Family {
  const samples =
    typeof values === 'number'
      ? [{ labels: {}, value: values }]
      : values.map(([labels, value]) => ({ labels, value }));
  return { name, help, type, samples };
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
