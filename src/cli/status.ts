import type { ClientConfig } from '../config.js';
import type { StatusReport } from '../model/api.js';
import type { ApiClient } from './client.js';
import { json, line, type Out, type Printable } from './format.js';

export async function statusCommand(config: ClientConfig, api: ApiClient, out: Out): Promise<number> {
  const s = await api.get<StatusReport>('/api/status');
  if (config.json) {
    out(json(s));
    return 0;
  }
  const lines: Printable[] = [
    line`berth ${s.version}, up ${s.uptimeSeconds}s, ${s.ready ? 'ready' : `NOT READY: ${s.notReady.join('; ')}`}`,
    line`routes: ${s.routes.total} (${s.routes.applied} applied, ${s.routes.pending} pending, ${s.routes.error} error)`,
  ];
  for (const a of s.agents) {
    lines.push(
      line`agent ${a.name} (${a.id}): ${a.status}${a.kind === 'local' ? ' (in-process)' : ''}, host ip ${a.hostIp ?? '?'}, ${a.containers} containers, ${a.routes} routes`,
    );
  }
  for (const c of s.caddy as {
    admin: string;
    reachable: boolean;
    loads: number;
    lastApplyMs: number;
    lastError: string;
    lease?: { holder?: string; mine: boolean; replica: string };
    reloadQueue?: 'on' | 'set' | 'off' | 'unsupported';
  }[]) {
    const lease = c.lease
      ? `, applied by ${c.lease.mine ? `this replica (${c.lease.replica})` : (c.lease.holder ?? 'nobody yet')}`
      : '';
    // Only what needs the operator: reloads that reset the connections waiting to be accepted.
    const queue =
      c.reloadQueue === 'off' || c.reloadQueue === 'unsupported'
        ? ', reloads reset waiting connections (net.ipv4.tcp_migrate_req)'
        : '';
    lines.push(
      line`caddy ${c.admin}: ${c.reachable ? 'reachable' : 'UNREACHABLE'}${lease}, ${c.loads} loads, last apply ${c.lastApplyMs} ms${queue}${c.lastError ? `, last error: ${c.lastError}` : ''}`,
    );
  }
  for (const l of lines) out(l);
  return s.ready ? 0 : 1;
}
