// StreamAssembler: snapshot then pieces, out-of-order pieces, duplicates, phases.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamAssembler } from '../dist/index.js';

const base = { stream_id: 's1', conversation_id: 'c', message_id: 'a1' };
const piece = (index, content) => ({ ...base, index, content, is_complete: false });
const one = (sa) => sa.list()[0];

test('pieces in order build the text', () => {
  const sa = new StreamAssembler();
  sa.start({ ...base, reply_to: 'm1', assistant_id: 'default' });
  sa.content(piece(0, 'Hel'));
  sa.content(piece(1, 'lo'));
  assert.equal(one(sa).text, 'Hello');
  assert.equal(one(sa).index, 1);
  assert.equal(one(sa).phase, 'running');
  assert.equal(one(sa).assistant_id, 'default');
});

test('a snapshot then later pieces; pieces it covers are duplicates', () => {
  const sa = new StreamAssembler();
  sa.start(base);
  sa.snapshot({ ...base, content: 'Hello wor', index: 3 });
  assert.equal(sa.content(piece(2, 'XX')), false);
  assert.equal(sa.content(piece(3, 'XX')), false);
  sa.content(piece(4, 'ld'));
  assert.equal(one(sa).text, 'Hello world');
  assert.equal(one(sa).index, 4);
});

test('out-of-order pieces wait for the ones before them', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'a'));
  sa.content(piece(2, 'c'));
  sa.content(piece(3, 'd'));
  assert.equal(one(sa).text, 'a');
  assert.equal(one(sa).index, 0);
  sa.content(piece(1, 'b'));
  assert.equal(one(sa).text, 'abcd');
  assert.equal(one(sa).index, 3);
});

test('a snapshot behind what is applied is ignored; one ahead replaces it', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'a'));
  sa.content(piece(1, 'b'));
  assert.equal(sa.snapshot({ ...base, content: 'a', index: 0 }), false);
  sa.content(piece(5, 'f'));
  sa.snapshot({ ...base, content: 'abcde', index: 4 });
  assert.equal(one(sa).text, 'abcdef');
  assert.equal(one(sa).index, 5);
});

test('duplicate pieces change nothing', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'a'));
  const before = sa.list();
  assert.equal(sa.content(piece(0, 'a')), false);
  assert.equal(sa.list(), before);
  assert.equal(one(sa).text, 'a');
});

test('queued with its position, then running; never queued again once started', () => {
  const sa = new StreamAssembler();
  sa.queued({ ...base, reply_to: 'm1', assistant_id: 'default', position: 2 });
  assert.equal(one(sa).phase, 'queued');
  assert.equal(one(sa).position, 2);
  sa.start(base);
  assert.equal(one(sa).phase, 'running');
  assert.equal(one(sa).position, undefined);
  assert.equal(sa.queued({ ...base, reply_to: 'm1', assistant_id: 'default', position: 1 }), false);
  assert.equal(one(sa).phase, 'running');
});

test('complete removes the answer; late frames do not bring it back', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'a'));
  sa.complete({ ...base, usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }, finish_reason: 'stop' });
  assert.equal(sa.list().length, 0);
  sa.content(piece(1, 'b'));
  assert.equal(sa.list().length, 0);
  assert.equal(sa.error({ stream_id: 's1', conversation_id: 'c', code: 'INTERRUPTED', message: 'gone' }), false);
  assert.equal(sa.list().length, 0);
});

test('an error fails the answer (it stays); a second error is nothing; dismiss removes it', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'partial'));
  sa.error({ stream_id: 's1', conversation_id: 'c', code: 'RATE_LIMITED', message: 'slow down', retry_after_ms: 1500 });
  assert.equal(one(sa).phase, 'failed');
  assert.equal(one(sa).error.code, 'RATE_LIMITED');
  assert.equal(one(sa).error.retryAfterMs, 1500);
  assert.equal(sa.error({ stream_id: 's1', conversation_id: 'c', code: 'INTERRUPTED', message: 'x' }), false);
  assert.equal(one(sa).error.code, 'RATE_LIMITED');
  assert.equal(sa.content(piece(1, 'more')), false);
  assert.equal(sa.dismiss('s1'), true);
  assert.equal(sa.list().length, 0);
});

test('the stored message ends the answer; an error after it still shows why', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'partial'));
  assert.equal(sa.stored('a1'), true);
  assert.equal(sa.list().length, 0);
  sa.error({ stream_id: 's1', conversation_id: 'c', code: 'PROVIDER_ERROR', message: 'upstream' });
  assert.equal(one(sa).phase, 'failed');
  assert.equal(one(sa).text, '');
});

test('after a rejoin, answers the catch-up did not mention are swept', () => {
  const sa = new StreamAssembler();
  sa.content(piece(0, 'a'));
  sa.content({ ...piece(0, 'x'), stream_id: 's2', message_id: 'a2' });
  sa.error({ stream_id: 's3', conversation_id: 'c', code: 'UNAVAILABLE', message: 'queue timeout' });
  assert.equal(sa.markStale(), true);
  sa.snapshot({ ...base, content: 'abc', index: 2 }); // s1 confirmed
  assert.equal(sa.sweepStale(), true);
  assert.deepEqual(sa.list().map((s) => s.stream_id), ['s1', 's3']);
});
