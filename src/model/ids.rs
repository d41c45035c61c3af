//! Newtypes for the identifiers that cross every layer, so a user id can
//! never be passed where a conversation id is meant. The ones a client
//! names (a user id, a `client_msg_id`) are checked once, where they are
//! made: a value of the type is valid.

use std::borrow::Cow;
use std::fmt;

use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::NewType;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation (chat). UUID v7, so ids sort by creation time.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, NewType,
)]
#[serde(transparent)]
pub struct ConversationId(pub Uuid);

/// A stored message. UUID v7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, NewType)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

/// One authenticated socket, unique across the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, NewType)]
#[serde(transparent)]
pub struct ConnectionId(pub Uuid);

/// One assistant answer being streamed, unique across the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, NewType)]
#[serde(transparent)]
pub struct StreamId(pub Uuid);

/// Longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest `client_msg_id`, in characters.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;

/// A user: the JWT `sub`, an opaque string of 1 to 256 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

/// A sender's own id for a message, which makes its retries idempotent:
/// 1 to 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientMsgId(String);

/// Most Unicode scalar values in a reaction's emoji.
pub const MAX_EMOJI_CHARS: usize = 16;

/// The emoji of a reaction: 1 to 16 Unicode scalar values, none of them
/// whitespace or a control character. Stored as sent (no normalization),
/// so two spellings of one emoji are two reactions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Emoji(String);

/// An identifier that breaks its type's rule; the text says which.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(&'static str);

impl UserId {
    /// A user id, if it is 1 to 256 bytes.
    pub fn parse(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_USER_ID_BYTES {
            return Err(InvalidId("user ids must be 1 to 256 bytes"));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ClientMsgId {
    /// A client message id, if it is 1 to 64 characters.
    pub fn parse(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        if id.is_empty() || id.chars().count() > MAX_CLIENT_MSG_ID_CHARS {
            return Err(InvalidId("client_msg_id must be 1 to 64 characters"));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The OpenAPI side of a checked string id: a `string` in the schema,
/// checked by `parse` when read from JSON.
macro_rules! openapi_string {
    ($ty:ty) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = String;
            type RawElementValueType = String;

            fn name() -> Cow<'static, str> {
                String::name()
            }

            fn schema_ref() -> MetaSchemaRef {
                String::schema_ref()
            }

            fn as_raw_value(&self) -> Option<&String> {
                Some(&self.0)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
                match value {
                    Some(serde_json::Value::String(text)) => {
                        <$ty>::parse(text).map_err(|e| ParseError::custom(e.0))
                    }
                    other => Err(ParseError::expected_type(other.unwrap_or_default())),
                }
            }
        }

        impl ToJSON for $ty {
            fn to_json(&self) -> Option<serde_json::Value> {
                Some(serde_json::Value::String(self.0.clone()))
            }
        }
    };
}

impl Emoji {
    /// An emoji, if it keeps the rule.
    pub fn parse(text: impl Into<String>) -> Result<Self, InvalidId> {
        let text = text.into();
        let count = text.chars().count();
        if count == 0 || count > MAX_EMOJI_CHARS {
            return Err(InvalidId("emoji must be 1 to 16 characters"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidId(
                "emoji must not contain whitespace or control characters",
            ));
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Emoji {
    type Error = InvalidId;
    fn try_from(text: String) -> Result<Self, InvalidId> {
        Self::parse(text)
    }
}

impl From<Emoji> for String {
    fn from(emoji: Emoji) -> String {
        emoji.0
    }
}

openapi_string!(UserId);
openapi_string!(Emoji);
openapi_string!(ClientMsgId);

impl TryFrom<String> for UserId {
    type Error = InvalidId;
    fn try_from(id: String) -> Result<Self, InvalidId> {
        Self::parse(id)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl TryFrom<String> for ClientMsgId {
    type Error = InvalidId;
    fn try_from(id: String) -> Result<Self, InvalidId> {
        Self::parse(id)
    }
}

impl From<ClientMsgId> for String {
    fn from(id: ClientMsgId) -> String {
        id.0
    }
}

/// A message's position in its conversation: 1, 2, 3, ... with no gaps.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    NewType,
)]
#[serde(transparent)]
pub struct Seq(pub i64);

impl ConversationId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl MessageId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl ConnectionId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl StreamId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for StreamId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Default for ConversationId {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for ConnectionId {
    fn default() -> Self {
        Self::new()
    }
}

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_1_to_256_bytes() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a".repeat(257)).is_err());
        assert_eq!(UserId::parse("alice").unwrap().as_str(), "alice");
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
        assert_eq!(
            serde_json::to_string(&UserId::parse("bob").unwrap()).unwrap(),
            "\"bob\""
        );
    }

    #[test]
    fn client_msg_ids_are_1_to_64_characters() {
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse("é".repeat(64)).is_ok());
        assert!(ClientMsgId::parse("é".repeat(65)).is_err());
        assert!(serde_json::from_str::<ClientMsgId>(&format!("\"{}\"", "x".repeat(65))).is_err());
    }

    #[test]
    fn emojis_are_1_to_16_scalars_without_space_or_control() {
        assert!(Emoji::parse("👍").is_ok());
        // A family: several scalar values joined, one glyph.
        assert!(Emoji::parse("👨\u{200d}👩\u{200d}👧").is_ok());
        assert!(Emoji::parse("x".repeat(16)).is_ok());
        assert!(Emoji::parse("x".repeat(17)).is_err());
        assert!(Emoji::parse("").is_err());
        assert!(Emoji::parse("👍 ").is_err());
        assert!(Emoji::parse("a\u{7}").is_err());
        assert!(
            Emoji::parse("\u{a0}").is_err(),
            "no-break space is whitespace"
        );
        assert!(serde_json::from_str::<Emoji>("\"\\n\"").is_err());
    }
}
