//! The stream runner: one task per assistant answer. It claims the
//! conversation (one active stream per conversation, cluster-wide), streams
//! the provider's deltas to the conversation's topic coalesced for
//! `coalesce_ms`, sends a heartbeat while it runs, and stores the answer as
//! an `assistant` message through `chat::Events`, the path of every
//! message. It also watches the streams of other nodes, and tells the
//! connections here when one goes silent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::provider::{Chunk, CompletionRequest, Provider, ProviderError, Role, Turn, Usage};
use super::{EchoProvider, OpenAiProvider};
use crate::chat::{Assistants, Events, StartStream};
use crate::config::{AssistantSettings, ProviderKind, StreamingSettings};
use crate::error::{ChatError, ErrorCode};
use crate::hub::{Hub, StreamEvents};
use crate::metrics::Metrics;
use crate::model::{ConversationId, MessageId, MessageType, Seq, StreamId, UserId};
use crate::protocol::ServerFrame;
use crate::store::{NewMessage, Store};
use crate::tasks::Tasks;

/// How often silent streams are looked for.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A configured assistant: its settings and its provider.
struct Assistant {
    id: String,
    /// Its id as the sender of its answers.
    sender: UserId,
    settings: AssistantSettings,
    provider: Arc<dyn Provider>,
}

/// A stream running on this node.
struct Active {
    conversation_id: ConversationId,
    user: UserId,
    cancel: CancellationToken,
}

/// How an answer ended.
struct Outcome {
    text: String,
    usage: Option<Usage>,
    finish: Option<String>,
    cancelled: bool,
    error: Option<ProviderError>,
}

/// The assistants of this node, the streams it runs, and the streams it
/// watches.
pub struct Streams {
    me: Weak<Streams>,
    store: Store,
    events: Arc<Events>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    settings: StreamingSettings,
    assistants: BTreeMap<String, Arc<Assistant>>,
    active: DashMap<StreamId, Active>,
    per_user: DashMap<UserId, usize>,
    /// Streams heard of in conversations joined here (on any node), and
    /// when last heard.
    watched: Mutex<HashMap<StreamId, (ConversationId, Instant)>>,
}

/// What a node's stream runner is built from.
pub struct StreamsParts {
    pub store: Store,
    pub events: Arc<Events>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub tasks: Tasks,
}

impl Streams {
    /// Builds every configured assistant and starts watching streams.
    /// Fails on an unusable configuration (an `openai` assistant without
    /// `base_url`, an id that cannot be a sender).
    pub fn new(
        assistants: &BTreeMap<String, AssistantSettings>,
        settings: StreamingSettings,
        parts: StreamsParts,
    ) -> Result<Arc<Self>, String> {
        let mut built = BTreeMap::new();
        for (id, a) in assistants {
            let sender = UserId::parse(id.as_str())
                .map_err(|e| format!("assistants.{id}: the id names the sender: {e}"))?;
            let timeout = Duration::from_secs_f64(a.timeout_secs.max(0.1));
            let provider: Arc<dyn Provider> = match a.provider {
                ProviderKind::Echo => {
                    Arc::new(EchoProvider::new(Duration::from_millis(a.echo_delay_ms)))
                }
                ProviderKind::OpenAi => {
                    if a.base_url.is_empty() {
                        return Err(format!(
                            "assistants.{id}.base_url is required for provider openai"
                        ));
                    }
                    let key = if a.api_key_env.is_empty() {
                        None
                    } else {
                        let key = std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty());
                        if key.is_none() {
                            tracing::warn!(assistant = %id, env = %a.api_key_env, "API key variable is not set");
                        }
                        key
                    };
                    Arc::new(OpenAiProvider::new(&a.base_url, key, timeout))
                }
            };
            built.insert(
                id.clone(),
                Arc::new(Assistant {
                    id: id.clone(),
                    sender,
                    settings: a.clone(),
                    provider,
                }),
            );
        }
        let streams = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            store: parts.store,
            events: parts.events,
            hub: parts.hub,
            metrics: parts.metrics,
            tasks: parts.tasks,
            settings,
            assistants: built,
            active: DashMap::new(),
            per_user: DashMap::new(),
            watched: Mutex::new(HashMap::new()),
        });
        streams
            .tasks
            .spawn(watch(Arc::downgrade(&streams), streams.stream_timeout()));
        Ok(streams)
    }

    fn stream_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.settings.stream_timeout_secs.max(0.0))
    }

    /// Starts an answer; returns its stream id once the conversation is claimed.
    async fn start_stream(self: Arc<Self>, req: StartStream) -> Result<StreamId, ChatError> {
        let assistant = self
            .assistants
            .get(&req.assistant_id)
            .cloned()
            .ok_or(ChatError::NotFound("assistant"))?;
        let user_limit = self.settings.max_streams_per_user;
        {
            let mut count = self.per_user.entry(req.requested_by.clone()).or_insert(0);
            if *count >= user_limit {
                return Err(ChatError::RateLimited {
                    retry_after_ms: 1000,
                });
            }
            *count += 1;
        }
        let stream_id = StreamId::new();
        let claimed = self
            .store
            .claim_stream(req.conversation_id, stream_id, self.claim_until())
            .await;
        match claimed {
            Ok(true) => {}
            Ok(false) => {
                self.release_user(&req.requested_by);
                return Err(ChatError::RateLimited {
                    retry_after_ms: 1000,
                });
            }
            Err(e) => {
                self.release_user(&req.requested_by);
                return Err(e.into());
            }
        }
        let cancel = CancellationToken::new();
        self.active.insert(
            stream_id,
            Active {
                conversation_id: req.conversation_id,
                user: req.requested_by.clone(),
                cancel: cancel.clone(),
            },
        );
        self.metrics.streams_active.inc();
        let me = self.clone();
        // In the trace of the frame (or request) that started it.
        let span = tracing::info_span!(
            "assistant.stream",
            stream_id = %stream_id,
            conversation_id = %req.conversation_id,
            assistant = %assistant.id,
            model = %assistant.settings.model,
            provider = assistant.settings.provider.name(),
            finish_reason = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        self.tasks
            .spawn(me.run(stream_id, req, assistant, cancel).instrument(span));
        Ok(stream_id)
    }

    fn claim_until(&self) -> chrono::DateTime<chrono::Utc> {
        let ttl =
            chrono::Duration::milliseconds((self.settings.stream_timeout_secs * 1000.0) as i64);
        crate::store::now() + ttl
    }

    fn release_user(&self, user: &UserId) {
        if let Some(mut count) = self.per_user.get_mut(user) {
            *count = count.saturating_sub(1);
        }
        self.per_user.remove_if(user, |_, c| *c == 0);
    }

    async fn run(
        self: Arc<Self>,
        stream_id: StreamId,
        req: StartStream,
        assistant: Arc<Assistant>,
        cancel: CancellationToken,
    ) {
        let conv = req.conversation_id;
        let message_id = MessageId::new();
        self.publish_stream(
            conv,
            stream_id,
            false,
            &ServerFrame::StreamStart {
                stream_id,
                conversation_id: conv,
                message_id,
                reply_to: req.reply_to.id,
                assistant_id: assistant.id.clone(),
            },
        )
        .await;
        let heartbeat = CancellationToken::new();
        self.tasks.spawn(
            self.clone()
                .heartbeat(conv, stream_id, heartbeat.clone())
                .in_current_span(),
        );

        let outcome = match self.context(&req, &assistant).await {
            Ok(turns) => {
                self.generate(conv, stream_id, message_id, &assistant, turns, &cancel)
                    .await
            }
            Err(e) => Outcome {
                text: String::new(),
                usage: None,
                finish: None,
                cancelled: false,
                error: Some(ProviderError::Upstream(format!(
                    "cannot read the history: {e}"
                ))),
            },
        };
        heartbeat.cancel();
        let last = self
            .finish(conv, stream_id, message_id, &req, &assistant, outcome)
            .await;
        // The claim goes before the last frame, so a client that asks again
        // as soon as it sees the answer end is not refused.
        if let Err(e) = self.store.release_stream(conv, stream_id).await {
            tracing::warn!(error = %e, "releasing the stream claim failed; it lapses by itself");
        }
        self.publish_stream(conv, stream_id, true, &last).await;
        self.active.remove(&stream_id);
        self.release_user(&req.requested_by);
        self.metrics.streams_active.dec();
    }

    /// The history up to the message answered, newest `max_history_messages`,
    /// as edited; deleted messages are never sent to a provider.
    async fn context(
        &self,
        req: &StartStream,
        assistant: &Assistant,
    ) -> Result<Vec<Turn>, sea_orm::DbErr> {
        let limit = assistant.settings.max_history_messages.max(1);
        let (history, _) = self
            .store
            .messages_before(
                req.conversation_id,
                Some(Seq(req.reply_to.seq.0 + 1)),
                limit,
            )
            .await?;
        let mut turns = Vec::with_capacity(history.len() + 1);
        if !assistant.settings.system_prompt.is_empty() {
            turns.push(Turn {
                role: Role::System,
                content: assistant.settings.system_prompt.clone(),
            });
        }
        turns.extend(history.into_iter().filter(|m| !m.deleted).map(|m| Turn {
            role: match m.message_type {
                MessageType::Assistant => Role::Assistant,
                MessageType::User => Role::User,
            },
            content: m.content,
        }));
        Ok(turns)
    }

    /// Streams the provider's answer to the conversation until it ends, fails
    /// or is cancelled.
    async fn generate(
        &self,
        conv: ConversationId,
        stream_id: StreamId,
        message_id: MessageId,
        assistant: &Assistant,
        turns: Vec<Turn>,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut out = Outcome {
            text: String::new(),
            usage: None,
            finish: None,
            cancelled: false,
            error: None,
        };
        let request = CompletionRequest {
            model: assistant.settings.model.clone(),
            turns,
        };
        let mut retries = 0;
        let mut stream = loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => {
                    out.cancelled = true;
                    return out;
                }
                r = assistant.provider.stream(request.clone()) => r,
            };
            match attempt {
                Ok(stream) => break stream,
                Err(ProviderError::RateLimited { retry_after })
                    if retries < self.settings.retry_budget =>
                {
                    retries += 1;
                    let cap = Duration::from_secs_f64(self.settings.max_retry_wait_secs.max(0.0));
                    let wait = retry_after.unwrap_or(Duration::from_secs(1)).min(cap);
                    self.metrics
                        .assistant_errors
                        .with_label_values(&["rate_limited"])
                        .inc();
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            out.cancelled = true;
                            return out;
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        };

        let coalesce = Duration::from_millis(self.settings.coalesce_ms);
        let mut pending = String::new();
        let mut flush_at: Option<Instant> = None;
        let mut index = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    out.cancelled = true;
                    break;
                }
                _ = sleep_until_opt(flush_at) => {
                    self.flush(conv, stream_id, message_id, &mut pending, &mut index).await;
                    flush_at = None;
                }
                item = stream.next() => match item {
                    Some(Ok(Chunk::Delta(d))) => {
                        self.metrics.assistant_tokens.inc();
                        out.text.push_str(&d);
                        pending.push_str(&d);
                        if coalesce.is_zero() {
                            self.flush(conv, stream_id, message_id, &mut pending, &mut index).await;
                        } else if flush_at.is_none() {
                            flush_at = Some(Instant::now() + coalesce);
                        }
                    }
                    Some(Ok(Chunk::Usage(u))) => out.usage = Some(u),
                    Some(Ok(Chunk::Finish(r))) => out.finish = Some(r),
                    Some(Err(e)) => {
                        out.error = Some(e);
                        break;
                    }
                    None => break,
                },
            }
        }
        self.flush(conv, stream_id, message_id, &mut pending, &mut index)
            .await;
        out
    }

    async fn flush(
        &self,
        conv: ConversationId,
        stream_id: StreamId,
        message_id: MessageId,
        pending: &mut String,
        index: &mut u64,
    ) {
        if pending.is_empty() {
            return;
        }
        let frame = ServerFrame::StreamContent {
            stream_id,
            conversation_id: conv,
            message_id,
            content: std::mem::take(pending),
            index: *index,
            is_complete: false,
        };
        *index += 1;
        self.publish_stream(conv, stream_id, false, &frame).await;
    }

    /// Stores what was produced; returns the frame that tells the
    /// conversation how it ended (`stream_complete` or `stream_error`).
    async fn finish(
        &self,
        conv: ConversationId,
        stream_id: StreamId,
        message_id: MessageId,
        req: &StartStream,
        assistant: &Assistant,
        out: Outcome,
    ) -> ServerFrame {
        let finish_reason = if out.cancelled {
            "cancelled".to_string()
        } else if out.error.is_some() {
            "error".to_string()
        } else {
            out.finish.clone().unwrap_or_else(|| "stop".into())
        };
        let usage = out.usage.unwrap_or_default();
        tracing::Span::current().record("finish_reason", finish_reason.as_str());
        let mut stored = None;
        if !out.text.is_empty() {
            let metadata = serde_json::json!({
                "assistant_id": assistant.id,
                "model": assistant.settings.model,
                "finish_reason": finish_reason,
                "usage": out.usage,
                "stream_id": stream_id,
                "reply_to": req.reply_to.id,
                "requested_by": req.requested_by,
            });
            let new = NewMessage {
                id: Some(message_id),
                conversation_id: conv,
                sender_id: assistant.sender.clone(),
                message_type: MessageType::Assistant,
                content: out.text.clone(),
                client_msg_id: None,
                metadata: Some(metadata),
                reply_to: Some(req.reply_to.id),
            };
            match self.events.append(new).await {
                Ok(appended) => stored = Some(appended.message),
                // The conversation is gone.
                Err(ChatError::NotFound(_)) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "storing the assistant answer failed");
                    return error_frame(conv, stream_id, err.code(), err.client_message(), None);
                }
            }
        }
        match out.error {
            None => ServerFrame::StreamComplete {
                stream_id,
                conversation_id: conv,
                message_id,
                message: stored,
                usage,
                finish_reason,
            },
            Some(e) => {
                let (code, retry) = match &e {
                    ProviderError::RateLimited { retry_after } => (
                        ErrorCode::RateLimited,
                        Some(retry_after.unwrap_or(Duration::from_secs(1)).as_millis() as u64),
                    ),
                    _ => (ErrorCode::ProviderError, None),
                };
                let kind = match &e {
                    ProviderError::RateLimited { .. } => "rate_limited",
                    ProviderError::Unauthorized { .. } => "unauthorized",
                    ProviderError::Timeout(_) => "timeout",
                    ProviderError::Upstream(_) => "upstream",
                };
                let span = tracing::Span::current();
                span.record("error.type", kind);
                span.record("otel.status_code", "ERROR");
                self.metrics
                    .assistant_errors
                    .with_label_values(&[kind])
                    .inc();
                tracing::warn!(assistant = %assistant.id, error = %e, "assistant stream failed");
                error_frame(conv, stream_id, code, e.to_string(), retry)
            }
        }
    }

    /// Tells every node the stream is alive and keeps the claim, until stopped.
    async fn heartbeat(
        self: Arc<Self>,
        conv: ConversationId,
        stream_id: StreamId,
        stop: CancellationToken,
    ) {
        let every = Duration::from_secs_f64(self.settings.heartbeat_secs.max(0.05));
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.events.stream(conv, stream_id, false, None).await;
                    if let Err(e) = self.store.extend_stream(conv, stream_id, self.claim_until()).await {
                        tracing::warn!(error = %e, "extending the stream claim failed");
                    }
                }
            }
        }
    }

    async fn publish_stream(
        &self,
        conv: ConversationId,
        stream_id: StreamId,
        end: bool,
        frame: &ServerFrame,
    ) {
        self.events.stream(conv, stream_id, end, Some(frame)).await;
    }
}

#[async_trait]
impl Assistants for Streams {
    fn has(&self, assistant_id: &str) -> bool {
        self.assistants.contains_key(assistant_id)
    }

    async fn start(&self, request: StartStream) -> Result<StreamId, ChatError> {
        // `self` lives in an Arc (see `new`) for as long as anyone calls it.
        let me = self
            .me
            .upgrade()
            .ok_or(ChatError::Unavailable("the node is stopping".into()))?;
        me.start_stream(request).await
    }
}

impl StreamEvents for Streams {
    fn heard(&self, conv: ConversationId, stream: StreamId, end: bool) {
        let mut watched = self.watched.lock();
        if end {
            watched.remove(&stream);
        } else {
            watched.insert(stream, (conv, Instant::now()));
        }
    }

    fn forget(&self, conv: ConversationId) {
        self.watched.lock().retain(|_, (c, _)| *c != conv);
    }

    fn cancel(&self, stream: StreamId, by: UserId) {
        let Some(active) = self
            .active
            .get(&stream)
            .map(|a| (a.conversation_id, a.cancel.clone(), a.user.clone()))
        else {
            return;
        };
        let (conv, token, starter) = active;
        if starter == by {
            token.cancel();
            return;
        }
        // Any participant may cancel; check membership off the event path.
        let store = self.store.clone();
        self.tasks.spawn(async move {
            if matches!(store.role(conv, &by).await, Ok(Some(_))) {
                token.cancel();
            }
        });
    }
}

/// Turns streams whose node went silent into `stream_error INTERRUPTED` for
/// the connections here watching them, so no tab spins forever.
async fn watch(streams: Weak<Streams>, timeout: Duration) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        let Some(streams) = streams.upgrade() else {
            return;
        };
        let silent: Vec<(StreamId, ConversationId)> = {
            let mut watched = streams.watched.lock();
            let silent: Vec<_> = watched
                .iter()
                .filter(|(_, (_, at))| at.elapsed() > timeout)
                .map(|(id, (conv, _))| (*id, *conv))
                .collect();
            for (id, _) in &silent {
                watched.remove(id);
            }
            silent
        };
        for (stream_id, conv) in silent {
            let frame = ServerFrame::StreamError {
                stream_id,
                conversation_id: conv,
                code: ErrorCode::Interrupted,
                message: "the stream's node stopped answering".into(),
                retry_after_ms: None,
            };
            streams.hub.deliver_local(conv, &frame.encode().into());
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The `stream_error` that ends a stream.
fn error_frame(
    conv: ConversationId,
    stream_id: StreamId,
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
) -> ServerFrame {
    ServerFrame::StreamError {
        stream_id,
        conversation_id: conv,
        code,
        message,
        retry_after_ms,
    }
}
