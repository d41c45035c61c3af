// The client: one connection, one outbox, the conversation handles, REST.
import { Connection } from './connection.js';
import { ConversationHandle, storedFromAck, } from './conversation.js';
import { Emitter } from './emitter.js';
import { ConfabError } from './errors.js';
import { indexedDbOutbox, memoryOutbox, Outbox } from './outbox.js';
import { restCall } from './rest.js';
import { decodeToken } from './token.js';
const CHATS_PAGE = 200; // the most GET /chats gives
const MAX_CHAT_PAGES = 100;
const DEFAULT_MAX_CHARS = 8000;
/** Connects to confab: the first attempt starts at once. */
export function connect(options) {
    return new ConfabClient(options);
}
class ConfabClient {
    constructor(options) {
        this.options = options;
        this.emitter = new Emitter();
        this.handles = new Map();
        this.infos = new Map();
        this.settles = new Map();
        this.name = null;
        if (typeof options.url !== 'string')
            throw new TypeError('url must be a string ("" for the page\'s origin)');
        if (typeof options.token !== 'function')
            throw new TypeError('token must be a function returning a JWT');
        const backoffMinMs = options.backoff?.minMs ?? 500;
        const backoffMaxMs = options.backoff?.maxMs ?? 10000;
        this.connection = new Connection({
            url: options.url,
            token: async () => {
                const token = await options.token();
                this.name = (typeof token === 'string' && decodeToken(token)?.name) || this.name;
                return token;
            },
            transports: options.transports ?? ['websocket', 'http'],
            WebSocket: options.WebSocket ?? globalThis.WebSocket ?? null,
            backoffMinMs,
            backoffMaxMs,
            wsFailuresForHttp: options.wsFailuresForHttp ?? 3,
            wsRetryMs: options.wsRetryMs ?? 60000,
            requestTimeoutMs: options.requestTimeoutMs ?? 10000,
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
                if (this.handles.get(h.id) === h)
                    this.handles.delete(h.id);
            },
        };
        this.readied = new Promise((resolve, reject) => {
            const off = this.connection.events.on('status', (s) => {
                if (s.state === 'online')
                    resolve();
                else if (s.state === 'closed')
                    reject(s.lastError ?? new ConfabError('DISCONNECTED', 'the client is closed'));
                else
                    return;
                off();
            });
        });
        this.readied.catch(() => undefined); // nobody asked: not an unhandled rejection
        this.wire();
        this.connection.start();
    }
    get status() {
        return this.connection.status;
    }
    get userId() {
        return this.connection.status.userId;
    }
    get displayName() {
        return this.name;
    }
    get outbox() {
        return this.queue.pending;
    }
    on(event, fn) {
        return this.emitter.on(event, fn);
    }
    ready() {
        return this.readied;
    }
    conversation(id, options = {}) {
        let handle = this.handles.get(id);
        if (!handle) {
            handle = new ConversationHandle(id, this.context, this.infos.get(id) ?? null, options.history);
            this.handles.set(id, handle);
        }
        return handle;
    }
    async listConversations() {
        const list = [];
        let cursor = null;
        for (let page = 0; page < MAX_CHAT_PAGES; page++) {
            const query = `?limit=${CHATS_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
            const { data, headers } = await this.restRaw('GET', `/api/v1/chat/chats${query}`);
            if (Array.isArray(data))
                list.push(...data);
            cursor = headers.get('confab-next-cursor');
            if (!cursor)
                break;
        }
        for (const info of list)
            this.learn(info);
        return list;
    }
    async createConversation(body) {
        const info = await this.rest('POST', '/api/v1/chat/chats', body);
        this.learn(info);
        return info;
    }
    async search(q, options = {}) {
        const params = new URLSearchParams({ q });
        if (options.conversationId !== undefined)
            params.set('conversation_id', options.conversationId);
        if (options.limit !== undefined)
            params.set('limit', String(options.limit));
        if (options.cursor !== undefined)
            params.set('cursor', options.cursor);
        const data = await this.rest('GET', `/api/v1/chat/search?${params}`);
        const page = { results: Array.isArray(data?.results) ? data.results : [] };
        if (typeof data?.next_cursor === 'string' && data.next_cursor)
            page.next_cursor = data.next_cursor;
        return page;
    }
    async rest(method, path, body) {
        return (await this.restRaw(method, path, body)).data;
    }
    async request(type, data) {
        await this.connection.whenOnline();
        return (await this.connection.request(type, data));
    }
    close() {
        this.connection.close();
        this.queue.close();
        for (const h of [...this.handles.values()])
            h.close();
        const closed = new ConfabError('DISCONNECTED', 'the client was closed; the message stays in the outbox store');
        for (const s of this.settles.values())
            s.reject(closed);
        this.settles.clear();
    }
    // ---------------------------------------------------------------- inside
    wire() {
        const events = this.connection.events;
        events.on('status', (s) => {
            if (s.userId !== null)
                void this.queue.open(s.userId);
            this.emitter.emit('status', s);
        });
        events.on('session', (d) => {
            this.name ?? (this.name = d.name ?? null);
            this.queue.flush();
            for (const h of [...this.handles.values()])
                h.onSession();
        });
        events.on('lost', () => {
            for (const h of [...this.handles.values()])
                h.onLost();
        });
        events.on('frame', (frame) => {
            this.route(frame);
            this.emitter.emit('frame', frame);
        });
        events.on('error', (e) => this.emitter.emit('error', e));
    }
    /** A frame to the conversation it is about; conversation_updated to everyone. */
    route(frame) {
        if (frame.type === 'conversation_updated') {
            const { conversation, reason } = frame.data;
            this.learn(conversation);
            this.emitter.emit('conversation', conversation, reason);
            return;
        }
        const id = frame.type === 'message_received'
            ? frame.data.message?.conversation_id
            : frame.data.conversation_id;
        if (typeof id === 'string')
            this.handles.get(id)?.onFrame(frame);
    }
    learn(info) {
        this.infos.set(info.id, info);
        this.handles.get(info.id)?.setInfo(info);
    }
    async restRaw(method, path, body) {
        const token = await this.connection.currentToken();
        try {
            return await restCall(this.options.url, token, method, path, body);
        }
        catch (e) {
            if (!(e instanceof ConfabError) || e.status !== 401)
                throw e;
            // Expired or refused: a fresh token once.
            return restCall(this.options.url, await this.connection.freshToken(), method, path, body);
        }
    }
    queueMessage(message) {
        return new Promise((resolve, reject) => {
            this.settles.set(message.client_msg_id, { resolve, reject });
            this.queue.add(message);
        });
    }
    async sendMessage(m) {
        const reply = await this.connection.request('send_message', {
            conversation_id: m.conversation_id,
            content: m.content,
            client_msg_id: m.client_msg_id,
            ...(m.reply_to ? { reply_to: m.reply_to } : {}),
        });
        return { message_id: String(reply.message_id), seq: Number(reply.seq), duplicate: reply.duplicate === true };
    }
    onAcked(message, ack) {
        const settle = this.settles.get(message.client_msg_id);
        this.settles.delete(message.client_msg_id);
        const handle = this.handles.get(message.conversation_id);
        if (handle)
            handle.onAcked(message, ack, settle);
        else
            settle?.resolve(storedFromAck(message, ack, this.userId));
    }
    onFailed(message, error) {
        this.settles.get(message.client_msg_id)?.reject(error);
        this.settles.delete(message.client_msg_id);
    }
}
