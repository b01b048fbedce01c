// The CLI's view of the API: URL and token from flags, BERTH_* or the local data dir.
import { join } from 'node:path';
import { type ClientConfig, localAdminToken } from '../config.js';
import { UserError } from '../errors.js';
import { escapeControls } from './format.js';

export interface ApiClient {
  baseUrl: string;
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body: unknown): Promise<T>;
  patch<T>(path: string, body: unknown): Promise<T>;
  del<T>(path: string): Promise<T>;
  /** POST whose successful answer is a stream; errors are read and thrown like any other. */
  stream(path: string, body: unknown): Promise<AsyncIterable<Uint8Array>>;
}

export function apiClient(config: ClientConfig): ApiClient {
  const server = config.server;
  const token = config.token ?? localAdminToken(config.dataDir) ?? noToken(config.dataDir);
  const send = async (method: string, path: string, body?: unknown): Promise<Response> => {
    let res: Response;
    try {
      res = await fetch(`${server}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new UserError(
        'SERVER_UNREACHABLE',
        `cannot reach the Berth server at ${server}: ${(err as Error).cause ?? (err as Error).message}`,
      );
    }
    if (res.ok) return res;
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const e = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
    // The message may quote what an agent sent: escaped here, where it enters, newlines included.
    throw new UserError(
      res.status === 401 ? 'UNAUTHORIZED' : res.status === 404 ? 'NOT_FOUND' : 'BAD_REQUEST',
      `${server}${path}: ${res.status} ${escapeControls(String(e?.message ?? text.slice(0, 200)))}`,
    );
  };
  const call = async <T>(method: string, path: string, body?: unknown): Promise<T> =>
    (await (await send(method, path, body)).json()) as T;
  return {
    baseUrl: server,
    get: (p) => call('GET', p),
    post: (p, b) => call('POST', p, b),
    patch: (p, b) => call('PATCH', p, b),
    del: (p) => call('DELETE', p),
    stream: async (p, b) => (await send('POST', p, b)).body as unknown as AsyncIterable<Uint8Array>,
  };
}

function noToken(dataDir: string): never {
  throw new UserError(
    'UNAUTHORIZED',
    `no admin token: pass --token, set BERTH_TOKEN or BERTH_ADMIN_TOKEN, or run where ${join(dataDir, 'admin.token')} is readable`,
  );
}
