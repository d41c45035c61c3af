//! Presence, as this node takes part in it: the hub reports each user's
//! first connection joining a conversation here and their last leaving
//! it; one task tells the shared presence (`crate::presence`) in batches,
//! renews this node's entries every third of the ttl, sweeps departures
//! once their grace has run out, and announces what the shared presence
//! says changed, as `presence_changed` on the conversation's topic.
//!
//! Exactly one node announces each change: the one whose update made it
//! so (the shared presence tells only that one). A reload is a departure
//! and an arrival within the grace: if both fall in one batch nothing is
//! sent at all, and otherwise the arrival finds the user still present.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Events;
use crate::config::PresenceSettings;
use crate::error::ChatError;
use crate::hub::{Attendance, Hub};
use crate::metrics::Metrics;
use crate::model::{ConversationId, UserId};
use crate::presence::{Outcome, Presence, Update};
use crate::store::Store;
use crate::tasks::Tasks;

/// Conversations updated at once.
const CONCURRENCY: usize = 16;
/// Wait before retrying updates the shared presence refused.
const RETRY: Duration = Duration::from_secs(1);
/// A sweep runs this long after the grace, so the departure is due.
const SWEEP_MARGIN: Duration = Duration::from_millis(100);

/// This node's side of presence.
pub struct PresenceTracker {
    shared: Arc<dyn Presence>,
    events: Arc<Events>,
    hub: Weak<Hub>,
    store: Store,
    metrics: Arc<Metrics>,
    settings: PresenceSettings,
    state: Mutex<Local>,
    wake: Notify,
}

/// What the shared presence has yet to hear. (What this node holds is the
/// hub's: `Hub::holds` and `Hub::held`.)
#[derive(Default)]
struct Local {
    /// Users whose holding changed since the last batch.
    dirty: HashMap<ConversationId, HashSet<UserId>>,
    /// Conversations to sweep, when (in time order: the delay is fixed).
    sweeps: VecDeque<(Instant, ConversationId)>,
}

impl PresenceTracker {
    /// Starts the tracker's task on `tasks`; attach it to the hub with
    /// `Hub::set_attendance`.
    pub fn start(
        shared: Arc<dyn Presence>,
        events: Arc<Events>,
        hub: &Arc<Hub>,
        store: Store,
        metrics: Arc<Metrics>,
        settings: PresenceSettings,
        tasks: &Tasks,
    ) -> Arc<Self> {
        let tracker = Arc::new(Self {
            shared,
            events,
            hub: Arc::downgrade(hub),
            store,
            metrics,
            settings,
            state: Mutex::new(Local::default()),
            wake: Notify::new(),
        });
        let stop = tasks.stop_signal();
        let running = tracker.clone();
        tasks.spawn_graceful(async move {
            running.run(stop).await;
        });
        tracker
    }

    /// The conversation's present users (who may see them is the caller's
    /// check).
    pub async fn present(&self, conv: ConversationId) -> Result<Vec<UserId>, ChatError> {
        Ok(self.shared.present(conv).await?)
    }

    async fn run(&self, stop: CancellationToken) {
        let renew_every = self.settings.ttl() / 3;
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reconnected = self.shared.reconnected();
        loop {
            let next_sweep = self.state.lock().sweeps.front().map(|(at, _)| *at);
            let sweep_due = async {
                match next_sweep {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    // Departures of the drained connections go out now, so
                    // the other nodes announce them after the grace.
                    self.flush().await;
                    return;
                }
                _ = self.wake.notified() => {
                    if !self.flush().await {
                        tokio::time::sleep(RETRY).await;
                        self.wake.notify_one();
                    }
                }
                _ = sweep_due => self.sweep_due().await,
                _ = renew.tick() => self.renew().await,
                _ = reconnected.notified() => self.renew().await,
            }
        }
    }

    /// Tells the shared presence what changed here since the last batch.
    /// False if some of it failed (it is kept for the next batch).
    async fn flush(&self) -> bool {
        let dirty = std::mem::take(&mut self.state.lock().dirty);
        let Some(hub) = self.hub.upgrade() else {
            return true;
        };
        let batch: Vec<(ConversationId, Vec<UserId>, Vec<UserId>)> = dirty
            .into_iter()
            .map(|(conv, users)| {
                let (live, departed) = users.into_iter().partition(|u| hub.holds(conv, u));
                (conv, live, departed)
            })
            .collect();
        let results: Vec<_> = stream::iter(batch)
            .map(|(conv, live, departed)| async move {
                let update = Update {
                    live: &live,
                    departed: &departed,
                    quiet: false,
                };
                let result = self.shared.update(conv, update).await;
                (conv, live, departed, result)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = 0;
        for (conv, live, departed, result) in results {
            match result {
                Ok(outcome) => {
                    if !departed.is_empty() {
                        let due = Instant::now() + self.settings.grace() + SWEEP_MARGIN;
                        self.state.lock().sweeps.push_back((due, conv));
                    }
                    self.announce(conv, outcome).await;
                }
                Err(e) => {
                    if failed == 0 {
                        tracing::warn!(error = %e, "presence updates failed; retrying");
                    }
                    failed += 1;
                    let mut local = self.state.lock();
                    let dirty = local.dirty.entry(conv).or_default();
                    dirty.extend(live.into_iter().chain(departed));
                }
            }
        }
        failed == 0
    }

    /// Sweeps the conversations whose departures are due.
    async fn sweep_due(&self) {
        let now = Instant::now();
        let due: HashSet<ConversationId> = {
            let mut local = self.state.lock();
            let mut due = HashSet::new();
            while local.sweeps.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, conv)) = local.sweeps.pop_front() {
                    due.insert(conv);
                }
            }
            due
        };
        self.update_all(due.into_iter().map(|c| (c, Vec::new())).collect(), false)
            .await;
    }

    /// Renews every entry this node holds (sweeping each conversation on
    /// the way). After the shared presence lost its entries, quietly.
    async fn renew(&self) {
        let quiet = match self.shared.lost_entries().await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::warn!(error = %e, "presence unavailable; renewing later");
                return;
            }
        };
        if quiet {
            tracing::info!("presence store lost its entries; re-asserting this node's");
        }
        let mut held = match self.hub.upgrade() {
            Some(hub) => hub.held(),
            None => return,
        };
        if quiet {
            // Who arrived while the store was away has not been announced
            // yet: the next batch does that, not this quiet re-assertion.
            let local = self.state.lock();
            for (conv, users) in &mut held {
                if let Some(pending) = local.dirty.get(conv) {
                    users.retain(|u| !pending.contains(u));
                }
            }
        }
        self.update_all(held, quiet).await;
    }

    /// Updates each conversation with its live users; announces the outcome.
    async fn update_all(&self, convs: Vec<(ConversationId, Vec<UserId>)>, quiet: bool) {
        let results: Vec<_> = stream::iter(convs)
            .map(|(conv, live)| async move {
                let update = Update {
                    live: &live,
                    departed: &[],
                    quiet,
                };
                (conv, self.shared.update(conv, update).await)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = false;
        for (conv, result) in results {
            match result {
                Ok(outcome) => self.announce(conv, outcome).await,
                Err(e) if !failed => {
                    failed = true;
                    tracing::warn!(error = %e, "presence renewals failed; retried next round");
                }
                Err(_) => {}
            }
        }
    }

    /// Publishes each change, unless the conversation is too big for events.
    async fn announce(&self, conv: ConversationId, outcome: Outcome) {
        if outcome.arrived.is_empty() && outcome.gone.is_empty() {
            return;
        }
        match self.participants(conv).await {
            Some(n) if n <= self.settings.max_members_for_events => {}
            _ => return,
        }
        let changes = outcome
            .gone
            .into_iter()
            .map(|u| (u, false))
            .chain(outcome.arrived.into_iter().map(|u| (u, true)));
        for (user, present) in changes {
            let label = if present { "arrived" } else { "gone" };
            self.metrics
                .presence_announcements
                .with_label_values(&[label])
                .inc();
            self.events.presence_changed(conv, &user, present).await;
        }
    }

    /// How many participants the conversation has (None if unknown).
    async fn participants(&self, conv: ConversationId) -> Option<usize> {
        if let Some(access) = self.hub.upgrade().and_then(|h| h.cached_access(conv)) {
            return Some(access.members.len());
        }
        match self.store.participants(conv).await {
            Ok(users) => Some(users.len()),
            Err(e) => {
                tracing::warn!(error = %e, %conv, "participants unreadable; presence not announced");
                None
            }
        }
    }

    /// Notes that `user`'s holding of `conv` changed, for the next batch.
    fn changed(&self, conv: ConversationId, user: &UserId) {
        let mut local = self.state.lock();
        local.dirty.entry(conv).or_default().insert(user.clone());
        drop(local);
        self.wake.notify_one();
    }
}

impl Attendance for PresenceTracker {
    fn arrived(&self, conv: ConversationId, user: &UserId) {
        self.metrics.presence_entries.inc();
        self.changed(conv, user);
    }

    fn departed(&self, conv: ConversationId, user: &UserId) {
        self.metrics.presence_entries.dec();
        self.changed(conv, user);
    }
}
