//! One stored message in its current state (edits, deletion and reactions
//! folded in: reading it never replays the log). Unique on (chat_id, seq)
//! and on (chat_id, sender_id, client_msg_id), so a retried send stores
//! nothing new.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chat_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub chat_id: Uuid,
    pub seq: i64,
    pub sender_id: String,
    pub message_type: crate::MessageType,
    #[sea_orm(column_type = "Text")]
    pub content: String,
    pub client_msg_id: Option<String>,
    pub metadata: Option<Json>,
    pub created_at: DateTimeUtc,
    /// The message this one answers, in the same conversation.
    pub reply_to: Option<Uuid>,
    pub edited_at: Option<DateTimeUtc>,
    pub deleted: bool,
    /// The reactions as clients see them (`[{emoji, count, user_ids}]`),
    /// recomputed from `chat_reactions` by every reaction change.
    pub reactions: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::chats::Entity",
        from = "Column::ChatId",
        to = "super::chats::Column::Id",
        on_delete = "Cascade"
    )]
    Chat,
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
