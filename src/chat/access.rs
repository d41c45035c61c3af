//! Who may use a conversation: loaded from the store, and kept with the
//! hub's room while this node is subscribed to the conversation (the
//! membership events that make it stale only reach a subscribed node).

use std::sync::Arc;

use super::Chat;
use crate::error::ChatError;
use crate::model::{Access, ConversationId, Role, UserId};

impl Chat {
    /// The conversation's access rules, from the cache when it holds them.
    async fn access(&self, conv: ConversationId) -> Result<Arc<Access>, ChatError> {
        if let Some(access) = self.hub.cached_access(conv) {
            return Ok(access);
        }
        // Read before loading: a change that lands meanwhile bumps it, and
        // the loaded (maybe stale) rules are then not kept.
        let version = self.hub.access_version(conv);
        let chat = self
            .store
            .chat(conv)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        let access = Arc::new(Access {
            members: chat.participants.into_iter().collect(),
            archived: chat.archived,
            assistant_id: chat.assistant_id,
        });
        if let Some(version) = version {
            self.hub.cache_access(conv, version, access.clone());
        }
        Ok(access)
    }

    /// The access rules, if `user` is a participant; `FORBIDDEN` if not.
    pub(super) async fn require_member(
        &self,
        user: &UserId,
        conv: ConversationId,
    ) -> Result<Arc<Access>, ChatError> {
        let access = self.access(conv).await?;
        if access.members.contains(user) {
            Ok(access)
        } else {
            Err(not_a_participant())
        }
    }

    /// As `require_member`, and the conversation must not be archived.
    pub(super) async fn require_writer(
        &self,
        user: &UserId,
        conv: ConversationId,
    ) -> Result<Arc<Access>, ChatError> {
        let access = self.require_member(user, conv).await?;
        if access.archived {
            return Err(ChatError::Forbidden("conversation is archived".into()));
        }
        Ok(access)
    }

    pub(super) async fn is_owner(
        &self,
        user: &UserId,
        conv: ConversationId,
    ) -> Result<bool, ChatError> {
        Ok(self.store.role(conv, user).await? == Some(Role::Owner))
    }
}

pub(super) fn not_a_participant() -> ChatError {
    ChatError::Forbidden("not a participant of this conversation".into())
}
