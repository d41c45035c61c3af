// Wire types: what confab sends and takes (docs/protocol.md), field names as
// on the wire. Nothing here has behaviour.

/** Who wrote a message: a participant (`user`), or an assistant answering. */
export type MessageType = 'user' | 'assistant' | 'system';

/** One emoji's reactions on a message. */
export interface Reaction {
  emoji: string;
  /** How many users reacted with it. */
  count: number;
  /** The first 20 reactors, oldest first. */
  user_ids: string[];
}

/** A stored message, in its current state (edits, deletion and reactions folded in). */
export interface Message {
  /** A UUID (v7). */
  id: string;
  conversation_id: string;
  /** The message's own log entry: it never changes. */
  seq: number;
  sender_id: string;
  message_type: MessageType;
  /** `""` once deleted. */
  content: string;
  /** The sender's idempotency key, when it gave one. */
  client_msg_id?: string;
  /** Assistant answers: `{assistant_id, model, finish_reason, usage, stream_id, reply_to, requested_by, citations?}`. */
  metadata?: Record<string, unknown>;
  /** RFC 3339, UTC. */
  created_at: string;
  /** The id of the message it answers. */
  reply_to?: string;
  /** Always empty until attachments land. */
  attachments: unknown[];
  /** Ordered by each emoji's first reaction. */
  reactions: Reaction[];
  /** When its content last changed. */
  edited_at?: string;
  /** Deleted: `content` is empty, `reactions` and `attachments` too. */
  deleted: boolean;
}

/** One message found by {@link Client.search}. */
export interface SearchResult {
  /** The conversation holding the message (one of the caller's, now). */
  conversation_id: string;
  /** The message in its current state (never a deleted one). */
  message: Message;
  /** Plain text of the message's content around the match: render it as text, never as HTML. */
  snippet: string;
}

/** A page of {@link Client.search} results, best match first. */
export interface SearchPage {
  results: SearchResult[];
  /** Present when more results follow: pass it as `cursor` for the next page. */
  next_cursor?: string;
}

/** The kind of change a `message_updated` entry made. */
export type ChangeKind = 'edited' | 'deleted' | 'reaction_added' | 'reaction_removed';

/** What a `message_updated` entry did, and who did it. */
export interface MessageChange {
  /** What happened. */
  kind: ChangeKind;
  /** The user who made the change. */
  by: string;
  /** The reaction kinds only. */
  emoji?: string;
}

/** A conversation as the REST API and `conversation_updated` describe it. */
export interface ConversationInfo {
  id: string;
  /** Absent until named. */
  title?: string;
  /** The one participant who archives and removes anyone. */
  owner_id: string;
  /** User ids. */
  participants: string[];
  /** The assistant that answers every user message, if the conversation has one. */
  assistant_id?: string;
  /** Archived: readable, not writable, no longer listed. */
  archived: boolean;
  /** The conversation's latest log seq. */
  last_seq: number;
  /** How far the caller has read (listings and answers for the caller only). */
  last_read_seq?: number;
  /** The caller's unread messages (listings only). */
  unread_count?: number;
  created_at: string;
  updated_at: string;
}

/** Why a `conversation_updated` frame was sent. */
export type ConversationUpdateReason =
  | 'created'
  | 'participant_added'
  | 'participant_removed'
  | 'renamed'
  | 'archived'
  | 'owner_changed';

/** Token counts of an assistant answer. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** The node's limits, told in `auth_success`. */
export interface ClientLimits {
  /** A message's length, in Unicode characters. */
  max_message_chars: number;
  /** A client frame (or a POST's body), in bytes. */
  max_frame_bytes: number;
}

/** `auth_success`: the connection is authenticated (or, with `ref`, renewed). */
export interface AuthSuccessData {
  user_id: string;
  connection_id: string;
  /** When the token expires, RFC 3339. */
  expires_at: string;
  /** The node holding the connection. */
  node_id?: string;
  /** The token's `name` claim. */
  name?: string;
  limits?: ClientLimits;
  ref?: string;
}

/** `joined`: the answer to `join_conversation`. */
export interface JoinedData {
  conversation_id: string;
  /** The last seq this node had delivered when the connection joined. */
  last_seq: number;
  participants: string[];
  ref?: string;
}

/** `messages`: a history page, oldest first. */
export interface MessagesData {
  conversation_id: string;
  messages: Message[];
  has_more: boolean;
  ref?: string;
}

/** `message_updated`: a change of a message, at its own log seq. */
export interface MessageUpdatedData {
  conversation_id: string;
  seq: number;
  change: MessageChange;
  /** The message's state after the change (its current state in a replay). */
  message: Message;
}

/** `typing_indicator`. */
export interface TypingData {
  conversation_id: string;
  user_id: string;
  is_typing: boolean;
}

/** `read_receipt`: a user's read mark moved. */
export interface ReadReceiptData {
  conversation_id: string;
  user_id: string;
  seq: number;
}

/** `presence`: the answer to `presence`, the present participants, sorted. */
export interface PresenceData {
  conversation_id: string;
  users: string[];
  ref?: string;
}

/** `presence_changed`. */
export interface PresenceChangedData {
  conversation_id: string;
  user_id: string;
  present: boolean;
}

/** What every stream frame carries. */
export interface StreamFrameData {
  stream_id: string;
  conversation_id: string;
  /** The id the answer will be stored under (not on `stream_error`). */
  message_id?: string;
}

/** `stream_queued`: the request waits in its assistant's queue. */
export interface StreamQueuedData extends StreamFrameData {
  reply_to: string;
  assistant_id: string;
  /** From 1 (next to run). */
  position: number;
}

/** `stream_start`: the answer is being written. */
export interface StreamStartData extends StreamFrameData {
  reply_to: string;
  assistant_id: string;
}

/** `stream_snapshot`: the text of pieces 0 to `index`, for a connection that joined mid-answer. */
export interface StreamSnapshotData extends StreamFrameData {
  content: string;
  index: number;
}

/** `stream_content`: one more piece of the answer. */
export interface StreamContentData extends StreamFrameData {
  /** The new text only. */
  content: string;
  /** 0, 1, 2, ... per stream. */
  index: number;
  is_complete: boolean;
}

/** `stream_complete`: the answer ended. */
export interface StreamCompleteData extends StreamFrameData {
  /** The stored answer; absent when nothing was produced. */
  message?: Message;
  usage: Usage;
  /** The provider's (`stop`, `length`, ...), or `cancelled`. */
  finish_reason: string;
}

/** `stream_error`: the answer failed. */
export interface StreamErrorData extends StreamFrameData {
  code: string;
  message: string;
  retry_after_ms?: number;
}

/** `conversation_updated`. */
export interface ConversationUpdatedData {
  conversation: ConversationInfo;
  reason: ConversationUpdateReason;
}

/** `ack`: a request's `ref` plus what it produced. */
export interface AckData {
  ref: string;
  message_id?: string;
  seq?: number;
  duplicate?: boolean;
  stream_id?: string;
}

/** `error`. */
export interface ErrorData {
  code: string;
  message: string;
  ref?: string;
  retry_after_ms?: number;
  /** On the last frame of an HTTP event stream (and before a 4003 close): the WebSocket close code. */
  close_code?: number;
}

/** Every frame a node sends, by `type`. */
export type ServerFrame =
  | { type: 'auth_success'; data: AuthSuccessData }
  | { type: 'joined'; data: JoinedData }
  | { type: 'left'; data: { conversation_id: string; ref?: string } }
  | { type: 'message_received'; data: { message: Message } }
  | { type: 'message_updated'; data: MessageUpdatedData }
  | { type: 'messages'; data: MessagesData }
  | { type: 'typing_indicator'; data: TypingData }
  | { type: 'conversation_updated'; data: ConversationUpdatedData }
  | { type: 'read_receipt'; data: ReadReceiptData }
  | { type: 'stream_queued'; data: StreamQueuedData }
  | { type: 'stream_start'; data: StreamStartData }
  | { type: 'stream_snapshot'; data: StreamSnapshotData }
  | { type: 'stream_content'; data: StreamContentData }
  | { type: 'stream_complete'; data: StreamCompleteData }
  | { type: 'stream_error'; data: StreamErrorData }
  | { type: 'presence'; data: PresenceData }
  | { type: 'presence_changed'; data: PresenceChangedData }
  | { type: 'ack'; data: AckData }
  | { type: 'pong'; data: Record<string, unknown> }
  | { type: 'error'; data: ErrorData };

/** A frame the client sends: `{type, id?, data?}` (`auth` carries `token` at the top level). */
export interface ClientFrame {
  type: string;
  /** Asks for exactly one reply whose `data.ref` is this id. */
  id?: string;
  data?: object;
  /** `auth` only. */
  token?: string;
}

/**
 * Reads one frame's JSON text: an object with a string `type` (and an object
 * `data`, `{}` when absent), else null. Field shapes are the server's contract.
 */
export function parseFrame(text: unknown): ServerFrame | null {
  if (typeof text !== 'string') return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObject(value) || typeof value.type !== 'string') return null;
  const data = value.data === undefined ? {} : value.data;
  if (!isObject(data)) return null;
  return { type: value.type, data } as ServerFrame;
}

/** A plain JSON object (not null, not an array). */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
