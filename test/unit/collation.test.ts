import { describe, expect, it } from 'vitest';
import { localeOrder, rootCompare, rootOrderLocale } from '../../src/model/collation.js';
import { FUZZ_SEED, fuzzCorpus, prng } from './labels/fuzz-corpus.js';

// ICU's own answer, whatever the test process's locale: the root order is English's.
const icu = new Intl.Collator('en').compare;
const PRINTABLE = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i));

function sign(x: number): number {
  return x < 0 ? -1 : x > 0 ? 1 : 0;
}

describe('root collation for printable ASCII', () => {
  it('orders every string of up to two characters as ICU does', () => {
    const all = ['', ...PRINTABLE, ...PRINTABLE.flatMap((a) => PRINTABLE.map((b) => a + b))];
    expect([...all].sort(rootCompare)).toEqual([...all].sort(icu));
  });

  it('agrees with ICU on every pair of single characters, equal ones included', () => {
    for (const a of PRINTABLE)
      for (const b of PRINTABLE) expect([a, b, rootCompare(a, b)]).toEqual([a, b, sign(icu(a, b))]);
  });

  it('agrees with ICU on random strings that differ in case, punctuation and length', () => {
    const r = prng(0xc011a7e);
    const alphabet = 'aAbBzZ09._-:/@ ~$';
    const word = () => {
      let s = '';
      const n = Math.floor(r() * 8);
      for (let i = 0; i < n; i++)
        s +=
          r() < 0.8
            ? alphabet[Math.floor(r() * alphabet.length)]
            : PRINTABLE[Math.floor(r() * PRINTABLE.length)];
      return s;
    };
    for (let i = 0; i < 20_000; i++) {
      const a = word();
      // Often a near neighbour: a prefix, a case change, one character more.
      const pick = r();
      const b =
        pick < 0.3
          ? a.slice(0, Math.floor(r() * (a.length + 1)))
          : pick < 0.5
            ? a.toUpperCase()
            : pick < 0.6
              ? `${a}${word()}`
              : word();
      expect([a, b, rootCompare(a, b)]).toEqual([a, b, sign(icu(a, b))]);
    }
  });

  it('sorts the label fuzz corpus keys as localeCompare does, non-ASCII keys included', () => {
    for (const c of fuzzCorpus(FUZZ_SEED, 500)) {
      const keys = Object.keys(c.container.labels);
      expect([...keys].sort(localeOrder)).toEqual([...keys].sort((a, b) => a.localeCompare(b)));
    }
  });

  it('leaves other characters to localeCompare', () => {
    for (const [a, b] of [
      ['é', 'f'],
      ['e\u0301', 'é'],
      ['a\u0001', 'a'],
      ['Ä', 'z'],
      ['label.ü', 'label.u'],
    ] as const)
      expect(localeOrder(a, b)).toBe(a.localeCompare(b));
  });
});

describe('which default locales collate ASCII in the root order', () => {
  it.each([
    [{}, true],
    [{ LANG: 'C.UTF-8' }, true],
    [{ LANG: 'POSIX' }, true],
    [{ LANG: 'en_US.UTF-8' }, true],
    [{ LANG: 'en_GB' }, true],
    [{ LANG: 'da_DK.UTF-8' }, false],
    [{ LANG: 'en_US.UTF-8', LC_ALL: 'cs_CZ.UTF-8' }, false],
    [{ LANG: 'cs_CZ.UTF-8', LC_MESSAGES: 'en_US.UTF-8' }, true],
    [{ LANG: 'en_US_POSIX' }, false],
  ])('%j → %s', (env, root) => {
    expect(rootOrderLocale(env as NodeJS.ProcessEnv)).toBe(root);
  });
});
