// Messages written and not yet acknowledged: where they wait (a store, so a
// restarted client sends the leftovers) and the flusher that sends them,
// one at a time in the order written, exactly once (client_msg_id).

import { ConfabError, isRetryable, toConfabError } from './errors.js';
import { Timers } from './timers.js';
import { backoffDelay } from './util.js';

/** A message waiting to be sent. */
export interface PendingMessage {
  /** The idempotency key: a retry with it is stored once. */
  client_msg_id: string;
  /** Where it goes. */
  conversation_id: string;
  /** The text, as written. */
  content: string;
  /** The id of the message it answers. */
  reply_to?: string;
  /** When it was written (RFC 3339). */
  created_at: string;
}

/**
 * Where unsent messages wait, per user (the token's `sub`): from `send()`
 * until acknowledged or failed. A client restarted with the same store sends
 * the leftovers.
 */
export interface OutboxStore {
  /** The user's waiting messages, oldest first. */
  load(userId: string): Promise<PendingMessage[]>;
  /** Adds (or moves to the end) one message. */
  put(userId: string, message: PendingMessage): Promise<void>;
  /** Removes one message. */
  remove(userId: string, clientMsgId: string): Promise<void>;
}

/** An OutboxStore in memory: it lasts as long as the object (share it between clients to survive a client restart). */
export function memoryOutbox(): OutboxStore {
  const users = new Map<string, Map<string, PendingMessage>>();
  const of = (userId: string) => {
    let m = users.get(userId);
    if (!m) users.set(userId, (m = new Map()));
    return m;
  };
  return {
    async load(userId) {
      return [...of(userId).values()];
    },
    async put(userId, message) {
      const m = of(userId);
      m.delete(message.client_msg_id);
      m.set(message.client_msg_id, message);
    },
    async remove(userId, clientMsgId) {
      of(userId).delete(clientMsgId);
    },
  };
}

interface OutboxRecord {
  user_id: string;
  client_msg_id: string;
  order: number;
  message: PendingMessage;
}

/** An OutboxStore in the browser's IndexedDB (database `databaseName`), surviving reloads. */
export function indexedDbOutbox(databaseName = 'confab-outbox'): OutboxStore {
  const STORE = 'pending';
  let db: Promise<IDBDatabase> | null = null;
  let lastOrder = 0;
  const open = () =>
    (db ??= new Promise<IDBDatabase>((resolve, reject) => {
      const req = indexedDB.open(databaseName, 1);
      req.onupgradeneeded = () => {
        req.result.createObjectStore(STORE, { keyPath: ['user_id', 'client_msg_id'] }).createIndex('user', 'user_id');
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    }));
  const run = async <T>(mode: IDBTransactionMode, op: (store: IDBObjectStore) => IDBRequest<T>): Promise<T> => {
    const tx = (await open()).transaction(STORE, mode);
    const req = op(tx.objectStore(STORE));
    return new Promise<T>((resolve, reject) => {
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  };
  return {
    async load(userId) {
      const rows = (await run('readonly', (s) => s.index('user').getAll(userId))) as OutboxRecord[];
      return rows.sort((a, b) => a.order - b.order).map((r) => r.message);
    },
    async put(userId, message) {
      lastOrder = Math.max(Date.now(), lastOrder + 1);
      const record: OutboxRecord = { user_id: userId, client_msg_id: message.client_msg_id, order: lastOrder, message };
      await run('readwrite', (s) => s.put(record));
    },
    async remove(userId, clientMsgId) {
      await run('readwrite', (s) => s.delete([userId, clientMsgId]));
    },
  };
}

/** The answer to a `send_message`: where the message was stored. */
export interface SendAck {
  /** The stored message's id. */
  message_id: string;
  /** The stored message's seq. */
  seq: number;
  /** It had been stored already (a retry). */
  duplicate: boolean;
}

/** A message in the outbox: waiting (`sending`) or refused for good (`failed`, kept until retried or discarded). */
export interface OutboxEntry {
  /** The message. */
  readonly message: PendingMessage;
  /** `sending`: waiting its turn (or in flight); `failed`: refused for good. */
  state: 'sending' | 'failed';
  /** Why it failed. */
  error?: ConfabError;
}

/** What the flusher needs. */
export interface OutboxOptions {
  /** Where the entries wait. */
  store: OutboxStore;
  /** Sends one message; rejects with a ConfabError. */
  send: (message: PendingMessage) => Promise<SendAck>;
  /** Whether sending is possible now (online). */
  canSend: () => boolean;
  /** A message was stored (removed from the outbox). */
  onAcked: (message: PendingMessage, ack: SendAck) => void;
  /** A message was refused for good (its entry stays, `failed`). */
  onFailed: (message: PendingMessage, error: ConfabError) => void;
  /** The entries changed. */
  onChange: () => void;
  /** The first wait after UNAVAILABLE, INTERNAL or a timeout, at most (full jitter; 500). */
  backoffMinMs?: number;
  /** The longest such wait (10000). */
  backoffMaxMs?: number;
}

/**
 * One queue of unsent messages for the whole client, flushed one at a time
 * in the order written (the next after the previous ack), whenever it may
 * send. `RATE_LIMITED`: the same entry again after `retryAfterMs`.
 * `UNAVAILABLE`, `INTERNAL`, a timeout: again after a backoff. Disconnected:
 * again once `flush()` is called online. Anything else fails that entry at
 * once (removed from the store, kept as `failed`) and the rest go on.
 */
export class Outbox {
  private entries: OutboxEntry[] = [];
  private waiting: readonly PendingMessage[] | null = null;
  private userId: string | null = null;
  private loaded = false;
  private running = false;
  private closed = false;
  private readonly timers = new Timers();
  private storeOps: Promise<void> = Promise.resolve();

  /** A flusher over `options.store`; it sends nothing before {@link Outbox.open}. */
  constructor(private readonly opts: OutboxOptions) {}

  /** The messages waiting to be sent, oldest first. The same array until it changes. */
  get pending(): readonly PendingMessage[] {
    this.waiting ??= this.entries.filter((e) => e.state === 'sending').map((e) => e.message);
    return this.waiting;
  }

  /** The entries (waiting and failed) of one conversation, in order. */
  entriesOf(conversationId: string): OutboxEntry[] {
    return this.entries.filter((e) => e.message.conversation_id === conversationId);
  }

  /**
   * Loads `userId`'s leftovers (they go first: they were written earlier),
   * stores what was added meanwhile, and starts flushing. Once only.
   */
  async open(userId: string): Promise<void> {
    if (this.userId !== null) return;
    this.userId = userId;
    let leftovers: PendingMessage[] = [];
    try {
      leftovers = await this.opts.store.load(userId);
    } catch {
      // An unreadable store: what this run writes is still sent.
    }
    if (this.closed) return;
    const known = new Set(this.entries.map((e) => e.message.client_msg_id));
    const restored: OutboxEntry[] = leftovers
      .filter((m) => !known.has(m.client_msg_id))
      .map((message) => ({ message, state: 'sending' }));
    for (const e of this.entries) if (e.state === 'sending') this.persist('put', e.message);
    this.entries = [...restored, ...this.entries];
    this.loaded = true;
    this.changed();
    this.flush();
  }

  /** Adds a message (stored, then sent when its turn comes). */
  add(message: PendingMessage): void {
    this.entries.push({ message, state: 'sending' });
    this.persist('put', message);
    this.changed();
    this.flush();
  }

  /** Sends a failed entry again, with the same client_msg_id, after the others. False if there is no such failed entry. */
  retry(clientMsgId: string): boolean {
    const entry = this.take(clientMsgId);
    if (!entry) return false;
    this.entries.push({ message: entry.message, state: 'sending' });
    this.persist('put', entry.message);
    this.changed();
    this.flush();
    return true;
  }

  /** Drops a failed entry. False if there is no such failed entry. */
  discard(clientMsgId: string): boolean {
    if (!this.take(clientMsgId)) return false;
    this.changed();
    return true;
  }

  /** Starts sending, if it may and is not already. */
  flush(): void {
    void this.run();
  }

  /** Stops for good (what waits stays in the store). */
  close(): void {
    this.closed = true;
    this.timers.clear();
  }

  private async run(): Promise<void> {
    if (this.running || this.closed || !this.loaded) return;
    this.running = true;
    let tries = 0;
    try {
      while (!this.closed && this.opts.canSend()) {
        const entry = this.entries.find((e) => e.state === 'sending');
        if (!entry) break;
        try {
          const ack = await this.opts.send(entry.message);
          tries = 0;
          this.entries = this.entries.filter((e) => e !== entry);
          this.persist('remove', entry.message);
          this.changed();
          this.opts.onAcked(entry.message, ack);
        } catch (e) {
          const error = toConfabError(e);
          if (error.code === 'RATE_LIMITED') {
            await this.timers.sleep(error.retryAfterMs ?? 1000);
          } else if (isRetryable(error.code)) {
            if (!this.opts.canSend()) break; // lost: flushed again once online
            await this.timers.sleep(backoffDelay(tries++, this.opts.backoffMinMs ?? 500, this.opts.backoffMaxMs ?? 10_000));
          } else {
            entry.state = 'failed';
            entry.error = error;
            this.persist('remove', entry.message);
            this.changed();
            this.opts.onFailed(entry.message, error);
          }
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Removes and returns a failed entry. */
  private take(clientMsgId: string): OutboxEntry | undefined {
    const entry = this.entries.find((e) => e.message.client_msg_id === clientMsgId && e.state === 'failed');
    if (entry) this.entries = this.entries.filter((e) => e !== entry);
    return entry;
  }

  /** Store writes, in the order made (a store failing does not stop sending). */
  private persist(op: 'put' | 'remove', message: PendingMessage): void {
    const userId = this.userId;
    if (userId === null) return;
    const { store } = this.opts;
    this.storeOps = this.storeOps
      .then(() => (op === 'put' ? store.put(userId, message) : store.remove(userId, message.client_msg_id)))
      .catch(() => undefined);
  }

  private changed(): void {
    this.waiting = null;
    this.opts.onChange();
  }
}
