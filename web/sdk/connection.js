// The live connection: which transport, authentication and renewal,
// request/reply by id, the heartbeat, and reconnecting with backoff.
//
// One connection at a time is "live"; on the HTTP transport a socket may be
// tried on the side (the probe) and adopted once it authenticates. Whatever
// ends a connection calls `closed(live, code)` with a WebSocket close code.
import { Emitter } from './emitter.js';
import { ConfabError, errorFromClose, errorFromData, toConfabError } from './errors.js';
import { openHttp } from './http.js';
import { Timers } from './timers.js';
import { decodeToken } from './token.js';
import { resolveUrl } from './transport.js';
import { backoffDelay, randomId } from './util.js';
import { openWebSocket } from './websocket.js';
const HEARTBEAT_MS = 20000; // a ping unanswered within the request timeout drops the connection
const WS_STABLE_MS = 30000; // a socket cut (1006) sooner than this after auth counts as failed
const RENEW_LEAD_MAX_MS = 30000; // renew this long before expiry at most (a fifth of the lifetime at least)
const RENEW_RETRY_MS = 30000; // a failed renewal is tried again this much later (if time is left)
const RENEW_MIN_MS = 1000; // renewals are at least this far apart
const TOKEN_MARGIN_MS = 10000; // a cached token this close to expiry is not used to connect
/** The client's connection to confab (internal: the client's API wraps it). */
export class Connection {
    constructor(opts) {
        this.opts = opts;
        /** The connection's events. */
        this.events = new Emitter();
        this.current = Object.freeze({
            state: 'connecting',
            transport: null,
            nodeId: null,
            userId: null,
            connectionId: null,
            retryAt: null,
            lastError: null,
        });
        this.live = null;
        this.probe = null;
        this.wsFailures = 0;
        this.attempt = 0;
        this.authRetried = false;
        this.token = null;
        this.tokenStale = false;
        this.tokenFetch = null;
        this.pending = new Map();
        this.waiters = [];
        this.timers = new Timers();
        this.heartbeatTimer = null;
        this.renewTimer = null;
        this.probeTimer = null;
        this.retryTimer = null;
        this.checks = new Set(); // reachability fetches in flight
        this.stopped = false;
        /** `limits` of the last `auth_success`, if it had them. */
        this.maxMessageChars = null;
        const usable = opts.transports.filter((k) => k === 'http' || (k === 'websocket' && opts.WebSocket !== null));
        if (usable.length === 0) {
            throw new TypeError('no usable transport: pass a WebSocket constructor or allow "http"');
        }
        this.mode = usable[0];
        this.fallback = this.mode === 'websocket' && usable.includes('http');
    }
    /** The current status. */
    get status() {
        return this.current;
    }
    /** Authenticated now. */
    get online() {
        return this.live?.authed === true && !this.stopped;
    }
    /** Makes the first attempt. */
    start() {
        void this.connect();
    }
    /** The token in use (fetched when there is none or it is about to expire). */
    currentToken() {
        return this.getToken(this.tokenStale);
    }
    /** A fresh token from `token()` (after a 401). */
    freshToken() {
        return this.getToken(true);
    }
    /** Resolves once online (at once if online now); rejects if the connection closes first. */
    whenOnline() {
        if (this.stopped)
            return Promise.reject(closedError());
        if (this.online)
            return Promise.resolve();
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    }
    /**
     * Sends a frame with an id and resolves with the data of the frame
     * answering it; rejects with its `error`, with `TIMEOUT` after
     * `requestTimeoutMs`, or with `DISCONNECTED` when not online or lost first.
     */
    request(type, data, extra = {}) {
        return new Promise((resolve, reject) => {
            const live = this.live;
            if (this.stopped || !live?.authed || !live.transport) {
                reject(this.stopped ? closedError() : new ConfabError('DISCONNECTED', 'not connected'));
                return;
            }
            const id = randomId();
            const timer = this.timers.after(this.opts.requestTimeoutMs, () => {
                if (this.pending.delete(id))
                    reject(new ConfabError('TIMEOUT', `${type}: no answer`));
            });
            this.pending.set(id, { resolve, reject, timer });
            live.transport.send({ type, id, ...(data ? { data } : {}), ...extra });
        });
    }
    /** Sends a frame that wants no answer; false (and nothing sent) when not online. */
    fire(type, data) {
        const live = this.live;
        if (!this.online || !live?.transport)
            return false;
        live.transport.send({ type, data });
        return true;
    }
    /** Closes for good: every timer cleared, waiting requests rejected (`DISCONNECTED`). */
    close() {
        this.shutdown(null);
    }
    // ---------------------------------------------------------------- attempts
    async connect() {
        this.retryTimer = null;
        if (this.stopped)
            return;
        const kind = this.mode;
        this.setStatus({ retryAt: null });
        let token;
        try {
            token = await this.getToken(this.tokenStale);
        }
        catch (e) {
            if (this.stopped)
                return;
            const error = new ConfabError('UNAVAILABLE', `token() failed: ${toConfabError(e).message}`);
            this.events.emit('error', error);
            this.retryIn(backoffDelay(this.attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs), error);
            return;
        }
        if (this.stopped || this.live)
            return;
        this.tokenStale = false;
        const live = this.open(kind, token);
        this.live = live;
        live.authTimer = this.timers.after(this.opts.requestTimeoutMs, () => {
            // A node that never answers auth (hung, a lost handshake, a proxy holding frames).
            if (this.live === live && !live.authed)
                this.drop(live, 1006, new ConfabError('TIMEOUT', 'no auth_success'));
        });
    }
    open(kind, token) {
        const live = { kind, transport: null, authed: false, authedAt: 0, authTimer: null, closeError: null };
        const handlers = {
            onFrame: (frame) => this.receive(live, frame),
            onClose: (code, error) => this.closed(live, code, error),
        };
        live.transport =
            kind === 'websocket'
                ? openWebSocket(this.opts.WebSocket, this.opts.url, token, handlers)
                : openHttp(this.opts.url, token, () => this.token ?? token, handlers);
        return live;
    }
    getToken(fresh) {
        if (!fresh && this.token !== null && usable(this.token))
            return Promise.resolve(this.token);
        if (!this.tokenFetch) {
            this.tokenFetch = Promise.resolve()
                .then(() => this.opts.token())
                .then((token) => {
                if (typeof token !== 'string' || !token)
                    throw new TypeError('token() must resolve with a JWT string');
                this.token = token;
                const sub = decodeToken(token)?.sub;
                if (sub && this.current.userId === null)
                    this.setStatus({ userId: sub });
                return token;
            })
                .finally(() => {
                this.tokenFetch = null;
            });
        }
        return this.tokenFetch;
    }
    // ---------------------------------------------------------------- frames
    receive(live, frame) {
        if (live === this.probe) {
            if (frame.type === 'auth_success' && !frame.data.ref)
                this.adoptProbe(live, frame.data);
            return;
        }
        if (live !== this.live)
            return;
        const ref = frame.data.ref;
        if (frame.type === 'auth_success' && !ref) {
            this.authenticated(live, frame.data);
        }
        else if (typeof ref === 'string' && this.pending.has(ref)) {
            this.settle(ref, frame);
        }
        else if (frame.type === 'error' && !ref && announcesEnd(frame.data)) {
            live.closeError = errorFromData(frame.data);
        }
        if (this.live === live)
            this.events.emit('frame', frame);
    }
    settle(ref, frame) {
        const p = this.pending.get(ref);
        this.pending.delete(ref);
        this.timers.cancel(p.timer);
        if (frame.type === 'error')
            p.reject(errorFromData(frame.data));
        else
            p.resolve(frame.data);
    }
    authenticated(live, data) {
        live.authed = true;
        live.authedAt = Date.now();
        this.timers.cancel(live.authTimer);
        this.attempt = 0;
        this.authRetried = false;
        if (data.limits && typeof data.limits.max_message_chars === 'number') {
            this.maxMessageChars = data.limits.max_message_chars;
        }
        this.setStatus({
            state: 'online',
            transport: live.kind,
            nodeId: data.node_id ?? null,
            userId: data.user_id,
            connectionId: data.connection_id,
            retryAt: null,
        });
        this.scheduleRenewal(data.expires_at);
        this.heartbeat(live);
        if (live.kind === 'http' && this.fallback)
            this.scheduleProbe();
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters)
            w.resolve();
        this.events.emit('session', data);
    }
    // ---------------------------------------------------------------- ends
    /** Ends a connection now, without waiting for its transport to say so. */
    drop(live, code, error) {
        live.transport?.close();
        this.closed(live, code, error);
    }
    closed(live, code, transportError) {
        if (live === this.probe) {
            this.probe = null;
            return;
        }
        if (live !== this.live)
            return;
        this.endLive(live);
        const base = live.closeError ?? transportError ?? errorFromClose(code);
        const error = new ConfabError(base.code, base.message, {
            retryAfterMs: base.retryAfterMs,
            status: base.status,
            closeCode: code,
        });
        if (live.kind === 'websocket') {
            // A proxy that refuses upgrades: never authenticated. One that cuts
            // them: a socket that dies without a close frame soon after auth.
            const failed = !live.authed || (code === 1006 && Date.now() - live.authedAt < WS_STABLE_MS);
            if (failed)
                void this.countWsFailure();
            else
                this.wsFailures = 0;
        }
        if (code === 4001 || error.code === 'AUTH_FAILED' || error.code === 'AUTH_REQUIRED') {
            // Refused: a fresh token once, then give up.
            if (this.authRetried) {
                this.shutdown(error);
                return;
            }
            this.authRetried = true;
            this.tokenStale = true;
        }
        else if (code === 4003 || error.code === 'TOKEN_EXPIRED') {
            this.tokenStale = true;
        }
        if (code === 1012) {
            // The node drains: straight back, to whichever node the URL reaches.
            this.retryIn(backoffDelay(0, this.opts.backoffMinMs, this.opts.backoffMinMs), error);
        }
        else {
            this.retryIn(backoffDelay(this.attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs), error);
        }
    }
    /** The live connection is gone: its timers stop, its requests fail, and listeners hear of it. */
    endLive(live) {
        this.live = null;
        this.timers.cancel(live.authTimer);
        this.timers.cancel(this.heartbeatTimer);
        this.timers.cancel(this.renewTimer);
        this.timers.cancel(this.probeTimer);
        this.probe?.transport?.close();
        this.probe = null;
        this.failPending(new ConfabError('DISCONNECTED', 'connection lost'));
        if (live.authed)
            this.events.emit('lost');
    }
    retryIn(delay, error) {
        this.setStatus({
            state: 'reconnecting',
            transport: null,
            nodeId: null,
            connectionId: null,
            retryAt: Date.now() + delay,
            lastError: error,
        });
        this.retryTimer = this.timers.after(delay, () => void this.connect());
    }
    /**
     * A socket failed. It counts only when the server answers HTTP (a proxy
     * refusing or cutting upgrades), not when nothing answers at all (a node
     * down or restarting: HTTP would fail as well). After `wsFailuresForHttp`
     * in a row, the next attempt (made at once) is over HTTP.
     */
    async countWsFailure() {
        if (!this.fallback || !(await this.reachable()))
            return;
        if (this.stopped || this.mode !== 'websocket' || this.live?.authed)
            return;
        this.wsFailures += 1;
        if (this.wsFailures < this.opts.wsFailuresForHttp)
            return;
        this.mode = 'http';
        this.attempt = 0;
        if (this.retryTimer !== null) {
            this.timers.cancel(this.retryTimer);
            void this.connect();
        }
    }
    /** Whether the server answers HTTP at all (any status), within the request timeout. */
    async reachable() {
        const abort = new AbortController();
        this.checks.add(abort);
        const timer = this.timers.after(this.opts.requestTimeoutMs, () => abort.abort());
        try {
            const response = await fetch(resolveUrl(this.opts.url, '/health'), {
                mode: 'no-cors',
                cache: 'no-store',
                signal: abort.signal,
            });
            await response.arrayBuffer().catch(() => undefined);
            return true;
        }
        catch {
            return false;
        }
        finally {
            this.timers.cancel(timer);
            this.checks.delete(abort);
        }
    }
    failPending(error) {
        for (const p of this.pending.values()) {
            this.timers.cancel(p.timer);
            p.reject(error);
        }
        this.pending.clear();
    }
    shutdown(error) {
        if (this.stopped)
            return;
        this.stopped = true;
        this.timers.clear();
        for (const abort of this.checks)
            abort.abort();
        this.live?.transport?.close();
        this.probe?.transport?.close();
        this.live = null;
        this.probe = null;
        this.failPending(closedError());
        for (const w of this.waiters)
            w.reject(error ?? closedError());
        this.waiters = [];
        this.setStatus({
            state: 'closed',
            transport: null,
            nodeId: null,
            connectionId: null,
            retryAt: null,
            lastError: error ?? this.current.lastError,
        });
        if (error)
            this.events.emit('error', error);
    }
    // ---------------------------------------------------------------- while online
    heartbeat(live) {
        this.heartbeatTimer = this.timers.after(HEARTBEAT_MS, () => {
            if (this.live !== live)
                return;
            this.request('ping', {}).then(() => this.live === live && this.heartbeat(live), (e) => {
                if (this.live !== live)
                    return;
                if (e.code === 'TIMEOUT')
                    this.drop(live, 1006, new ConfabError('TIMEOUT', 'no answer to ping'));
                else
                    this.heartbeat(live);
            });
        });
    }
    /**
     * Renews at `expires_at` minus min(30 s, a fifth of the time left), a
     * second from now at the soonest (a client clock ahead of the server's
     * must not renew in a loop).
     */
    scheduleRenewal(expiresAt) {
        this.timers.cancel(this.renewTimer);
        const left = Date.parse(expiresAt) - Date.now();
        if (!Number.isFinite(left))
            return;
        const lead = Math.min(RENEW_LEAD_MAX_MS, left / 5);
        this.renewTimer = this.timers.after(Math.max(RENEW_MIN_MS, left - lead), () => void this.renew(expiresAt));
    }
    async renew(expiresAt) {
        const live = this.live;
        let token;
        try {
            token = await this.getToken(true);
        }
        catch (e) {
            this.events.emit('error', new ConfabError('UNAVAILABLE', `token() failed: ${toConfabError(e).message}`));
            this.retryRenewal(expiresAt);
            return;
        }
        // Reconnecting meanwhile: the next connection uses the new token.
        if (!live || this.live !== live || !live.authed)
            return;
        try {
            const data = await this.request('auth', undefined, { token });
            const renewed = String(data.expires_at);
            // A token that expires no later (token() gave the same one): nothing
            // to renew until the server ends the session, and then a fresh one is asked.
            if (Date.parse(renewed) > Date.parse(expiresAt))
                this.scheduleRenewal(renewed);
        }
        catch (e) {
            const error = toConfabError(e);
            if (error.code === 'DISCONNECTED')
                return;
            // Refused (another sub, a bad token): the session goes on until it expires.
            this.events.emit('error', error);
            this.retryRenewal(expiresAt);
        }
    }
    retryRenewal(expiresAt) {
        const left = Date.parse(expiresAt) - Date.now();
        if (left <= 2000)
            return;
        this.timers.cancel(this.renewTimer);
        this.renewTimer = this.timers.after(Math.min(RENEW_RETRY_MS, left / 2), () => void this.renew(expiresAt));
    }
    // ---------------------------------------------------------------- back to sockets
    /** On HTTP: every `wsRetryMs`, a socket is tried on the side. */
    scheduleProbe() {
        this.timers.cancel(this.probeTimer);
        this.probeTimer = this.timers.after(this.opts.wsRetryMs, () => {
            const live = this.live;
            if (!live?.authed || live.kind !== 'http' || this.token === null)
                return;
            this.scheduleProbe();
            if (this.probe)
                return;
            const probe = this.open('websocket', this.token);
            this.probe = probe;
            this.timers.after(this.opts.requestTimeoutMs, () => {
                if (this.probe !== probe)
                    return;
                this.probe = null;
                probe.transport?.close();
            });
        });
    }
    /**
     * The socket tried on the side authenticated: it replaces the HTTP
     * connection (whose waiting requests fail and are retried by their senders),
     * and everything is joined again on it.
     */
    adoptProbe(probe, data) {
        this.probe = null;
        const old = this.live;
        if (old) {
            old.transport?.close();
            this.endLive(old);
        }
        this.mode = 'websocket';
        this.wsFailures = 0;
        this.live = probe;
        this.authenticated(probe, data);
    }
    setStatus(patch) {
        this.current = Object.freeze({ ...this.current, ...patch });
        this.events.emit('status', this.current);
    }
}
/** Error frames that come right before the node ends the connection. */
function announcesEnd(data) {
    return typeof data.close_code === 'number' || ['AUTH_REQUIRED', 'AUTH_FAILED', 'TOKEN_EXPIRED'].includes(data.code);
}
/** A token not known to expire within the margin. */
function usable(token) {
    const exp = decodeToken(token)?.exp;
    return exp === undefined || exp * 1000 > Date.now() + TOKEN_MARGIN_MS;
}
function closedError() {
    return new ConfabError('DISCONNECTED', 'the client is closed');
}
