import type { ClientConfig } from '../config.js';
import type { RouteView } from '../model/types.js';
import type { ApiClient } from './client.js';
import { json, type Out, ours, table } from './format.js';

export async function routesCommand(config: ClientConfig, api: ApiClient, out: Out): Promise<number> {
  const { routes } = await api.get<{ routes: RouteView[] }>('/api/routes');
  if (config.json) {
    out(json(routes));
    return 0;
  }
  if (routes.length === 0) {
    out(ours('no routes (label a container with berth.host=… to add one)'));
    return 0;
  }
  out(
    table(
      ['HOST', 'PATH', 'UPSTREAM', 'OWNER', 'STATUS', 'DETAIL'],
      routes.map((r) => [
        r.kind === 'tcp' ? `tcp :${r.listen}` : r.hosts.join(',') || '-',
        r.kind === 'tcp' ? (r.allow?.length ? `allow ${r.allow.join(',')}` : '-') : r.path || '-',
        // A tunneled route: the agent's tunnel, then the address the agent dials.
        r.tunnel ? `${r.tunnel} → ${r.upstreams.join(',')}` : r.upstreams.join(',') || '-',
        `${r.agentName}/${r.container.name} (${r.container.id.slice(0, 12)})`,
        r.status,
        [...r.errors, r.note ?? ''].filter(Boolean).join('; '),
      ]),
    ),
  );
  return 0;
}
