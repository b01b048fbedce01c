// JSON.parse in slices, for the few messages big enough that one JSON.parse would hold the event
// loop for a tenth of a second (an 8 MiB snapshot of 25k routes). Pure.
//
// A first pass finds, with one scan, every array and object longer than `bigChars` (and refuses
// nesting deeper than MAX_DEPTH). A second pass builds the value: those big containers member by
// member, everything else (their members, each short, or a long string) with JSON.parse of its
// own text. Both passes have pause points, so the work runs in slices. The result, and whether
// the text is JSON at all, is as JSON.parse's.

/** Deeper nesting is refused: Berth's messages nest a few levels. */
export const MAX_DEPTH = 64;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;

/** Characters scanned or parsed between two pause points (a member counts as 64 more). */
const SCAN_STEP = 1 << 16;
const MEMBER_COST = 64;

const isSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/** Why a text is not JSON, with where. */
export class NotJson extends SyntaxError {
  constructor(what: string, at: number) {
    super(`${what} at position ${at}`);
  }
}

/** Index just past the string that starts (with its quote) at `i`. */
function stringEnd(text: string, i: number): number {
  let j = i + 1;
  for (;;) {
    const q = text.indexOf('"', j);
    if (q < 0) throw new NotJson('unterminated string', i);
    // Escaped when an odd number of backslashes precede it.
    let b = q - 1;
    while (b > i && text.charCodeAt(b) === BACKSLASH) b--;
    if ((q - 1 - b) % 2 === 0) return q + 1;
    j = q + 1;
  }
}

/**
 * Throws NotJson where arrays and objects nest deeper than MAX_DEPTH (inside strings nothing
 * counts). For text small enough for one JSON.parse, which takes any depth: code that walks the
 * value afterwards (stringify, comparisons) recurses, and 20,000 levels in 40 KB overflow its stack.
 * An unterminated string is NotJson here too.
 */
export function checkDepth(text: string): void {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) i = stringEnd(text, i) - 1;
    else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (++depth > MAX_DEPTH) throw new NotJson(`nesting deeper than ${MAX_DEPTH} levels`, i);
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) depth--;
  }
}

/** Every array and object longer than `bigChars`: where it opens → where it closes. */
function* findBig(text: string, bigChars: number): Generator<void, Map<number, number>> {
  const big = new Map<number, number>();
  const opens: number[] = [];
  let next = SCAN_STEP;
  for (let i = 0; i < text.length; i++) {
    if (i >= next) {
      next = i + SCAN_STEP;
      yield;
    }
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      i = stringEnd(text, i) - 1;
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (opens.length >= MAX_DEPTH) throw new NotJson(`nesting deeper than ${MAX_DEPTH} levels`, i);
      opens.push(i);
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      const o = opens.pop();
      if (o === undefined || text.charCodeAt(o) !== (c === CLOSE_OBJECT ? OPEN_OBJECT : OPEN_ARRAY))
        throw new NotJson(`unexpected ${text[i]}`, i);
      if (i - o > bigChars) big.set(o, i);
    }
  }
  if (opens.length > 0) throw new NotJson('unterminated array or object', opens[opens.length - 1]!);
  return big;
}

/** Index just past the value that starts at `i` (a short one: no pause points). */
function valueEnd(text: string, i: number): number {
  const c = text.charCodeAt(i);
  if (c === QUOTE) return stringEnd(text, i);
  if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const d = text.charCodeAt(j);
      if (d === QUOTE) j = stringEnd(text, j) - 1;
      else if (d === OPEN_OBJECT || d === OPEN_ARRAY) depth++;
      else if ((d === CLOSE_OBJECT || d === CLOSE_ARRAY) && --depth === 0) return j + 1;
    }
    throw new NotJson('unterminated array or object', i);
  }
  // A number, true, false or null: up to the next separator (JSON.parse judges the rest).
  let j = i;
  while (j < text.length) {
    const d = text.charCodeAt(j);
    if (d === COMMA || d === CLOSE_OBJECT || d === CLOSE_ARRAY || isSpace(d)) break;
    j++;
  }
  if (j === i) throw new NotJson('expected a value', i);
  return j;
}

interface Frame {
  value: unknown[] | Record<string, unknown>;
  /** The key of the member being read (objects). */
  key?: string;
  /** Where this container closes. */
  close: number;
}

/** As JSON.parse(text), in steps with pause points; throws a SyntaxError where JSON.parse would. */
export function* parseJsonSteps(text: string, bigChars = 1 << 16): Generator<void, unknown> {
  const big = yield* findBig(text, bigChars);
  const skip = (i: number) => {
    while (i < text.length && isSpace(text.charCodeAt(i))) i++;
    return i;
  };
  const stack: Frame[] = [];
  let root: unknown;
  let done = false;
  let work = 0;
  const put = (v: unknown) => {
    const top = stack[stack.length - 1];
    if (!top) {
      root = v;
      done = true;
    } else if (Array.isArray(top.value)) top.value.push(v);
    // As JSON.parse: "__proto__" is an own property like any other, and the last of a key wins.
    else
      Object.defineProperty(top.value, top.key!, {
        value: v,
        writable: true,
        enumerable: true,
        configurable: true,
      });
  };
  /** Reads the value at i (after spaces): a big container is opened, anything else parsed whole. */
  const value = (i: number): number => {
    const close = big.get(i);
    if (close !== undefined) {
      const c = text.charCodeAt(i);
      stack.push({ value: c === OPEN_ARRAY ? [] : {}, close });
      return skip(i + 1);
    }
    const end = valueEnd(text, i);
    put(JSON.parse(text.slice(i, end)));
    work += end - i;
    return end;
  };
  let i = value(skip(0));
  // Each turn: i is just past a value, or just inside a container that was opened.
  let opened = stack.length > 0;
  while (stack.length > 0) {
    work += MEMBER_COST;
    if (work >= SCAN_STEP) {
      work = 0;
      yield;
    }
    const top = stack[stack.length - 1]!;
    i = skip(i);
    const c = text.charCodeAt(i);
    if (i === top.close) {
      if (!opened && c !== CLOSE_ARRAY && c !== CLOSE_OBJECT) throw new NotJson('unexpected end', i);
      stack.pop();
      put(top.value);
      i++;
      opened = false;
      continue;
    }
    if (!opened) {
      if (c !== COMMA) throw new NotJson(`expected , but found ${text[i] ?? 'the end'}`, i);
      i = skip(i + 1);
    }
    if (!Array.isArray(top.value)) {
      if (text.charCodeAt(i) !== QUOTE) throw new NotJson('expected a key', i);
      const end = stringEnd(text, i);
      top.key = JSON.parse(text.slice(i, end)) as string;
      i = skip(end);
      if (text.charCodeAt(i) !== COLON) throw new NotJson('expected :', i);
      i = skip(i + 1);
    }
    if (i >= top.close) throw new NotJson('expected a value', i);
    const depth = stack.length;
    i = value(i);
    opened = stack.length > depth;
  }
  if (!done) throw new NotJson('no value', 0);
  if (skip(i) !== text.length) throw new NotJson('unexpected text after the value', skip(i));
  return root;
}
