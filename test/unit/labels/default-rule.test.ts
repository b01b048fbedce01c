// --traefik-default-rule and --caddy-label-prefix: the flags, and the template the first one is.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config.js';
import { compileDefaultRule, normalize, traefikName } from '../../../src/labels/traefik.js';
import { container } from './container.js';

const model = { Name: 'web-shop', ContainerName: 'shop_web_1', Labels: { alias: 'a.test' } };

describe('Traefik default rule', () => {
  it.each([
    ['Host(`{{ normalize .Name }}.example.com`)', 'Host(`web-shop.example.com`)'],
    ['Host(`{{ .Name | normalize }}`)', 'Host(`web-shop`)'],
    ['Host(`{{ .ContainerName | normalize | upper }}.test`)', 'Host(`SHOP-WEB-1.test`)'],
    [
      'Host(`{{ index .Labels "alias" }}`) || Host(`{{ index .Labels "none" }}x`)',
      'Host(`a.test`) || Host(`x`)',
    ],
    ['Host(`{{- lower "X.Example" -}}`)', 'Host(`x.example`)'],
    ['PathPrefix(`/`)', 'PathPrefix(`/`)'],
  ])('renders %s', (template, rule) => {
    expect(compileDefaultRule(template).render(model)).toBe(rule);
  });

  it.each([
    ['Host(`{{ .Name }`)', /is not closed/],
    ['Host(`{{ printf "%s" .Name }}`)', /printf is not a function; Berth reads \.Name/],
    ['Host(`{{ .Labels.alias }}`)', /\.Labels\.alias is not something Berth reads/],
    ['Host(`{{ normalize .Name .Name }}`)', /normalize takes one value/],
    ['Host(`{{ index .Labels }}`)', /expected index \.Labels "<label>"/],
    ['Host(`{{ }}`)', /an empty command/],
  ])('refuses %s, saying what it reads', (template, message) => {
    expect(() => compileDefaultRule(template)).toThrowError(message);
  });

  it('names containers as Traefik does: normalize(<service>_<project>) in compose, else the name', () => {
    expect(normalize('my_app.1')).toBe('my-app-1');
    expect(normalize('--a__b--')).toBe('a-b');
    expect(traefikName(container({ name: 'x_y' }))).toBe('x-y');
    expect(
      traefikName(
        container({
          name: 'shop-web-1',
          labels: { 'com.docker.compose.project': 'shop', 'com.docker.compose.service': 'web' },
        }),
      ),
    ).toBe('web-shop');
  });
});

describe('dialect flags', () => {
  it('are read for the commands that watch Docker, off or caddy by default', () => {
    const agent = loadConfig('agent', ['--server', 'http://127.0.0.1:7080', '--key', 'k'], {});
    if (agent.kind !== 'agent') throw new Error('not an agent');
    expect(agent.config.caddyLabelPrefix).toBe('caddy');
    expect(agent.config.traefikDefaultRule).toBeUndefined();
    const serve = loadConfig(
      'standalone',
      ['--traefik-default-rule', 'Host(`{{ normalize .Name }}.example.com`)'],
      { BERTH_CADDY_LABEL_PREFIX: 'proxy' },
    );
    if (serve.kind !== 'serve') throw new Error('not a server');
    expect(serve.config.watch?.caddyLabelPrefix).toBe('proxy');
    expect(serve.config.watch?.traefikDefaultRule?.render(model)).toBe('Host(`web-shop.example.com`)');
  });

  it('a default rule Berth cannot read stops the start, naming the flag', () => {
    expect(() =>
      loadConfig(
        'agent',
        [
          '--server',
          'http://127.0.0.1:7080',
          '--key',
          'k',
          '--traefik-default-rule',
          'Host(`{{ env "X" }}`)',
        ],
        {},
      ),
    ).toThrowError(/--traefik-default-rule: \{\{ env "X" \}\}: env is not a function/);
  });
});
