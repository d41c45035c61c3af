//! SQLite appends, on a connection and a thread of their own.
//!
//! Through sqlx, every statement is a hand-off to the connection's worker
//! thread and back: a send's retry lookup, BEGIN, bump, insert and COMMIT
//! cost ten thread wake-ups, which measured more CPU than SQLite's own work
//! (bench/run.sh, fanout; see docs/performance.md). Here the writer thread
//! owns the connection and runs a whole batch back to back with prepared
//! statements: one hand-off in (the queue) and one out (each reply).
//!
//! SQLite has one writer at a time anyway, so a single thread loses nothing.
//! `BEGIN IMMEDIATE` takes the write lock before the retry lookup, so a retry
//! can never race its first copy, on this node or another. Rows are written
//! in the encoding sqlx uses, so every other query reads them unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sea_orm::{ActiveEnum, DbErr};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::messages::{retry_key, Appended, Bases, Job, NewMessage, Plan, RetryKey, MAX_BATCH};
use crate::model::{Message, MessageId, MessageType, Seq};

/// The writer's own connection to the database file the pool uses.
pub(super) struct Writer {
    conn: Connection,
}

impl Writer {
    /// Opens `path` with the pool's settings (WAL, normal sync, foreign keys,
    /// a busy timeout for the other writers: the pool's, other nodes').
    pub fn open(path: &Path) -> Result<Self, DbErr> {
        let conn = Connection::open(path).map_err(|e| db_err("open", e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| db_err("busy_timeout", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| db_err("pragmas", e))?;
        Ok(Writer { conn })
    }

    /// Runs on a thread of its own until every sender of `queue` is gone
    /// (the store is dropped): takes what is queued, up to `MAX_BATCH`, and
    /// commits it in one transaction. If that fails, each message is tried
    /// alone, so one bad message fails only its own send.
    pub fn spawn(self, path: PathBuf, mut queue: mpsc::Receiver<Job>) -> Result<(), DbErr> {
        let mut writer = self;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                while let Some(job) = queue.blocking_recv() {
                    batch.push(job);
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (news, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                    if news.len() > 1 {
                        match writer.insert_batch(&news) {
                            Ok(stored) => {
                                for (reply, result) in replies.into_iter().zip(stored) {
                                    let _ = reply.send(Ok(result));
                                }
                                continue;
                            }
                            Err(e) => tracing::debug!(error = %e, size = news.len(), "batch append failed; appending one by one"),
                        }
                    }
                    for (new, reply) in news.iter().zip(replies) {
                        let result = writer
                            .insert_batch(std::slice::from_ref(new))
                            .map(|mut out| out.pop().flatten());
                        let _ = reply.send(result);
                    }
                }
                tracing::debug!(path = %path.display(), "sqlite writer stopped");
            })
            .map(drop)
            .map_err(|e| DbErr::Custom(format!("cannot start the SQLite writer: {e}")))
    }

    /// Appends `batch` in one transaction; see `messages::insert_batch` for
    /// the contract, which is the same.
    fn insert_batch(&mut self, batch: &[NewMessage]) -> Result<Vec<Option<Appended>>, DbErr> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err("begin", e))?;
        let plan = Plan::new(batch, find_retries(&tx, batch)?);
        let fresh = plan.fresh();
        let created_at = timestamp(plan.created_at);
        let mut bases = Bases::new();
        if !fresh.is_empty() {
            let mut bump = tx
                .prepare_cached(
                    "UPDATE chats SET last_seq = last_seq + ?1, updated_at = ?2 \
                     WHERE id = ?3 RETURNING last_seq",
                )
                .map_err(|e| db_err("prepare bump", e))?;
            for (id, count) in &plan.counts {
                let last: Option<i64> = bump
                    .query_row(params![count, created_at, id.0.as_bytes()], |row| {
                        row.get(0)
                    })
                    .optional()
                    .map_err(|e| db_err("bump", e))?;
                if let Some(last) = last {
                    bases.insert(*id, last - count);
                }
            }
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO chat_messages \
                     (id, chat_id, seq, sender_id, message_type, content, client_msg_id, metadata, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(|e| db_err("prepare insert", e))?;
            for m in &fresh {
                let Some(base) = bases.get(&m.conversation_id) else {
                    continue;
                };
                let metadata = m.metadata.as_ref().map(|v| v.to_string());
                insert
                    .execute(params![
                        m.id.0.as_bytes(),
                        m.conversation_id.0.as_bytes(),
                        base + m.seq.0,
                        m.sender_id.as_str(),
                        m.message_type.to_value(),
                        m.content,
                        m.client_msg_id.as_ref().map(|c| c.as_str()),
                        metadata,
                        created_at,
                    ])
                    .map_err(|e| db_err("insert", e))?;
            }
        }
        drop(fresh);
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(plan.finish(&bases))
    }
}

/// The stored messages of sends in `batch` that carry a client id, read
/// inside the batch's transaction (on the unique index).
fn find_retries(
    tx: &rusqlite::Transaction<'_>,
    batch: &[NewMessage],
) -> Result<std::collections::HashMap<RetryKey, Message>, DbErr> {
    let mut found = std::collections::HashMap::new();
    let keys: Vec<RetryKey> = batch.iter().filter_map(retry_key).collect();
    if keys.is_empty() {
        return Ok(found);
    }
    let mut select = tx
        .prepare_cached(
            "SELECT id, seq, message_type, content, metadata, created_at FROM chat_messages \
             WHERE chat_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3",
        )
        .map_err(|e| db_err("prepare retries", e))?;
    for key in keys {
        let (conv, sender, cid) = &key;
        let row = select
            .query_row(
                params![conv.0.as_bytes(), sender.as_str(), cid.as_str()],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| db_err("retries", e))?;
        let Some((id, seq, message_type, content, metadata, created_at)) = row else {
            continue;
        };
        let message = Message {
            id: MessageId(Uuid::from_slice(&id).map_err(|e| DbErr::Type(e.to_string()))?),
            conversation_id: *conv,
            seq: Seq(seq),
            sender_id: sender.clone(),
            message_type: MessageType::try_from_value(&message_type)?,
            content,
            client_msg_id: Some(cid.clone()),
            metadata: metadata
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(|e| DbErr::Type(e.to_string()))?,
            created_at: DateTime::parse_from_rfc3339(&created_at)
                .map_err(|e| DbErr::Type(e.to_string()))?
                .with_timezone(&Utc),
        };
        found.insert(key, message);
    }
    Ok(found)
}

/// A timestamp as sqlx writes one to SQLite (RFC 3339, `+00:00`), so the
/// rows sort and decode like the rest.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn db_err(step: &str, e: rusqlite::Error) -> DbErr {
    DbErr::Custom(format!("sqlite append ({step}): {e}"))
}
