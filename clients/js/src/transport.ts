// The seam between the connection logic and the two ways of reaching a node.

import type { ConfabError } from './errors.js';
import type { ClientFrame, ServerFrame } from './types.js';

/** `websocket`: `GET /api/v1/chat/ws`. `http`: an event stream down, frame POSTs up (where proxies refuse WebSockets). */
export type TransportKind = 'websocket' | 'http';

/**
 * The part of a WebSocket the SDK uses: the browser's `WebSocket` and the
 * `ws` package's both fit. Handlers are typed loosely (`never`) so that
 * either implementation's event types are accepted.
 */
export interface WebSocketLike {
  /** Set by the SDK: sends `auth`. */
  onopen: ((event: never) => void) | null;
  /** Set by the SDK: reads `event.data` (text frames). */
  onmessage: ((event: never) => void) | null;
  /** Set by the SDK: reads `event.code`. */
  onclose: ((event: never) => void) | null;
  /** Set by the SDK (a close follows). */
  onerror: ((event: never) => void) | null;
  /** Sends one text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `ws`'s default export in Node. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What a transport reports to the connection. */
export interface TransportHandlers {
  /** A server frame. */
  onFrame(frame: ServerFrame): void;
  /**
   * The transport ended by itself (never after `close()`), once, with the
   * WebSocket close code that says why (1006 when cut) and, when known, the error.
   */
  onClose(code: number, error?: ConfabError): void;
}

/** One connection to a node over one transport. */
export interface Transport {
  readonly kind: TransportKind;
  /** Sends a client frame (only once authenticated; `auth` is the transport's own business). */
  send(frame: ClientFrame): void;
  /** Ends the connection; no handler is called after this. */
  close(): void;
}

/** Joins the base URL (`""`: the page's own origin) and an absolute path. */
export function resolveUrl(base: string, path: string): string {
  if (base) return base.replace(/\/+$/, '') + path;
  const location = (globalThis as { location?: { href: string } }).location;
  if (!location) throw new TypeError('url "" needs a browser page; give the server\'s URL');
  return new URL(path, location.href).href;
}

/** The WebSocket URL (ws: or wss:) of an http(s) base URL and path. */
export function webSocketUrl(base: string, path: string): string {
  const url = new URL(resolveUrl(base, path));
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}
