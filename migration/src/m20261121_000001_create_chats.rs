//! chats, chat_participants, chat_messages and the indexes the hot paths use.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Chats::Table)
                    .if_not_exists()
                    .col(uuid(Chats::Id).primary_key())
                    .col(string_null(Chats::Title))
                    .col(string(Chats::OwnerId))
                    .col(string_null(Chats::AssistantId))
                    .col(boolean(Chats::Archived).default(false))
                    .col(big_integer(Chats::LastSeq).default(0))
                    .col(timestamp_with_time_zone(Chats::CreatedAt))
                    .col(timestamp_with_time_zone(Chats::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChatParticipants::Table)
                    .if_not_exists()
                    .col(uuid(ChatParticipants::ChatId))
                    .col(string(ChatParticipants::UserId))
                    .col(string(ChatParticipants::Role))
                    .col(big_integer(ChatParticipants::LastReadSeq).default(0))
                    .col(timestamp_with_time_zone(ChatParticipants::JoinedAt))
                    .primary_key(
                        Index::create()
                            .col(ChatParticipants::ChatId)
                            .col(ChatParticipants::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChatParticipants::Table, ChatParticipants::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_chat_participants_user")
                    .table(ChatParticipants::Table)
                    .col(ChatParticipants::UserId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChatMessages::Table)
                    .if_not_exists()
                    .col(uuid(ChatMessages::Id).primary_key())
                    .col(uuid(ChatMessages::ChatId))
                    .col(big_integer(ChatMessages::Seq))
                    .col(string(ChatMessages::SenderId))
                    .col(string(ChatMessages::MessageType))
                    .col(text(ChatMessages::Content))
                    .col(string_null(ChatMessages::ClientMsgId))
                    .col(json_null(ChatMessages::Metadata))
                    .col(timestamp_with_time_zone(ChatMessages::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChatMessages::Table, ChatMessages::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("uq_chat_messages_chat_seq")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::ChatId)
                    .col(ChatMessages::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // NULL client_msg_ids never collide (SQL NULL semantics), so sends
        // without one are not constrained by this index.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("uq_chat_messages_client_msg")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::ChatId)
                    .col(ChatMessages::SenderId)
                    .col(ChatMessages::ClientMsgId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ChatParticipants::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Chats::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Chats {
    Table,
    Id,
    Title,
    OwnerId,
    AssistantId,
    Archived,
    LastSeq,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ChatParticipants {
    Table,
    ChatId,
    UserId,
    Role,
    LastReadSeq,
    JoinedAt,
}

#[derive(DeriveIden)]
enum ChatMessages {
    Table,
    Id,
    ChatId,
    Seq,
    SenderId,
    MessageType,
    Content,
    ClientMsgId,
    Metadata,
    CreatedAt,
}
