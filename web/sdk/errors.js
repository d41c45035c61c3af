// The one error type of the SDK, and which errors are worth retrying.
/** Every failure the SDK reports: a protocol error code plus what goes with it. */
export class ConfabError extends Error {
    /** An error with `code`, a human-readable `message`, and details. */
    constructor(code, message, details = {}) {
        super(message);
        this.name = 'ConfabError';
        this.code = code;
        if (details.retryAfterMs !== undefined)
            this.retryAfterMs = details.retryAfterMs;
        if (details.status !== undefined)
            this.status = details.status;
        if (details.closeCode !== undefined)
            this.closeCode = details.closeCode;
    }
}
const RETRYABLE = new Set([
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
export function isRetryable(code) {
    return RETRYABLE.has(code);
}
/** The error an `error` frame (or a REST error body) describes. */
export function errorFromData(data, details = {}) {
    const retryAfterMs = typeof data.retry_after_ms === 'number' ? data.retry_after_ms : details.retryAfterMs;
    const closeCode = typeof data.close_code === 'number' ? data.close_code : details.closeCode;
    return new ConfabError(data.code, String(data.message ?? data.code), {
        ...details,
        retryAfterMs,
        closeCode,
    });
}
const CLOSE_CODES = {
    1001: ['DISCONNECTED', 'the node heard nothing from this client'],
    1012: ['UNAVAILABLE', 'the node is restarting'],
    4001: ['AUTH_FAILED', 'authentication failed'],
    4003: ['TOKEN_EXPIRED', 'the token expired'],
    4008: ['FORBIDDEN', 'too many connections'],
    4009: ['UNAVAILABLE', 'the client read too slowly'],
};
/** The error a WebSocket close code stands for. */
export function errorFromClose(code) {
    const [errorCode, message] = CLOSE_CODES[code] ?? ['DISCONNECTED', `connection lost (${code})`];
    return new ConfabError(errorCode, message, { closeCode: code });
}
/** Any thrown value as a ConfabError (`fallback` code for foreign ones). */
export function toConfabError(e, fallback = 'DISCONNECTED') {
    if (e instanceof ConfabError)
        return e;
    return new ConfabError(fallback, e instanceof Error ? e.message : String(e));
}
