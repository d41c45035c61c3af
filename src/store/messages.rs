//! Messages: appending with gap-free seq allocation, idempotent by
//! `client_msg_id`, and reading history pages.

use entity::{chat_messages as msgs, chats};
use std::collections::{BTreeMap, HashMap};

use sea_orm::{
    sea_query::{Expr, ExprTrait},
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    SqlErr, TransactionTrait,
};

use super::{now, Store};
use crate::ids::{ConversationId, MessageId, Seq, UserId};
use crate::protocol::Message;

/// A message to append.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// A chosen id (an assistant answer announced before it is stored), or a fresh one.
    pub id: Option<MessageId>,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub message_type: String,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// The stored message, and whether it had been stored before (a retry).
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
}

impl Store {
    /// Stores a message at the conversation's next seq. None if the
    /// conversation does not exist.
    ///
    /// Sends that arrive together are committed together (see `appender`):
    /// one transaction bumps each conversation's `chats.last_seq` by its
    /// number of messages (the row lock serializes writers of one
    /// conversation on every node) and inserts every row, so seq is unique
    /// and gap-free: a failed insert rolls the bump back.
    #[tracing::instrument(level = "debug", name = "store.append", skip_all, fields(conversation_id = %new.conversation_id))]
    pub async fn append(&self, new: NewMessage) -> Result<Option<Appended>, DbErr> {
        let _timer = self.timer("append");
        if let Some(found) = find_retry(&self.db, &new).await? {
            return Ok(Some(found));
        }
        self.appender.append(&self.db, new).await
    }
}

/// Appends one message in a transaction of its own; a retry that raced
/// another copy of itself finds the stored one.
pub(super) async fn append_one(
    db: &DatabaseConnection,
    new: &NewMessage,
) -> Result<Option<Appended>, DbErr> {
    match insert_batch(db, std::slice::from_ref(new)).await {
        Ok(mut out) => Ok(out.pop().flatten()),
        // A concurrent retry of the same send won the race.
        Err(e) if is_unique_violation(&e) && new.client_msg_id.is_some() => {
            find_retry(db, new).await?.map(Some).ok_or(e)
        }
        Err(e) => Err(e),
    }
}

/// Appends every message in one transaction, in the order given; None for
/// those whose conversation does not exist. Any failure rolls back all.
pub(super) async fn insert_batch(
    db: &DatabaseConnection,
    batch: &[NewMessage],
) -> Result<Vec<Option<Appended>>, DbErr> {
    let txn = db.begin().await?;
    let created_at = now();
    // Conversations in ascending id order: every writer on every node locks
    // chat rows in the same order, so two batches cannot deadlock.
    let mut counts: BTreeMap<ConversationId, i64> = BTreeMap::new();
    for new in batch {
        *counts.entry(new.conversation_id).or_default() += 1;
    }
    let mut next_seq: HashMap<ConversationId, i64> = HashMap::new();
    for (&id, &count) in &counts {
        let bumped = chats::Entity::update_many()
            .col_expr(
                chats::Column::LastSeq,
                Expr::col(chats::Column::LastSeq).add(count),
            )
            .col_expr(chats::Column::UpdatedAt, created_at.into())
            .filter(chats::Column::Id.eq(id.0))
            .exec_with_returning(&txn)
            .await?;
        if let Some(chat) = bumped.into_iter().next() {
            next_seq.insert(id, chat.last_seq - count + 1);
        }
    }
    let mut rows = Vec::with_capacity(batch.len());
    let mut out = Vec::with_capacity(batch.len());
    for new in batch {
        let Some(seq) = next_seq.get_mut(&new.conversation_id) else {
            out.push(None);
            continue;
        };
        let message = Message {
            id: new.id.unwrap_or_default(),
            conversation_id: new.conversation_id,
            seq: Seq(*seq),
            sender_id: new.sender_id.clone(),
            message_type: new.message_type.clone(),
            content: new.content.clone(),
            client_msg_id: new.client_msg_id.clone(),
            metadata: new.metadata.clone(),
            created_at,
        };
        *seq += 1;
        rows.push(msgs::ActiveModel {
            id: Set(message.id.0),
            chat_id: Set(message.conversation_id.0),
            seq: Set(message.seq.0),
            sender_id: Set(message.sender_id.0.clone()),
            message_type: Set(message.message_type.clone()),
            content: Set(message.content.clone()),
            client_msg_id: Set(message.client_msg_id.clone()),
            metadata: Set(message.metadata.clone()),
            created_at: Set(created_at),
        });
        out.push(Some(Appended {
            message,
            duplicate: false,
        }));
    }
    if !rows.is_empty() {
        msgs::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(out)
}

async fn find_retry(db: &DatabaseConnection, new: &NewMessage) -> Result<Option<Appended>, DbErr> {
    let Some(cid) = &new.client_msg_id else {
        return Ok(None);
    };
    Ok(msgs::Entity::find()
        .filter(msgs::Column::ChatId.eq(new.conversation_id.0))
        .filter(msgs::Column::SenderId.eq(new.sender_id.0.clone()))
        .filter(msgs::Column::ClientMsgId.eq(cid.clone()))
        .one(db)
        .await?
        .map(|m| Appended {
            message: to_message(m),
            duplicate: true,
        }))
}

impl Store {
    /// One message of the conversation.
    #[tracing::instrument(level = "debug", name = "store.message", skip_all, fields(conversation_id = %id))]
    pub async fn message(
        &self,
        id: ConversationId,
        message: MessageId,
    ) -> Result<Option<Message>, DbErr> {
        Ok(msgs::Entity::find_by_id(message.0)
            .filter(msgs::Column::ChatId.eq(id.0))
            .one(&self.db)
            .await?
            .map(to_message))
    }

    /// The newest message of type `message_type`.
    #[tracing::instrument(level = "debug", name = "store.latest_of_type", skip_all, fields(conversation_id = %id))]
    pub async fn latest_of_type(
        &self,
        id: ConversationId,
        message_type: &str,
    ) -> Result<Option<Message>, DbErr> {
        Ok(msgs::Entity::find()
            .filter(msgs::Column::ChatId.eq(id.0))
            .filter(msgs::Column::MessageType.eq(message_type))
            .order_by_desc(msgs::Column::Seq)
            .one(&self.db)
            .await?
            .map(to_message))
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
        Ok((rows.into_iter().map(to_message).collect(), more))
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
        Ok((rows.into_iter().map(to_message).collect(), more))
    }
}

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

fn to_message(m: msgs::Model) -> Message {
    Message {
        id: MessageId(m.id),
        conversation_id: ConversationId(m.chat_id),
        seq: Seq(m.seq),
        sender_id: UserId(m.sender_id),
        message_type: m.message_type,
        content: m.content,
        client_msg_id: m.client_msg_id,
        metadata: m.metadata,
        created_at: m.created_at,
    }
}
