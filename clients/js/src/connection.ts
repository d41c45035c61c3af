// The live connection: which transport, authentication and renewal,
// request/reply by id, the heartbeat, and reconnecting with backoff.
//
// One connection at a time is "live"; on the HTTP transport a socket may be
// tried on the side (the probe) and adopted once it authenticates. Whatever
// ends a connection calls `closed(live, code)` with a WebSocket close code.

import { Emitter } from './emitter.js';
import { ConfabError, errorFromClose, errorFromData, toConfabError } from './errors.js';
import { openHttp } from './http.js';
import { Timers, type TimerHandle } from './timers.js';
import { decodeToken } from './token.js';
import { resolveUrl, type Transport, type TransportKind, type WebSocketConstructor } from './transport.js';
import type { AuthSuccessData, ErrorData, ServerFrame } from './types.js';
import { backoffDelay, randomId } from './util.js';
import { openWebSocket } from './websocket.js';

/**
 * `connecting`: the first attempt; `online`: authenticated; `reconnecting`:
 * lost (or never reached), retrying; `closed`: `close()` was called, or
 * authentication was refused for good.
 */
export type ConnectionState = 'connecting' | 'online' | 'reconnecting' | 'closed';

/** Where the connection stands. A new object on every change. */
export interface ConnectionStatus {
  /** See {@link ConnectionState}. */
  state: ConnectionState;
  /** The live transport while online, else null. */
  transport: TransportKind | null;
  /** The node holding the connection, while online. */
  nodeId: string | null;
  /** From `auth_success`, or the token's `sub` before the first one. */
  userId: string | null;
  /** While online. */
  connectionId: string | null;
  /** When the next attempt is made (ms since the epoch), while waiting to reconnect. */
  retryAt: number | null;
  /** Why the last connection ended (or the last attempt failed), if one did. */
  lastError: ConfabError | null;
}

/** What a {@link Connection} needs; the client fills in the defaults. */
export interface ConnectionOptions {
  url: string;
  token: () => Promise<string>;
  transports: readonly TransportKind[];
  WebSocket: WebSocketConstructor | null;
  backoffMinMs: number;
  backoffMaxMs: number;
  wsFailuresForHttp: number;
  wsRetryMs: number;
  requestTimeoutMs: number;
}

/** The connection's events. */
export interface ConnectionEvents {
  /** The status changed. */
  status: (status: ConnectionStatus) => void;
  /** A server frame of the live connection, after any waiting request took its reply. */
  frame: (frame: ServerFrame) => void;
  /** A connection authenticated: everything joined before must be joined again. */
  session: (data: AuthSuccessData) => void;
  /** The authenticated connection ended (requests waiting on it were rejected). */
  lost: () => void;
  /** An error not tied to a call: a refused renewal, `token()` failing, auth given up. */
  error: (error: ConfabError) => void;
}

const HEARTBEAT_MS = 20_000; // a ping unanswered within the request timeout drops the connection
const WS_STABLE_MS = 30_000; // a socket cut (1006) sooner than this after auth counts as failed
const RENEW_LEAD_MAX_MS = 30_000; // renew this long before expiry at most (a fifth of the lifetime at least)
const RENEW_RETRY_MS = 30_000; // a failed renewal is tried again this much later (if time is left)
const RENEW_MIN_MS = 1_000; // renewals are at least this far apart
const TOKEN_MARGIN_MS = 10_000; // a cached token this close to expiry is not used to connect

/** One connection attempt and, once authenticated, the live connection. */
interface Live {
  kind: TransportKind;
  transport: Transport | null;
  authed: boolean;
  authedAt: number;
  authTimer: TimerHandle | null;
  /** The error frame that announced the end (AUTH_*, TOKEN_EXPIRED, or one with close_code). */
  closeError: ConfabError | null;
}

interface Pending {
  resolve: (data: Record<string, unknown>) => void;
  reject: (error: ConfabError) => void;
  timer: TimerHandle;
}

/** The client's connection to confab (internal: the client's API wraps it). */
export class Connection {
  /** The connection's events. */
  readonly events = new Emitter<ConnectionEvents>();
  private current: ConnectionStatus = Object.freeze({
    state: 'connecting',
    transport: null,
    nodeId: null,
    userId: null,
    connectionId: null,
    retryAt: null,
    lastError: null,
  });
  private live: Live | null = null;
  private probe: Live | null = null;
  private mode: TransportKind;
  private readonly fallback: boolean; // websocket first, http when sockets fail
  private wsFailures = 0;
  private attempt = 0;
  private authRetried = false;
  private token: string | null = null;
  private tokenStale = false;
  private tokenFetch: Promise<string> | null = null;
  private readonly pending = new Map<string, Pending>();
  private waiters: Array<{ resolve: () => void; reject: (e: ConfabError) => void }> = [];
  private readonly timers = new Timers();
  private heartbeatTimer: TimerHandle | null = null;
  private renewTimer: TimerHandle | null = null;
  private probeTimer: TimerHandle | null = null;
  private retryTimer: TimerHandle | null = null;
  private readonly checks = new Set<AbortController>(); // reachability fetches in flight
  private stopped = false;
  /** `limits` of the last `auth_success`, if it had them. */
  maxMessageChars: number | null = null;

  constructor(private readonly opts: ConnectionOptions) {
    const usable = opts.transports.filter((k) => k === 'http' || (k === 'websocket' && opts.WebSocket !== null));
    if (usable.length === 0) {
      throw new TypeError('no usable transport: pass a WebSocket constructor or allow "http"');
    }
    this.mode = usable[0];
    this.fallback = this.mode === 'websocket' && usable.includes('http');
  }

  /** The current status. */
  get status(): ConnectionStatus {
    return this.current;
  }

  /** Authenticated now. */
  get online(): boolean {
    return this.live?.authed === true && !this.stopped;
  }

  /** Makes the first attempt. */
  start(): void {
    void this.connect();
  }

  /** The token in use (fetched when there is none or it is about to expire). */
  currentToken(): Promise<string> {
    return this.getToken(this.tokenStale);
  }

  /** A fresh token from `token()` (after a 401). */
  freshToken(): Promise<string> {
    return this.getToken(true);
  }

  /** Resolves once online (at once if online now); rejects if the connection closes first. */
  whenOnline(): Promise<void> {
    if (this.stopped) return Promise.reject(closedError());
    if (this.online) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /**
   * Sends a frame with an id and resolves with the data of the frame
   * answering it; rejects with its `error`, with `TIMEOUT` after
   * `requestTimeoutMs`, or with `DISCONNECTED` when not online or lost first.
   */
  request(type: string, data?: object, extra: { token?: string } = {}): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const live = this.live;
      if (this.stopped || !live?.authed || !live.transport) {
        reject(this.stopped ? closedError() : new ConfabError('DISCONNECTED', 'not connected'));
        return;
      }
      const id = randomId();
      const timer = this.timers.after(this.opts.requestTimeoutMs, () => {
        if (this.pending.delete(id)) reject(new ConfabError('TIMEOUT', `${type}: no answer`));
      });
      this.pending.set(id, { resolve, reject, timer });
      live.transport.send({ type, id, ...(data ? { data } : {}), ...extra });
    });
  }

  /** Sends a frame that wants no answer; false (and nothing sent) when not online. */
  fire(type: string, data: object): boolean {
    const live = this.live;
    if (!this.online || !live?.transport) return false;
    live.transport.send({ type, data });
    return true;
  }

  /** Closes for good: every timer cleared, waiting requests rejected (`DISCONNECTED`). */
  close(): void {
    this.shutdown(null);
  }

  // ---------------------------------------------------------------- attempts

  private async connect(): Promise<void> {
    this.retryTimer = null;
    if (this.stopped) return;
    const kind = this.mode;
    this.setStatus({ retryAt: null });
    let token: string;
    try {
      token = await this.getToken(this.tokenStale);
    } catch (e) {
      if (this.stopped) return;
      const error = new ConfabError('UNAVAILABLE', `token() failed: ${toConfabError(e).message}`);
      this.events.emit('error', error);
      this.retryIn(backoffDelay(this.attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs), error);
      return;
    }
    if (this.stopped || this.live) return;
    this.tokenStale = false;
    const live = this.open(kind, token);
    this.live = live;
    live.authTimer = this.timers.after(this.opts.requestTimeoutMs, () => {
      // A node that never answers auth (hung, a lost handshake, a proxy holding frames).
      if (this.live === live && !live.authed) this.drop(live, 1006, new ConfabError('TIMEOUT', 'no auth_success'));
    });
  }

  private open(kind: TransportKind, token: string): Live {
    const live: Live = { kind, transport: null, authed: false, authedAt: 0, authTimer: null, closeError: null };
    const handlers = {
      onFrame: (frame: ServerFrame) => this.receive(live, frame),
      onClose: (code: number, error?: ConfabError) => this.closed(live, code, error),
    };
    live.transport =
      kind === 'websocket'
        ? openWebSocket(this.opts.WebSocket as WebSocketConstructor, this.opts.url, token, handlers)
        : openHttp(this.opts.url, token, () => this.token ?? token, handlers);
    return live;
  }

  private getToken(fresh: boolean): Promise<string> {
    if (!fresh && this.token !== null && usable(this.token)) return Promise.resolve(this.token);
    if (!this.tokenFetch) {
      this.tokenFetch = Promise.resolve()
        .then(() => this.opts.token())
        .then((token) => {
          if (typeof token !== 'string' || !token) throw new TypeError('token() must resolve with a JWT string');
          this.token = token;
          const sub = decodeToken(token)?.sub;
          if (sub && this.current.userId === null) this.setStatus({ userId: sub });
          return token;
        })
        .finally(() => {
          this.tokenFetch = null;
        });
    }
    return this.tokenFetch;
  }

  // ---------------------------------------------------------------- frames

  private receive(live: Live, frame: ServerFrame): void {
    if (live === this.probe) {
      if (frame.type === 'auth_success' && !frame.data.ref) this.adoptProbe(live, frame.data);
      return;
    }
    if (live !== this.live) return;
    const ref = (frame.data as { ref?: unknown }).ref;
    if (frame.type === 'auth_success' && !ref) {
      this.authenticated(live, frame.data);
    } else if (typeof ref === 'string' && this.pending.has(ref)) {
      this.settle(ref, frame);
    } else if (frame.type === 'error' && !ref && announcesEnd(frame.data)) {
      live.closeError = errorFromData(frame.data);
    }
    if (this.live === live) this.events.emit('frame', frame);
  }

  private settle(ref: string, frame: ServerFrame): void {
    const p = this.pending.get(ref) as Pending;
    this.pending.delete(ref);
    this.timers.cancel(p.timer);
    if (frame.type === 'error') p.reject(errorFromData(frame.data));
    else p.resolve(frame.data as unknown as Record<string, unknown>);
  }

  private authenticated(live: Live, data: AuthSuccessData): void {
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
    if (live.kind === 'http' && this.fallback) this.scheduleProbe();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
    this.events.emit('session', data);
  }

  // ---------------------------------------------------------------- ends

  /** Ends a connection now, without waiting for its transport to say so. */
  private drop(live: Live, code: number, error: ConfabError): void {
    live.transport?.close();
    this.closed(live, code, error);
  }

  private closed(live: Live, code: number, transportError?: ConfabError): void {
    if (live === this.probe) {
      this.probe = null;
      return;
    }
    if (live !== this.live) return;
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
      if (failed) void this.countWsFailure();
      else this.wsFailures = 0;
    }
    if (code === 4001 || error.code === 'AUTH_FAILED' || error.code === 'AUTH_REQUIRED') {
      // Refused: a fresh token once, then give up.
      if (this.authRetried) {
        this.shutdown(error);
        return;
      }
      this.authRetried = true;
      this.tokenStale = true;
    } else if (code === 4003 || error.code === 'TOKEN_EXPIRED') {
      this.tokenStale = true;
    }
    if (code === 1012) {
      // The node drains: straight back, to whichever node the URL reaches.
      this.retryIn(backoffDelay(0, this.opts.backoffMinMs, this.opts.backoffMinMs), error);
    } else {
      this.retryIn(backoffDelay(this.attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs), error);
    }
  }

  /** The live connection is gone: its timers stop, its requests fail, and listeners hear of it. */
  private endLive(live: Live): void {
    this.live = null;
    this.timers.cancel(live.authTimer);
    this.timers.cancel(this.heartbeatTimer);
    this.timers.cancel(this.renewTimer);
    this.timers.cancel(this.probeTimer);
    this.probe?.transport?.close();
    this.probe = null;
    this.failPending(new ConfabError('DISCONNECTED', 'connection lost'));
    if (live.authed) this.events.emit('lost');
  }

  private retryIn(delay: number, error: ConfabError): void {
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
  private async countWsFailure(): Promise<void> {
    if (!this.fallback || !(await this.reachable())) return;
    if (this.stopped || this.mode !== 'websocket' || this.live?.authed) return;
    this.wsFailures += 1;
    if (this.wsFailures < this.opts.wsFailuresForHttp) return;
    this.mode = 'http';
    this.attempt = 0;
    if (this.retryTimer !== null) {
      this.timers.cancel(this.retryTimer);
      void this.connect();
    }
  }

  /** Whether the server answers HTTP at all (any status), within the request timeout. */
  private async reachable(): Promise<boolean> {
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
    } catch {
      return false;
    } finally {
      this.timers.cancel(timer);
      this.checks.delete(abort);
    }
  }

  private failPending(error: ConfabError): void {
    for (const p of this.pending.values()) {
      this.timers.cancel(p.timer);
      p.reject(error);
    }
    this.pending.clear();
  }

  private shutdown(error: ConfabError | null): void {
    if (this.stopped) return;
    this.stopped = true;
    this.timers.clear();
    for (const abort of this.checks) abort.abort();
    this.live?.transport?.close();
    this.probe?.transport?.close();
    this.live = null;
    this.probe = null;
    this.failPending(closedError());
    for (const w of this.waiters) w.reject(error ?? closedError());
    this.waiters = [];
    this.setStatus({
      state: 'closed',
      transport: null,
      nodeId: null,
      connectionId: null,
      retryAt: null,
      lastError: error ?? this.current.lastError,
    });
    if (error) this.events.emit('error', error);
  }

  // ---------------------------------------------------------------- while online

  private heartbeat(live: Live): void {
    this.heartbeatTimer = this.timers.after(HEARTBEAT_MS, () => {
      if (this.live !== live) return;
      this.request('ping', {}).then(
        () => this.live === live && this.heartbeat(live),
        (e: ConfabError) => {
          if (this.live !== live) return;
          if (e.code === 'TIMEOUT') this.drop(live, 1006, new ConfabError('TIMEOUT', 'no answer to ping'));
          else this.heartbeat(live);
        },
      );
    });
  }

  /**
   * Renews at `expires_at` minus min(30 s, a fifth of the time left), a
   * second from now at the soonest (a client clock ahead of the server's
   * must not renew in a loop).
   */
  private scheduleRenewal(expiresAt: string): void {
    this.timers.cancel(this.renewTimer);
    const left = Date.parse(expiresAt) - Date.now();
    if (!Number.isFinite(left)) return;
    const lead = Math.min(RENEW_LEAD_MAX_MS, left / 5);
    this.renewTimer = this.timers.after(Math.max(RENEW_MIN_MS, left - lead), () => void this.renew(expiresAt));
  }

  private async renew(expiresAt: string): Promise<void> {
    const live = this.live;
    let token: string;
    try {
      token = await this.getToken(true);
    } catch (e) {
      this.events.emit('error', new ConfabError('UNAVAILABLE', `token() failed: ${toConfabError(e).message}`));
      this.retryRenewal(expiresAt);
      return;
    }
    // Reconnecting meanwhile: the next connection uses the new token.
    if (!live || this.live !== live || !live.authed) return;
    try {
      const data = await this.request('auth', undefined, { token });
      const renewed = String(data.expires_at);
      // A token that expires no later (token() gave the same one): nothing
      // to renew until the server ends the session, and then a fresh one is asked.
      if (Date.parse(renewed) > Date.parse(expiresAt)) this.scheduleRenewal(renewed);
    } catch (e) {
      const error = toConfabError(e);
      if (error.code === 'DISCONNECTED') return;
      // Refused (another sub, a bad token): the session goes on until it expires.
      this.events.emit('error', error);
      this.retryRenewal(expiresAt);
    }
  }

  private retryRenewal(expiresAt: string): void {
    const left = Date.parse(expiresAt) - Date.now();
    if (left <= 2_000) return;
    this.timers.cancel(this.renewTimer);
    this.renewTimer = this.timers.after(Math.min(RENEW_RETRY_MS, left / 2), () => void this.renew(expiresAt));
  }

  // ---------------------------------------------------------------- back to sockets

  /** On HTTP: every `wsRetryMs`, a socket is tried on the side. */
  private scheduleProbe(): void {
    this.timers.cancel(this.probeTimer);
    this.probeTimer = this.timers.after(this.opts.wsRetryMs, () => {
      const live = this.live;
      if (!live?.authed || live.kind !== 'http' || this.token === null) return;
      this.scheduleProbe();
      if (this.probe) return;
      const probe = this.open('websocket', this.token);
      this.probe = probe;
      this.timers.after(this.opts.requestTimeoutMs, () => {
        if (this.probe !== probe) return;
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
  private adoptProbe(probe: Live, data: AuthSuccessData): void {
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

  private setStatus(patch: Partial<ConnectionStatus>): void {
    this.current = Object.freeze({ ...this.current, ...patch });
    this.events.emit('status', this.current);
  }
}

/** Error frames that come right before the node ends the connection. */
function announcesEnd(data: ErrorData): boolean {
  return typeof data.close_code === 'number' || ['AUTH_REQUIRED', 'AUTH_FAILED', 'TOKEN_EXPIRED'].includes(data.code);
}

/** A token not known to expire within the margin. */
function usable(token: string): boolean {
  const exp = decodeToken(token)?.exp;
  return exp === undefined || exp * 1000 > Date.now() + TOKEN_MARGIN_MS;
}

function closedError(): ConfabError {
  return new ConfabError('DISCONNECTED', 'the client is closed');
}
