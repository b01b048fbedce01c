// A snapshot that fits the server's message limit. A server closes the connection on a message
// over its limit, so an agent that sent one would reconnect and send it again, forever, and never
// report anything. Instead the agent gives up what matters least first: explanations (for
// people), then warnings, then whole containers from the end, each said in a diagnostic. Pure.
import type { Diagnostic, Snapshot } from '../model/types.js';

export interface Fitted {
  snapshot: Snapshot;
  /** What was left out, for the log; empty when the snapshot fit as it was. */
  left: string[];
  bytes: number;
}

const size = (s: Snapshot) => Buffer.byteLength(JSON.stringify({ type: 'snapshot', snapshot: s }));

export function fitSnapshot(s: Snapshot, maxBytes: number): Fitted {
  let bytes = size(s);
  if (bytes <= maxBytes) return { snapshot: s, left: [], bytes };
  const left: string[] = [];
  let out: Snapshot = { ...s, containers: s.containers.map(({ explain: _e, ...c }) => c) };
  left.push('label explanations (berth explain)');
  bytes = size(out);
  if (bytes > maxBytes) {
    out = { ...out, diagnostics: out.diagnostics.filter((d) => d.severity === 'error') };
    left.push('warnings');
    bytes = size(out);
  }
  if (bytes > maxBytes) {
    // Whole containers, last first: a container reports all its routes or none.
    const base = out;
    const dropped = new Set<string>();
    let kept = base.containers.length;
    while (bytes > maxBytes && kept > 0) {
      // Drop about the share that is over, and a little more, then measure again.
      const share = (bytes - maxBytes) / bytes + 0.01;
      const n = Math.max(1, Math.ceil(kept * share));
      for (const c of base.containers.slice(kept - n, kept)) dropped.add(c.id);
      kept -= n;
      const note: Diagnostic = {
        severity: 'error',
        containerId: '',
        containerName: '(agent)',
        label: '',
        message: `this host's snapshot is over the server's message limit (${maxBytes} bytes): ${dropped.size} containers are not reported (raise --agent-max-message on the server)`,
      };
      const keep = <T extends { containerId: string }>(list: T[]) =>
        list.filter((x) => !dropped.has(x.containerId));
      out = {
        ...base,
        containers: base.containers.slice(0, kept),
        routes: keep(base.routes),
        ...(base.tcp ? { tcp: keep(base.tcp) } : {}),
        diagnostics: [...keep(base.diagnostics), note],
      };
      bytes = size(out);
    }
    left.push(`${dropped.size} containers`);
  }
  return { snapshot: out, left, bytes };
}
