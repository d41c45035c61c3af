//! The text of answers being written, readable by every node: a tab that
//! joins a conversation mid-answer, on any node, is sent the text so far
//! (`stream_snapshot`) before the live pieces. The node writing an answer
//! appends each piece here before it publishes it, so a reader that then
//! subscribes misses nothing: what it did not read, it receives live.
//!
//! A conversation has at most one answer being written, so transcripts are
//! kept per conversation. Each expires `stream_timeout_secs` after its
//! writer was last heard of, and ends with the answer.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{ConversationId, MessageId, StreamId};

pub use memory::MemoryTranscripts;
pub use redis::RedisTranscripts;

/// Why a transcript could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("transcripts unavailable: {0}")]
pub struct TranscriptError(pub String);

/// What `stream_start` told of an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub stream_id: StreamId,
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub reply_to: MessageId,
    pub assistant_id: String,
}

/// An answer being written: its opening, and its pieces so far (piece `i`
/// is the `stream_content` of index `i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    pub opening: Opening,
    pub pieces: Vec<String>,
}

/// Where transcripts are kept.
#[async_trait]
pub trait Transcripts: Send + Sync {
    /// Starts the conversation's transcript (replacing a stale one).
    async fn begin(&self, opening: &Opening, ttl: Duration) -> Result<(), TranscriptError>;
    /// Appends piece `index` and keeps the transcript for `ttl`. If it is
    /// not the next piece (an earlier append failed), the transcript is
    /// dropped: joiners then get no snapshot rather than a wrong one.
    async fn append(
        &self,
        opening: &Opening,
        index: u64,
        piece: &str,
        ttl: Duration,
    ) -> Result<(), TranscriptError>;
    /// Keeps the transcript for `ttl` more (the writer is alive).
    async fn keep(&self, opening: &Opening, ttl: Duration) -> Result<(), TranscriptError>;
    /// Ends the transcript, if it is still this stream's.
    async fn end(&self, opening: &Opening) -> Result<(), TranscriptError>;
    /// The answer being written in `conv`, if any.
    async fn read(&self, conv: ConversationId) -> Result<Option<Transcript>, TranscriptError>;
}
