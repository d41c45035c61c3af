//! Assistants: LLM providers (OpenAI-compatible SSE, the built-in echo) and
//! the stream runner that writes their answers, token by token, to every
//! socket in the conversation on every node.

mod echo;
pub mod openai;
pub mod provider;
mod runner;

pub use echo::EchoProvider;
pub use openai::OpenAiProvider;
pub use provider::{Chunk, CompletionRequest, Provider, ProviderError, Role, Turn, Usage};
pub use runner::{Streams, StreamsParts};
