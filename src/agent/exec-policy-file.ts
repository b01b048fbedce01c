import { readFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import { DEFAULT_POLICY, type ExecPolicy, parsePolicy } from './exec-policy.js';

/** --exec-policy FILE, read once at start; without it, container labels alone decide. */
export function loadExecPolicy(file: string | undefined): ExecPolicy {
  if (!file) return DEFAULT_POLICY;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UserError('CONFIG_INVALID', `--exec-policy ${file}: ${(err as Error).message}`);
  }
  try {
    return parsePolicy(text, `--exec-policy ${file}`);
  } catch (err) {
    throw new UserError('CONFIG_INVALID', (err as Error).message);
  }
}
