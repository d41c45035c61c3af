//! Message search: `chat_messages.search_text`, the normalized words of a
//! message's current content (`search_text::index_text`; empty once
//! deleted), which the store writes in the same statement as the content.
//! It is indexed on each database by its own full-text index:
//!
//! - SQLite: `message_search`, an FTS5 table over `search_text` with
//!   `chat_messages` as its external content, kept current by triggers on
//!   insert, update of `search_text` and delete, so the index changes in
//!   the writer's own transaction. It is keyed by `search_key`, an integer
//!   the insert trigger gives each message (the highest so far plus one),
//!   not by the rowid: a `VACUUM` may renumber the rowids of a table
//!   without an integer primary key, and the index would then point at
//!   other messages.
//! - Postgres: `search_vector`, a stored generated column
//!   `to_tsvector('simple', search_text)` with a GIN index.
//!
//! The messages already stored get their search text here, in pages of
//! ids, before the index is built.

use sea_orm::prelude::Uuid;
use sea_orm::{DbBackend, Statement};
use sea_orm_migration::prelude::*;

use crate::search_text::index_text;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Messages read and rewritten per round of the backfill.
const PAGE: u64 = 500;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        db.execute_unprepared(
            "ALTER TABLE chat_messages ADD COLUMN search_text TEXT NOT NULL DEFAULT ''",
        )
        .await?;
        backfill(db, backend).await?;
        match backend {
            DbBackend::Postgres => {
                db.execute_unprepared(
                    "ALTER TABLE chat_messages ADD COLUMN search_vector tsvector \
                     GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE INDEX ix_chat_messages_search ON chat_messages \
                     USING GIN (search_vector)",
                )
                .await?;
            }
            _ => {
                db.execute_unprepared("ALTER TABLE chat_messages ADD COLUMN search_key INTEGER")
                    .await?;
                db.execute_unprepared("UPDATE chat_messages SET search_key = rowid")
                    .await?;
                db.execute_unprepared(
                    "CREATE UNIQUE INDEX ux_chat_messages_search_key \
                     ON chat_messages (search_key)",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE VIRTUAL TABLE message_search USING fts5(search_text, \
                     content='chat_messages', content_rowid='search_key', \
                     tokenize='unicode61 remove_diacritics 2')",
                )
                .await?;
                db.execute_unprepared(
                    "INSERT INTO message_search(message_search) VALUES ('rebuild')",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE TRIGGER chat_messages_search_insert AFTER INSERT ON chat_messages \
                     BEGIN \
                       UPDATE chat_messages SET search_key = \
                         (SELECT coalesce(max(search_key), 0) + 1 FROM chat_messages) \
                         WHERE rowid = new.rowid; \
                       INSERT INTO message_search(rowid, search_text) \
                         SELECT search_key, search_text FROM chat_messages \
                         WHERE rowid = new.rowid; \
                     END",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE TRIGGER chat_messages_search_delete AFTER DELETE ON chat_messages \
                     BEGIN \
                       INSERT INTO message_search(message_search, rowid, search_text) \
                       VALUES ('delete', old.search_key, old.search_text); \
                     END",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE TRIGGER chat_messages_search_update \
                     AFTER UPDATE OF search_text ON chat_messages \
                     BEGIN \
                       INSERT INTO message_search(message_search, rowid, search_text) \
                       VALUES ('delete', old.search_key, old.search_text); \
                       INSERT INTO message_search(rowid, search_text) \
                       VALUES (new.search_key, new.search_text); \
                     END",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared("DROP INDEX IF EXISTS ix_chat_messages_search")
                    .await?;
                db.execute_unprepared("ALTER TABLE chat_messages DROP COLUMN search_vector")
                    .await?;
            }
            _ => {
                for trigger in ["insert", "delete", "update"] {
                    db.execute_unprepared(&format!(
                        "DROP TRIGGER IF EXISTS chat_messages_search_{trigger}"
                    ))
                    .await?;
                }
                db.execute_unprepared("DROP TABLE IF EXISTS message_search")
                    .await?;
                db.execute_unprepared("DROP INDEX IF EXISTS ux_chat_messages_search_key")
                    .await?;
                db.execute_unprepared("ALTER TABLE chat_messages DROP COLUMN search_key")
                    .await?;
            }
        }
        db.execute_unprepared("ALTER TABLE chat_messages DROP COLUMN search_text")
            .await?;
        Ok(())
    }
}

/// Gives every message not deleted its search text, in pages of `PAGE`
/// in id order.
async fn backfill(db: &SchemaManagerConnection<'_>, backend: DbBackend) -> Result<(), DbErr> {
    let (select, update) = match backend {
        DbBackend::Postgres => (
            "SELECT id, content FROM chat_messages WHERE deleted = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
            "UPDATE chat_messages SET search_text = $1 WHERE id = $2",
        ),
        _ => (
            "SELECT id, content FROM chat_messages WHERE deleted = ? AND id > ? \
             ORDER BY id LIMIT ?",
            "UPDATE chat_messages SET search_text = ? WHERE id = ?",
        ),
    };
    let mut after = Uuid::nil();
    loop {
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                select,
                [false.into(), after.into(), (PAGE as i64).into()],
            ))
            .await?;
        for row in &rows {
            let id: Uuid = row.try_get("", "id")?;
            let content: String = row.try_get("", "content")?;
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                update,
                [index_text(&content).into(), id.into()],
            ))
            .await?;
            after = id;
        }
        if (rows.len() as u64) < PAGE {
            return Ok(());
        }
    }
}
