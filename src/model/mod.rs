//! The domain types every layer shares: ids, messages, conversations, and
//! the closed sets (message types, roles, close reasons) as enums. A leaf:
//! it imports nothing of the crate, and `store`, `chat`, `hub` and
//! `protocol` all speak it. Their JSON is the wire's, so `protocol` puts
//! them in frames as they are.

mod close;
mod ids;
mod log;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};

pub use close::CloseReason;
pub use entity::{ChangeKind, MessageType, Role};
pub use ids::{
    ClientMsgId, ConnectionId, ConversationId, Emoji, InvalidId, MessageId, Seq, StreamId, UserId,
    MAX_CLIENT_MSG_ID_CHARS, MAX_EMOJI_CHARS, MAX_USER_ID_BYTES,
};
pub use log::{
    Change, ChangeRequest, Decision, LogEntry, Reaction, Refusal, Target, MAX_REACTORS_SHOWN,
};

/// How a connection reaches its node: a WebSocket, or the HTTP transport
/// (an event stream down, frame POSTs up) where WebSockets are blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Http,
}

impl Transport {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

/// A stored message as every client sees it, in its current state: edits,
/// deletion and reactions folded in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub message_type: MessageType,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub client_msg_id: Option<ClientMsgId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    /// The message this one answers, in the same conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub reply_to: Option<MessageId>,
    /// Files attached to it (none until attachments exist).
    #[serde(default)]
    pub attachments: Vec<serde_json::Value>,
    /// Ordered by each emoji's first reaction.
    #[serde(default)]
    pub reactions: Vec<Reaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub edited_at: Option<DateTime<Utc>>,
    /// Deleted: its content is empty, its reactions and attachments gone.
    #[serde(default)]
    pub deleted: bool,
}

/// A conversation as a sidebar shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct Conversation {
    pub id: ConversationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub title: Option<String>,
    pub owner_id: UserId,
    pub participants: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub assistant_id: Option<String>,
    pub archived: bool,
    pub last_seq: Seq,
    /// How far the requesting user has read (only in answers to that user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub last_read_seq: Option<Seq>,
    /// The requesting user's unread messages: not their own, not deleted,
    /// above `last_read_seq` (only in listings for that user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub unread_count: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a conversation changed (the `reason` of `conversation_updated`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateReason {
    Created,
    ParticipantAdded,
    ParticipantRemoved,
    Renamed,
    Archived,
    /// The owner handed ownership on (`owner_id` names the new owner).
    OwnerChanged,
}

/// Token counts of an assistant answer, as the provider reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A source the provider cited for an answer (a URL citation, as OpenAI and
/// OpenRouter annotate web-grounded answers), so a client can show where
/// the text came from. It is kept in the stored answer's
/// `metadata.citations`. `start` and `end` are the character range of the
/// answer the source backs, when the provider says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Citation {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
}

/// One assistant answer's token usage, as the store keeps it: who asked,
/// which assistant answered where, and what the provider counted. Keyed by
/// the stream, so recording an answer twice counts it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub stream_id: StreamId,
    /// The user whose message the answer answers.
    pub user_id: UserId,
    pub assistant_id: String,
    pub conversation_id: ConversationId,
    pub usage: Usage,
    pub created_at: DateTime<Utc>,
}

/// A user's token usage summed over their answers (zero when none): what
/// `GET /api/v1/chat/usage` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct UsageTotals {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// The answers counted.
    pub streams: u64,
}

/// A user who has signed in, as the users directory knows them: so that
/// clients can show a display name rather than an id, and tell an id nobody
/// ever signed in as (absent from the directory) from one who did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct User {
    pub id: UserId,
    /// The display name of their token's `name` claim (an identity
    /// provider's), as last seen; absent if no token of theirs had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// Who may use a conversation: what every request checks. `chat` loads
/// it and owns the rules; the hub keeps the loaded value with the room
/// while this node is subscribed to the conversation, since only then do
/// membership events reach it to invalidate it.
#[derive(Debug)]
pub struct Access {
    pub members: HashSet<UserId>,
    pub archived: bool,
    /// The assistant that answers every user message, if the chat has one.
    pub assistant_id: Option<String>,
}
