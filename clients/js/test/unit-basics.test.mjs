// Small pieces: backoff bounds, JWT payload decoding, errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfabError, backoffDelay, decodeToken, isRetryable } from '../dist/index.js';

test('full jitter: delays stay within [0, min(max, min * 2^attempt))', () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = Math.min(10_000, 500 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 500, 10_000);
      assert.ok(d >= 0 && d < cap, `attempt ${attempt}: ${d}`);
    }
    assert.equal(backoffDelay(attempt, 500, 10_000, () => 0), 0);
    assert.equal(backoffDelay(attempt, 500, 10_000, () => 0.999999), Math.floor(0.999999 * cap));
  }
  assert.equal(backoffDelay(1000, 500, 10_000, () => 0.5), 5_000);
});

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');

test('decodeToken reads sub, exp, iat and name without verifying', () => {
  const token = `${b64({ alg: 'HS256' })}.${b64({ sub: 'alice', exp: 1900000000, iat: 1800000000, name: 'Alïce 🎉' })}.sig`;
  assert.deepEqual(decodeToken(token), { sub: 'alice', exp: 1900000000, iat: 1800000000, name: 'Alïce 🎉' });
});

test('decodeToken leaves out claims of the wrong type and refuses non-JWTs', () => {
  assert.deepEqual(decodeToken(`x.${b64({ sub: 42, exp: 'soon' })}.y`), {});
  assert.equal(decodeToken('not a jwt'), null);
  assert.equal(decodeToken('a.%%%.c'), null);
  assert.equal(decodeToken(`a.${Buffer.from('[1').toString('base64url')}.c`), null);
  assert.equal(decodeToken(`a.${b64(null)}.c`), null);
});

test('isRetryable: transient codes yes, final ones no', () => {
  for (const code of ['RATE_LIMITED', 'UNAVAILABLE', 'INTERNAL', 'DISCONNECTED', 'TIMEOUT']) assert.equal(isRetryable(code), true, code);
  for (const code of ['MESSAGE_TOO_LONG', 'FORBIDDEN', 'NOT_FOUND', 'INVALID_FRAME', 'UNKNOWN_TYPE', 'AUTH_FAILED', 'AUTH_REQUIRED', 'TOKEN_EXPIRED']) {
    assert.equal(isRetryable(code), false, code);
  }
});

test('ConfabError carries its code and details', () => {
  const e = new ConfabError('RATE_LIMITED', 'slow down', { retryAfterMs: 250, status: 429 });
  assert.ok(e instanceof Error);
  assert.equal(e.name, 'ConfabError');
  assert.equal(e.code, 'RATE_LIMITED');
  assert.equal(e.retryAfterMs, 250);
  assert.equal(e.status, 429);
  assert.equal(e.closeCode, undefined);
});
