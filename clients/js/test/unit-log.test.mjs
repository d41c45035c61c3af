// ConversationLog: seq ordering, gaps, duplicates, updates, deletion, pages, unread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConversationLog } from '../dist/index.js';

const msg = (seq, fields = {}) => ({
  id: `m${seq}`,
  conversation_id: 'c',
  seq,
  sender_id: 'bob',
  message_type: 'user',
  content: `text ${seq}`,
  created_at: '2026-01-01T00:00:00Z',
  attachments: [],
  reactions: [],
  deleted: false,
  ...fields,
});
const edit = (by = 'bob') => ({ kind: 'edited', by });
const seqs = (log) => log.messages().map((m) => m.seq);
const types = (events) => events.map((e) => (e.type === 'message' ? `m${e.message.seq}` : `u${e.seq}`));

function based(lastSeq = 0, me = 'alice') {
  const log = new ConversationLog('c', me);
  log.setBase(lastSeq);
  return log;
}

test('entries apply in seq order, each once', () => {
  const log = based(0);
  assert.deepEqual(types(log.applyMessage(msg(1))), ['m1']);
  assert.deepEqual(types(log.applyMessage(msg(2))), ['m2']);
  assert.equal(log.lastSeq, 2);
  assert.deepEqual(seqs(log), [1, 2]);
});

test('a duplicate (seq <= lastSeq) is dropped', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  log.applyMessage(msg(2));
  assert.deepEqual(log.applyMessage(msg(2)), []);
  assert.deepEqual(log.applyMessage(msg(1, { content: 'replayed' })), []);
  assert.equal(log.get('m1').content, 'text 1');
  assert.deepEqual(seqs(log), [1, 2]);
});

test('a gap is held until it fills, then everything applies in order', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  assert.deepEqual(log.applyMessage(msg(3)), []);
  assert.deepEqual(log.applyMessage(msg(4)), []);
  assert.equal(log.lastSeq, 1);
  assert.equal(log.knownSeq, 4);
  assert.equal(log.hasGap, true);
  assert.deepEqual(seqs(log), [1]);
  assert.deepEqual(types(log.applyMessage(msg(2))), ['m2', 'm3', 'm4']);
  assert.equal(log.lastSeq, 4);
  assert.equal(log.hasGap, false);
});

test('a replay after a held entry drops the held duplicate', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  log.applyMessage(msg(3)); // held
  // the rejoin with since_seq 1 replays 2 and 3
  assert.deepEqual(types(log.applyMessage(msg(2))), ['m2', 'm3']);
  assert.deepEqual(log.applyMessage(msg(3)), []);
  assert.equal(log.lastSeq, 3);
});

test('entries before the first join wait for the base', () => {
  const log = new ConversationLog('c', 'alice');
  assert.deepEqual(log.applyMessage(msg(11)), []);
  assert.equal(log.hasGap, false); // nothing to fetch before the base
  assert.deepEqual(types(log.setBase(10)), ['m11']);
  assert.equal(log.lastSeq, 11);
  assert.equal(log.windowStart, 10);
  assert.equal(log.hasOlder, true);
});

test('an update replaces the message state and fires once, in order', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  const events = log.applyUpdate(2, edit(), msg(1, { content: 'edited', edited_at: '2026-01-01T00:01:00Z' }));
  assert.deepEqual(types(events), ['u2']);
  assert.equal(events[0].change.kind, 'edited');
  assert.equal(log.get('m1').content, 'edited');
  assert.deepEqual(log.applyUpdate(2, edit(), msg(1, { content: 'again' })), []);
  assert.equal(log.get('m1').content, 'edited');
});

test('an update held behind a gap applies after the entries before it', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  log.applyUpdate(3, edit(), msg(2, { content: 'two edited' }));
  assert.equal(log.get('m2'), undefined);
  assert.deepEqual(types(log.applyMessage(msg(2))), ['m2', 'u3']);
  assert.equal(log.get('m2').content, 'two edited');
});

test('a deletion is final: an older state never brings the message back', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  log.applyUpdate(2, { kind: 'deleted', by: 'bob' }, msg(1, { content: '', deleted: true }));
  assert.equal(log.get('m1').deleted, true);
  // a history page read before the deletion, merged late
  log.mergePage([msg(1)], false, 5);
  assert.equal(log.get('m1').deleted, true);
  assert.equal(log.get('m1').content, '');
  // a later reaction state that is not deleted cannot undo it either
  log.store(msg(1), 99);
  assert.equal(log.get('m1').deleted, true);
});

test('a history page merges below the window; updates applied meanwhile are kept over it', () => {
  const log = based(10); // joined at 10: nothing loaded
  assert.equal(log.hasOlder, true);
  const asOf = log.lastSeq; // the page is asked for now
  // meanwhile: an edit of message 9 (not loaded yet) arrives live
  log.applyUpdate(11, edit(), msg(9, { content: 'nine edited' }));
  assert.equal(log.lastSeq, 11);
  assert.deepEqual(seqs(log), []); // below the window: not listed
  // the page was read before the edit: it has the old text
  log.mergePage([msg(8), msg(9)], true, asOf);
  assert.deepEqual(seqs(log), [8, 9]);
  assert.equal(log.get('m9').content, 'nine edited');
  assert.equal(log.windowStart, 7);
  assert.equal(log.hasOlder, true);
  log.mergePage([msg(1), msg(7)], false, log.lastSeq);
  assert.deepEqual(seqs(log), [1, 7, 8, 9]);
  assert.equal(log.hasOlder, false);
});

test('a page newer than a held state replaces it', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  log.applyUpdate(2, edit(), msg(1, { content: 'v2' }));
  log.mergePage([msg(1, { content: 'v3' })], false, 3);
  assert.equal(log.get('m1').content, 'v3');
});

test('my own message moves my read mark; read receipts move marks, never back', () => {
  const log = based(0, 'alice');
  log.applyMessage(msg(1));
  log.applyMessage(msg(2, { sender_id: 'alice' }));
  assert.equal(log.readSeq, 2);
  assert.equal(log.readReceipt('alice', 1), false);
  assert.equal(log.readReceipt('bob', 2), true);
  assert.equal(log.readReceipt('bob', 1), false);
  assert.equal(log.readBy.get('bob'), 2);
  assert.equal(log.markRead(2), false);
  assert.equal(log.markRead(3), true);
});

test('unread counts loaded messages from others, not deleted, above the mark', () => {
  const log = based(0, 'alice');
  log.applyMessage(msg(1));
  log.applyMessage(msg(2));
  log.applyMessage(msg(3, { sender_id: 'alice' })); // moves my mark to 3
  log.applyMessage(msg(4));
  log.applyMessage(msg(5));
  assert.equal(log.unread, 2);
  log.applyUpdate(6, { kind: 'deleted', by: 'bob' }, msg(5, { deleted: true, content: '' }));
  assert.equal(log.unread, 1);
  log.readReceipt('alice', 6);
  assert.equal(log.unread, 0);
});

test("unread uses the server's count while the window does not reach the mark", () => {
  const log = new ConversationLog('c', 'alice');
  log.seed({ id: 'c', owner_id: 'bob', participants: [], archived: false, last_seq: 40, last_read_seq: 5, unread_count: 30, created_at: '', updated_at: '' });
  log.setBase(40); // window starts at 40: messages 6..40 are not loaded
  log.applyMessage(msg(41));
  log.applyMessage(msg(42, { sender_id: 'alice' })); // my send: the mark moves to 42
  assert.equal(log.unread, 0);
  const other = new ConversationLog('c', 'alice');
  other.seed({ id: 'c', owner_id: 'bob', participants: [], archived: false, last_seq: 40, last_read_seq: 5, unread_count: 30, created_at: '', updated_at: '' });
  other.setBase(40);
  other.applyMessage(msg(41));
  assert.equal(other.unread, 31);
  // once the window reaches the mark, counted locally
  other.mergePage([msg(5), msg(6), msg(40)], false, 41);
  assert.equal(other.unread, 3);
});

test('findByClientMsgId finds my stored message by its idempotency key', () => {
  const log = based(0, 'alice');
  log.applyMessage(msg(1, { sender_id: 'alice', client_msg_id: 'k1' }));
  assert.equal(log.findByClientMsgId('alice', 'k1').id, 'm1');
  assert.equal(log.findByClientMsgId('bob', 'k1'), undefined);
});

test('messages() is the same array until something changes', () => {
  const log = based(0);
  log.applyMessage(msg(1));
  const a = log.messages();
  assert.equal(log.messages(), a);
  log.applyMessage(msg(2));
  assert.notEqual(log.messages(), a);
});
