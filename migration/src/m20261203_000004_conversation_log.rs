//! The conversation log: messages that change. Every change (an edit, a
//! deletion, a reaction) is a row of `chat_changes` with its own seq in the
//! conversation's one sequence; each message keeps its current state in its
//! own row (`edited_at`, `deleted`, `reactions` folded as JSON), so reading
//! a page never replays the log. `chat_reactions` holds who reacted with
//! what, the truth the folded `reactions` are computed from. `reply_to`
//! names the message a message answers; `last_message_at` orders a user's
//! conversations by activity. Existing rows keep their data: new columns
//! are nullable or default to "not changed".

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for column in [
            uuid_null(ChatMessages::ReplyTo),
            timestamp_with_time_zone_null(ChatMessages::EditedAt),
            boolean(ChatMessages::Deleted).default(false).to_owned(),
            json_null(ChatMessages::Reactions),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(ChatMessages::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Chats::Table)
                    .add_column(timestamp_with_time_zone_null(Chats::LastMessageAt))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE chats SET last_message_at = \
                 (SELECT MAX(created_at) FROM chat_messages WHERE chat_messages.chat_id = chats.id)",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChatChanges::Table)
                    .if_not_exists()
                    .col(uuid(ChatChanges::ChatId))
                    .col(big_integer(ChatChanges::Seq))
                    .col(uuid(ChatChanges::MessageId))
                    .col(string(ChatChanges::Kind))
                    .col(string(ChatChanges::Actor))
                    .col(string_null(ChatChanges::Emoji))
                    .col(timestamp_with_time_zone(ChatChanges::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(ChatChanges::ChatId)
                            .col(ChatChanges::Seq),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChatChanges::Table, ChatChanges::ChatId)
                            .to(Chats::Table, Chats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChatChanges::Table, ChatChanges::MessageId)
                            .to(ChatMessages::Table, ChatMessages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChatReactions::Table)
                    .if_not_exists()
                    .col(uuid(ChatReactions::MessageId))
                    .col(string(ChatReactions::Emoji))
                    .col(string(ChatReactions::UserId))
                    .col(big_integer(ChatReactions::Seq))
                    .primary_key(
                        Index::create()
                            .col(ChatReactions::MessageId)
                            .col(ChatReactions::Emoji)
                            .col(ChatReactions::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChatReactions::Table, ChatReactions::MessageId)
                            .to(ChatMessages::Table, ChatMessages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatReactions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ChatChanges::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Chats::Table)
                    .drop_column(Chats::LastMessageAt)
                    .to_owned(),
            )
            .await?;
        for column in [
            ChatMessages::Reactions,
            ChatMessages::Deleted,
            ChatMessages::EditedAt,
            ChatMessages::ReplyTo,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ChatMessages::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Chats {
    Table,
    Id,
    LastMessageAt,
}

#[derive(DeriveIden)]
enum ChatMessages {
    Table,
    Id,
    ReplyTo,
    EditedAt,
    Deleted,
    Reactions,
}

#[derive(DeriveIden)]
enum ChatChanges {
    Table,
    ChatId,
    Seq,
    MessageId,
    Kind,
    Actor,
    Emoji,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ChatReactions {
    Table,
    MessageId,
    Emoji,
    UserId,
    Seq,
}
