//! One conversation's delivery state on this node: which local connections
//! are joined, the highest seq delivered, later seqs held back until the
//! earlier ones arrive, and the last messages delivered, so a resume that
//! lags by little is answered from memory. It also knows when its position
//! cannot be trusted (it may be behind the store) and drives the one
//! recovery task that catches it up. All methods are synchronous and run
//! under the room's lock; anything slow (store reads) happens outside it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::conn::Conn;
use super::history::Entry;
use super::outbox::Reservation;
use super::router::{CatchUp, Covers};
use crate::bus::StreamStep;
use crate::model::{Access, CloseReason, ConnectionId, ConversationId, Seq, StreamId, UserId};

/// A local socket joined to the room.
pub(super) struct Member {
    pub conn: Arc<Conn>,
    /// Highest seq this socket has been sent.
    pub cursor: Seq,
    /// While the socket's `since_seq` replay runs, live frames wait here,
    /// counted against the socket's byte budget as queued frames are.
    pub replay: Option<Vec<(Buffered, Reservation)>>,
    /// What its catch-up told of each stream: a live frame it already
    /// covers (one published just before the catch-up read it, arriving
    /// after) is not sent again. Forgotten when the stream ends.
    pub covered: Vec<(StreamId, Covers)>,
}

/// Most streams a member remembers the catch-up of (a conversation has
/// one answer being written; the rest wait).
const COVERED_LIMIT: usize = 16;

/// A live frame that arrived during a replay (or a catch-up).
pub(super) enum Buffered {
    Message(Seq, Utf8Bytes),
    Stream {
        stream_id: StreamId,
        step: StreamStep,
        end: bool,
        frame: Utf8Bytes,
    },
    Other(Utf8Bytes),
}

impl Buffered {
    fn frame(&self) -> &Utf8Bytes {
        match self {
            Buffered::Message(_, frame)
            | Buffered::Stream { frame, .. }
            | Buffered::Other(frame) => frame,
        }
    }
}

/// A conversation with at least one local socket joined.
pub(super) struct Room {
    pub id: ConversationId,
    pub state: parking_lot::Mutex<RoomState>,
}

pub(super) struct RoomState {
    /// Highest seq delivered in order; None until the room is initialized.
    pub delivered: Option<Seq>,
    /// Entries that arrived ahead of a missing one.
    pub pending: BTreeMap<Seq, Entry>,
    /// The room may be behind the store: messages were stored that the bus
    /// will not bring (it reconnected, or this node's publish failed). Joins
    /// with `since_seq` then read the store instead of trusting `delivered`,
    /// and the recovery task catches up until it succeeds.
    behind: bool,
    /// Bumped each time the room falls behind, so a catch-up that started
    /// before a newer fault does not clear `behind`.
    epoch: u64,
    /// The recovery task (gap fill, catch-up) runs: at most one per room.
    recovering: bool,
    pub members: HashMap<ConnectionId, Member>,
    /// Members per user: a user is here while they have one (presence).
    users: HashMap<UserId, usize>,
    pub access: Option<Arc<Access>>,
    /// Bumped on every membership change, so a stale load is not cached.
    pub access_version: u64,
    /// Set when the room is removed from the hub; late joiners retry.
    pub closed: bool,
    /// Bound on buffered frames per replaying socket.
    pub queue_limit: usize,
    /// The last entries delivered, oldest first: consecutive seqs ending at
    /// `delivered`. A resume within them needs no store read. A change of a
    /// message drops the older entries of that message from here (and all
    /// before them, so the rest stays consecutive): their frames hold a
    /// state that is no longer current, and a replay carries only current
    /// state, so such a resume reads the store.
    recent: VecDeque<Entry>,
    recent_limit: usize,
    /// Assistant streams heard of here, queued or being written, not yet
    /// ended. With `streams_known`, a join that finds none needs no
    /// catch-up read.
    streams: HashSet<StreamId>,
    /// False until a catch-up read told the streams of the conversation,
    /// and again once the room may have missed stream events.
    streams_known: bool,
}

impl Room {
    pub fn new(id: ConversationId, queue_limit: usize, recent_limit: usize) -> Self {
        Room {
            id,
            state: parking_lot::Mutex::new(RoomState {
                delivered: None,
                pending: BTreeMap::new(),
                behind: false,
                epoch: 0,
                recovering: false,
                members: HashMap::new(),
                users: HashMap::new(),
                access: None,
                access_version: 0,
                closed: false,
                queue_limit,
                recent: VecDeque::new(),
                recent_limit,
                streams: HashSet::new(),
                streams_known: false,
            }),
        }
    }
}

impl RoomState {
    /// Takes a log entry's frame. Returns how many sockets got it and
    /// whether a gap remains (seqs held back behind a missing one).
    pub fn on_entry(&mut self, entry: Entry) -> (usize, bool) {
        let seq = entry.seq;
        let Some(delivered) = self.delivered else {
            self.pending.insert(seq, entry);
            return (0, false);
        };
        if seq <= delivered {
            return (0, !self.pending.is_empty());
        }
        if seq != delivered.next() {
            self.pending.insert(seq, entry);
            return (0, true);
        }
        let mut sent = self.fan_out(entry);
        sent += self.drain_pending();
        (sent, !self.pending.is_empty())
    }

    /// Sets the starting point once the store told the last seq, with the
    /// frames of the messages up to it (kept only if they end at `last` in
    /// consecutive seqs). True if the caller must start the recovery task
    /// (a gap remains, or the room fell behind while opening).
    pub fn initialize(&mut self, last: Seq, recent: Vec<Entry>) -> bool {
        self.delivered = Some(last);
        self.recent.clear();
        let consecutive = recent.windows(2).all(|w| w[1].seq == w[0].seq.next());
        if consecutive && recent.last().is_some_and(|e| e.seq == last) {
            let skip = recent.len().saturating_sub(self.recent_limit);
            self.recent.extend(recent.into_iter().skip(skip));
        }
        self.drain_pending();
        self.claim_recovery()
    }

    /// Delivers held seqs that are now next in line; drops stale ones.
    fn drain_pending(&mut self) -> usize {
        let mut sent = 0;
        while let Some(entry) = self.pending.first_entry() {
            let delivered = self.delivered.unwrap_or_default();
            let seq = *entry.key();
            if seq <= delivered {
                entry.remove();
            } else if seq == delivered.next() {
                let entry = entry.remove();
                sent += self.fan_out(entry);
            } else {
                break;
            }
        }
        sent
    }

    fn fan_out(&mut self, entry: Entry) -> usize {
        let Entry {
            seq,
            message,
            frame,
        } = entry;
        self.delivered = Some(seq);
        if self.recent_limit > 0 {
            if let Some(id) = message {
                if let Some(last) = self.recent.iter().rposition(|e| e.message == Some(id)) {
                    self.recent.drain(..=last);
                }
            }
            if self.recent.len() == self.recent_limit {
                self.recent.pop_front();
            }
            self.recent.push_back(Entry {
                seq,
                message,
                frame: frame.clone(),
            });
        }
        let limit = self.queue_limit;
        let mut sent = 0;
        for m in self.members.values_mut() {
            if let Some(buf) = &mut m.replay {
                push_buffered(&m.conn, buf, Buffered::Message(seq, frame.clone()), limit);
            } else if seq > m.cursor {
                m.cursor = seq;
                sent += m.conn.push(frame.clone()) as usize;
            }
        }
        sent
    }

    /// Delivers an ephemeral frame to every joined socket but `except`.
    pub fn on_ephemeral(&mut self, frame: &Utf8Bytes, except: Option<ConnectionId>) -> usize {
        let limit = self.queue_limit;
        let mut sent = 0;
        for m in self.members.values_mut() {
            if Some(m.conn.id) == except {
                continue;
            }
            if let Some(buf) = &mut m.replay {
                push_buffered(&m.conn, buf, Buffered::Other(frame.clone()), limit);
            } else {
                sent += m.conn.push(frame.clone()) as usize;
            }
        }
        sent
    }

    /// Delivers a stream's frame (if it has one: heartbeats do not) to
    /// every joined socket, and notes which streams are alive.
    pub fn on_stream(
        &mut self,
        stream_id: StreamId,
        step: StreamStep,
        end: bool,
        frame: Utf8Bytes,
    ) -> usize {
        if end {
            self.streams.remove(&stream_id);
        } else {
            self.streams.insert(stream_id);
        }
        if frame.is_empty() {
            return 0;
        }
        let limit = self.queue_limit;
        let mut sent = 0;
        for m in self.members.values_mut() {
            if let Some(buf) = &mut m.replay {
                let item = Buffered::Stream {
                    stream_id,
                    step,
                    end,
                    frame: frame.clone(),
                };
                push_buffered(&m.conn, buf, item, limit);
                continue;
            }
            if let Some(at) = m.covered.iter().position(|(s, _)| *s == stream_id) {
                if m.covered[at].1.covers(step, end) {
                    continue;
                }
                if end {
                    m.covered.remove(at);
                }
            }
            sent += m.conn.push(frame.clone()) as usize;
        }
        sent
    }

    /// True if a joiner must read which streams run here: the room has
    /// not read them since it opened (or fell behind), or some are alive.
    pub fn needs_catch_up(&self) -> bool {
        !self.streams_known || !self.streams.is_empty()
    }

    /// The frames of every entry after `since` up to `delivered`, if the
    /// recent ones cover them all (None: read the store).
    pub fn recent_after(&self, since: Seq) -> Option<impl Iterator<Item = &Utf8Bytes>> {
        let oldest = self.recent.front()?.seq;
        (oldest <= since.next()).then(|| {
            self.recent
                .iter()
                .filter(move |e| e.seq > since)
                .map(|e| &e.frame)
        })
    }

    /// The first missing seq's predecessor, if a gap is waiting to be filled.
    pub fn gap_start(&self) -> Option<Seq> {
        match (self.delivered, self.pending.is_empty()) {
            (Some(d), false) => Some(d),
            _ => None,
        }
    }

    // ------------------------------------------------------------ joins

    /// Adds `conn` as a member. A join answered from memory queues `joined`
    /// (made by `joined` from the room's position) and the missed messages
    /// the room still holds, under the lock, so no live message comes
    /// between. A join that must read the store gets `Replay`: the member
    /// buffers live frames and nothing is queued for it, so the caller can
    /// still answer with an error if the store fails.
    pub fn join(
        &mut self,
        conn: &Arc<Conn>,
        since: Option<Seq>,
        joined: impl FnOnce(Seq) -> Utf8Bytes,
    ) -> JoinPlan {
        let last = self.delivered.unwrap_or_default();
        let from = match since {
            None => None,
            // Messages may be stored past the room's position that no bus
            // event will bring: only the store knows.
            Some(s) if self.behind => Some(s.min(last)),
            // Already at the room's position (a client resuming on another
            // node, typically): live events carry on from `last`, as after
            // a join without `since_seq`.
            Some(s) if s == last => None,
            // This node lags behind what the client saw elsewhere.
            Some(s) if s > last => Some(last),
            // A short lag (a reconnect storm, typically): the room still
            // has every missed message.
            Some(s) if self.recent_after(s).is_some() => None,
            Some(s) => Some(s),
        };
        let Some(from) = from else {
            conn.push(joined(last));
            if let Some(frames) = since.and_then(|s| self.recent_after(s)) {
                for frame in frames {
                    conn.push(frame.clone());
                }
            }
            // A stream may be running: live frames wait until the
            // catch-up is read, so none comes before its snapshot.
            let catch_up = self.needs_catch_up();
            self.add_member(Member {
                conn: conn.clone(),
                cursor: last,
                replay: catch_up.then(Vec::new),
                covered: Vec::new(),
            });
            return if catch_up {
                JoinPlan::CatchUp { cursor: last }
            } else {
                JoinPlan::Answered
            };
        };
        self.add_member(Member {
            conn: conn.clone(),
            cursor: from,
            replay: Some(Vec::new()),
            covered: Vec::new(),
        });
        JoinPlan::Replay {
            from,
            position: last,
        }
    }

    /// Adds a member, counting it under its user.
    fn add_member(&mut self, member: Member) {
        let user = member.conn.user.clone();
        if self.members.insert(member.conn.id, member).is_none() {
            *self.users.entry(user).or_default() += 1;
        }
    }

    /// Removes a member; with it, true if it was its user's last here.
    pub fn remove_member(&mut self, id: &ConnectionId) -> Option<(Member, bool)> {
        let member = self.members.remove(id)?;
        let user = &member.conn.user;
        let last = match self.users.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.users.remove(user);
                true
            }
            None => false,
        };
        Some((member, last))
    }

    /// True if `user` has exactly one member here (the one just added).
    pub fn has_one_of(&self, user: &UserId) -> bool {
        self.users.get(user) == Some(&1)
    }

    pub fn has_member_of(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    /// The users with a member here.
    pub fn member_users(&self) -> Vec<UserId> {
        self.users.keys().cloned().collect()
    }

    /// Ends a member's replay, which sent it every message up to `cursor`,
    /// and its catch-up (None: it could not be read): the catch-up's frames
    /// are queued, then the live frames that came meanwhile, none at or
    /// below `cursor` and none a catch-up covers. False if the member has
    /// left.
    pub fn finish_replay(
        &mut self,
        id: ConnectionId,
        mut cursor: Seq,
        catch_up: Option<Vec<CatchUp>>,
    ) -> bool {
        let Some(member) = self.members.get_mut(&id) else {
            return false;
        };
        let buffered = member.replay.take().unwrap_or_default();
        let known = catch_up.is_some();
        let catch_up = catch_up.unwrap_or_default();
        for c in &catch_up {
            for frame in &c.frames {
                member.conn.push(frame.clone());
            }
        }
        // What the catch-up read, and what happened since it began, is
        // every stream alive now.
        let mut alive: HashSet<StreamId> = catch_up.iter().map(|c| c.stream_id).collect();
        for (item, held) in buffered {
            // Its bytes move from the reservation to the queue.
            drop(held);
            match item {
                Buffered::Message(seq, frame) if seq > cursor => {
                    cursor = seq;
                    member.conn.push(frame);
                }
                Buffered::Message(..) => {}
                Buffered::Stream {
                    stream_id,
                    step,
                    end,
                    frame,
                } => {
                    if end {
                        alive.remove(&stream_id);
                    } else {
                        alive.insert(stream_id);
                    }
                    let covered = catch_up
                        .iter()
                        .find(|c| c.stream_id == stream_id)
                        .is_some_and(|c| c.covers.covers(step, end));
                    if !covered {
                        member.conn.push(frame);
                    }
                }
                Buffered::Other(frame) => {
                    member.conn.push(frame);
                }
            }
        }
        member.cursor = cursor;
        member.covered = catch_up
            .iter()
            .filter(|c| alive.contains(&c.stream_id))
            .map(|c| (c.stream_id, c.covers))
            .take(COVERED_LIMIT)
            .collect();
        if known {
            self.streams = alive;
            self.streams_known = true;
        }
        true
    }

    // ------------------------------------------------------------ recovery

    /// True while the room's position may lag behind the store.
    #[cfg(test)]
    pub fn is_behind(&self) -> bool {
        self.behind
    }

    /// The room may have missed stored messages (the bus reconnected, or a
    /// publish of this node failed). True if the caller must start the
    /// recovery task; one already running picks the new fault up.
    pub fn fall_behind(&mut self) -> bool {
        self.behind = true;
        // Stream events may have been missed too.
        self.streams_known = false;
        self.epoch += 1;
        self.claim_recovery()
    }

    /// True if the caller must start the recovery task: the room needs one
    /// and none runs. A room still opening is started by `initialize`.
    pub fn claim_recovery(&mut self) -> bool {
        let needed = self.behind || self.gap_start().is_some();
        if !needed || self.recovering || self.closed || self.delivered.is_none() {
            return false;
        }
        self.recovering = true;
        true
    }

    /// The recovery task's next step; `gap_waited` once it gave the current
    /// gap `gap_wait` to close by itself. After `Done` the task ends, and a
    /// new fault or gap claims a new one.
    pub fn next_recovery(&mut self, gap_waited: bool) -> Recovery {
        let step = match self.delivered {
            _ if self.closed => Recovery::Done,
            None => Recovery::Done,
            Some(from) if self.behind => Recovery::Read {
                from,
                epoch: self.epoch,
                gap: false,
            },
            Some(_) => match self.gap_start() {
                Some(from) if gap_waited => Recovery::Read {
                    from,
                    epoch: self.epoch,
                    gap: true,
                },
                Some(_) => Recovery::WaitForGap,
                None => Recovery::Done,
            },
        };
        if step == Recovery::Done {
            self.recovering = false;
        }
        step
    }

    /// A read that `next_recovery` asked for at `epoch` fed every stored
    /// message through the room: it is no longer behind, unless it fell
    /// behind again since the read began.
    pub fn caught_up(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.behind = false;
        }
    }
}

/// How `RoomState::join` answered.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum JoinPlan {
    /// `joined` and every missed message are queued.
    Answered,
    /// `joined` and every missed message are queued; live frames wait
    /// until the streams running are read (`finish_replay` at `cursor`).
    CatchUp { cursor: Seq },
    /// Nothing is queued yet: read the store after `from`, then answer
    /// `joined` with `position`, the room's position when the socket joined.
    Replay { from: Seq, position: Seq },
}

/// What the room's recovery task does next (see `RoomState::next_recovery`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Nothing is missing, or the room closed: the task ends.
    Done,
    /// Seqs wait behind a missing one: give a late publisher `gap_wait`.
    WaitForGap,
    /// Feed every stored message after `from` through the room, then
    /// report `caught_up(epoch)`; on failure, back off and ask again.
    /// `gap`: it fills a gap (the room is not behind).
    Read { from: Seq, epoch: u64, gap: bool },
}

fn push_buffered(
    conn: &Conn,
    buf: &mut Vec<(Buffered, Reservation)>,
    item: Buffered,
    limit: usize,
) {
    if buf.len() >= limit {
        conn.close(CloseReason::SlowConsumer);
        return;
    }
    // Without room in the socket's budget the socket is closed (4009).
    if let Some(held) = conn.reserve(item.frame().len()) {
        buf.push((item, held));
    }
}

#[cfg(test)]
impl RoomState {
    /// A new message's entry, for tests that only need seq and frame.
    pub fn on_message(&mut self, seq: Seq, frame: Utf8Bytes) -> (usize, bool) {
        self.on_entry(Entry {
            seq,
            message: None,
            frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageId;

    fn room_with_member() -> (RoomState, crate::hub::Outbox) {
        let room = Room::new(ConversationId::new(), 100, 3);
        let (conn, rx) = Conn::new(UserId::parse("u").unwrap(), 100);
        let conn = Arc::new(conn);
        let mut st = room.state.into_inner();
        st.initialize(Seq(0), Vec::new());
        // As after a first join's catch-up read found no stream.
        st.streams_known = true;
        st.members.insert(
            conn.id,
            Member {
                conn,
                cursor: Seq(0),
                replay: None,
                covered: Vec::new(),
            },
        );
        (st, rx)
    }

    fn drain(rx: &mut crate::hub::Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f.to_string());
        }
        out
    }

    #[test]
    fn holds_later_seqs_until_the_gap_closes() {
        let (mut st, mut rx) = room_with_member();
        assert_eq!(st.on_message(Seq(2), "2".into()), (0, true));
        assert_eq!(st.on_message(Seq(3), "3".into()), (0, true));
        assert!(drain(&mut rx).is_empty());
        assert_eq!(st.gap_start(), Some(Seq(0)));
        assert_eq!(st.on_message(Seq(1), "1".into()), (3, false));
        assert_eq!(drain(&mut rx), ["1", "2", "3"]);
    }

    #[test]
    fn drops_duplicates() {
        let (mut st, mut rx) = room_with_member();
        st.on_message(Seq(1), "1".into());
        st.on_message(Seq(1), "1".into());
        st.on_message(Seq(2), "2".into());
        st.on_message(Seq(1), "1".into());
        assert_eq!(drain(&mut rx), ["1", "2"]);
    }

    #[test]
    fn events_before_initialization_wait() {
        let room = Room::new(ConversationId::new(), 10, 3);
        let mut st = room.state.into_inner();
        st.on_message(Seq(5), "5".into());
        st.on_message(Seq(6), "6".into());
        // The store said 5 was already there when the room opened.
        assert!(!st.initialize(Seq(5), Vec::new()));
        assert_eq!(st.delivered, Some(Seq(6)));
    }

    #[test]
    fn recent_messages_cover_a_short_resume_only() {
        let (mut st, _rx) = room_with_member();
        let covered = |st: &RoomState, since: i64| {
            st.recent_after(Seq(since))
                .map(|frames| frames.map(|f| f.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(covered(&st, 0), None, "nothing delivered yet");
        for seq in 1..=5 {
            st.on_message(Seq(seq), seq.to_string().into());
        }
        // The last three are kept: 3, 4, 5.
        assert_eq!(covered(&st, 5), Some(vec![]));
        assert_eq!(
            covered(&st, 3),
            Some(vec!["4".to_string(), "5".to_string()])
        );
        assert_eq!(
            covered(&st, 2),
            Some(vec!["3".into(), "4".into(), "5".into()])
        );
        assert_eq!(covered(&st, 1), None, "2 is no longer kept");
        // Seqs held back behind a gap are not recent until delivered.
        st.on_message(Seq(7), "7".into());
        assert_eq!(covered(&st, 4), Some(vec!["5".to_string()]));
    }

    #[test]
    fn a_change_drops_the_older_entries_of_its_message_from_the_recent_ones() {
        let room = Room::new(ConversationId::new(), 10, 10);
        let mut st = room.state.into_inner();
        st.initialize(Seq(0), Vec::new());
        let (a, b, c) = (MessageId::new(), MessageId::new(), MessageId::new());
        let entry = |seq: i64, message: MessageId| Entry {
            seq: Seq(seq),
            message: Some(message),
            frame: seq.to_string().into(),
        };
        st.on_entry(entry(1, a));
        st.on_entry(entry(2, b));
        st.on_entry(entry(3, c));
        let frames = |st: &RoomState, since: i64| {
            st.recent_after(Seq(since))
                .map(|f| f.map(|f| f.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            frames(&st, 0),
            Some(vec!["1".to_string(), "2".into(), "3".into()])
        );
        // 4 changes `a`: entry 1 (its old state) goes.
        st.on_entry(entry(4, a));
        assert_eq!(frames(&st, 0), None, "a resume from 0 reads the store");
        assert_eq!(
            frames(&st, 1),
            Some(vec!["2".to_string(), "3".into(), "4".into()])
        );
        // 5 changes `b`: entry 2 goes; 3 and 4 stay.
        st.on_entry(entry(5, b));
        assert_eq!(frames(&st, 1), None);
        assert_eq!(
            frames(&st, 2),
            Some(vec!["3".to_string(), "4".into(), "5".into()])
        );
        // 6 changes `a` again: everything up to its change 4 goes.
        st.on_entry(entry(6, a));
        assert_eq!(frames(&st, 3), None);
        assert_eq!(frames(&st, 4), Some(vec!["5".to_string(), "6".into()]));
    }

    #[test]
    fn recent_messages_are_seeded_only_when_they_end_at_the_start() {
        let room = Room::new(ConversationId::new(), 10, 3);
        let mut st = room.state.into_inner();
        let frames = |seqs: &[i64]| -> Vec<Entry> {
            seqs.iter()
                .map(|s| Entry {
                    seq: Seq(*s),
                    message: None,
                    frame: s.to_string().into(),
                })
                .collect()
        };
        st.initialize(Seq(9), frames(&[5, 6, 7, 8, 9]));
        let kept: Vec<String> = st
            .recent_after(Seq(6))
            .unwrap()
            .map(|f| f.to_string())
            .collect();
        assert_eq!(kept, ["7", "8", "9"], "the newest three");
        assert!(st.recent_after(Seq(5)).is_none());
        st.initialize(Seq(10), frames(&[8, 9]));
        assert!(st.recent_after(Seq(9)).is_none(), "not ending at the start");
        st.initialize(Seq(9), frames(&[7, 9]));
        assert!(st.recent_after(Seq(8)).is_none(), "not consecutive");
    }

    #[test]
    fn ephemeral_skips_the_originating_socket() {
        let (mut st, mut rx) = room_with_member();
        let id = *st.members.keys().next().unwrap();
        assert_eq!(st.on_ephemeral(&"t".into(), Some(id)), 0);
        assert_eq!(st.on_ephemeral(&"t".into(), None), 1);
        assert_eq!(drain(&mut rx), ["t"]);
    }

    fn new_conn() -> (Arc<Conn>, crate::hub::Outbox) {
        let (conn, rx) = Conn::new(UserId::parse("v").unwrap(), 100);
        (Arc::new(conn), rx)
    }

    fn joined(last: Seq) -> Utf8Bytes {
        format!("joined {}", last.0).into()
    }

    #[test]
    fn a_join_at_the_position_is_answered_from_memory_unless_behind() {
        let (mut st, _rx) = room_with_member();
        for seq in 1..=3 {
            st.on_message(Seq(seq), seq.to_string().into());
        }
        let (conn, mut rx) = new_conn();
        assert_eq!(st.join(&conn, Some(Seq(3)), joined), JoinPlan::Answered);
        assert_eq!(drain(&mut rx), ["joined 3"]);
        let (conn, mut rx) = new_conn();
        assert_eq!(st.join(&conn, Some(Seq(1)), joined), JoinPlan::Answered);
        assert_eq!(
            drain(&mut rx),
            ["joined 3", "2", "3"],
            "from the recent ones"
        );

        st.fall_behind();
        for since in [3, 1] {
            let (conn, mut rx) = new_conn();
            assert_eq!(
                st.join(&conn, Some(Seq(since)), joined),
                JoinPlan::Replay {
                    from: Seq(since),
                    position: Seq(3)
                },
                "a room that may be behind reads the store"
            );
            assert!(drain(&mut rx).is_empty(), "not answered before the read");
        }
        let (conn, mut rx) = new_conn();
        assert_eq!(
            st.join(&conn, None, joined),
            JoinPlan::CatchUp { cursor: Seq(3) },
            "no replay asked for, but stream events may have been missed"
        );
        assert_eq!(drain(&mut rx), ["joined 3"]);
    }

    fn stream(n: u128) -> StreamId {
        StreamId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_joiner_mid_answer_gets_its_snapshot_then_only_later_pieces() {
        use crate::hub::router::Covers;
        let (mut st, _rx) = room_with_member();
        let (s1, s2) = (stream(1), stream(2));
        st.on_stream(s1, StreamStep::Start, false, "start".into());
        let (conn, mut rx) = new_conn();
        assert_eq!(
            st.join(&conn, None, joined),
            JoinPlan::CatchUp { cursor: Seq(0) }
        );
        // While the catch-up is read: piece 1 (which the read also saw), a
        // queued stream's move told before and after the read, piece 2.
        st.on_stream(s1, StreamStep::Content(1), false, "c1".into());
        st.on_stream(s2, StreamStep::Queued(7), false, "q7".into());
        st.on_stream(s2, StreamStep::Queued(9), false, "q9".into());
        st.on_stream(s1, StreamStep::Content(2), false, "c2".into());
        assert_eq!(drain(&mut rx), ["joined 0"]);
        let catch_up = vec![
            CatchUp {
                stream_id: s1,
                frames: vec!["start".into(), "snapshot 0..=1".into()],
                covers: Covers::Running { upto: Some(1) },
            },
            CatchUp {
                stream_id: s2,
                frames: vec!["queued v8".into()],
                covers: Covers::Queued { version: 8 },
            },
        ];
        assert!(st.finish_replay(conn.id, Seq(0), Some(catch_up)));
        assert_eq!(
            drain(&mut rx),
            ["start", "snapshot 0..=1", "queued v8", "q9", "c2"]
        );
        // Piece 2 was read by the catch-up but published after it: its
        // live frame, arriving late, is not sent again; piece 3 is.
        st.on_stream(s1, StreamStep::Content(1), false, "c1 late".into());
        st.on_stream(s1, StreamStep::Content(3), false, "c3".into());
        st.on_stream(s2, StreamStep::Queued(8), false, "q8 late".into());
        assert_eq!(drain(&mut rx), ["c3"]);
        st.on_stream(s1, StreamStep::Other, true, "complete".into());
        assert_eq!(drain(&mut rx), ["complete"]);
        assert!(st.needs_catch_up(), "s2 still waits");
        st.on_stream(s2, StreamStep::Other, true, "cancelled".into());
        assert!(!st.needs_catch_up());
        let (conn, _rx) = new_conn();
        assert_eq!(st.join(&conn, None, joined), JoinPlan::Answered);
    }

    #[test]
    fn a_failed_catch_up_read_delivers_everything_and_reads_again_next_time() {
        let (mut st, _rx) = room_with_member();
        st.streams_known = false;
        let (conn, mut rx) = new_conn();
        assert_eq!(
            st.join(&conn, None, joined),
            JoinPlan::CatchUp { cursor: Seq(0) }
        );
        st.on_stream(stream(1), StreamStep::Content(4), false, "c4".into());
        assert!(st.finish_replay(conn.id, Seq(0), None));
        assert_eq!(drain(&mut rx), ["joined 0", "c4"]);
        assert!(st.needs_catch_up());
    }

    #[test]
    fn a_replaying_member_gets_live_frames_after_its_replay_only() {
        let (mut st, _rx) = room_with_member();
        let (conn, mut rx) = new_conn();
        st.fall_behind();
        let plan = st.join(&conn, Some(Seq(0)), joined);
        assert_eq!(
            plan,
            JoinPlan::Replay {
                from: Seq(0),
                position: Seq(0)
            }
        );
        st.on_message(Seq(1), "1".into());
        st.on_message(Seq(2), "2".into());
        st.on_ephemeral(&"t".into(), None);
        assert!(drain(&mut rx).is_empty(), "buffered during the replay");
        // The replay read 1 from the store; 2 came live meanwhile.
        assert!(st.finish_replay(conn.id, Seq(1), None));
        assert_eq!(drain(&mut rx), ["2", "t"]);
        st.on_message(Seq(3), "3".into());
        assert_eq!(drain(&mut rx), ["3"]);
        st.members.remove(&conn.id);
        assert!(
            !st.finish_replay(conn.id, Seq(3), None),
            "a member that left"
        );
    }

    #[test]
    fn one_recovery_task_catches_up_until_the_latest_fault_is_read() {
        let (mut st, _rx) = room_with_member();
        assert_eq!(st.next_recovery(false), Recovery::Done);
        assert!(st.fall_behind(), "the first fault starts the task");
        assert!(!st.fall_behind(), "a second fault does not start another");
        let Recovery::Read { from, epoch, gap } = st.next_recovery(false) else {
            panic!("a room behind reads the store");
        };
        assert_eq!((from, gap), (Seq(0), false));
        // A fault during that read: its success does not clear the flag.
        assert!(!st.fall_behind());
        st.caught_up(epoch);
        assert!(st.is_behind());
        let Recovery::Read { epoch, .. } = st.next_recovery(false) else {
            panic!("read again for the newer fault");
        };
        st.caught_up(epoch);
        assert!(!st.is_behind());
        assert_eq!(st.next_recovery(false), Recovery::Done);
        assert!(
            st.fall_behind(),
            "the task ended, so a new fault starts one"
        );
    }

    #[test]
    fn a_failed_read_is_asked_again() {
        let (mut st, _rx) = room_with_member();
        st.fall_behind();
        let first = st.next_recovery(false);
        // The read failed: nothing reported, the next step is the same read.
        assert_eq!(st.next_recovery(false), first);
        assert!(st.is_behind());
    }

    #[test]
    fn a_gap_waits_once_then_reads() {
        let (mut st, _rx) = room_with_member();
        st.on_message(Seq(2), "2".into());
        assert!(st.claim_recovery());
        assert!(!st.claim_recovery(), "already running");
        assert_eq!(st.next_recovery(false), Recovery::WaitForGap);
        assert_eq!(
            st.next_recovery(true),
            Recovery::Read {
                from: Seq(0),
                epoch: 0,
                gap: true
            }
        );
        st.on_message(Seq(1), "1".into());
        assert_eq!(st.next_recovery(true), Recovery::Done);
    }

    #[test]
    fn a_closed_or_opening_room_recovers_nothing() {
        let room = Room::new(ConversationId::new(), 10, 3);
        let mut st = room.state.into_inner();
        assert!(!st.fall_behind(), "still opening");
        assert!(st.initialize(Seq(4), Vec::new()), "opening starts it");
        st.closed = true;
        assert_eq!(st.next_recovery(false), Recovery::Done);
        assert!(!st.fall_behind());
    }
}
