// berth keys … and berth agents …: enrolment from the command line.
import type { ClientConfig } from '../config.js';
import { UserError } from '../errors.js';
import type { AgentSummary, KeySummary } from '../server/registry.js';
import type { ApiClient } from './client.js';
import { json, line, type Out, type Printable, table } from './format.js';

export async function keysCommand(
  config: ClientConfig,
  api: ApiClient,
  rest: string[],
  out: Out,
): Promise<number> {
  const [verb, ref] = rest;
  const asJson = config.json;
  switch (verb) {
    case 'create': {
      const name = config.name;
      if (!name) throw new UserError('CONFIG_INVALID', 'berth keys create needs --name NAME');
      const domains = config.domains ?? [];
      const r = await api.post<Issued>('/api/keys', {
        ...keyLimits(config),
        name,
        domains,
        autoApprove: config.autoApprove,
        ...(config.execAllow.length > 0 ? { execAllow: config.execAllow } : {}),
      });
      if (asJson) out(json(r));
      else {
        out(line`created key ${r.key.name} (${r.key.id}); it is shown only now:\n\n  ${r.secret}\n`);
        out(line`It allows: ${describeLimits(r.key)}.`);
        if (!r.key.domains?.length)
          out(
            line`Without --domains, its agents may claim any hostname that no other agent holds (berth keys update --domains limits it).\n`,
          );
        out(agentHowTo(r.agentUrls?.[0] ?? api.baseUrl));
        if (!r.pin)
          out(
            line`\nThis server has no agent TLS listener (--agent-listen off): the key carries no pin, and agents on other machines need TLS in front of the API.`,
          );
      }
      return 0;
    }
    case 'show': {
      if (!ref) throw new UserError('CONFIG_INVALID', 'berth keys show needs a key id or name');
      const r = await api.get<{
        key: KeySummary;
        pin?: string;
        agentUrls?: string[];
        ca?: string;
        certificateNames?: string[];
        certificateValidTo?: string;
      }>(`/api/keys/${encodeURIComponent(ref)}`);
      if (asJson) out(json(r));
      else {
        out(
          line`key ${r.key.name} (${r.key.id}): ${r.key.revoked ? 'revoked' : 'active'}; ${describeLimits(r.key)}`,
        );
        if (r.pin) {
          out(
            line`server pin: sha256:${r.pin} (${r.ca === 'operator' ? 'the last certificate of --agent-tls-cert' : "Berth's own agent CA"})
agents connect to: ${(r.agentUrls ?? []).join(', ')}

Only the key's hash is kept, so the key cannot be shown again. A key made before pins gets the pin by
appending it after a dot, in the agent's key file or BERTH_AGENT_KEY:
  <the key you have>.${r.pin}
or make a new pinned key now: berth keys rotate ${r.key.name} (the old one stays valid for --overlap).`,
          );
        } else out(line`this server has no agent TLS listener (--agent-listen off): keys carry no pin`);
      }
      return 0;
    }
    case 'list':
    case undefined: {
      const { keys } = await api.get<{ keys: KeySummary[] }>('/api/keys');
      if (asJson) out(json(keys));
      else
        out(
          table(
            ['ID', 'NAME', 'DOMAINS', 'AUTO-APPROVE', 'AGENTS', 'STATE'],
            keys.map((k) => [
              k.id,
              k.name,
              k.domains.join(',') || '(any)',
              k.autoApprove ? 'yes' : 'no',
              String(k.agents),
              k.revoked
                ? 'revoked'
                : k.previousValidUntil
                  ? `active (old key valid until ${k.previousValidUntil})`
                  : 'active',
            ]),
          ),
        );
      return 0;
    }
    case 'revoke': {
      if (!ref) throw new UserError('CONFIG_INVALID', 'berth keys revoke needs a key id or name');
      const r = await api.post<{ key: KeySummary }>(`/api/keys/${encodeURIComponent(ref)}/revoke`, {});
      out(asJson ? json(r) : line`revoked key ${r.key.name} (${r.key.id}); its agents are disconnected`);
      return 0;
    }
    case 'rotate': {
      if (!ref) throw new UserError('CONFIG_INVALID', 'berth keys rotate needs a key id or name');
      const overlap = `${Math.round(config.overlapMs / 1000)}s`;
      const r = await api.post<Issued>(`/api/keys/${encodeURIComponent(ref)}/rotate`, { overlap });
      if (asJson) out(json(r));
      else
        out(
          line`rotated key ${r.key.name}; the new key is shown only now:\n\n  ${r.secret}\n\nthe old key stays valid until ${r.key.previousValidUntil}`,
        );
      return 0;
    }
    case 'update': {
      if (!ref) throw new UserError('CONFIG_INVALID', 'berth keys update needs a key id or name');
      const body = keyLimits(config);
      if (Object.keys(body).length === 0) {
        throw new UserError(
          'CONFIG_INVALID',
          'berth keys update needs something to change: --domains, --upstreams, --max-routes, --max-pending or --auto-approve',
        );
      }
      const r = await api.patch<{ key: KeySummary }>(`/api/keys/${encodeURIComponent(ref)}`, body);
      out(asJson ? json(r) : line`updated key ${r.key.name} (${r.key.id}): ${describeLimits(r.key)}`);
      return 0;
    }
    default:
      throw new UserError(
        'CONFIG_INVALID',
        `unknown "berth keys ${verb}": use create, list, show, update, revoke or rotate`,
      );
  }
}

/** A new key as create and rotate answer: `secret` is the whole key string (with the pin). */
interface Issued {
  key: KeySummary;
  secret: string;
  pin?: string;
  agentUrls?: string[];
}

/** What a key allows, from flags, as the API takes it (only what was given). */
function keyLimits(config: ClientConfig): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (config.domains !== undefined) body.domains = config.domains;
  if (config.upstreams !== undefined) body.upstreams = config.upstreams;
  if (config.maxRoutes !== undefined) body.maxRoutes = config.maxRoutes;
  if (config.maxPending !== undefined) body.maxPending = config.maxPending;
  if (config.autoApprove) body.autoApprove = true;
  return body;
}

/** What a key allows, in words; fields an older server does not send are left out. */
function describeLimits(k: Partial<KeySummary>): string {
  return [
    `domains ${k.domains?.join(',') || '(any hostname no other agent holds)'}`,
    `upstreams ${k.upstreams?.join(',') || "(the agent's own host)"}`,
    k.maxRoutes === undefined ? '' : `${k.maxRoutes} routes per agent`,
    k.maxPending === undefined ? '' : `${k.maxPending} pending agents`,
    k.autoApprove ? 'auto-approve' : 'approval needed',
  ]
    .filter(Boolean)
    .join('; ');
}

export async function agentsCommand(
  config: ClientConfig,
  api: ApiClient,
  rest: string[],
  out: Out,
): Promise<number> {
  const [verb, ref] = rest;
  const asJson = config.json;
  switch (verb) {
    case 'list':
    case undefined: {
      const { agents } = await api.get<{ agents: AgentSummary[] }>('/api/agents');
      if (asJson) out(json(agents));
      else
        out(
          table(
            ['ID', 'NAME', 'STATUS', 'HEARTBEAT', 'VERSION', 'HOST IP', 'ROUTES', 'KEY'],
            agents.map((a) => [
              a.id,
              a.name,
              [a.status, a.cleartext ? 'no TLS' : '', a.tunnel ? 'tunnel' : ''].filter(Boolean).join(', '),
              a.heartbeatAgeSeconds === undefined ? '-' : `${a.heartbeatAgeSeconds}s ago`,
              a.version ?? '-',
              a.hostIp ?? '-',
              String(a.routes),
              a.keyName ?? '-',
            ]),
          ),
        );
      return 0;
    }
    case 'approve': {
      if (!ref) throw new UserError('CONFIG_INVALID', 'berth agents approve needs an agent id or name');
      const r = await api.post<{ agent: AgentSummary }>(`/api/agents/${encodeURIComponent(ref)}/approve`, {});
      out(asJson ? json(r) : line`approved agent ${r.agent.name} (${r.agent.id})`);
      return 0;
    }
    case 'remove': {
      if (!ref) throw new UserError('CONFIG_INVALID', 'berth agents remove needs an agent id or name');
      const r = await api.del<{ agent: AgentSummary }>(`/api/agents/${encodeURIComponent(ref)}`);
      out(
        asJson
          ? json(r)
          : line`removed agent ${r.agent.name} (${r.agent.id}); its routes leave the front door`,
      );
      return 0;
    }
    default:
      throw new UserError('CONFIG_INVALID', `unknown "berth agents ${verb}": use list, approve or remove`);
  }
}

/**
 * How to run an agent with a new key, keeping the key off the command line: any local user can
 * read a process's arguments (/proc/PID/cmdline, ps), while a file or the environment is private.
 */
export function agentHowTo(server: string): Printable {
  return line`Run an agent with it. Keep the key off the command line, where any local user can read it:
save it in a file only the agent's user can read (e.g. /etc/berth/agent.key, chmod 600) and run
  berth agent --server ${server} --key-file /etc/berth/agent.key
or set BERTH_AGENT_KEY in the agent's environment (docker run --env-file FILE, compose env_file:,
with the line BERTH_AGENT_KEY=<key> in FILE).`;
}
