//! Newtypes for the identifiers that cross every layer, so a user id can
//! never be passed where a conversation id is meant.

use std::fmt;

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

/// A user: the JWT `sub`, an opaque string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, NewType)]
#[serde(transparent)]
pub struct UserId(pub String);

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

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId(s.to_owned())
    }
}
