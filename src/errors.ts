// One catalogue of coded errors. A UserError is something the user (or a peer) did wrong:
// the CLI prints its message without a stack and the API maps its code to an HTTP status.

export const ERROR_STATUS = {
  BAD_REQUEST: 400,
  CONFIG_INVALID: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  NOT_ACCEPTABLE: 406,
  CONFLICT: 409,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  EXEC_DENIED: 403,
  BUSY: 429,
  RATE_LIMITED: 429,
  AGENT_OFFLINE: 503,
  EXEC_FAILED: 502,
  SERVER_UNREACHABLE: 502,
  CADDY_UNREACHABLE: 502,
  CADDY_REJECTED: 502,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class UserError extends Error {
  readonly code: ErrorCode;
  readonly details?: unknown;
  constructor(code: ErrorCode, message: string, details?: unknown) {
    super(message);
    this.name = 'UserError';
    this.code = code;
    this.details = details;
  }
  get status(): number {
    return ERROR_STATUS[this.code];
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
