// berth explain [--agent A] [--json] <container>: which dialect the agent read a container's
// labels in, what each label did, and the routes they made.
import type { ClientConfig } from '../config.js';
import { UserError } from '../errors.js';
import type { Diagnostic, LabelExplanation } from '../model/types.js';
import type { ExplainedRoute } from '../server/routes/explain.js';
import type { ApiClient } from './client.js';
import { json, line, type Out, ours, table } from './format.js';

export interface ExplainReply {
  agent: { id: string; name: string };
  container: { id: string; name: string; state?: string; health?: string };
  dialect: string | null;
  labels: LabelExplanation[];
  routes: ExplainedRoute[];
  diagnostics: Diagnostic[];
  /** Which labels route it: 'container labels', or a Swarm service's labels (newer servers). */
  source?: string;
  service?: {
    name: string;
    dialect: string | null;
    labels: LabelExplanation[];
    routes: { id: string; hosts: string[]; path: string; upstream: string }[];
  };
}

const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

export async function explainCommand(
  config: ClientConfig,
  api: ApiClient,
  rest: string[],
  out: Out,
): Promise<number> {
  const [target, ...extra] = rest;
  if (!target || extra.length > 0) {
    throw new UserError('CONFIG_INVALID', 'usage: berth explain [--agent ID|NAME] [--json] <container>');
  }
  const query = config.agent ? `?agent=${encodeURIComponent(config.agent)}` : '';
  const r = await api.get<ExplainReply>(`/api/containers/${encodeURIComponent(target)}/explain${query}`);
  if (config.json) {
    out(json(r));
    return 0;
  }
  const head = line`container ${r.container.name} (${r.container.id.slice(0, 12)}) on agent ${r.agent.name}${r.container.state ? `, ${r.container.state}` : ''}`;
  if (r.service) {
    // A Swarm task whose service labels route it: those are what counts.
    out(line`${head}: routed by the ${r.source}\n`);
    out(line`service ${r.service.name}: labels read as ${r.service.dialect ?? 'none'}`);
    out(
      table(
        ['LABEL', 'VALUE', 'USE', 'NOTE'],
        r.service.labels.map((l) => [l.key, clip(JSON.stringify(l.value), 50), l.use, l.note ?? '']),
      ),
    );
    out(ours(''));
    out(
      table(
        ['ROUTE', 'UPSTREAM'],
        r.service.routes.map((x) => [`${x.hosts.join(',')}${x.path === '/' ? '' : x.path}`, x.upstream]),
      ),
    );
    if (!r.dialect) return 0;
    out(ours(''));
    out(ours("the container's own labels (not used for routing):"));
  }
  if (!r.dialect) {
    out(line`${head}: no routing labels read (the agent's --dialects chooses which label dialects it reads)`);
    return 0;
  }
  out(line`${head}: labels read as ${r.dialect}\n`);
  out(
    table(
      ['LABEL', 'VALUE', 'USE', 'NOTE'],
      r.labels.map((l) => [l.key, clip(JSON.stringify(l.value), 50), l.use, l.note ?? '']),
    ),
  );
  // Findings about labels the container does not have (e.g. a missing host label).
  const present = new Set(r.labels.map((l) => l.key));
  const loose = r.diagnostics.filter((d) => !present.has(d.label));
  if (loose.length > 0) {
    out(ours(''));
    for (const d of loose) out(line`${d.severity}: ${d.label ? `${d.label}: ` : ''}${d.message}`);
  }
  out(ours(''));
  if (r.routes.length === 0) {
    out(ours('routes: none'));
    return 0;
  }
  out(
    table(
      ['ROUTE', 'UPSTREAM', 'STATUS', 'DETAIL'],
      r.routes.map((x) => [
        x.kind === 'tcp'
          ? `tcp :${x.listen}`
          : `${x.hosts.join(',')}${x.path === '/' ? '' : x.path}${x.stripPath ? ' (strip)' : ''}`,
        x.upstream,
        x.status ?? '-',
        x.errors.join('; '),
      ]),
    ),
  );
  return 0;
}
