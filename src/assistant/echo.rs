//! The built-in `echo` assistant: streams the user's last message back word
//! by word at a configurable pace, so the hub and the demo work with no key.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::provider::{Chunk, CompletionRequest, Provider, ProviderError, Role, Usage};

/// Echoes the last user turn.
pub struct EchoProvider {
    delay: Duration,
}

impl EchoProvider {
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

#[async_trait]
impl Provider for EchoProvider {
    async fn stream(
        &self,
        request: CompletionRequest,
    ) -> Result<BoxStream<'static, Result<Chunk, ProviderError>>, ProviderError> {
        let text = request
            .turns
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .map(|t| t.content.clone())
            .unwrap_or_default();
        let prompt_tokens: u64 = request
            .turns
            .iter()
            .map(|t| t.content.split_whitespace().count() as u64)
            .sum();
        // Words with the whitespace before them, so the deltas concatenate
        // back to exactly the original text.
        let mut words = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() && i > start && !text[start..i].trim().is_empty() {
                words.push(text[start..i].to_owned());
                start = i;
            }
        }
        if start < text.len() {
            words.push(text[start..].to_owned());
        }
        let completion_tokens = words.len() as u64;
        let delay = self.delay;
        let deltas = stream::iter(words).then(move |w| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Chunk::Delta(w))
        });
        let tail = stream::iter([
            Ok(Chunk::Finish("stop".into())),
            Ok(Chunk::Usage(Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            })),
        ]);
        Ok(deltas.chain(tail).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::Turn;

    #[tokio::test]
    async fn echoes_the_last_user_turn_word_by_word() {
        let p = EchoProvider::new(Duration::ZERO);
        let req = CompletionRequest {
            model: "echo".into(),
            turns: vec![
                Turn {
                    role: Role::System,
                    content: "be nice".into(),
                },
                Turn {
                    role: Role::User,
                    content: "hello  big world".into(),
                },
            ],
        };
        let chunks: Vec<_> = p.stream(req).await.unwrap().collect().await;
        let deltas: Vec<String> = chunks
            .iter()
            .filter_map(|c| match c {
                Ok(Chunk::Delta(d)) => Some(d.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, vec!["hello", "  big", " world"]);
        assert_eq!(deltas.concat(), "hello  big world");
        assert!(chunks
            .iter()
            .any(|c| matches!(c, Ok(Chunk::Finish(r)) if r == "stop")));
    }
}
