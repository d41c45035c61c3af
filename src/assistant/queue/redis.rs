//! The queue's table in Redis (or a Redis Cluster), for a cluster of
//! nodes: one hash holding the table's JSON and its version. Loading reads
//! both and Redis's clock; saving is a compare-and-set on the version, in
//! one script, so two nodes never both save a change made to the same
//! table. The table is small (bounded by the assistants' `max_queue` and
//! the users' stream limit), so each change rewrites all of it.

use async_trait::async_trait;
use fred::clients::Pool;
use fred::prelude::*;

use super::{Loaded, QueueError, QueueStore, Table};
use crate::bus::fail_fast;

/// Returns the table's JSON (or false) and Redis's time in milliseconds.
const LOAD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('HGET', KEYS[1], 's'), tostring(now)}
"#;

/// Saves ARGV[3] as version ARGV[2] if the stored version is ARGV[1].
const SAVE: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if (v == false and ARGV[1] == '0') or v == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
  return 1
end
return 0
"#;

/// Keeps the table in Redis.
pub struct RedisQueueStore {
    pool: Pool,
    key: String,
}

impl RedisQueueStore {
    pub fn new(pool: Pool, prefix: &str) -> Self {
        RedisQueueStore {
            pool,
            key: format!("{prefix}:assistants:queue"),
        }
    }

    fn client(&self) -> fred::clients::WithOptions<Client> {
        self.pool.next().with_options(&fail_fast())
    }
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError(e.to_string())
}

#[async_trait]
impl QueueStore for RedisQueueStore {
    async fn load(&self) -> Result<Loaded, QueueError> {
        let (json, now): (Option<String>, String) = self
            .client()
            .eval(LOAD, vec![self.key.clone()], Vec::<String>::new())
            .await
            .map_err(unavailable)?;
        let now = now.parse().map_err(unavailable)?;
        let table = match json {
            None => None,
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| QueueError(format!("the stored queue is unreadable: {e}")))?,
            ),
        };
        Ok(Loaded { table, now })
    }

    async fn save(&self, expected: u64, table: &Table) -> Result<bool, QueueError> {
        let json = serde_json::to_string(table).map_err(unavailable)?;
        let saved: i64 = self
            .client()
            .eval(
                SAVE,
                vec![self.key.clone()],
                vec![expected.to_string(), table.version.to_string(), json],
            )
            .await
            .map_err(unavailable)?;
        Ok(saved == 1)
    }
}
