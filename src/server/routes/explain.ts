// GET /api/containers/:container/explain: how the agent read one container's labels (dialect,
// each label's use) with the routes they made and what became of them. The agent explains;
// the server only finds the container, the same way `berth exec` does.
import type { FastifyPluginAsyncJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import type { RouteView } from '../../model/api.js';
import type { ExecBroker } from '../exec.js';
import type { Registry } from '../registry.js';
import { ADMIN } from '../trust.js';

export interface ExplainedRoute {
  id: string;
  kind: 'http' | 'tcp';
  hosts: string[];
  path: string;
  stripPath: boolean;
  listen?: number;
  upstream: string;
  status?: RouteView['status'];
  errors: string[];
}

export interface ExplainOptions {
  broker: ExecBroker;
  registry: Registry;
  routeViews: () => RouteView[];
}

export const explainRoutes: FastifyPluginAsyncJsonSchemaToTs<{ Options: ExplainOptions }> = async (
  app,
  { broker, registry, routeViews },
) => {
  app.get(
    '/api/containers/:container/explain',
    {
      ...ADMIN,
      schema: {
        params: {
          type: 'object',
          required: ['container'],
          properties: { container: { type: 'string', minLength: 1, maxLength: 256 } },
        },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { agent: { type: 'string', minLength: 1, maxLength: 128 } },
        },
      } as const,
    },
    async (req) => {
      const { container } = req.params;
      const { agent } = req.query;
      const target = broker.resolve(container, agent);
      const snapshot = registry.snapshotOf(target.agentId);
      const summary = snapshot?.containers.find((c) => c.id === target.containerId);
      const views = new Map(
        routeViews()
          .filter((v) => v.agentId === target.agentId && v.container.id === target.containerId)
          .map((v) => [v.id, v]),
      );
      const routes: ExplainedRoute[] = [
        ...(snapshot?.routes ?? [])
          .filter((r) => r.containerId === target.containerId)
          .map((r) => ({
            id: r.id,
            kind: 'http' as const,
            hosts: r.hosts,
            path: r.path,
            stripPath: r.stripPath,
            upstream: `${r.upstream.scheme}://${r.upstream.host}:${r.upstream.port}`,
          })),
        ...(snapshot?.tcp ?? [])
          .filter((r) => r.containerId === target.containerId)
          .map((r) => ({
            id: r.id,
            kind: 'tcp' as const,
            hosts: [],
            path: '',
            stripPath: false,
            listen: r.listen,
            upstream: `${r.upstream.host}:${r.upstream.port}`,
          })),
      ].map((r) => {
        const v = views.get(r.id);
        return { ...r, ...(v ? { status: v.status } : {}), errors: v?.errors ?? [] };
      });
      const service = summary?.task ? serviceOfTask(registry, summary.task) : undefined;
      return {
        agent: { id: target.agentId, name: target.agentName },
        // Which labels route it: a Swarm task's service labels, when the service has routing labels, win.
        source: service?.routed
          ? `service labels of ${service.name} (read by agent ${service.agentName} on the swarm's leader); the container's own routing labels are not used`
          : 'container labels',
        ...(service?.routed
          ? {
              service: {
                name: service.name,
                dialect: service.explain?.dialect ?? null,
                labels: service.explain?.labels ?? [],
                routes: service.routes,
              },
            }
          : {}),
        container: {
          id: target.containerId,
          name: target.containerName,
          state: summary?.state,
          health: summary?.health,
        },
        dialect: summary?.explain?.dialect ?? null,
        labels: summary?.explain?.labels ?? [],
        routes,
        diagnostics: (snapshot?.diagnostics ?? []).filter((d) => d.containerId === target.containerId),
      };
    },
  );
};

/** The Swarm service a task belongs to, as the swarm's speaker reports it, and whether its labels route it. */
function serviceOfTask(registry: Registry, task: string) {
  for (const { id, name, snapshot } of registry.reporting()) {
    const sw = snapshot.swarm;
    if (!sw?.services || !(sw.leader || sw.heldSince !== undefined)) continue;
    const svc = sw.services.find((s) => s.tasks.some((t) => t.id === task));
    if (!svc) continue;
    const routes = snapshot.routes
      .filter((r) => r.swarm?.serviceId === svc.id)
      .map((r) => ({
        id: r.id,
        hosts: r.hosts,
        path: r.path,
        upstream: `${r.upstream.scheme}://${r.upstream.host}:${r.upstream.port}`,
      }));
    return {
      agentId: id,
      agentName: name,
      name: svc.name,
      explain: svc.explain,
      routed: routes.length > 0,
      routes,
    };
  }
  return undefined;
}
