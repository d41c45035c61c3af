//! A connection's session, whatever its transport: it turns each client
//! frame into a chat call and answers it, keeps the connection's deadlines
//! (a silent peer, the token's expiry, a typer's lapse) and leaves the hub
//! when the connection ends. A transport hands it frames through `Inbound`
//! and writes what it queues on the hub's connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use opentelemetry::trace::SpanContext;
use opentelemetry::KeyValue;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use super::Context;
use crate::auth::Identity;
use crate::chat::{Bucket, Changed, Outgoing, Page, PendingSend, Sent};
use crate::error::ChatError;
use crate::hub::Conn;
use crate::model::{ChangeRequest, CloseReason, ConversationId};
use crate::protocol::{self, Ack, ClientFrame, ClientLimits, ServerFrame};
use crate::telemetry;

/// Most sends of one connection queued for storing at once; beyond it, the
/// connection's next frame waits for the oldest.
const MAX_SENDS_IN_FLIGHT: usize = 32;
/// How long a client whose POSTed frames were dropped is asked to wait.
const POSTS_DROPPED_RETRY_MS: u64 = 250;

/// What a transport's input gives the session next.
pub enum Input {
    /// A client frame's text.
    Frame(Utf8Bytes),
    /// A socket's ping: answered with a pong; a sign of life.
    Ping(Bytes),
    /// Any other sign of life (a socket's pong).
    Alive,
    /// Something that is not a frame of the protocol (a binary message).
    NotText,
    /// Frames POSTed while the connection's queue was full were dropped.
    Dropped,
    /// The client is gone (its close, or the connection's end); the node
    /// answers a socket's close with this.
    Gone(CloseReason),
    /// The input broke (bad framing): the node closes for this reason.
    Broken(CloseReason),
}

/// A transport's stream of client frames. `next` must be cancel-safe: the
/// session waits on it alongside its timers.
pub trait Frames: Send {
    fn next(&mut self) -> impl Future<Output = Input> + Send;
}

fn deadline_of(identity: &Identity) -> Instant {
    let left = (identity.expires_at - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// One authenticated connection's state.
pub struct Session {
    pub ctx: Arc<Context>,
    pub conn: Arc<Conn>,
    expires_at: Instant,
    /// Conversations this socket's user is typing in, and when that lapses.
    typing: HashMap<ConversationId, Instant>,
    frames: Bucket,
    /// Sends queued for storing, oldest first; each is acknowledged in
    /// turn once stored and published.
    sends: VecDeque<InFlight>,
    /// Silence after which the peer counts as dead (none: the transport
    /// tells a dead peer itself).
    idle_timeout: Option<Duration>,
    /// The connection's span, which each frame's trace links to.
    conn_span: SpanContext,
}

/// How a session's reading ended.
pub enum Ending {
    /// The client closed, or the connection ended: nothing more to read.
    PeerClosed,
    /// The node closed the socket for this reason; the client's close frame
    /// is still to come.
    NodeClosed(CloseReason),
}

impl Session {
    /// Registers nothing itself: `conn` is registered already. Records the
    /// user in the users directory and answers `auth_success`, which every
    /// connection gets first: the one place where a connection of either
    /// transport becomes authenticated.
    pub async fn open(
        ctx: Arc<Context>,
        conn: Arc<Conn>,
        identity: &Identity,
        idle_timeout: Option<Duration>,
        conn_span: &tracing::Span,
    ) -> Session {
        let session = Session {
            frames: Bucket::full(ctx.settings.limits.frame_burst),
            ctx,
            conn,
            expires_at: deadline_of(identity),
            typing: HashMap::new(),
            sends: VecDeque::new(),
            idle_timeout,
            conn_span: telemetry::span_context(conn_span),
        };
        session
            .ctx
            .users
            .seen(&identity.user_id, identity.name.as_deref());
        session.reply(session.auth_success(identity, None)).await;
        session
    }

    /// `auth_success` for `identity`, answering `reply_to` (a renewal).
    fn auth_success(&self, identity: &Identity, reply_to: Option<String>) -> ServerFrame {
        let limits = &self.ctx.settings.limits;
        ServerFrame::AuthSuccess {
            user_id: identity.user_id.clone(),
            connection_id: self.conn.id,
            expires_at: identity.expires_at,
            node_id: self.ctx.node_id.clone(),
            name: identity.name.clone(),
            limits: ClientLimits {
                max_message_chars: limits.max_message_chars,
                max_frame_bytes: limits.max_frame_bytes,
            },
            reply_to,
        }
    }

    /// Handles frames until the connection closes.
    pub async fn read(&mut self, input: &mut impl Frames) -> Ending {
        let mut alive_until = self.alive_from_now();
        loop {
            // One timer for the three deadlines (a dead peer, the token's
            // expiry, a typer's lapse): it is re-armed after every frame,
            // and each armed timer is part of every idle socket's memory.
            let mut deadline = alive_until.min(self.expires_at);
            if let Some(typing_due) = self.typing.values().min() {
                deadline = deadline.min(*typing_due);
            }
            let conn = self.conn.clone();
            tokio::select! {
                biased;
                _ = conn.closed() => return self.node_closed(),
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if now >= alive_until {
                        self.conn.close(CloseReason::DeadPeer);
                        return self.node_closed();
                    }
                    if now >= self.expires_at {
                        self.expire();
                        return self.node_closed();
                    }
                    Box::pin(self.expire_typing()).await
                }
                sent = next_sent(&mut self.sends) => Box::pin(self.finish_send(sent)).await,
                next = input.next() => match next {
                    Input::Frame(text) => {
                        let span = self.frame_span();
                        // Boxed: handling a frame needs a large future (store,
                        // bus, chat calls); kept inline it would be part of
                        // every idle socket's task for its whole life. The
                        // token's expiry holds while a frame waits, on the
                        // store or for room in the queue.
                        // (Built inside the box: a frame's future bound
                        // to a local would stay part of the reader's.)
                        let expires_at = self.expires_at;
                        let handled = Box::pin(tokio::time::timeout_at(
                            expires_at,
                            self.handle(&text).instrument(span),
                        ));
                        if handled.await.is_err() {
                            self.expire();
                            return self.node_closed();
                        }
                        // Nothing was read while the frame was handled (a
                        // long replay, say): the peer's silence counts from
                        // now, not from when the frame arrived.
                        alive_until = self.alive_from_now();
                    }
                    Input::NotText => {
                        let err = ChatError::InvalidFrame("binary frames are not part of the protocol".into());
                        Box::pin(self.reply(ServerFrame::error(&err, None))).await;
                    }
                    Input::Dropped => {
                        let err = ChatError::RateLimited { retry_after_ms: POSTS_DROPPED_RETRY_MS };
                        Box::pin(self.reply(ServerFrame::error(&err, None))).await;
                    }
                    Input::Ping(payload) => {
                        alive_until = self.alive_from_now();
                        self.conn.pong(payload);
                    }
                    Input::Alive => alive_until = self.alive_from_now(),
                    Input::Gone(reason) => {
                        self.conn.close(reason);
                        return Ending::PeerClosed;
                    }
                    Input::Broken(reason) => {
                        self.conn.close(reason);
                        return self.node_closed();
                    }
                },
            }
        }
    }

    /// Until when the peer counts as alive, from now (the idle timeout's
    /// deadline; far enough to never come for a transport without one).
    fn alive_from_now(&self) -> Instant {
        let never = Duration::from_secs(86_400 * 365);
        Instant::now() + self.idle_timeout.unwrap_or(never)
    }

    /// The node closed the connection (the first reason given wins).
    fn node_closed(&self) -> Ending {
        Ending::NodeClosed(self.conn.close_reason().unwrap_or(CloseReason::Normal))
    }

    /// The token expired without renewal: TOKEN_EXPIRED, then close 4003.
    fn expire(&self) {
        let error =
            ServerFrame::closing(&ChatError::TokenExpired, CloseReason::TokenExpired).encode();
        self.conn.push_before_close(error.into());
        self.conn.close(CloseReason::TokenExpired);
    }

    /// A `ws.frame` span (the name is the same on every transport). A
    /// connection may live for hours, so each frame is the root of a trace
    /// of its own, linked to the connection's span (its logs still show
    /// the connection's fields).
    fn frame_span(&self) -> tracing::Span {
        let span = tracing::info_span!("ws.frame", frame.type = tracing::field::Empty);
        telemetry::set_root_linked(&span, &self.conn_span, || {
            vec![
                KeyValue::new("connection_id", self.conn.id.to_string()),
                KeyValue::new("user_id", self.conn.user.to_string()),
            ]
        });
        span
    }

    async fn handle(&mut self, text: &str) {
        let (id, frame) = match protocol::decode(text) {
            Ok(decoded) => decoded,
            Err(e) => {
                // Answered in turn, after the sends before it.
                self.finish_sends().await;
                self.reply(ServerFrame::error(&e.error, e.id)).await;
                return;
            }
        };
        tracing::Span::current().record("frame.type", frame.kind());
        self.ctx
            .metrics
            .frames_in
            .with_label_values(&[frame.kind()])
            .inc();
        let is_send = matches!(frame, ClientFrame::Send(_));
        if !is_send {
            // Only consecutive sends overlap: any other frame sees every send
            // before it stored, published and acknowledged (a stream request
            // answers the message just sent, a join replays it).
            self.finish_sends().await;
            let limits = &self.ctx.settings.limits;
            if let Err(retry_after_ms) = self
                .frames
                .take(limits.frame_rate_per_sec, limits.frame_burst)
            {
                self.ctx.metrics.rate_limited.inc();
                let err = ChatError::RateLimited { retry_after_ms };
                self.reply(ServerFrame::error(&err, id)).await;
                return;
            }
        }
        if let Err(err) = self.dispatch(id.clone(), frame).await {
            self.reply(ServerFrame::error(&err, id)).await;
        }
    }

    async fn dispatch(&mut self, id: Option<String>, frame: ClientFrame) -> Result<(), ChatError> {
        let chat = self.ctx.chat.clone();
        let user = self.conn.user.clone();
        match frame {
            ClientFrame::Auth { token } => {
                let identity = self.ctx.auth.verify(&token)?;
                if identity.user_id != user {
                    return Err(ChatError::AuthFailed(
                        "a renewed token must be for the same user".into(),
                    ));
                }
                self.expires_at = deadline_of(&identity);
                // Recorded as at sign-in: written only if the token's name
                // changed, or this node has not written the user in an hour.
                self.ctx
                    .users
                    .seen(&identity.user_id, identity.name.as_deref());
                self.reply(self.auth_success(&identity, id)).await;
            }
            ClientFrame::Join(join) => {
                chat.join(&self.conn, join.conversation_id, join.since_seq, id)
                    .await?;
            }
            ClientFrame::Leave(leave) => {
                self.stop_typing(leave.conversation_id).await;
                chat.leave(&self.conn, leave.conversation_id).await;
                self.reply(ServerFrame::Left {
                    conversation_id: leave.conversation_id,
                    reply_to: id,
                })
                .await;
            }
            ClientFrame::Send(send) => {
                // Sends are pipelined: the next frame is read while this one
                // is stored, up to a bound, and acknowledged in order.
                if self.sends.len() >= MAX_SENDS_IN_FLIGHT {
                    let oldest = next_sent(&mut self.sends).await;
                    self.finish_send(oldest).await;
                }
                let conv = send.conversation_id;
                let outgoing = Outgoing {
                    content: send.content,
                    message_type: send.message_type,
                    client_msg_id: send.client_msg_id,
                    reply_to: send.reply_to,
                    attachment_ids: send.attachment_ids,
                };
                let pending = chat.submit(&user, conv, outgoing).await?;
                self.sends.push_back(InFlight {
                    id,
                    conv,
                    pending,
                    span: tracing::Span::current(),
                });
            }
            ClientFrame::Typing(typing) => {
                let conv = typing.conversation_id;
                if typing.is_typing {
                    if !self.typing.contains_key(&conv) {
                        chat.typing(&self.conn, conv, true).await?;
                    }
                    let ttl = self.ctx.settings.limits.typing_ttl();
                    self.typing.insert(conv, Instant::now() + ttl);
                } else if self.typing.contains_key(&conv) {
                    chat.typing(&self.conn, conv, false).await?;
                    self.typing.remove(&conv);
                }
                self.ack(id).await;
            }
            ClientFrame::LoadMessages(load) => {
                let conv = load.conversation_id;
                let page = Page {
                    before: load.before_seq,
                    after: load.after_seq,
                    limit: load.limit,
                };
                // The largest page counts against the socket's budget before
                // it is read: a client that does not read its replies is
                // closed (4009) instead of making the node hold pages.
                let largest = self.ctx.settings.limits.history_page_max_bytes;
                let Some(reserved) = self.conn.reserve(largest) else {
                    return Ok(());
                };
                let (messages, has_more) = chat.history(&user, conv, page).await?;
                drop(reserved);
                self.reply(ServerFrame::Messages {
                    conversation_id: conv,
                    messages,
                    has_more,
                    reply_to: id,
                })
                .await;
            }
            ClientFrame::MarkRead(read) => {
                chat.mark_read(&user, read.conversation_id, read.seq)
                    .await?;
                self.ack(id).await;
            }
            ClientFrame::Ping(data) => self.reply(ServerFrame::pong(data, id)).await,
            ClientFrame::StreamResponse(req) => {
                let stream_id = chat
                    .stream_response(&user, req.conversation_id, req.message_id, req.assistant_id)
                    .await?;
                if let Some(reply_to) = id {
                    self.reply(ServerFrame::Ack(Ack {
                        reply_to,
                        stream_id: Some(stream_id),
                        ..Ack::default()
                    }))
                    .await;
                }
            }
            ClientFrame::CancelStream(req) => {
                chat.cancel_stream(&user, req.stream_id).await?;
                self.ack(id).await;
            }
            ClientFrame::Edit(edit) => {
                let request = ChangeRequest::Edit {
                    content: edit.content,
                };
                let changed = chat
                    .change(&user, edit.conversation_id, edit.message_id, request)
                    .await?;
                self.ack_change(id, &changed).await;
            }
            ClientFrame::Delete(delete) => {
                let changed = chat
                    .change(
                        &user,
                        delete.conversation_id,
                        delete.message_id,
                        ChangeRequest::Delete,
                    )
                    .await?;
                self.ack_change(id, &changed).await;
            }
            ClientFrame::Presence(of) => {
                let users = chat.presence(&user, of.conversation_id).await?;
                self.reply(ServerFrame::Presence {
                    conversation_id: of.conversation_id,
                    users,
                    reply_to: id,
                })
                .await;
            }
            ClientFrame::React(react, add) => {
                let request = ChangeRequest::React {
                    emoji: react.emoji,
                    add,
                };
                let changed = chat
                    .change(&user, react.conversation_id, react.message_id, request)
                    .await?;
                self.ack_change(id, &changed).await;
            }
        }
        Ok(())
    }

    /// Finishes every send in flight, oldest first.
    async fn finish_sends(&mut self) {
        while !self.sends.is_empty() {
            let sent = next_sent(&mut self.sends).await;
            self.finish_send(sent).await;
        }
    }

    /// Publishes a stored send and answers it, in the send's frame span.
    async fn finish_send(&mut self, finished: Box<(InFlight, Sent)>) {
        let (sent, done) = *finished;
        let InFlight { id, conv, span, .. } = sent;
        async {
            match self.ctx.chat.publish_sent(done).await {
                Ok(appended) => {
                    // A sent message ends the sender's typing in that conversation.
                    self.stop_typing(conv).await;
                    if let Some(reply_to) = id {
                        self.reply(ServerFrame::Ack(Ack {
                            reply_to,
                            message_id: Some(appended.message.id),
                            seq: Some(appended.message.seq),
                            duplicate: Some(appended.duplicate),
                            ..Ack::default()
                        }))
                        .await;
                    }
                }
                Err(err) => self.reply(ServerFrame::error(&err, id)).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Queues a reply. The frame is encoded before the first await, so a
    /// waiting reply holds its bytes rather than the (much larger) frame.
    fn reply(&self, frame: ServerFrame) -> impl Future<Output = ()> + '_ {
        let encoded = frame.encode();
        async move {
            self.conn.send(encoded.into()).await;
        }
    }

    async fn ack(&self, id: Option<String>) {
        if let Some(reply_to) = id {
            self.reply(ServerFrame::Ack(Ack {
                reply_to,
                ..Ack::default()
            }))
            .await;
        }
    }

    /// Acknowledges a change with the message it is about and its seq
    /// (none when it changed nothing).
    async fn ack_change(&self, id: Option<String>, changed: &Changed) {
        if let Some(reply_to) = id {
            self.reply(ServerFrame::Ack(Ack {
                reply_to,
                message_id: Some(changed.message().id),
                seq: changed.seq(),
                ..Ack::default()
            }))
            .await;
        }
    }

    async fn stop_typing(&mut self, conv: ConversationId) {
        if self.typing.remove(&conv).is_some() {
            self.ctx.chat.stop_typing(&self.conn, conv).await;
        }
    }

    async fn expire_typing(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .typing
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(c, _)| *c)
            .collect();
        for conv in due {
            self.stop_typing(conv).await;
        }
    }

    /// The connection is gone: typers stop, rooms and the user topic are left.
    pub async fn finish(&mut self) {
        // Sends already queued are stored whatever happens; publish them so
        // no one misses them live.
        self.finish_sends().await;
        let convs: Vec<_> = self.typing.keys().copied().collect();
        for conv in convs {
            self.stop_typing(conv).await;
        }
        self.ctx.hub.unregister(&self.conn).await;
    }
}

/// A send of this socket on its way to the store.
struct InFlight {
    id: Option<String>,
    conv: ConversationId,
    pending: PendingSend,
    /// The frame's span: publishing and the ack belong to its trace.
    span: tracing::Span,
}

/// Waits for the oldest send to be stored and takes it off the queue; never
/// completes while the queue is empty. Cancel-safe: the send leaves the
/// queue only when it completes.
async fn next_sent(sends: &mut VecDeque<InFlight>) -> Box<(InFlight, Sent)> {
    let Some(oldest) = sends.front_mut() else {
        return std::future::pending().await;
    };
    let done = (&mut oldest.pending).await;
    // The queue was not empty a moment ago and only this task touches it.
    let sent = sends.pop_front().expect("the oldest send is still queued");
    Box::new((sent, done))
}
