//! Messages: appending with gap-free seq allocation, idempotent by
//! `client_msg_id`, and reading history pages.

use entity::chat_messages as msgs;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use migration::search_text::index_text;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, SqlErr, Statement,
};

use super::{now, stored_user, Store};
use crate::model::{ClientMsgId, ConversationId, Message, MessageId, MessageType, Seq, UserId};

/// A message to append.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// A chosen id (an assistant answer announced before it is stored), or a fresh one.
    pub id: Option<MessageId>,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub message_type: MessageType,
    pub content: String,
    pub client_msg_id: Option<ClientMsgId>,
    pub metadata: Option<serde_json::Value>,
    /// The message it answers (checked by the caller to be in the conversation).
    pub reply_to: Option<MessageId>,
}

/// Most messages in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// An append, and where its outcome goes.
pub(super) type Job = (
    NewMessage,
    tokio::sync::oneshot::Sender<Result<Option<Appended>, DbErr>>,
);

/// The stored message, and whether it had been stored before (a retry).
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
}

/// The columns of a message row, as `m`, for `Store::query_messages`.
pub const MESSAGE_COLUMNS: &str = "m.id, m.chat_id, m.seq, m.sender_id, m.message_type, \
    m.content, m.client_msg_id, m.metadata, m.created_at, m.reply_to, m.edited_at, m.deleted, \
    m.reactions";

/// Appends one message on its own; a retry that raced another copy of
/// itself finds the stored one.
pub(super) async fn append_one(
    db: &DatabaseConnection,
    new: &NewMessage,
) -> Result<Option<Appended>, DbErr> {
    match insert_batch(db, std::slice::from_ref(new)).await {
        Ok(mut out) => Ok(out.pop().flatten()),
        // A concurrent retry of the same send won the race.
        Err(e) if is_unique_violation(&e) && new.client_msg_id.is_some() => {
            let found = find_retries(db, std::slice::from_ref(new)).await?;
            let message = found.into_values().next().ok_or(e)?;
            Ok(Some(Appended {
                message,
                duplicate: true,
            }))
        }
        Err(e) => Err(e),
    }
}

/// What one send of a batch turns out to be.
enum Slot {
    /// Stored by an earlier copy of the send.
    Stored(Message),
    /// A second copy of the send at this earlier position in the batch.
    Twin(usize),
    /// New; its seq holds its position among the batch's messages to the
    /// same conversation (1, 2, ...) until the conversation's base is known.
    New(Message),
}

/// Appends every message in the order given, atomically: each conversation's
/// `chats.last_seq` is bumped once by its count of new messages (the row
/// lock serializes writers of one conversation on every node) and every row
/// is inserted, so seq is unique and gap-free: a failed insert rolls the
/// bump back. `last_message_at` becomes the batch's time, and each user
/// sender's read mark moves up to their newest message. Returns None for messages whose conversation does not exist.
/// Retries of stored sends, and twin copies within the batch, store nothing
/// and come back marked duplicate. Postgres only: SQLite appends run on a
/// connection of their own (`sqlite`).
pub(super) async fn insert_batch(
    db: &DatabaseConnection,
    batch: &[NewMessage],
) -> Result<Vec<Option<Appended>>, DbErr> {
    let plan = Plan::new(batch, find_retries(db, batch).await?);
    let fresh = plan.fresh();
    let bases = if fresh.is_empty() {
        Bases::new()
    } else {
        insert_postgres(db, &plan.counts, &fresh, plan.created_at).await?
    };
    Ok(plan.finish(&bases))
}

/// What a batch of sends turns into before the database assigns seqs: the
/// part of the append both backends share.
pub(super) struct Plan {
    slots: Vec<Slot>,
    /// New messages per conversation, in ascending id order: every writer
    /// on every node locks chat rows in the same order, so two batches
    /// cannot deadlock.
    pub counts: BTreeMap<ConversationId, i64>,
    pub created_at: DateTime<Utc>,
}

impl Plan {
    /// Sorts `batch` into new messages, retries of `stored` ones and twins.
    pub fn new(batch: &[NewMessage], stored: HashMap<RetryKey, Message>) -> Self {
        let created_at = now();
        let mut counts: BTreeMap<ConversationId, i64> = BTreeMap::new();
        let mut first_copy: HashMap<RetryKey, usize> = HashMap::new();
        let mut slots = Vec::with_capacity(batch.len());
        for (i, new) in batch.iter().enumerate() {
            if let Some(key) = retry_key(new) {
                if let Some(message) = stored.get(&key).cloned() {
                    slots.push(Slot::Stored(message));
                    continue;
                }
                if let Some(&first) = first_copy.get(&key) {
                    slots.push(Slot::Twin(first));
                    continue;
                }
                first_copy.insert(key, i);
            }
            let position = counts.entry(new.conversation_id).or_default();
            *position += 1;
            slots.push(Slot::New(Message {
                id: new.id.unwrap_or_default(),
                conversation_id: new.conversation_id,
                seq: Seq(*position),
                sender_id: new.sender_id.clone(),
                message_type: new.message_type,
                content: new.content.clone(),
                client_msg_id: new.client_msg_id.clone(),
                metadata: new.metadata.clone(),
                created_at,
                reply_to: new.reply_to,
                attachments: Vec::new(),
                reactions: Vec::new(),
                edited_at: None,
                deleted: false,
            }));
        }
        Plan {
            slots,
            counts,
            created_at,
        }
    }

    /// The messages to insert; each carries its position among the batch's
    /// new messages to its conversation as seq.
    pub fn fresh(&self) -> Vec<&Message> {
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::New(message) => Some(message),
                _ => None,
            })
            .collect()
    }

    /// Each send's outcome, once the conversations' `bases` are known.
    pub fn finish(self, bases: &Bases) -> Vec<Option<Appended>> {
        let mut out: Vec<Option<Appended>> = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            let appended = match slot {
                Slot::Stored(message) => Some(Appended {
                    message,
                    duplicate: true,
                }),
                Slot::Twin(first) => out[first].clone().map(|a| Appended {
                    duplicate: true,
                    ..a
                }),
                Slot::New(mut message) => bases.get(&message.conversation_id).map(|base| {
                    message.seq = Seq(base + message.seq.0);
                    Appended {
                        message,
                        duplicate: false,
                    }
                }),
            };
            out.push(appended);
        }
        out
    }
}

/// Each conversation's last seq before the batch, keyed by conversation;
/// a conversation that does not exist is absent. `fresh` messages carry
/// their position in the batch as seq.
pub(super) type Bases = HashMap<ConversationId, i64>;

/// Postgres: one statement, so one round trip and an implicit transaction.
/// It locks the batch's chat rows in id order, bumps each `last_seq` by
/// its count, inserts every row at `base + position` and moves each user
/// sender's read mark to their newest message (participant rows after
/// chat rows, the order every writer takes).
async fn insert_postgres(
    db: &DatabaseConnection,
    counts: &BTreeMap<ConversationId, i64>,
    fresh: &[&Message],
    created_at: DateTime<Utc>,
) -> Result<Bases, DbErr> {
    const SQL: &str = "\
        WITH counts AS (\
            SELECT * FROM jsonb_to_recordset($1) AS c(chat_id uuid, n bigint)), \
        locked AS MATERIALIZED (\
            SELECT chats.id FROM chats JOIN counts ON counts.chat_id = chats.id \
            ORDER BY chats.id FOR UPDATE OF chats), \
        bumped AS (\
            UPDATE chats SET last_seq = chats.last_seq + counts.n, updated_at = $3, \
                last_message_at = $3 \
            FROM counts WHERE chats.id = counts.chat_id AND chats.id IN (SELECT id FROM locked) \
            RETURNING chats.id, chats.last_seq - counts.n AS base), \
        rows AS (\
            SELECT m.*, bumped.base + m.position AS seq \
            FROM jsonb_to_recordset($2) AS m(id uuid, chat_id uuid, position bigint, \
                sender_id text, message_type text, content text, client_msg_id text, \
                metadata jsonb, reply_to uuid, search_text text) \
            JOIN bumped ON bumped.id = m.chat_id), \
        inserted AS (\
            INSERT INTO chat_messages \
                (id, chat_id, seq, sender_id, message_type, content, client_msg_id, metadata, \
                 created_at, reply_to, search_text) \
            SELECT id, chat_id, seq, sender_id, message_type, content, client_msg_id, \
                metadata::json, $3, reply_to, search_text FROM rows), \
        marked AS (\
            UPDATE chat_participants p SET last_read_seq = r.seq \
            FROM (SELECT chat_id, sender_id, MAX(seq) AS seq FROM rows \
                  WHERE message_type = 'user' GROUP BY chat_id, sender_id) r \
            WHERE p.chat_id = r.chat_id AND p.user_id = r.sender_id AND p.last_read_seq < r.seq) \
        SELECT id, base FROM bumped";
    let counts: serde_json::Value = counts
        .iter()
        .map(|(id, n)| serde_json::json!({ "chat_id": id.0, "n": n }))
        .collect();
    let rows: serde_json::Value = fresh
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id.0,
                "chat_id": m.conversation_id.0,
                "position": m.seq.0,
                "sender_id": m.sender_id,
                "message_type": m.message_type,
                "content": m.content,
                "client_msg_id": m.client_msg_id,
                "metadata": m.metadata,
                "reply_to": m.reply_to,
                "search_text": index_text(&m.content),
            })
        })
        .collect();
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        SQL,
        [counts.into(), rows.into(), created_at.into()],
    );
    let mut bases = Bases::new();
    for row in db.query_all_raw(statement).await? {
        let id: uuid::Uuid = row.try_get("", "id")?;
        bases.insert(ConversationId(id), row.try_get("", "base")?);
    }
    Ok(bases)
}

/// A send as its retries name it: a client id is unique per sender and
/// conversation.
pub(super) type RetryKey = (ConversationId, UserId, ClientMsgId);

pub(super) fn retry_key(new: &NewMessage) -> Option<RetryKey> {
    let cid = new.client_msg_id.clone()?;
    Some((new.conversation_id, new.sender_id.clone(), cid))
}

/// The stored messages of sends in `batch` that carry a client id: one
/// query for the whole batch, on the unique (chat, sender, client id) index.
async fn find_retries(
    db: &DatabaseConnection,
    batch: &[NewMessage],
) -> Result<HashMap<RetryKey, Message>, DbErr> {
    let keys: HashSet<RetryKey> = batch.iter().filter_map(retry_key).collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut any = Condition::any();
    for (conv, sender, cid) in &keys {
        any = any.add(
            Condition::all()
                .add(msgs::Column::ChatId.eq(conv.0))
                .add(msgs::Column::SenderId.eq(sender.as_str()))
                .add(msgs::Column::ClientMsgId.eq(cid.as_str())),
        );
    }
    let rows = msgs::Entity::find().filter(any).all(db).await?;
    Ok(rows
        .into_iter()
        .map(to_message)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter_map(|m| {
            let key = (
                m.conversation_id,
                m.sender_id.clone(),
                m.client_msg_id.clone()?,
            );
            keys.contains(&key).then_some((key, m))
        })
        .collect())
}

impl Store {
    /// The messages a query selects, in its order: `statement` selects the
    /// columns of `chat_messages` (as `m`, the way `MESSAGE_COLUMNS` names
    /// them). For queries built elsewhere on the store's tables (search).
    pub async fn query_messages(&self, statement: Statement) -> Result<Vec<Message>, DbErr> {
        self.db
            .query_all_raw(statement)
            .await?
            .iter()
            .map(|row| msgs::Model::from_query_result(row, "").and_then(to_message))
            .collect()
    }

    /// One message of the conversation.
    #[tracing::instrument(level = "debug", name = "store.message", skip_all, fields(conversation_id = %id))]
    pub async fn message(
        &self,
        id: ConversationId,
        message: MessageId,
    ) -> Result<Option<Message>, DbErr> {
        msgs::Entity::find_by_id(message.0)
            .filter(msgs::Column::ChatId.eq(id.0))
            .one(&self.db)
            .await?
            .map(to_message)
            .transpose()
    }

    /// The newest message of type `message_type` that is not deleted.
    #[tracing::instrument(level = "debug", name = "store.latest_of_type", skip_all, fields(conversation_id = %id))]
    pub async fn latest_of_type(
        &self,
        id: ConversationId,
        message_type: MessageType,
    ) -> Result<Option<Message>, DbErr> {
        msgs::Entity::find()
            .filter(msgs::Column::ChatId.eq(id.0))
            .filter(msgs::Column::MessageType.eq(message_type))
            .filter(msgs::Column::Deleted.eq(false))
            .order_by_desc(msgs::Column::Seq)
            .one(&self.db)
            .await?
            .map(to_message)
            .transpose()
    }

    /// Messages with seq > `after`, oldest first, at most `limit`; and
    /// whether more follow.
    #[tracing::instrument(level = "debug", name = "store.history", skip_all, fields(conversation_id = %id))]
    pub async fn messages_after(
        &self,
        id: ConversationId,
        after: Seq,
        limit: u64,
    ) -> Result<(Vec<Message>, bool), DbErr> {
        let _timer = self.timer("history");
        let mut rows = msgs::Entity::find()
            .filter(msgs::Column::ChatId.eq(id.0))
            .filter(msgs::Column::Seq.gt(after.0))
            .order_by_asc(msgs::Column::Seq)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((
            rows.into_iter().map(to_message).collect::<Result<_, _>>()?,
            more,
        ))
    }

    /// The newest messages with seq < `before` (or the newest of all),
    /// oldest first, at most `limit`; and whether older ones exist.
    #[tracing::instrument(level = "debug", name = "store.history", skip_all, fields(conversation_id = %id))]
    pub async fn messages_before(
        &self,
        id: ConversationId,
        before: Option<Seq>,
        limit: u64,
    ) -> Result<(Vec<Message>, bool), DbErr> {
        let _timer = self.timer("history");
        let mut query = msgs::Entity::find().filter(msgs::Column::ChatId.eq(id.0));
        if let Some(before) = before {
            query = query.filter(msgs::Column::Seq.lt(before.0));
        }
        let mut rows = query
            .order_by_desc(msgs::Column::Seq)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        rows.reverse();
        Ok((
            rows.into_iter().map(to_message).collect::<Result<_, _>>()?,
            more,
        ))
    }
}

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

pub(super) fn to_message(m: msgs::Model) -> Result<Message, DbErr> {
    let client_msg_id = m
        .client_msg_id
        .map(|c| ClientMsgId::parse(c).map_err(|e| DbErr::Type(e.to_string())))
        .transpose()?;
    Ok(Message {
        id: MessageId(m.id),
        conversation_id: ConversationId(m.chat_id),
        seq: Seq(m.seq),
        sender_id: stored_user(m.sender_id)?,
        message_type: m.message_type,
        content: m.content,
        client_msg_id,
        metadata: m.metadata,
        created_at: m.created_at,
        reply_to: m.reply_to.map(MessageId),
        attachments: Vec::new(),
        reactions: m
            .reactions
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| DbErr::Type(format!("stored reactions: {e}")))?
            .unwrap_or_default(),
        edited_at: m.edited_at,
        deleted: m.deleted,
    })
}
