//! The users directory, as this node takes part in it: who signed in under
//! which display name (their token's `name` claim), so that clients show
//! names rather than ids and can tell an id nobody ever signed in as.
//!
//! A user is recorded when a connection of theirs authenticates (either
//! transport, and a renewal) and when a dev token is minted for them. That
//! is on the way to `auth_success`, so it costs a lookup in memory and no
//! more: the node remembers what it recorded (`Recorded`), writes a user
//! at most once per `RECORD_EVERY` unless their name changed, and hands
//! the writes to one task that stores them in batches. A write that fails,
//! or finds the queue full, is logged and forgotten (the next sign-in
//! tries again); it never fails an authentication.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ChatError;
use crate::model::{User, UserId};
use crate::store::{self, Sighting, Store};
use crate::tasks::Tasks;

/// Most ids one lookup may name.
pub const MAX_LOOKUP: usize = 100;
/// A user signing in again on this node, under the same name, is written
/// again only after this long: `last_seen_at` is good to the hour.
const RECORD_EVERY: Duration = Duration::from_secs(3600);
/// Most users this node remembers having recorded; past it the oldest are
/// forgotten (and written again at their next sign-in).
const REMEMBERED: usize = 10_000;
/// Sightings waiting for the writer; past it they are dropped (and
/// forgotten, so the user's next sign-in records them).
const QUEUED: usize = 1024;
/// Most sightings written in one statement.
const BATCH: usize = 100;
/// Longest display name kept, in characters (the rest is cut off): a
/// token's claim is the identity provider's, of any length.
const MAX_NAME_CHARS: usize = 200;

/// This node's side of the users directory: records sign-ins, looks users up.
pub struct Users {
    store: Store,
    recorded: Arc<Mutex<Recorded>>,
    queue: mpsc::Sender<Sighting>,
}

impl Users {
    /// Starts the writer on `tasks`; it writes what is queued when the
    /// node stops.
    pub fn start(store: Store, tasks: &Tasks) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUED);
        let recorded = Arc::new(Mutex::new(Recorded::new(RECORD_EVERY, REMEMBERED)));
        let writer = Writer {
            store: store.clone(),
            recorded: recorded.clone(),
            rx,
        };
        tasks.spawn_graceful(writer.run(tasks.stop_signal()));
        Arc::new(Self {
            store,
            recorded,
            queue,
        })
    }

    /// `user` signed in, with `name` if their token carries one. Records
    /// them unless this node did within the hour under the same name;
    /// never waits for the store.
    pub fn seen(&self, user: &UserId, name: Option<&str>) {
        let name = name.map(|n| match n.char_indices().nth(MAX_NAME_CHARS) {
            Some((cut, _)) => &n[..cut],
            None => n,
        });
        if !self
            .recorded
            .lock()
            .should_record(user, name, Instant::now())
        {
            return;
        }
        let sighting = Sighting {
            user_id: user.clone(),
            name: name.map(str::to_owned),
            at: store::now(),
        };
        if let Err(e) = self.queue.try_send(sighting) {
            tracing::debug!(user = %user, error = %e, "user not recorded: the writer is behind");
            self.recorded.lock().forget(user);
        }
    }

    /// The users among `ids` who ever signed in, in the order asked (each
    /// once); the others are absent. 1 to `MAX_LOOKUP` ids.
    pub async fn lookup(&self, ids: &[UserId]) -> Result<Vec<User>, ChatError> {
        if ids.is_empty() || ids.len() > MAX_LOOKUP {
            return Err(ChatError::InvalidFrame(format!(
                "look up 1 to {MAX_LOOKUP} users at once"
            )));
        }
        let mut seen = HashSet::new();
        let ids: Vec<UserId> = ids.iter().filter(|id| seen.insert(*id)).cloned().collect();
        let mut found: HashMap<UserId, User> = self
            .store
            .users(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }
}

/// The task that stores queued sightings, a batch at a time.
struct Writer {
    store: Store,
    recorded: Arc<Mutex<Recorded>>,
    rx: mpsc::Receiver<Sighting>,
}

impl Writer {
    async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                got = self.rx.recv_many(&mut batch, BATCH) => {
                    if got == 0 {
                        return;
                    }
                    self.write(&mut batch).await;
                }
            }
        }
        // Stopping: what is queued now is written, then the task ends.
        self.rx.close();
        while self.rx.recv_many(&mut batch, BATCH).await > 0 {
            self.write(&mut batch).await;
        }
    }

    /// Stores `batch` and empties it. On failure its users are forgotten,
    /// so their next sign-in records them.
    async fn write(&self, batch: &mut Vec<Sighting>) {
        if let Err(e) = self.store.record_users(batch).await {
            tracing::warn!(error = %e, users = batch.len(), "recording users failed");
            let mut recorded = self.recorded.lock();
            for sighting in batch.iter() {
                recorded.forget(&sighting.user_id);
            }
        }
        batch.clear();
    }
}

/// What this node recorded of each user lately: the name it wrote (the
/// one stored, as far as this node knows) and when. Bounded: past
/// `capacity` entries, those older than `every` go, then the oldest.
struct Recorded {
    every: Duration,
    capacity: usize,
    users: HashMap<UserId, (Option<String>, Instant)>,
}

impl Recorded {
    fn new(every: Duration, capacity: usize) -> Self {
        Self {
            every,
            capacity,
            users: HashMap::new(),
        }
    }

    /// Whether a sign-in of `user` under `name` at `now` is to be written:
    /// yes for a user not recorded within `every`, or whose token carries
    /// a name other than the one recorded (a token without one changes no
    /// name). If so, it counts as recorded from now.
    fn should_record(&mut self, user: &UserId, name: Option<&str>, now: Instant) -> bool {
        if let Some((known, at)) = self.users.get_mut(user) {
            let renamed = name.is_some_and(|n| known.as_deref() != Some(n));
            if !renamed && now.saturating_duration_since(*at) < self.every {
                return false;
            }
            if renamed {
                *known = name.map(str::to_owned);
            }
            *at = now;
            return true;
        }
        self.users
            .insert(user.clone(), (name.map(str::to_owned), now));
        if self.users.len() > self.capacity {
            self.evict(now);
        }
        true
    }

    /// `user`'s write did not happen: their next sign-in writes again.
    fn forget(&mut self, user: &UserId) {
        self.users.remove(user);
    }

    /// Drops the entries older than `every` (a sign-in would write them
    /// anyway), then, if more than three quarters of `capacity` are left,
    /// the oldest down to that, so the next eviction is a quarter of the
    /// capacity away.
    fn evict(&mut self, now: Instant) {
        let every = self.every;
        self.users
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < every);
        let keep = self.capacity * 3 / 4;
        if self.users.len() <= keep {
            return;
        }
        if keep == 0 {
            self.users.clear();
            return;
        }
        let cut = self.users.len() - keep;
        let mut by_age: Vec<(Instant, UserId)> = self
            .users
            .iter()
            .map(|(id, (_, at))| (*at, id.clone()))
            .collect();
        // The `cut` oldest first (in no order among themselves).
        by_age.select_nth_unstable_by_key(cut, |(at, _)| *at);
        for (_, id) in &by_age[..cut] {
            self.users.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn a_user_is_written_once_an_hour_unless_renamed() {
        let hour = Duration::from_secs(3600);
        let mut r = Recorded::new(hour, 100);
        let t0 = Instant::now();
        let zoe = user("zoë-q");
        assert!(r.should_record(&zoe, Some("Zoë Q"), t0), "first sign-in");
        assert!(!r.should_record(&zoe, Some("Zoë Q"), t0 + Duration::from_secs(5)));
        assert!(
            !r.should_record(&zoe, None, t0 + Duration::from_secs(6)),
            "a token without a name changes no name"
        );
        assert!(
            r.should_record(&zoe, Some("Zoë"), t0 + Duration::from_secs(7)),
            "a new name is written at once"
        );
        assert!(!r.should_record(&zoe, Some("Zoë"), t0 + Duration::from_secs(8)));
        assert!(
            r.should_record(&zoe, Some("Zoë"), t0 + Duration::from_secs(7) + hour),
            "an hour after the last write"
        );
        r.forget(&zoe);
        assert!(
            r.should_record(&zoe, Some("Zoë"), t0 + Duration::from_secs(9) + hour),
            "a failed write is tried again"
        );
    }

    #[test]
    fn the_memory_stays_bounded_and_forgets_the_oldest() {
        let mut r = Recorded::new(Duration::from_secs(3600), 8);
        let t0 = Instant::now();
        for i in 0..8u64 {
            assert!(r.should_record(&user(&format!("u{i}")), None, t0 + Duration::from_secs(i)));
        }
        assert_eq!(r.users.len(), 8);
        // The ninth evicts down to three quarters: the three oldest go.
        assert!(r.should_record(&user("u8"), None, t0 + Duration::from_secs(8)));
        assert_eq!(r.users.len(), 6);
        for i in 0..3 {
            assert!(!r.users.contains_key(&user(&format!("u{i}"))), "u{i}");
        }
        assert!(!r.should_record(&user("u3"), None, t0 + Duration::from_secs(9)));
        // Entries all at one instant: still cut down to size.
        let mut r = Recorded::new(Duration::from_secs(3600), 8);
        for i in 0..100 {
            r.should_record(&user(&format!("v{i}")), None, t0);
            assert!(r.users.len() <= 8);
        }
        // Entries older than the hour go first.
        let mut r = Recorded::new(Duration::from_secs(10), 4);
        for i in 0..4 {
            r.should_record(&user(&format!("w{i}")), None, t0);
        }
        r.should_record(&user("x"), None, t0 + Duration::from_secs(60));
        assert_eq!(r.users.len(), 1);
    }
}
