//! What a user's assistant answers cost them: their token totals, read
//! from the store, where the assistants record each answer's usage.

use chrono::{DateTime, Utc};

use super::Chat;
use crate::error::ChatError;
use crate::model::{UsageTotals, UserId};

impl Chat {
    /// The user's token usage over the answers recorded at or after
    /// `since` (all of them without it). Only ever the caller's own.
    pub async fn usage(
        &self,
        user: &UserId,
        since: Option<DateTime<Utc>>,
    ) -> Result<UsageTotals, ChatError> {
        Ok(self.store.usage_of(user, since).await?)
    }
}
