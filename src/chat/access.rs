//! Who may use a conversation: loaded from the store, and kept with the
//! hub's room while this node is subscribed to the conversation (the
//! membership events that make it stale only reach a subscribed node).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::Chat;
use crate::error::ChatError;
use crate::model::{Access, ConversationId, Role, UserId};

/// Loads under way, by conversation. Until its room opens, every join of a
/// conversation loads its rules: when a hundred members join at once (a
/// node's restart, a reconnect storm), one load serves them all. Keyed
/// with the access version read before loading, so no one is served a load
/// that began before a change they could have seen.
#[derive(Default)]
pub(super) struct Loading(Mutex<HashMap<LoadKey, Arc<OnceCell<Arc<Access>>>>>);

type LoadKey = (ConversationId, Option<u64>);

impl Chat {
    /// The conversation's access rules, from the cache when it holds them.
    async fn access(&self, conv: ConversationId) -> Result<Arc<Access>, ChatError> {
        if let Some(access) = self.hub.cached_access(conv) {
            return Ok(access);
        }
        // Read before loading: a change that lands meanwhile bumps it, and
        // the loaded (maybe stale) rules are then not kept.
        let version = self.hub.access_version(conv);
        let key = (conv, version);
        let load = self.loading.0.lock().entry(key).or_default().clone();
        let loaded = load.get_or_try_init(|| self.load_access(conv)).await;
        // The first to finish ends the sharing: later callers load afresh.
        {
            let mut loading = self.loading.0.lock();
            if loading.get(&key).is_some_and(|l| Arc::ptr_eq(l, &load)) {
                loading.remove(&key);
            }
        }
        let access = loaded?.clone();
        if let Some(version) = version {
            self.hub.cache_access(conv, version, access.clone());
        }
        Ok(access)
    }

    async fn load_access(&self, conv: ConversationId) -> Result<Arc<Access>, ChatError> {
        let chat = self
            .store
            .chat(conv)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        Ok(Arc::new(Access {
            members: chat.participants.into_iter().collect(),
            archived: chat.archived,
            assistant_id: chat.assistant_id,
        }))
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
