//! Message search for a user: the query checked, the conversation filter
//! held to the same membership rules as any read, and the search itself
//! (`crate::search`), timed.

use super::Chat;
use crate::error::ChatError;
use crate::model::{ConversationId, UserId};
use crate::search::{self, Found, Query};

impl Chat {
    /// The messages matching `q` in the conversations `user` is in now
    /// (or only in `conversation`: `FORBIDDEN` if they are not in it,
    /// `NOT_FOUND` if it does not exist), best first; `cursor` continues.
    pub async fn search(
        &self,
        user: &UserId,
        q: &str,
        conversation: Option<ConversationId>,
        limit: Option<u64>,
        cursor: Option<&str>,
    ) -> Result<Found, ChatError> {
        let _timer = self.metrics.search_seconds.start_timer();
        let query = Query::parse(q, conversation, limit, cursor)
            .map_err(|invalid| ChatError::InvalidFrame(invalid.0))?;
        if let Some(conv) = conversation {
            self.require_member(user, conv).await?;
        }
        Ok(search::search(&self.store, user, &query).await?)
    }
}
