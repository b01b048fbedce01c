// The CLI's view of the API: URL and token from flags, BERTH_* or the local data dir.
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Config } from '../config.js';
import { UserError } from '../errors.js';

export interface ApiClient {
  baseUrl: string;
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body: unknown): Promise<T>;
  del<T>(path: string): Promise<T>;
}

export function apiClient(config: Config, env: NodeJS.ProcessEnv): ApiClient {
  const server = String(config.server ?? `http://${env.BERTH_API_LISTEN ?? '127.0.0.1:7080'}`).replace(
    /\/$/,
    '',
  );
  const token = config.token
    ? String(config.token)
    : (env.BERTH_ADMIN_TOKEN ?? readLocalToken(String(config['data-dir'])));
  const call = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    let res: Response;
    try {
      res = await fetch(`${server}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(120_000),
      });
    } catch (err) {
      throw new UserError(
        'SERVER_UNREACHABLE',
        `cannot reach the Berth server at ${server}: ${(err as Error).cause ?? (err as Error).message}`,
      );
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new UserError(
        res.status === 401 ? 'UNAUTHORIZED' : res.status === 404 ? 'NOT_FOUND' : 'BAD_REQUEST',
        `${server}${path}: ${res.status} ${e?.message ?? text.slice(0, 200)}`,
      );
    }
    return json as T;
  };
  return {
    baseUrl: server,
    get: (p) => call('GET', p),
    post: (p, b) => call('POST', p, b),
    del: (p) => call('DELETE', p),
  };
}

function readLocalToken(dataDir: string): string {
  const file = join(resolve(dataDir), 'admin.token');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    throw new UserError(
      'UNAUTHORIZED',
      `no admin token: pass --token, set BERTH_TOKEN or BERTH_ADMIN_TOKEN, or run where ${file} is readable`,
    );
  }
}
