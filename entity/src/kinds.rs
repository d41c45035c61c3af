//! The closed sets stored as text columns, as enums: the same type is the
//! column (sea-orm), the JSON (serde) and the OpenAPI schema, so no code
//! matches their spelling.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    poem_openapi::Enum,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum MessageType {
    /// A participant (the only type a client may send).
    #[sea_orm(string_value = "user")]
    User,
    /// An assistant's answer.
    #[sea_orm(string_value = "assistant")]
    Assistant,
}

/// A participant's rights in a conversation.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    poem_openapi::Enum,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum Role {
    /// Created it: may remove others and archive it.
    #[sea_orm(string_value = "owner")]
    Owner,
    #[sea_orm(string_value = "member")]
    Member,
}

/// What a log entry other than a new message did to its message.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    poem_openapi::Enum,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum ChangeKind {
    #[sea_orm(string_value = "edited")]
    Edited,
    #[sea_orm(string_value = "deleted")]
    Deleted,
    #[sea_orm(string_value = "reaction_added")]
    ReactionAdded,
    #[sea_orm(string_value = "reaction_removed")]
    ReactionRemoved,
}
