// A conversation's log, sans IO: frames in, state and events out.
//
// Seqs count log entries (docs/protocol.md, v1.1): a new message and every
// change of one (edit, deletion, reaction) take the next seq. Entries are
// applied strictly in seq order: `lastSeq` is the last seq up to which every
// entry is applied, so it is what a rejoin replays from (`since_seq`). An
// entry at or below it is a duplicate; one above `lastSeq + 1` waits until
// the gap fills.
//
// Message states carry a version: the log seq they are known to reflect at
// least. A state older than the one held loses (so a history page read
// before a change cannot undo it), and a deletion is final.
/**
 * The seq-ordered state of one conversation: messages in their current
 * state, the contiguous mark, read marks and the unread count. It does no
 * IO: feed it frames, read its state; the caller fetches what it says is missing.
 */
export class ConversationLog {
    /** A log for conversation `id`, read by `me`. */
    constructor(
    /** The conversation's id. */
    id, me = null) {
        this.id = id;
        /** The first join set the starting point; before it, entries wait. */
        this.based = false;
        /** Every entry up to here is applied. */
        this.lastSeq = 0;
        /** The highest seq known to exist (entries seen, `joined`, the conversation's `last_seq`). */
        this.knownSeq = 0;
        /** Messages at or below this seq are not loaded (0: everything is). */
        this.windowStart = 0;
        /** My read mark (a log seq). */
        this.readSeq = 0;
        /** Other users' read marks, as `read_receipt` told. */
        this.readBy = new Map();
        /** The server's unread `count` and the `last_seq` it was counted at (`asOf`), from a listing. */
        this.serverUnread = null;
        this.held = new Map(); // entries above lastSeq + 1
        this.states = new Map(); // message id -> state
        this.own = new Map(); // sender + client_msg_id -> message id
        this.sorted = null;
        this.me = me;
    }
    /** Entries wait for a gap to fill (the caller fetches it if it does not fill by itself). */
    get hasGap() {
        return this.based && this.knownSeq > this.lastSeq;
    }
    /** More history before the first loaded message. */
    get hasOlder() {
        return this.windowStart > 0;
    }
    /**
     * The first join's `joined.last_seq`: entries after it follow. Nothing at
     * or below it is loaded yet (a history page brings it).
     */
    setBase(lastSeq) {
        if (this.based)
            return [];
        this.based = true;
        this.lastSeq = Math.max(this.lastSeq, lastSeq);
        this.windowStart = Math.max(this.windowStart, lastSeq);
        this.noteKnown(lastSeq);
        this.sorted = null;
        return this.drain();
    }
    /** A seq known to exist (`joined.last_seq`, a conversation's `last_seq`). */
    noteKnown(seq) {
        if (seq > this.knownSeq)
            this.knownSeq = seq;
    }
    /** `message_received` (live or replayed; also `stream_complete.message`): its seq is its entry. */
    applyMessage(message) {
        return this.push({ seq: message.seq, message });
    }
    /** `message_updated`: a change at `seq`, with the message's state after it. */
    applyUpdate(seq, change, message) {
        return this.push({ seq, message, change });
    }
    /**
     * A history page (messages only, in their state when read; `asOf`: every
     * entry up to it is reflected, e.g. `lastSeq` when it was asked for).
     * Changes applied meanwhile with a higher seq stay (they are re-applied
     * over the page's older states). `hasMore`: older messages remain.
     */
    mergePage(messages, hasMore, asOf) {
        for (const m of messages)
            this.store(m, asOf);
        const start = hasMore && messages.length > 0 ? Math.min(...messages.map((m) => m.seq)) - 1 : 0;
        if (start < this.windowStart)
            this.windowStart = start;
        this.sorted = null;
    }
    /**
     * Keeps a message state known to reflect every entry up to `version`,
     * unless the one held is newer or deleted. True when it was kept.
     */
    store(message, version) {
        const old = this.states.get(message.id);
        if (old && ((old.message.deleted && !message.deleted) || old.version > version))
            return false;
        this.states.set(message.id, { message, version });
        if (message.client_msg_id)
            this.own.set(ownKey(message.sender_id, message.client_msg_id), message.id);
        this.sorted = null;
        return true;
    }
    /** A message by id, in its current state (loaded or not). */
    get(id) {
        return this.states.get(id)?.message;
    }
    /** The message `sender` stored with `clientMsgId`, if held. */
    findByClientMsgId(sender, clientMsgId) {
        const id = this.own.get(ownKey(sender, clientMsgId));
        return id === undefined ? undefined : this.get(id);
    }
    /** The loaded messages (above `windowStart`) in seq order. The same array until something changes. */
    messages() {
        if (!this.sorted) {
            this.sorted = [...this.states.values()]
                .map((h) => h.message)
                .filter((m) => m.seq > this.windowStart)
                .sort((a, b) => a.seq - b.seq);
        }
        return this.sorted;
    }
    /** A `read_receipt`: mine moves `readSeq` (never back), others' go to `readBy`. True if it changed anything. */
    readReceipt(userId, seq) {
        if (userId === this.me)
            return this.markRead(seq);
        if ((this.readBy.get(userId) ?? 0) >= seq)
            return false;
        this.readBy.set(userId, seq);
        return true;
    }
    /** Moves my read mark up to `seq`; false when it would not move. */
    markRead(seq) {
        if (seq <= this.readSeq)
            return false;
        this.readSeq = seq;
        return true;
    }
    /** Takes what a listing (or `conversation_updated`) says: last seq, read mark, unread count. */
    seed(info) {
        this.noteKnown(info.last_seq);
        if (typeof info.last_read_seq === 'number')
            this.markRead(info.last_read_seq);
        if (typeof info.unread_count === 'number')
            this.serverUnread = { count: info.unread_count, asOf: info.last_seq };
    }
    /**
     * Messages from others, not deleted, above my read mark: counted here when
     * the loaded window reaches down to the mark, else the server's count plus
     * those from others received since it was made.
     */
    get unread() {
        const counted = (above) => this.messages().filter((m) => m.seq > above && m.sender_id !== this.me && !m.deleted).length;
        const server = this.serverUnread;
        if (this.windowStart <= this.readSeq || !server || this.readSeq >= server.asOf)
            return counted(this.readSeq);
        return server.count + counted(server.asOf);
    }
    push(entry) {
        this.noteKnown(entry.seq);
        if (this.based && entry.seq <= this.lastSeq)
            return []; // a duplicate
        this.held.set(entry.seq, entry); // a replay of a held entry carries a newer state
        return this.drain();
    }
    /** Applies every held entry that follows `lastSeq`, in order; drops those it passed. */
    drain() {
        const events = [];
        if (!this.based)
            return events;
        for (const seq of this.held.keys())
            if (seq <= this.lastSeq)
                this.held.delete(seq);
        for (let next = this.held.get(this.lastSeq + 1); next; next = this.held.get(this.lastSeq + 1)) {
            this.held.delete(next.seq);
            this.lastSeq = next.seq;
            events.push(this.apply(next));
        }
        return events;
    }
    apply(entry) {
        const { seq, message, change } = entry;
        this.store(message, seq);
        if (change)
            return { type: 'update', seq, message, change };
        // The server moves a sender's read mark to their own message.
        if (message.sender_id === this.me && message.message_type === 'user')
            this.markRead(seq);
        return { type: 'message', message };
    }
}
function ownKey(sender, clientMsgId) {
    return `${sender}\n${clientMsgId}`;
}
