// The outbox flusher: order, non-retryable failures, RATE_LIMITED waits, disconnects, the store.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfabError, Outbox, memoryOutbox } from '../dist/index.js';

const pending = (n) => ({ client_msg_id: `k${n}`, conversation_id: 'c', content: `m${n}`, created_at: '2026-01-01T00:00:00Z' });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(fn, ms = 2000) {
  const start = Date.now();
  while (!fn()) {
    if (Date.now() - start > ms) throw new Error('timed out');
    await sleep(5);
  }
}

/** An outbox over a scripted send: `answers[client_msg_id]` is a list of errors to throw first. */
function harness({ answers = {}, online = true, store = memoryOutbox() } = {}) {
  const h = { calls: [], acked: [], failed: [], online, store };
  let seq = 0;
  h.outbox = new Outbox({
    store,
    send: async (m) => {
      h.calls.push({ key: m.client_msg_id, at: Date.now() });
      await sleep(1);
      const next = answers[m.client_msg_id]?.shift();
      if (next) throw next;
      return { message_id: `id-${m.client_msg_id}`, seq: ++seq, duplicate: false };
    },
    canSend: () => h.online,
    onAcked: (m, ack) => h.acked.push([m.client_msg_id, ack.seq]),
    onFailed: (m, e) => h.failed.push([m.client_msg_id, e.code]),
    onChange: () => {},
    backoffMinMs: 1,
    backoffMaxMs: 5,
  });
  return h;
}

test('sends one at a time in the order written, and not before open()', async () => {
  const h = harness();
  h.outbox.add(pending(1));
  h.outbox.add(pending(2));
  h.outbox.add(pending(3));
  await sleep(20);
  assert.equal(h.calls.length, 0);
  await h.outbox.open('alice');
  await until(() => h.acked.length === 3);
  assert.deepEqual(h.acked, [['k1', 1], ['k2', 2], ['k3', 3]]);
  assert.deepEqual(h.calls.map((c) => c.key), ['k1', 'k2', 'k3']);
  assert.equal(h.outbox.pending.length, 0);
  assert.deepEqual(await h.store.load('alice'), []);
});

test('a non-retryable error fails that entry at once; the rest go on', async () => {
  const h = harness({ answers: { k2: [new ConfabError('FORBIDDEN', 'archived')] } });
  await h.outbox.open('alice');
  for (const n of [1, 2, 3]) h.outbox.add(pending(n));
  await until(() => h.acked.length === 2);
  assert.deepEqual(h.failed, [['k2', 'FORBIDDEN']]);
  assert.deepEqual(h.acked.map((a) => a[0]), ['k1', 'k3']);
  assert.equal(h.calls.filter((c) => c.key === 'k2').length, 1);
  const [entry] = h.outbox.entriesOf('c');
  assert.equal(entry.state, 'failed');
  assert.equal(entry.error.code, 'FORBIDDEN');
  assert.deepEqual(h.outbox.pending, []);
  assert.deepEqual(await h.store.load('alice'), []); // failed entries leave the store
});

test('each non-retryable code fails at once', async () => {
  for (const code of ['MESSAGE_TOO_LONG', 'NOT_FOUND', 'INVALID_FRAME', 'UNKNOWN_TYPE', 'AUTH_FAILED']) {
    const h = harness({ answers: { k1: [new ConfabError(code, code)] } });
    await h.outbox.open('alice');
    h.outbox.add(pending(1));
    await until(() => h.failed.length === 1);
    assert.equal(h.calls.length, 1, code);
  }
});

test('RATE_LIMITED waits retry_after_ms, then sends the same entry again, before the next', async () => {
  const h = harness({ answers: { k1: [new ConfabError('RATE_LIMITED', 'slow', { retryAfterMs: 120 })] } });
  await h.outbox.open('alice');
  h.outbox.add(pending(1));
  h.outbox.add(pending(2));
  await until(() => h.acked.length === 2);
  assert.deepEqual(h.calls.map((c) => c.key), ['k1', 'k1', 'k2']);
  assert.ok(h.calls[1].at - h.calls[0].at >= 115, `waited ${h.calls[1].at - h.calls[0].at} ms`);
  assert.deepEqual(h.failed, []);
});

test('UNAVAILABLE and timeouts are tried again after a backoff', async () => {
  const h = harness({
    answers: { k1: [new ConfabError('UNAVAILABLE', 'store down'), new ConfabError('TIMEOUT', 'no answer')] },
  });
  await h.outbox.open('alice');
  h.outbox.add(pending(1));
  await until(() => h.acked.length === 1);
  assert.deepEqual(h.calls.map((c) => c.key), ['k1', 'k1', 'k1']);
});

test('a disconnect stops the flusher; flush() once online sends the same entry again', async () => {
  const h = harness({ answers: { k1: [new ConfabError('DISCONNECTED', 'lost')] } });
  await h.outbox.open('alice');
  h.online = true;
  h.outbox.add(pending(1));
  h.outbox.add(pending(2));
  await until(() => h.calls.length === 1);
  h.online = false;
  await sleep(30);
  assert.equal(h.calls.length, 1);
  assert.deepEqual(h.outbox.pending.map((m) => m.client_msg_id), ['k1', 'k2']);
  h.online = true;
  h.outbox.flush();
  await until(() => h.acked.length === 2);
  assert.deepEqual(h.calls.map((c) => c.key), ['k1', 'k1', 'k2']);
});

test('leftovers in the store are sent first, after a restart, with the same client_msg_id', async () => {
  const store = memoryOutbox();
  await store.put('alice', pending(1));
  await store.put('alice', pending(2));
  const h = harness({ store });
  h.outbox.add(pending(3)); // written before the store was read
  await h.outbox.open('alice');
  await until(() => h.acked.length === 3);
  assert.deepEqual(h.acked.map((a) => a[0]), ['k1', 'k2', 'k3']);
  assert.deepEqual(await store.load('alice'), []);
});

test('retry sends a failed entry again; discard drops it', async () => {
  const h = harness({ answers: { k1: [new ConfabError('FORBIDDEN', 'no')], k2: [new ConfabError('NOT_FOUND', 'no')] } });
  await h.outbox.open('alice');
  h.outbox.add(pending(1));
  h.outbox.add(pending(2));
  await until(() => h.failed.length === 2);
  assert.equal(h.outbox.retry('k1'), true);
  await until(() => h.acked.length === 1);
  assert.deepEqual(h.acked.map((a) => a[0]), ['k1']);
  assert.equal(h.outbox.retry('k9'), false);
  assert.equal(h.outbox.discard('k2'), true);
  assert.deepEqual(h.outbox.entriesOf('c'), []);
});

test('nothing is sent while offline; the store keeps the entries per user', async () => {
  const store = memoryOutbox();
  const h = harness({ online: false, store });
  await h.outbox.open('alice');
  h.outbox.add(pending(1));
  await sleep(20);
  assert.equal(h.calls.length, 0);
  assert.deepEqual((await store.load('alice')).map((m) => m.client_msg_id), ['k1']);
  assert.deepEqual(await store.load('bob'), []);
  h.outbox.close();
});
