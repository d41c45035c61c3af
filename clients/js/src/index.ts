/**
 * `@confab/client`: the TypeScript client of confab, the realtime chat hub.
 *
 * {@link connect} opens one connection (WebSocket, or HTTP where proxies
 * refuse sockets) that authenticates, renews its token, reconnects and
 * resumes; {@link Client.conversation} follows a conversation and keeps its
 * messages, typing, presence, read marks and assistant answers as one
 * immutable snapshot; sends go through an outbox, exactly once.
 *
 * The sans-IO pieces ({@link ConversationLog}, {@link StreamAssembler},
 * {@link Outbox}, {@link backoffDelay}, {@link decodeToken}) are exported too,
 * for tests and custom clients.
 *
 * @packageDocumentation
 */

export { connect } from './client.js';
export type { Client, ClientEvents, ConnectOptions, CreateConversationBody, SearchOptions } from './client.js';
export type { ConnectionState, ConnectionStatus } from './connection.js';
export type {
  AskOptions,
  ChatMessage,
  Conversation,
  ConversationEvents,
  ConversationOptions,
  ConversationSnapshot,
  SendOptions,
  SendState,
} from './conversation.js';
export { ConfabError, isRetryable } from './errors.js';
export type { ClientErrorCode, ConfabErrorDetails, ErrorCode, ServerErrorCode } from './errors.js';
export { ConversationLog } from './log.js';
export type { LogEvent } from './log.js';
export { Outbox, indexedDbOutbox, memoryOutbox } from './outbox.js';
export type { OutboxEntry, OutboxOptions, OutboxStore, PendingMessage, SendAck } from './outbox.js';
export { StreamAssembler } from './streams.js';
export type { AssistantStream } from './streams.js';
export { decodeToken } from './token.js';
export type { TokenClaims } from './token.js';
export type { TransportKind, WebSocketConstructor, WebSocketLike } from './transport.js';
export type {
  AckData,
  AuthSuccessData,
  ChangeKind,
  ClientFrame,
  ClientLimits,
  ConversationInfo,
  ConversationUpdateReason,
  ConversationUpdatedData,
  ErrorData,
  JoinedData,
  Message,
  MessageChange,
  MessageType,
  MessageUpdatedData,
  MessagesData,
  PresenceChangedData,
  PresenceData,
  Reaction,
  ReadReceiptData,
  SearchPage,
  SearchResult,
  ServerFrame,
  StreamCompleteData,
  StreamContentData,
  StreamErrorData,
  StreamFrameData,
  StreamQueuedData,
  StreamSnapshotData,
  StreamStartData,
  TypingData,
  Usage,
} from './types.js';
export { backoffDelay } from './util.js';
