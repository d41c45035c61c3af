//! What assistants cost: each answer's token usage, recorded once per
//! stream, and a user's totals over a period.

use chrono::{DateTime, Utc};
use entity::assistant_usage as usage;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use super::Store;
use crate::model::{UsageRecord, UsageTotals, UserId};

impl Store {
    /// Records an answer's usage. Idempotent: a stream already recorded
    /// keeps its first record, and is counted once.
    #[tracing::instrument(level = "debug", name = "store.record_usage", skip_all, fields(stream_id = %record.stream_id))]
    pub async fn record_usage(&self, record: &UsageRecord) -> Result<(), DbErr> {
        let _timer = self.timer("record_usage");
        usage::Entity::insert(usage::ActiveModel {
            stream_id: Set(record.stream_id.0),
            user_id: Set(record.user_id.as_str().to_owned()),
            assistant_id: Set(record.assistant_id.clone()),
            conversation_id: Set(record.conversation_id.0),
            prompt_tokens: Set(stored_count(record.usage.prompt_tokens)),
            completion_tokens: Set(stored_count(record.usage.completion_tokens)),
            total_tokens: Set(stored_count(record.usage.total_tokens)),
            created_at: Set(record.created_at),
        })
        .on_conflict(
            OnConflict::column(usage::Column::StreamId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// The user's usage summed over the answers recorded at or after
    /// `since` (all of them without it); zero when there are none. One
    /// query on the (user, time) index.
    #[tracing::instrument(level = "debug", name = "store.usage_of", skip_all)]
    pub async fn usage_of(
        &self,
        user: &UserId,
        since: Option<DateTime<Utc>>,
    ) -> Result<UsageTotals, DbErr> {
        let _timer = self.timer("usage_of");
        // Postgres sums BIGINTs as NUMERIC: cast back, on both backends.
        let sum = |column: usage::Column| Expr::col(column).sum().cast_as("BIGINT");
        let mut query = usage::Entity::find()
            .select_only()
            .column_as(sum(usage::Column::PromptTokens), "prompt_tokens")
            .column_as(sum(usage::Column::CompletionTokens), "completion_tokens")
            .column_as(sum(usage::Column::TotalTokens), "total_tokens")
            .column_as(Expr::col(usage::Column::StreamId).count(), "streams")
            .filter(usage::Column::UserId.eq(user.as_str()));
        if let Some(since) = since {
            query = query.filter(usage::Column::CreatedAt.gte(since));
        }
        // SUM over no rows is NULL; COUNT is 0.
        let (prompt, completion, total, streams) = query
            .into_tuple::<(Option<i64>, Option<i64>, Option<i64>, i64)>()
            .one(&self.db)
            .await?
            .unwrap_or_default();
        Ok(UsageTotals {
            prompt_tokens: read_count(prompt.unwrap_or(0)),
            completion_tokens: read_count(completion.unwrap_or(0)),
            total_tokens: read_count(total.unwrap_or(0)),
            streams: read_count(streams),
        })
    }
}

/// A token count as a BIGINT column holds it (a count beyond it is
/// recorded as the largest there is).
fn stored_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A count read back, where only counts of zero or more are written.
fn read_count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
