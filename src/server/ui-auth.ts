// Sign-in for the web UI: the admin token, or a password set through the CLI (stored only as a
// scrypt hash). A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure behind
// https) plus a CSRF token the page sends as a header on every change. Sessions live in memory:
// a server restart signs everyone out, which is the safe direction.
import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { UserError } from '../errors.js';
import type { Store } from '../store/store.js';
import { tokenMatches } from './auth.js';

const scryptAsync = promisify(scrypt) as (
  pw: string,
  salt: Buffer,
  len: number,
  o: object,
) => Promise<Buffer>;
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 << 20 };
const PASSWORD_META = 'ui_password_scrypt';
export const SESSION_COOKIE = 'berth_session';
export const CSRF_HEADER = 'x-berth-csrf';
export const MIN_PASSWORD = 12;

export interface Session {
  csrf: string;
  expiresAt: number;
  via: 'token' | 'password';
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/** Failed sign-ins per client per minute before that client's password attempts wait. */
const CLIENT_FAILURES = 10;
/** Failed password sign-ins per minute from everyone, before password attempts wait: spoofed addresses gain nothing. */
const ALL_PASSWORD_FAILURES = 100;
const WINDOW_MS = 60_000;
const MAX_CLIENTS = 10_000;

export class UiAuth {
  /** Keyed by the SHA-256 of the session id: the id itself is only in the browser. */
  private readonly sessions = new Map<string, Session>();
  private readonly failures = new Map<string, number[]>();
  private passwordFailures: number[] = [];

  constructor(
    private readonly store: Store,
    private readonly tokenHash: string,
    private readonly ttlMs = 12 * 3_600_000,
  ) {}

  async setPassword(password: string): Promise<void> {
    if (password.length < MIN_PASSWORD) {
      throw new UserError('BAD_REQUEST', `the password must have at least ${MIN_PASSWORD} characters`);
    }
    const salt = randomBytes(16);
    const hash = await scryptAsync(password, salt, 32, SCRYPT);
    await this.store.setMeta(PASSWORD_META, `scrypt$${salt.toString('hex')}$${hash.toString('hex')}`);
    // A new password ends the sessions that came from the old one.
    for (const [k, s] of this.sessions) if (s.via === 'password') this.sessions.delete(k);
  }

  async hasPassword(): Promise<boolean> {
    return (await this.store.getMeta(PASSWORD_META)) !== undefined;
  }

  private async passwordMatches(password: string): Promise<boolean> {
    const stored = await this.store.getMeta(PASSWORD_META);
    if (!stored) return false;
    const [, saltHex, hashHex] = stored.split('$');
    const want = Buffer.from(hashHex ?? '', 'hex');
    const got = await scryptAsync(password, Buffer.from(saltHex ?? '', 'hex'), want.length || 32, SCRYPT);
    return want.length === got.length && timingSafeEqual(want, got);
  }

  /**
   * A new session for a correct token or password; errors are deliberately alike. Failures are
   * counted per client (its address as seen through trusted proxies), so one client cannot lock
   * out the others; and the admin token is never locked out: it is 192 random bits, checked
   * before any limit, so only password guesses wait.
   */
  async signIn(
    client: string,
    creds: { token?: string; password?: string },
  ): Promise<{ id: string; csrf: string }> {
    const now = Date.now();
    let via: Session['via'] | undefined;
    if (creds.token !== undefined) {
      if (tokenMatches(creds.token, this.tokenHash)) via = 'token';
    } else if (creds.password !== undefined) {
      const recent = this.recentFailures(client, now);
      this.passwordFailures = this.passwordFailures.filter((t) => now - t < WINDOW_MS);
      if (recent.length >= CLIENT_FAILURES) {
        throw new UserError(
          'RATE_LIMITED',
          'too many failed sign-ins from this address; wait a minute (the admin token still signs in)',
        );
      }
      if (this.passwordFailures.length >= ALL_PASSWORD_FAILURES) {
        throw new UserError(
          'RATE_LIMITED',
          'too many failed password sign-ins; wait a minute (the admin token still signs in)',
        );
      }
      // Counted as a failure before the check, which takes a while (scrypt): guesses sent all at
      // once meet the same limits as guesses sent one by one. A right one takes it back.
      this.noteFailure(client, now);
      this.passwordFailures.push(now);
      if (!(await this.passwordMatches(creds.password)))
        throw new UserError('UNAUTHORIZED', 'wrong token or password');
      via = 'password';
      const mine = this.passwordFailures.lastIndexOf(now);
      if (mine >= 0) this.passwordFailures.splice(mine, 1);
    }
    if (!via) {
      this.noteFailure(client, now);
      throw new UserError('UNAUTHORIZED', 'wrong token or password');
    }
    this.failures.delete(client);
    const id = randomBytes(32).toString('base64url');
    const csrf = randomBytes(24).toString('base64url');
    this.sessions.set(sha(id), { csrf, expiresAt: now + this.ttlMs, via });
    return { id, csrf };
  }

  private recentFailures(client: string, now: number): number[] {
    return (this.failures.get(client) ?? []).filter((t) => now - t < WINDOW_MS);
  }

  private noteFailure(client: string, now: number): void {
    const recent = this.recentFailures(client, now);
    this.failures.delete(client); // re-inserted last: the map's order is least recently failed first
    if (this.failures.size >= MAX_CLIENTS) {
      const oldest = this.failures.keys().next().value;
      if (oldest !== undefined) this.failures.delete(oldest);
    }
    this.failures.set(client, [...recent, now].slice(-CLIENT_FAILURES * 2));
  }

  lookup(id: string | undefined): Session | undefined {
    if (!id) return undefined;
    const key = sha(id);
    const s = this.sessions.get(key);
    if (!s) return undefined;
    if (s.expiresAt < Date.now()) {
      this.sessions.delete(key);
      return undefined;
    }
    return s;
  }

  signOut(id: string | undefined): void {
    if (id) this.sessions.delete(sha(id));
  }
}

/** The value of one cookie from a Cookie header. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** A CSRF header that matches the session's token, compared in constant time. */
export function csrfMatches(session: Session, presented: string | string[] | undefined): boolean {
  if (typeof presented !== 'string') return false;
  const a = Buffer.from(sha(presented), 'hex');
  const b = Buffer.from(sha(session.csrf), 'hex');
  return timingSafeEqual(a, b);
}
