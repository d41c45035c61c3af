// One conversation followed on the connection: joined (and joined again
// after every reconnect, with since_seq), its log kept in seq order, its
// typers, presence, read marks, assistant answers and our unsent messages,
// all as one immutable snapshot.

import type { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { ConfabError, toConfabError } from './errors.js';
import { ConversationLog, type LogEvent } from './log.js';
import type { Outbox, PendingMessage, SendAck } from './outbox.js';
import { StreamAssembler, type AssistantStream } from './streams.js';
import { Timers, type TimerHandle } from './timers.js';
import {
  isObject,
  type ConversationInfo,
  type JoinedData,
  type Message,
  type MessageChange,
  type MessagesData,
  type ServerFrame,
  type StreamFrameData,
  type TypingData,
} from './types.js';
import { charCount, randomId } from './util.js';

const HISTORY_PAGE = 50; // messages per page
const GAP_WAIT_MS = 800; // a seq gap that does not fill by itself this long is fetched
const GAP_WAIT_MAX_MS = 30_000;
const JOIN_RETRY_MS = 2_000; // a join refused with UNAVAILABLE (or timed out) is tried again
const TYPING_RESEND_MS = 2_500; // `typing: true` again while typing goes on
const TYPING_IDLE_MS = 3_000; // quiet this long: `typing: false`
const TYPER_TTL_MS = 6_500; // a remote typer expires without news (server typing_ttl + margin)
const STREAM_STALE_MS = 3_000; // after a rejoin, an answer the catch-up did not mention is gone
const STALE_TRIES = 10; // ...counted once the replay is in, waited for this many times at most
const CANCEL_GONE_MS = 3_000; // a cancel answered NOT_FOUND: the answer goes unless it ends by itself

/** The error of a conversation we were removed from (cleared if added back). */
const REMOVED = new ConfabError('FORBIDDEN', 'removed from the conversation');

/** Where one of our messages stands. */
export type SendState = 'sending' | 'sent' | 'failed';

/**
 * A message in a conversation's list: a stored one (state `sent`) or an
 * optimistic one of ours (id `''` and seq 0 until stored; `sender_id` me,
 * `created_at` when written).
 */
export interface ChatMessage extends Message {
  /** A stable key (React): `client_msg_id` of our own sends, else `id`. */
  key: string;
  /** `sent` for stored messages (and ours once acknowledged); `sending` or `failed` for ours before. */
  state: SendState;
  /** Why it failed (state `failed`): never retried automatically. */
  error?: ConfabError;
}

/** Everything a view of one conversation shows. A new immutable object after each change. */
export interface ConversationSnapshot {
  /** The conversation's id. */
  id: string;
  /** From listConversations, conversation_updated, createConversation, joined (participants). */
  info: ConversationInfo | null;
  /** Stored messages in seq order (from the loaded window on), then our unsent ones in the order written. */
  messages: readonly ChatMessage[];
  /** More history before the first loaded message. */
  hasOlder: boolean;
  /** The highest log seq applied; every entry up to it is applied (no gaps). */
  lastSeq: number;
  /** My read mark (log seq). */
  readSeq: number;
  /** Messages from others, not deleted, above my read mark. */
  unread: number;
  /** Others typing now (user ids), expiring by themselves after the typing TTL. */
  typing: readonly string[];
  /** Present participants (user ids), sorted; empty while unknown. */
  present: readonly string[];
  /** Other participants' read marks (user id -> seq), as read receipts told. */
  readBy: Readonly<Record<string, number>>;
  /** Assistant answers waiting, being written, or failed. */
  streams: readonly AssistantStream[];
  /** Joined on the live connection, first history page loaded (false while reconnecting or after an error). */
  joined: boolean;
  /** Why joining failed or stopped (NOT_FOUND, FORBIDDEN, removed: not retried), if it did. */
  error: ConfabError | null;
}

/** A conversation's events. */
export interface ConversationEvents {
  /** A new stored message (live or replayed, not from history pages): once each, in seq order. */
  message: (message: Message) => void;
  /** A change of a message (edit, deletion, reaction), with its state after it: once each, in seq order. */
  update: (message: Message, change: MessageChange) => void;
  /** The others typing changed. */
  typing: (userIds: readonly string[]) => void;
  /** The present participants changed. */
  presence: (userIds: readonly string[]) => void;
  /** A read mark moved: mine (from any tab, or markRead) or another participant's. */
  read: (userId: string, seq: number) => void;
}

/** Options of {@link Client.conversation}. */
export interface ConversationOptions {
  /** Messages loaded on the first join (50). */
  history?: number;
}

/** Options of {@link Conversation.send}. */
export interface SendOptions {
  /** The id of the message this one answers. */
  replyTo?: string;
}

/** Options of {@link Conversation.ask}. */
export interface AskOptions {
  /** A configured assistant; default: the conversation's own, else `default`. */
  assistantId?: string;
  /** The message to answer; default: the latest user message. */
  messageId?: string;
}

/** One conversation, joined for as long as the handle is open. */
export interface Conversation {
  /** The conversation's id. */
  readonly id: string;
  /**
   * The current snapshot: a new immutable object after each change, the same
   * object otherwise (React's useSyncExternalStore). Bound to the handle.
   */
  getSnapshot(): ConversationSnapshot;
  /** Calls `fn` after each change (once per burst of frames); returns unsubscribe. Bound to the handle. */
  subscribe(fn: () => void): () => void;
  /** Listens to one of the conversation's events; returns unsubscribe. */
  on<K extends keyof ConversationEvents>(event: K, fn: ConversationEvents[K]): () => void;
  /**
   * Sends through the outbox: shown at once (`sending`), sent now or when
   * online, in order, exactly once (client_msg_id). Resolves with the stored
   * message; rejects with the reason (the entry then shows `failed`).
   * Empty or over-long content fails at once, unsent.
   */
  send(content: string, options?: SendOptions): Promise<Message>;
  /** Sends a failed entry again (same client_msg_id). */
  retry(key: string): void;
  /** Drops a failed entry. */
  discard(key: string): void;
  /** Edits one of my messages (over REST while offline). */
  edit(messageId: string, content: string): Promise<void>;
  /** Deletes a message (over REST while offline). */
  delete(messageId: string): Promise<void>;
  /** Adds my reaction (over REST while offline). */
  react(messageId: string, emoji: string): Promise<void>;
  /** Removes my reaction (over REST while offline). */
  unreact(messageId: string, emoji: string): Promise<void>;
  /** Call on every keystroke: `typing: true` is sent at most every 2.5 s, `false` after 3 s without a call. */
  typing(): void;
  /** Stops typing now (send() does it too). */
  stopTyping(): void;
  /** Marks everything up to `seq` (default: lastSeq) read. Sends nothing if it would not move the mark. */
  markRead(seq?: number): void;
  /** Loads an older page (50); resolves with hasOlder. */
  loadOlder(limit?: number): Promise<boolean>;
  /** Asks an assistant to answer (stream_response, once online); resolves with the stream id once queued. */
  ask(options?: AskOptions): Promise<string>;
  /** Stops an answer, queued or running (`stream_complete` cancelled follows). */
  cancel(streamId: string): Promise<void>;
  /** Removes a failed answer from the list. */
  dismiss(streamId: string): void;
  /** Asks presence again (big conversations send no presence_changed). */
  refreshPresence(): Promise<void>;
  /** Stops following: leave_conversation, no more events; the handle is dropped. */
  close(): void;
}

/** A pending send's promise. */
export interface SendSettle {
  resolve: (message: Message) => void;
  reject: (error: ConfabError) => void;
}

/** What a conversation needs from its client. */
export interface ConversationContext {
  readonly connection: Connection;
  readonly outbox: Outbox;
  /** The signed-in user, once known. */
  me(): string | null;
  /** The most characters a message may have. */
  maxMessageChars(): number;
  /** A REST call with the current token. */
  rest(method: string, path: string, body?: unknown): Promise<unknown>;
  /** Queues a message in the outbox; settles when stored or refused. */
  send(message: PendingMessage): Promise<Message>;
  /** The handle closed itself. */
  forget(handle: ConversationHandle): void;
}

interface Acked {
  message: PendingMessage;
  ack: SendAck;
  settle?: SendSettle;
}

/** The {@link Conversation} implementation. */
export class ConversationHandle implements Conversation {
  private readonly log: ConversationLog;
  private readonly streams = new StreamAssembler();
  private readonly emitter = new Emitter<ConversationEvents>();
  private readonly subscribers = new Set<() => void>();
  private readonly timers = new Timers();
  private info: ConversationInfo | null;
  private joined = false;
  private joining = false;
  private joinEpoch = 0; // counts joins: replies and sweeps belong to one
  private error: ConfabError | null = null;
  private history: 'none' | 'loading' | 'loaded' = 'none'; // the first page before the join point
  private older: Promise<boolean> | null = null;
  private present: Set<string> | null = null;
  private readonly typers = new Map<string, TimerHandle>();
  private typingOn = false;
  private typingSentAt = 0;
  private typingIdle: TimerHandle | null = null;
  private readUnsent = false; // a mark set while no call could carry it
  private gapTimer: TimerHandle | null = null;
  private gapMark = 0;
  private gapTries = 0;
  private readonly acked = new Map<string, Acked>(); // client_msg_id -> acked, message not here yet
  private readonly views = new WeakMap<Message, ChatMessage>();
  private optimistic = new Map<string, ChatMessage>();
  private snapshot: ConversationSnapshot | null = null;
  private notifying = false;
  private closed = false;

  /** A handle on conversation `id`; it joins at once if online. */
  constructor(
    readonly id: string,
    private readonly ctx: ConversationContext,
    info: ConversationInfo | null,
    private readonly historyLimit: number = HISTORY_PAGE,
  ) {
    this.log = new ConversationLog(id, ctx.me());
    this.info = info;
    if (info) this.log.seed(info);
    this.join();
  }

  // ---------------------------------------------------------------- public

  // Bound: `useSyncExternalStore(conv.subscribe, conv.getSnapshot)` works as is.
  readonly getSnapshot = (): ConversationSnapshot => {
    this.snapshot ??= this.build();
    return this.snapshot;
  };

  readonly subscribe = (fn: () => void): (() => void) => {
    this.subscribers.add(fn);
    return () => {
      this.subscribers.delete(fn);
    };
  };

  on<K extends keyof ConversationEvents>(event: K, fn: ConversationEvents[K]): () => void {
    return this.emitter.on(event, fn);
  }

  send(content: string, options: SendOptions = {}): Promise<Message> {
    if (this.closed) return Promise.reject(new ConfabError('DISCONNECTED', 'the conversation is closed'));
    if (!content.trim()) return Promise.reject(new ConfabError('INVALID_FRAME', 'a message cannot be empty'));
    const max = this.ctx.maxMessageChars();
    if (charCount(content) > max) {
      return Promise.reject(new ConfabError('MESSAGE_TOO_LONG', `a message has at most ${max} characters`));
    }
    const message: PendingMessage = {
      client_msg_id: randomId(),
      conversation_id: this.id,
      content,
      created_at: new Date().toISOString(),
      ...(options.replyTo ? { reply_to: options.replyTo } : {}),
    };
    this.stopTyping();
    return this.ctx.send(message);
  }

  retry(key: string): void {
    this.ctx.outbox.retry(key);
  }

  discard(key: string): void {
    this.ctx.outbox.discard(key);
  }

  edit(messageId: string, content: string): Promise<void> {
    return this.change('edit_message', messageId, { content });
  }

  delete(messageId: string): Promise<void> {
    return this.change('delete_message', messageId, {});
  }

  react(messageId: string, emoji: string): Promise<void> {
    return this.change('add_reaction', messageId, { emoji });
  }

  unreact(messageId: string, emoji: string): Promise<void> {
    return this.change('remove_reaction', messageId, { emoji });
  }

  typing(): void {
    if (this.closed) return;
    const now = Date.now();
    if (!this.typingOn || now - this.typingSentAt > TYPING_RESEND_MS) {
      if (this.ctx.connection.fire('typing', { conversation_id: this.id, is_typing: true })) {
        this.typingOn = true;
        this.typingSentAt = now;
      }
    }
    this.timers.cancel(this.typingIdle);
    this.typingIdle = this.timers.after(TYPING_IDLE_MS, () => this.stopTyping());
  }

  stopTyping(): void {
    this.timers.cancel(this.typingIdle);
    this.typingIdle = null;
    if (!this.typingOn) return;
    this.typingOn = false;
    this.ctx.connection.fire('typing', { conversation_id: this.id, is_typing: false });
  }

  markRead(seq: number = this.log.lastSeq): void {
    if (this.closed || !this.log.markRead(seq)) return;
    this.emitter.emit('read', this.ctx.me() ?? '', seq);
    this.changed();
    this.sendReadMark();
  }

  loadOlder(limit: number = HISTORY_PAGE): Promise<boolean> {
    if (this.closed || !this.log.hasOlder) return Promise.resolve(this.log.hasOlder);
    this.older ??= this.loadPage(limit)
      .then(() => this.log.hasOlder)
      .finally(() => {
        this.older = null;
      });
    return this.older;
  }

  async ask(options: AskOptions = {}): Promise<string> {
    await this.ctx.connection.whenOnline();
    const reply = await this.ctx.connection.request('stream_response', {
      conversation_id: this.id,
      ...(options.messageId ? { message_id: options.messageId } : {}),
      ...(options.assistantId ? { assistant_id: options.assistantId } : {}),
    });
    return String(reply.stream_id);
  }

  async cancel(streamId: string): Promise<void> {
    await this.ctx.connection.whenOnline();
    try {
      await this.ctx.connection.request('cancel_stream', { stream_id: streamId });
    } catch (e) {
      const error = toConfabError(e);
      if (error.code !== 'NOT_FOUND') throw error;
      // It ended on its own just before the cancel (its end is on the way),
      // or it ended unseen: either way it goes.
      this.timers.after(CANCEL_GONE_MS, () => {
        if (this.streams.drop(streamId)) this.changed();
      });
    }
  }

  dismiss(streamId: string): void {
    if (this.streams.dismiss(streamId)) this.changed();
  }

  async refreshPresence(): Promise<void> {
    await this.ctx.connection.whenOnline();
    await this.ctx.connection.request('presence', { conversation_id: this.id }); // the reply is applied in onFrame
  }

  close(): void {
    if (this.closed) return;
    this.stopTyping();
    if (this.ctx.connection.online) {
      // With an id: its `left` reply is taken here, not by a later handle.
      this.ctx.connection.request('leave_conversation', { conversation_id: this.id }).catch(() => undefined);
    }
    this.closed = true;
    this.timers.clear();
    this.emitter.clear();
    this.subscribers.clear();
    for (const a of this.acked.values()) a.settle?.resolve(storedFromAck(a.message, a.ack, this.ctx.me()));
    this.acked.clear();
    this.ctx.forget(this);
  }

  // ---------------------------------------------------------------- from the client

  /** A new authenticated connection: join (again). */
  onSession(): void {
    this.log.me = this.ctx.me();
    this.typingOn = false;
    this.join();
  }

  /** The connection is gone: nothing is joined, typing and presence are unknown until the next one. */
  onLost(): void {
    this.joined = false;
    this.typingOn = false;
    this.present = null;
    this.timers.cancel(this.gapTimer);
    this.gapTimer = null;
    if (this.typers.size > 0) {
      for (const t of this.typers.values()) this.timers.cancel(t);
      this.typers.clear();
      this.emitter.emit('typing', []);
    }
    this.changed();
  }

  /** The conversation as a listing, `conversation_updated` or a creation describes it. */
  setInfo(info: ConversationInfo): void {
    this.info = info;
    this.log.seed(info);
    const me = this.ctx.me();
    if (this.error === REMOVED && me !== null && info.participants.includes(me) && !info.archived) {
      this.error = null; // added back
      this.join();
    }
    this.changed();
  }

  /** Our message was stored: resolved once it is in the log (or known to be older than the log's window). */
  onAcked(message: PendingMessage, ack: SendAck, settle?: SendSettle): void {
    this.acked.set(message.client_msg_id, { message, ack, settle });
    this.settleAcked();
    this.changed();
  }

  /** The outbox changed (an entry of ours may have). */
  onOutboxChange(): void {
    this.changed();
  }

  /** A frame about this conversation. */
  onFrame(frame: ServerFrame): void {
    if (this.closed) return;
    this.log.me = this.ctx.me();
    switch (frame.type) {
      case 'message_received':
        this.applied(this.log.applyMessage(frame.data.message));
        break;
      case 'message_updated':
        this.applied(this.log.applyUpdate(frame.data.seq, frame.data.change, frame.data.message));
        break;
      case 'typing_indicator':
        this.onTyping(frame.data);
        break;
      case 'read_receipt':
        if (this.log.readReceipt(frame.data.user_id, frame.data.seq)) {
          this.emitter.emit('read', frame.data.user_id, frame.data.seq);
          this.changed();
        }
        break;
      case 'presence':
        // The answer to `presence`, applied here in frame order: a promise's
        // continuation would run after the frames that follow it in the
        // same read, and undo their presence_changed.
        this.setPresent(frame.data.users);
        break;
      case 'presence_changed':
        // While unknown, the answer to `presence` (still to come) includes it.
        if (this.present) {
          const present = new Set(this.present);
          if (frame.data.present) present.add(frame.data.user_id);
          else present.delete(frame.data.user_id);
          this.setPresent([...present]);
        }
        break;
      case 'stream_queued':
        if (!this.answered(frame.data) && this.streams.queued(frame.data)) this.changed();
        break;
      case 'stream_start':
        if (!this.answered(frame.data) && this.streams.start(frame.data)) this.changed();
        break;
      case 'stream_snapshot':
        if (!this.answered(frame.data) && this.streams.snapshot(frame.data)) this.changed();
        break;
      case 'stream_content':
        if (!this.answered(frame.data) && this.streams.content(frame.data)) this.changed();
        break;
      case 'stream_complete':
        this.streams.complete(frame.data);
        if (frame.data.message) this.applied(this.log.applyMessage(frame.data.message));
        this.changed();
        break;
      case 'stream_error':
        if (this.streams.error(frame.data)) this.changed();
        break;
      case 'left':
        // Removed from the conversation (our own leave is a reply, with ref).
        if (!frame.data.ref) {
          this.joined = false;
          this.error = REMOVED;
          this.changed();
        }
        break;
    }
  }

  // ---------------------------------------------------------------- joining

  /**
   * Joins: the first time without since_seq (then a history page), every
   * later time with since_seq = lastSeq, so the server replays exactly the
   * entries not applied here. `again`: even if joined (a gap to fill).
   */
  private join(again = false): void {
    if (this.closed || this.error || this.joining || !this.ctx.connection.online) return;
    if (this.joined && !again) return;
    this.joined = false;
    this.joining = true;
    const epoch = ++this.joinEpoch;
    // Answers held are confirmed by the catch-up that follows the replay.
    const stale = this.streams.markStale();
    const data = this.log.based
      ? { conversation_id: this.id, since_seq: this.log.lastSeq }
      : { conversation_id: this.id };
    this.ctx.connection.request('join_conversation', data).then(
      (reply) => {
        this.joining = false;
        this.onJoined(reply as unknown as JoinedData, epoch, stale);
      },
      (e: unknown) => {
        this.joining = false;
        this.onJoinFailed(toConfabError(e));
      },
    );
  }

  private onJoined(d: JoinedData, epoch: number, stale: boolean): void {
    if (this.closed || epoch !== this.joinEpoch) return;
    this.joined = true;
    if (this.info && Array.isArray(d.participants)) this.info = { ...this.info, participants: d.participants };
    this.log.noteKnown(d.last_seq);
    this.applied(this.log.setBase(d.last_seq));
    this.askPresence();
    if (stale) this.sweepStale(epoch, d.last_seq, 0);
    if (this.history === 'none') this.loadHistory();
    if (this.readUnsent) this.sendReadMark();
    this.scheduleGapFill();
    this.changed();
  }

  private onJoinFailed(error: ConfabError): void {
    if (this.closed) return;
    if (error.code === 'FORBIDDEN' || error.code === 'NOT_FOUND') {
      this.error = error;
      this.changed();
    } else if (error.code !== 'DISCONNECTED') {
      // UNAVAILABLE (the history could not be read), a timeout: again.
      this.timers.after(JOIN_RETRY_MS, () => this.join());
    }
  }

  /** The first page of history, once (tried again at the next join if it fails). */
  private loadHistory(): void {
    if (!this.log.hasOlder) {
      this.history = 'loaded';
      return;
    }
    this.history = 'loading';
    this.loadPage(this.historyLimit).then(
      () => (this.history = 'loaded'),
      () => (this.history = 'none'),
    ).finally(() => this.changed());
  }

  /** A page of history before the loaded window, merged (every entry up to lastSeq was in when it was read). */
  private async loadPage(limit: number): Promise<void> {
    const asOf = this.log.lastSeq;
    const beforeSeq = this.log.windowStart + 1;
    let page: { messages: Message[]; has_more: boolean };
    if (this.ctx.connection.online) {
      const reply = await this.ctx.connection.request('load_messages', {
        conversation_id: this.id,
        before_seq: beforeSeq,
        limit,
      });
      page = reply as unknown as MessagesData;
    } else {
      const path = `/api/v1/chat/chats/${encodeURIComponent(this.id)}?before_seq=${beforeSeq}&limit=${limit}`;
      page = (await this.ctx.rest('GET', path)) as { messages: Message[]; has_more: boolean };
    }
    if (this.closed) return;
    this.log.mergePage(page.messages, page.has_more, asOf);
    this.settleAcked();
    this.changed();
  }

  /** Asks who is present (the reply is applied in onFrame); a failure is left to the next join. */
  private askPresence(): void {
    this.ctx.connection.request('presence', { conversation_id: this.id }).catch(() => undefined);
  }

  private setPresent(users: unknown): void {
    if (!Array.isArray(users)) return;
    this.present = new Set(users.filter((u): u is string => typeof u === 'string'));
    this.emitter.emit('presence', [...this.present].sort());
    this.changed();
  }

  /**
   * A seq skipped: fetch what is missing (join again with since_seq) unless
   * it shows up by itself (a replay still coming in counts as showing up).
   */
  private scheduleGapFill(wait = GAP_WAIT_MS): void {
    if (this.gapTimer !== null || !this.log.hasGap || !this.joined) return;
    this.gapMark = this.log.lastSeq;
    this.gapTimer = this.timers.after(wait, () => {
      this.gapTimer = null;
      if (!this.log.hasGap) {
        this.gapTries = 0;
        return;
      }
      if (this.log.lastSeq > this.gapMark || this.joining) {
        this.scheduleGapFill();
        return;
      }
      if (!this.joined) return; // the next join replays it
      this.gapTries += 1;
      this.join(true);
      this.scheduleGapFill(Math.min(GAP_WAIT_MAX_MS, GAP_WAIT_MS * 2 ** this.gapTries));
    });
  }

  /** After a join again, once the replay is in: answers the catch-up did not confirm ended unseen. */
  private sweepStale(epoch: number, lastSeq: number, tries: number): void {
    this.timers.after(STREAM_STALE_MS, () => {
      if (epoch !== this.joinEpoch || !this.joined) return;
      if (this.log.lastSeq < lastSeq && tries < STALE_TRIES) {
        this.sweepStale(epoch, lastSeq, tries + 1);
        return;
      }
      if (this.streams.sweepStale()) this.changed();
    });
  }

  // ---------------------------------------------------------------- log, typing, changes

  /** Events from applying entries, in order; then what depends on the log. */
  private applied(events: LogEvent[]): void {
    for (const ev of events) {
      if (ev.type === 'message') {
        this.dropTyper(ev.message.sender_id);
        this.streams.stored(ev.message.id);
        this.emitter.emit('message', ev.message);
      } else {
        this.emitter.emit('update', ev.message, ev.change);
      }
    }
    if (events.length > 0) this.settleAcked();
    this.scheduleGapFill();
    this.changed();
  }

  /** A stream frame whose answer is stored already (late, or replayed before the catch-up). */
  private answered(d: StreamFrameData): boolean {
    return d.message_id !== undefined && this.log.get(d.message_id) !== undefined;
  }

  private onTyping(d: TypingData): void {
    if (d.user_id === this.ctx.me()) return; // my own other tabs
    const was = this.typers.has(d.user_id);
    this.timers.cancel(this.typers.get(d.user_id));
    this.typers.delete(d.user_id);
    if (d.is_typing) this.typers.set(d.user_id, this.timers.after(TYPER_TTL_MS, () => this.dropTyper(d.user_id)));
    if (was !== d.is_typing) {
      this.emitter.emit('typing', [...this.typers.keys()]);
      this.changed();
    }
  }

  private dropTyper(userId: string): void {
    if (!this.typers.has(userId)) return;
    this.timers.cancel(this.typers.get(userId));
    this.typers.delete(userId);
    this.emitter.emit('typing', [...this.typers.keys()]);
    this.changed();
  }

  /** mark_read on the connection, else over REST; else when joined next. */
  private sendReadMark(): void {
    const seq = this.log.readSeq;
    this.readUnsent = false;
    if (this.ctx.connection.fire('mark_read', { conversation_id: this.id, seq })) return;
    this.ctx.rest('POST', `/api/v1/chat/chats/${encodeURIComponent(this.id)}/read`, { seq }).catch(() => {
      this.readUnsent = true;
    });
  }

  /**
   * An edit, deletion or reaction: over the connection, or REST while none
   * is up (or when the connection was lost before the answer: every change
   * but a deletion is idempotent, and a deletion found gone then is done).
   */
  private async change(type: string, messageId: string, extra: { content?: string; emoji?: string }): Promise<void> {
    let retried = false;
    if (this.ctx.connection.online) {
      try {
        await this.ctx.connection.request(type, { conversation_id: this.id, message_id: messageId, ...extra });
        return;
      } catch (e) {
        const error = toConfabError(e);
        if (error.code !== 'DISCONNECTED' && error.code !== 'TIMEOUT') throw error;
        retried = true;
      }
    }
    const path = `/api/v1/chat/chats/${encodeURIComponent(this.id)}/messages/${encodeURIComponent(messageId)}`;
    const reaction = `${path}/reactions/${encodeURIComponent(extra.emoji ?? '')}`;
    let answer: unknown;
    try {
      if (type === 'edit_message') answer = await this.ctx.rest('PATCH', path, { content: extra.content });
      else if (type === 'delete_message') answer = await this.ctx.rest('DELETE', path);
      else answer = await this.ctx.rest(type === 'add_reaction' ? 'PUT' : 'DELETE', reaction);
    } catch (e) {
      const error = toConfabError(e);
      if (retried && type === 'delete_message' && error.code === 'NOT_FOUND') return;
      throw error;
    }
    // {seq?, message}: the state after the change (its entry comes through the log too).
    if (isObject(answer) && isObject(answer.message) && typeof answer.seq === 'number') {
      if (this.log.store(answer.message as unknown as Message, answer.seq)) this.changed();
    }
  }

  /** Resolves the sends whose stored message is here (or is known to be before the loaded window). */
  private settleAcked(): void {
    for (const [key, a] of this.acked) {
      const stored = this.log.get(a.ack.message_id);
      if (stored) a.settle?.resolve(stored);
      else if (this.log.based && this.log.lastSeq >= a.ack.seq) a.settle?.resolve(storedFromAck(a.message, a.ack, this.ctx.me()));
      else continue;
      this.acked.delete(key);
    }
  }

  /** Something changed: a new snapshot, and subscribers told (once per microtask). */
  private changed(): void {
    this.snapshot = null;
    if (this.notifying || this.closed) return;
    this.notifying = true;
    queueMicrotask(() => {
      this.notifying = false;
      if (this.closed) return;
      for (const fn of [...this.subscribers]) fn();
    });
  }

  // ---------------------------------------------------------------- the snapshot

  private build(): ConversationSnapshot {
    const me = this.ctx.me();
    this.log.me = me;
    const messages: ChatMessage[] = this.log.messages().map((m) => this.view(m, me));
    const optimistic = new Map<string, ChatMessage>();
    const add = (m: PendingMessage, state: SendState, error?: ConfabError, ack?: SendAck) => {
      const old = this.optimistic.get(m.client_msg_id);
      const view =
        old && old.state === state && old.error === error && old.id === (ack?.message_id ?? '')
          ? old
          : this.pendingView(m, state, error, ack);
      optimistic.set(m.client_msg_id, view);
      messages.push(view);
    };
    for (const a of this.acked.values()) add(a.message, 'sent', undefined, a.ack);
    for (const e of this.ctx.outbox.entriesOf(this.id)) {
      // Stored already (its message_received came before the ack): shown once, as stored.
      if (me !== null && this.log.findByClientMsgId(me, e.message.client_msg_id)) continue;
      add(e.message, e.state, e.error);
    }
    this.optimistic = optimistic;
    const readBy: Record<string, number> = {};
    for (const [user, seq] of this.log.readBy) readBy[user] = seq;
    return Object.freeze({
      id: this.id,
      info: this.info,
      messages: Object.freeze(messages),
      hasOlder: this.log.hasOlder,
      lastSeq: this.log.lastSeq,
      readSeq: this.log.readSeq,
      unread: this.log.unread,
      typing: Object.freeze([...this.typers.keys()]),
      present: Object.freeze(this.present ? [...this.present].sort() : []),
      readBy: Object.freeze(readBy),
      streams: this.streams.list(),
      joined: this.joined && this.history !== 'loading',
      error: this.error,
    });
  }

  /** A stored message as a list entry: the same object while the message is unchanged. */
  private view(m: Message, me: string | null): ChatMessage {
    const key = m.client_msg_id && m.sender_id === me ? m.client_msg_id : m.id;
    let view = this.views.get(m);
    if (!view || view.key !== key) {
      view = Object.freeze({ ...m, key, state: 'sent' as const });
      this.views.set(m, view);
    }
    return view;
  }

  private pendingView(m: PendingMessage, state: SendState, error?: ConfabError, ack?: SendAck): ChatMessage {
    return Object.freeze({
      id: ack?.message_id ?? '',
      conversation_id: this.id,
      seq: ack?.seq ?? 0,
      sender_id: this.ctx.me() ?? '',
      message_type: 'user' as const,
      content: m.content,
      client_msg_id: m.client_msg_id,
      created_at: m.created_at,
      ...(m.reply_to ? { reply_to: m.reply_to } : {}),
      attachments: [],
      reactions: [],
      deleted: false,
      key: m.client_msg_id,
      state,
      ...(error ? { error } : {}),
    });
  }
}

/** A stored message of ours as its ack describes it (when the message itself is not at hand). */
export function storedFromAck(message: PendingMessage, ack: SendAck, me: string | null): Message {
  return {
    id: ack.message_id,
    conversation_id: message.conversation_id,
    seq: ack.seq,
    sender_id: me ?? '',
    message_type: 'user',
    content: message.content,
    client_msg_id: message.client_msg_id,
    created_at: message.created_at,
    ...(message.reply_to ? { reply_to: message.reply_to } : {}),
    attachments: [],
    reactions: [],
    deleted: false,
  };
}
