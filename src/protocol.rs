//! PROTOCOL.md as serde types: what a client may send (`ClientFrame`) and
//! what a node sends (`ServerFrame`), carrying the `model` types as they
//! are. Decoding never panics; every failure is an `ErrorCode`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{ChatError, ErrorCode};
use crate::model::{
    Change, ClientMsgId, CloseReason, ConnectionId, Conversation, ConversationId, Emoji, Message,
    MessageId, MessageType, Seq, StreamId, UpdateReason, Usage, UserId,
};

/// A JSON object: the `data` of a `ping`, echoed in its `pong`.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Longest request `id` a client may send.
pub const MAX_CLIENT_ID_LEN: usize = 64;

// ---------------------------------------------------------------- client frames

/// Frame types a client may send. Anything else decodes as `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FrameType {
    Auth,
    JoinConversation,
    LeaveConversation,
    SendMessage,
    Typing,
    TypingStart,
    TypingStop,
    LoadMessages,
    MarkRead,
    Ping,
    StreamResponse,
    CancelStream,
    EditMessage,
    DeleteMessage,
    AddReaction,
    RemoveReaction,
    Presence,
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: FrameType,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// Raw type name, read only to say which type was unknown.
#[derive(Deserialize)]
struct TypeName<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Join {
    pub conversation_id: ConversationId,
    #[serde(default)]
    pub since_seq: Option<Seq>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ConversationRef {
    pub conversation_id: ConversationId,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SendMessage {
    pub conversation_id: ConversationId,
    pub content: String,
    #[serde(default)]
    pub message_type: Option<MessageType>,
    #[serde(default)]
    pub client_msg_id: Option<ClientMsgId>,
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    #[serde(default)]
    pub attachment_ids: Vec<String>,
}

/// `edit_message`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EditMessage {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub content: String,
}

/// `delete_message`: names a message.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MessageRef {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
}

/// `add_reaction` / `remove_reaction`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct React {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub emoji: Emoji,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub is_typing: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LoadMessages {
    pub conversation_id: ConversationId,
    #[serde(default)]
    pub before_seq: Option<Seq>,
    #[serde(default)]
    pub after_seq: Option<Seq>,
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct StreamResponse {
    pub conversation_id: ConversationId,
    #[serde(default)]
    pub message_id: Option<MessageId>,
    #[serde(default)]
    pub assistant_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CancelStream {
    pub stream_id: StreamId,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MarkRead {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// A decoded client frame.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Join(Join),
    Leave(ConversationRef),
    Send(SendMessage),
    Typing(Typing),
    LoadMessages(LoadMessages),
    MarkRead(MarkRead),
    /// `ping` data: a JSON object, as every frame's `data` is, or nothing.
    Ping(Option<JsonObject>),
    StreamResponse(StreamResponse),
    CancelStream(CancelStream),
    Edit(EditMessage),
    Delete(MessageRef),
    /// `add_reaction` (`add`) or `remove_reaction`.
    React(React, bool),
    Presence(ConversationRef),
}

impl ClientFrame {
    /// Short name for logs and metrics labels (bounded set).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Join(_) => "join_conversation",
            ClientFrame::Leave(_) => "leave_conversation",
            ClientFrame::Send(_) => "send_message",
            ClientFrame::Typing(_) => "typing",
            ClientFrame::LoadMessages(_) => "load_messages",
            ClientFrame::MarkRead(_) => "mark_read",
            ClientFrame::Ping(_) => "ping",
            ClientFrame::StreamResponse(_) => "stream_response",
            ClientFrame::CancelStream(_) => "cancel_stream",
            ClientFrame::Edit(_) => "edit_message",
            ClientFrame::Delete(_) => "delete_message",
            ClientFrame::React(_, true) => "add_reaction",
            ClientFrame::React(_, false) => "remove_reaction",
            ClientFrame::Presence(_) => "presence",
        }
    }
}

/// A frame that could not be decoded, with the `id` to answer when known.
#[derive(Debug)]
pub struct DecodeError {
    pub id: Option<String>,
    pub error: ChatError,
}

/// Decodes one text frame. Never panics.
pub fn decode(text: &str) -> Result<(Option<String>, ClientFrame), DecodeError> {
    let env: Envelope = serde_json::from_str(text).map_err(|e| DecodeError {
        id: None,
        error: ChatError::InvalidFrame(format!("not a frame: {e}")),
    })?;
    if let Some(id) = &env.id {
        if id.chars().count() > MAX_CLIENT_ID_LEN {
            return Err(DecodeError {
                id: None,
                error: ChatError::InvalidFrame(format!(
                    "id is longer than {MAX_CLIENT_ID_LEN} characters"
                )),
            });
        }
    }
    let id = env.id.clone();
    let fail = |error: ChatError| DecodeError {
        id: id.clone(),
        error,
    };
    let data = |name: &str| -> Result<&RawValue, DecodeError> {
        env.data
            .ok_or_else(|| fail(ChatError::InvalidFrame(format!("{name} needs `data`"))))
    };
    fn parse<'a, T: Deserialize<'a>>(raw: &'a RawValue, name: &str) -> Result<T, ChatError> {
        serde_json::from_str(raw.get())
            .map_err(|e| ChatError::InvalidFrame(format!("bad {name} data: {e}")))
    }
    let frame = match env.kind {
        FrameType::Auth => match env.token.clone() {
            Some(token) => ClientFrame::Auth { token },
            None => return Err(fail(ChatError::InvalidFrame("auth needs `token`".into()))),
        },
        FrameType::JoinConversation => {
            ClientFrame::Join(parse(data("join_conversation")?, "join_conversation").map_err(fail)?)
        }
        FrameType::LeaveConversation => ClientFrame::Leave(
            parse(data("leave_conversation")?, "leave_conversation").map_err(fail)?,
        ),
        FrameType::SendMessage => {
            ClientFrame::Send(parse(data("send_message")?, "send_message").map_err(fail)?)
        }
        FrameType::Typing => ClientFrame::Typing(parse(data("typing")?, "typing").map_err(fail)?),
        FrameType::TypingStart | FrameType::TypingStop => {
            let r: ConversationRef = parse(data("typing")?, "typing").map_err(fail)?;
            ClientFrame::Typing(Typing {
                conversation_id: r.conversation_id,
                is_typing: env.kind == FrameType::TypingStart,
            })
        }
        FrameType::LoadMessages => {
            ClientFrame::LoadMessages(parse(data("load_messages")?, "load_messages").map_err(fail)?)
        }
        FrameType::MarkRead => {
            ClientFrame::MarkRead(parse(data("mark_read")?, "mark_read").map_err(fail)?)
        }
        FrameType::StreamResponse => ClientFrame::StreamResponse(
            parse(data("stream_response")?, "stream_response").map_err(fail)?,
        ),
        FrameType::CancelStream => {
            ClientFrame::CancelStream(parse(data("cancel_stream")?, "cancel_stream").map_err(fail)?)
        }
        FrameType::EditMessage => {
            ClientFrame::Edit(parse(data("edit_message")?, "edit_message").map_err(fail)?)
        }
        FrameType::DeleteMessage => {
            ClientFrame::Delete(parse(data("delete_message")?, "delete_message").map_err(fail)?)
        }
        FrameType::AddReaction => ClientFrame::React(
            parse(data("add_reaction")?, "add_reaction").map_err(fail)?,
            true,
        ),
        FrameType::RemoveReaction => ClientFrame::React(
            parse(data("remove_reaction")?, "remove_reaction").map_err(fail)?,
            false,
        ),
        FrameType::Presence => {
            ClientFrame::Presence(parse(data("presence")?, "presence").map_err(fail)?)
        }
        FrameType::Ping => ClientFrame::Ping(match env.data {
            // Only an object: the `ref` of the answer goes inside it, so
            // the `pong` is never nested deeper than the `ping` was.
            Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|_| {
                fail(ChatError::InvalidFrame(
                    "ping data must be a JSON object".into(),
                ))
            })?),
            None => None,
        }),
        FrameType::Unknown => {
            let name = serde_json::from_str::<TypeName>(text)
                .map(|t| t.kind.into_owned())
                .unwrap_or_default();
            let name: String = name.chars().take(64).collect();
            return Err(fail(ChatError::UnknownType(name)));
        }
    };
    Ok((id, frame))
}

// ---------------------------------------------------------------- server frames

/// A frame a node sends. Serialized once per event and shared by every socket.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerFrame {
    AuthSuccess {
        user_id: UserId,
        connection_id: ConnectionId,
        expires_at: DateTime<Utc>,
        /// The node holding this socket (an extension, for status displays
        /// and debugging; clients must not depend on it for routing).
        node_id: String,
        /// The token's `name` claim, when it has one (an extension).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The limits a client counts against (an extension).
        limits: ClientLimits,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    Joined {
        conversation_id: ConversationId,
        last_seq: Seq,
        participants: Vec<UserId>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    Left {
        conversation_id: ConversationId,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    MessageReceived {
        message: Message,
    },
    /// A change of a message: its own log `seq`, what happened, and the
    /// message's state after it.
    MessageUpdated {
        conversation_id: ConversationId,
        seq: Seq,
        change: Change,
        message: Message,
    },
    Messages {
        conversation_id: ConversationId,
        messages: Vec<Message>,
        has_more: bool,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    TypingIndicator {
        conversation_id: ConversationId,
        user_id: UserId,
        is_typing: bool,
    },
    ConversationUpdated {
        conversation: Conversation,
        reason: UpdateReason,
    },
    ReadReceipt {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: Seq,
    },
    /// The request waits in its assistant's queue; `position` counts
    /// from 1 (next to run). Sent again whenever it changes.
    StreamQueued {
        stream_id: StreamId,
        conversation_id: ConversationId,
        message_id: MessageId,
        reply_to: MessageId,
        assistant_id: String,
        position: usize,
    },
    StreamStart {
        stream_id: StreamId,
        conversation_id: ConversationId,
        message_id: MessageId,
        reply_to: MessageId,
        assistant_id: String,
    },
    /// For a connection that joined mid-answer: the text so far, made of
    /// the `stream_content` pieces up to `index`.
    StreamSnapshot {
        stream_id: StreamId,
        conversation_id: ConversationId,
        message_id: MessageId,
        content: String,
        index: u64,
    },
    StreamContent {
        stream_id: StreamId,
        conversation_id: ConversationId,
        message_id: MessageId,
        content: String,
        index: u64,
        is_complete: bool,
    },
    StreamComplete {
        stream_id: StreamId,
        conversation_id: ConversationId,
        message_id: MessageId,
        /// The stored answer; absent when nothing was produced.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<Message>,
        usage: Usage,
        finish_reason: String,
    },
    StreamError {
        stream_id: StreamId,
        conversation_id: ConversationId,
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The answer to `presence`: the present participants, sorted.
    Presence {
        conversation_id: ConversationId,
        users: Vec<UserId>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// A user became present in the conversation, or stopped being.
    PresenceChanged {
        conversation_id: ConversationId,
        user_id: UserId,
        present: bool,
    },
    Ack(Ack),
    Pong(JsonObject),
    Error(ErrorBody),
}

/// The node's limits a client must know to stay within them, told in
/// `auth_success`: so that a composer counts characters against the real
/// limit instead of finding it out from `MESSAGE_TOO_LONG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClientLimits {
    /// `limits.max_message_chars`: a message's length, in Unicode characters.
    pub max_message_chars: usize,
    /// `limits.max_frame_bytes`: a client frame (or a POST's body), in bytes.
    pub max_frame_bytes: usize,
}

/// `ack`: the request's `ref` plus what it produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ack {
    #[serde(rename = "ref")]
    pub reply_to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<StreamId>,
}

/// `error` data.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// On the last frame of an HTTP event stream: the WebSocket close code
    /// that would have said why the connection ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
}

impl ErrorBody {
    fn of(err: &ChatError, reply_to: Option<String>) -> Self {
        ErrorBody {
            code: err.code(),
            message: err.client_message(),
            reply_to,
            retry_after_ms: err.retry_after_ms(),
            close_code: None,
        }
    }
}

impl ServerFrame {
    pub fn error(err: &ChatError, reply_to: Option<String>) -> Self {
        ServerFrame::Error(ErrorBody::of(err, reply_to))
    }

    /// The last frame of a connection the node closes for `reason`: an
    /// error saying why, with the close code a socket would get.
    pub fn closing(err: &ChatError, reason: CloseReason) -> Self {
        ServerFrame::Error(ErrorBody {
            close_code: Some(reason.code()),
            ..ErrorBody::of(err, None)
        })
    }

    /// The `pong` answer to a `ping`: its data echoed, plus `ref` when
    /// asked (inside the object, so the echo is no deeper than the ping).
    pub fn pong(data: Option<JsonObject>, reply_to: Option<String>) -> Self {
        let mut body = data.unwrap_or_default();
        if let Some(r) = reply_to {
            body.insert("ref".into(), r.into());
        }
        ServerFrame::Pong(body)
    }

    /// The JSON text of this frame.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and
        // no Serialize impl here returns an error.
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> (Option<String>, ErrorCode) {
        let e = decode(text).unwrap_err();
        (e.id, e.error.code())
    }

    #[test]
    fn decodes_auth_with_top_level_token() {
        let (id, f) = decode(r#"{"type":"auth","token":"abc"}"#).unwrap();
        assert_eq!(id, None);
        assert_eq!(
            f,
            ClientFrame::Auth {
                token: "abc".into()
            }
        );
    }

    #[test]
    fn decodes_send_with_id() {
        let conv = ConversationId::new();
        let text = format!(
            r#"{{"type":"send_message","id":"r1","data":{{"conversation_id":"{conv}","content":"hi","client_msg_id":"c1"}}}}"#
        );
        let (id, f) = decode(&text).unwrap();
        assert_eq!(id.as_deref(), Some("r1"));
        match f {
            ClientFrame::Send(s) => {
                assert_eq!(s.conversation_id, conv);
                assert_eq!(s.content, "hi");
                assert_eq!(s.client_msg_id.as_ref().map(|c| c.as_str()), Some("c1"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn typing_aliases_map_to_typing() {
        let conv = ConversationId::new();
        let text = format!(r#"{{"type":"typing_stop","data":{{"conversation_id":"{conv}"}}}}"#);
        let (_, f) = decode(&text).unwrap();
        assert_eq!(
            f,
            ClientFrame::Typing(Typing {
                conversation_id: conv,
                is_typing: false
            })
        );
    }

    #[test]
    fn malformed_frames_are_invalid_with_ref_when_known() {
        assert_eq!(code_of("not json"), (None, ErrorCode::InvalidFrame));
        assert_eq!(code_of(r#"{"data":{}}"#), (None, ErrorCode::InvalidFrame));
        assert_eq!(
            code_of(r#"{"type":"send_message","id":"x","data":{"content":"hi"}}"#),
            (Some("x".into()), ErrorCode::InvalidFrame)
        );
        assert_eq!(
            code_of(r#"{"type":"join_conversation","id":"y"}"#),
            (Some("y".into()), ErrorCode::InvalidFrame)
        );
        let long = "a".repeat(65);
        assert_eq!(
            code_of(&format!(r#"{{"type":"ping","id":"{long}"}}"#)),
            (None, ErrorCode::InvalidFrame)
        );
    }

    #[test]
    fn unknown_types_are_named() {
        let e = decode(r#"{"type":"summon_dragon","id":"s","data":{}}"#).unwrap_err();
        assert_eq!(e.error.code(), ErrorCode::UnknownType);
        assert_eq!(e.id.as_deref(), Some("s"));
        assert!(e.error.to_string().contains("summon_dragon"));
    }

    #[test]
    fn pong_echoes_data_and_adds_ref() {
        let (id, f) = decode(r#"{"type":"ping","id":"p","data":{"t":5}}"#).unwrap();
        let ClientFrame::Ping(data) = f else {
            panic!("not a ping: {f:?}")
        };
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::pong(data, id).encode()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "pong", "data": {"t": 5, "ref": "p"}})
        );
        let (id, f) = decode(r#"{"type":"ping"}"#).unwrap();
        let ClientFrame::Ping(data) = f else {
            panic!("not a ping: {f:?}")
        };
        assert_eq!(
            ServerFrame::pong(data, id).encode(),
            r#"{"type":"pong","data":{}}"#
        );
    }

    #[test]
    fn ping_data_must_be_an_object() {
        for data in ["[1]", "5", r#""text""#, "true"] {
            let text = format!(r#"{{"type":"ping","id":"p","data":{data}}}"#);
            assert_eq!(
                code_of(&text),
                (Some("p".into()), ErrorCode::InvalidFrame),
                "{data}"
            );
        }
    }

    #[test]
    fn error_frames_carry_code_ref_and_retry() {
        let f = ServerFrame::error(
            &ChatError::RateLimited {
                retry_after_ms: 250,
            },
            Some("q".into()),
        );
        let v: serde_json::Value = serde_json::from_str(&f.encode()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["data"]["code"], "RATE_LIMITED");
        assert_eq!(v["data"]["ref"], "q");
        assert_eq!(v["data"]["retry_after_ms"], 250);
    }
}
