//! Transcripts in this process (one node).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Opening, Transcript, TranscriptError, Transcripts};
use crate::model::ConversationId;

/// Keeps transcripts in memory (the embedded defaults: one node).
#[derive(Default)]
pub struct MemoryTranscripts {
    held: Mutex<HashMap<ConversationId, (Transcript, Instant)>>,
}

impl MemoryTranscripts {
    /// Runs `f` on the conversation's live transcript if it is `opening`'s.
    fn with(&self, opening: &Opening, f: impl FnOnce(&mut (Transcript, Instant)) -> bool) {
        let mut held = self.held.lock();
        let conv = opening.conversation_id;
        let keep = match held.get_mut(&conv) {
            Some(t) if t.0.opening.stream_id == opening.stream_id && t.1 > Instant::now() => f(t),
            _ => return,
        };
        if !keep {
            held.remove(&conv);
        }
    }
}

#[async_trait]
impl Transcripts for MemoryTranscripts {
    async fn begin(&self, opening: &Opening, ttl: Duration) -> Result<(), TranscriptError> {
        let mut held = self.held.lock();
        let now = Instant::now();
        held.retain(|_, (_, until)| *until > now);
        let transcript = Transcript {
            opening: opening.clone(),
            pieces: Vec::new(),
        };
        held.insert(opening.conversation_id, (transcript, now + ttl));
        Ok(())
    }

    async fn append(
        &self,
        opening: &Opening,
        index: u64,
        piece: &str,
        ttl: Duration,
    ) -> Result<(), TranscriptError> {
        self.with(opening, |(t, until)| {
            if t.pieces.len() as u64 != index {
                return false;
            }
            t.pieces.push(piece.to_owned());
            *until = Instant::now() + ttl;
            true
        });
        Ok(())
    }

    async fn keep(&self, opening: &Opening, ttl: Duration) -> Result<(), TranscriptError> {
        self.with(opening, |(_, until)| {
            *until = Instant::now() + ttl;
            true
        });
        Ok(())
    }

    async fn end(&self, opening: &Opening) -> Result<(), TranscriptError> {
        self.with(opening, |_| false);
        Ok(())
    }

    async fn read(&self, conv: ConversationId) -> Result<Option<Transcript>, TranscriptError> {
        Ok(self
            .held
            .lock()
            .get(&conv)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone()))
    }
}
