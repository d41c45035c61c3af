/**
 * Message search (`client.search`) against real nodes: a word found by a
 * prefix typed without its accent, paging, the conversation filter, nothing
 * from a conversation of others, nothing once deleted, and an empty query
 * refused as a ConfabError.
 */

import assert from 'node:assert/strict';

import { createChat, restSend, useCluster, waitFor, within } from './harness.mjs';
import { joined, open } from './helpers.mjs';

const h = useCluster({ nodes: 2, env: { CONFAB_LIMITS__SEND_BURST: '100000' } });

h.test('search: accent-insensitive prefixes, only my conversations, never deleted messages', async (scope) => {
  const [n0, n1] = h.cluster.nodes;
  const ours = await createChat(n0.url, 'alice', ['bob']);
  const theirs = await createChat(n0.url, 'carol', ['dave']);
  const A = open(scope, n0.url, 'alice');
  const B = open(scope, n1.url, 'bob');
  const convA = await joined(A.client, ours);

  // Alice writes an accented word; a chat without Bob holds the same word.
  const found = await within(convA.send('Rendez-vous au Crémeux Éclairage demain'), 5000, 'alice sends');
  const other = await restSend(n0.url, 'carol', theirs, 'éclairage chez nous aussi');
  await within(convA.send('nothing to see here'), 5000, 'alice sends another');

  // Bob finds it by a prefix typed without accent, in any case.
  const ids = async (q, options) => (await B.client.search(q, options)).results.map((r) => r.message.id);
  const page = await waitFor(
    async () => {
      const p = await B.client.search('ECLAIR');
      return p.results.some((r) => r.message.id === found.id) && p;
    },
    'bob to find the message by "ECLAIR"',
    10000,
  );
  const hit = page.results.find((r) => r.message.id === found.id);
  assert.equal(hit.conversation_id, ours);
  assert.equal(hit.message.content, 'Rendez-vous au Crémeux Éclairage demain');
  assert.equal(hit.message.sender_id, 'alice');
  assert.equal(typeof hit.snippet, 'string');
  assert.match(hit.snippet, /Éclairage/, 'the snippet is the original text');
  assert.ok(!page.results.some((r) => r.message.id === other.id), 'not the message of a chat of others');
  assert.ok(page.results.every((r) => r.conversation_id === ours), 'only conversations Bob is in');

  // Every word must match (each a prefix); the conversation filter applies.
  assert.deepEqual(await ids('cremeu ecl'), [found.id]);
  assert.deepEqual(await ids('eclair nothing'), []);
  assert.deepEqual(await ids('eclair', { conversationId: ours }), [found.id]);
  assert.deepEqual(await ids('eclair', { limit: 1 }), [found.id]);

  // Paging: one result per page, the cursor gives the rest, none twice.
  await within(convA.send('éclairage, encore'), 5000, 'alice sends a second match');
  await waitFor(async () => (await ids('eclair')).length === 2, 'both matches to be found', 10000);
  const first = await B.client.search('eclair', { limit: 1 });
  assert.equal(first.results.length, 1);
  assert.equal(typeof first.next_cursor, 'string', 'a cursor when more follow');
  const second = await B.client.search('eclair', { limit: 1, cursor: first.next_cursor });
  assert.equal(second.results.length, 1);
  assert.notEqual(second.results[0].message.id, first.results[0].message.id);

  // Carol finds hers, not ours.
  const C = open(scope, n1.url, 'carol');
  assert.deepEqual(
    (await C.client.search('éclai')).results.map((r) => r.message.id),
    [other.id],
    'carol finds only the message of her chat',
  );

  // Deleted: no longer found.
  await within(convA.delete(found.id), 5000, 'alice deletes the message');
  await waitFor(async () => !(await ids('cremeux')).includes(found.id), 'the deleted message to be gone from search', 10000);
  assert.deepEqual(await ids('cremeux'), []);

  // An empty query: a ConfabError from the 422.
  await assert.rejects(B.client.search(''), (e) => {
    assert.equal(e.name, 'ConfabError');
    assert.equal(e.code, 'INVALID_FRAME');
    assert.equal(e.status, 422);
    return true;
  });
});
