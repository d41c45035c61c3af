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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sea_orm::{ActiveEnum, DbErr};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::messages::{retry_key, Appended, Bases, Job, NewMessage, Plan, RetryKey, MAX_BATCH};
use crate::model::{ClientMsgId, ConversationId, Message, MessageId, MessageType, Seq, UserId};

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
                    "UPDATE chats SET last_seq = last_seq + ?1, updated_at = ?2, \
                     last_message_at = ?2 WHERE id = ?3 RETURNING last_seq",
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
                     (id, chat_id, seq, sender_id, message_type, content, client_msg_id, metadata, \
                      created_at, reply_to) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| db_err("prepare insert", e))?;
            // Each user sender's newest seq per conversation: their read mark.
            let mut read: HashMap<(ConversationId, &str), i64> = HashMap::new();
            for m in &fresh {
                let Some(base) = bases.get(&m.conversation_id) else {
                    continue;
                };
                if m.message_type == MessageType::User {
                    let seq = read
                        .entry((m.conversation_id, m.sender_id.as_str()))
                        .or_default();
                    *seq = (*seq).max(base + m.seq.0);
                }
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
                        m.reply_to.map(|r| r.0.as_bytes().to_vec()),
                    ])
                    .map_err(|e| db_err("insert", e))?;
            }
            let mut mark = tx
                .prepare_cached(
                    "UPDATE chat_participants SET last_read_seq = ?1 \
                     WHERE chat_id = ?2 AND user_id = ?3 AND last_read_seq < ?1",
                )
                .map_err(|e| db_err("prepare read mark", e))?;
            for ((conv, user), seq) in read {
                mark.execute(params![seq, conv.0.as_bytes(), user])
                    .map_err(|e| db_err("read mark", e))?;
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
) -> Result<HashMap<RetryKey, Message>, DbErr> {
    let mut found = HashMap::new();
    let keys: Vec<RetryKey> = batch.iter().filter_map(retry_key).collect();
    if keys.is_empty() {
        return Ok(found);
    }
    let mut select = tx
        .prepare_cached(
            "SELECT id, seq, message_type, content, metadata, created_at, reply_to, edited_at, \
             deleted, reactions FROM chat_messages \
             WHERE chat_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3",
        )
        .map_err(|e| db_err("prepare retries", e))?;
    for key in keys {
        let (conv, sender, cid) = &key;
        let row = select
            .query_row(
                params![conv.0.as_bytes(), sender.as_str(), cid.as_str()],
                |row| {
                    Ok(StoredRow {
                        id: row.get(0)?,
                        seq: row.get(1)?,
                        message_type: row.get(2)?,
                        content: row.get(3)?,
                        metadata: row.get(4)?,
                        created_at: row.get(5)?,
                        reply_to: row.get(6)?,
                        edited_at: row.get(7)?,
                        deleted: row.get(8)?,
                        reactions: row.get(9)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_err("retries", e))?;
        let Some(row) = row else {
            continue;
        };
        let message = row.into_message(*conv, sender.clone(), cid.clone())?;
        found.insert(key, message);
    }
    Ok(found)
}

/// A stored message's columns as SQLite holds them (sqlx's encoding).
struct StoredRow {
    id: Vec<u8>,
    seq: i64,
    message_type: String,
    content: String,
    metadata: Option<String>,
    created_at: String,
    reply_to: Option<Vec<u8>>,
    edited_at: Option<String>,
    deleted: bool,
    reactions: Option<String>,
}

impl StoredRow {
    fn into_message(
        self,
        conversation_id: ConversationId,
        sender_id: UserId,
        client_msg_id: ClientMsgId,
    ) -> Result<Message, DbErr> {
        let uuid = |bytes: &[u8]| Uuid::from_slice(bytes).map_err(|e| DbErr::Type(e.to_string()));
        let json = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| DbErr::Type(e.to_string()))
        };
        Ok(Message {
            id: MessageId(uuid(&self.id)?),
            conversation_id,
            seq: Seq(self.seq),
            sender_id,
            message_type: MessageType::try_from_value(&self.message_type)?,
            content: self.content,
            client_msg_id: Some(client_msg_id),
            metadata: self.metadata.as_deref().map(json).transpose()?,
            created_at: parse_timestamp(&self.created_at)?,
            reply_to: self
                .reply_to
                .as_deref()
                .map(uuid)
                .transpose()?
                .map(MessageId),
            attachments: Vec::new(),
            reactions: match self.reactions.as_deref().map(json).transpose()? {
                Some(v) => serde_json::from_value(v).map_err(|e| DbErr::Type(e.to_string()))?,
                None => Vec::new(),
            },
            edited_at: self.edited_at.as_deref().map(parse_timestamp).transpose()?,
            deleted: self.deleted,
        })
    }
}

fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, DbErr> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DbErr::Type(e.to_string()))
}

/// A timestamp as sqlx writes one to SQLite (RFC 3339, `+00:00`), so the
/// rows sort and decode like the rest.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn db_err(step: &str, e: rusqlite::Error) -> DbErr {
    DbErr::Custom(format!("sqlite append ({step}): {e}"))
}
