//! Who has signed in: one row per user id (the JWT `sub`), with the display
//! name of their token's `name` claim, so others see "Zoë Q" rather than
//! `zoë-q`, and a client can tell an id nobody ever signed in as. Recorded
//! when a connection authenticates (at most hourly per node) and when a
//! dev token is minted. No foreign keys: participants may name users who
//! never signed in, and a user's row outlives their conversations.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(string(Users::Id).primary_key())
                    .col(string_null(Users::Name))
                    .col(timestamp_with_time_zone(Users::FirstSeenAt))
                    .col(timestamp_with_time_zone(Users::LastSeenAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Name,
    FirstSeenAt,
    LastSeenAt,
}
