/**
 * Losing the connection: a node killed (SIGKILL), a node draining (SIGTERM,
 * close 1012), the network cut under sends in flight, and a client
 * restarted with a persisted outbox. Two nodes behind the test balancer;
 * the conversation must come out whole: every message once, in order.
 */

import assert from 'node:assert/strict';
import path from 'node:path';

import { FileOutbox, countByClientMsgId, createChat, getChat, history, spyWebSocket, useCluster, waitFor, within } from './harness.mjs';
import { contents, duplicatesBy, joined, messageEvents, numbered, online, open } from './helpers.mjs';

const h = useCluster({ nodes: 2, drainSecs: 1, env: { CONFAB_LIMITS__SEND_BURST: '100000' } });

/**
 * Alice behind the balancer, Bob straight on the other node; Bob sends a
 * numbered series of 30; `interrupt(aliceNode, A, proxy)` runs after the
 * 10th (Alice's node goes away), 11-20 are sent while she is away (or
 * coming back), with an edit, a deletion and a reaction among them, 21-30
 * once she is back on the other node. Her `message` and `update` events and
 * her `messages` must hold every entry once, in order, and her lastSeq the
 * server's.
 */
async function seriesAcrossAnInterruption(scope, interrupt) {
  const { cluster } = h;
  const proxy = await cluster.proxy();
  scope.defer(() => proxy.close());
  const chat = await createChat(cluster.nodes[0].url, 'bob', ['alice']);

  const A = open(scope, proxy.url, 'alice');
  await within(A.client.ready(), 10000, 'alice ready');
  const aliceNode = cluster.node(A.client.status.nodeId);
  const otherNode = cluster.nodes.find((n) => n !== aliceNode);
  // Her node runs again for the next test, whatever happens in this one.
  scope.defer(async () => {
    await aliceNode.kill('SIGKILL');
    await aliceNode.restart();
  });
  const B = open(scope, otherNode.url, 'bob');
  await within(B.client.ready(), 10000, 'bob ready');
  assert.equal(B.client.status.nodeId, otherNode.id, 'bob is on the other node');

  const convA = await joined(A.client, chat);
  const events = messageEvents(convA);
  const updates = [];
  convA.on('update', (m, change) => updates.push([m.seq, change.kind]));
  const convB = await joined(B.client, chat);

  const texts = numbered('msg', 30);
  const stored = [];
  for (const [i, text] of texts.entries()) {
    if (i === 10) {
      const mark = A.log.statuses.length;
      await interrupt(aliceNode, A, proxy);
      assert.ok(A.log.statuses.slice(mark).some((s) => s.state !== 'online'), 'alice noticed her node went away');
    }
    if (i === 15) {
      // Changes while she is away (or coming back): log entries of their own.
      await within(convB.edit(stored[1].id, 'msg 2 (edited)'), 5000, 'the edit');
      await within(convB.delete(stored[2].id), 5000, 'the deletion');
      await within(convB.react(stored[3].id, '🎉'), 5000, 'the reaction');
    }
    if (i === 20) {
      proxy.resume();
      await online(A.client, 15000);
      assert.equal(A.client.status.nodeId, otherNode.id, 'alice is back, on the node that is left');
    }
    stored.push(await within(convB.send(text), 10000, `bob's send of ${text}`));
  }

  const server = await getChat(otherNode.url, 'bob', chat);
  assert.equal(server.last_seq, stored[stored.length - 1].seq);
  await waitFor(() => convA.getSnapshot().lastSeq === server.last_seq, `alice's lastSeq to reach ${server.last_seq}`, 10000);
  // A duplicate delivered late would show here.
  assert.deepEqual(events.map((m) => m.seq), stored.map((m) => m.seq), "alice's message events: each of Bob's messages once, in order");
  assert.deepEqual(
    updates,
    [
      [stored[1].seq, 'edited'],
      [stored[2].seq, 'deleted'],
      [stored[3].seq, 'reaction_added'],
    ],
    'each change once, in order',
  );
  const snap = convA.getSnapshot();
  const expected = texts.slice();
  expected[1] = 'msg 2 (edited)';
  expected[2] = '';
  assert.deepEqual(contents(snap.messages), expected, "alice's messages list, changes applied");
  assert.equal(snap.messages[2].deleted, true);
  assert.deepEqual(snap.messages[3].reactions, [{ emoji: '🎉', count: 1, user_ids: ['bob'] }]);
  assert.deepEqual(snap.messages.map((m) => m.seq), stored.map((m) => m.seq));
  assert.deepEqual(duplicatesBy(snap.messages, (m) => m.key), []);
  assert.ok(snap.messages.every((m) => m.state === 'sent'), 'all stored');
  assert.equal(snap.lastSeq, server.last_seq);
  assert.ok(snap.joined, 'joined again after the reconnect');
  assert.ok(A.log.statuses.some((s) => s.state === 'reconnecting'), 'alice went through reconnecting');
  return { A, aliceNode, otherNode };
}

h.test('reconnects after a SIGKILL of its node and misses nothing', async (scope) => {
  await seriesAcrossAnInterruption(scope, async (node, A, proxy) => {
    // Kept offline while Bob sends 11-20: she must get them by since_seq.
    proxy.pause();
    await node.kill('SIGKILL');
    await waitFor(() => A.client.status.state === 'reconnecting', 'alice to notice the kill', 5000);
  });
});

h.test('reconnects at once after a drain (close 1012) and misses nothing', async (scope) => {
  const { A, aliceNode } = await seriesAcrossAnInterruption(scope, async (node, A) => {
    // From the status events: she may be back before a poll would look.
    const mark = A.log.statuses.length;
    node.signal('SIGTERM');
    await waitFor(() => A.log.statuses.slice(mark).some((s) => s.state !== 'online'), 'alice to be drained', 5000);
  });
  const { statuses, statusAt } = A.log;
  const wasOnline = statuses.findIndex((s) => s.state === 'online');
  const lost = statuses.findIndex((s, i) => i > wasOnline && s.state === 'reconnecting');
  assert.equal(statuses[lost].lastError?.closeCode, 1012, `the drain's close code in lastError: ${JSON.stringify(statuses[lost].lastError)}`);
  const back = statuses.findIndex((s, i) => i > lost && s.state === 'online');
  assert.ok(back > lost, 'online again');
  // At once: no backoff after a drain (our backoff here is 50..400 ms, the
  // jitter at most 50 ms; a first try that lands on the draining node and is
  // refused costs one short backoff).
  const took = statusAt[back] - statusAt[lost];
  assert.ok(took < 3000, `back online ${took} ms after the drain`);
  // The drained node ends by itself (drain_secs 1), cleanly.
  await aliceNode.kill(null, 10000);
  assert.equal(aliceNode.child.exitCode, 0, `the drained node exited by itself: ${aliceNode.child.signalCode ?? ''}`);
});

h.test('outbox: sends cut in flight or made offline are stored exactly once, in order', async (scope) => {
  const { cluster } = h;
  const proxy = await cluster.proxy();
  scope.defer(() => proxy.close());
  const chat = await createChat(cluster.nodes[0].url, 'alice', []);
  const spy = spyWebSocket();
  const A = open(scope, proxy.url, 'alice', { WebSocket: spy.WebSocket });
  const conv = await joined(A.client, chat);
  const promises = [];
  const send = (text) => {
    const p = conv.send(text);
    promises.push(p);
    p.catch(() => {});
    return p;
  };

  // 1. A send that leaves the client and dies on the way up: the network is
  // cut the moment its frame is handed to the socket (the proxy never reads
  // it), and stays down.
  spy.log.onSend = (frame) => {
    if (frame.type === 'send_message' && frame.data?.content === 'up 1') {
      spy.log.onSend = null;
      proxy.pause();
      proxy.cutAll();
    }
  };
  send('up 1');
  send('up 2');
  await waitFor(() => A.client.status.state === 'reconnecting', 'alice to be reconnecting after the cut', 5000);
  assert.ok(spy.log.sent.some((f) => f.type === 'send_message' && f.data?.content === 'up 1'), "'up 1' was written to the socket");
  send('offline 3');
  send('offline 4');
  await waitFor(() => A.client.outbox.length === 4, 'four entries in the outbox', 5000);
  assert.deepEqual(contents(A.client.outbox), ['up 1', 'up 2', 'offline 3', 'offline 4']);
  let snap = conv.getSnapshot();
  assert.deepEqual(contents(snap.messages), ['up 1', 'up 2', 'offline 3', 'offline 4']);
  assert.ok(snap.messages.every((m) => m.state === 'sending' && m.seq === 0 && m.id === ''), 'shown at once as sending');
  assert.deepEqual(await history(cluster.nodes[0].url, 'alice', chat), [], 'nothing reached the server');

  proxy.resume();
  await within(Promise.all(promises), 15000, 'the first four sends');

  // 2. A send stored by the server whose answer dies on the way down: the
  // network is cut at the first frame of its ack or echo, and stays down
  // while two more are written.
  const cut = proxy.cutOnDownstream(/"(ack|message_received)"/, { pause: true });
  send('down 5');
  send('down 6');
  await within(cut, 5000, 'the cut under the ack');
  await waitFor(() => A.client.status.state === 'reconnecting', 'alice to be reconnecting after the second cut', 5000);
  const storedMeanwhile = await history(cluster.nodes[0].url, 'alice', chat);
  assert.deepEqual(contents(storedMeanwhile).slice(-1), ['down 5'], 'the server stored the send whose answer was cut');
  const down5 = conv.getSnapshot().messages.find((m) => m.content === 'down 5');
  assert.equal(down5.state, 'sending', 'the client never heard of it');
  send('offline 7');
  await waitFor(() => A.client.outbox.length === 3, 'three entries in the outbox', 5000);
  proxy.resume();
  const results = await within(Promise.all(promises), 15000, 'every send');

  const written = ['up 1', 'up 2', 'offline 3', 'offline 4', 'down 5', 'down 6', 'offline 7'];
  const stored = await history(cluster.nodes[0].url, 'alice', chat);
  assert.deepEqual(contents(stored), written, 'stored once each, in the order written');
  const counts = countByClientMsgId(stored);
  assert.equal(counts.size, written.length, 'every message has its own client_msg_id');
  assert.ok([...counts.values()].every((n) => n === 1));
  assert.deepEqual(results.map((m) => m.seq), stored.map((m) => m.seq), 'each promise resolved with the stored message');
  assert.deepEqual(results.map((m) => m.id), stored.map((m) => m.id));

  await waitFor(() => conv.getSnapshot().messages.every((m) => m.state === 'sent'), 'every entry shown as sent', 5000);
  snap = conv.getSnapshot();
  assert.deepEqual(contents(snap.messages), written);
  assert.deepEqual(snap.messages.map((m) => m.key), stored.map((m) => m.client_msg_id), 'keys stay the client_msg_ids');
  assert.equal(A.client.outbox.length, 0);
  assert.equal(snap.lastSeq, stored[stored.length - 1].seq);
});

h.test('outbox: a client restarted with a persisted outbox sends the leftovers once, in order', async (scope) => {
  const { cluster } = h;
  const proxy = await cluster.proxy();
  scope.defer(() => proxy.close());
  const chat = await createChat(cluster.nodes[0].url, 'alice', []);
  const store = new FileOutbox(path.join(cluster.dir, 'outbox.json'));
  const written = ['first', 'second', 'third'];

  // Client 1 cannot reach the server: it writes three, then is closed.
  proxy.pause();
  const one = open(scope, proxy.url, 'alice', { outbox: store });
  const conv1 = one.client.conversation(chat);
  for (const text of written) conv1.send(text).catch(() => {});
  await waitFor(() => store.peek('alice').length === 3, 'the three in the outbox file', 5000);
  const pending = store.peek('alice');
  assert.deepEqual(contents(pending), written);
  assert.ok(pending.every((m) => m.conversation_id === chat && m.client_msg_id));
  assert.deepEqual(contents(conv1.getSnapshot().messages), written);
  assert.notEqual(one.client.status.state, 'online');
  one.client.close();
  assert.equal(one.client.status.state, 'closed');
  assert.equal(store.peek('alice').length, 3, 'close() leaves the outbox in its store');

  // Client 2, same store, still offline: the leftovers show as sending.
  const two = open(scope, proxy.url, 'alice', { outbox: store });
  const conv2 = two.client.conversation(chat);
  await waitFor(() => conv2.getSnapshot().messages.length === 3, "the leftovers in client 2's conversation", 5000);
  assert.deepEqual(contents(conv2.getSnapshot().messages), written);
  assert.ok(conv2.getSnapshot().messages.every((m) => m.state === 'sending'));
  assert.deepEqual(conv2.getSnapshot().messages.map((m) => m.key), pending.map((m) => m.client_msg_id));
  assert.deepEqual(await history(cluster.nodes[0].url, 'alice', chat), [], 'nothing stored yet');

  proxy.resume();
  await online(two.client, 15000);
  await waitFor(async () => (await history(cluster.nodes[0].url, 'alice', chat)).length >= 3, 'the three stored', 10000);
  await waitFor(() => conv2.getSnapshot().messages.every((m) => m.state === 'sent'), 'the three shown as sent', 5000);
  await waitFor(() => store.peek('alice').length === 0, 'the outbox file emptied', 5000);
  const stored = await history(cluster.nodes[0].url, 'alice', chat);
  assert.deepEqual(contents(stored), written, 'stored once each, in order');
  assert.deepEqual(stored.map((m) => m.client_msg_id), pending.map((m) => m.client_msg_id), 'with the client_msg_ids client 1 gave them');
  const snap = conv2.getSnapshot();
  assert.deepEqual(contents(snap.messages), written);
  assert.deepEqual(snap.messages.map((m) => m.seq), stored.map((m) => m.seq));
  assert.equal(two.client.outbox.length, 0);
});
