//! The confab schema, one migration per change, for SQLite and Postgres alike.
//! Applied at node start and by `confab migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_create_chats;
mod m20261121_000002_stream_claim;
mod m20261201_000003_stream_claim_index;
mod m20261203_000004_conversation_log;
mod m20261210_000005_assistant_usage;
mod m20261215_000006_users;
mod m20261220_000007_message_search;
pub mod search_text;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_chats::Migration),
            Box::new(m20261121_000002_stream_claim::Migration),
            Box::new(m20261201_000003_stream_claim_index::Migration),
            Box::new(m20261203_000004_conversation_log::Migration),
            Box::new(m20261210_000005_assistant_usage::Migration),
            Box::new(m20261215_000006_users::Migration),
            Box::new(m20261220_000007_message_search::Migration),
        ]
    }
}
