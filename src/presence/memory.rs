//! Presence for a single node: the tables, connections and tickets in this
//! process's memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::table::{Millis, Table};
use super::{Outcome, Presence, PresenceError, Timing, Update};
use crate::model::{ConnectionId, ConversationId, UserId};

/// Most tickets held at once; past it the oldest are dropped first (they
/// expire within seconds anyway), so a client minting tickets in a loop
/// cannot grow the node's memory.
const MAX_TICKETS: usize = 65_536;

/// The in-memory presence of a node running alone.
pub struct MemoryPresence {
    node: String,
    timing: Timing,
    started: Instant,
    tables: Mutex<HashMap<ConversationId, Table>>,
    connections: Mutex<HashMap<ConnectionId, UserId>>,
    tickets: Mutex<HashMap<String, (String, Instant)>>,
    reconnected: Arc<Notify>,
}

impl MemoryPresence {
    pub fn new(node: &str, timing: Timing) -> Self {
        Self {
            node: node.to_owned(),
            timing,
            started: Instant::now(),
            tables: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            reconnected: Arc::new(Notify::new()),
        }
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn update(
        &self,
        conv: ConversationId,
        update: Update<'_>,
    ) -> Result<Outcome, PresenceError> {
        let now = self.now();
        let mut tables = self.tables.lock();
        let table = tables.entry(conv).or_default();
        let outcome = table.apply(&self.node, now, self.timing, update);
        if table.is_empty() {
            tables.remove(&conv);
        }
        Ok(outcome)
    }

    async fn present(&self, conv: ConversationId) -> Result<Vec<UserId>, PresenceError> {
        let now = self.now();
        Ok(self
            .tables
            .lock()
            .get(&conv)
            .map(|t| t.present(now, self.timing.grace))
            .unwrap_or_default())
    }

    async fn lost_entries(&self) -> Result<bool, PresenceError> {
        Ok(false)
    }

    fn reconnected(&self) -> Arc<Notify> {
        self.reconnected.clone()
    }

    async fn hold_connection(
        &self,
        conn: ConnectionId,
        user: &UserId,
        _ttl: Duration,
    ) -> Result<(), PresenceError> {
        // One process: the connection lives exactly as long as its entry.
        self.connections.lock().insert(conn, user.clone());
        Ok(())
    }

    async fn connection_user(&self, conn: ConnectionId) -> Result<Option<UserId>, PresenceError> {
        Ok(self.connections.lock().get(&conn).cloned())
    }

    async fn release_connection(&self, conn: ConnectionId) -> Result<(), PresenceError> {
        self.connections.lock().remove(&conn);
        Ok(())
    }

    async fn put_ticket(
        &self,
        ticket: &str,
        grant: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let now = Instant::now();
        let mut tickets = self.tickets.lock();
        if tickets.len() >= MAX_TICKETS {
            tickets.retain(|_, (_, until)| *until > now);
        }
        if tickets.len() >= MAX_TICKETS {
            // Drop the one closest to expiring.
            if let Some(first) = tickets
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
            {
                tickets.remove(&first);
            }
        }
        tickets.insert(ticket.to_owned(), (grant.to_owned(), now + ttl));
        Ok(())
    }

    async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, PresenceError> {
        let taken = self.tickets.lock().remove(ticket);
        Ok(taken
            .filter(|(_, until)| *until > Instant::now())
            .map(|(grant, _)| grant))
    }
}
