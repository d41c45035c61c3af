//! The users directory: who has signed in, under which display name, and
//! when they were first and last seen.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::users;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter};

use super::{stored_user, Store};
use crate::model::{User, UserId};

/// A user seen signing in, to be recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub user_id: UserId,
    /// The token's `name` claim, if it had one.
    pub name: Option<String>,
    pub at: DateTime<Utc>,
}

impl Store {
    /// Records sightings in one statement: a user new to the directory is
    /// added, first and last seen at the sighting; a known user keeps
    /// their `first_seen_at`, is last seen at the sighting, and keeps
    /// their name unless the sighting carries one. Two sightings of one
    /// user in a batch count as the later, with the latest name given.
    /// Safe to race: nodes recording the same user at once both succeed.
    #[tracing::instrument(level = "debug", name = "store.record_users", skip_all, fields(users = sightings.len()))]
    pub async fn record_users(&self, sightings: &[Sighting]) -> Result<(), DbErr> {
        let _timer = self.timer("record_users");
        // One row per user: a statement may not update a row twice.
        let mut rows: Vec<Sighting> = Vec::with_capacity(sightings.len());
        let mut index: HashMap<&UserId, usize> = HashMap::new();
        for s in sightings {
            match index.get(&s.user_id) {
                Some(&i) => {
                    let row = &mut rows[i];
                    row.at = row.at.max(s.at);
                    if s.name.is_some() {
                        row.name.clone_from(&s.name);
                    }
                }
                None => {
                    index.insert(&s.user_id, rows.len());
                    rows.push(s.clone());
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let models = rows.into_iter().map(|s| users::ActiveModel {
            id: Set(s.user_id.as_str().to_owned()),
            name: Set(s.name),
            first_seen_at: Set(s.at),
            last_seen_at: Set(s.at),
        });
        // `excluded` is the row that was to be inserted (SQLite and
        // Postgres alike): its name when it has one, else the stored one.
        users::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(users::Column::Id)
                    .update_column(users::Column::LastSeenAt)
                    .value(
                        users::Column::Name,
                        Expr::cust("COALESCE(excluded.name, users.name)"),
                    )
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The directory's entries for `ids`, in no particular order; ids
    /// nobody signed in as are absent. One query on the primary key.
    #[tracing::instrument(level = "debug", name = "store.users", skip_all, fields(ids = ids.len()))]
    pub async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, DbErr> {
        let _timer = self.timer("users");
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = users::Entity::find()
            .filter(users::Column::Id.is_in(ids.iter().map(UserId::as_str)))
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(User {
                    id: stored_user(row.id)?,
                    name: row.name,
                    first_seen_at: row.first_seen_at,
                    last_seen_at: row.last_seen_at,
                })
            })
            .collect()
    }
}
