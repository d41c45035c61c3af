//! Conversations and their participants.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use entity::{chat_participants as parts, chats};
use sea_orm::{
    sea_query::OnConflict, ActiveValue::Set, ColumnTrait, Condition, DbErr, EntityTrait,
    QueryFilter, QueryOrder, TransactionTrait,
};

use super::{now, stored_user, Store};
use crate::model::{Conversation, ConversationId, Role, Seq, StreamId, UserId};

/// Most conversations returned by one listing.
const MAX_LISTED: u64 = 500;

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

    /// The user's conversations that are not archived, newest activity first.
    #[tracing::instrument(level = "debug", name = "store.list_chats", skip_all)]
    pub async fn list_chats(&self, user: &UserId) -> Result<Vec<Conversation>, DbErr> {
        let _timer = self.timer("list_chats");
        let mine = parts::Entity::find()
            .filter(parts::Column::UserId.eq(user.as_str()))
            .all(&self.db)
            .await?;
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let read: HashMap<_, _> = mine.iter().map(|p| (p.chat_id, p.last_read_seq)).collect();
        let chats = chats::Entity::find()
            .filter(chats::Column::Id.is_in(read.keys().copied()))
            .filter(chats::Column::Archived.eq(false))
            .order_by_desc(chats::Column::UpdatedAt)
            .all(&self.db)
            .await?;
        let chats: Vec<_> = chats.into_iter().take(MAX_LISTED as usize).collect();
        let mut members: HashMap<_, Vec<UserId>> = HashMap::new();
        for p in parts::Entity::find()
            .filter(parts::Column::ChatId.is_in(chats.iter().map(|c| c.id)))
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
        chats
            .into_iter()
            .map(|c| {
                let last_read = read.get(&c.id).copied().map(Seq);
                let people = members.remove(&c.id).unwrap_or_default();
                to_conversation(c, people, last_read)
            })
            .collect()
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

    /// Claims the conversation for one assistant stream until `until`.
    /// False if another stream holds an unexpired claim.
    #[tracing::instrument(level = "debug", name = "store.claim_stream", skip_all, fields(conversation_id = %id))]
    pub async fn claim_stream(
        &self,
        id: ConversationId,
        stream: StreamId,
        until: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        let res = chats::Entity::update_many()
            .col_expr(chats::Column::StreamId, Some(stream.0).into())
            .col_expr(chats::Column::StreamExpiresAt, Some(until).into())
            .filter(chats::Column::Id.eq(id.0))
            .filter(
                Condition::any()
                    .add(chats::Column::StreamId.is_null())
                    .add(chats::Column::StreamExpiresAt.lt(now())),
            )
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// The conversation `stream` is running in: the one whose unexpired
    /// claim it holds (the claim is taken before the stream's id is handed
    /// out and released once it has ended). None for an unknown stream, one
    /// that has ended, or one whose node died and let the claim lapse.
    #[tracing::instrument(level = "debug", name = "store.stream_conversation", skip_all, fields(stream_id = %stream))]
    pub async fn stream_conversation(
        &self,
        stream: StreamId,
    ) -> Result<Option<ConversationId>, DbErr> {
        Ok(chats::Entity::find()
            .filter(chats::Column::StreamId.eq(stream.0))
            .filter(chats::Column::StreamExpiresAt.gte(now()))
            .one(&self.db)
            .await?
            .map(|c| ConversationId(c.id)))
    }

    /// Extends a held claim (the stream's heartbeat).
    #[tracing::instrument(level = "debug", name = "store.extend_stream", skip_all, fields(conversation_id = %id))]
    pub async fn extend_stream(
        &self,
        id: ConversationId,
        stream: StreamId,
        until: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        chats::Entity::update_many()
            .col_expr(chats::Column::StreamExpiresAt, Some(until).into())
            .filter(chats::Column::Id.eq(id.0))
            .filter(chats::Column::StreamId.eq(stream.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Releases the claim if `stream` still holds it.
    #[tracing::instrument(level = "debug", name = "store.release_stream", skip_all, fields(conversation_id = %id))]
    pub async fn release_stream(&self, id: ConversationId, stream: StreamId) -> Result<(), DbErr> {
        chats::Entity::update_many()
            .col_expr(chats::Column::StreamId, Option::<uuid::Uuid>::None.into())
            .col_expr(
                chats::Column::StreamExpiresAt,
                Option::<DateTime<Utc>>::None.into(),
            )
            .filter(chats::Column::Id.eq(id.0))
            .filter(chats::Column::StreamId.eq(stream.0))
            .exec(&self.db)
            .await?;
        Ok(())
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
        created_at: c.created_at,
        updated_at: c.updated_at,
    })
}
