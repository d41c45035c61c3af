//! The queue's table in this process: a single node's queue.

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{unix_ms, Loaded, QueueError, QueueStore, Table};

/// Keeps the table in memory (the embedded defaults: one node).
#[derive(Default)]
pub struct MemoryQueueStore {
    table: Mutex<Option<Table>>,
}

#[async_trait]
impl QueueStore for MemoryQueueStore {
    async fn load(&self) -> Result<Loaded, QueueError> {
        Ok(Loaded {
            table: self.table.lock().clone(),
            now: unix_ms(),
        })
    }

    async fn save(&self, expected: u64, table: &Table) -> Result<bool, QueueError> {
        let mut stored = self.table.lock();
        let current = stored.as_ref().map_or(0, |t| t.version);
        if current != expected {
            return Ok(false);
        }
        *stored = Some(table.clone());
        Ok(true)
    }
}
