//! The conversation log beyond new messages: changes (an edit, a deletion,
//! a reaction added or removed), each stored in one transaction with the
//! conversation's next seq and the message's new state, and the log read
//! back, messages and changes in seq order, each with its message's
//! current state.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use entity::{chat_changes as changes, chat_messages as msgs, chat_reactions as reactions, chats};
use migration::search_text::index_text;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, Order,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::messages::to_message;
use super::{now, stored_user, Store};
use crate::model::{
    Change, ChangeRequest, ConversationId, Decision, Emoji, LogEntry, Message, MessageId, Reaction,
    Refusal, Seq, Target, UserId,
};

/// A change to store.
#[derive(Clone, Debug)]
pub struct ChangeOrder {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub actor: UserId,
    pub request: ChangeRequest,
    /// Most distinct emojis on one message.
    pub max_reactions: usize,
}

/// What a change turned out to be.
#[derive(Clone, Debug)]
pub enum Changed {
    /// Stored at `seq`; `message` is the new state.
    Stored {
        seq: Seq,
        change: Change,
        message: Message,
    },
    /// It changed nothing (no seq); the message as it is.
    Unchanged(Message),
}

/// What storing a change comes to: the database's error, or the rules'
/// refusal, or what it changed.
pub(super) type ChangeResult = Result<Result<Changed, Refusal>, DbErr>;

impl Changed {
    /// The change's seq, if it was stored.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Changed::Stored { seq, .. } => Some(*seq),
            Changed::Unchanged(_) => None,
        }
    }

    /// The message's state after the change.
    pub fn message(&self) -> &Message {
        match self {
            Changed::Stored { message, .. } | Changed::Unchanged(message) => message,
        }
    }
}

impl Store {
    /// Applies a change in one transaction: the conversation's row is
    /// locked first (as every writer does), the rules decide on the state
    /// read under that lock, and an applied change takes the next seq. On
    /// SQLite the writer thread applies it, between batches of appends, so
    /// the node's writes never wait on each other's locks.
    #[tracing::instrument(level = "debug", name = "store.change", skip_all, fields(conversation_id = %order.conversation_id))]
    pub async fn change(&self, order: &ChangeOrder) -> ChangeResult {
        let _timer = self.timer("change");
        if let Some(applied) = self.appender.change(order).await {
            return applied;
        }
        let txn = self.db.begin().await?;
        let outcome = change_in(&txn, order).await?;
        match &outcome {
            Ok(Changed::Stored { .. }) => txn.commit().await?,
            _ => txn.rollback().await?,
        }
        Ok(outcome)
    }

    /// Log entries with seq > `after`, oldest first, at most `limit`; and
    /// whether more follow.
    #[tracing::instrument(level = "debug", name = "store.log", skip_all, fields(conversation_id = %id))]
    pub async fn log_after(
        &self,
        id: ConversationId,
        after: Seq,
        limit: u64,
    ) -> Result<(Vec<LogEntry>, bool), DbErr> {
        self.log_page(id, after, limit, false).await
    }

    /// The newest log entries with seq < `before`, oldest first, at most
    /// `limit`; and whether older ones exist.
    #[tracing::instrument(level = "debug", name = "store.log", skip_all, fields(conversation_id = %id))]
    pub async fn log_before(
        &self,
        id: ConversationId,
        before: Seq,
        limit: u64,
    ) -> Result<(Vec<LogEntry>, bool), DbErr> {
        let (mut entries, more) = self.log_page(id, before, limit, true).await?;
        entries.reverse();
        Ok((entries, more))
    }

    /// The `limit` entries nearest `from` on one side of it: above it in
    /// ascending order, or below it in descending order (`backwards`).
    async fn log_page(
        &self,
        id: ConversationId,
        from: Seq,
        limit: u64,
        backwards: bool,
    ) -> Result<(Vec<LogEntry>, bool), DbErr> {
        let _timer = self.timer("log");
        let order = if backwards { Order::Desc } else { Order::Asc };
        let messages = msgs::Entity::find()
            .filter(msgs::Column::ChatId.eq(id.0))
            .filter(if backwards {
                msgs::Column::Seq.lt(from.0)
            } else {
                msgs::Column::Seq.gt(from.0)
            })
            .order_by(msgs::Column::Seq, order.clone())
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let changes = changes::Entity::find()
            .filter(changes::Column::ChatId.eq(id.0))
            .filter(if backwards {
                changes::Column::Seq.lt(from.0)
            } else {
                changes::Column::Seq.gt(from.0)
            })
            .order_by(changes::Column::Seq, order)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        self.entries(messages, changes, limit, backwards).await
    }

    /// Merges a page of messages and one of changes (both in the same seq
    /// order, `descending` or not) into the first `limit` entries, reading
    /// the current state of changed messages the page does not hold in one
    /// query.
    async fn entries(
        &self,
        messages: Vec<msgs::Model>,
        changes: Vec<changes::Model>,
        limit: u64,
        descending: bool,
    ) -> Result<(Vec<LogEntry>, bool), DbErr> {
        let mut states: HashMap<MessageId, Message> = HashMap::new();
        let mut message_seqs = Vec::with_capacity(messages.len());
        for row in messages {
            let message = to_message(row)?;
            message_seqs.push((message.seq, message.id));
            states.insert(message.id, message);
        }
        let missing: HashSet<uuid::Uuid> = changes
            .iter()
            .filter(|c| !states.contains_key(&MessageId(c.message_id)))
            .map(|c| c.message_id)
            .collect();
        if !missing.is_empty() {
            for row in msgs::Entity::find()
                .filter(msgs::Column::Id.is_in(missing))
                .all(&self.db)
                .await?
            {
                let message = to_message(row)?;
                states.insert(message.id, message);
            }
        }
        // Both lists are sorted; a merge in their order.
        let mut out = Vec::new();
        let (mut m, mut c) = (
            message_seqs.into_iter().peekable(),
            changes.into_iter().peekable(),
        );
        let first = |a: Seq, b: Seq| if descending { a > b } else { a < b };
        while (out.len() as u64) <= limit {
            let take_message = match (m.peek(), c.peek()) {
                (Some((ms, _)), Some(ch)) => first(*ms, Seq(ch.seq)),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let entry = if take_message {
                let (_, id) = m.next().expect("peeked");
                LogEntry::Message(states[&id].clone())
            } else {
                let row = c.next().expect("peeked");
                let Some(message) = states.get(&MessageId(row.message_id)).cloned() else {
                    return Err(DbErr::RecordNotFound(format!(
                        "message {} of change {}",
                        row.message_id, row.seq
                    )));
                };
                LogEntry::Change {
                    seq: Seq(row.seq),
                    change: Change {
                        kind: row.kind,
                        by: stored_user(row.actor)?,
                        emoji: row.emoji.map(stored_emoji).transpose()?,
                    },
                    message,
                }
            };
            out.push(entry);
        }
        let more = out.len() as u64 > limit;
        out.truncate(limit as usize);
        Ok((out, more))
    }
}

/// The body of `Store::change` (through sea-orm: Postgres), inside its
/// transaction; `sqlite::change_in` is its twin on the writer thread.
async fn change_in(txn: &DatabaseTransaction, order: &ChangeOrder) -> ChangeResult {
    let conv = order.conversation_id;
    // A write that changes nothing: it takes the row lock on Postgres and
    // the write lock on SQLite before anything is read.
    let chat = chats::Entity::update_many()
        .col_expr(chats::Column::LastSeq, Expr::col(chats::Column::LastSeq))
        .filter(chats::Column::Id.eq(conv.0))
        .exec_with_returning(txn)
        .await?
        .pop();
    let Some(chat) = chat else {
        return Ok(Err(Refusal::NotFound("conversation")));
    };
    if chat.archived {
        return Ok(Err(Refusal::Archived));
    }
    let Some(row) = msgs::Entity::find_by_id(order.message_id.0)
        .filter(msgs::Column::ChatId.eq(conv.0))
        .one(txn)
        .await?
    else {
        return Ok(Err(Refusal::NotFound("message")));
    };
    let message = to_message(row)?;
    let reacted = match &order.request {
        ChangeRequest::React { emoji, .. } => reactions::Entity::find_by_id((
            message.id.0,
            emoji.as_str().to_owned(),
            order.actor.as_str().to_owned(),
        ))
        .one(txn)
        .await?
        .is_some(),
        _ => false,
    };
    let owner = chat.owner_id == order.actor.as_str();
    let mut message = match settle(order, message, owner, reacted) {
        ControlFlow::Continue(message) => message,
        ControlFlow::Break(answer) => return Ok(answer),
    };

    let seq = Seq(chat.last_seq + 1);
    let at = now();
    chats::Entity::update_many()
        .col_expr(chats::Column::LastSeq, seq.0.into())
        .col_expr(chats::Column::UpdatedAt, at.into())
        .filter(chats::Column::Id.eq(conv.0))
        .exec(txn)
        .await?;
    let change = order.request.change(&order.actor);
    changes::Entity::insert(changes::ActiveModel {
        chat_id: Set(conv.0),
        seq: Set(seq.0),
        message_id: Set(message.id.0),
        kind: Set(change.kind),
        actor: Set(order.actor.as_str().to_owned()),
        emoji: Set(change.emoji.as_ref().map(|e| e.as_str().to_owned())),
        created_at: Set(at),
    })
    .exec_without_returning(txn)
    .await?;
    message.apply(&order.request, at);
    let update = msgs::Entity::update_many().filter(msgs::Column::Id.eq(message.id.0));
    let update = match &order.request {
        ChangeRequest::Edit { content } => update
            .col_expr(msgs::Column::Content, content.clone().into())
            .col_expr(msgs::Column::EditedAt, Some(at).into())
            .col_expr(search_text(), index_text(content).into()),
        ChangeRequest::Delete => {
            reactions::Entity::delete_many()
                .filter(reactions::Column::MessageId.eq(message.id.0))
                .exec(txn)
                .await?;
            update
                .col_expr(msgs::Column::Content, String::new().into())
                .col_expr(search_text(), String::new().into())
                .col_expr(msgs::Column::Deleted, true.into())
                .col_expr(
                    msgs::Column::Reactions,
                    Option::<serde_json::Value>::None.into(),
                )
        }
        ChangeRequest::React { emoji, add } => {
            let key = (
                message.id.0,
                emoji.as_str().to_owned(),
                order.actor.as_str().to_owned(),
            );
            if *add {
                reactions::Entity::insert(reactions::ActiveModel {
                    message_id: Set(key.0),
                    emoji: Set(key.1),
                    user_id: Set(key.2),
                    seq: Set(seq.0),
                })
                .exec_without_returning(txn)
                .await?;
            } else {
                reactions::Entity::delete_by_id(key).exec(txn).await?;
            }
            message.reactions = count_reactions(txn, message.id).await?;
            let folded = (!message.reactions.is_empty())
                .then(|| serde_json::to_value(&message.reactions))
                .transpose()
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            update.col_expr(msgs::Column::Reactions, folded.into())
        }
    };
    update.exec(txn).await?;
    Ok(Ok(Changed::Stored {
        seq,
        change,
        message,
    }))
}

/// `chat_messages.search_text`, the normalized words search matches
/// (`migration::search_text`): not a column of the entity, so reads do not
/// carry it; written with the content it comes from.
fn search_text() -> sea_orm::sea_query::Alias {
    sea_orm::sea_query::Alias::new("search_text")
}

/// Lets the rules decide on `message`: the answer when the change is
/// refused or changes nothing (`Break`), else the message to change.
pub(super) fn settle(
    order: &ChangeOrder,
    message: Message,
    actor_is_owner: bool,
    reacted: bool,
) -> ControlFlow<Result<Changed, Refusal>, Message> {
    let target = Target {
        message: &message,
        actor_is_owner,
        reacted,
    };
    match order
        .request
        .decide(&order.actor, &target, order.max_reactions)
    {
        Err(refusal) => ControlFlow::Break(Err(refusal)),
        Ok(Decision::Unchanged) => ControlFlow::Break(Ok(Changed::Unchanged(message))),
        Ok(Decision::Apply) => ControlFlow::Continue(message),
    }
}

/// A message's reactions as clients see them, from `chat_reactions`: one
/// grouped query for the emojis (at most `max_reactions_per_message` of
/// them) and one per emoji for its first reactors.
async fn count_reactions(
    db: &impl ConnectionTrait,
    message: MessageId,
) -> Result<Vec<Reaction>, DbErr> {
    let groups: Vec<(String, i64, i64)> = reactions::Entity::find()
        .select_only()
        .column(reactions::Column::Emoji)
        .column_as(reactions::Column::UserId.count(), "count")
        .column_as(reactions::Column::Seq.min(), "first")
        .filter(reactions::Column::MessageId.eq(message.0))
        .group_by(reactions::Column::Emoji)
        .order_by_asc(Expr::col(sea_orm::sea_query::Alias::new("first")))
        .into_tuple()
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(groups.len());
    for (emoji, count, _) in groups {
        let users: Vec<String> = reactions::Entity::find()
            .select_only()
            .column(reactions::Column::UserId)
            .filter(reactions::Column::MessageId.eq(message.0))
            .filter(reactions::Column::Emoji.eq(emoji.as_str()))
            .order_by_asc(reactions::Column::Seq)
            .limit(crate::model::MAX_REACTORS_SHOWN as u64)
            .into_tuple()
            .all(db)
            .await?;
        out.push(reaction(emoji, count, users)?);
    }
    Ok(out)
}

/// One emoji's reactions, from what the store read.
pub(super) fn reaction(emoji: String, count: i64, users: Vec<String>) -> Result<Reaction, DbErr> {
    Ok(Reaction {
        emoji: stored_emoji(emoji)?,
        count: count as u64,
        user_ids: users
            .into_iter()
            .map(stored_user)
            .collect::<Result<_, _>>()?,
    })
}

fn stored_emoji(text: String) -> Result<Emoji, DbErr> {
    Emoji::parse(text).map_err(|e| DbErr::Type(e.to_string()))
}
