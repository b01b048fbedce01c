// Berth's web UI: plain DOM, no framework, built by tsc into dist/ui and served by the server.
// Everything shown comes from the same API as the CLI. Text from agents (names, hostnames,
// label errors, command output) is attacker-controllable, so it only ever goes in via
// textContent, never as HTML.

import type {
  AgentSummary,
  BerthEvent,
  ContainerListing,
  HostTraffic,
  RouteView,
  TrafficReport,
} from '../model/api.js';

type Json = Record<string, unknown>;
type Agent = AgentSummary;
type Route = RouteView;
type Container = ContainerListing;

const PAGE_SIZE = 100;
let csrf = '';
let events: BerthEvent[] = [];
let source: EventSource | undefined;
let refreshTimer: number | undefined;
const ui = {
  routeFilter: '',
  routeStatus: '',
  routePage: 0,
  execAgent: '',
  execContainer: '',
  trafficSort: 'traffic' as 'traffic' | 'errors',
  trafficHost: '',
};

// ---- DOM helpers

type Child = Node | string | number | null | undefined | false;
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | ((e: Event) => void)> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children)
    if (c !== null && c !== undefined && c !== false) el.append(typeof c === 'number' ? String(c) : c);
  return el;
}

const main = () => document.getElementById('main') as HTMLElement;
/**
 * Replaces the page. A page renders when its fetches return: one that returns after sign-out
 * must not replace the sign-in form, so signed out nothing shows (signedOut() puts up the form).
 */
function show(...nodes: Child[]) {
  if (!csrf) return;
  main().replaceChildren(
    ...(nodes.filter((n) => n !== null && n !== undefined && n !== false) as (Node | string)[]),
  );
}

/** What one render() may put up: its page, through show(), unless it has been overtaken. */
interface View {
  show(...nodes: Child[]): void;
}
let renders = 0;
let lastShown = 0;
/**
 * A page shows what it fetched once the fetch returns, so renders overlap: a live refresh of the
 * routes page still waiting for /api/routes when the events page is chosen must not replace the
 * events page when its answer comes, nor may an answer that came late replace a newer one of the
 * same page. So a render shows only while its page is still the one chosen and no later render has
 * shown.
 */
function viewOf(page: string): View {
  const seq = ++renders;
  return {
    show(...nodes) {
      if (currentPage() !== page || seq < lastShown) return;
      lastShown = seq;
      show(...nodes);
    },
  };
}
const statusCell = (s: string) => h('td', {}, h('span', { class: `status ${s}`, 'data-status': s }, s));
const ago = (sec?: number) =>
  sec === undefined ? '—' : sec < 90 ? `${Math.round(sec)} s ago` : `${Math.round(sec / 60)} min ago`;

// ---- API

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function api<T = Json>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const method = init.method ?? 'GET';
  const headers: Record<string, string> = {};
  if (method !== 'GET') headers['x-berth-csrf'] = csrf;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : {};
  if (res.status === 401 && !path.startsWith('/ui/')) {
    signedOut();
    throw new ApiError(401, 'signed out');
  }
  if (!res.ok) throw new ApiError(res.status, data?.error?.message ?? `HTTP ${res.status}`);
  return data as T;
}

function errorBox(err: unknown) {
  return h('p', { class: 'error-box', role: 'alert' }, err instanceof Error ? err.message : String(err));
}

// ---- sign-in

function signedOut() {
  csrf = '';
  source?.close();
  source = undefined;
  (document.getElementById('nav') as HTMLElement).hidden = true;
  document.getElementById('live')?.classList.remove('on');
  const token = h('input', {
    type: 'password',
    name: 'token',
    placeholder: 'admin token',
    autocomplete: 'off',
  });
  const password = h('input', {
    type: 'password',
    name: 'password',
    placeholder: 'or password',
    autocomplete: 'current-password',
  });
  const msg = h('div');
  const form = h(
    'form',
    {
      id: 'login',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const body = token.value ? { token: token.value } : { password: password.value };
        try {
          const r = await api<{ csrf: string }>('/ui/login', { method: 'POST', body });
          csrf = r.csrf;
          signedIn();
        } catch (err) {
          msg.replaceChildren(errorBox(err));
        }
      },
    },
    h('label', {}, 'Admin token', token),
    h('label', {}, 'Password (set with ', h('code', {}, 'berth password set'), ')', password),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    msg,
  );
  main().replaceChildren(h('div', { class: 'login' }, h('h2', {}, 'Sign in to Berth'), form));
}

function signedIn() {
  (document.getElementById('nav') as HTMLElement).hidden = false;
  connectEvents();
  if (!location.hash || location.hash === '#/') location.hash = '#/agents';
  else render();
}

function connectEvents() {
  source?.close();
  events = [];
  source = new EventSource('/api/events');
  source.onopen = () => document.getElementById('live')?.classList.add('on');
  source.onerror = () => document.getElementById('live')?.classList.remove('on');
  source.onmessage = (m) => {
    const e = JSON.parse(m.data) as BerthEvent;
    events.push(e);
    if (events.length > 500) events.shift();
    scheduleRefresh();
  };
}

/** Live updates: a burst of events costs one re-render of the current page. */
function scheduleRefresh() {
  if (refreshTimer !== undefined) return;
  refreshTimer = window.setTimeout(() => {
    refreshTimer = undefined;
    const page = currentPage();
    // The exec page keeps its output; it refreshes only on demand.
    if (page !== 'exec') void render();
  }, 300);
}

// ---- pages

function currentPage(): string {
  return location.hash.replace(/^#\//, '').split('?')[0] || 'agents';
}

async function render() {
  if (!csrf) return;
  const page = currentPage();
  const view = viewOf(page);
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a'))
    a.classList.toggle('active', a.dataset.page === page);
  try {
    if (page === 'agents') await agentsPage(view);
    else if (page === 'routes') await routesPage(view);
    else if (page === 'traffic') await trafficPage(view);
    else if (page === 'exec') await execPage(view);
    else if (page === 'audit') await auditPage(view);
    else if (page === 'events') eventsPage(view);
    else view.show(h('p', {}, 'No such page.'));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) view.show(errorBox(err));
  }
}

async function agentsPage(view: View) {
  const { agents } = await api<{ agents: Agent[] }>('/api/agents');
  const act = (label: string, cls: string, fn: () => Promise<unknown>) =>
    h(
      'button',
      {
        type: 'button',
        class: cls,
        onclick: async () => {
          try {
            await fn();
            await render();
          } catch (err) {
            alert(err instanceof Error ? err.message : String(err));
          }
        },
      },
      label,
    );
  const rows = agents.map((a) =>
    h(
      'tr',
      { 'data-agent': a.name },
      h(
        'td',
        {},
        a.name,
        a.kind === 'local' ? h('span', { class: 'muted' }, ' (local)') : null,
        a.tunnel
          ? h(
              'span',
              { class: 'muted', 'data-tunnel': 'true', title: 'its routes are reached through its tunnel' },
              ' (tunnel)',
            )
          : null,
      ),
      a.cleartext
        ? h(
            'td',
            {},
            h('span', { class: `status ${a.status}`, 'data-status': a.status }, a.status),
            ' ',
            h(
              'span',
              {
                class: 'status error',
                'data-cleartext': 'true',
                title:
                  'connected without TLS from another machine: its key and snapshots cross the network in clear',
              },
              'no TLS',
            ),
          )
        : statusCell(a.status),
      h('td', {}, ago(a.heartbeatAgeSeconds)),
      h('td', {}, a.version ?? '—'),
      h('td', {}, a.hostIp ?? '—'),
      h('td', {}, a.routes),
      h('td', {}, a.keyName ?? '—'),
      h(
        'td',
        {},
        a.status === 'pending'
          ? act('Approve', 'primary', () => api(`/api/agents/${a.id}/approve`, { method: 'POST', body: {} }))
          : null,
        a.keyId && a.status !== 'revoked'
          ? act('Revoke key', 'danger', async () => {
              if (confirm(`Revoke key ${a.keyName}? Every agent using it is disconnected.`))
                await api(`/api/keys/${a.keyId}/revoke`, { method: 'POST', body: {} });
            })
          : null,
        a.kind !== 'local'
          ? act('Remove', 'danger', async () => {
              if (confirm(`Remove agent ${a.name}?`)) await api(`/api/agents/${a.id}`, { method: 'DELETE' });
            })
          : null,
      ),
    ),
  );
  const name = h('input', {
    type: 'text',
    name: 'name',
    placeholder: 'key name, e.g. web-hosts',
    required: true,
  });
  const domains = h('input', {
    type: 'text',
    name: 'domains',
    placeholder: 'domains (optional): *.example.com',
  });
  const auto = h('input', { type: 'checkbox', name: 'autoApprove' });
  const created = h('div', { id: 'key-created' });
  const form = h(
    'form',
    {
      id: 'create-key',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        try {
          const body: Json = { name: name.value, autoApprove: auto.checked };
          const d = domains.value
            .split(',')
            .map((x) => x.trim())
            .filter(Boolean);
          if (d.length) body.domains = d;
          const r = await api<{ key: { name: string }; secret: string; agentUrls?: string[] }>('/api/keys', {
            method: 'POST',
            body,
          });
          created.replaceChildren(keyPanel(r.key.name, r.secret, r.agentUrls?.[0]));
        } catch (err) {
          created.replaceChildren(errorBox(err));
        }
      },
    },
    h('strong', {}, 'New agent key'),
    name,
    domains,
    h('label', {}, auto, ' approve its agents at once'),
    h('button', { type: 'submit', class: 'primary' }, 'Create key'),
    h(
      'p',
      { class: 'hint' },
      'Without domains, the key’s agents may claim any hostname that no other agent holds. Name domains to limit it.',
    ),
  );
  // A re-render (live updates, the 5 s refresh) keeps the key form with whatever is typed in it,
  // and the key it just showed (shown only once), together: the form writes into its own slot.
  const keptForm = document.getElementById('create-key');
  const keptSlot = document.getElementById('key-created');
  const keep = keptForm && keptSlot;
  view.show(
    h('h2', {}, `Agents (${agents.length})`),
    h(
      'table',
      { id: 'agents' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ...['Name', 'Status', 'Heartbeat', 'Version', 'Host IP', 'Routes', 'Key', ''].map((t) =>
            h('th', {}, t),
          ),
        ),
      ),
      h('tbody', {}, ...rows),
    ),
    keep ? keptForm : form,
    keep ? keptSlot : created,
  );
}

/** Where the key lives on the Docker host: read by docker/compose, never on a command line. */
const KEY_ENV_FILE = '/etc/berth/agent.env';

function keyPanel(name: string, secret: string, agentUrl?: string): HTMLElement {
  // The agent TLS listener when the server has one (the key pins its CA), else this page's origin.
  const server = agentUrl ?? location.origin;
  // The key goes in an env file, not in the commands: any local user can read a process's
  // command line (/proc/PID/cmdline, ps), and shell history keeps it too.
  const envFile = `BERTH_AGENT_KEY=${secret}\n`;
  const run = `docker run -d --name berth-agent --restart unless-stopped --env-file ${KEY_ENV_FILE} -v /var/run/docker.sock:/var/run/docker.sock:ro -v berth-agent:/data berth agent --server ${server} --data-dir /data`;
  const compose = `services:\n  berth-agent:\n    image: berth\n    command: agent --server ${server} --data-dir /data\n    restart: unless-stopped\n    env_file: ${KEY_ENV_FILE}\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock:ro\n      - berth-agent:/data\nvolumes:\n  berth-agent: {}\n`;
  const copy = (label: string, text: string) =>
    h(
      'button',
      {
        type: 'button',
        onclick: async (e: Event) => {
          const b = e.target as HTMLButtonElement;
          try {
            await navigator.clipboard.writeText(text);
            b.textContent = 'Copied';
          } catch {
            b.textContent = 'Select and copy by hand';
          }
        },
      },
      label,
    );
  return h(
    'div',
    { class: 'panel', id: 'key-panel' },
    h('p', {}, 'Key ', h('strong', {}, name), ' — shown once, store it now:'),
    h('pre', { id: 'key-secret' }, secret),
    copy('Copy key', secret),
    h(
      'p',
      {},
      'On the Docker host, save it in ',
      h('code', {}, KEY_ENV_FILE),
      ' (readable by root only: chmod 600), as:',
    ),
    h('pre', { id: 'key-env-file' }, envFile),
    copy('Copy env file', envFile),
    h('p', {}, 'Then run the agent (the key stays off the command line):'),
    h('pre', { id: 'key-docker-run' }, run),
    copy('Copy docker run', run),
    h('p', {}, 'Or with compose (see deploy/compose.agent.yml for the read-only socket proxy):'),
    h('pre', {}, compose),
    copy('Copy compose file', compose),
  );
}

async function routesPage(view: View) {
  const { routes } = await api<{ routes: Route[] }>('/api/routes');
  const q = ui.routeFilter.toLowerCase();
  const shown = routes.filter((r) => {
    if (ui.routeStatus && r.status !== ui.routeStatus) return false;
    if (!q) return true;
    const text = [
      ...r.hosts,
      r.path,
      r.listen ? `tcp :${r.listen}` : '',
      ...r.upstreams,
      r.tunnel ?? '',
      r.agentName,
      r.container.name,
      ...r.errors,
    ]
      .join(' ')
      .toLowerCase();
    return text.includes(q);
  });
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  ui.routePage = Math.min(ui.routePage, pages - 1);
  const slice = shown.slice(ui.routePage * PAGE_SIZE, (ui.routePage + 1) * PAGE_SIZE);
  const filter = h('input', {
    type: 'search',
    id: 'route-filter',
    placeholder: 'filter: host, upstream, container, error…',
    value: ui.routeFilter,
  });
  filter.addEventListener('input', () => {
    ui.routeFilter = filter.value;
    ui.routePage = 0;
    void render().then(() => {
      const f = document.getElementById('route-filter') as HTMLInputElement | null;
      f?.focus();
      f?.setSelectionRange(f.value.length, f.value.length);
    });
  });
  const status = h(
    'select',
    { id: 'route-status' },
    ...['', 'applied', 'pending', 'error'].map((s) => {
      const o = h('option', { value: s }, s || 'any status');
      if (s === ui.routeStatus) o.selected = true;
      return o;
    }),
  );
  status.addEventListener('change', () => {
    ui.routeStatus = status.value;
    ui.routePage = 0;
    void render();
  });
  const go = (p: number) => () => {
    ui.routePage = p;
    void render();
  };
  const rows = slice.map((r) =>
    h(
      'tr',
      { 'data-route': r.kind === 'tcp' ? `tcp:${r.listen}` : r.hosts.join(',') },
      h('td', {}, r.kind === 'tcp' ? `tcp :${r.listen}` : r.hosts.join(', ') || '—'),
      h('td', {}, r.kind === 'tcp' ? (r.allow?.length ? `allow ${r.allow.join(', ')}` : '—') : r.path || '—'),
      h(
        'td',
        r.tunnel
          ? { 'data-tunnel': r.tunnel, title: "reached through the agent's tunnel; the agent dials" }
          : {},
        r.tunnel ? `${r.tunnel} → ${r.upstreams.join(', ')}` : r.upstreams.join(', ') || '—',
      ),
      h('td', {}, `${r.agentName} / ${r.container.name}`),
      statusCell(r.status),
      h(
        'td',
        { class: r.errors.length ? 'err' : 'muted' },
        [...r.errors, r.note ?? ''].filter(Boolean).join('; '),
      ),
    ),
  );
  view.show(
    h('h2', {}, `Routes (${shown.length} of ${routes.length})`),
    h('form', { onsubmit: (e: Event) => e.preventDefault() }, filter, status),
    h(
      'table',
      { id: 'routes' },
      h(
        'thead',
        {},
        h('tr', {}, ...['Host', 'Path', 'Upstreams', 'Owner', 'Status', 'Detail'].map((t) => h('th', {}, t))),
      ),
      h('tbody', {}, ...rows),
    ),
    h(
      'div',
      { class: 'pager' },
      h(
        'button',
        { type: 'button', disabled: ui.routePage === 0, onclick: go(ui.routePage - 1) },
        '‹ Previous',
      ),
      h('span', { id: 'route-page' }, `page ${ui.routePage + 1} of ${pages}`),
      h(
        'button',
        { type: 'button', disabled: ui.routePage >= pages - 1, onclick: go(ui.routePage + 1) },
        'Next ›',
      ),
    ),
  );
}

// ---- traffic

const SVG = 'http://www.w3.org/2000/svg';

/**
 * A chart drawn by the page itself: one polyline per series over the window, scaled to the
 * largest value shown; gaps (no requests, so no latency) break the line.
 */
function chart(series: { values: (number | null)[]; cls: string }[], w: number, hgt: number, label: string) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  svg.setAttribute('width', String(w));
  svg.setAttribute('height', String(hgt));
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const max = Math.max(0, ...series.flatMap((s) => s.values.filter((v): v is number => v !== null)));
  const n = Math.max(1, (series[0]?.values.length ?? 1) - 1);
  for (const s of series) {
    let points: string[] = [];
    const flush = () => {
      if (points.length > 0) {
        const line = document.createElementNS(SVG, 'polyline');
        line.setAttribute('points', points.length === 1 ? `${points[0]} ${points[0]}` : points.join(' '));
        line.setAttribute('class', s.cls);
        svg.append(line);
      }
      points = [];
    };
    s.values.forEach((v, i) => {
      if (v === null) {
        flush();
        return;
      }
      const x = (i / n) * w;
      const y = hgt - 1 - (max > 0 ? (v / max) * (hgt - 2) : 0);
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    flush();
  }
  const title = document.createElementNS(SVG, 'title');
  title.textContent = `${label} (max ${fmt(max)})`;
  svg.append(title);
  return svg;
}

const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const fmtMs = (v: number | null) => (v === null ? '—' : `${fmt(v)} ms`);
function fmtBytes(v: number): string {
  if (v < 1000) return `${Math.round(v)} B/s`;
  if (v < 1e6) return `${(v / 1e3).toFixed(1)} KB/s`;
  return `${(v / 1e6).toFixed(1)} MB/s`;
}
const fmtPct = (v: number) => `${(v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1)}%`;

let trafficTimer: number | undefined;

async function trafficPage(view: View) {
  const r = await api<TrafficReport>('/api/traffic');
  // Live: the page fetches again every 2 s while it is shown.
  window.clearTimeout(trafficTimer);
  trafficTimer = window.setTimeout(() => {
    if (currentPage() === 'traffic') void render();
  }, 2_000);
  const hosts = [...r.hosts].sort((a, b) =>
    ui.trafficSort === 'errors'
      ? b.now.errorRate - a.now.errorRate || b.now.errorsPerSecond - a.now.errorsPerSecond
      : b.now.requestsPerSecond - a.now.requestsPerSecond || b.total.requests - a.total.requests,
  );
  const sortButton = (key: 'traffic' | 'errors', text: string) =>
    h(
      'button',
      {
        type: 'button',
        id: `sort-${key}`,
        class: ui.trafficSort === key ? 'primary' : '',
        onclick: () => {
          ui.trafficSort = key;
          void render();
        },
      },
      text,
    );
  const owners = (t: HostTraffic) =>
    [...new Set(t.owners.map((o) => `${o.agent} / ${o.container}`))].join(', ') || '—';
  const rows = hosts.map((t) =>
    h(
      'tr',
      {
        'data-host': t.host,
        class: t.host === ui.trafficHost ? 'selected' : '',
        onclick: () => {
          ui.trafficHost = ui.trafficHost === t.host ? '' : t.host;
          void render();
        },
      },
      h('td', {}, h('a', { href: '#/traffic' }, t.host)),
      h('td', {}, owners(t)),
      h(
        'td',
        { class: 'num', 'data-field': 'rps' },
        fmt(t.now.requestsPerSecond),
        chart([{ values: t.series.requestsPerSecond, cls: 'req' }], 90, 22, `${t.host} requests/s`),
      ),
      h(
        'td',
        { class: t.now.errorRate > 0 ? 'num err' : 'num', 'data-field': 'errors' },
        fmtPct(t.now.errorRate),
        chart([{ values: t.series.errorsPerSecond, cls: 'err' }], 90, 22, `${t.host} 5xx/s`),
      ),
      h('td', { class: 'num', 'data-field': 'p50' }, fmtMs(t.now.p50Ms)),
      h(
        'td',
        { class: 'num', 'data-field': 'p99' },
        fmtMs(t.now.p99Ms),
        chart([{ values: t.series.p99Ms, cls: 'lat' }], 90, 22, `${t.host} p99 ms`),
      ),
      h('td', { class: 'num', 'data-field': 'in' }, fmtBytes(t.now.bytesInPerSecond)),
      h('td', { class: 'num', 'data-field': 'out' }, fmtBytes(t.now.bytesOutPerSecond)),
      h('td', { class: 'num', 'data-field': 'total' }, String(t.total.requests)),
      ...(['2xx', '3xx', '4xx', '5xx'] as const).map((c) =>
        h('td', { class: 'num', 'data-field': c }, String(t.total.byClass[c])),
      ),
    ),
  );
  const selected = hosts.find((t) => t.host === ui.trafficHost);
  const minutes = Math.round(r.windowSeconds / 60);
  const panel = selected
    ? h(
        'section',
        { class: 'route-panel', id: 'route-panel', 'data-host': selected.host },
        h('h3', {}, `${selected.host} — last ${minutes} minutes`),
        h(
          'div',
          { class: 'charts' },
          ...[
            ['Requests/s', [{ values: selected.series.requestsPerSecond, cls: 'req' }]],
            ['5xx/s', [{ values: selected.series.errorsPerSecond, cls: 'err' }]],
            [
              'Latency p50 / p99 (ms)',
              [
                { values: selected.series.p50Ms, cls: 'lat50' },
                { values: selected.series.p99Ms, cls: 'lat' },
              ],
            ],
            [
              'Bytes/s in / out',
              [
                { values: selected.series.bytesInPerSecond, cls: 'bin' },
                { values: selected.series.bytesOutPerSecond, cls: 'bout' },
              ],
            ],
          ].map(([title, series]) =>
            h(
              'figure',
              {},
              chart(
                series as { values: (number | null)[]; cls: string }[],
                320,
                90,
                `${selected.host} ${title}`,
              ),
              h('figcaption', {}, title as string),
            ),
          ),
        ),
      )
    : null;
  const tcpRows = r.tcp.map((t) =>
    h(
      'tr',
      { 'data-listener': t.listener },
      h('td', {}, `tcp :${t.listener}`),
      h('td', { class: 'num', 'data-field': 'active' }, String(t.active)),
      h(
        'td',
        { class: 'num', 'data-field': 'cps' },
        fmt(t.now.connectionsPerSecond),
        chart(
          [{ values: t.series.connectionsPerSecond, cls: 'req' }],
          90,
          22,
          `:${t.listener} connections/s`,
        ),
      ),
      h('td', { class: 'num' }, fmtBytes(t.now.bytesInPerSecond)),
      h(
        'td',
        { class: 'num' },
        fmtBytes(t.now.bytesOutPerSecond),
        chart([{ values: t.series.bytesOutPerSecond, cls: 'bout' }], 90, 22, `:${t.listener} bytes out/s`),
      ),
      h('td', { class: 'num', 'data-field': 'connections' }, String(t.total.connections)),
    ),
  );
  const summed = r.replicas.length > 1 ? `, ${r.replicas.length} replicas summed` : '';
  view.show(
    h('h2', {}, `Traffic (rates over the last minute${summed})`),
    r.enabled
      ? null
      : h(
          'p',
          { class: 'error-box' },
          'Caddy streams no request lines to Berth (--traffic off, or a Caddy on another machine): no HTTP figures.',
        ),
    h(
      'div',
      { class: 'toolbar' },
      'Sort: ',
      sortButton('traffic', 'by traffic'),
      sortButton('errors', 'by error rate'),
    ),
    panel,
    h(
      'table',
      { id: 'traffic' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ...[
            'Host',
            'Owner',
            'Req/s',
            '5xx',
            'p50',
            'p99',
            'In',
            'Out',
            'Requests',
            '2xx',
            '3xx',
            '4xx',
            '5xx',
          ].map((t) => h('th', {}, t)),
        ),
      ),
      h('tbody', {}, ...rows),
    ),
    rows.length === 0 ? h('p', { class: 'muted' }, 'No HTTP requests yet.') : null,
    h('h2', {}, 'TCP listeners'),
    tcpRows.length === 0
      ? h('p', { class: 'muted' }, 'No TCP listeners.')
      : h(
          'table',
          { id: 'traffic-tcp' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ...['Listener', 'Open', 'Conn/s', 'In', 'Out', 'Connections'].map((t) => h('th', {}, t)),
            ),
          ),
          h('tbody', {}, ...tcpRows),
        ),
  );
}

async function execPage(view: View) {
  const { containers } = await api<{ containers: Container[] }>('/api/containers');
  const runnable = containers.filter((c) => c.state === 'running' && (c.execRules?.length ?? 0) > 0);
  const agents = [...new Map(runnable.map((c) => [c.agentId, c.agentName])).entries()];
  if (!agents.some(([id]) => id === ui.execAgent)) ui.execAgent = agents[0]?.[0] ?? '';
  const mine = runnable.filter((c) => c.agentId === ui.execAgent);
  if (!mine.some((c) => c.id === ui.execContainer)) ui.execContainer = mine[0]?.id ?? '';
  const container = mine.find((c) => c.id === ui.execContainer);

  const agentSel = h(
    'select',
    { id: 'exec-agent' },
    ...agents.map(([id, name]) => {
      const o = h('option', { value: id }, name);
      o.selected = id === ui.execAgent;
      return o;
    }),
  );
  agentSel.addEventListener('change', () => {
    ui.execAgent = agentSel.value;
    void render();
  });
  const containerSel = h(
    'select',
    { id: 'exec-container' },
    ...mine.map((c) => {
      const o = h('option', { value: c.id }, c.service ? `${c.name} (${c.service})` : c.name);
      o.selected = c.id === ui.execContainer;
      return o;
    }),
  );
  containerSel.addEventListener('change', () => {
    ui.execContainer = containerSel.value;
    void render();
  });
  const argv = h('input', {
    type: 'text',
    id: 'exec-argv',
    size: '60',
    placeholder: 'command and arguments',
  });
  const timeout = h('input', { type: 'text', id: 'exec-timeout', size: '5', value: '60s' });
  const out = h('pre', { id: 'exec-output' });
  const result = h('p', { id: 'exec-result', class: 'muted' });
  const rules = (container?.execRules ?? []).map((r) =>
    h(
      'button',
      {
        type: 'button',
        title: '* is one argument; ... any further ones',
        onclick: () => {
          argv.value = r.replace(/\s*\.\.\.$/, '');
          argv.focus();
        },
      },
      r,
    ),
  );
  const run = h('button', { type: 'submit', class: 'primary', id: 'exec-run' }, 'Run');
  const form = h(
    'form',
    {
      id: 'exec-form',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        out.replaceChildren();
        result.textContent = 'running…';
        run.disabled = true;
        try {
          await runExec(
            container!,
            argv.value.trim().split(/\s+/).filter(Boolean),
            timeout.value,
            out,
            result,
          );
        } catch (err) {
          result.textContent = err instanceof Error ? err.message : String(err);
        } finally {
          run.disabled = false;
        }
      },
    },
    h('label', {}, 'Agent ', agentSel),
    h('label', {}, 'Container ', containerSel),
    h('label', {}, 'Timeout ', timeout),
    argv,
    run,
  );
  view.show(
    h('h2', {}, 'Run an allowed command'),
    agents.length === 0
      ? h(
          'p',
          { class: 'muted' },
          'No running container allows any command. Label one with berth.exec.allow=… (see the README).',
        )
      : h(
          'div',
          {},
          form,
          h('div', { class: 'rules' }, h('span', { class: 'muted' }, 'Allowed here: '), ...rules),
          out,
          result,
        ),
  );
}

async function runExec(c: Container, argv: string[], timeout: string, out: HTMLElement, result: HTMLElement) {
  if (argv.length === 0) throw new Error('type a command first');
  const res = await fetch('/api/exec', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', 'x-berth-csrf': csrf },
    body: JSON.stringify({ target: c.id, agent: c.agentId, argv, timeout }),
  });
  if (!res.ok || !res.body) {
    const data = await res.json().catch(() => ({}));
    throw new Error(data?.error?.message ?? `HTTP ${res.status}`);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const bytes = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i = buf.indexOf('\n');
    while (i >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      i = buf.indexOf('\n');
      if (!line) continue;
      const m = JSON.parse(line);
      if (m.stream) {
        const raw = Uint8Array.from(atob(m.data), (ch) => ch.charCodeAt(0));
        out.append(h('span', { class: m.stream }, bytes.decode(raw, { stream: true })));
      } else if (m.exit) {
        const x = m.exit;
        result.textContent = `exit ${x.exitCode ?? '—'} in ${x.durationMs} ms${x.timedOut ? ' (timed out; killed)' : ''}${x.truncated ? ' (output cap reached)' : ''}`;
        result.dataset.exitCode = String(x.exitCode);
      } else if (m.error) {
        result.textContent = m.error.message;
      }
    }
  }
}

async function auditPage(view: View) {
  const { entries } = await api<{ entries: Json[] }>('/api/audit?limit=200');
  view.show(
    h('h2', {}, 'Exec audit'),
    h(
      'table',
      { id: 'audit' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ...['When', 'Requester', 'Agent', 'Container', 'Command', 'Decision', 'Exit', 'Duration'].map((t) =>
            h('th', {}, t),
          ),
        ),
      ),
      h(
        'tbody',
        {},
        ...entries.map((e) =>
          h(
            'tr',
            {},
            h('td', {}, new Date(Number(e.at)).toLocaleString()),
            h('td', {}, String(e.requester ?? '')),
            // A Swarm task's node, when the audit names one.
            h('td', {}, `${String(e.agentName ?? '')}${e.node ? ` (node ${String(e.node)})` : ''}`),
            h('td', {}, String(e.container ?? '')),
            h('td', {}, h('code', {}, ((e.argv as string[]) ?? []).join(' '))),
            statusCell(String(e.decision)),
            h('td', {}, e.exitCode === undefined ? '—' : String(e.exitCode)),
            h('td', {}, e.durationMs === undefined ? '—' : `${e.durationMs} ms`),
          ),
        ),
      ),
    ),
  );
}

function eventsPage(view: View) {
  view.show(
    h('h2', {}, 'Events (live)'),
    h(
      'table',
      { id: 'events' },
      h('thead', {}, h('tr', {}, ...['When', 'Type', 'What'].map((t) => h('th', {}, t)))),
      h(
        'tbody',
        {},
        ...[...events]
          .reverse()
          .map((e) =>
            h(
              'tr',
              { 'data-type': e.type },
              h('td', {}, new Date(e.at).toLocaleTimeString()),
              h('td', {}, e.type),
              h('td', {}, e.message),
            ),
          ),
      ),
    ),
  );
}

// ---- start

document.getElementById('signout')?.addEventListener('click', async () => {
  await api('/ui/logout', { method: 'POST', body: {} }).catch(() => undefined);
  signedOut();
});
window.addEventListener('hashchange', () => void render());
// Heartbeat ages move on their own: refresh the agents page now and then.
window.setInterval(() => {
  if (csrf && currentPage() === 'agents') void render();
}, 5_000);

void (async () => {
  const s = await api<{ signedIn: boolean; csrf?: string }>('/ui/session');
  if (s.signedIn && s.csrf) {
    csrf = s.csrf;
    signedIn();
  } else signedOut();
})();
