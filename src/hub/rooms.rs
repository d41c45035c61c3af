//! Conversations with local connections joined: joining (with a replay of
//! what a resuming client missed), leaving, and the room's subscription to
//! the conversation's topic. The ordering itself is `room.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::backoff::Backoff;
use super::room::{JoinPlan, Room};
use super::{Conn, Entry, Hub, Page, PAGE};
use crate::bus::Topic;
use crate::error::ChatError;
use crate::model::{Access, ConversationId, Seq, UserId};

impl Hub {
    /// Joins `conn` to the conversation: queues `joined(position)`, replays
    /// every stored entry after `since` (if given), then delivers live
    /// events, with none missing and none twice. Answers exactly once:
    /// `joined` only once the replay's first page is read; if that read
    /// fails, the error is returned (for the caller to answer) and the
    /// connection is not joined. Later pages that fail are retried while
    /// the connection is open.
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        conv: ConversationId,
        since: Option<Seq>,
        joined: impl Fn(Seq) -> Utf8Bytes,
    ) -> Result<(), ChatError> {
        if conn.is_joined(&conv) {
            self.detach(conn, conv).await;
        }
        let (room, from, position) = loop {
            let room = self.open_room(conv).await?;
            let (plan, first) = {
                let mut st = room.state.lock();
                if st.closed {
                    continue;
                }
                let plan = st.join(conn, since, &joined);
                conn.set_joined(conv, true);
                (plan, st.has_one_of(&conn.user))
            };
            if first {
                if let Some(attendance) = self.attendance() {
                    attendance.arrived(conv, &conn.user);
                }
            }
            match plan {
                JoinPlan::Answered => return Ok(()),
                JoinPlan::CatchUp { cursor } => {
                    self.tell_streams(&room, conn, cursor).await;
                    return Ok(());
                }
                JoinPlan::Replay { from, position } => break (room, from, position),
            }
        };
        let (mut page, mut more) = match self.history.after(conv, from, PAGE).await {
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
            for entry in page.drain(..) {
                cursor = entry.seq;
                // This node may lag behind what the client saw elsewhere:
                // the replay starts at the room's position, but the client
                // gets only what it asked for.
                if since.is_some_and(|s| entry.seq <= s) {
                    continue;
                }
                if !conn.send(entry.frame).await {
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
        self.tell_streams(&room, conn, cursor).await;
        Ok(())
    }

    /// Ends a join whose messages are all queued up to `cursor`: the
    /// streams of the conversation waiting or being written are read (if
    /// the room cannot tell there are none) and told, then the live frames
    /// held meanwhile follow, less what the catch-up covers. A failed read
    /// is logged: the joiner then sees streams from their next frame on.
    async fn tell_streams(&self, room: &Room, conn: &Conn, cursor: Seq) {
        let needed = room.state.lock().needs_catch_up();
        let found = match self.stream_events() {
            Some(streams) if needed => match streams.catch_up(room.id).await {
                Ok(found) => Some(found),
                Err(e) => {
                    tracing::warn!(error = %e, conv = %room.id, "cannot read the conversation's streams for a joiner");
                    None
                }
            },
            _ => Some(Vec::new()),
        };
        room.state.lock().finish_replay(conn.id, cursor, found);
    }

    /// The replay page after `cursor`. The join is answered already, so a
    /// failed read is retried with back-off while the connection is open
    /// and joined; None once it is not.
    async fn replay_page(&self, room: &Room, conn: &Conn, cursor: Seq) -> Option<Page> {
        let mut backoff = Backoff::new();
        let mut warned = false;
        loop {
            match self.history.after(room.id, cursor, PAGE).await {
                Ok(page) => return Some(page),
                Err(e) => {
                    self.metrics.recovery_retries.inc();
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(error = %e, conv = %room.id, "replay page failed; retrying while the connection is open");
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

    pub(super) async fn detach(&self, conn: &Arc<Conn>, conv: ConversationId) -> bool {
        conn.set_joined(conv, false);
        let Some(room) = self.rooms.get(&conv).map(|r| r.clone()) else {
            return false;
        };
        let (removed, now_empty) = {
            let mut st = room.state.lock();
            let removed = st.remove_member(&conn.id);
            (removed, st.members.is_empty())
        };
        let was_member = removed.is_some();
        if let Some((_, true)) = removed {
            self.departed(conv, &conn.user);
        }
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
            Ok(()) => match self.history.last_seq(conv).await {
                Ok(Some(last)) => Ok(last),
                Ok(None) => Err(ChatError::NotFound("conversation")),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        };
        match opened {
            Ok(last) => {
                let recent = self.recent_entries(conv, last).await;
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

    /// The room's last entries up to `last`, to seed its recent ones:
    /// resumes right after the room opens (a drained node's clients
    /// arriving) need no history read either. Best effort: on an error the
    /// room starts with none.
    async fn recent_entries(&self, conv: ConversationId, last: Seq) -> Vec<Entry> {
        let limit = self.settings.recent_messages as u64;
        if limit == 0 || last == Seq(0) {
            return Vec::new();
        }
        match self.history.before(conv, last.next(), limit).await {
            Ok((page, _)) => page,
            Err(e) => {
                tracing::warn!(error = %e, %conv, "reading recent entries failed");
                Vec::new()
            }
        }
    }

    pub(super) async fn close_room_if_empty(&self, conv: ConversationId) {
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
        if let Some(streams) = self.stream_events() {
            streams.forget(conv);
        }
        if let Err(e) = self.bus.unsubscribe(&topic).await {
            tracing::warn!(error = %e, %conv, "unsubscribe from conversation failed");
        }
    }

    /// Whether a connection of `user` here is joined to `conv`.
    pub fn holds(&self, conv: ConversationId, user: &UserId) -> bool {
        self.rooms
            .get(&conv)
            .is_some_and(|room| room.state.lock().has_member_of(user))
    }

    /// Every conversation with connections joined here, and their users.
    pub fn held(&self) -> Vec<(ConversationId, Vec<UserId>)> {
        let rooms: Vec<_> = self.rooms.iter().map(|r| r.value().clone()).collect();
        rooms
            .into_iter()
            .map(|room| (room.id, room.state.lock().member_users()))
            .filter(|(_, users)| !users.is_empty())
            .collect()
    }

    fn departed(&self, conv: ConversationId, user: &UserId) {
        if let Some(attendance) = self.attendance() {
            attendance.departed(conv, user);
        }
    }

    /// Queues an ephemeral frame made on this node (not carried by the bus)
    /// to every local connection joined to the conversation.
    pub fn deliver_local(&self, conv: ConversationId, frame: &Utf8Bytes) -> usize {
        let Some(room) = self.rooms.get(&conv).map(|r| r.clone()) else {
            return 0;
        };
        let sent = room.state.lock().on_ephemeral(frame, None);
        self.metrics.events_delivered.inc_by(sent as u64);
        sent
    }

    // ------------------------------------------------------------ access, kept with the room

    /// The conversation's access rules as `chat` cached them, while this
    /// node is subscribed to it (membership events then reach it).
    pub fn cached_access(&self, conv: ConversationId) -> Option<Arc<Access>> {
        self.rooms.get(&conv)?.state.lock().access.clone()
    }

    /// The version to pass to `cache_access` after loading from the store;
    /// None while no room is open (nothing would invalidate the cache).
    pub fn access_version(&self, conv: ConversationId) -> Option<u64> {
        Some(self.rooms.get(&conv)?.state.lock().access_version)
    }

    /// Keeps access rules loaded at `version`, unless they changed since.
    pub fn cache_access(&self, conv: ConversationId, version: u64, access: Arc<Access>) {
        if let Some(room) = self.rooms.get(&conv) {
            let mut st = room.state.lock();
            if st.access_version == version && !st.closed {
                st.access = Some(access);
            }
        }
    }

    /// Participants changed: forget cached access; detach a removed user's
    /// connections, which get `left` (the event's frame) and no more of
    /// the conversation's events.
    pub(super) fn on_membership(
        &self,
        room: &Arc<Room>,
        removed: Option<&UserId>,
        left: &Utf8Bytes,
    ) {
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
                    if let Some((m, _)) = st.remove_member(&id) {
                        kicked.push(m.conn);
                    }
                }
            }
            !kicked.is_empty() && st.members.is_empty()
        };
        if let (Some(user), false) = (removed, kicked.is_empty()) {
            self.departed(room.id, user);
        }
        for conn in kicked {
            conn.set_joined(room.id, false);
            if !left.is_empty() {
                conn.push(left.clone());
            }
        }
        if now_empty {
            if let Some(hub) = self.arc() {
                let conv = room.id;
                self.tasks
                    .spawn(async move { hub.close_room_if_empty(conv).await });
            }
        }
    }
}
