//! An index on the stream claim, so that `cancel_stream` finds the
//! conversation a stream runs in without scanning every conversation: a
//! client may name any stream id, and an unknown one must cost a lookup, not
//! a scan.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "idx_chats_stream_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(NAME)
                    .table(Chats::Table)
                    .col(Chats::StreamId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table(Chats::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Chats {
    Table,
    StreamId,
}
