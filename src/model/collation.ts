// localeCompare's order without ICU's collator for what labels and container ids are made of.
// The first localeCompare in a process loads ICU's collation data and builds a collator: about
// 3 MiB of an idle agent's RSS (bench/agent-idle.ts), for sorting label keys that are nearly
// always printable ASCII. For such strings the order of ICU's root collation (which English and
// the C/POSIX locales use) is simple: characters compare by a fixed primary order with case
// ignored, then, if all are equal, lower case before upper case. Everything else (other
// characters, a default locale that may tailor the order) still goes to localeCompare, so the
// order is exactly localeCompare's either way (test/unit/collation.test.ts checks it against ICU).

/** Printable ASCII in ICU root collation's primary order; a letter stands for both cases. */
const ROOT_ORDER = ' _-,;:!?.\'"()[]{}@*/\\&#%`^+<=>|~$0123456789abcdefghijklmnopqrstuvwxyz';

/** Primary weight per code unit below 0x7f (255: not printable ASCII). */
const PRIMARY = new Uint8Array(128).fill(255);
for (let i = 0; i < ROOT_ORDER.length; i++) {
  const c = ROOT_ORDER.charCodeAt(i);
  PRIMARY[c] = i;
  if (c >= 0x61 && c <= 0x7a) PRIMARY[c - 0x20] = i;
}

/**
 * Whether ICU's default locale is one whose collation is the root order for ASCII. ICU takes it
 * from LC_ALL, then LC_MESSAGES, then LANG, and maps C and POSIX to en-US; English has no
 * tailoring. Any other locale (Danish sorts "aa" after "z", for one) keeps localeCompare.
 */
export function rootOrderLocale(env: NodeJS.ProcessEnv): boolean {
  const id = (env.LC_ALL || env.LC_MESSAGES || env.LANG || '').split(/[.@]/)[0]!;
  return id === '' || id === 'C' || id === 'POSIX' || /^en(?:[_-](?!US_POSIX)|$)/i.test(id);
}

// Read once, as ICU reads it once for its default locale; this is not Berth's configuration.
const ROOT = rootOrderLocale(process.env);

function ascii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if ((PRIMARY[s.charCodeAt(i)] ?? 255) === 255) return false;
  return true;
}

/** The root order for two printable-ASCII strings: -1, 0 or 1, as localeCompare returns. */
export function rootCompare(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const pa = PRIMARY[a.charCodeAt(i)]!;
    const pb = PRIMARY[b.charCodeAt(i)]!;
    if (pa !== pb) return pa < pb ? -1 : 1;
  }
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  for (let i = 0; i < n; i++) {
    // Same primaries: the characters differ in case at most, and upper case is the greater.
    const ca = a.charCodeAt(i);
    const cb = b.charCodeAt(i);
    if (ca !== cb) return ca < cb ? 1 : -1;
  }
  return 0;
}

/** `a.localeCompare(b)`, the same result, without ICU when both are printable ASCII. */
export function localeOrder(a: string, b: string): number {
  return ROOT && ascii(a) && ascii(b) ? rootCompare(a, b) : a.localeCompare(b);
}
