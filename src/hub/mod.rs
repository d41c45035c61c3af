//! This node's connections: who is connected, who is joined where, and the
//! ordered, deduplicated delivery of bus events to them.
//!
//! The way out of a node is bus -> router -> rooms -> each connection's
//! queue. A stored entry reaches each local connection in seq order, none
//! missing, none twice: the room holds a later seq until the earlier one
//! arrives and fills a gap from the history if it does not come in time. A
//! room that may have missed stored entries (the bus reconnected, a publish
//! failed) catches up from the history, retrying with back-off until it
//! succeeds. The hub knows no frame: entries and replies come ready-made
//! from `chat` (as event payloads, or through `History`).
//!
//! - `registry`: connections by user, and the user topics they need.
//! - `rooms`: joining, replaying and leaving conversations.
//! - `recovery`: gap fill and catch-up from the history.
//! - `router`: the bus's one callback, which hands each event on.
//! - `room`: one room's ordering, as a sans-IO state machine.
//! - `conn`, `outbox`: a connection and its bounded outbound queue.

mod backoff;
mod conn;
mod history;
mod outbox;
mod recovery;
mod registry;
mod room;
mod rooms;
mod router;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;

pub use conn::{Conn, Inbound, PostError, Posted};
pub use history::{Entry, History, HistoryError, Page};
pub use outbox::{
    Immediate, NodeBudget, Outbound, Receiver as Outbox, Reservation, Written, COALESCE,
};
use room::Room;
pub use router::{CatchUp, Covers, StreamEvents};

/// What the node's presence hears of the hub: a user's first connection
/// on this node joining a conversation, and their last one leaving it.
/// Called under no lock, and must not wait.
pub trait Attendance: Send + Sync {
    fn arrived(&self, conv: ConversationId, user: &UserId);
    fn departed(&self, conv: ConversationId, user: &UserId);
}

use crate::bus::{Bus, EventSink, Topic};
use crate::metrics::Metrics;
use crate::model::{ConnectionId, ConversationId, UserId};
use crate::tasks::Tasks;

/// Entries read from the history per page when replaying or filling gaps.
const PAGE: u64 = 200;
/// Rooms reading the history at once to recover: after a bus reconnect
/// every room catches up, and the store's pool must stay free for sends
/// and joins.
const RECOVERY_READS: usize = 4;
/// Topic locks of the hub; a power of two well above the core count.
const TOPOLOGY_STRIPES: usize = 64;

/// Hub tunables, from the limits and bus settings.
#[derive(Clone, Debug)]
pub struct HubSettings {
    pub gap_wait: Duration,
    pub outbound_queue: usize,
    /// Bytes one connection's queue may hold (`limits.max_outbound_bytes_per_socket`).
    pub outbound_bytes: usize,
    /// Bytes all connections' queues may hold together.
    pub outbound_budget: Arc<NodeBudget>,
    /// Entries each room keeps for resumes (`RoomState::recent_after`);
    /// kept below `outbound_queue`, since a resume queues them all at once.
    pub recent_messages: usize,
    pub max_connections_per_user: usize,
}

/// The registry of this node's connections and rooms.
pub struct Hub {
    me: Weak<Hub>,
    history: Arc<dyn History>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    settings: HubSettings,
    tasks: Tasks,
    rooms: DashMap<ConversationId, Arc<Room>>,
    /// Each user's local connections. An entry exists exactly while the
    /// node is subscribed to the user's topic.
    users: DashMap<UserId, HashMap<ConnectionId, Arc<Conn>>>,
    /// Serializes opening and closing a room or a user entry, so a bus
    /// subscribe and unsubscribe of one topic never race. Striped by topic:
    /// different users and conversations open at the same time (a reconnect
    /// storm) mostly take different locks. Connections of a user already
    /// here come and go without any.
    topology: Vec<tokio::sync::Mutex<()>>,
    /// Where stream events and cancels go (the node's assistants).
    streams: OnceLock<Weak<dyn StreamEvents>>,
    /// Where joins and leaves go (the node's presence).
    attendance: OnceLock<Weak<dyn Attendance>>,
    /// Every connection's queue bounds, shared.
    outbox: Arc<outbox::Limits>,
    /// Permits for recovery reads (see `RECOVERY_READS`).
    recovery_reads: tokio::sync::Semaphore,
}

impl Hub {
    /// A hub reading `history`, fed by `bus` (it attaches itself as the
    /// bus's sink), running its tasks on `tasks`.
    pub fn new(
        history: Arc<dyn History>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        settings: HubSettings,
        tasks: Tasks,
    ) -> Arc<Self> {
        let outbox = Arc::new(outbox::Limits {
            frames: settings.outbound_queue.max(1),
            bytes: settings.outbound_bytes,
            node: settings.outbound_budget.clone(),
        });
        let hub = Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            history,
            bus: bus.clone(),
            metrics,
            settings,
            tasks,
            rooms: DashMap::new(),
            users: DashMap::new(),
            topology: (0..TOPOLOGY_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            streams: OnceLock::new(),
            attendance: OnceLock::new(),
            outbox,
            recovery_reads: tokio::sync::Semaphore::new(RECOVERY_READS),
        });
        let sink: Arc<dyn EventSink> = hub.clone();
        bus.attach(Arc::downgrade(&sink));
        hub
    }

    /// Where stream events and cancels go (the node's assistants). Set once at start.
    pub fn set_stream_events(&self, streams: Weak<dyn StreamEvents>) {
        let _ = self.streams.set(streams);
    }

    /// Where joins and leaves go (the node's presence). Set once at start.
    pub fn set_attendance(&self, attendance: Weak<dyn Attendance>) {
        let _ = self.attendance.set(attendance);
    }

    fn attendance(&self) -> Option<Arc<dyn Attendance>> {
        self.attendance.get().and_then(Weak::upgrade)
    }

    /// The lock for opening or closing `topic` on this node.
    fn topology(&self, topic: &Topic) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        // Fixed keys: one topic always maps to the same stripe.
        let mut hasher = std::hash::DefaultHasher::new();
        topic.hash(&mut hasher);
        &self.topology[hasher.finish() as usize % TOPOLOGY_STRIPES]
    }

    fn arc(&self) -> Option<Arc<Hub>> {
        self.me.upgrade()
    }
}
