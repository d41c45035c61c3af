//! The tokens of one assistant answer, keyed by its stream: who asked,
//! which assistant answered in which conversation, and what the provider
//! counted. Summed per user over a period for `GET /api/v1/chat/usage`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "assistant_usage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub stream_id: Uuid,
    /// The user whose message was answered.
    pub user_id: String,
    pub assistant_id: String,
    pub conversation_id: Uuid,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
