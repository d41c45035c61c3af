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
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use migration::search_text::index_text;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sea_orm::{ActiveEnum, DbErr};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::log::{reaction, settle, ChangeOrder, ChangeResult, Changed};
use super::messages::{retry_key, Appended, Bases, Job, NewMessage, Plan, RetryKey, MAX_BATCH};
use super::{now, stored_user};
use crate::model::{
    ChangeRequest, ClientMsgId, ConversationId, Message, MessageId, MessageType, Reaction, Refusal,
    Seq, MAX_REACTORS_SHOWN,
};

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
    /// (the store is dropped): takes the appends that are queued, up to
    /// `MAX_BATCH`, and commits them in one transaction; a change is
    /// applied in its own transaction, in its place in the queue. If a
    /// batch fails, each message is tried alone, so one bad message fails
    /// only its own send.
    pub fn spawn(self, path: PathBuf, mut queue: mpsc::Receiver<Task>) -> Result<(), DbErr> {
        let mut writer = self;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                let mut next = None;
                while let Some(task) = next.take().or_else(|| queue.blocking_recv()) {
                    let job = match task {
                        Task::Change(order, reply) => {
                            let _ = reply.send(writer.change(&order));
                            continue;
                        }
                        Task::Append(job) => job,
                    };
                    batch.push(job);
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(Task::Append(job)) => batch.push(job),
                            // After the appends queued before it.
                            Ok(change) => {
                                next = Some(change);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    writer.commit(&mut batch);
                }
                tracing::debug!(path = %path.display(), "sqlite writer stopped");
            })
            .map(drop)
            .map_err(|e| DbErr::Custom(format!("cannot start the SQLite writer: {e}")))
    }

    /// Stores `batch` (emptying it) and answers each send.
    fn commit(&mut self, batch: &mut Vec<Job>) {
        let (news, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        if news.len() > 1 {
            match self.insert_batch(&news) {
                Ok(stored) => {
                    for (reply, result) in replies.into_iter().zip(stored) {
                        let _ = reply.send(Ok(result));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, size = news.len(), "batch append failed; appending one by one")
                }
            }
        }
        for (new, reply) in news.iter().zip(replies) {
            let result = self
                .insert_batch(std::slice::from_ref(new))
                .map(|mut out| out.pop().flatten());
            let _ = reply.send(result);
        }
    }

    /// Applies a change in one transaction; see `Store::change` for the
    /// contract, which is the same. `BEGIN IMMEDIATE` holds the write lock
    /// from the first read.
    fn change(&mut self, order: &ChangeOrder) -> ChangeResult {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err("begin", e))?;
        let outcome = change_in(&tx, order)?;
        if matches!(outcome, Ok(Changed::Stored { .. })) {
            tx.commit().map_err(|e| db_err("commit", e))?;
        }
        Ok(outcome)
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
                      created_at, reply_to, search_text) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                        index_text(&m.content),
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

/// What the writer thread is asked to do.
pub(super) enum Task {
    Append(Job),
    Change(ChangeOrder, oneshot::Sender<ChangeResult>),
}

/// The body of `Writer::change`, inside its transaction: the same steps as
/// `log::change_in`, on this connection.
fn change_in(tx: &rusqlite::Transaction<'_>, order: &ChangeOrder) -> ChangeResult {
    let conv = order.conversation_id;
    let chat = tx
        .prepare_cached("SELECT archived, owner_id, last_seq FROM chats WHERE id = ?1")
        .and_then(|mut select| {
            select
                .query_row(params![conv.0.as_bytes()], |row| {
                    Ok((
                        row.get::<_, bool>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .optional()
        })
        .map_err(|e| db_err("chat", e))?;
    let Some((archived, owner, last_seq)) = chat else {
        return Ok(Err(Refusal::NotFound("conversation")));
    };
    if archived {
        return Ok(Err(Refusal::Archived));
    }
    let row = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE id = ?1 AND chat_id = ?2"
        ))
        .and_then(|mut select| {
            select
                .query_row(
                    params![order.message_id.0.as_bytes(), conv.0.as_bytes()],
                    StoredRow::read,
                )
                .optional()
        })
        .map_err(|e| db_err("message", e))?;
    let Some(row) = row else {
        return Ok(Err(Refusal::NotFound("message")));
    };
    let message = row.into_message(conv)?;
    let actor = order.actor.as_str();
    let reacted = match &order.request {
        ChangeRequest::React { emoji, .. } => tx
            .prepare_cached(
                "SELECT 1 FROM chat_reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3",
            )
            .and_then(|mut select| {
                select.exists(params![message.id.0.as_bytes(), emoji.as_str(), actor])
            })
            .map_err(|e| db_err("reacted", e))?,
        _ => false,
    };
    let mut message = match settle(order, message, owner == actor, reacted) {
        ControlFlow::Continue(message) => message,
        ControlFlow::Break(answer) => return Ok(answer),
    };

    let seq = Seq(last_seq + 1);
    let at = now();
    let stamp = timestamp(at);
    let id = message.id.0.as_bytes().to_vec();
    let change = order.request.change(&order.actor);
    let run = |sql: &str, values: &[&dyn rusqlite::ToSql]| {
        tx.prepare_cached(sql)
            .and_then(|mut statement| statement.execute(values))
            .map_err(|e| db_err("change", e))
    };
    run(
        "UPDATE chats SET last_seq = ?1, updated_at = ?2 WHERE id = ?3",
        params![seq.0, stamp, conv.0.as_bytes()],
    )?;
    run(
        "INSERT INTO chat_changes (chat_id, seq, message_id, kind, actor, emoji, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            conv.0.as_bytes(),
            seq.0,
            id,
            change.kind.to_value(),
            actor,
            change.emoji.as_ref().map(|e| e.as_str()),
            stamp,
        ],
    )?;
    message.apply(&order.request, at);
    match &order.request {
        ChangeRequest::Edit { content } => run(
            "UPDATE chat_messages SET content = ?1, edited_at = ?2, search_text = ?4 WHERE id = ?3",
            params![content, stamp, id, index_text(content)],
        )?,
        ChangeRequest::Delete => {
            run(
                "DELETE FROM chat_reactions WHERE message_id = ?1",
                params![id],
            )?;
            run(
                "UPDATE chat_messages SET content = '', deleted = 1, reactions = NULL, \
                 search_text = '' WHERE id = ?1",
                params![id],
            )?
        }
        ChangeRequest::React { emoji, add } => {
            if *add {
                run(
                    "INSERT INTO chat_reactions (message_id, emoji, user_id, seq) VALUES (?1, ?2, ?3, ?4)",
                    params![id, emoji.as_str(), actor, seq.0],
                )?;
            } else {
                run(
                    "DELETE FROM chat_reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3",
                    params![id, emoji.as_str(), actor],
                )?;
            }
            message.reactions = count_reactions(tx, &id)?;
            let folded = (!message.reactions.is_empty())
                .then(|| serde_json::to_string(&message.reactions))
                .transpose()
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            run(
                "UPDATE chat_messages SET reactions = ?1 WHERE id = ?2",
                params![folded, id],
            )?
        }
    };
    Ok(Ok(Changed::Stored {
        seq,
        change,
        message,
    }))
}

/// A message's reactions as clients see them (see `log::count_reactions`).
fn count_reactions(tx: &rusqlite::Transaction<'_>, message: &[u8]) -> Result<Vec<Reaction>, DbErr> {
    let err = |e| db_err("reactions", e);
    let mut groups = tx
        .prepare_cached(
            "SELECT emoji, COUNT(*), MIN(seq) AS first FROM chat_reactions \
             WHERE message_id = ?1 GROUP BY emoji ORDER BY first",
        )
        .map_err(err)?;
    let groups: Vec<(String, i64)> = groups
        .query_map(params![message], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(err)?;
    let mut users = tx
        .prepare_cached(
            "SELECT user_id FROM chat_reactions WHERE message_id = ?1 AND emoji = ?2 \
             ORDER BY seq LIMIT ?3",
        )
        .map_err(err)?;
    groups
        .into_iter()
        .map(|(emoji, count)| {
            let reactors: Vec<String> = users
                .query_map(params![message, emoji, MAX_REACTORS_SHOWN as i64], |row| {
                    row.get(0)
                })
                .and_then(|rows| rows.collect())
                .map_err(err)?;
            reaction(emoji, count, reactors)
        })
        .collect()
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
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages \
             WHERE chat_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3"
        ))
        .map_err(|e| db_err("prepare retries", e))?;
    for key in keys {
        let (conv, sender, cid) = &key;
        let row = select
            .query_row(
                params![conv.0.as_bytes(), sender.as_str(), cid.as_str()],
                StoredRow::read,
            )
            .optional()
            .map_err(|e| db_err("retries", e))?;
        let Some(row) = row else {
            continue;
        };
        let message = row.into_message(*conv)?;
        found.insert(key, message);
    }
    Ok(found)
}

/// The columns `StoredRow::read` reads, in its order.
const MESSAGE_COLUMNS: &str = "id, seq, sender_id, message_type, content, client_msg_id, \
    metadata, created_at, reply_to, edited_at, deleted, reactions";

/// A stored message's columns as SQLite holds them (sqlx's encoding).
struct StoredRow {
    id: Vec<u8>,
    seq: i64,
    sender_id: String,
    client_msg_id: Option<String>,
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
    /// Reads a row selected as `MESSAGE_COLUMNS`.
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(StoredRow {
            id: row.get(0)?,
            seq: row.get(1)?,
            sender_id: row.get(2)?,
            message_type: row.get(3)?,
            content: row.get(4)?,
            client_msg_id: row.get(5)?,
            metadata: row.get(6)?,
            created_at: row.get(7)?,
            reply_to: row.get(8)?,
            edited_at: row.get(9)?,
            deleted: row.get(10)?,
            reactions: row.get(11)?,
        })
    }

    fn into_message(self, conversation_id: ConversationId) -> Result<Message, DbErr> {
        let uuid = |bytes: &[u8]| Uuid::from_slice(bytes).map_err(|e| DbErr::Type(e.to_string()));
        let json = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| DbErr::Type(e.to_string()))
        };
        Ok(Message {
            id: MessageId(uuid(&self.id)?),
            conversation_id,
            seq: Seq(self.seq),
            sender_id: stored_user(self.sender_id)?,
            message_type: MessageType::try_from_value(&self.message_type)?,
            content: self.content,
            client_msg_id: self
                .client_msg_id
                .map(|c| ClientMsgId::parse(c).map_err(|e| DbErr::Type(e.to_string())))
                .transpose()?,
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
