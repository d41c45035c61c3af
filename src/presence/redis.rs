//! Presence in Redis (or a Redis Cluster), for a cluster of nodes.
//!
//! A conversation's presence is two keys in one hash slot (the
//! conversation id is their hash tag): a sorted set of present users,
//! scored by when their last entry ends, and a hash of each user's entries
//! by node (a small JSON object). One Lua script applies an update exactly
//! as `table.rs` does, atomically, on Redis's clock, so every node agrees
//! on who arrived and who is gone and exactly one node hears of each. A
//! sweep of a sorted set's low end finds the users gone: cost grows with
//! them, not with the conversation.
//!
//! A key `{prefix}:presence:boot` tells a Redis that lost its data (it
//! restarted empty) from one that kept it: the nodes then re-assert their
//! entries quietly, since no one really arrived.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Pool;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Outcome, Presence, PresenceError, Timing, Update};
use crate::bus::{client_builder, fail_fast};
use crate::config::BusSettings;
use crate::model::{ConnectionId, ConversationId, UserId};
use crate::tasks::Tasks;

/// Most gone users one update sweeps (the rest go in the next one), so a
/// script never holds Redis for long.
const SWEEP_LIMIT: usize = 1000;

/// `table.rs`'s update, in Lua. KEYS: the users set, the entries hash.
/// ARGV: node, ttl ms, grace ms, quiet (1/0), the number of live users,
/// the live users, then the departed ones. Returns the number of arrived
/// users, the arrived, then the gone.
const UPDATE: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, ttl, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local quiet, nlive, limit = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6])
local users, entries = KEYS[1], KEYS[2]
local gone = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', users, '-inf', now - grace, 'LIMIT', 0, limit)) do
  redis.call('ZREM', users, user)
  redis.call('HDEL', entries, user)
  gone[#gone + 1] = user
end
local function load(user)
  local v = redis.call('HGET', entries, user)
  if v then return cjson.decode(v) end
  return {}
end
local function save(user, held)
  local last = nil
  for n, u in pairs(held) do
    if u + grace <= now then held[n] = nil
    elseif last == nil or u > last then last = u end
  end
  if last == nil then
    redis.call('ZREM', users, user)
    redis.call('HDEL', entries, user)
  else
    redis.call('HSET', entries, user, cjson.encode(held))
    redis.call('ZADD', users, last, user)
  end
end
for i = 7 + nlive, #ARGV do
  local user = ARGV[i]
  local held = load(user)
  if held[node] then
    if held[node] > now then held[node] = now end
    save(user, held)
  end
end
local arrived = {}
for i = 7, 6 + nlive do
  local user = ARGV[i]
  local was = redis.call('ZSCORE', users, user)
  local held = load(user)
  held[node] = now + ttl
  save(user, held)
  if not was and not quiet then arrived[#arrived + 1] = user end
end
local keep = 2 * ttl + grace
redis.call('PEXPIRE', users, keep)
redis.call('PEXPIRE', entries, keep)
local out = { tostring(#arrived) }
for _, u in ipairs(arrived) do out[#out + 1] = u end
for _, u in ipairs(gone) do out[#out + 1] = u end
return out
"#;

/// The present users: KEYS the users set, ARGV grace ms.
const PRESENT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
"#;

/// Presence shared by the nodes of a cluster through Redis.
pub struct RedisPresence {
    node: String,
    prefix: String,
    timing: Timing,
    pool: Pool,
    /// The boot id last seen; a different one means Redis lost its data.
    boot: Mutex<Option<String>>,
    reconnected: Arc<Notify>,
}

impl RedisPresence {
    /// Connects to the Redis the bus uses and watches for its reconnects.
    pub async fn connect(
        settings: &BusSettings,
        node: &str,
        timing: Timing,
        tasks: &Tasks,
    ) -> Result<Arc<Self>, PresenceError> {
        let builder = client_builder(settings).map_err(|e| PresenceError(e.to_string()))?;
        let pool = builder.build_pool(2).map_err(unavailable)?;
        pool.init().await.map_err(unavailable)?;
        let presence = Arc::new(Self {
            node: node.to_owned(),
            prefix: settings.prefix.clone(),
            timing,
            pool,
            boot: Mutex::new(None),
            reconnected: Arc::new(Notify::new()),
        });
        for client in presence.pool.clients() {
            let mut reconnects = client.reconnect_rx();
            let notify = presence.reconnected.clone();
            tasks.spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match reconnects.recv().await {
                        Ok(_) | Err(RecvError::Lagged(_)) => notify.notify_one(),
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        }
        Ok(presence)
    }

    fn client(&self) -> fred::clients::WithOptions<Client> {
        self.pool.next().with_options(&fail_fast())
    }

    /// The two keys of a conversation, in one slot.
    fn keys(&self, conv: ConversationId) -> Vec<String> {
        let base = format!("{}:presence:{{{conv}}}", self.prefix);
        vec![format!("{base}:users"), format!("{base}:entries")]
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn update(
        &self,
        conv: ConversationId,
        update: Update<'_>,
    ) -> Result<Outcome, PresenceError> {
        let mut args: Vec<String> = vec![
            self.node.clone(),
            self.timing.ttl.to_string(),
            self.timing.grace.to_string(),
            if update.quiet { "1" } else { "0" }.into(),
            update.live.len().to_string(),
            SWEEP_LIMIT.to_string(),
        ];
        args.extend(update.live.iter().map(|u| u.to_string()));
        args.extend(update.departed.iter().map(|u| u.to_string()));
        let out: Vec<String> = self
            .client()
            .eval(UPDATE, self.keys(conv), args)
            .await
            .map_err(unavailable)?;
        let arrived: usize = out.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut users = out.iter().skip(1).filter_map(|u| UserId::parse(u).ok());
        Ok(Outcome {
            arrived: users.by_ref().take(arrived).collect(),
            gone: users.collect(),
        })
    }

    async fn present(&self, conv: ConversationId) -> Result<Vec<UserId>, PresenceError> {
        let keys = self.keys(conv);
        let users: Vec<String> = self
            .client()
            .eval(
                PRESENT,
                vec![keys[0].clone()],
                vec![self.timing.grace.to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut users: Vec<UserId> = users.iter().filter_map(|u| UserId::parse(u).ok()).collect();
        users.sort();
        Ok(users)
    }

    async fn lost_entries(&self) -> Result<bool, PresenceError> {
        let key = format!("{}:presence:boot", self.prefix);
        let client = self.client();
        let mut current: Option<String> = client.get(&key).await.map_err(unavailable)?;
        if current.is_none() {
            let fresh = uuid::Uuid::now_v7().to_string();
            let _: Option<String> = client
                .set(&key, fresh, None, Some(SetOptions::NX), false)
                .await
                .map_err(unavailable)?;
            current = client.get(&key).await.map_err(unavailable)?;
        }
        let mut seen = self.boot.lock();
        let lost = seen.is_some() && *seen != current;
        *seen = current;
        Ok(lost)
    }

    fn reconnected(&self) -> Arc<Notify> {
        self.reconnected.clone()
    }

    async fn hold_connection(
        &self,
        conn: ConnectionId,
        user: &UserId,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let expiry = Expiration::PX(ttl.as_millis().max(1) as i64);
        let _: Option<String> = self
            .client()
            .set(
                self.key("conn", conn),
                user.to_string(),
                Some(expiry),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn connection_user(&self, conn: ConnectionId) -> Result<Option<UserId>, PresenceError> {
        let user: Option<String> = self
            .client()
            .get(self.key("conn", conn))
            .await
            .map_err(unavailable)?;
        Ok(user.and_then(|u| UserId::parse(&u).ok()))
    }

    async fn release_connection(&self, conn: ConnectionId) -> Result<(), PresenceError> {
        let _: i64 = self
            .client()
            .del(self.key("conn", conn))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn put_ticket(
        &self,
        ticket: &str,
        grant: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let expiry = Expiration::PX(ttl.as_millis().max(1) as i64);
        let _: Option<String> = self
            .client()
            .set(self.key("ticket", ticket), grant, Some(expiry), None, false)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, PresenceError> {
        self.client()
            .getdel(self.key("ticket", ticket))
            .await
            .map_err(unavailable)
    }
}

fn unavailable(e: fred::error::Error) -> PresenceError {
    PresenceError(e.to_string())
}
