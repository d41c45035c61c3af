/**
 * Small helpers over the SDK's public API for the integration tests: a
 * client whose statuses, errors, frames and token calls are recorded, and
 * waits on a conversation's snapshot. No side effects on import.
 */

import { connect } from '../dist/index.js';
import { token, waitFor, WebSocket } from './harness.mjs';

/**
 * Connects as `user` to `url` (a node or a proxy), closed when the test's
 * `scope` ends. Options are the SDK's, plus `ttlSecs` / `name` for the
 * tokens, or `tokenFor(n)` returning the token of the n-th call. Defaults: `ws`'s WebSocket and a short backoff (50..400 ms) so
 * reconnects are quick. Returns `{client, log}`; `log` holds `statuses`
 * (the first one included) and when each came (`statusAt`), `errors`,
 * `frames` and `tokenCalls`.
 */
export function open(scope, url, user, options = {}) {
  const { ttlSecs, name, tokenFor, ...rest } = options;
  const log = { statuses: [], statusAt: [], errors: [], frames: [], tokenCalls: 0 };
  const client = connect({
    url,
    token: async () => {
      log.tokenCalls += 1;
      return tokenFor ? tokenFor(log.tokenCalls) : token(user, { ttlSecs, name });
    },
    WebSocket,
    backoff: { minMs: 50, maxMs: 400 },
    ...rest,
  });
  scope.track(client);
  const record = (s) => {
    log.statuses.push(s);
    log.statusAt.push(Date.now());
  };
  record(client.status);
  client.on('status', record);
  client.on('error', (e) => log.errors.push(e));
  client.on('frame', (f) => log.frames.push(f));
  return { client, log };
}

/** Waits until the client is online (and returns its status). */
export function online(client, ms = 10000) {
  return waitFor(() => client.status.state === 'online' && client.status, `${client.userId ?? 'the client'} to be online`, ms);
}

/** Opens a conversation and waits until it is joined (and its first page loaded). */
export async function joined(client, id, options) {
  const conv = client.conversation(id, options);
  await waitFor(() => conv.getSnapshot().joined, `${client.userId ?? 'the client'} to join ${id}`, 10000);
  return conv;
}

/** Collects the conversation's `message` events. */
export function messageEvents(conv) {
  const got = [];
  conv.on('message', (m) => got.push(m));
  return got;
}

/** Contents of a list of messages. */
export function contents(list) {
  return list.map((m) => m.content);
}

/** `n` numbered strings: `${prefix} 1` ... */
export function numbered(prefix, n, from = 1) {
  return Array.from({ length: n }, (_, i) => `${prefix} ${i + from}`);
}

/** The keys (by `key`) that occur more than once in `list`. */
export function duplicatesBy(list, key) {
  const seen = new Set();
  const dups = [];
  for (const x of list) {
    const k = key(x);
    if (seen.has(k)) dups.push(k);
    seen.add(k);
  }
  return dups;
}

/**
 * Waits until `conv` (of the client whose `log` is given) lists exactly
 * `users` as present; on a timeout, says what it saw and which presence
 * frames came.
 */
export function waitPresent(conv, log, users, who, ms = 8000) {
  const want = [...users].sort().join();
  return waitFor(
    () => [...conv.getSnapshot().present].sort().join() === want,
    () =>
      `${who} to see ${want} present (sees ${JSON.stringify(conv.getSnapshot().present)}; presence frames: ${JSON.stringify(
        log.frames.filter((f) => f.type.startsWith('presence') && f.data?.conversation_id === conv.id),
      )})`,
    ms,
  );
}
