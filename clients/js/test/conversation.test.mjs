/**
 * A conversation between clients on two nodes: sends that cannot succeed,
 * edits, deletions, reactions, typing, presence, read marks, assistant
 * streams (catch-up, cancel) and paging the history.
 */

import assert from 'node:assert/strict';

import { createChat, history, restSend, spyWebSocket, useCluster, waitFor, within } from './harness.mjs';
import { contents, joined, messageEvents, numbered, open, waitPresent } from './helpers.mjs';

const h = useCluster({
  nodes: 2,
  env: {
    CONFAB_LIMITS__SEND_BURST: '100000',
    // The echo assistant takes a while: a word every 150 ms.
    CONFAB_ASSISTANTS__DEFAULT__ECHO_DELAY_MS: '150',
  },
});

h.test('a send that can never succeed fails at once, and the queue goes on', async (scope) => {
  const [n0] = h.cluster.nodes;
  const mine = await createChat(n0.url, 'gina', []);
  const theirs = await createChat(n0.url, 'hank', []);
  const spy = spyWebSocket();
  const G = open(scope, n0.url, 'gina', { WebSocket: spy.WebSocket });
  const conv = await joined(G.client, mine);
  const sendFrames = (convId) => spy.log.sent.filter((f) => f.type === 'send_message' && f.data?.conversation_id === convId);

  // Too long (8000 characters by default): refused before any frame.
  let t0 = Date.now();
  await assert.rejects(conv.send('x'.repeat(8001)), (e) => {
    assert.equal(e.code, 'MESSAGE_TOO_LONG');
    return true;
  });
  assert.ok(Date.now() - t0 < 500, `failed at once (${Date.now() - t0} ms)`);
  assert.equal(sendFrames(mine).length, 0, 'no frame sent');
  // Refused before it became an entry, or shown as failed: never as sending.
  const entry = conv.getSnapshot().messages.find((m) => m.content.length === 8001);
  assert.ok(!entry || (entry.state === 'failed' && entry.error?.code === 'MESSAGE_TOO_LONG'), `not pending: ${entry?.state}`);
  assert.equal(G.client.outbox.length, 0, 'not in the outbox');
  // Characters, not UTF-16 units: 8000 emoji are within the limit.
  const emoji = await within(conv.send('😀'.repeat(8000)), 5000, 'a send of 8000 emoji');
  assert.equal([...emoji.content].length, 8000);

  // Not a participant: FORBIDDEN, not retried, and the next send still goes.
  const other = G.client.conversation(theirs);
  await waitFor(() => other.getSnapshot().error, 'joining a conversation of others to fail', 5000);
  assert.equal(other.getSnapshot().error.code, 'FORBIDDEN');
  assert.equal(other.getSnapshot().joined, false);
  t0 = Date.now();
  const bad = other.send('not my conversation');
  bad.catch(() => {});
  const good = conv.send('still works');
  await assert.rejects(bad, (e) => {
    assert.equal(e.code, 'FORBIDDEN');
    return true;
  });
  assert.ok(Date.now() - t0 < 2000, `failed without retry (${Date.now() - t0} ms)`);
  const ok = await within(good, 5000, 'the good send after it');
  assert.equal(ok.content, 'still works');
  assert.ok(sendFrames(theirs).length <= 1, `sent at most once (${sendFrames(theirs).length})`);
  assert.equal(other.getSnapshot().messages.find((m) => m.content === 'not my conversation')?.state, 'failed');
  assert.equal(G.client.outbox.length, 0);
  assert.deepEqual(await history(n0.url, 'hank', theirs), [], 'nothing stored there');
  assert.deepEqual(contents(await history(n0.url, 'gina', mine)), ['😀'.repeat(8000), 'still works']);
});

h.test('two clients: edits, deletions, reactions, typing, presence, read marks', async (scope) => {
  const [n0, n1] = h.cluster.nodes;
  const chat = await createChat(n0.url, 'alice', ['bob']);
  const A = open(scope, n0.url, 'alice');
  const B = open(scope, n1.url, 'bob');
  const convA = await joined(A.client, chat);
  const convB = await joined(B.client, chat);
  const updatesA = [];
  convA.on('update', (m, change) => updatesA.push({ m, change }));
  const find = (conv, id) => conv.getSnapshot().messages.find((m) => m.id === id);

  // Presence lists both (each sees itself and the other).
  await waitPresent(convA, A.log, ['alice', 'bob'], 'alice');
  await waitPresent(convB, B.log, ['alice', 'bob'], 'bob');

  const m1 = await convB.send('hello alice');
  await waitFor(() => find(convA, m1.id), "alice to get bob's message", 3000);
  assert.equal(convA.getSnapshot().unread, 1, "bob's message is unread for alice");
  const m2 = await convA.send('hello bob');
  await waitFor(() => find(convB, m2.id), "bob to get alice's message", 3000);
  await waitFor(() => convA.getSnapshot().readSeq === m2.seq, () => `her own send to move her read mark (${convA.getSnapshot().readSeq})`, 3000);
  assert.equal(convA.getSnapshot().unread, 0);

  // An edit by the author reaches the other.
  await convB.edit(m1.id, 'hello alice (edited)');
  await waitFor(() => find(convA, m1.id)?.content === 'hello alice (edited)', 'alice to see the edit', 3000);
  assert.ok(find(convA, m1.id).edited_at, 'edited_at set');
  assert.ok(updatesA.some((u) => u.m.id === m1.id && (u.change.kind ?? u.change) === 'edited'), 'an update event for the edit');

  // Reactions, both ways.
  await convA.react(m1.id, '👍');
  await waitFor(() => find(convB, m1.id)?.reactions?.[0]?.emoji === '👍', 'bob to see the reaction', 3000);
  assert.deepEqual(find(convB, m1.id).reactions, [{ emoji: '👍', count: 1, user_ids: ['alice'] }]);
  await convB.react(m1.id, '👍');
  await waitFor(() => find(convA, m1.id)?.reactions?.[0]?.count === 2, 'alice to see the second reaction', 3000);
  await waitFor(() => find(convB, m1.id)?.reactions?.[0]?.count === 2, 'bob to see both reactions', 3000);
  await convA.unreact(m1.id, '👍');
  await waitFor(() => find(convB, m1.id)?.reactions?.[0]?.count === 1, 'bob to see the reaction removed', 3000);
  assert.deepEqual(find(convB, m1.id).reactions, [{ emoji: '👍', count: 1, user_ids: ['bob'] }]);

  // A deletion.
  await convA.delete(m2.id);
  await waitFor(() => find(convB, m2.id)?.deleted === true, 'bob to see the deletion', 3000);
  assert.equal(find(convB, m2.id).content, '');
  await waitFor(() => find(convA, m2.id)?.deleted === true, 'alice to see her deletion', 3000);

  // Both logs agree, entry for entry.
  await waitFor(() => convA.getSnapshot().lastSeq === convB.getSnapshot().lastSeq, 'the same lastSeq', 3000);
  assert.deepEqual(
    convA.getSnapshot().messages.map((m) => [m.id, m.seq, m.content, m.deleted]),
    convB.getSnapshot().messages.map((m) => [m.id, m.seq, m.content, m.deleted]),
  );

  // Typing appears, never for oneself, and goes by itself.
  convA.typing();
  await waitFor(() => convB.getSnapshot().typing.includes('alice'), 'bob to see alice typing', 3000);
  assert.ok(!convA.getSnapshot().typing.includes('alice'), 'one does not see oneself typing');
  const typingSince = Date.now();

  // Read marks: a second client of alice follows her read mark.
  const A2 = open(scope, n1.url, 'alice');
  const convA2 = await joined(A2.client, chat);
  const m3 = await convB.send('are you there?');
  await waitFor(() => find(convA, m3.id) && find(convA2, m3.id), 'both of alice to get it', 3000);
  await waitFor(() => convA.getSnapshot().unread === 1, 'one unread for alice', 3000);
  convA.markRead();
  const mark = convA.getSnapshot().lastSeq;
  await waitFor(() => convB.getSnapshot().readBy.alice === mark, "bob to see alice's read mark", 3000);
  await waitFor(() => convA2.getSnapshot().readSeq === mark, "alice's other client to follow her read mark", 3000);
  await waitFor(() => convA2.getSnapshot().unread === 0, "alice's other client to show nothing unread", 3000);
  assert.equal(convA.getSnapshot().readSeq, mark);
  assert.equal(convA.getSnapshot().unread, 0);
  assert.equal(convB.getSnapshot().unread, 0, "bob's own messages are not unread for him");

  // The typing indicator is gone by itself (alice stopped calling typing()).
  await waitFor(() => !convB.getSnapshot().typing.includes('alice'), 'alice to stop typing', 10000);
  const went = Date.now() - typingSince;
  assert.ok(went >= 1500, `typing shown for a while (${went} ms)`);
});

h.test('assistant streams: the text grows, a late joiner catches up, cancel ends one', async (scope) => {
  const [n0, n1] = h.cluster.nodes;
  const chat = await createChat(n0.url, 'ivy', ['jack']);
  const I = open(scope, n0.url, 'ivy');
  const conv = await joined(I.client, chat);
  const seen = new Map(); // stream id -> texts seen by ivy, in order
  const watch = (c, into) =>
    c.subscribe(() => {
      for (const s of c.getSnapshot().streams) {
        const list = into.get(s.stream_id) ?? [];
        if (list[list.length - 1] !== s.text) list.push(s.text);
        into.set(s.stream_id, list);
      }
    });
  watch(conv, seen);

  const question = numbered('word', 16).join(' ');
  await conv.send(question);
  const sid = await within(conv.ask(), 5000, 'ask()');
  assert.equal(typeof sid, 'string');
  await waitFor(
    () => conv.getSnapshot().streams.find((s) => s.stream_id === sid && s.phase === 'running' && s.text.split(' ').length >= 4),
    'the answer to be a few words in',
    5000,
  );

  // Jack opens the conversation mid-answer, on the other node.
  const J = open(scope, n1.url, 'jack');
  const jackSeen = new Map();
  const convJ = J.client.conversation(chat);
  watch(convJ, jackSeen);

  const answer = await waitFor(
    () => conv.getSnapshot().messages.find((m) => m.message_type === 'assistant'),
    'the stored answer',
    10000,
  );
  assert.equal(answer.content, question, 'echo answers with the question');
  await waitFor(() => conv.getSnapshot().streams.length === 0, 'the stream to leave the list', 3000);
  const texts = seen.get(sid);
  assert.ok(texts.length >= 4, `the text grew piece by piece (${texts.length} steps)`);
  for (const [i, t] of texts.entries()) {
    assert.ok(answer.content.startsWith(t), `step ${i} is a prefix of the answer: ${JSON.stringify(t)}`);
    if (i > 0) assert.ok(t.length > texts[i - 1].length, 'and only grows');
  }
  assert.equal(texts[texts.length - 1], answer.content, 'it ends as the stored message');

  await waitFor(() => convJ.getSnapshot().messages.find((m) => m.id === answer.id), 'jack to get the stored answer', 5000);
  await waitFor(() => convJ.getSnapshot().streams.length === 0, "the stream to leave jack's list", 3000);
  const jackTexts = (jackSeen.get(sid) ?? []).filter((t) => t.length > 0);
  assert.ok(jackTexts.length > 0, 'jack saw the stream');
  // Ivy had four words or more when jack opened the conversation: his first
  // text is the catch-up snapshot, several pieces at once.
  assert.ok(
    jackTexts[0].split(' ').length >= 4 && jackTexts[0].length < answer.content.length,
    `jack joined mid-answer and got the text so far at once: ${JSON.stringify(jackTexts[0])}`,
  );
  for (const t of jackTexts) assert.ok(answer.content.startsWith(t), `jack's text is a prefix of the answer: ${JSON.stringify(t)}`);
  assert.equal(jackTexts[jackTexts.length - 1], answer.content, "jack's catch-up plus the live pieces equal the stored answer");
  assert.equal(convJ.getSnapshot().messages.filter((m) => m.id === answer.id).length, 1);

  // cancel() ends a running answer.
  const long = numbered('more', 40).join(' ');
  const q2 = await conv.send(long);
  const sid2 = await within(conv.ask({ messageId: q2.id }), 5000, 'the second ask()');
  await waitFor(
    () => conv.getSnapshot().streams.find((s) => s.stream_id === sid2 && s.text.length > 0),
    'the second answer to start',
    5000,
  );
  await within(conv.cancel(sid2), 5000, 'cancel()');
  const complete = await waitFor(
    () => I.log.frames.find((f) => f.type === 'stream_complete' && f.data?.stream_id === sid2),
    'stream_complete for the cancelled answer',
    5000,
  );
  assert.equal(complete.data.finish_reason, 'cancelled');
  await waitFor(() => !conv.getSnapshot().streams.some((s) => s.stream_id === sid2), 'the cancelled stream to leave the list', 3000);
  if (complete.data.message) {
    const partial = complete.data.message.content;
    assert.ok(partial.length < long.length && long.startsWith(partial), 'a partial answer');
    await waitFor(() => conv.getSnapshot().messages.some((m) => m.id === complete.data.message.id), 'the partial answer stored', 3000);
  }
});

h.test('loadOlder() pages the history down to the first message', async (scope) => {
  const [n0, n1] = h.cluster.nodes;
  const chat = await createChat(n0.url, 'kate', []);
  const texts = numbered('old', 120);
  for (const t of texts) await restSend(n0.url, 'kate', chat, t);
  const K = open(scope, n1.url, 'kate');
  const conv = K.client.conversation(chat, { history: 50 });
  const events = messageEvents(conv);
  await waitFor(() => conv.getSnapshot().joined && conv.getSnapshot().messages.length === 50, 'the first page of 50', 5000);
  let snap = conv.getSnapshot();
  assert.deepEqual(contents(snap.messages), texts.slice(70));
  assert.equal(snap.hasOlder, true);
  assert.equal(snap.lastSeq, 120);

  let pages = 0;
  for (;;) {
    const more = await within(conv.loadOlder(), 5000, 'loadOlder()');
    pages += 1;
    assert.equal(more, conv.getSnapshot().hasOlder, 'resolves with hasOlder');
    if (!more) break;
    assert.ok(pages < 5, 'ends');
  }
  assert.equal(pages, 2, '50 + 50 + 20');
  snap = conv.getSnapshot();
  assert.deepEqual(contents(snap.messages), texts, 'all 120, in order');
  assert.deepEqual(snap.messages.map((m) => m.seq), texts.map((_, i) => i + 1));
  assert.equal(snap.hasOlder, false);
  assert.equal(events.length, 0, 'history pages fire no message events');
});

h.test('listConversations walks every page and seeds unread; REST errors are ConfabErrors', async (scope) => {
  const [n0, n1] = h.cluster.nodes;
  const O = open(scope, n1.url, 'olga');
  await within(O.client.ready(), 10000, 'olga ready');
  const created = [];
  O.client.on('conversation', (c, reason) => created.push([c.id, reason]));

  // More than one page (50 a page by default).
  const ids = [];
  for (let i = 0; i < 55; i++) ids.push(await createChat(n0.url, i % 2 ? 'olga' : 'pete', i % 2 ? ['pete'] : ['olga']));
  const mine = await within(O.client.createConversation({ title: 'made by the SDK', participant_ids: ['pete'] }), 5000, 'createConversation');
  assert.equal(mine.title, 'made by the SDK');
  assert.deepEqual([...mine.participants].sort(), ['olga', 'pete']);
  ids.push(mine.id);
  // Others' creations reach olga live.
  await waitFor(() => created.some(([id, reason]) => id === ids[0] && reason === 'created'), 'a conversation event for a chat pete made', 5000);

  // Three unread messages in one chat; olga opens it with one message of history.
  const busy = ids[0];
  for (const t of ['one', 'two', 'three']) await restSend(n0.url, 'pete', busy, t);
  const conv = O.client.conversation(busy, { history: 1 });
  await waitFor(() => conv.getSnapshot().joined && conv.getSnapshot().messages.length === 1, 'the one message of history', 5000);
  assert.equal(conv.getSnapshot().hasOlder, true);

  const list = await within(O.client.listConversations(), 5000, 'listConversations');
  assert.deepEqual(list.map((c) => c.id).sort(), [...ids].sort(), 'every conversation, each once');
  assert.equal(list.find((c) => c.id === busy).unread_count, 3);
  await waitFor(() => conv.getSnapshot().unread === 3, () => `unread seeded from the listing (is ${conv.getSnapshot().unread})`, 3000);
  assert.equal(conv.getSnapshot().info?.id, busy);

  await assert.rejects(O.client.rest('GET', '/api/v1/chat/chats/01890000-0000-7000-8000-000000000000'), (e) => {
    assert.equal(e.code, 'NOT_FOUND');
    assert.equal(e.status, 404);
    return true;
  });
});
