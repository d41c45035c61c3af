//! The assistants' queue as a sans-IO state machine: every waiting and
//! running request of every assistant, the nodes that hold them, and the
//! rules that decide what runs next. The whole table is one value that a
//! store loads and saves atomically (`super::QueueStore`), so the rules
//! live here once, for one node and for a cluster alike, and are tested
//! without Redis.
//!
//! The rules:
//! - An assistant runs at most `max_concurrent` requests at once and
//!   starts at most `requests_per_minute` in any minute (0: no limit), and
//!   none while it is paused (the provider said 429 with `Retry-After`).
//! - Waiting requests run in a fair order: round robin between users, first
//!   come first served within a user. The next turn goes to the waiting
//!   user served least recently (one never served first, in the order they
//!   started waiting), so one user's burst does not hold others back. A
//!   request whose conversation is already being answered (by any
//!   assistant) is passed over until that answer ends: a conversation runs
//!   one answer at a time.
//! - A request's position is its place in that fair order, counted from 1.
//! - A request waits at most `queue_timeout` before it is given up.
//! - Every request belongs to a node, which renews a lease on the table.
//!   When a node's lease runs out, the requests it was running are given up
//!   (their answer was cut), and those it held waiting pass to the node
//!   that noticed, which runs them in their turn: nothing waiting is lost.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{ConversationId, MessageId, StreamId, UserId};

/// The limits of one assistant, in the table's units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests running at once; 0: no limit.
    pub max_concurrent: usize,
    /// Requests started in any 60 seconds; 0: no limit.
    pub per_minute: usize,
    /// Longest wait, in milliseconds; 0: no limit.
    pub queue_timeout_ms: i64,
    /// Most requests waiting; 0: no limit.
    pub max_waiting: usize,
}

/// One request for an answer, waiting or running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub stream_id: StreamId,
    pub conversation_id: ConversationId,
    /// Who asked (their requests are queued fairly against others').
    pub user: UserId,
    pub assistant: String,
    /// The id the answer will be stored under.
    pub message_id: MessageId,
    /// The message it answers.
    pub reply_to: MessageId,
    /// The node that runs it (or will).
    pub node: String,
    /// When it was queued, in the store's milliseconds.
    pub queued_at: i64,
    /// When it started running; None while it waits.
    pub started_at: Option<i64>,
    /// The position last told to the conversation (0: none yet).
    pub told: usize,
}

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many answers requested at once; wait for one to finish")]
    UserBusy,
    #[error("the assistant's queue is full; try again later")]
    QueueFull,
}

/// What a change of the table asks the nodes to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Requests that start running now (each on its `node`).
    pub started: Vec<Entry>,
    /// Waiting requests whose position changed, with the new one.
    pub moved: Vec<(Entry, usize)>,
    /// Waiting requests given up after `queue_timeout`.
    pub timed_out: Vec<Entry>,
    /// Running requests of a node whose lease ran out.
    pub cut: Vec<Entry>,
    /// The table's version after the change (set by whoever saves it).
    pub version: u64,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.moved.is_empty()
            && self.timed_out.is_empty()
            && self.cut.is_empty()
    }
}

/// One assistant's line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Line {
    /// Turns given so far.
    turns: u64,
    /// The turn each user with requests here was last served at.
    served: BTreeMap<UserId, u64>,
    /// Waiting requests, oldest first.
    waiting: Vec<Entry>,
    running: Vec<Entry>,
    /// When the requests of the last minute started (only with a per-minute limit).
    starts: VecDeque<i64>,
    /// No request starts before this (a provider's `Retry-After`).
    paused_until: i64,
}

/// Every assistant's queue, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Chosen when the table is created: a different one means the store
    /// lost the table (Redis restarted empty) and nodes put back theirs.
    pub epoch: u64,
    /// Bumped by every saved change; the store compares it to save.
    pub version: u64,
    /// Each node's lease, until (store milliseconds).
    nodes: BTreeMap<String, i64>,
    lines: BTreeMap<String, Line>,
}

const MINUTE_MS: i64 = 60_000;

impl Table {
    pub fn new(epoch: u64) -> Self {
        Table {
            epoch,
            ..Table::default()
        }
    }

    /// Queues a request (its `queued_at` becomes `now`). `max_per_user`
    /// bounds a user's requests, waiting and running, across assistants.
    pub fn enqueue(
        &mut self,
        mut entry: Entry,
        now: i64,
        limits: &Limits,
        max_per_user: usize,
    ) -> Result<(), Refusal> {
        if self.find(entry.stream_id).is_some() {
            return Ok(());
        }
        let mine = self.entries().filter(|e| e.user == entry.user).count();
        if max_per_user > 0 && mine >= max_per_user {
            return Err(Refusal::UserBusy);
        }
        let line = self.lines.entry(entry.assistant.clone()).or_default();
        if limits.max_waiting > 0 && line.waiting.len() >= limits.max_waiting {
            return Err(Refusal::QueueFull);
        }
        entry.queued_at = now;
        entry.started_at = None;
        entry.told = 0;
        line.waiting.push(entry);
        Ok(())
    }

    /// Removes a waiting request; None if it is not waiting.
    pub fn cancel(&mut self, stream: StreamId) -> Option<Entry> {
        for line in self.lines.values_mut() {
            if let Some(i) = line.waiting.iter().position(|e| e.stream_id == stream) {
                return Some(line.waiting.remove(i));
            }
        }
        None
    }

    /// Removes a running request (it ended); None if it is not running.
    pub fn finish(&mut self, stream: StreamId) -> Option<Entry> {
        for line in self.lines.values_mut() {
            if let Some(i) = line.running.iter().position(|e| e.stream_id == stream) {
                return Some(line.running.remove(i));
            }
        }
        None
    }

    /// A request, waiting or running.
    pub fn find(&self, stream: StreamId) -> Option<&Entry> {
        self.entries().find(|e| e.stream_id == stream)
    }

    /// Every request, waiting and running.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines
            .values()
            .flat_map(|l| l.waiting.iter().chain(l.running.iter()))
    }

    /// The requests waiting in a conversation, with their told positions.
    pub fn waiting_in(&self, conv: ConversationId) -> Vec<&Entry> {
        self.lines
            .values()
            .flat_map(|l| l.waiting.iter())
            .filter(|e| e.conversation_id == conv)
            .collect()
    }

    /// How many requests of `assistant` wait and run.
    pub fn counts(&self, assistant: &str) -> (usize, usize) {
        self.lines
            .get(assistant)
            .map_or((0, 0), |l| (l.waiting.len(), l.running.len()))
    }

    /// No request of `assistant` starts before `until` (kept if later).
    pub fn pause(&mut self, assistant: &str, until: i64) {
        let line = self.lines.entry(assistant.to_owned()).or_default();
        line.paused_until = line.paused_until.max(until);
    }

    pub fn paused_until(&self, assistant: &str) -> i64 {
        self.lines.get(assistant).map_or(0, |l| l.paused_until)
    }

    /// Renews `node`'s lease until `until`, if it would end sooner than
    /// `renew_before` (so an unchanged table need not be saved each time).
    pub fn renew(&mut self, node: &str, until: i64, renew_before: i64) {
        let lease = self.nodes.entry(node.to_owned()).or_default();
        if *lease < renew_before {
            *lease = until;
        }
    }

    /// Ends `node`'s lease now (it stops): the next node to settle the
    /// table takes its waiting requests and cuts its running ones.
    pub fn end_lease(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Puts back requests the table lost (the store lost its data), with
    /// their state: the waiting wait again, the running run on.
    pub fn restore(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if self.find(entry.stream_id).is_some() {
                continue;
            }
            let line = self.lines.entry(entry.assistant.clone()).or_default();
            if entry.started_at.is_some() {
                line.running.push(entry);
            } else {
                let at = line
                    .waiting
                    .partition_point(|e| e.queued_at <= entry.queued_at);
                line.waiting.insert(at, entry);
            }
        }
    }

    /// Applies the rules at `now`, as node `me` (None: a node that is
    /// leaving, which takes nothing over): leases, timeouts, what starts,
    /// and positions. `limits` gives each assistant's.
    pub fn settle(
        &mut self,
        now: i64,
        me: Option<&str>,
        limits: impl Fn(&str) -> Limits,
    ) -> Effects {
        let mut fx = Effects::default();
        let alive = self.expire_nodes(now, me, &mut fx);
        let mut busy: HashSet<ConversationId> = self
            .lines
            .values()
            .flat_map(|l| l.running.iter().map(|e| e.conversation_id))
            .collect();
        for (assistant, line) in self.lines.iter_mut() {
            let limits = limits(assistant);
            line.time_out(now, limits.queue_timeout_ms, &mut fx);
            line.start(now, &limits, &mut busy, &alive, &mut fx);
            line.tell_positions(&mut fx);
            line.forget_idle_users();
        }
        self.lines.retain(|_, l| {
            !(l.waiting.is_empty()
                && l.running.is_empty()
                && l.starts.is_empty()
                && l.paused_until <= now)
        });
        fx
    }

    /// Ends the leases that ran out: their nodes' running requests are
    /// cut, their waiting ones pass to `me` (if it stays). Returns the
    /// nodes alive.
    fn expire_nodes(&mut self, now: i64, me: Option<&str>, fx: &mut Effects) -> HashSet<String> {
        self.nodes
            .retain(|node, until| Some(node.as_str()) == me || *until >= now);
        let mut alive: HashSet<String> = self.nodes.keys().cloned().collect();
        alive.extend(me.map(str::to_owned));
        for line in self.lines.values_mut() {
            if let Some(me) = me {
                for entry in &mut line.waiting {
                    if !alive.contains(&entry.node) {
                        entry.node = me.to_owned();
                    }
                }
            }
            let (kept, cut): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut line.running)
                .into_iter()
                .partition(|e| alive.contains(&e.node));
            line.running = kept;
            fx.cut.extend(cut);
        }
        alive
    }
}

impl Line {
    /// Forgets when users were served once they have nothing here.
    fn forget_idle_users(&mut self) {
        let Line {
            served,
            waiting,
            running,
            ..
        } = self;
        served.retain(|u, _| waiting.iter().chain(running.iter()).any(|e| &e.user == u));
    }

    /// The waiting requests in their fair order, as indexes into `waiting`:
    /// the users by when they were last served (never first), each one's
    /// first request, then each one's second, and so on.
    fn order(&self) -> Vec<usize> {
        // Users in order of their first waiting request, then by last turn.
        let mut users: Vec<(&UserId, VecDeque<usize>)> = Vec::new();
        for (i, e) in self.waiting.iter().enumerate() {
            match users.iter_mut().find(|(u, _)| *u == &e.user) {
                Some((_, queue)) => queue.push_back(i),
                None => users.push((&e.user, VecDeque::from([i]))),
            }
        }
        users.sort_by_key(|(u, _)| self.served.get(*u).copied().unwrap_or(0));
        let mut order = Vec::with_capacity(self.waiting.len());
        while order.len() < self.waiting.len() {
            for (_, queue) in &mut users {
                if let Some(i) = queue.pop_front() {
                    order.push(i);
                }
            }
        }
        order
    }

    fn time_out(&mut self, now: i64, timeout: i64, fx: &mut Effects) {
        if timeout <= 0 {
            return;
        }
        let (late, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|e| now - e.queued_at > timeout);
        self.waiting = kept;
        fx.timed_out.extend(late);
    }

    /// Starts what the limits allow, in the fair order, passing over
    /// requests whose conversation is `busy` or whose node is not alive.
    fn start(
        &mut self,
        now: i64,
        limits: &Limits,
        busy: &mut HashSet<ConversationId>,
        alive: &HashSet<String>,
        fx: &mut Effects,
    ) {
        while let Some(front) = self.starts.front() {
            if limits.per_minute > 0 && now - front < MINUTE_MS {
                break;
            }
            self.starts.pop_front();
        }
        loop {
            if now < self.paused_until
                || (limits.max_concurrent > 0 && self.running.len() >= limits.max_concurrent)
                || (limits.per_minute > 0 && self.starts.len() >= limits.per_minute)
            {
                return;
            }
            // A request of a node that left waits for a node to take it.
            let Some(i) = self.order().into_iter().find(|&i| {
                let e = &self.waiting[i];
                !busy.contains(&e.conversation_id) && alive.contains(&e.node)
            }) else {
                return;
            };
            let mut entry = self.waiting.remove(i);
            entry.started_at = Some(now);
            busy.insert(entry.conversation_id);
            if limits.per_minute > 0 {
                self.starts.push_back(now);
            }
            // Round robin: the user's next turn comes after everyone else's.
            self.turns += 1;
            self.served.insert(entry.user.clone(), self.turns);
            self.running.push(entry.clone());
            fx.started.push(entry);
        }
    }

    fn tell_positions(&mut self, fx: &mut Effects) {
        for (at, i) in self.order().into_iter().enumerate() {
            let entry = &mut self.waiting[i];
            if entry.told != at + 1 {
                entry.told = at + 1;
                fx.moved.push((entry.clone(), at + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, conv: u128, n: u128) -> Entry {
        Entry {
            stream_id: StreamId(uuid::Uuid::from_u128(n)),
            conversation_id: ConversationId(uuid::Uuid::from_u128(conv)),
            user: UserId::parse(user).unwrap(),
            assistant: "a".into(),
            message_id: MessageId(uuid::Uuid::from_u128(1000 + n)),
            reply_to: MessageId(uuid::Uuid::from_u128(2000 + n)),
            node: "n1".into(),
            queued_at: 0,
            started_at: None,
            told: 0,
        }
    }

    fn one_at_a_time() -> Limits {
        Limits {
            max_concurrent: 1,
            ..Limits::default()
        }
    }

    fn ids(entries: &[Entry]) -> Vec<u128> {
        entries.iter().map(|e| e.stream_id.0.as_u128()).collect()
    }

    fn positions(fx: &Effects) -> Vec<(u128, usize)> {
        fx.moved
            .iter()
            .map(|(e, p)| (e.stream_id.0.as_u128(), *p))
            .collect()
    }

    /// Queues `entries` at `now` and settles, as node n1.
    fn queue(t: &mut Table, entries: Vec<Entry>, limits: Limits) -> Effects {
        for e in entries {
            t.enqueue(e, 0, &limits, 0).unwrap();
        }
        t.settle(0, Some("n1"), |_| limits)
    }

    #[test]
    fn users_take_turns_and_each_user_is_served_in_order() {
        let mut t = Table::new(1);
        let limits = one_at_a_time();
        // Alice's burst of three in three chats, then Bob's one.
        let fx = queue(
            &mut t,
            vec![
                entry("alice", 1, 1),
                entry("alice", 2, 2),
                entry("alice", 3, 3),
                entry("bob", 4, 4),
            ],
            limits,
        );
        assert_eq!(ids(&fx.started), vec![1]);
        // Bob's request comes before Alice's second: round robin.
        assert_eq!(positions(&fx), vec![(4, 1), (2, 2), (3, 3)]);
        let mut ran = vec![1];
        for _ in 0..3 {
            let last = *ran.last().unwrap();
            t.finish(StreamId(uuid::Uuid::from_u128(last))).unwrap();
            let fx = t.settle(0, Some("n1"), |_| limits);
            ran.extend(ids(&fx.started));
        }
        assert_eq!(ran, vec![1, 4, 2, 3]);
    }

    #[test]
    fn a_new_user_goes_ahead_of_a_burst_and_positions_are_retold() {
        let mut t = Table::new(1);
        let limits = one_at_a_time();
        queue(
            &mut t,
            vec![
                entry("alice", 1, 1),
                entry("alice", 2, 2),
                entry("alice", 3, 3),
            ],
            limits,
        );
        let fx = queue(&mut t, vec![entry("carol", 4, 4)], limits);
        // Alice was served, Carol never: Carol's request goes first.
        assert_eq!(positions(&fx), vec![(4, 1), (2, 2), (3, 3)]);
        // Nothing changed: nothing is told.
        assert!(t.settle(0, Some("n1"), |_| limits).is_empty());
    }

    #[test]
    fn never_more_than_max_concurrent_and_one_answer_per_conversation() {
        let mut t = Table::new(1);
        let limits = Limits {
            max_concurrent: 2,
            ..Limits::default()
        };
        // Two requests in chat 1, one in chat 2.
        let fx = queue(
            &mut t,
            vec![
                entry("alice", 1, 1),
                entry("bob", 1, 2),
                entry("carol", 2, 3),
            ],
            limits,
        );
        // Bob's waits for chat 1 although a slot is free: Carol's runs.
        assert_eq!(ids(&fx.started), vec![1, 3]);
        assert_eq!(positions(&fx), vec![(2, 1)]);
        t.finish(StreamId(uuid::Uuid::from_u128(3))).unwrap();
        assert!(t.settle(0, Some("n1"), |_| limits).started.is_empty());
        t.finish(StreamId(uuid::Uuid::from_u128(1))).unwrap();
        assert_eq!(ids(&t.settle(0, Some("n1"), |_| limits).started), vec![2]);
    }

    #[test]
    fn per_minute_limit_and_pause_hold_starts_back() {
        let mut t = Table::new(1);
        let limits = Limits {
            per_minute: 2,
            ..Limits::default()
        };
        let fx = queue(
            &mut t,
            vec![entry("a", 1, 1), entry("b", 2, 2), entry("c", 3, 3)],
            limits,
        );
        assert_eq!(ids(&fx.started), vec![1, 2]);
        for id in [1, 2] {
            t.finish(StreamId(uuid::Uuid::from_u128(id))).unwrap();
        }
        assert!(t.settle(59_999, Some("n1"), |_| limits).started.is_empty());
        t.pause("a", 70_000);
        assert!(t.settle(60_000, Some("n1"), |_| limits).started.is_empty());
        assert_eq!(
            ids(&t.settle(70_000, Some("n1"), |_| limits).started),
            vec![3]
        );
    }

    #[test]
    fn waiting_too_long_gives_up_and_cancel_removes() {
        let mut t = Table::new(1);
        let limits = Limits {
            max_concurrent: 1,
            queue_timeout_ms: 1000,
            ..Limits::default()
        };
        queue(
            &mut t,
            vec![entry("a", 1, 1), entry("b", 2, 2), entry("c", 3, 3)],
            limits,
        );
        assert_eq!(
            t.cancel(StreamId(uuid::Uuid::from_u128(2)))
                .unwrap()
                .user
                .as_str(),
            "b"
        );
        assert!(
            t.cancel(StreamId(uuid::Uuid::from_u128(1))).is_none(),
            "running: not cancelled here"
        );
        let fx = t.settle(500, Some("n1"), |_| limits);
        assert_eq!(positions(&fx), vec![(3, 1)]);
        let fx = t.settle(1001, Some("n1"), |_| limits);
        assert_eq!(ids(&fx.timed_out), vec![3]);
        assert_eq!(t.counts("a"), (0, 1));
    }

    #[test]
    fn limits_per_user_and_per_queue_refuse() {
        let mut t = Table::new(1);
        let limits = Limits {
            max_waiting: 2,
            ..one_at_a_time()
        };
        t.enqueue(entry("a", 1, 1), 0, &limits, 2).unwrap();
        t.enqueue(entry("a", 2, 2), 0, &limits, 2).unwrap();
        assert_eq!(
            t.enqueue(entry("a", 3, 3), 0, &limits, 2),
            Err(Refusal::UserBusy)
        );
        assert_eq!(
            t.enqueue(entry("b", 4, 4), 0, &limits, 2),
            Err(Refusal::QueueFull)
        );
        // The same request again is not a second one.
        assert_eq!(t.enqueue(entry("a", 1, 1), 0, &limits, 2), Ok(()));
    }

    #[test]
    fn a_dead_node_s_running_requests_are_cut_and_its_waiting_ones_adopted() {
        let mut t = Table::new(1);
        let limits = one_at_a_time();
        let mut theirs = vec![entry("a", 1, 1), entry("b", 2, 2)];
        for e in &mut theirs {
            e.node = "n2".into();
        }
        t.renew("n2", 1000, 1000);
        queue(&mut t, theirs, limits);
        t.renew("n1", 100_000, 100_000);
        assert!(t.settle(999, Some("n1"), |_| limits).cut.is_empty());
        let fx = t.settle(1001, Some("n1"), |_| limits);
        assert_eq!(ids(&fx.cut), vec![1]);
        // The waiting one now runs, on the node that noticed.
        assert_eq!(ids(&fx.started), vec![2]);
        assert_eq!(fx.started[0].node, "n1");
    }

    #[test]
    fn a_node_that_leaves_hands_its_requests_over_at_once() {
        let mut t = Table::new(1);
        let limits = one_at_a_time();
        t.renew("n1", 100_000, 100_000);
        queue(&mut t, vec![entry("a", 1, 1), entry("b", 2, 2)], limits);
        t.end_lease("n1");
        // The node leaving takes nothing over, and starts nothing.
        let fx = t.settle(1, None, |_| limits);
        assert!(fx.started.is_empty());
        assert_eq!(ids(&fx.cut), vec![1]);
        let fx = t.settle(1, Some("n2"), |_| limits);
        assert_eq!(ids(&fx.started), vec![2]);
        assert_eq!(fx.started[0].node, "n2");
    }

    #[test]
    fn restore_puts_back_what_the_store_lost() {
        let mut t = Table::new(1);
        let limits = one_at_a_time();
        queue(&mut t, vec![entry("a", 1, 1), entry("b", 2, 2)], limits);
        let mine: Vec<Entry> = t.entries().cloned().collect();
        let mut fresh = Table::new(2);
        fresh.restore(mine);
        assert!(fresh.settle(0, Some("n1"), |_| limits).started.is_empty());
        assert_eq!(fresh.counts("a"), (1, 1));
    }
}
