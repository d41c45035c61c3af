//! The use cases: create, list, join, send, history, typing, read,
//! participants, archive. The one place both `ws` and `http` call: it checks
//! membership and limits, stores, then publishes through `events`. Knows
//! nothing of transports or routes.
//!
//! - `access`: who may use a conversation (the membership rules).
//! - `events`: the one path of events out of the node.
//! - `assistants`: what the use cases ask of the assistants.
//! - `limits`: per-user rate limits.
//! - `users`: the users directory (who signed in, under which name).

mod access;
mod assistants;
mod events;
mod limits;
mod presence;
mod search;
mod usage;
mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

pub use crate::store::{Changed, ChatsPage, ListCursor};
pub use assistants::{Assistants, StartStream};
pub use events::{Events, StoredHistory};
pub use limits::{Bucket, UserRateLimiter};
pub use presence::PresenceTracker;
pub use users::{Users, MAX_LOOKUP};

use access::not_a_participant;

use crate::bus::StreamStep;
use crate::config::LimitSettings;
use crate::error::ChatError;
use crate::hub::{Conn, Hub};
use crate::metrics::Metrics;
use crate::model::{
    ChangeRequest, ClientMsgId, Conversation, ConversationId, Message, MessageId, MessageType,
    Refusal, Seq, StreamId, UpdateReason, UserId,
};
use crate::protocol::ServerFrame;
use crate::store::{Appended, ChangeOrder, NewMessage, Store, Submitted};

/// Longest conversation title, in characters.
const MAX_TITLE_CHARS: usize = 200;
/// Most conversations in one page of a listing.
const MAX_LISTED: u64 = 200;
/// Most participants named when creating a conversation.
const MAX_INITIAL_PARTICIPANTS: usize = 1000;

/// What `create` takes.
#[derive(Clone, Debug, Default)]
pub struct NewChat {
    pub title: Option<String>,
    pub participant_ids: Vec<UserId>,
    pub assistant_id: Option<String>,
}

/// A history page request: before or after a seq, at most `limit`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Page {
    pub before: Option<Seq>,
    pub after: Option<Seq>,
    pub limit: Option<u64>,
}

/// A message to send, from a socket or REST.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub content: String,
    pub message_type: Option<MessageType>,
    pub client_msg_id: Option<ClientMsgId>,
    pub reply_to: Option<MessageId>,
    pub attachment_ids: Vec<String>,
}

/// Most attachments named by one message.
const MAX_ATTACHMENTS: usize = 10;

/// A send queued for storing (see `Chat::submit`); completes as `Sent`.
pub struct PendingSend {
    stored: Submitted,
    finish: Option<SentBy>,
}

/// Who sent a message, and the conversation's assistant, for `publish_sent`.
struct SentBy {
    user: UserId,
    assistant_id: Option<String>,
}

/// A send whose storing is over, ready for `Chat::publish_sent`.
pub struct Sent {
    stored: Result<Option<Appended>, sea_orm::DbErr>,
    by: SentBy,
}

impl Future for PendingSend {
    type Output = Sent;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Sent> {
        let stored = ready!(Pin::new(&mut self.stored).poll(cx));
        // `finish` is taken once, when the store answers; a completed future
        // is not polled again.
        let by = self.finish.take().expect("a pending send completes once");
        Poll::Ready(Sent { stored, by })
    }
}

/// The use cases of one node.
pub struct Chat {
    store: Store,
    events: Arc<Events>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    limits: LimitSettings,
    sends: UserRateLimiter,
    assistants: Arc<dyn Assistants>,
    presence: Arc<PresenceTracker>,
    /// Access rules being loaded, shared by everyone who asks meanwhile.
    loading: access::Loading,
}

impl Chat {
    pub fn new(
        store: Store,
        events: Arc<Events>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        limits: LimitSettings,
        assistants: Arc<dyn Assistants>,
        presence: Arc<PresenceTracker>,
    ) -> Self {
        let sends = UserRateLimiter::new(limits.send_rate_per_sec, limits.send_burst);
        Self {
            store,
            events,
            hub,
            metrics,
            limits,
            sends,
            assistants,
            presence,
            loading: access::Loading::default(),
        }
    }

    pub fn limits(&self) -> &LimitSettings {
        &self.limits
    }

    // ------------------------------------------------------------ conversations

    /// Creates a conversation with `user` as owner; tells every participant.
    pub async fn create(&self, user: &UserId, new: NewChat) -> Result<Conversation, ChatError> {
        if let Some(title) = &new.title {
            if title.chars().count() > MAX_TITLE_CHARS {
                return Err(ChatError::InvalidFrame(format!(
                    "title is longer than {MAX_TITLE_CHARS} characters"
                )));
            }
        }
        if new.participant_ids.len() > MAX_INITIAL_PARTICIPANTS {
            return Err(ChatError::InvalidFrame(format!(
                "at most {MAX_INITIAL_PARTICIPANTS} participants at creation"
            )));
        }
        if let Some(a) = &new.assistant_id {
            if !self.assistants.has(a) {
                return Err(ChatError::InvalidFrame(format!(
                    "no assistant `{a}` is configured"
                )));
            }
        }
        let conv = self
            .store
            .create_chat(user, new.title, &new.participant_ids, new.assistant_id)
            .await?;
        self.events
            .conversation_changed(&conv, UpdateReason::Created, None)
            .await;
        Ok(conv)
    }

    /// A page of the user's conversations, newest activity first, with
    /// their unread counts; `cursor` continues a listing.
    pub async fn list(
        &self,
        user: &UserId,
        limit: Option<u64>,
        cursor: Option<&ListCursor>,
    ) -> Result<ChatsPage, ChatError> {
        let limit = limit.unwrap_or(50).clamp(1, MAX_LISTED);
        Ok(self.store.list_chats(user, limit, cursor).await?)
    }

    /// Renames the conversation (any participant); tells every participant
    /// if the title changed.
    pub async fn rename(
        &self,
        user: &UserId,
        conv: ConversationId,
        title: &str,
    ) -> Result<Conversation, ChatError> {
        let title = title.trim();
        let chars = title.chars().count();
        if chars == 0 || chars > MAX_TITLE_CHARS {
            return Err(ChatError::InvalidFrame(format!(
                "title must be 1 to {MAX_TITLE_CHARS} characters"
            )));
        }
        self.require_writer(user, conv).await?;
        let renamed = self.store.rename(conv, title).await?;
        let chat = self.load(conv).await?;
        if renamed {
            self.events
                .conversation_changed(&chat, UpdateReason::Renamed, None)
                .await;
        } else if chat.archived {
            return Err(ChatError::from(Refusal::Archived));
        }
        Ok(chat)
    }

    /// Makes `to` the owner in place of `user`, who must own the
    /// conversation; tells every participant.
    pub async fn hand_over(
        &self,
        user: &UserId,
        conv: ConversationId,
        to: &UserId,
    ) -> Result<Conversation, ChatError> {
        self.require_member(user, conv).await?;
        let changed = self.store.hand_over(conv, user, to).await??;
        let chat = self.load(conv).await?;
        if changed {
            self.events
                .conversation_changed(&chat, UpdateReason::OwnerChanged, None)
                .await;
        }
        Ok(chat)
    }

    /// A conversation the user participates in.
    pub async fn get(
        &self,
        user: &UserId,
        conv: ConversationId,
    ) -> Result<Conversation, ChatError> {
        let mut chat = self
            .store
            .chat(conv)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        if !chat.participants.contains(user) {
            return Err(not_a_participant());
        }
        chat.last_read_seq = None;
        Ok(chat)
    }

    /// Adds `target`; any participant may add. Tells everyone, the newcomer included.
    pub async fn add_participant(
        &self,
        user: &UserId,
        conv: ConversationId,
        target: UserId,
    ) -> Result<Conversation, ChatError> {
        self.require_writer(user, conv).await?;
        let added = self.store.add_participant(conv, &target).await?;
        let chat = self.load(conv).await?;
        if added {
            self.events
                .conversation_changed(&chat, UpdateReason::ParticipantAdded, None)
                .await;
        }
        Ok(chat)
    }

    /// Removes `target`: the owner may remove anyone, anyone may remove
    /// themselves, except the owner of an active conversation, which would
    /// be left with nobody to archive it. The removed user's sockets stop
    /// receiving the conversation.
    pub async fn remove_participant(
        &self,
        user: &UserId,
        conv: ConversationId,
        target: UserId,
    ) -> Result<Conversation, ChatError> {
        let access = self.require_member(user, conv).await?;
        let owner = self.is_owner(user, conv).await?;
        if user != &target && !owner {
            return Err(ChatError::Forbidden(
                "only the owner may remove other participants".into(),
            ));
        }
        if user == &target && owner && !access.archived {
            return Err(ChatError::Forbidden(
                "the owner cannot leave: hand ownership on or archive the conversation first"
                    .into(),
            ));
        }
        if !self.store.remove_participant(conv, &target).await? {
            return Err(ChatError::NotFound("participant"));
        }
        let chat = self.load(conv).await?;
        self.events
            .conversation_changed(&chat, UpdateReason::ParticipantRemoved, Some(&target))
            .await;
        Ok(chat)
    }

    /// Archives the conversation (owner only); it leaves every sidebar.
    pub async fn archive(&self, user: &UserId, conv: ConversationId) -> Result<(), ChatError> {
        self.require_member(user, conv).await?;
        if !self.is_owner(user, conv).await? {
            return Err(ChatError::Forbidden("only the owner may archive".into()));
        }
        self.store.archive(conv).await?;
        let chat = self.load(conv).await?;
        self.events
            .conversation_changed(&chat, UpdateReason::Archived, None)
            .await;
        Ok(())
    }

    // ------------------------------------------------------------ sockets in rooms

    /// Joins a connection to a conversation (see `Hub::join`): it is
    /// answered `joined`, then every entry after `since`, then live events.
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        conv: ConversationId,
        since: Option<Seq>,
        reply_to: Option<String>,
    ) -> Result<(), ChatError> {
        let access = self.require_member(&conn.user, conv).await?;
        let mut participants: Vec<UserId> = access.members.iter().cloned().collect();
        participants.sort();
        let joined = |last_seq: Seq| {
            ServerFrame::Joined {
                conversation_id: conv,
                last_seq,
                participants: participants.clone(),
                reply_to: reply_to.clone(),
            }
            .encode()
            .into()
        };
        self.hub.join(conn, conv, since, joined).await
    }

    pub async fn leave(&self, conn: &Arc<Conn>, conv: ConversationId) -> bool {
        self.hub.leave(conn, conv).await
    }

    // ------------------------------------------------------------ messages

    /// Stores a message, then publishes it to every socket joined anywhere.
    /// A retry with the same `client_msg_id` stores and publishes nothing.
    pub async fn send(
        &self,
        user: &UserId,
        conv: ConversationId,
        out: Outgoing,
    ) -> Result<Appended, ChatError> {
        let pending = self.submit(user, conv, out).await?;
        self.publish_sent(pending.await).await
    }

    /// The first half of `send`: checks the message, the membership and the
    /// rate, and queues the message for storing. Sends submitted one after
    /// another to a conversation are stored in that order, so a socket can
    /// submit its next send before this one is stored; `publish_sent`
    /// finishes each.
    pub async fn submit(
        &self,
        user: &UserId,
        conv: ConversationId,
        out: Outgoing,
    ) -> Result<PendingSend, ChatError> {
        let message_type = out.message_type.unwrap_or(MessageType::User);
        if message_type != MessageType::User {
            return Err(ChatError::InvalidFrame(
                "message_type must be `user` (other types are the server's)".into(),
            ));
        }
        self.check_content(&out.content)?;
        if out.attachment_ids.len() > MAX_ATTACHMENTS {
            return Err(ChatError::InvalidFrame(format!(
                "at most {MAX_ATTACHMENTS} attachments per message"
            )));
        }
        let access = self.require_writer(user, conv).await?;
        self.check_rate(user)?;
        if !out.attachment_ids.is_empty() {
            // No attachment exists until attachments are built.
            return Err(ChatError::NotFound("attachment"));
        }
        if let Some(reply_to) = out.reply_to {
            // A message once stored stays (deletion keeps its row), so
            // this check cannot be overtaken.
            if self.store.message(conv, reply_to).await?.is_none() {
                return Err(ChatError::NotFound("message"));
            }
        }
        let stored = self
            .events
            .submit(NewMessage {
                id: None,
                conversation_id: conv,
                sender_id: user.clone(),
                message_type,
                content: out.content,
                client_msg_id: out.client_msg_id,
                metadata: None,
                reply_to: out.reply_to,
            })
            .await;
        Ok(PendingSend {
            stored,
            finish: Some(SentBy {
                user: user.clone(),
                assistant_id: access.assistant_id.clone(),
            }),
        })
    }

    /// The second half of `send`: publishes a newly stored message and
    /// starts the conversation's assistant, if it has one.
    pub async fn publish_sent(&self, sent: Sent) -> Result<Appended, ChatError> {
        let appended = self.events.publish_stored(sent.stored).await?;
        if !appended.duplicate {
            if let Some(assistant_id) = sent.by.assistant_id {
                let start = StartStream {
                    conversation_id: appended.message.conversation_id,
                    requested_by: sent.by.user,
                    reply_to: appended.message.clone(),
                    assistant_id,
                };
                if let Err(e) = self.assistants.start(start).await {
                    let conv = appended.message.conversation_id;
                    tracing::info!(error = %e, conv = %conv, "no automatic answer");
                    // Told to the conversation, or its tabs would wait for
                    // an answer that never comes, without knowing why.
                    let stream_id = StreamId::new();
                    let frame = ServerFrame::StreamError {
                        stream_id,
                        conversation_id: conv,
                        code: e.code(),
                        message: e.client_message(),
                        retry_after_ms: e.retry_after_ms(),
                    };
                    self.events
                        .stream(conv, stream_id, StreamStep::Other, true, Some(&frame))
                        .await;
                }
            }
        }
        Ok(appended)
    }

    /// Changes a message (an edit, a deletion, a reaction) and tells every
    /// socket joined to the conversation, unless it changes nothing.
    pub async fn change(
        &self,
        user: &UserId,
        conv: ConversationId,
        message_id: MessageId,
        request: ChangeRequest,
    ) -> Result<Changed, ChatError> {
        if let ChangeRequest::Edit { content } = &request {
            self.check_content(content)?;
        }
        self.require_writer(user, conv).await?;
        self.check_rate(user)?;
        self.events
            .change(&ChangeOrder {
                conversation_id: conv,
                message_id,
                actor: user.clone(),
                request,
                max_reactions: self.limits.max_reactions_per_message,
            })
            .await
    }

    /// Asks an assistant to answer `message_id` (default: the latest user
    /// message). Its tokens reach every socket in the conversation.
    pub async fn stream_response(
        &self,
        user: &UserId,
        conv: ConversationId,
        message_id: Option<MessageId>,
        assistant_id: Option<String>,
    ) -> Result<StreamId, ChatError> {
        let access = self.require_writer(user, conv).await?;
        let reply_to = match message_id {
            Some(id) => self
                .store
                .message(conv, id)
                .await?
                .filter(|m| !m.deleted)
                .ok_or(ChatError::NotFound("message"))?,
            None => self
                .store
                .latest_of_type(conv, MessageType::User)
                .await?
                .ok_or_else(|| {
                    ChatError::InvalidFrame("there is no user message to answer".into())
                })?,
        };
        let assistant_id = assistant_id
            .or_else(|| access.assistant_id.clone())
            .unwrap_or_else(|| "default".into());
        self.assistants
            .start(StartStream {
                conversation_id: conv,
                requested_by: user.clone(),
                reply_to,
                assistant_id,
            })
            .await
    }

    /// Stops a stream, waiting or running, on whichever node holds it (any
    /// participant may). An unknown or ended stream, and one in a
    /// conversation the user is not in, are all `NOT_FOUND`, so a stream id
    /// tells a non-participant nothing.
    pub async fn cancel_stream(&self, user: &UserId, stream: StreamId) -> Result<(), ChatError> {
        let not_found = || ChatError::NotFound("stream");
        let conv = self
            .assistants
            .conversation_of(stream)
            .await?
            .ok_or_else(not_found)?;
        match self.require_member(user, conv).await {
            Ok(_) => {}
            Err(ChatError::Forbidden(_) | ChatError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e),
        }
        self.assistants.cancel(stream, user).await
    }

    /// A page of history, oldest first, and whether more lie beyond it.
    pub async fn history(
        &self,
        user: &UserId,
        conv: ConversationId,
        page: Page,
    ) -> Result<(Vec<Message>, bool), ChatError> {
        self.require_member(user, conv).await?;
        let max = self.limits.history_page_max.max(1);
        let limit = page.limit.unwrap_or(50).clamp(1, max);
        let max_bytes = self.limits.history_page_max_bytes;
        Ok(match (page.before, page.after) {
            (Some(_), Some(_)) => {
                return Err(ChatError::InvalidFrame(
                    "give before_seq or after_seq, not both".into(),
                ))
            }
            (None, Some(after)) => {
                let (mut page, more) = self.store.messages_after(conv, after, limit).await?;
                let kept = fitting(page.iter(), max_bytes);
                let cut = kept < page.len();
                page.truncate(kept);
                (page, more || cut)
            }
            (before, None) => {
                let (mut page, more) = self.store.messages_before(conv, before, limit).await?;
                // The page ends at `before`: keep its newest messages.
                let kept = fitting(page.iter().rev(), max_bytes);
                let cut = kept < page.len();
                page.drain(..page.len() - kept);
                (page, more || cut)
            }
        })
    }

    // ------------------------------------------------------------ ephemeral

    /// Tells the conversation's other connections that `conn`'s user is (not) typing.
    pub async fn typing(
        &self,
        conn: &Conn,
        conv: ConversationId,
        is_typing: bool,
    ) -> Result<(), ChatError> {
        self.require_member(&conn.user, conv).await?;
        self.events
            .typing(conn.id, &conn.user, conv, is_typing)
            .await;
        Ok(())
    }

    /// Ends `conn`'s typing without checks (it lapsed, or the connection
    /// sent a message or left).
    pub async fn stop_typing(&self, conn: &Conn, conv: ConversationId) {
        self.events.typing(conn.id, &conn.user, conv, false).await;
    }

    /// The conversation's present participants, sorted.
    pub async fn presence(
        &self,
        user: &UserId,
        conv: ConversationId,
    ) -> Result<Vec<UserId>, ChatError> {
        self.require_member(user, conv).await?;
        self.presence.present(conv).await
    }

    /// Draws on the user's send bucket for something else a client can
    /// ask for in a loop and that costs the node memory (a ticket).
    pub fn take_send_token(&self, user: &UserId) -> Result<(), ChatError> {
        self.check_rate(user)
    }

    /// Records how far the user has read and tells the conversation and the
    /// user's other tabs. Returns the recorded seq if it moved.
    pub async fn mark_read(
        &self,
        user: &UserId,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<Option<Seq>, ChatError> {
        self.require_member(user, conv).await?;
        let last = self.store.last_seq(conv).await?.unwrap_or_default();
        let seq = Seq(seq.0.clamp(0, last.0));
        let Some(seq) = self.store.mark_read(conv, user, seq).await? else {
            return Ok(None);
        };
        self.events.read(user, conv, seq).await;
        Ok(Some(seq))
    }

    // ------------------------------------------------------------ helpers

    /// A message's text, sent or edited: not blank, within the length limit.
    fn check_content(&self, content: &str) -> Result<(), ChatError> {
        let len = content.chars().count();
        if len > self.limits.max_message_chars {
            return Err(ChatError::MessageTooLong {
                len,
                max: self.limits.max_message_chars,
            });
        }
        if content.trim().is_empty() {
            return Err(ChatError::InvalidFrame("content must not be empty".into()));
        }
        Ok(())
    }

    /// Draws on the user's send bucket: every log entry a user makes does.
    fn check_rate(&self, user: &UserId) -> Result<(), ChatError> {
        self.sends.check(user).map_err(|retry_after_ms| {
            self.metrics.rate_limited.inc();
            ChatError::RateLimited { retry_after_ms }
        })
    }

    async fn load(&self, conv: ConversationId) -> Result<Conversation, ChatError> {
        self.store
            .chat(conv)
            .await?
            .ok_or(ChatError::NotFound("conversation"))
    }
}

/// How many of `messages`, taken in order, fit in `max_bytes` of JSON; at
/// least one, so a page always moves the reader on.
fn fitting<'a>(messages: impl Iterator<Item = &'a Message>, max_bytes: usize) -> usize {
    let mut total = 0;
    let mut count = 0;
    for message in messages {
        total += encoded_len(message);
        if count > 0 && total > max_bytes {
            break;
        }
        count += 1;
    }
    count
}

/// The length of a message's JSON, counted without building it.
fn encoded_len(message: &Message) -> usize {
    /// A writer that only counts.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing plain data into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, message);
    count.0
}
