//! The stream runner: every answer goes through the assistants' queue
//! (`super::queue`), which decides, for the whole cluster, when it runs
//! and on which node. A node queues the requests made on it, runs the ones
//! the queue starts for it, and carries out what each change of the queue
//! decided (positions to tell, requests given up). An answer streams the
//! provider's deltas to the conversation's topic coalesced for
//! `coalesce_ms`, appending each piece to its transcript first (so a tab
//! joining mid-answer is caught up), sends a heartbeat while it runs, and
//! is stored as an `assistant` message through `chat::Events`, the path of
//! every message. The runner also watches the streams of other nodes, and
//! tells the connections here when one goes silent.

use std::collections::{BTreeMap, HashMap, HashSet};
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
use super::queue::{Effects, Entry, Limits, Queue, QueueError, QueueStore, Refusal};
use super::transcript::{Opening, Transcripts};
use super::{EchoProvider, OpenAiProvider};
use crate::bus::StreamStep;
use crate::chat::{Assistants, Events, StartStream};
use crate::config::{AssistantSettings, ProviderKind, StreamingSettings};
use crate::error::{ChatError, ErrorCode};
use crate::hub::{CatchUp, Covers, Hub, StreamEvents};
use crate::metrics::{Metrics, STREAM_FINISHES};
use crate::model::{
    Citation, ConversationId, Message, MessageId, MessageType, Seq, StreamId, UsageRecord, UserId,
};
use crate::protocol::ServerFrame;
use crate::store::{NewMessage, Store};
use crate::tasks::Tasks;

/// How often silent streams are looked for.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How often each node tends the queue: renews its lease, gives up
/// requests that waited too long, starts what a minute's limit or a pause
/// held back, and takes over the requests of nodes that died.
const TEND_EVERY: Duration = Duration::from_millis(500);

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
    entry: Entry,
    cancel: CancellationToken,
}

/// How an answer ended.
#[derive(Default)]
struct Outcome {
    text: String,
    usage: Option<Usage>,
    finish: Option<String>,
    citations: Vec<Citation>,
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
    queue: Queue,
    transcripts: Arc<dyn Transcripts>,
    active: DashMap<StreamId, Active>,
    /// Streams that ended here and may still be in the queue (its update
    /// failed, or a read older than the end): never started again, and
    /// taken out of the queue by the next tending.
    ended: Mutex<HashSet<StreamId>>,
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
    pub node_id: String,
    /// Where the queue is kept: in memory for one node, Redis for a cluster.
    pub queue: Arc<dyn QueueStore>,
    /// Where answers being written are kept, likewise.
    pub transcripts: Arc<dyn Transcripts>,
}

impl Streams {
    /// Builds every configured assistant and starts tending the queue and
    /// watching streams. Fails on an unusable configuration (an `openai`
    /// assistant without `base_url`, an id that cannot be a sender).
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
        let limits: BTreeMap<String, Limits> = assistants
            .iter()
            .map(|(id, a)| {
                let limits = Limits {
                    max_concurrent: a.max_concurrent,
                    per_minute: a.requests_per_minute,
                    queue_timeout_ms: (a.queue_timeout_secs.max(0.0) * 1000.0) as i64,
                    max_waiting: a.max_queue,
                };
                (id.clone(), limits)
            })
            .collect();
        // A dead node's requests move on within the stream timeout: its
        // lease runs out before, and the next tending notices.
        let lease = Duration::from_secs_f64((settings.stream_timeout_secs * 0.8).max(0.5));
        let queue = Queue::new(parts.queue, &parts.node_id, lease, move |a: &str| {
            limits.get(a).copied().unwrap_or_default()
        });
        let streams = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            store: parts.store,
            events: parts.events,
            hub: parts.hub,
            metrics: parts.metrics,
            tasks: parts.tasks,
            settings,
            assistants: built,
            queue,
            transcripts: parts.transcripts,
            active: DashMap::new(),
            ended: Mutex::new(HashSet::new()),
            watched: Mutex::new(HashMap::new()),
        });
        streams
            .tasks
            .spawn(watch(Arc::downgrade(&streams), streams.stream_timeout()));
        streams.tasks.spawn(tend(Arc::downgrade(&streams)));
        Ok(streams)
    }

    /// The node stops: other nodes take over its waiting requests now
    /// (and end the answers it was writing) instead of when its lease ends.
    pub async fn leave(self: &Arc<Self>) {
        match self.queue.leave().await {
            Ok(fx) => self.carry_out(fx).await,
            Err(e) => {
                tracing::warn!(error = %e, "leaving the assistant queue failed; other nodes take over when the lease ends");
            }
        }
    }

    fn stream_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.settings.stream_timeout_secs.max(0.0))
    }

    /// Queues an answer; returns its stream id once it is queued.
    async fn start_stream(self: Arc<Self>, req: StartStream) -> Result<StreamId, ChatError> {
        let assistant = self
            .assistants
            .get(&req.assistant_id)
            .cloned()
            .ok_or(ChatError::NotFound("assistant"))?;
        let entry = Entry {
            stream_id: StreamId::new(),
            conversation_id: req.conversation_id,
            user: req.requested_by.clone(),
            assistant: assistant.id.clone(),
            message_id: MessageId::new(),
            reply_to: req.reply_to.id,
            node: self.queue.node().to_owned(),
            queued_at: 0,
            started_at: None,
            told: 0,
        };
        let limits = self.queue.limits(&assistant.id);
        let per_user = self.settings.max_streams_per_user;
        let (queued, fx) = self
            .queue
            .update(|t, now| t.enqueue(entry.clone(), now, &limits, per_user))
            .await
            .map_err(queue_unavailable)?;
        self.carry_out(fx).await;
        match queued {
            Ok(()) => Ok(entry.stream_id),
            Err(Refusal::UserBusy | Refusal::QueueFull) => Err(ChatError::RateLimited {
                retry_after_ms: 1000,
            }),
        }
    }

    /// Does what a change of the queue decided: runs the requests it
    /// started here (and wakes the nodes of the others), and tells the
    /// conversations of requests that moved or were given up.
    async fn carry_out(self: &Arc<Self>, fx: Effects) {
        // Ends first, so a tab sees a request given up (or a dead node's
        // answer cut) before the next one starts in its place.
        for entry in &fx.cut {
            let _ = self.transcripts.end(&opening(entry)).await;
            let frame = error_frame(
                entry,
                ErrorCode::Interrupted,
                "the stream's node stopped answering".into(),
                None,
            );
            self.publish(entry, StreamStep::Other, true, &frame).await;
        }
        for entry in &fx.timed_out {
            self.metrics
                .assistant_errors
                .with_label_values(&["queue_timeout"])
                .inc();
            let frame = error_frame(
                entry,
                ErrorCode::Unavailable,
                "the assistant is busy: the request waited too long in its queue".into(),
                None,
            );
            self.publish(entry, StreamStep::Other, true, &frame).await;
        }
        let mut elsewhere = false;
        for entry in fx.started {
            if entry.node == self.queue.node() {
                self.run_if_new(entry);
            } else {
                elsewhere = true;
            }
        }
        if elsewhere {
            self.events.queue_moved().await;
        }
        for (entry, position) in &fx.moved {
            let frame = ServerFrame::StreamQueued {
                stream_id: entry.stream_id,
                conversation_id: entry.conversation_id,
                message_id: entry.message_id,
                reply_to: entry.reply_to,
                assistant_id: entry.assistant.clone(),
                position: *position,
            };
            self.publish(entry, StreamStep::Queued(fx.version), false, &frame)
                .await;
        }
    }

    /// Starts running `entry` here unless it runs or ran already.
    fn run_if_new(self: &Arc<Self>, entry: Entry) {
        if self.ended.lock().contains(&entry.stream_id) {
            return;
        }
        let cancel = CancellationToken::new();
        match self.active.entry(entry.stream_id) {
            dashmap::Entry::Occupied(_) => return,
            dashmap::Entry::Vacant(v) => {
                v.insert(Active {
                    entry: entry.clone(),
                    cancel: cancel.clone(),
                });
            }
        }
        self.metrics.streams_active.inc();
        let assistant = self.assistants.get(&entry.assistant);
        // In the trace of whatever started it (a frame, or the tending).
        let span = tracing::info_span!(
            "assistant.stream",
            stream_id = %entry.stream_id,
            conversation_id = %entry.conversation_id,
            assistant = %entry.assistant,
            model = assistant.map_or("", |a| a.settings.model.as_str()),
            provider = assistant.map_or("", |a| a.settings.provider.name()),
            finish_reason = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        self.tasks
            .spawn(self.clone().run(entry, cancel).instrument(span));
    }

    /// Tends the queue (see `TEND_EVERY`) and runs the requests the queue
    /// started for this node elsewhere.
    async fn tend(self: &Arc<Self>) {
        // A node that left takes nothing back.
        if self.queue.is_leaving() {
            return;
        }
        let ended: Vec<StreamId> = self.ended.lock().iter().copied().collect();
        let me = self.queue.node().to_owned();
        let assistants: Vec<String> = self.assistants.keys().cloned().collect();
        let result = self
            .queue
            .update(|t, _| {
                for id in &ended {
                    t.finish(*id);
                }
                // Answers this node still writes that the queue let go
                // (its lease ran out while Redis was away): back in. Read
                // now, not before the load: an answer that ended since
                // (it enters `ended` before it leaves the queue) stays out.
                let writing: Vec<Entry> = self.active.iter().map(|a| a.entry.clone()).collect();
                let done = self.ended.lock().clone();
                let lost: Vec<Entry> = writing
                    .into_iter()
                    .filter(|e| t.find(e.stream_id).is_none() && !done.contains(&e.stream_id))
                    .collect();
                t.restore(lost);
                let mine: Vec<Entry> = t
                    .entries()
                    .filter(|e| e.node == me && e.started_at.is_some())
                    .cloned()
                    .collect();
                let counts: Vec<(usize, usize)> = assistants.iter().map(|a| t.counts(a)).collect();
                (mine, counts)
            })
            .await;
        let ((mine, counts), fx) = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::debug!(error = %e, "tending the assistant queue failed; retrying");
                return;
            }
        };
        // Every one of them is out of the queue now; those whose task has
        // not yet let go of them stay marked, so no tending puts them back.
        let writing: HashSet<StreamId> = self.active.iter().map(|a| *a.key()).collect();
        self.ended
            .lock()
            .retain(|id| !ended.contains(id) || writing.contains(id));
        for (a, (waiting, running)) in assistants.iter().zip(counts) {
            self.metrics
                .assistant_queue_waiting
                .with_label_values(&[a])
                .set(waiting as i64);
            self.metrics
                .assistant_queue_running
                .with_label_values(&[a])
                .set(running as i64);
        }
        self.carry_out(fx).await;
        for entry in mine {
            self.run_if_new(entry);
        }
    }

    async fn run(self: Arc<Self>, entry: Entry, cancel: CancellationToken) {
        let stream_id = entry.stream_id;
        let open = opening(&entry);
        if let Some(started) = entry.started_at {
            self.metrics
                .assistant_queue_wait
                .with_label_values(&[&entry.assistant])
                .observe((started - entry.queued_at).max(0) as f64 / 1000.0);
        }
        let last = match self.prepare(&entry).await {
            Ok((assistant, reply_to)) => {
                self.write(&entry, &open, &assistant, &reply_to, &cancel)
                    .await
            }
            Err(frame) => frame,
        };
        if let Err(e) = self.transcripts.end(&open).await {
            tracing::warn!(error = %e, "ending the transcript failed; it expires by itself");
        }
        self.publish(&entry, StreamStep::Other, true, &last).await;
        // Out of the queue after the last frame, so the next answer in the
        // conversation starts after this one ended, on every tab.
        // Kept until a tending that read it prunes it: a read older than
        // this update must not start the stream again.
        self.ended.lock().insert(stream_id);
        match self.queue.update(|t, _| t.finish(stream_id)).await {
            Ok((_, fx)) => self.carry_out(fx).await,
            Err(e) => {
                tracing::warn!(error = %e, "leaving the assistant queue failed; the next tending retries");
            }
        }
        self.active.remove(&stream_id);
        self.metrics.streams_active.dec();
    }

    /// What running `entry` needs: its assistant (configured here) and the
    /// message it answers (still there). Otherwise, the frame that ends it.
    async fn prepare(&self, entry: &Entry) -> Result<(Arc<Assistant>, Message), ServerFrame> {
        let assistant = self
            .assistants
            .get(&entry.assistant)
            .cloned()
            .ok_or_else(|| {
                error_frame(
                    entry,
                    ErrorCode::NotFound,
                    "this assistant is not configured on the node that ran the request".into(),
                    None,
                )
            })?;
        match self
            .store
            .message(entry.conversation_id, entry.reply_to)
            .await
        {
            Ok(Some(m)) if !m.deleted => Ok((assistant, m)),
            Ok(_) => Err(error_frame(
                entry,
                ErrorCode::NotFound,
                "the message to answer is gone".into(),
                None,
            )),
            Err(e) => {
                let err = ChatError::from(e);
                Err(error_frame(entry, err.code(), err.client_message(), None))
            }
        }
    }

    /// Writes the answer: its start, its pieces, and its end, stored.
    /// Returns the frame that tells the conversation how it ended.
    async fn write(
        self: &Arc<Self>,
        entry: &Entry,
        open: &Opening,
        assistant: &Assistant,
        reply_to: &Message,
        cancel: &CancellationToken,
    ) -> ServerFrame {
        if let Err(e) = self.transcripts.begin(open, self.stream_timeout()).await {
            tracing::warn!(error = %e, "starting the transcript failed; joiners get no snapshot");
        }
        let start = ServerFrame::StreamStart {
            stream_id: entry.stream_id,
            conversation_id: entry.conversation_id,
            message_id: entry.message_id,
            reply_to: entry.reply_to,
            assistant_id: entry.assistant.clone(),
        };
        self.publish(entry, StreamStep::Start, false, &start).await;
        let heartbeat = CancellationToken::new();
        self.tasks.spawn(
            self.clone()
                .heartbeat(open.clone(), heartbeat.clone())
                .in_current_span(),
        );
        let outcome = match self
            .context(entry.conversation_id, reply_to, assistant)
            .await
        {
            Ok(turns) => self.generate(open, assistant, turns, cancel).await,
            Err(e) => Outcome {
                error: Some(ProviderError::Upstream(format!(
                    "cannot read the history: {e}"
                ))),
                ..Outcome::default()
            },
        };
        heartbeat.cancel();
        self.finish(entry, assistant, outcome).await
    }

    /// The history up to the message answered, newest `max_history_messages`,
    /// as edited; deleted messages are never sent to a provider.
    async fn context(
        &self,
        conv: ConversationId,
        reply_to: &Message,
        assistant: &Assistant,
    ) -> Result<Vec<Turn>, sea_orm::DbErr> {
        let limit = assistant.settings.max_history_messages.max(1);
        let (history, _) = self
            .store
            .messages_before(conv, Some(Seq(reply_to.seq.0 + 1)), limit)
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
        open: &Opening,
        assistant: &Assistant,
        turns: Vec<Turn>,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut out = Outcome::default();
        let request = CompletionRequest {
            model: assistant.settings.model.clone(),
            turns,
        };
        let mut retries = 0;
        let mut stream = loop {
            // The assistant may be paused for every node (a 429 elsewhere).
            let attempt = tokio::select! {
                _ = cancel.cancelled() => {
                    out.cancelled = true;
                    return out;
                }
                r = async {
                    self.wait_out_pause(&assistant.id).await;
                    assistant.provider.stream(request.clone()).await
                } => r,
            };
            match attempt {
                Ok(stream) => break stream,
                Err(ProviderError::RateLimited { retry_after })
                    if retries < self.settings.retry_budget =>
                {
                    retries += 1;
                    self.metrics
                        .assistant_errors
                        .with_label_values(&["rate_limited"])
                        .inc();
                    self.pause(&assistant.id, retry_after.unwrap_or(Duration::from_secs(1)))
                        .await;
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        };

        let coalesce = Duration::from_millis(self.settings.coalesce_ms);
        let max_chars = self.settings.max_answer_chars.max(1);
        let mut chars = 0;
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
                    self.flush(open, &mut pending, &mut index).await;
                    flush_at = None;
                }
                item = stream.next() => match item {
                    Some(Ok(Chunk::Delta(mut d))) => {
                        self.metrics.assistant_tokens.inc();
                        let n = d.chars().count();
                        let full = chars + n >= max_chars;
                        if chars + n > max_chars {
                            let keep = d.char_indices().nth(max_chars - chars).map_or(d.len(), |(i, _)| i);
                            d.truncate(keep);
                        }
                        chars += d.chars().count();
                        out.text.push_str(&d);
                        pending.push_str(&d);
                        if full {
                            out.finish = Some("length".into());
                            break;
                        }
                        if coalesce.is_zero() {
                            self.flush(open, &mut pending, &mut index).await;
                        } else if flush_at.is_none() {
                            flush_at = Some(Instant::now() + coalesce);
                        }
                    }
                    Some(Ok(Chunk::Usage(u))) => out.usage = Some(u),
                    Some(Ok(Chunk::Finish(r))) => out.finish = Some(r),
                    Some(Ok(Chunk::Citations(c))) => out.citations.extend(c),
                    Some(Err(e)) => {
                        out.error = Some(e);
                        break;
                    }
                    None => break,
                },
            }
        }
        self.flush(open, &mut pending, &mut index).await;
        out
    }

    /// Waits while the assistant is paused for every node (at most
    /// `max_retry_wait_secs`). A queue that cannot be read does not hold
    /// the answer back.
    async fn wait_out_pause(&self, assistant: &str) {
        let Ok(loaded) = self.queue.read().await else {
            return;
        };
        let until = loaded.table.map_or(0, |t| t.paused_until(assistant));
        if until > loaded.now {
            let cap = Duration::from_secs_f64(self.settings.max_retry_wait_secs.max(0.0));
            let wait = Duration::from_millis((until - loaded.now) as u64).min(cap);
            tokio::time::sleep(wait).await;
        }
    }

    /// Pauses the assistant for every node: the provider said 429.
    async fn pause(&self, assistant: &str, retry_after: Duration) {
        let cap = Duration::from_secs_f64(self.settings.max_retry_wait_secs.max(0.0));
        let ms = retry_after.min(cap).as_millis() as i64;
        if let Err(e) = self
            .queue
            .update(|t, now| t.pause(assistant, now + ms))
            .await
        {
            tracing::warn!(error = %e, "pausing the assistant failed; waiting here only");
            tokio::time::sleep(Duration::from_millis(ms as u64)).await;
        }
    }

    /// Sends the text gathered since the last piece: to the transcript,
    /// then to the conversation.
    async fn flush(&self, open: &Opening, pending: &mut String, index: &mut u64) {
        if pending.is_empty() {
            return;
        }
        let content = std::mem::take(pending);
        let ttl = self.stream_timeout();
        if let Err(e) = self.transcripts.append(open, *index, &content, ttl).await {
            tracing::warn!(error = %e, "appending to the transcript failed; joiners may get no snapshot");
        }
        let frame = ServerFrame::StreamContent {
            stream_id: open.stream_id,
            conversation_id: open.conversation_id,
            message_id: open.message_id,
            content,
            index: *index,
            is_complete: false,
        };
        self.events
            .stream(
                open.conversation_id,
                open.stream_id,
                StreamStep::Content(*index),
                false,
                Some(&frame),
            )
            .await;
        *index += 1;
    }

    /// Stores what was produced and its usage; returns the frame that
    /// tells the conversation how it ended (`stream_complete` or
    /// `stream_error`).
    async fn finish(&self, entry: &Entry, assistant: &Assistant, out: Outcome) -> ServerFrame {
        let conv = entry.conversation_id;
        let finish_reason = if out.cancelled {
            "cancelled".to_string()
        } else if out.error.is_some() {
            "error".to_string()
        } else {
            out.finish.clone().unwrap_or_else(|| "stop".into())
        };
        let usage = out.usage.unwrap_or_default();
        tracing::Span::current().record("finish_reason", finish_reason.as_str());
        self.count(entry, assistant, &finish_reason, out.usage)
            .await;
        let mut stored = None;
        if !out.text.is_empty() {
            let mut metadata = serde_json::json!({
                "assistant_id": assistant.id,
                "model": assistant.settings.model,
                "finish_reason": finish_reason,
                "usage": out.usage,
                "stream_id": entry.stream_id,
                "reply_to": entry.reply_to,
                "requested_by": entry.user,
            });
            if !out.citations.is_empty() {
                metadata["citations"] = serde_json::json!(out.citations);
            }
            let new = NewMessage {
                id: Some(entry.message_id),
                conversation_id: conv,
                sender_id: assistant.sender.clone(),
                message_type: MessageType::Assistant,
                content: out.text.clone(),
                client_msg_id: None,
                metadata: Some(metadata),
                reply_to: Some(entry.reply_to),
            };
            match self.events.append(new).await {
                Ok(appended) => stored = Some(appended.message),
                // The conversation is gone.
                Err(ChatError::NotFound(_)) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "storing the assistant answer failed");
                    return error_frame(entry, err.code(), err.client_message(), None);
                }
            }
        }
        match out.error {
            None => ServerFrame::StreamComplete {
                stream_id: entry.stream_id,
                conversation_id: conv,
                message_id: entry.message_id,
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
                error_frame(entry, code, e.to_string(), retry)
            }
        }
    }

    /// Counts an answer that ran: per assistant in the metrics, per user
    /// in the store.
    async fn count(
        &self,
        entry: &Entry,
        assistant: &Assistant,
        finish: &str,
        usage: Option<Usage>,
    ) {
        // The label stays a bounded set.
        let finish = if STREAM_FINISHES.contains(&finish) {
            finish
        } else {
            "other"
        };
        self.metrics
            .assistant_streams
            .with_label_values(&[&assistant.id, finish])
            .inc();
        // An answer without usage reported counts as one with no tokens.
        let usage = usage.unwrap_or_default();
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            self.metrics
                .assistant_usage_tokens
                .with_label_values(&[&assistant.id, kind])
                .inc_by(n);
        }
        let record = UsageRecord {
            stream_id: entry.stream_id,
            user_id: entry.user.clone(),
            assistant_id: assistant.id.clone(),
            conversation_id: entry.conversation_id,
            usage,
            created_at: crate::store::now(),
        };
        if let Err(e) = self.store.record_usage(&record).await {
            tracing::warn!(error = %e, "recording the answer's usage failed");
        }
    }

    /// Tells every node the stream is alive and keeps its transcript,
    /// until stopped.
    async fn heartbeat(self: Arc<Self>, open: Opening, stop: CancellationToken) {
        let every = Duration::from_secs_f64(self.settings.heartbeat_secs.max(0.05));
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.events
                        .stream(open.conversation_id, open.stream_id, StreamStep::Other, false, None)
                        .await;
                    if let Err(e) = self.transcripts.keep(&open, self.stream_timeout()).await {
                        tracing::debug!(error = %e, "keeping the transcript failed");
                    }
                }
            }
        }
    }

    async fn publish(&self, entry: &Entry, step: StreamStep, end: bool, frame: &ServerFrame) {
        self.events
            .stream(
                entry.conversation_id,
                entry.stream_id,
                step,
                end,
                Some(frame),
            )
            .await;
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

    async fn conversation_of(&self, stream: StreamId) -> Result<Option<ConversationId>, ChatError> {
        let loaded = self.queue.read().await.map_err(queue_unavailable)?;
        Ok(loaded
            .table
            .and_then(|t| t.find(stream).map(|e| e.conversation_id)))
    }

    async fn cancel(&self, stream: StreamId, by: &UserId) -> Result<(), ChatError> {
        let me = self
            .me
            .upgrade()
            .ok_or(ChatError::Unavailable("the node is stopping".into()))?;
        let (waiting, fx) = self
            .queue
            .update(|t, _| t.cancel(stream))
            .await
            .map_err(queue_unavailable)?;
        match waiting {
            // It never ran: nothing is stored. Its end is told before the
            // moves of the requests behind it.
            Some(entry) => {
                let frame = ServerFrame::StreamComplete {
                    stream_id: stream,
                    conversation_id: entry.conversation_id,
                    message_id: entry.message_id,
                    message: None,
                    usage: Usage::default(),
                    finish_reason: "cancelled".into(),
                };
                self.publish(&entry, StreamStep::Other, true, &frame).await;
            }
            // It runs (or is about to): its node stops it.
            None => self.events.cancel_stream(stream, by).await,
        }
        me.carry_out(fx).await;
        Ok(())
    }
}

#[async_trait]
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

    fn queue_moved(&self) {
        if let Some(me) = self.me.upgrade() {
            self.tasks.spawn(async move { me.tend().await });
        }
    }

    async fn catch_up(&self, conv: ConversationId) -> Result<Vec<CatchUp>, String> {
        // The queue as this node last saw it (at most a tending old), so a
        // wave of joins reads no table: a request queued in between is
        // told to the joiner at its next move, or its start.
        let (queue, transcript) = tokio::join!(self.queue.latest(), self.transcripts.read(conv));
        let mut found = Vec::new();
        if let Some(t) = transcript.map_err(|e| e.to_string())? {
            let o = &t.opening;
            let mut frames = vec![ServerFrame::StreamStart {
                stream_id: o.stream_id,
                conversation_id: o.conversation_id,
                message_id: o.message_id,
                reply_to: o.reply_to,
                assistant_id: o.assistant_id.clone(),
            }
            .encode()
            .into()];
            let upto = (t.pieces.len() as u64).checked_sub(1);
            if let Some(index) = upto {
                frames.push(
                    ServerFrame::StreamSnapshot {
                        stream_id: o.stream_id,
                        conversation_id: o.conversation_id,
                        message_id: o.message_id,
                        content: t.pieces.concat(),
                        index,
                    }
                    .encode()
                    .into(),
                );
            }
            found.push(CatchUp {
                stream_id: o.stream_id,
                frames,
                covers: Covers::Running { upto },
            });
        }
        if let Some(table) = queue.map_err(|e| e.to_string())? {
            for e in table.waiting_in(conv) {
                // Read in the other order, it may have started meanwhile.
                if found.iter().any(|c| c.stream_id == e.stream_id) {
                    continue;
                }
                let frame = ServerFrame::StreamQueued {
                    stream_id: e.stream_id,
                    conversation_id: e.conversation_id,
                    message_id: e.message_id,
                    reply_to: e.reply_to,
                    assistant_id: e.assistant.clone(),
                    position: e.told,
                };
                found.push(CatchUp {
                    stream_id: e.stream_id,
                    frames: vec![frame.encode().into()],
                    covers: Covers::Queued {
                        version: table.version,
                    },
                });
            }
        }
        Ok(found)
    }

    fn cancel(&self, stream: StreamId, by: UserId) {
        let Some(active) = self.active.get(&stream).map(|a| {
            (
                a.entry.conversation_id,
                a.cancel.clone(),
                a.entry.user.clone(),
            )
        }) else {
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
    entry: &Entry,
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
) -> ServerFrame {
    ServerFrame::StreamError {
        stream_id: entry.stream_id,
        conversation_id: entry.conversation_id,
        code,
        message,
        retry_after_ms,
    }
}

/// What `stream_start` tells of a request.
fn opening(entry: &Entry) -> Opening {
    Opening {
        stream_id: entry.stream_id,
        conversation_id: entry.conversation_id,
        message_id: entry.message_id,
        reply_to: entry.reply_to,
        assistant_id: entry.assistant.clone(),
    }
}

fn queue_unavailable(e: QueueError) -> ChatError {
    tracing::warn!(error = %e, "assistant queue error");
    ChatError::Unavailable("the assistants' queue is unavailable".into())
}

/// Tends the queue every `TEND_EVERY` while the node runs.
async fn tend(streams: Weak<Streams>) {
    let mut tick = tokio::time::interval(TEND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(streams) = streams.upgrade() else {
            return;
        };
        streams.tend().await;
    }
}
