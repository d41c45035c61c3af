//! One conversation's presence as a sans-IO state machine: for each present
//! user, the nodes holding their connections and until when each entry is
//! live. The memory implementation runs it as is; the Redis one runs the
//! same steps in a Lua script (`redis.rs`), and these tests pin the rules
//! both follow.
//!
//! The rules:
//! - a node's entry for a user lives until `now + ttl` and is renewed while
//!   the node holds a connection of theirs; one it let go of ends `now`;
//! - a user is present while any entry of theirs is live or ended less
//!   than `grace` ago (a reload or a move to another node does not flap);
//! - a user who was not present and gets a live entry has *arrived*; one
//!   whose entries all ended `grace` ago or more is *gone*. Each is
//!   reported once, to the one caller whose update made it so.

use std::collections::HashMap;

use crate::model::UserId;

/// Milliseconds on the clock of whoever keeps the table (Redis's `TIME`
/// for the Redis implementation: one clock for every node).
pub type Millis = u64;

/// One update of a conversation's presence by one node.
#[derive(Debug, Default)]
pub struct Update<'a> {
    /// Users this node holds a connection of (new, or still held).
    pub live: &'a [UserId],
    /// Users this node no longer holds any connection of.
    pub departed: &'a [UserId],
    /// Do not report arrivals: the entries are re-asserted after the store
    /// lost them (a Redis restart), not new.
    pub quiet: bool,
}

/// What an update changed, for the caller to announce.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub arrived: Vec<UserId>,
    pub gone: Vec<UserId>,
}

/// Timings every update uses.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: Millis,
    pub grace: Millis,
}

/// A conversation's present users.
#[derive(Debug, Default)]
pub struct Table {
    users: HashMap<UserId, Held>,
}

/// A present user's entries, by node.
#[derive(Debug, Default)]
struct Held {
    nodes: HashMap<String, Millis>,
}

impl Held {
    /// When the last of the user's entries ends.
    fn until(&self) -> Millis {
        self.nodes.values().copied().max().unwrap_or(0)
    }
}

impl Table {
    /// Applies `node`'s update at `now`: first sweeps the users gone, then
    /// ends the departed entries, then renews the live ones.
    pub fn apply(&mut self, node: &str, now: Millis, timing: Timing, update: Update) -> Outcome {
        let mut outcome = Outcome {
            gone: self.sweep(now, timing.grace),
            arrived: Vec::new(),
        };
        for user in update.departed {
            if let Some(held) = self.users.get_mut(user) {
                if let Some(until) = held.nodes.get_mut(node) {
                    *until = (*until).min(now);
                }
            }
        }
        for user in update.live {
            let was_present = self.users.contains_key(user);
            let held = self.users.entry(user.clone()).or_default();
            held.nodes.insert(node.to_owned(), now + timing.ttl);
            if !was_present && !update.quiet {
                outcome.arrived.push(user.clone());
            }
        }
        outcome
    }

    /// Forgets the users whose every entry ended `grace` ago or more (and
    /// the ended entries of the others); returns the users forgotten.
    fn sweep(&mut self, now: Millis, grace: Millis) -> Vec<UserId> {
        let mut gone = Vec::new();
        self.users.retain(|user, held| {
            if held.until() + grace > now {
                held.nodes.retain(|_, until| *until + grace > now);
                return true;
            }
            gone.push(user.clone());
            false
        });
        gone.sort();
        gone
    }

    /// The present users, sorted (those gone but not swept yet left out).
    pub fn present(&self, now: Millis, grace: Millis) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, held)| held.until() + grace > now)
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        users
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ttl: 30_000,
        grace: 5_000,
    };

    fn users(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|n| UserId::parse(*n).unwrap()).collect()
    }

    fn live(t: &mut Table, node: &str, now: Millis, who: &[&str]) -> Outcome {
        let who = users(who);
        t.apply(
            node,
            now,
            T,
            Update {
                live: &who,
                ..Update::default()
            },
        )
    }

    fn depart(t: &mut Table, node: &str, now: Millis, who: &[&str]) -> Outcome {
        let who = users(who);
        t.apply(
            node,
            now,
            T,
            Update {
                departed: &who,
                ..Update::default()
            },
        )
    }

    #[test]
    fn an_arrival_is_reported_once_whichever_node_holds_the_tabs() {
        let mut t = Table::default();
        assert_eq!(live(&mut t, "a", 0, &["ann"]).arrived, users(&["ann"]));
        assert!(live(&mut t, "b", 10, &["ann"]).arrived.is_empty());
        assert!(live(&mut t, "a", 20, &["ann"]).arrived.is_empty());
        assert_eq!(t.present(20, T.grace), users(&["ann"]));
    }

    #[test]
    fn a_reload_within_the_grace_reports_nothing() {
        let mut t = Table::default();
        live(&mut t, "a", 0, &["ann"]);
        assert_eq!(depart(&mut t, "a", 1_000, &["ann"]), Outcome::default());
        // Back on another node before the grace ran out.
        assert_eq!(live(&mut t, "b", 5_900, &["ann"]), Outcome::default());
        assert_eq!(depart(&mut t, "a", 20_000, &[]), Outcome::default());
        assert_eq!(t.present(20_000, T.grace), users(&["ann"]));
    }

    #[test]
    fn a_departure_is_reported_once_after_the_grace() {
        let mut t = Table::default();
        live(&mut t, "a", 0, &["ann", "bob"]);
        depart(&mut t, "a", 1_000, &["ann"]);
        assert!(depart(&mut t, "a", 5_999, &[]).gone.is_empty());
        assert_eq!(t.present(5_999, T.grace), users(&["ann", "bob"]));
        assert_eq!(depart(&mut t, "b", 6_000, &[]).gone, users(&["ann"]));
        assert!(depart(&mut t, "a", 6_001, &[]).gone.is_empty());
        assert_eq!(t.present(6_001, T.grace), users(&["bob"]));
    }

    #[test]
    fn a_user_stays_while_another_node_holds_them() {
        let mut t = Table::default();
        live(&mut t, "a", 0, &["ann"]);
        live(&mut t, "b", 0, &["ann"]);
        depart(&mut t, "a", 1_000, &["ann"]);
        assert!(depart(&mut t, "b", 10_000, &[]).gone.is_empty());
        assert_eq!(t.present(10_000, T.grace), users(&["ann"]));
    }

    #[test]
    fn a_dead_nodes_users_go_after_ttl_and_grace_and_never_return() {
        let mut t = Table::default();
        live(&mut t, "dead", 0, &["ann"]);
        live(&mut t, "b", 0, &["bob"]);
        // b renews its entry; the dead node's ends at ttl.
        live(&mut t, "b", 20_000, &["bob"]);
        assert!(live(&mut t, "b", 34_999, &["bob"]).gone.is_empty());
        assert_eq!(live(&mut t, "b", 35_000, &["bob"]).gone, users(&["ann"]));
        assert_eq!(t.present(35_000, T.grace), users(&["bob"]));
        assert!(live(&mut t, "b", 60_000, &["bob"]).gone.is_empty());
        assert_eq!(t.present(60_000, T.grace), users(&["bob"]));
    }

    #[test]
    fn a_user_swept_then_held_again_arrives_again_unless_quiet() {
        let mut t = Table::default();
        live(&mut t, "a", 0, &["ann"]);
        let out = live(&mut t, "a", 40_000, &["ann"]);
        assert_eq!(out.gone, users(&["ann"]));
        assert_eq!(out.arrived, users(&["ann"]));
        let mut t = Table::default();
        let ann = users(&["ann"]);
        let quiet = Update {
            live: &ann,
            quiet: true,
            ..Update::default()
        };
        assert_eq!(t.apply("a", 0, T, quiet), Outcome::default());
        assert_eq!(t.present(0, T.grace), ann);
    }
}
