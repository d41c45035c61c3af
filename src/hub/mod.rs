//! This node's sockets: who is connected, who is joined where, and the
//! ordered, deduplicated delivery of bus events to them.
//!
//! The way out of a node is bus -> hub -> each socket's queue. A stored
//! message reaches each local socket in seq order, none missing, none twice:
//! the room holds a later seq until the earlier one arrives and fills a gap
//! from the store if it does not come in time. A room that may have missed
//! stored messages (the bus reconnected, a publish failed) catches up from
//! the store, retrying with back-off until it succeeds.

mod backoff;
mod conn;
mod outbox;
mod room;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use backoff::Backoff;
pub use conn::{CloseReason, Conn};
pub use outbox::{NodeBudget, Outbound, Receiver as Outbox, Reservation};
pub use room::Access;
use room::{JoinPlan, Recovery, Room};

use crate::bus::{Bus, Event, EventKind, EventSink, Topic};
use crate::error::ChatError;
use crate::error::ErrorCode;
use crate::ids::{ConnectionId, ConversationId, Seq, StreamId, UserId};
use crate::metrics::Metrics;
use crate::protocol::{Message, ServerFrame};
use crate::store::Store;

/// Messages read from the store per page when replaying or filling gaps.
const PAGE: u64 = 200;
/// Rooms reading the store at once to recover: after a bus reconnect every
/// room catches up, and the pool must stay free for sends and joins.
const RECOVERY_READS: usize = 4;

/// Hub tunables, from the limits and bus settings.
#[derive(Clone, Debug)]
pub struct HubSettings {
    pub gap_wait: Duration,
    pub outbound_queue: usize,
    /// Bytes one socket's queue may hold (`limits.max_outbound_bytes_per_socket`).
    pub outbound_bytes: usize,
    /// Bytes all sockets' queues may hold together.
    pub outbound_budget: Arc<NodeBudget>,
    /// Messages each room keeps for resumes (`Room::recent_after`); kept
    /// below `outbound_queue`, since a resume queues them all at once.
    pub recent_messages: usize,
    pub max_connections_per_user: usize,
    /// A stream silent this long is reported `INTERRUPTED`.
    pub stream_timeout: Duration,
}

/// Stops streams running on this node when a cancel arrives from any node.
pub trait StreamControl: Send + Sync {
    fn cancel(&self, stream: StreamId, by: UserId);
}

/// The registry of this node's sockets and rooms.
pub struct Hub {
    me: Weak<Hub>,
    store: Store,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    settings: HubSettings,
    rooms: DashMap<ConversationId, Arc<Room>>,
    /// Each user's local sockets. An entry exists exactly while the node is
    /// subscribed to the user's topic.
    users: DashMap<UserId, HashMap<ConnectionId, Arc<Conn>>>,
    /// Serializes opening and closing a room or a user entry, so a bus
    /// subscribe and unsubscribe of one topic never race. Striped by topic:
    /// different users and conversations open at the same time (a reconnect
    /// storm) mostly take different locks. Sockets of a user already here
    /// come and go without any.
    topology: Vec<tokio::sync::Mutex<()>>,
    streams: OnceLock<Weak<dyn StreamControl>>,
    /// Every socket's queue bounds, shared.
    outbox: Arc<outbox::Limits>,
    /// Permits for recovery reads (see `RECOVERY_READS`).
    recovery_reads: tokio::sync::Semaphore,
}

/// Topic locks of the hub; a power of two well above the core count.
const TOPOLOGY_STRIPES: usize = 64;

impl Hub {
    pub fn new(
        store: Store,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        settings: HubSettings,
    ) -> Arc<Self> {
        let outbox = Arc::new(outbox::Limits {
            frames: settings.outbound_queue.max(1),
            bytes: settings.outbound_bytes,
            node: settings.outbound_budget.clone(),
        });
        let hub = Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            store,
            bus: bus.clone(),
            metrics,
            settings,
            rooms: DashMap::new(),
            users: DashMap::new(),
            topology: (0..TOPOLOGY_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            streams: OnceLock::new(),
            outbox,
            recovery_reads: tokio::sync::Semaphore::new(RECOVERY_READS),
        });
        let sink: Arc<dyn EventSink> = hub.clone();
        bus.attach(Arc::downgrade(&sink));
        tokio::spawn(watch_streams(Arc::downgrade(&hub)));
        hub
    }

    /// Where cancels go (the node's stream runner). Set once at start.
    pub fn set_stream_control(&self, control: Weak<dyn StreamControl>) {
        let _ = self.streams.set(control);
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

    // ------------------------------------------------------------ sockets

    /// Registers an authenticated socket of `user`; subscribes the node to
    /// the user's topic if it is the user's first socket here.
    pub async fn register(&self, user: UserId) -> Result<(Arc<Conn>, Outbox), ChatError> {
        let (conn, rx) = Conn::with_limits(user.clone(), self.outbox.clone());
        let conn = Arc::new(conn);
        // Fast path: the user has sockets here, so the node is subscribed.
        // (An empty entry is being torn down: take the slow path.)
        if let Some(mut conns) = self.users.get_mut(&user) {
            if !conns.is_empty() {
                self.check_room_for(conns.len())?;
                conns.insert(conn.id, conn.clone());
                drop(conns);
                self.count_open();
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
        self.count_open();
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

    fn count_open(&self) {
        self.metrics.sockets_open.inc();
        self.metrics.sockets_opened.inc();
    }

    /// Forgets a socket: leaves its rooms, and the user's topic if it was the last.
    pub async fn unregister(&self, conn: &Arc<Conn>) {
        for conv in conn.joined() {
            self.detach(conn, conv).await;
        }
        self.metrics.sockets_open.dec();
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
        // A socket of the same user may have arrived meanwhile: keep the
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

    /// Every local socket, for drain and shutdown.
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        self.users
            .iter()
            .flat_map(|e| e.value().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Local sockets of one user.
    pub fn connections_of(&self, user: &UserId) -> usize {
        self.users.get(user).map(|c| c.len()).unwrap_or(0)
    }

    // ------------------------------------------------------------ rooms

    /// Joins `conn` to the conversation: replies `joined`, replays every
    /// stored message after `since` (if given), then delivers live events,
    /// with none missing and none twice. Answers exactly once: `joined`
    /// only once the replay's first page is read; if that read fails, the
    /// error is returned (for the caller to answer) and the socket is not
    /// joined. Later pages that fail are retried while the socket is open.
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        conv: ConversationId,
        since: Option<Seq>,
        participants: Vec<UserId>,
        reply_to: Option<String>,
    ) -> Result<(), ChatError> {
        if conn.is_joined(&conv) {
            self.detach(conn, conv).await;
        }
        let joined = |last_seq: Seq| -> Utf8Bytes {
            ServerFrame::Joined {
                conversation_id: conv,
                last_seq,
                participants: participants.clone(),
                reply_to: reply_to.clone(),
            }
            .encode()
            .into()
        };
        let (room, from, position) = loop {
            let room = self.open_room(conv).await?;
            let mut st = room.state.lock();
            if st.closed {
                continue;
            }
            let plan = st.join(conn, since, joined);
            conn.set_joined(conv, true);
            drop(st);
            match plan {
                JoinPlan::Answered => return Ok(()),
                JoinPlan::Replay { from, position } => break (room, from, position),
            }
        };
        let (mut page, mut more) = match self.store.messages_after(conv, from, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                self.detach(conn, conv).await;
                return Err(e.into());
            }
        };
        {
            let st = room.state.lock();
            // Removed from the conversation meanwhile: it was told `left`.
            if !st.members.contains_key(&conn.id) {
                return Err(ChatError::Forbidden(
                    "not a participant of this conversation".into(),
                ));
            }
            conn.push(joined(position));
        }
        let mut cursor = from;
        loop {
            for message in page.drain(..) {
                cursor = message.seq;
                // This node may lag behind what the client saw elsewhere:
                // the replay starts at the room's position, but the client
                // gets only what it asked for.
                if since.is_some_and(|s| message.seq <= s) {
                    continue;
                }
                if !conn.send(message_frame(message)).await {
                    return Ok(());
                }
            }
            if !more {
                break;
            }
            match self.replay_page(&room, conn, cursor).await {
                Some(next) => (page, more) = next,
                None => return Ok(()),
            }
        }
        room.state.lock().finish_replay(conn.id, cursor);
        Ok(())
    }

    /// The replay page after `cursor`. The join is answered already, so a
    /// failed read is retried with back-off while the socket is open and
    /// joined; None once it is not.
    async fn replay_page(
        &self,
        room: &Room,
        conn: &Conn,
        cursor: Seq,
    ) -> Option<(Vec<Message>, bool)> {
        let mut backoff = Backoff::new();
        let mut warned = false;
        loop {
            match self.store.messages_after(room.id, cursor, PAGE).await {
                Ok(page) => return Some(page),
                Err(e) => {
                    self.metrics.recovery_retries.inc();
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(error = %e, conv = %room.id, "replay page failed; retrying while the socket is open");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = conn.closed() => return None,
            }
            if !room.state.lock().members.contains_key(&conn.id) {
                return None;
            }
        }
    }

    /// Stops delivering the conversation's events to `conn`. False if it was not joined.
    pub async fn leave(&self, conn: &Arc<Conn>, conv: ConversationId) -> bool {
        self.detach(conn, conv).await
    }

    async fn detach(&self, conn: &Arc<Conn>, conv: ConversationId) -> bool {
        conn.set_joined(conv, false);
        let Some(room) = self.rooms.get(&conv).map(|r| r.clone()) else {
            return false;
        };
        let (was_member, now_empty) = {
            let mut st = room.state.lock();
            let was = st.members.remove(&conn.id).is_some();
            (was, st.members.is_empty())
        };
        if now_empty {
            self.close_room_if_empty(conv).await;
        }
        was_member
    }

    /// Finds or opens the room: subscribe first, then read the last seq, so
    /// no event published in between is missed.
    async fn open_room(&self, conv: ConversationId) -> Result<Arc<Room>, ChatError> {
        // Fast path: an open room. One still opening (not yet initialized)
        // is waited for on the topology lock below, so a joiner never sees
        // it without its position.
        if let Some(room) = self.rooms.get(&conv) {
            if room.state.lock().delivered.is_some() {
                return Ok(room.clone());
            }
        }
        let topic = Topic::Conversation(conv);
        let _guard = self.topology(&topic).lock().await;
        if let Some(room) = self.rooms.get(&conv) {
            return Ok(room.clone());
        }
        let room = Arc::new(Room::new(
            conv,
            self.settings.outbound_queue,
            self.settings.recent_messages,
        ));
        self.rooms.insert(conv, room.clone());
        let opened = match self.bus.subscribe(&topic).await {
            Ok(()) => match self.store.last_seq(conv).await {
                Ok(Some(last)) => Ok(last),
                Ok(None) => Err(ChatError::NotFound("conversation")),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        };
        match opened {
            Ok(last) => {
                let recent = self.recent_messages(conv, last).await;
                if room.state.lock().initialize(last, recent) {
                    self.spawn_recovery(&room);
                }
                Ok(room)
            }
            Err(e) => {
                room.state.lock().closed = true;
                self.rooms.remove(&conv);
                let _ = self.bus.unsubscribe(&topic).await;
                Err(e)
            }
        }
    }

    /// The frames of the room's last messages up to `last`, to seed its
    /// recent ones: resumes right after the room opens (a drained node's
    /// clients arriving) need no store read either. Best effort: on a store
    /// error the room starts with none.
    async fn recent_messages(&self, conv: ConversationId, last: Seq) -> Vec<(Seq, Utf8Bytes)> {
        let limit = self.settings.recent_messages as u64;
        if limit == 0 || last == Seq(0) {
            return Vec::new();
        }
        match self
            .store
            .messages_before(conv, Some(last.next()), limit)
            .await
        {
            Ok((page, _)) => page
                .into_iter()
                .map(|m| (m.seq, message_frame(m)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, %conv, "reading recent messages failed");
                Vec::new()
            }
        }
    }

    async fn close_room_if_empty(&self, conv: ConversationId) {
        let topic = Topic::Conversation(conv);
        let _guard = self.topology(&topic).lock().await;
        let Some(room) = self.rooms.get(&conv).map(|r| r.clone()) else {
            return;
        };
        {
            let mut st = room.state.lock();
            if !st.members.is_empty() {
                return;
            }
            st.closed = true;
        }
        self.rooms.remove(&conv);
        if let Err(e) = self.bus.unsubscribe(&topic).await {
            tracing::warn!(error = %e, %conv, "unsubscribe from conversation failed");
        }
    }

    // ------------------------------------------------------------ membership cache

    /// Cached access rules of a conversation this node is subscribed to.
    pub fn cached_access(&self, conv: ConversationId) -> Option<Arc<Access>> {
        self.rooms.get(&conv)?.state.lock().access.clone()
    }

    /// The version to pass to `cache_access` after loading from the store.
    pub fn access_version(&self, conv: ConversationId) -> Option<u64> {
        Some(self.rooms.get(&conv)?.state.lock().access_version)
    }

    /// Caches access rules loaded at `version`, unless they changed since.
    pub fn cache_access(&self, conv: ConversationId, version: u64, access: Arc<Access>) {
        if let Some(room) = self.rooms.get(&conv) {
            let mut st = room.state.lock();
            if st.access_version == version && !st.closed {
                st.access = Some(access);
            }
        }
    }

    // ------------------------------------------------------------ recovery

    /// This node's publish of a message to `conv` failed: its own room (if
    /// any socket here is joined) catches up from the store, since the bus
    /// will not bring the message.
    pub fn publish_failed(&self, conv: ConversationId) {
        if let Some(room) = self.rooms.get(&conv).map(|r| r.clone()) {
            if room.state.lock().fall_behind() {
                self.spawn_recovery(&room);
            }
        }
    }

    /// Starts the room's recovery task unless it runs or is not needed.
    fn start_recovery(&self, room: &Arc<Room>) {
        if room.state.lock().claim_recovery() {
            self.spawn_recovery(room);
        }
    }

    /// Runs the recovery task the caller claimed.
    fn spawn_recovery(&self, room: &Arc<Room>) {
        let (Some(hub), room) = (self.arc(), room.clone()) else {
            return;
        };
        tokio::spawn(async move { hub.recover(room).await });
    }

    /// The room's one recovery task: waits briefly for a late publisher to
    /// close a gap, reads what is missing from the store, and catches up a
    /// room that fell behind; a failed read is retried with back-off until
    /// it succeeds or the room closes.
    async fn recover(self: Arc<Self>, room: Arc<Room>) {
        let mut backoff = Backoff::new();
        let mut gap_waited = false;
        let mut failures = 0u32;
        loop {
            let step = room.state.lock().next_recovery(gap_waited);
            let (from, epoch) = match step {
                Recovery::Done => return,
                Recovery::WaitForGap => {
                    tokio::time::sleep(self.settings.gap_wait).await;
                    gap_waited = true;
                    continue;
                }
                Recovery::Read { from, epoch, gap } => {
                    if gap {
                        self.metrics.gap_fills.inc();
                    }
                    (from, epoch)
                }
            };
            let read = {
                // Never closed, so a permit always comes.
                let _permit = self.recovery_reads.acquire().await.ok();
                self.catch_up(&room, from).await
            };
            match read {
                Ok(()) => {
                    room.state.lock().caught_up(epoch);
                    if failures > 0 {
                        tracing::info!(conv = %room.id, failures, "caught up from the store");
                    }
                    failures = 0;
                    backoff = Backoff::new();
                    gap_waited = false;
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.recovery_retries.inc();
                    // One warning per outage and room; the metric counts the rest.
                    if failures == 1 {
                        tracing::warn!(error = %e, conv = %room.id, "catching up from the store failed; retrying until it succeeds");
                    } else {
                        tracing::debug!(error = %e, conv = %room.id, failures, "catching up from the store failed again");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    // The gap, if any, had its wait.
                    gap_waited = true;
                }
            }
        }
    }

    /// Feeds every stored message after `from` through the room's ordering.
    async fn catch_up(&self, room: &Arc<Room>, mut from: Seq) -> Result<(), sea_orm::DbErr> {
        loop {
            let (page, more) = self.store.messages_after(room.id, from, PAGE).await?;
            for message in page {
                from = message.seq;
                let seq = message.seq;
                let (sent, _) = room.state.lock().on_message(seq, message_frame(message));
                self.metrics.events_delivered.inc_by(sent as u64);
            }
            if !more {
                return Ok(());
            }
        }
    }
}

/// Turns streams whose node went silent into `stream_error INTERRUPTED` for
/// the sockets watching them, so no tab spins forever.
async fn watch_streams(hub: Weak<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let timeout = hub.settings.stream_timeout;
        let rooms: Vec<Arc<Room>> = hub.rooms.iter().map(|r| r.value().clone()).collect();
        for room in rooms {
            let mut st = room.state.lock();
            if st.streams.is_empty() {
                continue;
            }
            let dead: Vec<StreamId> = st
                .streams
                .iter()
                .filter(|(_, at)| at.elapsed() > timeout)
                .map(|(id, _)| *id)
                .collect();
            for stream_id in dead {
                st.streams.remove(&stream_id);
                let frame: Utf8Bytes = ServerFrame::StreamError {
                    stream_id,
                    conversation_id: room.id,
                    code: ErrorCode::Interrupted,
                    message: "the stream's node stopped answering".into(),
                    retry_after_ms: None,
                }
                .encode()
                .into();
                let sent = st.on_ephemeral(&frame, None);
                hub.metrics.events_delivered.inc_by(sent as u64);
            }
        }
    }
}

/// The `message_received` frame of a stored message.
pub fn message_frame(message: Message) -> Utf8Bytes {
    ServerFrame::MessageReceived { message }.encode().into()
}

impl EventSink for Hub {
    fn deliver(&self, event: Arc<Event>) {
        let span = event.deliver_span();
        let _entered = span.enter();
        let age_us = chrono::Utc::now().timestamp_micros() - event.published_at_us;
        self.metrics
            .delivery_latency
            .observe(age_us.max(0) as f64 / 1e6);
        let Ok(frame) = Utf8Bytes::try_from(event.payload.clone()) else {
            tracing::warn!("dropped a bus event that is not UTF-8");
            return;
        };
        let sent = match (&event.topic, &event.kind) {
            (Topic::Conversation(conv), kind) => {
                let Some(room) = self.rooms.get(conv).map(|r| r.clone()) else {
                    return;
                };
                match kind {
                    EventKind::Message { seq } => {
                        let (sent, gap) = room.state.lock().on_message(*seq, frame);
                        if gap {
                            self.start_recovery(&room);
                        }
                        sent
                    }
                    EventKind::Ephemeral { except } => {
                        room.state.lock().on_ephemeral(&frame, *except)
                    }
                    EventKind::Membership { removed } => {
                        self.on_membership(&room, removed.as_ref());
                        0
                    }
                    EventKind::Stream { stream_id, end } => {
                        let mut st = room.state.lock();
                        if *end {
                            st.streams.remove(stream_id);
                        } else {
                            st.streams.insert(*stream_id, Instant::now());
                        }
                        if frame.is_empty() {
                            0
                        } else {
                            st.on_ephemeral(&frame, None)
                        }
                    }
                    EventKind::Notice { .. } | EventKind::Cancel { .. } => 0,
                }
            }
            (Topic::Streams, EventKind::Cancel { stream_id, by }) => {
                if let Some(control) = self.streams.get().and_then(Weak::upgrade) {
                    control.cancel(*stream_id, by.clone());
                }
                0
            }
            (Topic::Streams, _) => 0,
            (Topic::User(user), EventKind::Notice { skip_joined }) => {
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
            (Topic::User(_), _) => 0,
        };
        span.record("sockets", sent);
        self.metrics.events_delivered.inc_by(sent as u64);
    }

    /// Every room may have missed messages while the bus was away: each
    /// falls behind and catches up from the store, retrying until it can.
    fn resync(&self) {
        self.metrics.bus_resyncs.inc();
        let rooms: Vec<Arc<Room>> = self.rooms.iter().map(|r| r.value().clone()).collect();
        for room in rooms {
            if room.state.lock().fall_behind() {
                self.spawn_recovery(&room);
            }
        }
    }
}

impl Hub {
    /// Participants changed: forget cached access; detach a removed user's
    /// sockets (they get `left`, and no more of the conversation's events).
    fn on_membership(&self, room: &Arc<Room>, removed: Option<&UserId>) {
        let mut kicked = Vec::new();
        let now_empty = {
            let mut st = room.state.lock();
            st.access = None;
            st.access_version += 1;
            if let Some(user) = removed {
                let ids: HashSet<_> = st
                    .members
                    .values()
                    .filter(|m| &m.conn.user == user)
                    .map(|m| m.conn.id)
                    .collect();
                for id in ids {
                    if let Some(m) = st.members.remove(&id) {
                        kicked.push(m.conn);
                    }
                }
            }
            !kicked.is_empty() && st.members.is_empty()
        };
        let left: Utf8Bytes = ServerFrame::Left {
            conversation_id: room.id,
            reply_to: None,
        }
        .encode()
        .into();
        for conn in kicked {
            conn.set_joined(room.id, false);
            conn.push(left.clone());
        }
        if now_empty {
            if let Some(hub) = self.arc() {
                let conv = room.id;
                tokio::spawn(async move { hub.close_room_if_empty(conv).await });
            }
        }
    }
}
