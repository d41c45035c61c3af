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
export { ConfabError, isRetryable } from './errors.js';
export { ConversationLog } from './log.js';
export { Outbox, indexedDbOutbox, memoryOutbox } from './outbox.js';
export { StreamAssembler } from './streams.js';
export { decodeToken } from './token.js';
export { backoffDelay } from './util.js';
