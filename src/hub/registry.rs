//! The connections of this node by user, and the user topics they need: a
//! node is subscribed to a user's topic exactly while it holds one of the
//! user's connections.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Conn, Hub, Inbound, Outbox};
use crate::bus::Topic;
use crate::error::ChatError;
use crate::model::{ConnectionId, ConversationId, UserId};

impl Hub {
    /// Registers an authenticated connection of `user`; subscribes the node
    /// to the user's topic if it is the user's first connection here.
    pub async fn register(
        &self,
        user: UserId,
        inbound: Inbound,
    ) -> Result<(Arc<Conn>, Outbox), ChatError> {
        let (conn, rx) = Conn::with_limits(user.clone(), self.outbox.clone(), inbound);
        let conn = Arc::new(conn);
        // Fast path: the user has connections here, so the node is
        // subscribed. (An empty entry is being torn down: take the slow path.)
        if let Some(mut conns) = self.users.get_mut(&user) {
            if !conns.is_empty() {
                self.check_room_for(conns.len())?;
                conns.insert(conn.id, conn.clone());
                drop(conns);
                self.count_open(&conn);
                return Ok((conn, rx));
            }
        }
        let topic = Topic::User(user.clone());
        let _guard = self.topology(&topic).lock().await;
        let count = self.users.get(&user).map(|c| c.len()).unwrap_or(0);
        self.check_room_for(count)?;
        if count == 0 {
            self.bus.subscribe(&topic).await?;
        }
        self.users
            .entry(user)
            .or_default()
            .insert(conn.id, conn.clone());
        self.count_open(&conn);
        Ok((conn, rx))
    }

    fn check_room_for(&self, count: usize) -> Result<(), ChatError> {
        let max = self.settings.max_connections_per_user;
        if count >= max {
            return Err(ChatError::Forbidden(format!(
                "too many connections for this user (limit {max})"
            )));
        }
        Ok(())
    }

    fn count_open(&self, conn: &Conn) {
        self.metrics.sockets_open.inc();
        self.metrics.sockets_opened.inc();
        self.metrics
            .connections_by_transport
            .with_label_values(&[conn.transport().label()])
            .inc();
    }

    /// Forgets a connection: leaves its rooms, and the user's topic if it
    /// was the last.
    pub async fn unregister(&self, conn: &Arc<Conn>) {
        for conv in conn.joined() {
            self.detach(conn, conv).await;
        }
        self.metrics.sockets_open.dec();
        self.metrics
            .connections_by_transport
            .with_label_values(&[conn.transport().label()])
            .dec();
        let now_empty = match self.users.get_mut(&conn.user) {
            Some(mut conns) => {
                conns.remove(&conn.id);
                conns.is_empty()
            }
            None => false,
        };
        if !now_empty {
            return;
        }
        let topic = Topic::User(conn.user.clone());
        let _guard = self.topology(&topic).lock().await;
        // A connection of the same user may have arrived meanwhile: keep the
        // entry and the subscription then.
        if self
            .users
            .remove_if(&conn.user, |_, conns| conns.is_empty())
            .is_some()
        {
            if let Err(e) = self.bus.unsubscribe(&topic).await {
                tracing::warn!(error = %e, "unsubscribe from user topic failed");
            }
        }
    }

    /// Every local connection, for drain and shutdown.
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        self.users
            .iter()
            .flat_map(|e| e.value().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// A local connection of `user`, by id.
    pub fn connection(&self, user: &UserId, id: ConnectionId) -> Option<Arc<Conn>> {
        self.users.get(user).and_then(|c| c.get(&id).cloned())
    }

    /// How many local connections `user` has.
    pub fn connections_of(&self, user: &UserId) -> usize {
        self.users.get(user).map(|c| c.len()).unwrap_or(0)
    }

    /// Queues a user-level frame to each of the user's local connections,
    /// but those joined to `skip_joined` (they get the same event from the
    /// conversation). Returns how many got it.
    pub(super) fn notify_user(
        &self,
        user: &UserId,
        skip_joined: Option<ConversationId>,
        frame: &Utf8Bytes,
    ) -> usize {
        let conns: Vec<Arc<Conn>> = self
            .users
            .get(user)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        conns
            .iter()
            .filter(|c| skip_joined.is_none_or(|conv| !c.is_joined(&conv)))
            .map(|c| c.push(frame.clone()) as usize)
            .sum()
    }
}
