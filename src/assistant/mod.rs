//! Assistants: LLM providers (OpenAI-compatible SSE, the built-in echo) and
//! the stream runner that writes their answers, token by token, to every
//! socket in the conversation on every node.

mod echo;
pub mod openai;
pub mod provider;
pub mod queue;
mod runner;
pub mod transcript;

pub use echo::EchoProvider;
pub use openai::OpenAiProvider;
pub use provider::{Chunk, CompletionRequest, Provider, ProviderError, Role, Turn, Usage};
pub use runner::{Streams, StreamsParts};

/// A small pool of Redis connections for the queue and the transcripts of
/// a cluster (on the Redis the bus uses).
pub async fn redis_pool(
    settings: &crate::config::BusSettings,
) -> Result<fred::clients::Pool, String> {
    use fred::interfaces::ClientLike;
    let builder = crate::bus::client_builder(settings).map_err(|e| e.to_string())?;
    let pool = builder.build_pool(2).map_err(|e| e.to_string())?;
    pool.init().await.map_err(|e| e.to_string())?;
    Ok(pool)
}
