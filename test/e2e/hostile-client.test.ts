// A stranger at the API: every route the server describes in /openapi.json, every method, every
// spelling of its path that a router or proxy might read differently, and every kind of wrong
// credential. Without the admin token nothing may answer but 401, 403, 404 or 405. Real process,
// real HTTP (the request line is sent byte for byte: fetch would normalise the path).
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';

useCleanup();

let server: BerthProcess;
let agentKey: string;

beforeAll(async () => {
  server = await startBerth({ command: 'server' });
  const r = await server.cli(['keys', 'create', '--name', 'someagent', '--json']);
  agentKey = JSON.parse(r.stdout).secret;
});

afterAll(async () => {
  await server?.stop();
});

/** One request with the path exactly as given; the status, or 0 when the connection failed. */
function send(
  method: string,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const u = new URL(server.apiUrl);
    const body = ['POST', 'PUT', 'PATCH', 'DELETE'].includes(method) ? '{}' : undefined;
    const req = request({
      host: u.hostname,
      port: u.port,
      method,
      path,
      headers: {
        ...headers,
        ...(body ? { 'content-type': 'application/json', 'content-length': String(body.length) } : {}),
      },
      // One connection per request: a refused request must not poison the next one's parser.
      agent: false,
    });
    req.on('response', (res) => {
      let text = '';
      res.on('data', (c) => {
        if (text.length < 2_000) text += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.end(body);
  });
}

const encodeChar = (c: string, upper = false) => {
  const hex = c.charCodeAt(0).toString(16).padStart(2, '0');
  return `%${upper ? hex.toUpperCase() : hex}`;
};

/** Ways a path can be written that a naive "starts with /api/" check reads differently. */
function spellings(path: string): string[] {
  const segs = path.split('/').slice(1);
  const out = new Set<string>([path]);
  // One letter of each segment percent-encoded (lower- and upper-case hex), and every letter.
  segs.forEach((s, i) => {
    if (!s) return;
    for (const upper of [false, true]) {
      const copy = [...segs];
      copy[i] = encodeChar(s[0]!, upper) + s.slice(1);
      out.add(`/${copy.join('/')}`);
    }
    const last = [...segs];
    last[i] = s.slice(0, -1) + encodeChar(s.at(-1)!);
    out.add(`/${last.join('/')}`);
  });
  out.add(`/${segs.map((s) => [...s].map((c) => encodeChar(c)).join('')).join('/')}`);
  // Slashes: encoded, doubled, leading double, trailing.
  out.add(`/${segs.join('%2F')}`);
  out.add(`/${segs.join('%2f')}`);
  out.add(`/${segs.join('//')}`);
  out.add(`//${segs.join('/')}`);
  out.add(`${path}/`);
  out.add(`${path}//`);
  // Dot segments, plain and encoded.
  out.add(`/./${segs.join('/')}`);
  out.add(`/x/../${segs.join('/')}`);
  out.add(`/${segs[0]}/./${segs.slice(1).join('/')}`);
  out.add(`/${segs[0]}/x/../${segs.slice(1).join('/')}`);
  out.add(`/%2e/${segs.join('/')}`);
  out.add(`/x/%2e%2e/${segs.join('/')}`);
  out.add(`/healthz/../${segs.join('/')}`);
  out.add(`/ui/../${segs.join('/')}`);
  // Case, backslashes, parameters, query and fragment games.
  out.add(path.toUpperCase());
  out.add(`/${segs.map((s) => (s ? s[0]!.toUpperCase() + s.slice(1) : s)).join('/')}`);
  out.add(`/${segs.join('\\')}`);
  out.add(`/${segs[0]};x/${segs.slice(1).join('/')}`);
  out.add(`${path};.css`);
  out.add(`${path}?/healthz`);
  out.add(`${path}%3F/healthz`);
  out.add(`${path}%23`);
  out.add(`${path}%00`);
  // An absolute-form request target.
  out.add(`http://127.0.0.1${path}`);
  return [...out];
}

describe('hostile clients', () => {
  it('answers nothing but 401, 403, 404 or 405 without the admin token, on every route, method and spelling', async () => {
    const doc = (await (await fetch(`${server.apiUrl}/openapi.json`)).json()) as {
      paths: Record<string, Record<string, { 'x-berth-trust'?: string }>>;
    };
    const guarded = new Set<string>();
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const op of Object.values(ops)) if (op['x-berth-trust'] !== 'open') guarded.add(p);
    }
    expect(guarded.size).toBeGreaterThan(10);
    expect(guarded).toContain('/api/keys');
    expect(guarded).toContain('/api/exec');

    const methods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
    const creds: Record<string, Record<string, string>> = {
      none: {},
      'wrong token': { authorization: 'Bearer berth_admin_wrong' },
      'agent key': { authorization: `Bearer ${agentKey}` },
      'no scheme': { authorization: server.token },
      'basic auth': { authorization: `Basic ${Buffer.from(`admin:${server.token}x`).toString('base64')}` },
      'forged session': { cookie: 'berth_session=forged', 'x-berth-csrf': 'forged', origin: server.apiUrl },
    };
    const bad: string[] = [];
    let sent = 0;
    const statuses = new Map<number, number>();
    const refusedByParser = new Set<string>();
    for (const template of guarded) {
      const path = template.replace(/\{[^}]+\}/g, 'x');
      const queue: [string, string, string][] = [];
      for (const spelling of spellings(path))
        for (const m of methods) for (const c of Object.keys(creds)) queue.push([m, spelling, c]);
      // A few at a time: fast, without opening thousands of sockets at once.
      for (let i = 0; i < queue.length; i += 16) {
        await Promise.all(
          queue.slice(i, i + 16).map(async ([m, spelling, c]) => {
            const r = await send(m, spelling, creds[c]!);
            sent++;
            statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
            // 400 "Client Error" is Node's HTTP parser refusing a request it cannot read: no route ran.
            const parserRefusal = r.status === 400 && r.body.includes('"message":"Client Error"');
            if (parserRefusal) refusedByParser.add(spelling);
            if (![401, 403, 404, 405].includes(r.status) && !parserRefusal)
              bad.push(`${m} ${spelling} (${c}) → ${r.status} ${r.body.slice(0, 120)}`);
          }),
        );
      }
    }
    console.log(`hostile-client: refused before routing (400): ${[...refusedByParser].join(' ')}`);
    console.log(
      `hostile-client: ${sent} requests to ${guarded.size} routes; statuses ${JSON.stringify(Object.fromEntries(statuses))}`,
    );
    expect(bad).toEqual([]);
    expect(sent).toBeGreaterThan(10_000);
  });

  it('still serves the admin token on the plain spelling (the suite above could have failed)', async () => {
    const r = await send('GET', '/api/keys', { authorization: `Bearer ${server.token}` });
    expect(r.status).toBe(200);
    expect(r.body).toContain('someagent');
    const encoded = await send('GET', '/%61pi/keys', { authorization: `Bearer ${server.token}` });
    expect(encoded.status).toBe(200); // the same route, checked the same way
  });
});
