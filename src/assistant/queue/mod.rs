//! The assistants' queue, shared by every node: which requests wait, which
//! run, and on which node. The rules are `table.rs`; a `QueueStore` keeps
//! the table (in memory for one node, in Redis for a cluster) and saves a
//! change only if no other node saved one since it was loaded, so every
//! change is a read, the rules, and a compare-and-set, retried on conflict.

mod memory;
mod redis;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

pub use memory::MemoryQueueStore;
pub use redis::RedisQueueStore;
pub use table::{Effects, Entry, Limits, Refusal, Table};

/// Most attempts of one change against other nodes' changes.
const ATTEMPTS: usize = 50;

/// Why the queue could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[error("assistant queue unavailable: {0}")]
pub struct QueueError(pub String);

/// The table as loaded, and the store's clock.
pub struct Loaded {
    /// None if the store holds no table (never made, or lost).
    pub table: Option<Table>,
    /// The store's time, in milliseconds (one clock for every node).
    pub now: i64,
}

/// Where the table is kept.
#[async_trait]
pub trait QueueStore: Send + Sync {
    async fn load(&self) -> Result<Loaded, QueueError>;
    /// Saves `table` if the stored one still has version `expected` (0: none
    /// stored); false if another change came first.
    async fn save(&self, expected: u64, table: &Table) -> Result<bool, QueueError>;
}

/// This node's handle on the queue.
pub struct Queue {
    store: Arc<dyn QueueStore>,
    node: String,
    /// How long a node's lease lasts without renewal.
    lease: Duration,
    limits: Box<dyn Fn(&str) -> Limits + Send + Sync>,
    /// The table's epoch last seen, and this node's requests in it: if
    /// the store loses the table, they are put back.
    seen: Mutex<(Option<u64>, Vec<Entry>)>,
    /// The node stops: its lease is no longer renewed.
    leaving: AtomicBool,
    /// One change at a time from this node: its changes never conflict
    /// with each other (only with other nodes'), and a burst of requests
    /// on one node is a sequence of single compare-and-sets, not a storm
    /// of retries.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// The table as this node last loaded or saved it, for catch-ups,
    /// which need not read Redis for it (every node reloads it at least
    /// every tending).
    latest: Mutex<Option<Table>>,
}

impl Queue {
    pub fn new(
        store: Arc<dyn QueueStore>,
        node: &str,
        lease: Duration,
        limits: impl Fn(&str) -> Limits + Send + Sync + 'static,
    ) -> Self {
        Queue {
            store,
            node: node.to_owned(),
            lease,
            limits: Box::new(limits),
            seen: Mutex::new((None, Vec::new())),
            leaving: AtomicBool::new(false),
            one_at_a_time: tokio::sync::Mutex::new(()),
            latest: Mutex::new(None),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn limits(&self, assistant: &str) -> Limits {
        (self.limits)(assistant)
    }

    /// Applies `change` to the table at the store's time, then the rules
    /// (`Table::settle`), and saves the result; retried from a fresh load
    /// when another node saved first, so `change` may run more than once
    /// and must only touch the table. Returns its result and what the
    /// rules decided, which this node (alone) must now carry out.
    pub async fn update<R>(
        &self,
        mut change: impl FnMut(&mut Table, i64) -> R,
    ) -> Result<(R, Effects), QueueError> {
        let lease = self.lease.as_millis() as i64;
        let _turn = self.one_at_a_time.lock().await;
        for _ in 0..ATTEMPTS {
            let Loaded { table, now } = self.store.load().await?;
            let stored = table.is_some();
            let mut table =
                table.unwrap_or_else(|| Table::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1));
            let before = stored.then(|| table.clone());
            let lost = {
                let seen = self.seen.lock();
                (seen.0.is_some_and(|e| e != table.epoch)).then(|| seen.1.clone())
            };
            if let Some(mine) = lost {
                tracing::warn!(
                    requests = mine.len(),
                    "the assistant queue was lost (Redis restarted empty?); putting back this node's requests"
                );
                table.restore(mine);
            }
            let out = change(&mut table, now);
            let me = (!self.leaving.load(Ordering::Relaxed)).then_some(self.node.as_str());
            if let Some(me) = me {
                table.renew(me, now + lease, now + lease * 2 / 3);
            }
            let mut effects = table.settle(now, me, &self.limits);
            if before.as_ref() == Some(&table) {
                self.remember(&table);
                effects.version = table.version;
                return Ok((out, effects));
            }
            let expected = if stored { table.version } else { 0 };
            table.version += 1;
            if self.store.save(expected, &table).await? {
                self.remember(&table);
                effects.version = table.version;
                return Ok((out, effects));
            }
        }
        Err(QueueError("too many concurrent changes".into()))
    }

    /// Ends this node's lease (it stops), so other nodes take over its
    /// requests at once rather than when the lease runs out.
    pub async fn leave(&self) -> Result<Effects, QueueError> {
        self.leaving.store(true, Ordering::Relaxed);
        let ((), effects) = self.update(|t, _| t.end_lease(&self.node)).await?;
        Ok(effects)
    }

    /// True once `leave` was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// Reads the table without changing it.
    pub async fn read(&self) -> Result<Loaded, QueueError> {
        self.store.load().await
    }

    /// The table as this node last read or changed it (at most a tending
    /// old), reading it if this node has not yet.
    pub async fn latest(&self) -> Result<Option<Table>, QueueError> {
        if let Some(table) = self.latest.lock().clone() {
            return Ok(Some(table));
        }
        Ok(self.read().await?.table)
    }

    fn remember(&self, table: &Table) {
        let mine = table
            .entries()
            .filter(|e| e.node == self.node)
            .cloned()
            .collect();
        *self.seen.lock() = (Some(table.epoch), mine);
        *self.latest.lock() = Some(table.clone());
    }
}

/// The store's clock for the memory store: unix milliseconds.
pub(crate) fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
