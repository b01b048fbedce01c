// Which commands may run in which container. Enforced by the agent, on the host, so a
// compromised server cannot run anything the host did not allow. Pure: no I/O here.
//
// A rule is an argv pattern: literal tokens, `*` for exactly one token, and a trailing `...`
// for any further tokens. `php occ files:scan *` allows `php occ files:scan --all` and nothing
// else. Every argument must also pass a conservative character check, so nothing a shell would
// interpret can appear even in a `*` slot (and no shell is ever used anyway).

export interface ExecPolicy {
  /** false forbids exec on this host entirely, whatever the labels say. */
  enabled: boolean;
  /** Rules by container name (or `*` for every container), added to the containers' labels. */
  allow: Record<string, string[]>;
  /** When true, container labels are ignored and only this file's rules count. */
  ignoreLabels: boolean;
  maxConcurrent: number;
  maxOutputBytes: number;
  maxTimeoutMs: number;
}

export const DEFAULT_POLICY: ExecPolicy = {
  enabled: true,
  allow: {},
  ignoreLabels: false,
  maxConcurrent: 4,
  maxOutputBytes: 1 << 20,
  maxTimeoutMs: 600_000,
};

const SAFE_ARG = /^[A-Za-z0-9_@%+=:,./-]*$/;
const MAX_ARGS = 64;
const MAX_ARG_LENGTH = 256;

/** Problems with the arguments themselves, before any rule is consulted. */
export function checkArgv(argv: string[]): string[] {
  const problems: string[] = [];
  if (argv.length === 0) problems.push('no command given');
  if (argv.length > MAX_ARGS) problems.push(`${argv.length} arguments; at most ${MAX_ARGS} are allowed`);
  argv.slice(0, MAX_ARGS).forEach((a, i) => {
    if (a.length > MAX_ARG_LENGTH)
      problems.push(`argument ${i} is ${a.length} characters long; at most ${MAX_ARG_LENGTH}`);
    else if (!SAFE_ARG.test(a)) {
      const bad = [...new Set([...a].filter((ch) => !SAFE_ARG.test(ch)))]
        .map((ch) => JSON.stringify(ch))
        .join(' ');
      problems.push(`argument ${i} ${JSON.stringify(a)} contains characters that are not allowed: ${bad}`);
    }
  });
  return problems;
}

export function parseRule(pattern: string): string[] | undefined {
  const tokens = pattern.trim().split(/\s+/).filter(Boolean);
  if (tokens.length === 0) return undefined;
  if (tokens.slice(0, -1).includes('...')) return undefined; // `...` only at the end
  if (tokens[0] === '*' || tokens[0] === '...') return undefined; // the program must be named
  return tokens;
}

export function matchRule(rule: string[], argv: string[]): boolean {
  const open = rule[rule.length - 1] === '...';
  const fixed = open ? rule.slice(0, -1) : rule;
  if (open ? argv.length < fixed.length : argv.length !== fixed.length) return false;
  return fixed.every((t, i) => t === '*' || t === argv[i]);
}

/** `berth.exec.allow` and `berth.exec.allow.<n>`, in a stable order. */
export function rulesFromLabels(labels: Record<string, string>, prefix: string): string[] {
  const base = `${prefix}.exec.allow`;
  return Object.keys(labels)
    .filter(
      (k) => k === base || (k.startsWith(`${base}.`) && /^[A-Za-z0-9_-]+$/.test(k.slice(base.length + 1))),
    )
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    .map((k) => labels[k]!);
}

export type Decision =
  | { allowed: true; rule: string }
  | { allowed: false; reason: string; considered: string[] };

/** Every rule that applies to a container on this host, labels first; none when exec is off. */
export function rulesFor(
  container: { name: string; labels: Record<string, string> },
  policy: ExecPolicy,
  prefix: string,
): string[] {
  if (!policy.enabled) return [];
  return [
    ...(policy.ignoreLabels ? [] : rulesFromLabels(container.labels, prefix)),
    ...rulesNamed(policy.allow, container.name),
    ...rulesNamed(policy.allow, '*'),
  ];
}

/**
 * The allow-list's own rules for a name: a container named `constructor` or `toString` (valid
 * Docker names) must find nothing, not what every object inherits.
 */
function rulesNamed(allow: Record<string, string[]>, name: string): readonly string[] {
  return Object.hasOwn(allow, name) ? (allow[name] ?? []) : [];
}

export function decide(
  argv: string[],
  container: { name: string; labels: Record<string, string> },
  policy: ExecPolicy,
  prefix: string,
  /** The server's narrowing for the requesting key; undefined means none. */
  serverRules?: string[],
): Decision {
  if (!policy.enabled)
    return { allowed: false, reason: 'exec is disabled on this host by its policy file', considered: [] };
  const problems = checkArgv(argv);
  if (problems.length > 0) return { allowed: false, reason: problems.join('; '), considered: [] };
  const considered = rulesFor(container, policy, prefix);
  const match = considered.find((r) => {
    const rule = parseRule(r);
    return rule !== undefined && matchRule(rule, argv);
  });
  if (!match) {
    const why =
      considered.length === 0
        ? `container ${container.name} allows no commands (label ${prefix}.exec.allow or the agent's --exec-policy)`
        : `no rule of container ${container.name} matches; considered: ${considered.map((r) => JSON.stringify(r)).join(', ')}`;
    return { allowed: false, reason: why, considered };
  }
  if (serverRules !== undefined) {
    const narrowed = serverRules.some((r) => {
      const rule = parseRule(r);
      return rule !== undefined && matchRule(rule, argv);
    });
    if (!narrowed)
      return {
        allowed: false,
        reason: "the server's key policy does not allow this command",
        considered: serverRules,
      };
  }
  return { allowed: true, rule: match };
}

/** Parses an --exec-policy file (JSON), naming every problem. */
export function parsePolicy(text: string, file: string): ExecPolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`);
  }
  const problems: string[] = [];
  // No prototype: an entry named "__proto__" is a name like any other, not the object's prototype.
  const p = { ...DEFAULT_POLICY, allow: Object.create(null) as Record<string, string[]> };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new Error(`${file}: expected a JSON object`);
  for (const [k, v] of Object.entries(raw)) {
    switch (k) {
      case 'enabled':
      case 'ignoreLabels':
        if (typeof v !== 'boolean') problems.push(`${k}: expected true or false`);
        else p[k] = v;
        break;
      case 'maxConcurrent':
      case 'maxOutputBytes':
      case 'maxTimeoutMs':
        if (!Number.isInteger(v) || (v as number) < 1)
          problems.push(`${k}: expected a positive whole number`);
        else p[k] = v as number;
        break;
      case 'allow':
        if (typeof v !== 'object' || v === null || Array.isArray(v)) {
          problems.push('allow: expected an object of container name → list of rules');
          break;
        }
        for (const [name, rules] of Object.entries(v)) {
          if (!Array.isArray(rules) || rules.some((r) => typeof r !== 'string')) {
            problems.push(`allow.${name}: expected a list of rules`);
            continue;
          }
          for (const r of rules as string[])
            if (!parseRule(r)) problems.push(`allow.${name}: "${r}" is not a valid rule`);
          p.allow[name] = rules as string[];
        }
        break;
      default:
        problems.push(`${k}: unknown setting`);
    }
  }
  if (problems.length > 0) throw new Error(`${file}:\n  - ${problems.join('\n  - ')}`);
  return p;
}
