// Assistant answers being written, assembled from stream frames, sans IO.
//
// An answer is queued (stream_queued, with its position), running
// (stream_start, then its text) or failed (stream_error: it stays, saying
// why, until dismissed). Its text is a stream_snapshot (pieces 0..index, for
// a connection that joined mid-answer) followed by the later stream_content
// pieces in index order; a piece at or below the applied index is a
// duplicate, one beyond the next waits for the pieces before it. A completed
// answer leaves the list: its message arrives as a stored message.

import { ConfabError, type ErrorCode } from './errors.js';
import type {
  StreamCompleteData,
  StreamContentData,
  StreamErrorData,
  StreamFrameData,
  StreamQueuedData,
  StreamSnapshotData,
  StreamStartData,
} from './types.js';

/** An assistant answer waiting, being written, or failed. */
export interface AssistantStream {
  /** The id `stream_response` answered with (what `Conversation.cancel` takes). */
  stream_id: string;
  /** The id the answer will be stored under. */
  message_id?: string;
  /** The message it answers. */
  reply_to?: string;
  /** The assistant writing it. */
  assistant_id?: string;
  /**
   * `queued` (with `position`), `running` (`text` grows), `failed` (`error`
   * set; stays until dismissed). Completed answers leave the list: their
   * message arrives in `messages`.
   */
  phase: 'queued' | 'running' | 'failed';
  /** While queued: from 1 (next to run). */
  position?: number;
  /** Pieces 0..index concatenated (a snapshot, then later pieces). */
  text: string;
  /** The last piece applied, -1 before any. */
  index: number;
  /** Why it failed (`phase` failed). */
  error?: ConfabError;
}

interface StreamState {
  id: string;
  messageId?: string;
  replyTo?: string;
  assistantId?: string;
  phase: AssistantStream['phase'];
  position?: number;
  started: boolean; // stream_start or text seen: never queued again
  text: string;
  index: number;
  pieces: Map<number, string>; // pieces after index + 1, waiting for the ones before
  error?: ConfabError;
  stale: boolean; // not confirmed since the conversation was joined again
  view: AssistantStream;
}

type End = 'completed' | 'failed' | 'stored';

const ENDS_KEPT = 1000; // ended stream ids remembered, so late frames do not bring them back

/** The answers of one conversation, built from its stream frames. */
export class StreamAssembler {
  private readonly streams = new Map<string, StreamState>();
  private readonly ends = new Map<string, End>();
  private listed: readonly AssistantStream[] | null = null;

  /** The answers, in the order first seen. The same array until something changes. */
  list(): readonly AssistantStream[] {
    if (!this.listed) this.listed = [...this.streams.values()].map((s) => s.view);
    return this.listed;
  }

  /** `stream_queued`: waiting at `position` (never after it started or failed). */
  queued(d: StreamQueuedData): boolean {
    const s = this.live(d);
    if (!s || s.started || s.phase === 'failed') return false;
    s.phase = 'queued';
    s.position = Number.isInteger(d.position) && d.position > 0 ? d.position : undefined;
    return this.changed(s);
  }

  /** `stream_start`: running. */
  start(d: StreamStartData): boolean {
    const s = this.live(d);
    if (!s || s.phase === 'failed') return false;
    this.running(s);
    return this.changed(s);
  }

  /** `stream_snapshot`: the text of pieces 0..index, replacing what is held if it is not behind. */
  snapshot(d: StreamSnapshotData): boolean {
    const s = this.live(d);
    if (!s || s.phase === 'failed' || !Number.isInteger(d.index) || d.index < s.index) return false;
    s.text = typeof d.content === 'string' ? d.content : '';
    s.index = d.index;
    for (const i of s.pieces.keys()) if (i <= d.index) s.pieces.delete(i);
    this.assemble(s);
    this.running(s);
    return this.changed(s);
  }

  /** `stream_content`: one piece, applied in index order. */
  content(d: StreamContentData): boolean {
    const s = this.live(d);
    if (!s || s.phase === 'failed' || !Number.isInteger(d.index) || d.index <= s.index) return false;
    s.pieces.set(d.index, typeof d.content === 'string' ? d.content : '');
    this.assemble(s);
    this.running(s);
    return this.changed(s);
  }

  /** `stream_complete`: the answer leaves the list. */
  complete(d: StreamCompleteData): boolean {
    this.end(d.stream_id, 'completed');
    return this.remove(d.stream_id);
  }

  /**
   * `stream_error`: the answer fails and stays, saying why. A second error
   * for an answer that completed or failed already is nothing; one for an
   * answer whose (partial) message was stored shows as failed with no text.
   */
  error(d: StreamErrorData): boolean {
    const end = this.ends.get(d.stream_id);
    if (end === 'completed' || end === 'failed') return false;
    const s = this.streams.get(d.stream_id) ?? this.create(d);
    s.phase = 'failed';
    s.position = undefined;
    s.stale = false;
    s.error = new ConfabError(d.code as ErrorCode, String(d.message ?? d.code), {
      retryAfterMs: typeof d.retry_after_ms === 'number' ? d.retry_after_ms : undefined,
    });
    this.end(d.stream_id, 'failed');
    return this.changed(s);
  }

  /** The answer stored as `messageId` arrived: its stream (unless failed) leaves the list. */
  stored(messageId: string): boolean {
    for (const s of this.streams.values()) {
      if (s.messageId !== messageId || s.phase === 'failed') continue;
      this.end(s.id, 'stored');
      return this.remove(s.id);
    }
    return false;
  }

  /** Removes a failed answer. */
  dismiss(streamId: string): boolean {
    return this.streams.get(streamId)?.phase === 'failed' && this.remove(streamId);
  }

  /** Removes an answer that is not failed (a cancel found it gone). */
  drop(streamId: string): boolean {
    const s = this.streams.get(streamId);
    if (!s || s.phase === 'failed') return false;
    this.end(streamId, 'completed');
    return this.remove(streamId);
  }

  /** A join again: every answer not failed must be confirmed by the catch-up. True if there is any. */
  markStale(): boolean {
    let any = false;
    for (const s of this.streams.values()) {
      if (s.phase !== 'failed') any = s.stale = true;
    }
    return any;
  }

  /** Drops the answers the catch-up did not confirm (they ended unseen). True if any went. */
  sweepStale(): boolean {
    let any = false;
    for (const s of [...this.streams.values()]) {
      if (s.stale && s.phase !== 'failed') any = this.remove(s.id) || any;
    }
    return any;
  }

  /** The answer a queued/start/snapshot/content frame is about, created on first sight; null once ended. */
  private live(d: StreamFrameData & { reply_to?: string; assistant_id?: string }): StreamState | null {
    if (typeof d.stream_id !== 'string' || this.ends.has(d.stream_id)) return null;
    const s = this.streams.get(d.stream_id) ?? this.create(d);
    s.stale = false;
    s.messageId = d.message_id ?? s.messageId;
    s.replyTo = d.reply_to ?? s.replyTo;
    s.assistantId = d.assistant_id ?? s.assistantId;
    return s;
  }

  private create(d: StreamFrameData): StreamState {
    const s: StreamState = {
      id: d.stream_id,
      messageId: d.message_id,
      phase: 'running',
      started: false,
      text: '',
      index: -1,
      pieces: new Map(),
      stale: false,
      view: { stream_id: d.stream_id, phase: 'running', text: '', index: -1 },
    };
    this.streams.set(s.id, s);
    return s;
  }

  /** Into the running phase; true when that changed it. */
  private running(s: StreamState): boolean {
    s.started = true;
    if (s.phase === 'running') return false;
    s.phase = 'running';
    s.position = undefined;
    return true;
  }

  /** Appends the pieces that follow the applied index, in order. */
  private assemble(s: StreamState): void {
    for (let piece = s.pieces.get(s.index + 1); piece !== undefined; piece = s.pieces.get(s.index + 1)) {
      s.pieces.delete(s.index + 1);
      s.text += piece;
      s.index += 1;
    }
  }

  private end(streamId: string, how: End): void {
    this.ends.delete(streamId);
    this.ends.set(streamId, how);
    if (this.ends.size > ENDS_KEPT) this.ends.delete(this.ends.keys().next().value as string);
  }

  private remove(streamId: string): boolean {
    if (!this.streams.delete(streamId)) return false;
    this.listed = null;
    return true;
  }

  /** Rebuilds the answer's view (a new object: the list changed). */
  private changed(s: StreamState): true {
    const view: AssistantStream = { stream_id: s.id, phase: s.phase, text: s.text, index: s.index };
    if (s.messageId !== undefined) view.message_id = s.messageId;
    if (s.replyTo !== undefined) view.reply_to = s.replyTo;
    if (s.assistantId !== undefined) view.assistant_id = s.assistantId;
    if (s.position !== undefined) view.position = s.position;
    if (s.error !== undefined) view.error = s.error;
    s.view = view;
    this.listed = null;
    return true;
  }
}
