//! The bus's one callback: each event goes where it belongs. Entries
//! (stored, with a seq) and ephemeral frames of a conversation go to its
//! room; a membership change to the room and the cached access; a user's
//! notice to their connections; stream events to the node's assistants
//! too, which watch that streams stay alive and stop the ones cancelled.

use std::sync::{Arc, Weak};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Entry, Hub, Posted};
use crate::bus::{Event, EventKind, EventSink, Topic};
use crate::model::{ConnectionId, ConversationId, StreamId, UserId};

/// What the node's assistants hear of streams: every stream event seen in
/// a conversation joined here (to tell a stream whose node went silent),
/// and cancels, from any node, for the streams they run.
pub trait StreamEvents: Send + Sync {
    /// A stream of `conv` is alive (`end`: it ended).
    fn heard(&self, conv: ConversationId, stream: StreamId, end: bool);
    /// A participant asks to stop `stream`.
    fn cancel(&self, stream: StreamId, by: UserId);
    /// This node no longer follows `conv`: what was heard of its streams
    /// is stale (their end would not be heard).
    fn forget(&self, conv: ConversationId);
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
            EventKind::Stream { stream_id, end } => {
                if let Some(streams) = self.stream_events() {
                    streams.heard(*conv, *stream_id, *end);
                }
                if frame.is_empty() {
                    0
                } else {
                    room.state.lock().on_ephemeral(&frame, None)
                }
            }
            EventKind::Notice { .. } | EventKind::Cancel { .. } | EventKind::Frames { .. } => 0,
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
