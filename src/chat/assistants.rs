//! What the use cases ask of the node's assistants, as a trait: `chat`
//! starts answers, and the `assistant` module (which publishes them through
//! `chat::Events`) implements it, so neither imports the other in a circle.

use async_trait::async_trait;

use crate::error::ChatError;
use crate::model::{ConversationId, Message, StreamId, UserId};

/// What starting an answer needs: where, for whom, answering which message.
#[derive(Clone, Debug)]
pub struct StartStream {
    pub conversation_id: ConversationId,
    pub requested_by: UserId,
    pub reply_to: Message,
    pub assistant_id: String,
}

/// The node's assistants.
#[async_trait]
pub trait Assistants: Send + Sync {
    /// True if an assistant with this id is configured.
    fn has(&self, assistant_id: &str) -> bool;
    /// Queues an answer; returns its stream id once it is queued (it may
    /// already run).
    async fn start(&self, request: StartStream) -> Result<StreamId, ChatError>;
    /// The conversation of a stream waiting or running; None for one that
    /// is unknown or ended.
    async fn conversation_of(&self, stream: StreamId) -> Result<Option<ConversationId>, ChatError>;
    /// Stops a stream, waiting or running (the caller checked that `by`
    /// may).
    async fn cancel(&self, stream: StreamId, by: &UserId) -> Result<(), ChatError>;
}
