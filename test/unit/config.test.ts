import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  type AgentConfig,
  type ClientConfig,
  loadConfig,
  parseDuration,
  parseListen,
  type ServeConfig,
} from '../../src/config.js';

const serve = (argv: string[], env: NodeJS.ProcessEnv = {}, command = 'standalone') => {
  const l = loadConfig(command, argv, env);
  if (l.kind !== 'serve') throw new Error(`not a serve config: ${l.kind}`);
  return l.config as ServeConfig;
};
const agent = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
  const l = loadConfig('agent', ['--server', 'http://127.0.0.1:7080', ...argv], env);
  if (l.kind !== 'agent') throw new Error(`not an agent config: ${l.kind}`);
  return l.config as AgentConfig;
};
const client = (command: string, argv: string[], env: NodeJS.ProcessEnv = {}) => {
  const l = loadConfig(command, argv, env);
  if (l.kind !== 'client') throw new Error(`not a client config: ${l.kind}`);
  return l.config as ClientConfig;
};

describe('loadConfig', () => {
  it('takes flags over BERTH_* over defaults, and aliases DOCKER_HOST', () => {
    const c = serve(
      ['--tls', 'off', '--caddy-admin=http://127.0.0.1:2019', '--caddy-admin', 'unix:///x.sock'],
      {
        BERTH_TLS: 'internal',
        BERTH_HTTP_LISTEN: '127.0.0.1:8080',
        DOCKER_HOST: 'unix:///tmp/d.sock',
      },
    );
    expect(c.caddy.tls).toBe('off');
    expect(c.caddy.httpListen).toBe('127.0.0.1:8080');
    expect(c.caddy.admin).toEqual(['http://127.0.0.1:2019', 'unix:///x.sock']);
    expect(c.watch?.docker).toBe('unix:///tmp/d.sock');
    expect(c.dataDir).toBe(resolve('./berth-data'));
    expect(c.apiListen).toEqual({ host: '127.0.0.1', port: 7080 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('reads --traefik-outside-middlewares as a list of names, and refuses anything else', () => {
    const c = agent(['--key', 'k', '--traefik-outside-middlewares', 'redirect-to-https@file, compress']);
    expect(c.traefikOutsideMiddlewares).toEqual(['redirect-to-https@file', 'compress']);
    expect(agent(['--key', 'k']).traefikOutsideMiddlewares).toBeUndefined();
    expect(() => agent(['--key', 'k', '--traefik-outside-middlewares', 'ok@file,bad name'])).toThrowError(
      /--traefik-outside-middlewares: expected middleware names such as redirect-to-https@file, not "bad name"/,
    );
  });

  it('BERTH_DOCKER wins over DOCKER_HOST', () => {
    expect(serve([], { BERTH_DOCKER: 'tcp://127.0.0.1:2375', DOCKER_HOST: 'unix:///x' }).watch?.docker).toBe(
      'tcp://127.0.0.1:2375',
    );
  });

  it('refuses a Docker endpoint the agent cannot reach, naming it', () => {
    expect(() => serve([], { DOCKER_HOST: 'ssh://me@host' })).toThrowError(
      /--docker: docker endpoint "ssh:\/\/me@host": expected unix:\/\/\/path or tcp:\/\/host:port/,
    );
    expect(serve([], { DOCKER_HOST: 'https://docker.example:2376' }).watch?.docker).toBe(
      'https://docker.example:2376',
    );
  });

  it('reads BERTH_ADMIN_TOKEN for the server and the CLI, and nowhere else', () => {
    expect(serve([], { BERTH_ADMIN_TOKEN: 'tok' }).adminToken).toBe('tok');
    expect(client('routes', [], { BERTH_ADMIN_TOKEN: 'tok' }).token).toBe('tok');
    expect(client('routes', ['--token', 'mine'], { BERTH_ADMIN_TOKEN: 'tok' }).token).toBe('mine');
    expect(client('routes', [], { BERTH_API_LISTEN: '127.0.0.1:9000' }).server).toBe('http://127.0.0.1:9000');
  });

  it('reports every problem at once', () => {
    expect(() =>
      loadConfig('standalone', ['--nope', '--tls', 'sometimes', '--resync-interval', 'soon'], {
        BERTH_LOG_LEVEL: 'loud',
      }),
    ).toThrowError(
      /unknown flag --nope[\s\S]*--tls: expected one of auto, internal, off, got "sometimes"[\s\S]*--resync-interval: expected a duration[\s\S]*BERTH_LOG_LEVEL: expected one of/,
    );
  });

  it('checks what used to be checked at start, all at once: listen addresses, --http-bind, --store', () => {
    expect(() =>
      loadConfig(
        'standalone',
        ['--api-listen', '7080', '--http-bind', 'tailnet', '--store', 'redis://r'],
        {},
      ),
    ).toThrowError(
      /--store is for berth server replicas[\s\S]*--http-bind tailnet: expected an IP address[\s\S]*--api-listen 7080: expected host:port/,
    );
    expect(() =>
      loadConfig('server', ['--http-bind', '100.64.0.7', '--http-listen', '10.0.0.1:80'], {}),
    ).toThrowError(/--http-listen 10.0.0.1:80 names another address than --http-bind 100.64.0.7/);
    const bound = serve(['--http-bind', '100.64.0.7'], {}, 'server');
    expect(bound.caddy.httpListen).toBe('100.64.0.7:80');
    expect(bound.caddy.httpsListen).toBe('100.64.0.7:443');
    expect(bound.watch).toBeUndefined();
  });

  it('does not accept server flags on client commands', () => {
    expect(() => loadConfig('routes', ['--tls', 'off'], {})).toThrowError(
      /unknown flag --tls for "berth routes"/,
    );
  });

  it('parses durations and listen addresses', () => {
    expect(parseDuration('15s')).toBe(15_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('2')).toBe(2_000);
    expect(parseDuration('x')).toBeUndefined();
    expect(parseListen('http-listen', ':80')).toEqual({ host: '', port: 80 });
    expect(parseListen('http-listen', '[::1]:8080')).toEqual({ host: '::1', port: 8080 });
    expect(() => parseListen('http-listen', '80')).toThrowError(/--http-listen 80: expected host:port/);
  });

  it('gives client commands their flags typed', () => {
    const c = client('keys', [
      '--name',
      'web',
      '--domains',
      'a.example.com, *.b.example.com',
      '--max-routes',
      '5',
    ]);
    expect(c).toMatchObject({ name: 'web', domains: ['a.example.com', '*.b.example.com'], maxRoutes: 5 });
    expect(client('exec', ['--timeout', '5m']).timeoutMs).toBe(300_000);
  });
});

describe('berth agent', () => {
  it('needs a server and a key, and says so together', () => {
    expect(() => loadConfig('agent', [], {})).toThrowError(
      /--server is required[\s\S]*an agent key is required/,
    );
  });

  it('reads the key from --key, BERTH_AGENT_KEY or --key-file, and says where it came from', () => {
    expect(agent(['--key', 'k'], { BERTH_AGENT_KEY: 'e' })).toMatchObject({ key: 'k', keySource: '--key' });
    expect(agent(['--key=k'])).toMatchObject({ key: 'k', keySource: '--key' });
    expect(agent([], { BERTH_AGENT_KEY: 'e' })).toMatchObject({ key: 'e', keySource: 'BERTH_AGENT_KEY' });
    expect(agent([], { BERTH_KEY: 'e' })).toMatchObject({ key: 'e', keySource: 'BERTH_KEY' });
    const dir = mkdtempSync(join(tmpdir(), 'bkey-'));
    writeFileSync(join(dir, 'key'), 'from-file\n');
    expect(agent(['--key-file', join(dir, 'key')])).toMatchObject({
      key: 'from-file',
      keySource: '--key-file',
    });
    rmSync(dir, { recursive: true });
    expect(() => agent(['--key-file', '/nonexistent/key'])).toThrowError(
      /--key-file \/nonexistent\/key: ENOENT/,
    );
  });
});

describe('--dialects', () => {
  it('defaults to every dialect, takes a comma-separated flag or BERTH_DIALECTS, in order', () => {
    expect(agent(['--key', 'k']).dialects).toEqual(['berth', 'caddy', 'traefik', 'dockflare']);
    expect(serve(['--dialects', 'traefik,berth']).watch?.dialects).toEqual(['traefik', 'berth']);
    expect(agent(['--key', 'k'], { BERTH_DIALECTS: 'caddy, dockflare' }).dialects).toEqual([
      'caddy',
      'dockflare',
    ]);
  });

  it('refuses an unknown dialect with a clear error, and is not a server flag', () => {
    expect(() => loadConfig('standalone', ['--dialects', 'berth,nginx'], {})).toThrowError(
      /--dialects: expected a comma-separated list of berth, caddy, traefik, dockflare, got "nginx"/,
    );
    expect(() => agent(['--key', 'k'], { BERTH_DIALECTS: 'Traefik' })).toThrowError(
      /BERTH_DIALECTS: expected .* got "Traefik"/,
    );
    expect(() => loadConfig('server', ['--dialects', 'berth'], {})).toThrowError(/unknown flag --dialects/);
  });
});

describe('the agent channel (TLS)', () => {
  const PINNED = 'berth_agent_G1TlPJBJDPi-FJTWkncYpv9K6_2E1aov.01CPLJ_giURkJBLWJ1trg915B4VZ2H7demTV3zuyEeQ';
  const agentAt = (server: string, argv: string[] = []) => {
    const l = loadConfig('agent', ['--server', server, '--key', PINNED, ...argv], {});
    if (l.kind !== 'agent') throw new Error('not an agent');
    return l.config;
  };

  it('serves agents on 0.0.0.0:7443 by default; off, another address, public names', () => {
    expect(serve([]).agentTls).toEqual({ listen: { host: '0.0.0.0', port: 7443 }, publicNames: [] });
    expect(serve(['--agent-listen', 'off']).agentTls.listen).toBeUndefined();
    expect(
      serve(['--agent-listen', '10.0.0.1:8443', '--public-name', 'berth.example.com,10.0.0.1']).agentTls,
    ).toEqual({ listen: { host: '10.0.0.1', port: 8443 }, publicNames: ['berth.example.com', '10.0.0.1'] });
    expect(serve([], { BERTH_PUBLIC_NAME: 'a.example.com, b.example.com' }).agentTls.publicNames).toEqual([
      'a.example.com',
      'b.example.com',
    ]);
  });

  it('reports bad TLS flags together', () => {
    expect(() =>
      serve(['--agent-listen', 'nowhere', '--public-name', 'bad name', '--agent-tls-cert', '/x/cert.pem']),
    ).toThrowError(
      /--agent-listen nowhere: expected host:port[\s\S]*--public-name bad name: expected a DNS name or an IP address[\s\S]*--agent-tls-cert and --agent-tls-key go together/,
    );
  });

  it('splits a pinned key into the secret (what is sent) and the pin (what is checked)', () => {
    const c = agentAt('https://berth.example.com:7443');
    expect(c.key).toBe('berth_agent_G1TlPJBJDPi-FJTWkncYpv9K6_2E1aov');
    expect(c.trust).toEqual({ pin: '01CPLJ_giURkJBLWJ1trg915B4VZ2H7demTV3zuyEeQ', insecureTransport: false });
  });

  it('refuses a malformed key without repeating it', () => {
    expect(() => loadConfig('agent', ['--server', 'https://b:7443', '--key', `${PINNED}x`], {})).toThrowError(
      /--key: the agent key's pin \(after the dot\) is malformed/,
    );
  });

  it('refuses clear text to another machine unless --insecure-transport; loopback is fine', () => {
    for (const url of ['http://10.0.0.5:7080', 'ws://berth.example.com:7080']) {
      expect(() => agentAt(url)).toThrowError(/would send the agent key, snapshots and exec output in clear/);
      expect(agentAt(url, ['--insecure-transport']).trust.insecureTransport).toBe(true);
    }
    for (const url of ['http://127.0.0.1:7080', 'http://localhost:7080', 'http://[::1]:7080', 'wss://b:7443'])
      expect(agentAt(url).servers).toEqual([url]);
    expect(() => agentAt('https://a:7443,http://10.0.0.6:7080')).toThrowError(
      /http:\/\/10\.0\.0\.6:7080: plain/,
    );
  });

  it('reads --ca-file, and says when it is missing or not PEM', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bca-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n');
      writeFileSync(join(dir, 'junk'), 'not a certificate');
      expect(agentAt('https://b:7443', ['--ca-file', join(dir, 'ca.pem')]).trust.caFile).toBe(
        join(dir, 'ca.pem'),
      );
      expect(() => agentAt('https://b:7443', ['--ca-file', join(dir, 'junk')])).toThrowError(
        /--ca-file .*junk: no PEM certificate in it/,
      );
      expect(() => agentAt('https://b:7443', ['--ca-file', join(dir, 'none')])).toThrowError(/ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('agent --tunnel', () => {
  it('is off by default, and --tunnel-max-streams defaults to 1024', () => {
    expect(agent(['--key', 'k']).tunnel).toBeUndefined();
    expect(agent(['--key', 'k', '--tunnel']).tunnel).toEqual({ maxStreams: 1024 });
    expect(agent(['--key', 'k', '--tunnel', '--tunnel-max-streams', '10']).tunnel).toEqual({
      maxStreams: 10,
    });
    expect(agent(['--key', 'k'], { BERTH_TUNNEL: 'true' }).tunnel).toEqual({ maxStreams: 1024 });
  });

  it.each(['0', '65537', '1.5'])('refuses --tunnel-max-streams %s', (n) => {
    expect(() => agent(['--key', 'k', '--tunnel', '--tunnel-max-streams', n])).toThrow(/tunnel-max-streams/);
  });
});
