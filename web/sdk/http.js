// The HTTP transport, for proxies that refuse WebSocket upgrades: the
// server's frames arrive on a `fetch`-streamed event stream (`GET
// /api/v1/chat/events`, `Authorization: Bearer`), the client's are POSTed to
// `/api/v1/chat/connections/{connection_id}/frames`, one POST at a time so
// that they keep their order; frames queued meanwhile go together in the next.
import { ConfabError, errorFromData } from './errors.js';
import { errorFromResponse, retryAfterMs } from './rest.js';
import { Timers } from './timers.js';
import { resolveUrl } from './transport.js';
import { parseFrame } from './types.js';
const BATCH_FRAMES = 32; // the server takes 64 per POST
const BATCH_BYTES = 32768; // half the server's default body limit
const POST_TRIES = 3; // a POST answered 429 or 502-504 is tried this often
const RETRY_STATUSES = new Set([429, 502, 503, 504]);
const utf8 = new TextEncoder();
/**
 * Opens the event stream with `token`; POSTs use `currentToken()` (a renewed
 * token once there is one).
 */
export function openHttp(baseUrl, token, currentToken, handlers) {
    return new HttpTransport(baseUrl, token, currentToken, handlers);
}
class HttpTransport {
    constructor(baseUrl, token, currentToken, handlers) {
        this.baseUrl = baseUrl;
        this.currentToken = currentToken;
        this.handlers = handlers;
        this.kind = 'http';
        this.ended = false;
        this.connectionId = null;
        this.queue = []; // frames (JSON text) not POSTed yet
        this.posting = false;
        this.abort = new AbortController();
        this.timers = new Timers();
        void this.read(token);
    }
    send(frame) {
        if (this.ended)
            return;
        this.queue.push(JSON.stringify(frame));
        void this.post();
    }
    close() {
        if (this.ended)
            return;
        this.ended = true;
        this.abort.abort();
        this.timers.clear();
    }
    /** Ends the connection by itself: reported once to the handlers. */
    end(code, error) {
        if (this.ended)
            return;
        this.close();
        this.handlers.onClose(code, error);
    }
    async read(token) {
        let response;
        try {
            response = await fetch(resolveUrl(this.baseUrl, '/api/v1/chat/events'), {
                headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
                cache: 'no-store',
                signal: this.abort.signal,
            });
        }
        catch {
            this.end(1006, new ConfabError('DISCONNECTED', 'the event stream could not be opened'));
            return;
        }
        if (!response.ok || !response.body) {
            // Opening fails with a status: 401 (a bad or expired token), 403 (too
            // many connections), 503 (the node drains)...
            const error = await errorFromResponse(response);
            const code = response.status === 401 ? (error.code === 'TOKEN_EXPIRED' ? 4003 : 4001) : response.status === 403 ? 4008 : 1006;
            this.end(code, error);
            return;
        }
        try {
            await readEvents(response.body, (data) => this.onEvent(data));
        }
        catch {
            // Cut (or aborted by close()): below.
        }
        // A stream that ends without a last `error` frame was cut by the network.
        this.end(1006, new ConfabError('DISCONNECTED', 'the event stream was cut'));
    }
    onEvent(text) {
        if (this.ended)
            return;
        const frame = parseFrame(text);
        if (!frame)
            return;
        if (frame.type === 'auth_success' && !frame.data.ref)
            this.connectionId = frame.data.connection_id;
        this.handlers.onFrame(frame);
        if (frame.type === 'error' && typeof frame.data.close_code === 'number') {
            // The node's last frame: the close code a socket would have had.
            this.end(frame.data.close_code, errorFromData(frame.data));
        }
        else if (frame.type === 'auth_success') {
            void this.post();
        }
    }
    /** POSTs the queued frames, one request at a time. */
    async post() {
        if (this.posting || this.ended || this.connectionId === null || this.queue.length === 0)
            return;
        this.posting = true;
        const batch = this.takeBatch();
        const url = resolveUrl(this.baseUrl, `/api/v1/chat/connections/${encodeURIComponent(this.connectionId)}/frames`);
        for (let tries = 1;; tries++) {
            let response = null;
            try {
                response = await fetch(url, {
                    method: 'POST',
                    headers: { authorization: `Bearer ${this.currentToken()}`, 'content-type': 'application/json' },
                    body: `[${batch.join(',')}]`,
                    signal: this.abort.signal,
                });
            }
            catch {
                // No answer at all: the connection is lost, below.
            }
            if (this.ended)
                return;
            if (response?.status === 202) {
                await response.arrayBuffer().catch(() => undefined);
                break;
            }
            if (response?.status === 413) {
                // One frame over the node's limit (batches stay well below it):
                // answered as a socket answers a frame it refuses.
                this.refuse(batch, 'MESSAGE_TOO_LONG', 'frame too large');
                break;
            }
            if (response && tries < POST_TRIES && RETRY_STATUSES.has(response.status)) {
                await this.timers.sleep(retryAfterMs(response.headers) ?? 1000);
                if (this.ended)
                    return;
                continue;
            }
            // 404 (the connection ended), 401, 403, no answer, a node still
            // failing: the connection is lost; requests waiting on it fail.
            const error = response
                ? await errorFromResponse(response)
                : new ConfabError('DISCONNECTED', 'a frame POST got no answer');
            this.end(response?.status === 401 ? 4001 : 1006, error);
            return;
        }
        this.posting = false;
        void this.post();
    }
    /** The oldest queued frames, as many as fit in one POST (at least one). */
    takeBatch() {
        const first = this.queue.shift();
        const batch = [first];
        let bytes = utf8.encode(first).length;
        while (batch.length < BATCH_FRAMES && this.queue.length > 0) {
            const next = utf8.encode(this.queue[0]).length;
            if (bytes + next > BATCH_BYTES)
                break;
            bytes += next;
            batch.push(this.queue.shift());
        }
        return batch;
    }
    /** Answers the frames of `batch` that wait for a reply with an error. */
    refuse(batch, code, message) {
        for (const text of batch) {
            const { id } = JSON.parse(text);
            if (id)
                this.handlers.onFrame({ type: 'error', data: { ref: id, code, message } });
        }
    }
}
/**
 * Reads a `text/event-stream` body, calling `onData` with each event's data
 * (its `data:` lines joined). Comment lines (`: keepalive`) and other fields
 * are skipped. Resolves when the stream ends.
 */
export async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let rest = '';
    let data = [];
    for (;;) {
        const { done, value } = await reader.read();
        if (done)
            return;
        rest += decoder.decode(value, { stream: true });
        const lines = rest.split('\n');
        rest = lines.pop() ?? '';
        for (const raw of lines) {
            const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
            if (line === '') {
                if (data.length > 0)
                    onData(data.join('\n'));
                data = [];
            }
            else if (line.startsWith('data:')) {
                data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
            }
        }
    }
}
