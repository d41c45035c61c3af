/**
 * The connection itself: token renewal on a live connection (short tokens,
 * no leeway), tokens refused or expired at connect, the HTTP transport
 * behind a proxy that refuses WebSocket upgrades (and a drain under it),
 * and RATE_LIMITED honoured by the outbox.
 */

import assert from 'node:assert/strict';

import { countByClientMsgId, createChat, history, openRawSocket, spyWebSocket, token, useCluster, waitFor, within } from './harness.mjs';
import { contents, joined, messageEvents, numbered, online, open, waitPresent } from './helpers.mjs';

const h = useCluster({
  nodes: 2,
  env: { CONFAB_AUTH__LEEWAY_SECS: '0', CONFAB_LIMITS__SEND_BURST: '100000' },
});

const LIFETIME_SECS = 4;

h.test('renews a 4 s token on the live connection, past several lifetimes', async (scope) => {
  const [node] = h.cluster.nodes;
  const chat = await createChat(node.url, 'erin', []);
  const spy = spyWebSocket();
  const E = open(scope, node.url, 'erin', { ttlSecs: LIFETIME_SECS, WebSocket: spy.WebSocket });
  const first = await online(E.client);
  const since = E.log.statuses.length - 1;
  const conv = await joined(E.client, chat);
  const t0 = Date.now();
  // Three lifetimes: with leeway 0 the node closes a socket (4003) the
  // moment its token expires, so each must have been renewed in time.
  await waitFor(
    () => Date.now() - t0 >= 3 * LIFETIME_SECS * 1000 + 500 && E.log.tokenCalls >= 4,
    'three lifetimes and three renewals',
    3 * LIFETIME_SECS * 1000 + 8000,
  );
  assert.equal(E.client.status.state, 'online');
  assert.equal(E.client.status.connectionId, first.connectionId, 'the same connection all along');
  const changes = E.log.statuses.slice(since + 1);
  assert.deepEqual(changes.filter((s) => s.state !== 'online'), [], 'never left online');
  assert.equal(spy.log.opened, 1, 'one socket');
  const auths = spy.log.sent.filter((f) => f.type === 'auth');
  assert.ok(auths.length >= 4, `renewed on the socket (${auths.length} auth frames)`);
  assert.equal(new Set(auths.map((f) => f.token)).size, auths.length, 'each renewal a fresh token');
  assert.deepEqual(E.log.errors, [], 'no error events');
  assert.ok(!E.log.frames.some((f) => f.type === 'error'), 'no error frames');

  const m = await within(conv.send('still here'), 5000, 'a send after the renewals');
  assert.ok(m.seq > 0);
  assert.deepEqual(contents(await history(node.url, 'erin', chat)), ['still here']);
});

h.test('an expired token is replaced by a fresh one; a refused one ends in closed', async (scope) => {
  const [node] = h.cluster.nodes;
  // TOKEN_EXPIRED (4003): token() is asked again before the reconnect.
  const X = open(scope, node.url, 'xena', {
    tokenFor: (n) => token('xena', { ttlSecs: n === 1 ? -10 : 3600 }),
  });
  await within(X.client.ready(), 10000, 'ready after an expired first token');
  assert.equal(X.log.tokenCalls, 2);
  assert.equal(X.client.status.state, 'online');
  assert.equal(X.client.userId, 'xena');

  // AUTH_FAILED (4001): token() once more, then closed for good.
  const Y = open(scope, node.url, 'yuri', {
    tokenFor: () => token('yuri', { secret: 'not-the-secret' }),
  });
  await assert.rejects(within(Y.client.ready(), 10000, 'ready() to reject'), (e) => {
    assert.equal(e.code, 'AUTH_FAILED');
    return true;
  });
  await waitFor(() => Y.client.status.state === 'closed', 'closed', 5000);
  assert.equal(Y.log.tokenCalls, 2, 'asked once more, not again and again');
  assert.ok(Y.log.errors.some((e) => e.code === 'AUTH_FAILED'), 'an error event says why');
  assert.ok(!Y.log.statuses.some((s) => s.state === 'online'));
});

h.test('falls back to HTTP behind a proxy refusing WebSockets and chats in real time', async (scope) => {
  const { cluster } = h;
  const proxy = await cluster.proxy({ refuseUpgrades: true, nodes: [cluster.node('n0'), cluster.node('n1')] });
  scope.defer(() => proxy.close());
  await assert.rejects(openRawSocket(proxy.wsUrl), /403/, 'the proxy refuses WebSockets');
  const chat = await createChat(proxy.url, 'carol', ['dave']);

  const spy = spyWebSocket();
  const C = open(scope, proxy.url, 'carol', {
    WebSocket: spy.WebSocket,
    wsFailuresForHttp: 3,
    backoff: { minMs: 20, maxMs: 100 },
  });
  const status = await online(C.client, 15000);
  assert.equal(status.transport, 'http');
  // Three failures, then HTTP. The SDK counts a failure once a /health
  // fetch shows the server answers HTTP (a node that is down is no reason
  // to leave WebSockets), so with a short backoff a socket or two more may
  // be tried while those checks run; never fewer than three.
  const tried = spy.log.opened;
  assert.ok(tried >= 3 && tried <= 6, `three sockets tried, then HTTP (${tried}; statuses ${JSON.stringify(C.log.statuses)})`);
  assert.equal(proxy.stats.upgradesRefused, tried + 1, "ours and the client's");
  assert.ok(!C.log.statuses.some((s) => s.state === 'online' && s.transport !== 'http'));
  assert.ok(status.connectionId && status.nodeId, 'auth_success came over the event stream');

  const D = open(scope, cluster.nodes[1].url, 'dave');
  const convC = await joined(C.client, chat);
  const convD = await joined(D.client, chat);
  const toCarol = messageEvents(convC);
  const toDave = messageEvents(convD);

  // Both ways, in real time (no polling behind the event stream).
  const fromWs = await within(convD.send('from the socket'), 5000, "dave's send");
  await waitFor(() => toCarol.some((m) => m.id === fromWs.id), 'carol (HTTP) to get the message of dave (WebSocket)', 3000);
  const fromHttp = await within(convC.send('from HTTP'), 5000, "carol's send over HTTP");
  await waitFor(() => toDave.some((m) => m.id === fromHttp.id), 'dave to get the message sent over HTTP', 3000);
  // A batch of sends over HTTP, in order.
  const burst = numbered('http', 5);
  const sent = await within(Promise.all(burst.map((t) => convC.send(t))), 5000, 'five sends over HTTP');
  await waitFor(() => toDave.length === 7, 'dave to get all six (and his own)', 3000);
  assert.deepEqual(contents(toDave), ['from the socket', 'from HTTP', ...burst]);
  assert.deepEqual(sent.map((m) => m.seq), toDave.slice(2).map((m) => m.seq));
  await waitFor(() => convC.getSnapshot().lastSeq === sent[4].seq, "carol's lastSeq", 3000);
  assert.deepEqual(contents(convC.getSnapshot().messages), ['from the socket', 'from HTTP', ...burst]);

  // Typing and presence ride the same transport.
  convC.typing();
  await waitFor(() => convD.getSnapshot().typing.includes('carol'), 'dave to see carol typing', 3000);
  await waitPresent(convC, C.log, ['carol', 'dave'], 'carol');

  assert.equal(C.client.status.transport, 'http', 'still on HTTP');
  assert.equal(C.client.status.connectionId, status.connectionId, 'on the same event stream');
  assert.equal(spy.log.opened, tried, 'no socket tried since');
});

h.test('RATE_LIMITED: ten quick sends all end stored exactly once, in order', async (scope) => {
  const node = await h.cluster.addNode('limited', {
    CONFAB_LIMITS__SEND_BURST: '2',
    CONFAB_LIMITS__SEND_RATE_PER_SEC: '5',
  });
  const chat = await createChat(node.url, 'frank', []);
  const F = open(scope, node.url, 'frank');
  const conv = await joined(F.client, chat);
  const texts = numbered('quick', 10);
  const results = await within(Promise.allSettled(texts.map((t) => conv.send(t))), 20000, 'the ten sends');
  assert.deepEqual(results.map((r) => r.status), Array(10).fill('fulfilled'), 'none failed');
  assert.ok(
    F.log.frames.some((f) => f.type === 'error' && f.data?.code === 'RATE_LIMITED'),
    'the node did answer RATE_LIMITED',
  );
  const stored = await history(node.url, 'frank', chat);
  assert.deepEqual(contents(stored), texts, 'stored in order');
  assert.ok([...countByClientMsgId(stored).values()].every((n) => n === 1), 'once each');
  assert.equal(countByClientMsgId(stored).size, 10);
  assert.deepEqual(results.map((r) => r.value.seq), stored.map((m) => m.seq));
  await waitFor(() => conv.getSnapshot().messages.every((m) => m.state === 'sent'), 'every entry shown as sent', 3000);
  assert.deepEqual(contents(conv.getSnapshot().messages), texts);
});

h.test('HTTP transport: a drain moves the stream to another node at once, nothing missed', async (scope) => {
  const { cluster } = h;
  const pair = [cluster.node('n0'), cluster.node('n1')];
  const proxy = await cluster.proxy({ refuseUpgrades: true, nodes: pair });
  scope.defer(() => proxy.close());
  const chat = await createChat(proxy.url, 'lena', ['mona']);
  const L = open(scope, proxy.url, 'lena', { wsFailuresForHttp: 1, backoff: { minMs: 20, maxMs: 100 } });
  const first = await online(L.client, 15000);
  assert.equal(first.transport, 'http');
  const drained = cluster.node(first.nodeId);
  const other = pair.find((n) => n !== drained);
  scope.defer(async () => {
    await drained.kill('SIGKILL');
    await drained.restart();
  });
  const M = open(scope, other.url, 'mona');
  const convL = await joined(L.client, chat);
  const convM = await joined(M.client, chat);
  const toLena = messageEvents(convL);
  const texts = numbered('drain', 20);
  const sent = [];
  for (const [i, text] of texts.entries()) {
    if (i === 5) {
      // From the status events: she may be back before a poll would look.
      const mark = L.log.statuses.length;
      drained.signal('SIGTERM');
      await waitFor(() => L.log.statuses.slice(mark).some((s) => s.state !== 'online'), 'lena to be drained', 5000);
    }
    sent.push(await within(convM.send(text), 5000, `mona's ${text}`));
  }
  const back = await online(L.client, 10000);
  assert.equal(back.transport, 'http');
  assert.equal(back.nodeId, other.id, 'on the node that is left');
  const wasOnline = L.log.statuses.findIndex((s) => s.state === 'online');
  const lost = L.log.statuses.find((s, i) => i > wasOnline && s.state === 'reconnecting');
  assert.equal(lost.lastError?.closeCode, 1012, `the stream's last error said 1012: ${JSON.stringify(lost.lastError)}`);
  await waitFor(() => convL.getSnapshot().lastSeq === sent[sent.length - 1].seq, "lena's lastSeq", 10000);
  assert.deepEqual(contents(toLena), texts, 'every message once, in order');
  assert.deepEqual(contents(convL.getSnapshot().messages), texts);
});
