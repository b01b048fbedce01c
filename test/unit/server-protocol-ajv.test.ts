// The agent checks server messages with a small interpreter of the JSON Schema subset they use;
// here it is held to Ajv (a dev dependency the server also uses) on the same schemas: for random
// and hostile messages, the same verdict and the same first error (keyword and place).
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { firstIssue, serverMessageSchema } from '../../src/model/server-protocol.js';
import { prng } from './labels/fuzz-corpus.js';

const TYPES = ['welcome', 'resync', 'error', 'exec'];
const ajv = new Ajv({ allErrors: false, strict: false });

const VALID: Record<string, Record<string, unknown>> = {
  welcome: {
    type: 'welcome',
    agentId: 'ag_0123456789ab',
    status: 'pending',
    heartbeatMs: 15000,
    tunnel: { maxStreams: 1024, session: 'Ab-_'.repeat(8) },
  },
  resync: { type: 'resync' },
  error: { type: 'error', message: 'invalid message: x' },
  exec: {
    type: 'exec',
    id: 'ex_0123456789ab',
    container: 'f'.repeat(64),
    argv: ['echo', 'hello'],
    timeoutMs: 60_000,
    serverRules: ['echo *'],
  },
};

function value(r: () => number): unknown {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  switch (Math.floor(r() * 12)) {
    case 0:
      return null;
    case 1:
      return pick([0, -1, 1, 1.5, 1023, 1024, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, -0]);
    case 2:
      return pick([true, false]);
    case 3:
      return {};
    case 4:
      return [];
    case 5:
      return Array.from({ length: pick([0, 1, 2, 1024, 1025]) }, () => pick(['a', 'echo', 1, null]));
    case 6:
      return pick([
        '',
        'a',
        'a/b',
        '..',
        'a%2F',
        'web-1.photos_x',
        'x'.repeat(64),
        'x'.repeat(65),
        'é',
        '😀',
      ]);
    case 7:
      return 'x'.repeat(pick([128, 129, 255, 256, 257, 8192, 8193]));
    case 8:
      return '😀'.repeat(pick([64, 65, 128, 129, 4096, 4097]));
    case 9:
      return ['x'.repeat(pick([65_536, 65_537])), '😀'.repeat(pick([32_768, 65_536, 65_537]))];
    case 10:
      return pick(['ag_x', 'ex:1.2-3', 'a b', 'a\nb', 'ﬀ']);
    default:
      return 'f'.repeat(pick([11, 12, 64, 65]));
  }
}

describe('server message checks agree with Ajv', () => {
  for (const type of TYPES) {
    const schema = serverMessageSchema(type)!;
    const validate = ajv.compile(schema);
    it(`${type}: 3000 random mutations`, () => {
      const r = prng(type.length * 7919);
      const fields = [...Object.keys(schema.properties), 'other'];
      for (let n = 0; n < 3000; n++) {
        const msg: Record<string, unknown> = { ...VALID[type] };
        for (let k = 0, m = 1 + Math.floor(r() * 3); k < m; k++) {
          const f = fields[Math.floor(r() * fields.length)]!;
          if (r() < 0.2) delete msg[f];
          else msg[f] = value(r);
        }
        const ok = validate(msg);
        const mine = firstIssue(type, msg);
        const theirs = validate.errors?.[0];
        const label = JSON.stringify(msg).slice(0, 200);
        expect(mine === undefined, label).toBe(ok);
        if (!ok) {
          expect({ keyword: mine!.keyword, at: mine!.instancePath }, label).toEqual({
            keyword: theirs!.keyword,
            at: theirs!.instancePath,
          });
          if (theirs!.keyword === 'required')
            expect(mine!.params?.missingProperty).toBe(
              (theirs!.params as { missingProperty: string }).missingProperty,
            );
        }
      }
    });
  }
});
