// What the CLI prints. Names, labels and messages come from agents and containers, which anyone
// with a Docker socket (or a key) controls: printed raw, an ESC, CR or bidi override could clear
// the screen, retitle the terminal, or hide and rewrite a route's owner. Everything printed goes
// through one of the functions below, which show such characters escaped; the type `Printable`
// makes the compiler check that nothing reaches the terminal another way. (--json output stays
// exact JSON, with those characters as \u escapes; a command's own output in `berth exec` is the
// user's data and is passed through as it is.)

declare const printable: unique symbol;
/** Text safe to write to a terminal: produced by table(), line``, json() or ours(). */
export type Printable = string & { readonly [printable]: true };
export type Out = (s: Printable) => void;

/**
 * C0 controls, DEL, C1 controls (Cc), format characters (Cf: bidi overrides and isolates,
 * zero-width characters, soft hyphen, BOM, tags), line and paragraph separators, and lone
 * surrogates.
 */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;
/** What JSON.stringify leaves raw (it escapes C0 and lone surrogates; its own \n is layout). */
const JSON_UNSAFE = /[\u007f-\u009f\p{Cf}\p{Zl}\p{Zp}]/gu;
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `s` with every control, bidi and format character shown as an escape (`\x1b`, `\r`, `\u202e`).
 * The result is printable ASCII wherever `s` was unsafe, so escaping twice changes nothing.
 */
export function escapeControls(s: string): string {
  return s.replace(UNSAFE, (ch) => {
    const named = NAMED[ch];
    if (named) return named;
    const cp = ch.codePointAt(0)!;
    if (cp <= 0xff) return `\\x${cp.toString(16).padStart(2, '0')}`;
    if (cp <= 0xffff) return `\\u${cp.toString(16).padStart(4, '0')}`;
    return `\\u{${cp.toString(16)}}`;
  });
}

/** A line (or lines) whose interpolated values are escaped; the template's own text is kept. */
export function line(strings: TemplateStringsArray, ...values: unknown[]): Printable {
  let s = strings[0] ?? '';
  values.forEach((v, i) => {
    s += escapeControls(String(v)) + (strings[i + 1] ?? '');
  });
  return s as Printable;
}

/** Text Berth itself wrote (help, usage): printed as it is. */
export function ours(s: string): Printable {
  return s as Printable;
}

/**
 * --json output: exact JSON. JSON escapes C0 controls itself; DEL, C1, bidi and format
 * characters it leaves raw, so they are written as \u escapes too (the same JSON value).
 */
export function json(value: unknown): Printable {
  return (JSON.stringify(value, null, 2) ?? 'null').replace(JSON_UNSAFE, (ch) =>
    [...Array(ch.length).keys()].map((i) => `\\u${ch.charCodeAt(i).toString(16).padStart(4, '0')}`).join(''),
  ) as Printable;
}

/** A plain aligned table, the shape `docker ps` users expect; every cell is escaped. */
export function table(head: string[], rows: string[][]): Printable {
  const safe = [head, ...rows].map((r) => r.map((c) => escapeControls(c ?? '')));
  const widths = safe[0]!.map((_, i) => Math.max(...safe.map((r) => (r[i] ?? '').length)));
  const row = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return safe.map(row).join('\n') as Printable;
}

/** The CLI's writers, one line per call. */
export const stdout: Out = (s) => void process.stdout.write(`${s}\n`);
export const stderr: Out = (s) => void process.stderr.write(`${s}\n`);

/** Multi-line text of our own making (an error with a list of problems): each line escaped. */
export function escapeLines(s: string): Printable {
  return s.split('\n').map(escapeControls).join('\n') as Printable;
}
