//! The one path of events out of a node. A durable change (a message) is
//! stored, its event built once and published on its conversation's topic;
//! conversation changes and ephemeral events (typing, read receipts, stream
//! tokens, cancels) are built and published here too. Every frame a bus
//! event carries is made in this module, so is the frame the hub replays
//! from the store (`StoredHistory`): a live entry and a replayed one are the
//! same bytes.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Bus, Event, EventKind, StreamStep, Topic};
use crate::error::ChatError;
use crate::hub::{Entry, History, HistoryError, Hub, Page};
use crate::metrics::Metrics;
use crate::model::{
    ConnectionId, Conversation, ConversationId, LogEntry, Message, Seq, StreamId, UpdateReason,
    UserId,
};
use crate::protocol::ServerFrame;
use crate::store::{Appended, ChangeOrder, Changed, NewMessage, Store, Submitted};

/// Publishes what happens in conversations, on every node.
pub struct Events {
    store: Store,
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

/// The `message_received` frame of a stored message: what every connection
/// joined to its conversation receives, live or replayed.
pub fn message_frame(message: Message) -> Utf8Bytes {
    ServerFrame::MessageReceived { message }.encode().into()
}

/// The frame of a log entry: `message_received` for a new message,
/// `message_updated` for a change.
fn entry_frame(entry: LogEntry) -> Utf8Bytes {
    match entry {
        LogEntry::Message(message) => message_frame(message),
        LogEntry::Change {
            seq,
            change,
            message,
        } => ServerFrame::MessageUpdated {
            conversation_id: message.conversation_id,
            seq,
            change,
            message,
        }
        .encode()
        .into(),
    }
}

impl Events {
    pub fn new(store: Store, bus: Arc<dyn Bus>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            bus,
            hub,
            metrics,
        }
    }

    // ------------------------------------------------------------ durable

    /// Stores a message and publishes it: the way of every message (a
    /// REST send, an assistant's answer). A retry of a stored send (same
    /// `client_msg_id`) stores and publishes nothing.
    pub async fn append(&self, new: NewMessage) -> Result<Appended, ChatError> {
        let stored = self.submit(new).await;
        self.publish_stored(stored.await).await
    }

    /// The first half of `append`, for a sender that queues its next
    /// message before this one is stored (see `Store::submit`).
    pub async fn submit(&self, new: NewMessage) -> Submitted {
        self.store.submit(new).await
    }

    /// The second half of `append`: publishes a newly stored message.
    pub async fn publish_stored(
        &self,
        stored: Result<Option<Appended>, sea_orm::DbErr>,
    ) -> Result<Appended, ChatError> {
        let appended = stored?.ok_or(ChatError::NotFound("conversation"))?;
        if !appended.duplicate {
            self.metrics.messages_stored.inc();
            let message = &appended.message;
            self.publish(
                Topic::Conversation(message.conversation_id),
                EventKind::Message {
                    seq: message.seq,
                    message: Some(message.id),
                },
                message_frame(message.clone()).into(),
            )
            .await;
        }
        Ok(appended)
    }

    /// Stores a change of a message and publishes it, unless it changes
    /// nothing.
    pub async fn change(&self, order: &ChangeOrder) -> Result<Changed, ChatError> {
        let changed = self.store.change(order).await??;
        if let Changed::Stored {
            seq,
            change,
            message,
        } = &changed
        {
            self.metrics.changes_stored.inc();
            let kind = EventKind::Message {
                seq: *seq,
                message: Some(message.id),
            };
            let entry = LogEntry::Change {
                seq: *seq,
                change: change.clone(),
                message: message.clone(),
            };
            let frame = entry_frame(entry);
            self.publish(
                Topic::Conversation(order.conversation_id),
                kind,
                frame.into(),
            )
            .await;
        }
        Ok(changed)
    }

    /// A stored change of a conversation (created, participants, archived):
    /// every node forgets its cached access (and detaches `removed`, who
    /// gets `left`), and every tab of every participant, and of `removed`,
    /// gets `conversation_updated`.
    pub async fn conversation_changed(
        &self,
        conv: &Conversation,
        reason: UpdateReason,
        removed: Option<&UserId>,
    ) {
        if reason != UpdateReason::Created {
            let left = match removed {
                Some(_) => encode(&ServerFrame::Left {
                    conversation_id: conv.id,
                    reply_to: None,
                }),
                None => Bytes::new(),
            };
            let kind = EventKind::Membership {
                removed: removed.cloned(),
            };
            self.publish(Topic::Conversation(conv.id), kind, left).await;
        }
        let updated = encode(&ServerFrame::ConversationUpdated {
            conversation: conv.clone(),
            reason,
        });
        for user in conv.participants.iter().chain(removed) {
            let kind = EventKind::Notice { skip_joined: None };
            self.publish(Topic::User(user.clone()), kind, updated.clone())
                .await;
        }
    }

    // ------------------------------------------------------------ ephemeral

    /// `user` is (not) typing, from connection `from` (which is not told).
    pub async fn typing(
        &self,
        from: ConnectionId,
        user: &UserId,
        conv: ConversationId,
        is_typing: bool,
    ) {
        let frame = encode(&ServerFrame::TypingIndicator {
            conversation_id: conv,
            user_id: user.clone(),
            is_typing,
        });
        let kind = EventKind::Ephemeral { except: Some(from) };
        self.publish(Topic::Conversation(conv), kind, frame).await;
    }

    /// `user` has read `conv` up to `seq`: the conversation and the user's
    /// tabs not joined to it are told.
    pub async fn read(&self, user: &UserId, conv: ConversationId, seq: Seq) {
        let frame = encode(&ServerFrame::ReadReceipt {
            conversation_id: conv,
            user_id: user.clone(),
            seq,
        });
        let kind = EventKind::Ephemeral { except: None };
        self.publish(Topic::Conversation(conv), kind, frame.clone())
            .await;
        let kind = EventKind::Notice {
            skip_joined: Some(conv),
        };
        self.publish(Topic::User(user.clone()), kind, frame).await;
    }

    /// `user` became present in `conv`, or stopped being.
    pub async fn presence_changed(&self, conv: ConversationId, user: &UserId, present: bool) {
        let frame = encode(&ServerFrame::PresenceChanged {
            conversation_id: conv,
            user_id: user.clone(),
            present,
        });
        let kind = EventKind::Ephemeral { except: None };
        self.publish(Topic::Conversation(conv), kind, frame).await;
    }

    /// An assistant stream's frame (None: a heartbeat, which only says it
    /// is alive); `end` for its last, `step` says which frame it is.
    pub async fn stream(
        &self,
        conv: ConversationId,
        stream_id: StreamId,
        step: StreamStep,
        end: bool,
        frame: Option<&ServerFrame>,
    ) {
        let payload = frame.map(encode).unwrap_or_default();
        let kind = EventKind::Stream {
            stream_id,
            end,
            step,
        };
        self.publish(Topic::Conversation(conv), kind, payload).await;
    }

    /// Tells every node the assistants' queue started requests, so the
    /// nodes they belong to run them.
    pub async fn queue_moved(&self) {
        self.publish(Topic::Streams, EventKind::QueueMoved, Bytes::new())
            .await;
    }

    /// Asks every node to stop `stream` (the one running it will).
    pub async fn cancel_stream(&self, stream_id: StreamId, by: &UserId) {
        let kind = EventKind::Cancel {
            stream_id,
            by: by.clone(),
        };
        self.publish(Topic::Streams, kind, Bytes::new()).await;
    }

    /// Publishes an event. A failure is logged, not returned: a message is
    /// stored, and this node's room catches up from the store at once;
    /// other nodes do when their bus reconnects (see docs/operations.md).
    async fn publish(&self, topic: Topic, kind: EventKind, payload: Bytes) {
        let stored_in = match (&topic, &kind) {
            (Topic::Conversation(conv), EventKind::Message { .. }) => Some(*conv),
            _ => None,
        };
        let event = Event::new(topic, kind, payload);
        if let Err(e) = self.bus.publish(event).await {
            self.metrics.bus_publish_errors.inc();
            if let Some(conv) = stored_in {
                self.hub.publish_failed(conv);
            }
            tracing::warn!(error = %e, "publish failed; nodes will catch up from the store");
        }
    }
}

fn encode(frame: &ServerFrame) -> Bytes {
    Bytes::from(frame.encode())
}

/// The store's log as the hub replays it.
pub struct StoredHistory(pub Store);

fn unavailable(e: sea_orm::DbErr) -> HistoryError {
    HistoryError(e.to_string())
}

fn entries((log, more): (Vec<LogEntry>, bool)) -> Page {
    let entries = log
        .into_iter()
        .map(|e| Entry {
            seq: e.seq(),
            message: Some(e.message_id()),
            frame: entry_frame(e),
        })
        .collect();
    (entries, more)
}

#[async_trait]
impl History for StoredHistory {
    async fn last_seq(&self, conv: ConversationId) -> Result<Option<Seq>, HistoryError> {
        self.0.last_seq(conv).await.map_err(unavailable)
    }

    async fn after(
        &self,
        conv: ConversationId,
        after: Seq,
        limit: u64,
    ) -> Result<Page, HistoryError> {
        let page = self.0.log_after(conv, after, limit).await;
        page.map(entries).map_err(unavailable)
    }

    async fn before(
        &self,
        conv: ConversationId,
        before: Seq,
        limit: u64,
    ) -> Result<Page, HistoryError> {
        let page = self.0.log_before(conv, before, limit).await;
        page.map(entries).map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bus::LocalBus;
    use crate::hub::{HubSettings, Inbound, NodeBudget};
    use crate::model::{ClientMsgId, MessageType};
    use crate::tasks::Tasks;

    #[tokio::test]
    async fn a_message_is_stored_once_and_its_live_frame_is_its_replay() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = Tasks::new();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, 2, &tasks).await.unwrap();
        store.migrate().await.unwrap();
        let bus = Arc::new(LocalBus::new());
        let metrics = Arc::new(Metrics::new("test"));
        let hub = Hub::new(
            Arc::new(StoredHistory(store.clone())),
            bus.clone(),
            metrics.clone(),
            HubSettings {
                gap_wait: Duration::from_millis(20),
                outbound_queue: 100,
                outbound_bytes: 1 << 20,
                outbound_budget: NodeBudget::unlimited(),
                recent_messages: 10,
                max_connections_per_user: 1,
            },
            tasks.clone(),
        );
        let events = Events::new(store.clone(), bus, hub.clone(), metrics);
        let ann = UserId::parse("ann").unwrap();
        let conv = store.create_chat(&ann, None, &[], None).await.unwrap();
        let (conn, rx) = hub.register(ann.clone(), Inbound::Socket).await.unwrap();
        hub.join(&conn, conv.id, None, |seq| format!("joined {seq}").into())
            .await
            .unwrap();
        let next = || match rx.try_recv() {
            Ok(frame) => frame.to_string(),
            Err(_) => String::new(),
        };
        assert_eq!(next(), "joined 0");
        let new = NewMessage {
            id: None,
            conversation_id: conv.id,
            sender_id: ann,
            message_type: MessageType::User,
            content: "hello".into(),
            client_msg_id: Some(ClientMsgId::parse("c1").unwrap()),
            metadata: None,
            reply_to: None,
        };
        let first = events.append(new.clone()).await.unwrap();
        assert!(!first.duplicate);
        // The local bus delivers as it publishes: the frame is queued already.
        let live = next();
        let again = events.append(new).await.unwrap();
        assert!(again.duplicate, "a retry stores nothing");
        assert_eq!(again.message, first.message);
        assert_eq!(next(), "", "and publishes nothing");
        let (page, more) = StoredHistory(store)
            .after(conv.id, Seq(0), 10)
            .await
            .unwrap();
        assert!(!more);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].seq, Seq(1));
        assert_eq!(page[0].frame.as_str(), live);
    }
}
