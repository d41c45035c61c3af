//! Conversations and their participants.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use entity::{chat_messages as msgs, chat_participants as parts, chats};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::{now, stored_user, Store};
use crate::model::{Conversation, ConversationId, Refusal, Role, Seq, UserId};

/// How old a message must be to count as activity in listings: a message
/// being committed while a page is read must not reorder the listing
/// between its pages.
const SETTLE_MS: i64 = 1000;

/// Where the next page of a listing starts: the moment of its first page
/// and the last conversation returned. Pages are ordered by activity as of
/// that moment, so activity while a client pages moves nothing between
/// pages: no conversation comes twice and none is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub as_of: DateTime<Utc>,
    pub activity: DateTime<Utc>,
    pub id: ConversationId,
}

/// A page of a user's conversations.
#[derive(Debug, Default)]
pub struct ChatsPage {
    pub chats: Vec<Conversation>,
    /// Set when more follow.
    pub next: Option<ListCursor>,
}

impl Store {
    /// Creates a conversation owned by `owner`, with `others` as members.
    #[tracing::instrument(level = "debug", name = "store.create_chat", skip_all)]
    pub async fn create_chat(
        &self,
        owner: &UserId,
        title: Option<String>,
        others: &[UserId],
        assistant_id: Option<String>,
    ) -> Result<Conversation, DbErr> {
        let _timer = self.timer("create_chat");
        let id = ConversationId::new();
        let at = now();
        let mut members: BTreeSet<&UserId> = others.iter().collect();
        members.remove(owner);
        let txn = self.db.begin().await?;
        chats::Entity::insert(chats::ActiveModel {
            id: Set(id.0),
            title: Set(title),
            owner_id: Set(owner.as_str().to_owned()),
            assistant_id: Set(assistant_id),
            archived: Set(false),
            last_seq: Set(0),
            created_at: Set(at),
            updated_at: Set(at),
            stream_id: Set(None),
            stream_expires_at: Set(None),
            last_message_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        let rows = std::iter::once((owner, Role::Owner))
            .chain(members.iter().map(|u| (*u, Role::Member)))
            .map(|(user, role)| parts::ActiveModel {
                chat_id: Set(id.0),
                user_id: Set(user.as_str().to_owned()),
                role: Set(role),
                last_read_seq: Set(0),
                joined_at: Set(at),
            });
        parts::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        self.chat(id)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("conversation just created".into()))
    }

    /// A conversation with its participants, if it exists.
    #[tracing::instrument(level = "debug", name = "store.chat", skip_all, fields(conversation_id = %id))]
    pub async fn chat(&self, id: ConversationId) -> Result<Option<Conversation>, DbErr> {
        let Some(chat) = chats::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(None);
        };
        let participants = self.participants(id).await?;
        to_conversation(chat, participants, None).map(Some)
    }

    /// The conversation's participants, oldest first.
    #[tracing::instrument(level = "debug", name = "store.participants", skip_all, fields(conversation_id = %id))]
    pub async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, DbErr> {
        let _timer = self.timer("participants");
        parts::Entity::find()
            .filter(parts::Column::ChatId.eq(id.0))
            .order_by_asc(parts::Column::JoinedAt)
            .order_by_asc(parts::Column::UserId)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|p| stored_user(p.user_id))
            .collect()
    }

    /// A page of the user's conversations that are not archived, newest
    /// activity first, as of `cursor`'s moment (or now, for a first page):
    /// see `ListCursor` for why the order holds still while paging.
    #[tracing::instrument(level = "debug", name = "store.list_chats", skip_all)]
    pub async fn list_chats(
        &self,
        user: &UserId,
        limit: u64,
        cursor: Option<&ListCursor>,
    ) -> Result<ChatsPage, DbErr> {
        let _timer = self.timer("list_chats");
        let as_of = cursor.map_or_else(now, |c| c.as_of);
        let settled = as_of - chrono::Duration::milliseconds(SETTLE_MS);
        let mine: HashMap<_, _> = parts::Entity::find()
            .filter(parts::Column::UserId.eq(user.as_str()))
            .filter(parts::Column::JoinedAt.lte(as_of))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|p| (p.chat_id, p))
            .collect();
        if mine.is_empty() {
            return Ok(ChatsPage::default());
        }
        let chats = chats::Entity::find()
            .inner_join(parts::Entity)
            .filter(parts::Column::UserId.eq(user.as_str()))
            .filter(parts::Column::JoinedAt.lte(as_of))
            .filter(chats::Column::Archived.eq(false))
            .all(&self.db)
            .await?;
        let mut keyed = Vec::with_capacity(chats.len());
        for chat in chats {
            let Some(me) = mine.get(&chat.id) else {
                continue;
            };
            // The newest message that had settled by then.
            let message_at = match chat.last_message_at {
                Some(at) if at <= settled => Some(at),
                None => None,
                Some(_) => {
                    msgs::Entity::find()
                        .select_only()
                        .column(msgs::Column::CreatedAt)
                        .filter(msgs::Column::ChatId.eq(chat.id))
                        .filter(msgs::Column::CreatedAt.lte(settled))
                        .order_by_desc(msgs::Column::Seq)
                        .limit(1)
                        .into_tuple::<DateTime<Utc>>()
                        .one(&self.db)
                        .await?
                }
            };
            let activity = [Some(chat.created_at), Some(me.joined_at), message_at]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(chat.created_at);
            keyed.push((activity, chat));
        }
        keyed.sort_by(|(a, x), (b, y)| (b, y.id).cmp(&(a, x.id)));
        if let Some(c) = cursor {
            keyed.retain(|(at, chat)| (*at, chat.id) < (c.activity, c.id.0));
        }
        let more = keyed.len() as u64 > limit;
        keyed.truncate(limit as usize);
        let next = more
            .then(|| keyed.last())
            .flatten()
            .map(|(activity, chat)| ListCursor {
                as_of,
                activity: *activity,
                id: ConversationId(chat.id),
            });

        let ids: Vec<uuid::Uuid> = keyed.iter().map(|(_, c)| c.id).collect();
        let mut members: HashMap<_, Vec<UserId>> = HashMap::new();
        for p in parts::Entity::find()
            .filter(parts::Column::ChatId.is_in(ids.iter().copied()))
            .order_by_asc(parts::Column::JoinedAt)
            .order_by_asc(parts::Column::UserId)
            .all(&self.db)
            .await?
        {
            members
                .entry(p.chat_id)
                .or_default()
                .push(stored_user(p.user_id)?);
        }
        let unread = self.unread_counts(user, &ids).await?;
        let chats = keyed
            .into_iter()
            .map(|(_, c)| {
                let last_read = mine.get(&c.id).map(|p| Seq(p.last_read_seq));
                let people = members.remove(&c.id).unwrap_or_default();
                let count = unread.get(&c.id).copied().unwrap_or(0);
                let mut conv = to_conversation(c, people, last_read)?;
                conv.unread_count = Some(count);
                Ok(conv)
            })
            .collect::<Result<_, DbErr>>()?;
        Ok(ChatsPage { chats, next })
    }

    /// The user's unread messages in each of `chats`: not their own, not
    /// deleted, above their read mark. One grouped query.
    async fn unread_counts(
        &self,
        user: &UserId,
        chats: &[uuid::Uuid],
    ) -> Result<HashMap<uuid::Uuid, u64>, DbErr> {
        if chats.is_empty() {
            return Ok(HashMap::new());
        }
        let query = Query::select()
            .column((msgs::Entity, msgs::Column::ChatId))
            .expr_as(
                Expr::col((msgs::Entity, msgs::Column::Id)).count(),
                "unread",
            )
            .from(msgs::Entity)
            .inner_join(
                parts::Entity,
                Expr::col((parts::Entity, parts::Column::ChatId))
                    .equals((msgs::Entity, msgs::Column::ChatId))
                    .and(Expr::col((parts::Entity, parts::Column::UserId)).eq(user.as_str())),
            )
            .and_where(Expr::col((msgs::Entity, msgs::Column::ChatId)).is_in(chats.iter().copied()))
            .and_where(
                Expr::col((msgs::Entity, msgs::Column::Seq))
                    .gt(Expr::col((parts::Entity, parts::Column::LastReadSeq))),
            )
            .and_where(Expr::col((msgs::Entity, msgs::Column::SenderId)).ne(user.as_str()))
            .and_where(Expr::col((msgs::Entity, msgs::Column::Deleted)).eq(false))
            .group_by_col((msgs::Entity, msgs::Column::ChatId))
            .to_owned();
        let statement = self.db.get_database_backend().build(&query);
        let mut out = HashMap::new();
        for row in self.db.query_all_raw(statement).await? {
            let id: uuid::Uuid = row.try_get("", "chat_id")?;
            let n: i64 = row.try_get("", "unread")?;
            out.insert(id, n as u64);
        }
        Ok(out)
    }

    /// Sets the title, unless the conversation is archived or already has
    /// it. True if it changed.
    #[tracing::instrument(level = "debug", name = "store.rename", skip_all, fields(conversation_id = %id))]
    pub async fn rename(&self, id: ConversationId, title: &str) -> Result<bool, DbErr> {
        let res = chats::Entity::update_many()
            .col_expr(chats::Column::Title, Some(title.to_owned()).into())
            .col_expr(chats::Column::UpdatedAt, now().into())
            .filter(chats::Column::Id.eq(id.0))
            .filter(chats::Column::Archived.eq(false))
            .filter(
                Condition::any()
                    .add(chats::Column::Title.is_null())
                    .add(chats::Column::Title.ne(title)),
            )
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Makes `to` the owner in place of `from`, in one transaction under
    /// the conversation's row lock. Refused unless `from` owns the active
    /// conversation and `to` participates. False if `to` already owns it.
    #[tracing::instrument(level = "debug", name = "store.hand_over", skip_all, fields(conversation_id = %id))]
    pub async fn hand_over(
        &self,
        id: ConversationId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Result<bool, Refusal>, DbErr> {
        let txn = self.db.begin().await?;
        let chat = chats::Entity::update_many()
            .col_expr(chats::Column::UpdatedAt, now().into())
            .filter(chats::Column::Id.eq(id.0))
            .exec_with_returning(&txn)
            .await?
            .pop();
        let refusal = match &chat {
            None => Some(Refusal::NotFound("conversation")),
            Some(c) if c.archived => Some(Refusal::Archived),
            Some(c) if c.owner_id != from.as_str() => {
                Some(Refusal::Forbidden("only the owner may hand ownership on"))
            }
            Some(c) if c.owner_id == to.as_str() => return Ok(Ok(false)),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            txn.rollback().await?;
            return Ok(Err(refusal));
        }
        let promoted = parts::Entity::update_many()
            .col_expr(parts::Column::Role, Role::Owner.into())
            .filter(parts::Column::ChatId.eq(id.0))
            .filter(parts::Column::UserId.eq(to.as_str()))
            .exec(&txn)
            .await?;
        if promoted.rows_affected == 0 {
            txn.rollback().await?;
            return Ok(Err(Refusal::NotFound("participant")));
        }
        parts::Entity::update_many()
            .col_expr(parts::Column::Role, Role::Member.into())
            .filter(parts::Column::ChatId.eq(id.0))
            .filter(parts::Column::UserId.eq(from.as_str()))
            .exec(&txn)
            .await?;
        chats::Entity::update_many()
            .col_expr(chats::Column::OwnerId, to.as_str().into())
            .filter(chats::Column::Id.eq(id.0))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(Ok(true))
    }

    /// Adds a participant; false if they already were one.
    #[tracing::instrument(level = "debug", name = "store.add_participant", skip_all, fields(conversation_id = %id))]
    pub async fn add_participant(&self, id: ConversationId, user: &UserId) -> Result<bool, DbErr> {
        let res = parts::Entity::insert(parts::ActiveModel {
            chat_id: Set(id.0),
            user_id: Set(user.as_str().to_owned()),
            role: Set(Role::Member),
            last_read_seq: Set(0),
            joined_at: Set(now()),
        })
        .on_conflict(
            OnConflict::columns([parts::Column::ChatId, parts::Column::UserId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if res > 0 {
            self.touch(id).await?;
        }
        Ok(res > 0)
    }

    /// Removes a participant; false if they were not one.
    #[tracing::instrument(level = "debug", name = "store.remove_participant", skip_all, fields(conversation_id = %id))]
    pub async fn remove_participant(
        &self,
        id: ConversationId,
        user: &UserId,
    ) -> Result<bool, DbErr> {
        let res = parts::Entity::delete_many()
            .filter(parts::Column::ChatId.eq(id.0))
            .filter(parts::Column::UserId.eq(user.as_str()))
            .exec(&self.db)
            .await?;
        if res.rows_affected > 0 {
            self.touch(id).await?;
        }
        Ok(res.rows_affected > 0)
    }

    /// Marks the conversation archived.
    #[tracing::instrument(level = "debug", name = "store.archive", skip_all, fields(conversation_id = %id))]
    pub async fn archive(&self, id: ConversationId) -> Result<(), DbErr> {
        chats::Entity::update_many()
            .col_expr(chats::Column::Archived, true.into())
            .col_expr(chats::Column::UpdatedAt, now().into())
            .filter(chats::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The role of `user` in the conversation, if a participant.
    #[tracing::instrument(level = "debug", name = "store.role", skip_all, fields(conversation_id = %id))]
    pub async fn role(&self, id: ConversationId, user: &UserId) -> Result<Option<Role>, DbErr> {
        let _timer = self.timer("role");
        Ok(parts::Entity::find_by_id((id.0, user.as_str().to_owned()))
            .one(&self.db)
            .await?
            .map(|p| p.role))
    }

    /// The conversation's newest seq, if it exists.
    #[tracing::instrument(level = "debug", name = "store.last_seq", skip_all, fields(conversation_id = %id))]
    pub async fn last_seq(&self, id: ConversationId) -> Result<Option<Seq>, DbErr> {
        Ok(chats::Entity::find_by_id(id.0)
            .one(&self.db)
            .await?
            .map(|c| Seq(c.last_seq)))
    }

    /// Records that `user` has read up to `seq` (never moving backwards).
    /// Returns the seq now recorded if it moved, None if it did not.
    #[tracing::instrument(level = "debug", name = "store.mark_read", skip_all, fields(conversation_id = %id))]
    pub async fn mark_read(
        &self,
        id: ConversationId,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, DbErr> {
        let _timer = self.timer("mark_read");
        let res = parts::Entity::update_many()
            .col_expr(parts::Column::LastReadSeq, seq.0.into())
            .filter(parts::Column::ChatId.eq(id.0))
            .filter(parts::Column::UserId.eq(user.as_str()))
            .filter(parts::Column::LastReadSeq.lt(seq.0))
            .exec(&self.db)
            .await?;
        Ok((res.rows_affected > 0).then_some(seq))
    }

    async fn touch(&self, id: ConversationId) -> Result<(), DbErr> {
        chats::Entity::update_many()
            .col_expr(chats::Column::UpdatedAt, now().into())
            .filter(chats::Column::Id.eq(id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

fn to_conversation(
    c: chats::Model,
    participants: Vec<UserId>,
    last_read: Option<Seq>,
) -> Result<Conversation, DbErr> {
    Ok(Conversation {
        id: ConversationId(c.id),
        title: c.title,
        owner_id: stored_user(c.owner_id)?,
        participants,
        assistant_id: c.assistant_id,
        archived: c.archived,
        last_seq: Seq(c.last_seq),
        last_read_seq: last_read,
        unread_count: None,
        created_at: c.created_at,
        updated_at: c.updated_at,
    })
}
