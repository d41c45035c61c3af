//! The bus's one callback: each event goes where it belongs. Entries
//! (stored, with a seq) and ephemeral frames of a conversation go to its
//! room; a membership change to the room and the cached access; a user's
//! notice to their connections; stream events to the node's assistants
//! too, which watch that streams stay alive and stop the ones cancelled.

use std::sync::{Arc, Weak};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use async_trait::async_trait;

use super::{Entry, Hub, Posted};
use crate::bus::{Event, EventKind, EventSink, StreamStep, Topic};
use crate::model::{ConnectionId, ConversationId, StreamId, UserId};

/// What the node's assistants hear of streams, and what they tell joiners:
/// every stream event seen in a conversation joined here (to tell a stream
/// whose node went silent), cancels and queue moves from any node, and the
/// streams a connection joining a conversation must be caught up on.
#[async_trait]
pub trait StreamEvents: Send + Sync {
    /// A stream of `conv` is alive (`end`: it ended).
    fn heard(&self, conv: ConversationId, stream: StreamId, end: bool);
    /// A participant asks to stop `stream`.
    fn cancel(&self, stream: StreamId, by: UserId);
    /// The queue started requests that other nodes run: run this node's.
    fn queue_moved(&self);
    /// This node no longer follows `conv`: what was heard of its streams
    /// is stale (their end would not be heard).
    fn forget(&self, conv: ConversationId);
    /// The streams of `conv` waiting or being written now, with the frames
    /// that tell a joiner where each stands.
    async fn catch_up(&self, conv: ConversationId) -> Result<Vec<CatchUp>, String>;
}

/// Where a stream stands, for a connection that joins its conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct CatchUp {
    pub stream_id: StreamId,
    /// `stream_queued`, or `stream_start` and (with text) `stream_snapshot`.
    pub frames: Vec<Utf8Bytes>,
    /// Which live events these frames make redundant.
    pub covers: Covers,
}

/// The live events of a stream that a catch-up already covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Covers {
    /// Positions told up to this version of the queue.
    Queued { version: u64 },
    /// Its start, and its text up to this piece (None: no text yet).
    Running { upto: Option<u64> },
}

impl Covers {
    /// True if a live event of the stream says nothing the catch-up did not.
    pub fn covers(&self, step: StreamStep, end: bool) -> bool {
        if end {
            return false;
        }
        match (self, step) {
            (Covers::Queued { version }, StreamStep::Queued(v)) => v <= *version,
            (Covers::Running { .. }, StreamStep::Queued(_) | StreamStep::Start) => true,
            (Covers::Running { upto: Some(upto) }, StreamStep::Content(i)) => i <= *upto,
            _ => false,
        }
    }
}

impl Hub {
    pub(super) fn stream_events(&self) -> Option<Arc<dyn StreamEvents>> {
        self.streams.get().and_then(Weak::upgrade)
    }

    /// Routes an event of a conversation topic; returns how many local
    /// connections got a frame.
    fn route_conversation(
        &self,
        conv: &ConversationId,
        kind: &EventKind,
        frame: Utf8Bytes,
    ) -> usize {
        let Some(room) = self.rooms.get(conv).map(|r| r.clone()) else {
            return 0;
        };
        match kind {
            EventKind::Message { seq, message } => {
                let entry = Entry {
                    seq: *seq,
                    message: *message,
                    frame,
                };
                let (sent, gap) = room.state.lock().on_entry(entry);
                if gap {
                    self.start_recovery(&room);
                }
                sent
            }
            EventKind::Ephemeral { except } => room.state.lock().on_ephemeral(&frame, *except),
            EventKind::Membership { removed } => {
                self.on_membership(&room, removed.as_ref(), &frame);
                0
            }
            EventKind::Stream {
                stream_id,
                end,
                step,
            } => {
                // A queued stream sends no heartbeat: it is not watched.
                if !matches!(step, StreamStep::Queued(_)) {
                    if let Some(streams) = self.stream_events() {
                        streams.heard(*conv, *stream_id, *end);
                    }
                }
                room.state.lock().on_stream(*stream_id, *step, *end, frame)
            }
            EventKind::Notice { .. }
            | EventKind::Cancel { .. }
            | EventKind::QueueMoved
            | EventKind::Frames { .. } => 0,
        }
    }
}

impl Hub {
    /// Hands frames POSTed on another node to the local connection they
    /// are for. One that is gone drops them (its client reconnects).
    fn post_frames(&self, user: &UserId, connection: ConnectionId, payload: &[u8]) {
        let Some(conn) = self.connection(user, connection) else {
            return;
        };
        let Some(frames) = split_frames(payload) else {
            tracing::warn!("dropped POSTed frames that are not a JSON array");
            return;
        };
        // A full queue is noted on the connection, whose session tells
        // the client.
        let _ = conn.post(frames);
    }
}

/// The frames of a JSON array, each as its own text.
fn split_frames(payload: &[u8]) -> Option<Posted> {
    let frames: Vec<&serde_json::value::RawValue> = serde_json::from_slice(payload).ok()?;
    Some(
        frames
            .into_iter()
            .map(|f| Utf8Bytes::from(f.get().to_owned()))
            .collect(),
    )
}

impl EventSink for Hub {
    fn deliver(&self, event: Arc<Event>) {
        let span = event.deliver_span();
        let _entered = span.enter();
        let age_us = chrono::Utc::now().timestamp_micros() - event.published_at_us;
        self.metrics
            .delivery_latency
            .observe(age_us.max(0) as f64 / 1e6);
        let Ok(frame) = Utf8Bytes::try_from(event.payload.clone()) else {
            tracing::warn!("dropped a bus event that is not UTF-8");
            return;
        };
        let sent = match (&event.topic, &event.kind) {
            (Topic::Conversation(conv), kind) => self.route_conversation(conv, kind, frame),
            (Topic::Streams, EventKind::Cancel { stream_id, by }) => {
                if let Some(streams) = self.stream_events() {
                    streams.cancel(*stream_id, by.clone());
                }
                0
            }
            (Topic::Streams, EventKind::QueueMoved) => {
                if let Some(streams) = self.stream_events() {
                    streams.queue_moved();
                }
                0
            }
            (Topic::User(user), EventKind::Notice { skip_joined }) => {
                self.notify_user(user, *skip_joined, &frame)
            }
            (Topic::User(user), EventKind::Frames { connection }) => {
                self.post_frames(user, *connection, &event.payload);
                0
            }
            (Topic::Streams | Topic::User(_), _) => 0,
        };
        span.record("sockets", sent);
        self.metrics.events_delivered.inc_by(sent as u64);
    }

    /// Every room may have missed entries while the bus was away: each
    /// falls behind and catches up from the history, retrying until it can.
    fn resync(&self) {
        self.metrics.bus_resyncs.inc();
        self.resync_all();
    }
}
