//! The node's long-lived tasks, so that shutdown reaches every one of them:
//! one stop signal they all watch, and one tracker to wait for them.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Where a node's background tasks are started and stopped. Cheap to clone:
/// every clone shares the signal and the tracker.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or the node stops, whichever comes first
    /// (it is dropped then: for loops with nothing to finish).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs `task` to its end; it watches `stopping` itself, to finish what
    /// it holds first (a writer commits what is queued).
    pub fn spawn_graceful<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Completes once the node stops.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// The stop signal, for a task that outlives a borrow of `self`.
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Signals every task to stop and waits up to `within` for them to
    /// end. False if some were still running at the deadline.
    pub async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_loops_and_waits_for_graceful_tasks() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let graceful = tasks.clone();
        tasks.spawn_graceful(async move {
            graceful.stopping().await;
            let _ = done_tx.send("finished its work");
        });
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert_eq!(done_rx.await.unwrap(), "finished its work");
    }

    #[tokio::test]
    async fn stop_reports_a_task_that_does_not_end() {
        let tasks = Tasks::new();
        tasks.spawn_graceful(std::future::pending());
        assert!(!tasks.stop(Duration::from_millis(50)).await);
    }
}
