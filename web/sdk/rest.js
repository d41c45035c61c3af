// REST calls with a Bearer token, and the errors they answer.
import { ConfabError, errorFromData } from './errors.js';
import { resolveUrl } from './transport.js';
import { isObject } from './types.js';
/**
 * One REST call: `Authorization: Bearer <token>`, a JSON body when given.
 * Resolves with the parsed body; rejects with a ConfabError carrying the
 * server's code (or one derived from the status), `status` and
 * `retryAfterMs`, or `DISCONNECTED` when no answer came at all.
 */
export async function restCall(baseUrl, token, method, path, body) {
    const headers = { authorization: `Bearer ${token}` };
    if (body !== undefined)
        headers['content-type'] = 'application/json';
    let response;
    try {
        response = await fetch(resolveUrl(baseUrl, path), {
            method,
            headers,
            body: body === undefined ? undefined : JSON.stringify(body),
        });
    }
    catch (e) {
        throw new ConfabError('DISCONNECTED', `${method} ${path}: ${e instanceof Error ? e.message : 'no answer'}`);
    }
    if (!response.ok)
        throw await errorFromResponse(response);
    const text = await response.text();
    return { data: text ? JSON.parse(text) : undefined, headers: response.headers };
}
/** The error a non-2xx answer stands for: its JSON `{code, message}` body, else its status. */
export async function errorFromResponse(response) {
    const details = { status: response.status, retryAfterMs: retryAfterMs(response.headers) };
    let body;
    try {
        body = await response.json();
    }
    catch {
        // Not JSON (a proxy's page): the status says it.
    }
    if (isObject(body) && typeof body.code === 'string') {
        return errorFromData({ code: body.code, message: String(body.message ?? body.code) }, details);
    }
    return new ConfabError(codeOfStatus(response.status), `HTTP ${response.status}`, details);
}
/** `Retry-After` (seconds) in milliseconds, when present. */
export function retryAfterMs(headers) {
    const value = headers.get('retry-after');
    const seconds = value === null ? NaN : Number(value);
    return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}
const STATUS_CODES = {
    401: 'AUTH_FAILED',
    403: 'FORBIDDEN',
    404: 'NOT_FOUND',
    405: 'METHOD_NOT_ALLOWED',
    408: 'REQUEST_TIMEOUT',
    413: 'MESSAGE_TOO_LONG',
    415: 'UNSUPPORTED_TYPE',
    422: 'INVALID_FRAME',
    429: 'RATE_LIMITED',
    502: 'UNAVAILABLE',
    503: 'UNAVAILABLE',
    504: 'UNAVAILABLE',
};
function codeOfStatus(status) {
    return STATUS_CODES[status] ?? 'INTERNAL';
}
