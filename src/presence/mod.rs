//! The cluster's short-lived shared state, behind one seam with an
//! in-memory implementation (one node) and a Redis one (a cluster), as the
//! bus is: who is present in which conversation (`table.rs` has the
//! rules), which user an HTTP-transport connection belongs to (so a frame
//! POSTed to any node finds it), and one-use tickets for `EventSource`.
//!
//! Nothing here outlives its holder: entries carry an expiry that the
//! holding node renews, so a node that dies takes its entries with it.

mod memory;
mod redis;
mod table;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

pub use memory::MemoryPresence;
pub use redis::RedisPresence;
pub use table::{Millis, Outcome, Timing, Update};

use crate::error::ChatError;
use crate::model::{ConnectionId, ConversationId, UserId};

/// Why the shared state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

impl From<PresenceError> for ChatError {
    fn from(e: PresenceError) -> Self {
        ChatError::Unavailable(e.to_string())
    }
}

/// Presence, the connection directory and tickets, cluster-wide.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Applies this node's update of a conversation's presence (see
    /// `table.rs`): who arrived and who is gone, each reported to exactly
    /// one caller in the cluster.
    async fn update(
        &self,
        conv: ConversationId,
        update: Update<'_>,
    ) -> Result<Outcome, PresenceError>;

    /// The conversation's present users, sorted.
    async fn present(&self, conv: ConversationId) -> Result<Vec<UserId>, PresenceError>;

    /// True once after the store lost every entry (Redis restarted empty):
    /// the next re-assertion is quiet, since no one really arrived.
    async fn lost_entries(&self) -> Result<bool, PresenceError>;

    /// Notified when the store's connection came back after a loss, so
    /// the node re-asserts its entries at once.
    fn reconnected(&self) -> Arc<Notify>;

    /// Records that `conn` (an HTTP-transport connection of `user`) is held
    /// by this node, for `ttl`; renewed while it lives.
    async fn hold_connection(
        &self,
        conn: ConnectionId,
        user: &UserId,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// The user of a live connection anywhere in the cluster.
    async fn connection_user(&self, conn: ConnectionId) -> Result<Option<UserId>, PresenceError>;

    /// Forgets a connection that ended.
    async fn release_connection(&self, conn: ConnectionId) -> Result<(), PresenceError>;

    /// Stores a one-use ticket's grant (opaque to the store) for `ttl`.
    async fn put_ticket(
        &self,
        ticket: &str,
        grant: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// Takes a ticket's grant: the first taker gets it, no one after.
    async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, PresenceError>;
}
