// The WebSocket transport: `GET /api/v1/chat/ws`, `auth` as the first frame.

import { parseFrame } from './types.js';
import {
  webSocketUrl,
  type Transport,
  type TransportHandlers,
  type WebSocketConstructor,
  type WebSocketLike,
} from './transport.js';

/** Opens a socket to `baseUrl` and authenticates with `token` as soon as it opens. */
export function openWebSocket(
  WebSocketImpl: WebSocketConstructor,
  baseUrl: string,
  token: string,
  handlers: TransportHandlers,
): Transport {
  let ended = false;
  const end = (code: number) => {
    if (ended) return;
    ended = true;
    handlers.onClose(code);
  };
  let ws: WebSocketLike;
  try {
    ws = new WebSocketImpl(webSocketUrl(baseUrl, '/api/v1/chat/ws'));
  } catch {
    // A malformed URL and the like: reported as a failed socket, after this returns.
    queueMicrotask(() => end(1006));
    return { kind: 'websocket', send() {}, close: () => void (ended = true) };
  }
  ws.onopen = () => {
    if (!ended) ws.send(JSON.stringify({ type: 'auth', token }));
  };
  ws.onmessage = (event: { data: unknown }) => {
    if (ended) return;
    const frame = parseFrame(event.data);
    if (frame) handlers.onFrame(frame);
  };
  ws.onclose = (event: { code: number }) => end(event.code || 1006);
  // A refused upgrade or a network error: onclose follows. (The `ws` package
  // throws on an 'error' event nobody listens to, so this stays set.)
  ws.onerror = () => {};
  return {
    kind: 'websocket',
    send(frame) {
      if (ended) return;
      try {
        ws.send(JSON.stringify(frame));
      } catch {
        // Closing already: onclose reports it.
      }
    },
    close() {
      if (ended) return;
      ended = true;
      try {
        ws.close(1000);
      } catch {
        // Already closed.
      }
    },
  };
}
