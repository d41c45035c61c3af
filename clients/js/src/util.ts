// Small helpers: random ids and reconnect delays.

/**
 * A random UUID v4: `crypto.randomUUID` where there is one (it needs a secure
 * context in browsers, and Node 18 has no global `crypto`), else one made
 * with Math.random (ids, not secrets).
 */
export function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  return 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, (ch) => {
    const r = Math.floor(Math.random() * 16);
    return (ch === 'x' ? r : (r & 0x3) | 0x8).toString(16);
  });
}

/**
 * Full-jitter exponential backoff: a delay drawn uniformly from
 * `[0, min(maxMs, minMs * 2 ** attempt))`, attempt counting from 0.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt));
  return Math.floor(random() * cap);
}

/** The length of `text` in Unicode characters (scalar values), as the server counts it. */
export function charCount(text: string): number {
  return Array.from(text).length;
}
