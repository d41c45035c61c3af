//! What assistants cost: one row per answer with the tokens the provider
//! counted, who asked and which assistant answered, so a user's usage can
//! be summed over a period (`GET /api/v1/chat/usage`). Keyed by the stream,
//! so an answer recorded twice counts once. No foreign key: the usage of a
//! conversation stays accounted for whatever becomes of the conversation.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_assistant_usage_user_created";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AssistantUsage::Table)
                    .if_not_exists()
                    .col(uuid(AssistantUsage::StreamId).primary_key())
                    .col(string(AssistantUsage::UserId))
                    .col(string(AssistantUsage::AssistantId))
                    .col(uuid(AssistantUsage::ConversationId))
                    .col(big_integer(AssistantUsage::PromptTokens))
                    .col(big_integer(AssistantUsage::CompletionTokens))
                    .col(big_integer(AssistantUsage::TotalTokens))
                    .col(timestamp_with_time_zone(AssistantUsage::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(INDEX)
                    .table(AssistantUsage::Table)
                    .col(AssistantUsage::UserId)
                    .col(AssistantUsage::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(AssistantUsage::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(AssistantUsage::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum AssistantUsage {
    Table,
    StreamId,
    UserId,
    AssistantId,
    ConversationId,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    CreatedAt,
}
