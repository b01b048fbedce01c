import { describe, expect, it } from 'vitest';
import { escapeControls, escapeLines, json, line, table } from '../../src/cli/format.js';

/** Every character that is not printable ASCII, space or newline (what a terminal acts on). */
const UNSAFE_FOR_TERMINAL = /[^\x20-\x7e\n]/u;

describe('escapeControls', () => {
  it.each([
    ['ESC (CSI clear screen)', 'a\u001b[2Jb', 'a\\x1b[2Jb'],
    ['CR (rewrite the line)', 'evil\rgood', 'evil\\rgood'],
    ['LF and TAB', 'a\nb\tc', 'a\\nb\\tc'],
    ['OSC title change', '\u001b]0;owned\u0007', '\\x1b]0;owned\\x07'],
    [
      'OSC 8 hyperlink',
      '\u001b]8;;https://evil.example\u001b\\x\u001b]8;;\u001b\\',
      '\\x1b]8;;https://evil.example\\x1b\\x\\x1b]8;;\\x1b\\',
    ],
    ['cursor up and erase line', 'x\u001b[1A\u001b[2K', 'x\\x1b[1A\\x1b[2K'],
    ['NUL, BEL, BS, DEL', '\u0000\u0007\b\u007f', '\\x00\\x07\\x08\\x7f'],
    ['C1 CSI and NEL', 'a\u009b2Jb\u0085', 'a\\x9b2Jb\\x85'],
    ['bidi override (RLO, PDF)', 'photos\u202egpj.exe\u202c', 'photos\\u202egpj.exe\\u202c'],
    [
      'bidi isolates and marks',
      '\u2066\u2067\u2068\u2069\u200e\u200f\u061c',
      '\\u2066\\u2067\\u2068\\u2069\\u200e\\u200f\\u061c',
    ],
    ['zero-width and BOM', 'a\u200bb\u2060\ufeff', 'a\\u200bb\\u2060\\ufeff'],
    ['line and paragraph separators', 'a\u2028b\u2029', 'a\\u2028b\\u2029'],
    ['a tag character', 'a\u{e0041}', 'a\\u{e0041}'],
    ['a lone surrogate', 'a\ud800b', 'a\\ud800b'],
  ])('shows %s escaped', (_n, input, want) => {
    expect(escapeControls(input)).toBe(want);
    expect(escapeControls(input)).not.toMatch(UNSAFE_FOR_TERMINAL);
  });

  it('keeps ordinary text, accents and other scripts as they are', () => {
    for (const s of ['web.example.com/api', 'café', 'Ünïcödé', '日本語', 'emoji 🚢', 'back\\slash']) {
      expect(escapeControls(s)).toBe(s);
    }
  });

  it('changes nothing when applied twice', () => {
    const s = 'a\u001b[31mred\r\u202e\u0000\u{e0041}';
    expect(escapeControls(escapeControls(s))).toBe(escapeControls(s));
  });
});

describe('table', () => {
  it('escapes every cell, header too, and aligns on the escaped text', () => {
    const t = table(
      ['HOST', 'OWNER'],
      [
        ['a.example.com', 'agent/web\r\u001b[2Kagent/bank'],
        ['b.example.com', 'x'],
      ],
    );
    expect(t).not.toMatch(/(?!\n)[\p{Cc}\p{Cf}]/u);
    expect(t.split('\n')).toEqual([
      'HOST           OWNER',
      'a.example.com  agent/web\\r\\x1b[2Kagent/bank',
      'b.example.com  x',
    ]);
  });
});

describe('line', () => {
  it('escapes what is interpolated, keeps the template', () => {
    const name = 'web\u001b]0;pwned\u0007';
    expect(line`approved agent ${name}\nnext`).toBe('approved agent web\\x1b]0;pwned\\x07\nnext');
    expect(line`a ${'\n'} b`).toBe('a \\n b');
    expect(line`n=${5} ${undefined}`).toBe('n=5 undefined');
  });
});

describe('escapeLines and json', () => {
  it('keeps our own line breaks and escapes the rest', () => {
    expect(escapeLines('invalid configuration:\n  - --x\u001b[2J')).toBe(
      'invalid configuration:\n  - --x\\x1b[2J',
    );
  });

  it('keeps --json output exact JSON (its own escaping neutralises controls)', () => {
    const v = { name: 'a\u001b[2J\r\u202e\u009b\u007f\u{e0041}', list: ['\u2028'] };
    const out = json(v);
    expect(JSON.parse(out)).toEqual(v);
    expect(out).not.toMatch(UNSAFE_FOR_TERMINAL);
    expect(out).toContain('a\\u001b[2J\\r\\u202e\\u009b\\u007f\\udb40\\udc41');
  });
});
