// The one error type of the SDK, and which errors are worth retrying.

import type { ErrorData } from './types.js';

/** Every `error.code` a confab node sends (docs/protocol.md, "Errors"). */
export type ServerErrorCode =
  | 'AUTH_REQUIRED'
  | 'AUTH_FAILED'
  | 'TOKEN_EXPIRED'
  | 'INVALID_FRAME'
  | 'UNKNOWN_TYPE'
  | 'MESSAGE_TOO_LONG'
  | 'NOT_FOUND'
  | 'FORBIDDEN'
  | 'RATE_LIMITED'
  | 'UNAVAILABLE'
  | 'PROVIDER_ERROR'
  | 'INTERRUPTED'
  | 'METHOD_NOT_ALLOWED'
  | 'UNSUPPORTED_TYPE'
  | 'REQUEST_TIMEOUT'
  | 'INTERNAL';

/**
 * Codes the SDK makes itself: `DISCONNECTED` (the connection was lost, or
 * is not up, or the client was closed, before an answer came; for REST: no
 * answer at all) and `TIMEOUT` (no answer within `requestTimeoutMs`).
 */
export type ClientErrorCode = 'DISCONNECTED' | 'TIMEOUT';

/** A server's code or one of the SDK's own. */
export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** Details a {@link ConfabError} may carry. */
export interface ConfabErrorDetails {
  /** How long to wait before trying again (`RATE_LIMITED`). */
  retryAfterMs?: number;
  /** The HTTP status of a failed REST call. */
  status?: number;
  /** The WebSocket close code that ended a connection. */
  closeCode?: number;
}

/** Every failure the SDK reports: a protocol error code plus what goes with it. */
export class ConfabError extends Error {
  /** The protocol's code, or `DISCONNECTED` / `TIMEOUT`. */
  readonly code: ErrorCode;
  /** How long to wait before trying again (`RATE_LIMITED`). */
  readonly retryAfterMs?: number;
  /** The HTTP status of a failed REST call. */
  readonly status?: number;
  /** The WebSocket close code that ended a connection. */
  readonly closeCode?: number;

  /** An error with `code`, a human-readable `message`, and details. */
  constructor(code: ErrorCode, message: string, details: ConfabErrorDetails = {}) {
    super(message);
    this.name = 'ConfabError';
    this.code = code;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details.status !== undefined) this.status = details.status;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
  }
}

const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'RATE_LIMITED',
  'UNAVAILABLE',
  'INTERNAL',
  'REQUEST_TIMEOUT',
  'DISCONNECTED',
  'TIMEOUT',
]);

/**
 * Whether the same request may succeed if sent again later: `RATE_LIMITED`
 * (after `retryAfterMs`), `UNAVAILABLE`, `INTERNAL`, `REQUEST_TIMEOUT`,
 * `DISCONNECTED` and `TIMEOUT`. Every other code (`MESSAGE_TOO_LONG`,
 * `FORBIDDEN`, `NOT_FOUND`, `INVALID_FRAME`, `UNKNOWN_TYPE`, `AUTH_*`...) is final.
 */
export function isRetryable(code: ErrorCode): boolean {
  return RETRYABLE.has(code);
}

/** The error an `error` frame (or a REST error body) describes. */
export function errorFromData(data: ErrorData, details: ConfabErrorDetails = {}): ConfabError {
  const retryAfterMs = typeof data.retry_after_ms === 'number' ? data.retry_after_ms : details.retryAfterMs;
  const closeCode = typeof data.close_code === 'number' ? data.close_code : details.closeCode;
  return new ConfabError(data.code as ErrorCode, String(data.message ?? data.code), {
    ...details,
    retryAfterMs,
    closeCode,
  });
}

const CLOSE_CODES: Readonly<Record<number, [ErrorCode, string]>> = {
  1001: ['DISCONNECTED', 'the node heard nothing from this client'],
  1012: ['UNAVAILABLE', 'the node is restarting'],
  4001: ['AUTH_FAILED', 'authentication failed'],
  4003: ['TOKEN_EXPIRED', 'the token expired'],
  4008: ['FORBIDDEN', 'too many connections'],
  4009: ['UNAVAILABLE', 'the client read too slowly'],
};

/** The error a WebSocket close code stands for. */
export function errorFromClose(code: number): ConfabError {
  const [errorCode, message] = CLOSE_CODES[code] ?? ['DISCONNECTED', `connection lost (${code})`];
  return new ConfabError(errorCode, message, { closeCode: code });
}

/** Any thrown value as a ConfabError (`fallback` code for foreign ones). */
export function toConfabError(e: unknown, fallback: ErrorCode = 'DISCONNECTED'): ConfabError {
  if (e instanceof ConfabError) return e;
  return new ConfabError(fallback, e instanceof Error ? e.message : String(e));
}
