//! The event bus between nodes: the seam where the in-process bus (one node)
//! and the Redis bus (a cluster) plug in. Above this module nothing knows
//! which one runs.
//!
//! An [`Event`] carries the client-ready JSON of one server frame, serialized
//! once by the publisher, plus the little the receiving hub needs to route
//! it: its topic and its kind (ordered message, ephemeral, membership, notice).

mod local;
mod redis;

use std::future::Future;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

pub use local::LocalBus;
pub use redis::{client_builder, fail_fast, RedisBus};

use crate::model::{ConnectionId, ConversationId, MessageId, Seq, StreamId, UserId};

/// Where an event goes: everyone joined to a conversation, every socket of a
/// user, or every node (stream control).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    Conversation(ConversationId),
    User(UserId),
    Streams,
}

/// How the receiving hub treats an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A log entry (a stored message or change): delivered in seq order,
    /// once per socket.
    Message {
        seq: Seq,
        /// The message the entry is about: a new one, or a change's target
        /// (absent in events of nodes that predate changes).
        #[serde(default)]
        message: Option<MessageId>,
    },
    /// Typing, read receipts, stream tokens: delivered as they come, to
    /// every joined socket but `except` (the one that caused it).
    Ephemeral { except: Option<ConnectionId> },
    /// The participants changed: drop cached membership; detach `removed`.
    Membership { removed: Option<UserId> },
    /// A user-level notice; sockets joined to `skip_joined` are skipped
    /// (they receive the same event on the conversation topic).
    Notice { skip_joined: Option<ConversationId> },
    /// An assistant stream's event (queued, start, content, heartbeat with
    /// an empty payload, or its `end`): nodes track which streams are
    /// alive, and rooms which ones a joiner must be caught up on.
    Stream {
        stream_id: StreamId,
        end: bool,
        #[serde(default)]
        step: StreamStep,
    },
    /// On `Topic::Streams`: the assistants' queue started requests that
    /// other nodes run; each node looks for its own.
    QueueMoved,
    /// On `Topic::Streams`: a participant asks to stop a stream.
    Cancel { stream_id: StreamId, by: UserId },
    /// On a user's topic: client frames POSTed on another node for this
    /// connection of the user (the HTTP transport); the payload is their
    /// JSON array. The node holding the connection handles them.
    Frames { connection: ConnectionId },
}

/// Which frame of a stream an event carries, so a room can tell what a
/// joiner's catch-up (`stream_queued`, or `stream_start` and
/// `stream_snapshot`) already covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStep {
    /// A heartbeat, an end, or an event of a node that predates catch-up.
    #[default]
    Other,
    /// `stream_queued`, told at this version of the queue.
    Queued(u64),
    /// `stream_start`.
    Start,
    /// `stream_content` of this index.
    Content(u64),
}

/// One event on the bus.
#[derive(Clone, Debug)]
pub struct Event {
    pub topic: Topic,
    pub kind: EventKind,
    /// The server frame's JSON text, exactly as sockets receive it (may be
    /// empty for internal events such as `Membership`).
    pub payload: Bytes,
    /// When it was published (unix microseconds), for the
    /// publish-to-delivery latency every receiving node measures.
    pub published_at_us: i64,
    /// The W3C `traceparent` of the span that published it, so one trace
    /// follows an event from the node that made it to every node that
    /// delivers it.
    pub traceparent: Option<String>,
}

impl Event {
    /// An event published now.
    pub fn new(topic: Topic, kind: EventKind, payload: Bytes) -> Self {
        Self {
            topic,
            kind,
            payload,
            published_at_us: chrono::Utc::now().timestamp_micros(),
            traceparent: None,
        }
    }

    /// A `bus.deliver` span for this event: in the trace of the span that
    /// published it, on whichever node that ran.
    pub fn deliver_span(&self) -> tracing::Span {
        let span = tracing::debug_span!(
            "bus.deliver",
            bus.topic = self.topic.label(),
            bus.kind = self.kind.label(),
            conversation_id = tracing::field::Empty,
            sockets = tracing::field::Empty,
        );
        if let Topic::Conversation(id) = &self.topic {
            span.record("conversation_id", tracing::field::display(id));
        }
        if let Some(tp) = &self.traceparent {
            crate::telemetry::set_remote_parent(&span, tp);
        }
        span
    }
}

impl Topic {
    /// A short name of the topic's kind, for spans.
    fn label(&self) -> &'static str {
        match self {
            Topic::Conversation(_) => "conversation",
            Topic::User(_) => "user",
            Topic::Streams => "streams",
        }
    }
}

impl EventKind {
    /// A short name of the kind, for spans.
    fn label(&self) -> &'static str {
        match self {
            EventKind::Message { .. } => "message",
            EventKind::Ephemeral { .. } => "ephemeral",
            EventKind::Membership { .. } => "membership",
            EventKind::Notice { .. } => "notice",
            EventKind::Stream { .. } => "stream",
            EventKind::Cancel { .. } => "cancel",
            EventKind::QueueMoved => "queue",
            EventKind::Frames { .. } => "frames",
        }
    }
}

/// Runs `send` inside a `bus.publish` span and stamps the event with that
/// span's `traceparent` first (every bus publishes through this).
async fn traced_publish<F, Fut>(mut event: Event, send: F) -> Result<(), BusError>
where
    F: FnOnce(Event) -> Fut,
    Fut: Future<Output = Result<(), BusError>>,
{
    let span = tracing::debug_span!(
        "bus.publish",
        bus.topic = event.topic.label(),
        bus.kind = event.kind.label(),
        conversation_id = tracing::field::Empty,
    );
    if let Topic::Conversation(id) = &event.topic {
        span.record("conversation_id", tracing::field::display(id));
    }
    async move {
        if event.traceparent.is_none() {
            event.traceparent = crate::telemetry::traceparent();
        }
        send(event).await
    }
    .instrument(span)
    .await
}

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Receives what the bus delivers: implemented by the hub.
pub trait EventSink: Send + Sync {
    /// An event on a topic this node subscribed to.
    fn deliver(&self, event: Arc<Event>);
    /// The bus may have lost events (it reconnected, or its receiver
    /// lagged): catch up from the store, retrying until it succeeds.
    fn resync(&self);
}

/// Publish/subscribe between nodes.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Sends an event to every node subscribed to its topic, this one included.
    async fn publish(&self, event: Event) -> Result<(), BusError>;
    /// Starts receiving the topic's events. Completes once subscribed.
    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError>;
    /// Stops receiving the topic's events.
    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError>;
    /// Where received events go. Called once, at node start.
    fn attach(&self, sink: Weak<dyn EventSink>);
    /// True while the bus can deliver (for readiness).
    async fn healthy(&self) -> bool;
    /// Closes the bus's connections, once the node has stopped (nothing is
    /// delivered after it).
    async fn close(&self);
}
