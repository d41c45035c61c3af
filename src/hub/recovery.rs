//! Catching rooms up from the history: a gap a late publisher did not
//! close in `gap_wait`, and a room that fell behind (the bus reconnected,
//! this node's publish failed). One task per room at a time, retrying with
//! back-off until it succeeds or the room closes.

use std::sync::Arc;

use super::backoff::Backoff;
use super::room::{Recovery, Room};
use super::{HistoryError, Hub, PAGE};
use crate::model::{ConversationId, Seq};

impl Hub {
    /// This node's publish of an entry to `conv` failed: its own room (if
    /// any connection here is joined) catches up from the history, since
    /// the bus will not bring the entry.
    pub fn publish_failed(&self, conv: ConversationId) {
        if let Some(room) = self.rooms.get(&conv).map(|r| r.clone()) {
            if room.state.lock().fall_behind() {
                self.spawn_recovery(&room);
            }
        }
    }

    /// Every room may have missed entries (the bus was away): each falls
    /// behind and catches up.
    pub(super) fn resync_all(&self) {
        let rooms: Vec<Arc<Room>> = self.rooms.iter().map(|r| r.value().clone()).collect();
        for room in rooms {
            if room.state.lock().fall_behind() {
                self.spawn_recovery(&room);
            }
        }
    }

    /// Starts the room's recovery task unless it runs or is not needed.
    pub(super) fn start_recovery(&self, room: &Arc<Room>) {
        if room.state.lock().claim_recovery() {
            self.spawn_recovery(room);
        }
    }

    /// Runs the recovery task the caller claimed.
    pub(super) fn spawn_recovery(&self, room: &Arc<Room>) {
        let (Some(hub), room) = (self.arc(), room.clone()) else {
            return;
        };
        self.tasks.spawn(async move { hub.recover(room).await });
    }

    /// The room's one recovery task: waits briefly for a late publisher to
    /// close a gap, reads what is missing, and catches up a room that fell
    /// behind; a failed read is retried with back-off until it succeeds or
    /// the room closes.
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

    /// Feeds every stored entry after `from` through the room's ordering.
    async fn catch_up(&self, room: &Arc<Room>, mut from: Seq) -> Result<(), HistoryError> {
        loop {
            let (page, more) = self.history.after(room.id, from, PAGE).await?;
            for entry in page {
                from = entry.seq;
                let (sent, _) = room.state.lock().on_entry(entry);
                self.metrics.events_delivered.inc_by(sent as u64);
            }
            if !more {
                return Ok(());
            }
        }
    }
}
