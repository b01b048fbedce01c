import { describe, expect, it } from 'vitest';
import { loadConfig, parseDuration, parseListen } from '../../src/config.js';

describe('loadConfig', () => {
  it('takes flags over BERTH_* over defaults, and aliases DOCKER_HOST', () => {
    const { config } = loadConfig(
      'standalone',
      ['--tls', 'off', '--caddy-admin=http://127.0.0.1:2019', '--caddy-admin', 'unix:///x.sock'],
      {
        BERTH_TLS: 'internal',
        BERTH_HTTP_LISTEN: '127.0.0.1:8080',
        DOCKER_HOST: 'unix:///tmp/d.sock',
      },
    );
    expect(config.tls).toBe('off');
    expect(config['http-listen']).toBe('127.0.0.1:8080');
    expect(config['caddy-admin']).toEqual(['http://127.0.0.1:2019', 'unix:///x.sock']);
    expect(config.docker).toBe('unix:///tmp/d.sock');
    expect(config['data-dir']).toBe('./berth-data');
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('BERTH_DOCKER wins over DOCKER_HOST', () => {
    const { config } = loadConfig('standalone', [], {
      BERTH_DOCKER: 'tcp://127.0.0.1:2375',
      DOCKER_HOST: 'unix:///x',
    });
    expect(config.docker).toBe('tcp://127.0.0.1:2375');
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
});

describe('--dialects', () => {
  it('defaults to every dialect, takes a comma-separated flag or BERTH_DIALECTS, in order', () => {
    expect(loadConfig('agent', [], {}).config.dialects).toEqual(['berth', 'caddy', 'traefik', 'dockflare']);
    expect(loadConfig('standalone', ['--dialects', 'traefik,berth'], {}).config.dialects).toEqual([
      'traefik',
      'berth',
    ]);
    expect(loadConfig('agent', [], { BERTH_DIALECTS: 'caddy, dockflare' }).config.dialects).toEqual([
      'caddy',
      'dockflare',
    ]);
  });

  it('refuses an unknown dialect with a clear error, and is not a server flag', () => {
    expect(() => loadConfig('standalone', ['--dialects', 'berth,nginx'], {})).toThrowError(
      /--dialects: expected a comma-separated list of berth, caddy, traefik, dockflare, got "nginx"/,
    );
    expect(() => loadConfig('agent', [], { BERTH_DIALECTS: 'Traefik' })).toThrowError(
      /BERTH_DIALECTS: expected .* got "Traefik"/,
    );
    expect(() => loadConfig('server', ['--dialects', 'berth'], {})).toThrowError(/unknown flag --dialects/);
  });

  it('says where each value came from (the agent warns about a key on the command line)', () => {
    expect(loadConfig('agent', ['--key', 'k'], { BERTH_AGENT_KEY: 'e' }).sources.key).toBe('--key');
    expect(loadConfig('agent', ['--key=k'], {}).sources.key).toBe('--key');
    expect(loadConfig('agent', [], { BERTH_AGENT_KEY: 'e' }).sources.key).toBe('BERTH_AGENT_KEY');
    expect(loadConfig('agent', [], { BERTH_KEY: 'e' }).sources.key).toBe('BERTH_KEY');
    const { sources } = loadConfig('agent', ['--key-file', '/k'], {});
    expect(sources.key).toBeUndefined();
    expect(sources['key-file']).toBe('--key-file');
    expect(sources['report-interval']).toBeUndefined(); // defaults have no source
  });
});
