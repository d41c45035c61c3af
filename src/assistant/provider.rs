//! What every assistant provider offers: a streamed completion of a
//! conversation, as chunks of text, then usage and a finish reason, and
//! the sources it cited when it says.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

pub use crate::model::{Citation, Usage};

/// Who said a turn of the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One turn of the context sent to the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// A completion request: the model and the context, oldest turn first.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub model: String,
    pub turns: Vec<Turn>,
}

/// One piece of a streamed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// New text (only the new part).
    Delta(String),
    /// Token usage (may come once, usually last; some servers never send it).
    Usage(Usage),
    /// Why generation stopped (`stop`, `length`, ...).
    Finish(String),
    /// Sources the provider cited (URL annotations), as they come: a
    /// stream may carry several of these, each adding to the others.
    Citations(Vec<Citation>),
}

/// Why a provider failed. Display texts never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// 429: retry after the given time, if the provider said.
    #[error("the provider is rate limiting requests")]
    RateLimited { retry_after: Option<Duration> },
    /// 401/403: the API key is missing, wrong or lacks access.
    #[error(
        "the provider rejected the API key (HTTP {status}); check the assistant's api_key_env"
    )]
    Unauthorized { status: u16 },
    /// No chunk within the timeout.
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else: a non-success status, an `error` event in the stream,
    /// a stream cut before it finished, an unreadable chunk.
    #[error("provider error: {0}")]
    Upstream(String),
}

/// A source of streamed completions (OpenAI-compatible API, echo, ...).
#[async_trait]
pub trait Provider: Send + Sync {
    /// Starts a completion. Errors before the first chunk (HTTP status,
    /// connection) come from this call; errors mid-stream come as items.
    async fn stream(
        &self,
        request: CompletionRequest,
    ) -> Result<BoxStream<'static, Result<Chunk, ProviderError>>, ProviderError>;
}
