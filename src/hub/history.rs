//! What the hub reads of a conversation's log, behind a small trait: the
//! last seq, and ready-made event frames before or after a seq. `chat`
//! implements it over the store (it alone builds frames); the hub's tests
//! implement it in memory, so the hub runs without a database.

use async_trait::async_trait;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::ChatError;
use crate::model::{ConversationId, MessageId, Seq};

/// One stored log entry as the rooms deliver it: its seq, the message it
/// is about (a new message, or the target of a change) and its frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub seq: Seq,
    /// None only for events of nodes that predate the log's changes.
    pub message: Option<MessageId>,
    pub frame: Utf8Bytes,
}

/// A page of entries, oldest first, and whether more lie beyond it.
pub type Page = (Vec<Entry>, bool);

/// Why history could not be read (the store is down, typically); the hub
/// retries or answers `UNAVAILABLE`.
#[derive(Debug, thiserror::Error)]
#[error("history unavailable: {0}")]
pub struct HistoryError(pub String);

impl From<HistoryError> for ChatError {
    fn from(err: HistoryError) -> Self {
        tracing::warn!(error = %err, "storage error");
        ChatError::Unavailable("storage unavailable".into())
    }
}

/// A conversation log the hub can read.
#[async_trait]
pub trait History: Send + Sync {
    /// The conversation's newest seq; None if it does not exist.
    async fn last_seq(&self, conv: ConversationId) -> Result<Option<Seq>, HistoryError>;
    /// Entries with seq > `after`, oldest first, at most `limit`.
    async fn after(
        &self,
        conv: ConversationId,
        after: Seq,
        limit: u64,
    ) -> Result<Page, HistoryError>;
    /// The newest entries with seq < `before`, oldest first, at most `limit`.
    async fn before(
        &self,
        conv: ConversationId,
        before: Seq,
        limit: u64,
    ) -> Result<Page, HistoryError>;
}

/// A history in memory, for tests: entries appended by hand, and a switch
/// that makes every read fail (the store "down").
#[cfg(test)]
pub mod memory {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use parking_lot::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct MemoryHistory {
        logs: Mutex<BTreeMap<ConversationId, Vec<Entry>>>,
        pub down: AtomicBool,
    }

    impl MemoryHistory {
        /// Creates an empty conversation.
        pub fn create(&self, conv: ConversationId) {
            self.logs.lock().entry(conv).or_default();
        }

        /// Appends an entry with the next seq; returns it.
        pub fn append(&self, conv: ConversationId, text: &str) -> Entry {
            let mut logs = self.logs.lock();
            let log = logs.entry(conv).or_default();
            let entry = Entry {
                seq: Seq(log.len() as i64 + 1),
                message: None,
                frame: text.into(),
            };
            log.push(entry.clone());
            entry
        }

        fn check(&self) -> Result<(), HistoryError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(HistoryError("down".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl History for MemoryHistory {
        async fn last_seq(&self, conv: ConversationId) -> Result<Option<Seq>, HistoryError> {
            self.check()?;
            Ok(self.logs.lock().get(&conv).map(|log| Seq(log.len() as i64)))
        }

        async fn after(
            &self,
            conv: ConversationId,
            after: Seq,
            limit: u64,
        ) -> Result<Page, HistoryError> {
            self.check()?;
            let logs = self.logs.lock();
            let newer: Vec<Entry> = logs
                .get(&conv)
                .into_iter()
                .flatten()
                .filter(|e| e.seq > after)
                .cloned()
                .collect();
            let more = newer.len() as u64 > limit;
            Ok((newer.into_iter().take(limit as usize).collect(), more))
        }

        async fn before(
            &self,
            conv: ConversationId,
            before: Seq,
            limit: u64,
        ) -> Result<Page, HistoryError> {
            self.check()?;
            let logs = self.logs.lock();
            let older: Vec<Entry> = logs
                .get(&conv)
                .into_iter()
                .flatten()
                .filter(|e| e.seq < before)
                .cloned()
                .collect();
            let skip = older.len().saturating_sub(limit as usize);
            Ok((older[skip..].to_vec(), skip > 0))
        }
    }
}
