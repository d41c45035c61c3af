//! Transcripts in Redis (or a Redis Cluster), for a cluster of nodes. A
//! conversation's transcript is two keys in one slot (the conversation id
//! is their hash tag): a hash with the stream id and its opening, and a
//! list of the pieces. Scripts check the stream id, so a late write of an
//! ended answer never touches the next one's.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Pool;
use fred::prelude::*;

use super::{Opening, Transcript, TranscriptError, Transcripts};
use crate::bus::fail_fast;
use crate::model::ConversationId;

/// KEYS: head, pieces. ARGV: stream, opening JSON, ttl ms.
const BEGIN: &str = r#"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'stream', ARGV[1], 'opening', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: head, pieces. ARGV: stream, index, piece, ttl ms.
const APPEND: &str = r#"
if redis.call('HGET', KEYS[1], 'stream') ~= ARGV[1] then return 0 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return -1
end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: head, pieces. ARGV: stream, ttl ms (absent: end it).
const KEEP_OR_END: &str = r#"
if redis.call('HGET', KEYS[1], 'stream') ~= ARGV[1] then return 0 end
if ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"#;

/// KEYS: head, pieces. Returns the opening (or nothing) then the pieces.
const READ: &str = r#"
local opening = redis.call('HGET', KEYS[1], 'opening')
if not opening then return {} end
local out = {opening}
for _, piece in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = piece end
return out
"#;

/// Keeps transcripts in Redis.
pub struct RedisTranscripts {
    pool: Pool,
    prefix: String,
}

impl RedisTranscripts {
    pub fn new(pool: Pool, prefix: &str) -> Self {
        RedisTranscripts {
            pool,
            prefix: prefix.to_owned(),
        }
    }

    fn client(&self) -> fred::clients::WithOptions<Client> {
        self.pool.next().with_options(&fail_fast())
    }

    /// The conversation's two keys, in one slot.
    fn keys(&self, conv: ConversationId) -> Vec<String> {
        let head = format!("{}:answer:{{{conv}}}", self.prefix);
        vec![head.clone(), format!("{head}:pieces")]
    }

    async fn run(
        &self,
        script: &str,
        conv: ConversationId,
        args: Vec<String>,
    ) -> Result<i64, TranscriptError> {
        self.client()
            .eval(script, self.keys(conv), args)
            .await
            .map_err(|e| TranscriptError(e.to_string()))
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

#[async_trait]
impl Transcripts for RedisTranscripts {
    async fn begin(&self, opening: &Opening, ttl: Duration) -> Result<(), TranscriptError> {
        let json = serde_json::to_string(opening).map_err(|e| TranscriptError(e.to_string()))?;
        let args = vec![opening.stream_id.to_string(), json, ms(ttl)];
        self.run(BEGIN, opening.conversation_id, args).await?;
        Ok(())
    }

    async fn append(
        &self,
        opening: &Opening,
        index: u64,
        piece: &str,
        ttl: Duration,
    ) -> Result<(), TranscriptError> {
        let args = vec![
            opening.stream_id.to_string(),
            index.to_string(),
            piece.to_owned(),
            ms(ttl),
        ];
        if self.run(APPEND, opening.conversation_id, args).await? < 0 {
            tracing::warn!(stream_id = %opening.stream_id, "a transcript piece was missing; joiners get no snapshot of this answer");
        }
        Ok(())
    }

    async fn keep(&self, opening: &Opening, ttl: Duration) -> Result<(), TranscriptError> {
        let args = vec![opening.stream_id.to_string(), ms(ttl)];
        self.run(KEEP_OR_END, opening.conversation_id, args).await?;
        Ok(())
    }

    async fn end(&self, opening: &Opening) -> Result<(), TranscriptError> {
        let args = vec![opening.stream_id.to_string()];
        self.run(KEEP_OR_END, opening.conversation_id, args).await?;
        Ok(())
    }

    async fn read(&self, conv: ConversationId) -> Result<Option<Transcript>, TranscriptError> {
        let out: Vec<String> = self
            .client()
            .eval(READ, self.keys(conv), Vec::<String>::new())
            .await
            .map_err(|e| TranscriptError(e.to_string()))?;
        let mut out = out.into_iter();
        let Some(opening) = out.next() else {
            return Ok(None);
        };
        let opening = serde_json::from_str(&opening)
            .map_err(|e| TranscriptError(format!("unreadable transcript: {e}")))?;
        Ok(Some(Transcript {
            opening,
            pieces: out.collect(),
        }))
    }
}
