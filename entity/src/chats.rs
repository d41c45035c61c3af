//! A conversation. `last_seq` is the seq of its newest log entry (a message
//! or a change): bumping it in the same transaction as the entry's insert is
//! what keeps seq gap-free and unique.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chats")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub title: Option<String>,
    pub owner_id: String,
    pub assistant_id: Option<String>,
    pub archived: bool,
    pub last_seq: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Unused since the assistants' queue keeps which answer runs where
    /// (nodes of earlier versions wrote their claim here; a later
    /// migration drops both columns once no such node runs).
    pub stream_id: Option<Uuid>,
    pub stream_expires_at: Option<DateTimeUtc>,
    /// When its newest message was stored: its activity, for listings.
    pub last_message_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::chat_participants::Entity")]
    Participants,
    #[sea_orm(has_many = "super::chat_messages::Entity")]
    Messages,
}

impl Related<super::chat_participants::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Participants.def()
    }
}

impl Related<super::chat_messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Messages.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
