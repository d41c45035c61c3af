// The client: one connection, one outbox, the conversation handles, REST.

import { Connection, type ConnectionStatus } from './connection.js';
import {
  ConversationHandle,
  storedFromAck,
  type Conversation,
  type ConversationContext,
  type ConversationOptions,
  type SendSettle,
} from './conversation.js';
import { Emitter } from './emitter.js';
import { ConfabError } from './errors.js';
import { indexedDbOutbox, memoryOutbox, Outbox, type OutboxStore, type PendingMessage, type SendAck } from './outbox.js';
import { restCall, type RestResponse } from './rest.js';
import { decodeToken } from './token.js';
import type { TransportKind, WebSocketConstructor } from './transport.js';
import type { ConversationInfo, ConversationUpdateReason, Message, SearchPage, ServerFrame } from './types.js';

/** How to reach confab, and how the connection behaves. */
export interface ConnectOptions {
  /** Base URL of any node or the load balancer: `"https://chat.example.com"`, or `""` for the page's own origin in a browser. ws(s):// is derived. */
  url: string;
  /** Returns a fresh JWT; called to connect, before expiry, and after TOKEN_EXPIRED. */
  token: () => Promise<string>;
  /**
   * Transports to use, in order of preference. Default `['websocket', 'http']`:
   * WebSocket first; after `wsFailuresForHttp` failed sockets in a row, HTTP,
   * from which a socket is tried again every `wsRetryMs`. With `http` first
   * (or alone, or no WebSocket constructor at all), HTTP only.
   */
  transports?: TransportKind[];
  /** WebSocket constructor (Node < 22: pass `ws`'s). Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Where unsent messages wait. Default: `indexedDbOutbox()` in browsers, `memoryOutbox()` elsewhere. */
  outbox?: OutboxStore;
  /** Reconnect backoff bounds (full jitter): `minMs` 500, `maxMs` 10000. */
  backoff?: {
    /** The first retry waits up to this long (500); each next one up to twice as long. */
    minMs?: number;
    /** No retry waits longer than this (10000). */
    maxMs?: number;
  };
  /** Sockets in a row that fail (never authenticated, or cut within 30 s of it) before moving to HTTP (3). */
  wsFailuresForHttp?: number;
  /** How often a socket is tried again while on HTTP (60000). */
  wsRetryMs?: number;
  /** Longest wait for any reply (10000). */
  requestTimeoutMs?: number;
  /** Client-side check before sending. Default: the server's `limits.max_message_chars` once known, else 8000. */
  maxMessageChars?: number;
}

/** The client's events. */
export interface ClientEvents {
  /** The connection status changed. */
  status: (status: ConnectionStatus) => void;
  /** `conversation_updated` (created, renamed, participant_added/removed, archived, owner_changed). */
  conversation: (conversation: ConversationInfo, reason: ConversationUpdateReason) => void;
  /** Errors not tied to a call: a refused renewal, `token()` failing, auth given up. */
  error: (error: ConfabError) => void;
  /** Every server frame, after the SDK handled it (an escape hatch). */
  frame: (frame: ServerFrame) => void;
}

/** The body of {@link Client.createConversation}. */
export interface CreateConversationBody {
  /** 1 to 200 characters. */
  title?: string;
  /** Users added besides the caller (who joins as owner). */
  participant_ids?: string[];
  /** An assistant that answers every user message. */
  assistant_id?: string;
}

/** What {@link Client.search} looks in, and which page. */
export interface SearchOptions {
  /** Only this conversation (one of the caller's). Default: every conversation the caller is in now. */
  conversationId?: string;
  /** Results per page (the server's default 20). */
  limit?: number;
  /** A previous page's `next_cursor`: the page after it. */
  cursor?: string;
}

/** A connection to confab and everything followed over it. */
export interface Client {
  /** The connection status: always the current value (a new object on each change). */
  readonly status: ConnectionStatus;
  /** The signed-in user: from `auth_success`, or the token's `sub` before. */
  readonly userId: string | null;
  /** The token's `name` claim, if any. */
  readonly displayName: string | null;
  /** Listens to one of the client's events; returns unsubscribe. */
  on<K extends keyof ClientEvents>(event: K, fn: ClientEvents[K]): () => void;
  /** Resolves once authenticated the first time (rejects if closed first). */
  ready(): Promise<void>;
  /** The conversation's handle: created and joined on first call, the same object after (until closed). */
  conversation(id: string, options?: ConversationOptions): Conversation;
  /** `GET /chats`, every page (Confab-Next-Cursor), newest activity first. Seeds each open conversation's read mark and unread count. */
  listConversations(): Promise<ConversationInfo[]>;
  /** Creates a conversation (the caller is its owner). */
  createConversation(body: CreateConversationBody): Promise<ConversationInfo>;
  /**
   * Searches the caller's messages: `GET /api/v1/chat/search`. Finds messages
   * containing every word of `q`, each word matched as a prefix, ignoring
   * case and accents (`"cafe"` finds "Café"), best match first; only in the
   * conversations the caller is in now, never deleted messages, edited ones
   * by their new text. Rejects with a ConfabError (`INVALID_FRAME` for an
   * empty `q`).
   *
   * ```ts
   * let page = await client.search('meet tomo');
   * while (page.next_cursor) page = await client.search('meet tomo', { cursor: page.next_cursor });
   * ```
   *
   * @param q The words, as typed (at least one).
   * @param options A conversation to look in, the page size, the next page's cursor.
   * @returns One page of results; `next_cursor` when more follow.
   */
  search(q: string, options?: SearchOptions): Promise<SearchPage>;
  /** Any REST call with the current token; throws ConfabError (code, status, retryAfterMs). Path relative to url, e.g. `'/api/v1/chat/chats'`. */
  rest<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  /** A raw request/reply frame over the connection (waits until online); resolves with the reply's data, rejects with ConfabError. */
  request<T = unknown>(type: string, data: object): Promise<T>;
  /** Unsent messages of every conversation, oldest first. */
  readonly outbox: readonly PendingMessage[];
  /** Closes the connection for good (the outbox stays in its store). */
  close(): void;
}

const CHATS_PAGE = 200; // the most GET /chats gives
const MAX_CHAT_PAGES = 100;
const DEFAULT_MAX_CHARS = 8000;

/** Connects to confab: the first attempt starts at once. */
export function connect(options: ConnectOptions): Client {
  return new ConfabClient(options);
}

class ConfabClient implements Client {
  private readonly connection: Connection;
  private readonly queue: Outbox;
  private readonly emitter = new Emitter<ClientEvents>();
  private readonly handles = new Map<string, ConversationHandle>();
  private readonly infos = new Map<string, ConversationInfo>();
  private readonly settles = new Map<string, SendSettle>();
  private readonly readied: Promise<void>;
  private readonly context: ConversationContext;
  private name: string | null = null;

  constructor(private readonly options: ConnectOptions) {
    if (typeof options.url !== 'string') throw new TypeError('url must be a string ("" for the page\'s origin)');
    if (typeof options.token !== 'function') throw new TypeError('token must be a function returning a JWT');
    const backoffMinMs = options.backoff?.minMs ?? 500;
    const backoffMaxMs = options.backoff?.maxMs ?? 10_000;
    this.connection = new Connection({
      url: options.url,
      token: async () => {
        const token = await options.token();
        this.name = (typeof token === 'string' && decodeToken(token)?.name) || this.name;
        return token;
      },
      transports: options.transports ?? ['websocket', 'http'],
      WebSocket: options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ?? null,
      backoffMinMs,
      backoffMaxMs,
      wsFailuresForHttp: options.wsFailuresForHttp ?? 3,
      wsRetryMs: options.wsRetryMs ?? 60_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
    });
    this.queue = new Outbox({
      store: options.outbox ?? (typeof indexedDB === 'undefined' ? memoryOutbox() : indexedDbOutbox()),
      send: (m) => this.sendMessage(m),
      canSend: () => this.connection.online,
      onAcked: (m, ack) => this.onAcked(m, ack),
      onFailed: (m, error) => this.onFailed(m, error),
      onChange: () => this.handles.forEach((h) => h.onOutboxChange()),
      backoffMinMs,
      backoffMaxMs,
    });
    this.context = {
      connection: this.connection,
      outbox: this.queue,
      me: () => this.connection.status.userId,
      maxMessageChars: () => options.maxMessageChars ?? this.connection.maxMessageChars ?? DEFAULT_MAX_CHARS,
      rest: (method, path, body) => this.rest(method, path, body),
      send: (m) => this.queueMessage(m),
      forget: (h) => {
        if (this.handles.get(h.id) === h) this.handles.delete(h.id);
      },
    };
    this.readied = new Promise<void>((resolve, reject) => {
      const off = this.connection.events.on('status', (s) => {
        if (s.state === 'online') resolve();
        else if (s.state === 'closed') reject(s.lastError ?? new ConfabError('DISCONNECTED', 'the client is closed'));
        else return;
        off();
      });
    });
    this.readied.catch(() => undefined); // nobody asked: not an unhandled rejection
    this.wire();
    this.connection.start();
  }

  get status(): ConnectionStatus {
    return this.connection.status;
  }

  get userId(): string | null {
    return this.connection.status.userId;
  }

  get displayName(): string | null {
    return this.name;
  }

  get outbox(): readonly PendingMessage[] {
    return this.queue.pending;
  }

  on<K extends keyof ClientEvents>(event: K, fn: ClientEvents[K]): () => void {
    return this.emitter.on(event, fn);
  }

  ready(): Promise<void> {
    return this.readied;
  }

  conversation(id: string, options: ConversationOptions = {}): Conversation {
    let handle = this.handles.get(id);
    if (!handle) {
      handle = new ConversationHandle(id, this.context, this.infos.get(id) ?? null, options.history);
      this.handles.set(id, handle);
    }
    return handle;
  }

  async listConversations(): Promise<ConversationInfo[]> {
    const list: ConversationInfo[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < MAX_CHAT_PAGES; page++) {
      const query = `?limit=${CHATS_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const { data, headers } = await this.restRaw('GET', `/api/v1/chat/chats${query}`);
      if (Array.isArray(data)) list.push(...(data as ConversationInfo[]));
      cursor = headers.get('confab-next-cursor');
      if (!cursor) break;
    }
    for (const info of list) this.learn(info);
    return list;
  }

  async createConversation(body: CreateConversationBody): Promise<ConversationInfo> {
    const info = await this.rest<ConversationInfo>('POST', '/api/v1/chat/chats', body);
    this.learn(info);
    return info;
  }

  async search(q: string, options: SearchOptions = {}): Promise<SearchPage> {
    const params = new URLSearchParams({ q });
    if (options.conversationId !== undefined) params.set('conversation_id', options.conversationId);
    if (options.limit !== undefined) params.set('limit', String(options.limit));
    if (options.cursor !== undefined) params.set('cursor', options.cursor);
    const data = await this.rest<Partial<SearchPage> | undefined>('GET', `/api/v1/chat/search?${params}`);
    const page: SearchPage = { results: Array.isArray(data?.results) ? data.results : [] };
    if (typeof data?.next_cursor === 'string' && data.next_cursor) page.next_cursor = data.next_cursor;
    return page;
  }

  async rest<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    return (await this.restRaw(method, path, body)).data as T;
  }

  async request<T = unknown>(type: string, data: object): Promise<T> {
    await this.connection.whenOnline();
    return (await this.connection.request(type, data)) as unknown as T;
  }

  close(): void {
    this.connection.close();
    this.queue.close();
    for (const h of [...this.handles.values()]) h.close();
    const closed = new ConfabError('DISCONNECTED', 'the client was closed; the message stays in the outbox store');
    for (const s of this.settles.values()) s.reject(closed);
    this.settles.clear();
  }

  // ---------------------------------------------------------------- inside

  private wire(): void {
    const events = this.connection.events;
    events.on('status', (s) => {
      if (s.userId !== null) void this.queue.open(s.userId);
      this.emitter.emit('status', s);
    });
    events.on('session', (d) => {
      this.name ??= d.name ?? null;
      this.queue.flush();
      for (const h of [...this.handles.values()]) h.onSession();
    });
    events.on('lost', () => {
      for (const h of [...this.handles.values()]) h.onLost();
    });
    events.on('frame', (frame) => {
      this.route(frame);
      this.emitter.emit('frame', frame);
    });
    events.on('error', (e) => this.emitter.emit('error', e));
  }

  /** A frame to the conversation it is about; conversation_updated to everyone. */
  private route(frame: ServerFrame): void {
    if (frame.type === 'conversation_updated') {
      const { conversation, reason } = frame.data;
      this.learn(conversation);
      this.emitter.emit('conversation', conversation, reason);
      return;
    }
    const id =
      frame.type === 'message_received'
        ? frame.data.message?.conversation_id
        : (frame.data as { conversation_id?: unknown }).conversation_id;
    if (typeof id === 'string') this.handles.get(id)?.onFrame(frame);
  }

  private learn(info: ConversationInfo): void {
    this.infos.set(info.id, info);
    this.handles.get(info.id)?.setInfo(info);
  }

  private async restRaw(method: string, path: string, body?: unknown): Promise<RestResponse> {
    const token = await this.connection.currentToken();
    try {
      return await restCall(this.options.url, token, method, path, body);
    } catch (e) {
      if (!(e instanceof ConfabError) || e.status !== 401) throw e;
      // Expired or refused: a fresh token once.
      return restCall(this.options.url, await this.connection.freshToken(), method, path, body);
    }
  }

  private queueMessage(message: PendingMessage): Promise<Message> {
    return new Promise((resolve, reject) => {
      this.settles.set(message.client_msg_id, { resolve, reject });
      this.queue.add(message);
    });
  }

  private async sendMessage(m: PendingMessage): Promise<SendAck> {
    const reply = await this.connection.request('send_message', {
      conversation_id: m.conversation_id,
      content: m.content,
      client_msg_id: m.client_msg_id,
      ...(m.reply_to ? { reply_to: m.reply_to } : {}),
    });
    return { message_id: String(reply.message_id), seq: Number(reply.seq), duplicate: reply.duplicate === true };
  }

  private onAcked(message: PendingMessage, ack: SendAck): void {
    const settle = this.settles.get(message.client_msg_id);
    this.settles.delete(message.client_msg_id);
    const handle = this.handles.get(message.conversation_id);
    if (handle) handle.onAcked(message, ack, settle);
    else settle?.resolve(storedFromAck(message, ack, this.userId));
  }

  private onFailed(message: PendingMessage, error: ConfabError): void {
    this.settles.get(message.client_msg_id)?.reject(error);
    this.settles.delete(message.client_msg_id);
  }
}
