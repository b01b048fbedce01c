import { describe, expect, it } from 'vitest';
import {
  isAgentId,
  isContainerRef,
  MAX_SERVER_MESSAGE_BYTES,
  parseServerMessage,
} from '../../src/model/server-protocol.js';

const exec = (over: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: 'exec',
    id: 'ex_0123456789ab',
    container: 'a'.repeat(64).replace(/a/g, 'f'),
    argv: ['echo', 'hello'],
    timeoutMs: 60_000,
    ...over,
  });

describe('parseServerMessage', () => {
  it('accepts what servers send, extra fields included (newer servers)', () => {
    const welcome = { type: 'welcome', agentId: 'ag_0123456789ab', status: 'pending', heartbeatMs: 15000 };
    expect(parseServerMessage(JSON.stringify(welcome))).toEqual({ kind: 'message', message: welcome });
    const tunneled = { ...welcome, tunnel: { maxStreams: 1024, session: 'Ab-_'.repeat(8) } };
    expect(parseServerMessage(JSON.stringify(tunneled))).toEqual({ kind: 'message', message: tunneled });
    expect(parseServerMessage('{"type":"resync"}').kind).toBe('message');
    expect(parseServerMessage('{"type":"error","message":"invalid message: x"}').kind).toBe('message');
    const withRules = JSON.parse(exec({ serverRules: ['echo hello *'], future: { x: 1 } }));
    expect(parseServerMessage(JSON.stringify(withRules))).toEqual({ kind: 'message', message: withRules });
    expect(parseServerMessage(Buffer.from(exec({ container: 'web-1.photos_x' }))).kind).toBe('message');
  });

  it('ignores unknown types, which a newer server may send', () => {
    // (tunnel.open, once this example, is known now: test/unit/tunnel/model.test.ts.)
    expect(parseServerMessage('{"type":"relay.open","port":1}')).toEqual({
      kind: 'unknown',
      type: 'relay.open',
    });
    expect(parseServerMessage('{"type":"__proto__"}').kind).toBe('unknown');
    expect(parseServerMessage(JSON.stringify({ type: 'x'.repeat(10_000) }))).toEqual({
      kind: 'unknown',
      type: `${'x'.repeat(63)}…`,
    });
  });

  it.each([
    ['a slash', { container: 'a/b' }, /container must be a Docker container id or name .*: got "a\/b"/],
    ['a dot segment', { container: '../../version?' }, /container must be .*got "\.\.\/\.\.\/version\?"/],
    ['a percent escape', { container: 'a%2Fb' }, /container must be/],
    ['a query', { container: 'a?x=1' }, /container must be/],
    ['a fragment', { container: 'a#b' }, /container must be/],
    ['a leading dot', { container: '..' }, /container must be/],
    ['an empty name', { container: '' }, /container must be/],
    ['a huge name', { container: 'a'.repeat(5000) }, /container must be .*: got a string of 5000 characters/],
    ['a number as name', { container: 5 }, /container must be .*: got the number 5/],
    ['argv as a string', { argv: 'rm -rf /' }, /argv must be an array of strings .*: got a string$/],
    ['argv as a number', { argv: 7 }, /argv must be an array of strings .*: got the number 7/],
    ['argv as an object', { argv: { 0: 'sh' } }, /argv must be an array of strings .*: got an object/],
    [
      'argv of non-strings',
      { argv: ['echo', 1] },
      /argv must be an array of strings .*: item 1 is the number 1/,
    ],
    ['argv empty', { argv: [] }, /argv must be an array of strings .*: got an array of 0 items/],
    [
      'argv of 10k items',
      { argv: Array(10_000).fill('x') },
      /argv must be an array of strings .*: got an array of 10000 items/,
    ],
    [
      'a huge argument',
      { argv: ['echo', 'x'.repeat(70_000)] },
      /argv must be .*: item 1 is a string of 70000 characters/,
    ],
    ['argv missing', { argv: undefined }, /argv must be an array of strings .*: it is missing/],
    ['timeoutMs negative', { timeoutMs: -1 }, /timeoutMs must be a positive whole number .*: got -1/],
    ['timeoutMs zero', { timeoutMs: 0 }, /timeoutMs must be .*: got 0/],
    ['timeoutMs "NaN"', { timeoutMs: 'NaN' }, /timeoutMs must be .*: got a string/],
    ['timeoutMs 1e308', { timeoutMs: 1e308 }, /timeoutMs must be .*: got 1e\+308/],
    ['timeoutMs fractional', { timeoutMs: 1.5 }, /timeoutMs must be .*: got the number 1.5/],
    [
      'serverRules a string',
      { serverRules: 'echo *' },
      /serverRules must be an array of strings .*: got a string/,
    ],
    ['serverRules of objects', { serverRules: [{}] }, /serverRules must be .*: item 0 is an object/],
  ])(
    'refuses an exec request with %s, naming the field, and keeps its id for the reply',
    (_n, over, error) => {
      const r = parseServerMessage(exec(over));
      expect(r).toMatchObject({ kind: 'invalid', type: 'exec', execId: 'ex_0123456789ab' });
      expect(r.kind === 'invalid' && r.error).toMatch(/^invalid exec request: /);
      expect(r.kind === 'invalid' && r.error).toMatch(error);
    },
  );

  it.each([
    ['missing', { id: undefined }, /id must be .*: it is missing/],
    ['a number', { id: 42 }, /id must be .*: got the number 42/],
    ['empty', { id: '' }, /id must be .*: got ""/],
    ['with a space', { id: 'a b' }, /id must be .*: got "a b"/],
    ['too long', { id: 'x'.repeat(65) }, /id must be/],
  ])('refuses an exec request whose id is %s, without an id to answer', (_n, over, error) => {
    const r = parseServerMessage(exec(over));
    expect(r).toMatchObject({ kind: 'invalid', type: 'exec' });
    expect(r.kind === 'invalid' && r.execId).toBeUndefined();
    expect(r.kind === 'invalid' && r.error).toMatch(error);
  });

  it.each([
    ['not JSON', '{', /not JSON/],
    ['a JSON number', '42', /message is a number, not an object/],
    ['a JSON array', '[1]', /message is an array, not an object/],
    ['null', 'null', /message is null/],
    ['no type', '{"id":"x"}', /type is missing, not a string/],
    ['a numeric type', '{"type":1}', /type is a number, not a string/],
    [
      'a welcome with a header-breaking id',
      '{"type":"welcome","agentId":"a\\r\\nx: y","status":"ok"}',
      /invalid welcome: agentId/,
    ],
    ['a welcome without status', '{"type":"welcome","agentId":"ag_1"}', /status .* it is missing/],
    [
      'a welcome with a header-breaking tunnel session',
      `{"type":"welcome","agentId":"ag_1","status":"ok","tunnel":{"maxStreams":8,"session":"${'a'.repeat(30)}\\r\\n"}}`,
      /invalid welcome: tunnel .*optional session token/,
    ],
    [
      'a welcome with a numeric tunnel session',
      '{"type":"welcome","agentId":"ag_1","status":"ok","tunnel":{"maxStreams":8,"session":7}}',
      /invalid welcome: tunnel/,
    ],
    ['an error without message', '{"type":"error"}', /invalid error message: message .* it is missing/],
  ])('refuses %s', (_n, raw, error) => {
    const r = parseServerMessage(raw);
    expect(r.kind).toBe('invalid');
    expect(r.kind === 'invalid' && r.error).toMatch(error);
  });

  it('names the problem in a short stable form, for grouping log lines', () => {
    const about = (raw: string) => {
      const r = parseServerMessage(raw);
      return r.kind === 'invalid' ? r.about : r.kind;
    };
    expect(about(exec({ argv: 'x' }))).toBe('argv');
    expect(about(exec({ container: 'a/b' }))).toBe('container');
    expect(about(exec({ container: 'c/d' }))).toBe('container');
    expect(about(exec({ id: undefined }))).toBe('id');
    expect(about('{')).toBe('json');
    expect(about('[]')).toBe('shape');
  });

  it('refuses binary frames and oversize messages before parsing', () => {
    expect(parseServerMessage(Buffer.from(exec()), true)).toMatchObject({ kind: 'invalid', error: /binary/ });
    const big = exec({ pad: 'x'.repeat(MAX_SERVER_MESSAGE_BYTES) });
    expect(parseServerMessage(big)).toMatchObject({ kind: 'invalid', error: /over the limit of 8388608/ });
  });

  it('survives deeply nested JSON', () => {
    const deep = `{"type":"exec","id":"ex_1","container":"web","timeoutMs":1,"argv":${'['.repeat(100_000)}${']'.repeat(100_000)}}`;
    const r = parseServerMessage(deep);
    expect(r.kind === 'invalid' && r.error).toMatch(
      /argv must be an array of strings .*: item 0 is an array/,
    );
  });
});

describe('isContainerRef / isAgentId', () => {
  it.each(['web', 'a', 'photos.1.x2k3j4', 'my_app-1', '0123456789ab', 'f'.repeat(64)])('%s is a ref', (r) =>
    expect(isContainerRef(r)).toBe(true),
  );
  it.each([
    '',
    '/web',
    'a/b',
    '..',
    '.x',
    '-x',
    '_x',
    'a b',
    'a%2F',
    'a?',
    'a#',
    'a\u0000',
    'é',
    'a'.repeat(1025),
  ])('%j is not', (r) => expect(isContainerRef(r)).toBe(false));
  it('keeps agent ids header-safe', () => {
    expect(isAgentId('ag_0123456789ab')).toBe(true);
    expect(isAgentId('local')).toBe(true);
    expect(isAgentId('a\nb')).toBe(false);
    expect(isAgentId(7)).toBe(false);
  });
});
