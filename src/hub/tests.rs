//! The hub without a database: a history in memory, the in-process bus.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::history::memory::MemoryHistory;
use super::*;
use crate::bus::{Event, EventKind, LocalBus};
use crate::error::ChatError;
use crate::model::Seq;

/// How long a test waits for any one frame.
const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    hub: Arc<Hub>,
    history: Arc<MemoryHistory>,
    bus: Arc<LocalBus>,
    metrics: Arc<Metrics>,
    _tasks: Tasks,
}

fn fixture() -> Fixture {
    let history = Arc::new(MemoryHistory::default());
    let bus = Arc::new(LocalBus::new());
    let tasks = Tasks::new();
    let metrics = Arc::new(Metrics::new("test"));
    let hub = Hub::new(
        history.clone(),
        bus.clone(),
        metrics.clone(),
        HubSettings {
            gap_wait: Duration::from_millis(20),
            outbound_queue: 100,
            outbound_bytes: 1 << 20,
            outbound_budget: NodeBudget::unlimited(),
            recent_messages: 2,
            max_connections_per_user: 2,
        },
        tasks.clone(),
    );
    Fixture {
        hub,
        history,
        bus,
        metrics,
        _tasks: tasks,
    }
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// The next frame queued for a connection, as text.
async fn next(rx: &mut Outbox) -> String {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(Outbound::Frame(frame))) => frame.to_string(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn joined(seq: Seq) -> Utf8Bytes {
    format!("joined {seq}").into()
}

/// Publishes a stored entry as `chat` does.
async fn publish(bus: &LocalBus, conv: ConversationId, entry: &Entry) {
    let kind = EventKind::Message {
        seq: entry.seq,
        message: entry.message,
    };
    let payload = Bytes::from(entry.frame.to_string());
    bus.publish(Event::new(Topic::Conversation(conv), kind, payload))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_resume_gets_what_it_missed_then_live_entries_once_each() {
    let f = fixture();
    let conv = ConversationId::new();
    f.history.create(conv);
    for text in ["m1", "m2", "m3", "m4"] {
        f.history.append(conv, text);
    }
    let (conn, mut rx) = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    // Seen up to 1; the room keeps only 2 recent entries, so it reads the history.
    f.hub.join(&conn, conv, Some(Seq(1)), joined).await.unwrap();
    assert_eq!(next(&mut rx).await, "joined 4");
    for want in ["m2", "m3", "m4"] {
        assert_eq!(next(&mut rx).await, want);
    }
    let m5 = f.history.append(conv, "m5");
    publish(&f.bus, conv, &m5).await;
    // A duplicate of a delivered entry (a bus redelivery) is dropped.
    publish(&f.bus, conv, &m5).await;
    let m6 = f.history.append(conv, "m6");
    publish(&f.bus, conv, &m6).await;
    assert_eq!(next(&mut rx).await, "m5");
    assert_eq!(next(&mut rx).await, "m6");
    assert!(rx.try_recv().is_err(), "nothing twice");
}

#[tokio::test]
async fn a_gap_the_bus_never_fills_is_read_from_the_history() {
    let f = fixture();
    let conv = ConversationId::new();
    f.history.create(conv);
    let (conn, mut rx) = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    f.hub.join(&conn, conv, None, joined).await.unwrap();
    assert_eq!(next(&mut rx).await, "joined 0");
    // Entry 1 is stored but its event is lost; entry 2's arrives.
    f.history.append(conv, "m1");
    let m2 = f.history.append(conv, "m2");
    publish(&f.bus, conv, &m2).await;
    assert_eq!(next(&mut rx).await, "m1");
    assert_eq!(next(&mut rx).await, "m2");
}

#[tokio::test]
async fn after_a_bus_outage_rooms_catch_up_once_the_history_answers() {
    let f = fixture();
    let conv = ConversationId::new();
    f.history.create(conv);
    let (conn, mut rx) = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    f.hub.join(&conn, conv, None, joined).await.unwrap();
    assert_eq!(next(&mut rx).await, "joined 0");
    // Stored while the bus was away, and the store is down at first.
    f.history.append(conv, "m1");
    f.history.down.store(true, Ordering::Relaxed);
    f.hub.resync();
    // The catch-up fails, and is retried.
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.metrics.recovery_retries.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no retry counted");
        tokio::task::yield_now().await;
    }
    assert!(rx.try_recv().is_err());
    f.history.down.store(false, Ordering::Relaxed);
    assert_eq!(next(&mut rx).await, "m1");
}

#[tokio::test]
async fn a_join_whose_first_read_fails_is_answered_with_the_error_only() {
    let f = fixture();
    let conv = ConversationId::new();
    f.history.create(conv);
    f.history.append(conv, "m1");
    f.history.append(conv, "m2");
    f.history.append(conv, "m3");
    let (conn, rx) = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    // Open the room, then take the store down for the resume's read.
    let (other, _other_rx) = f.hub.register(user("bob"), Inbound::Socket).await.unwrap();
    f.hub.join(&other, conv, None, joined).await.unwrap();
    f.history.down.store(true, Ordering::Relaxed);
    let err = f.hub.join(&conn, conv, Some(Seq(0)), joined).await;
    assert!(matches!(err, Err(ChatError::Unavailable(_))), "{err:?}");
    assert!(!conn.is_joined(&conv));
    assert!(rx.try_recv().is_err(), "no `joined` before the error");
}

#[tokio::test]
async fn a_removed_user_is_told_left_and_gets_nothing_more() {
    let f = fixture();
    let conv = ConversationId::new();
    f.history.create(conv);
    let (ann, mut ann_rx) = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    let (bob, mut bob_rx) = f.hub.register(user("bob"), Inbound::Socket).await.unwrap();
    f.hub.join(&ann, conv, None, joined).await.unwrap();
    f.hub.join(&bob, conv, None, joined).await.unwrap();
    assert_eq!(next(&mut ann_rx).await, "joined 0");
    assert_eq!(next(&mut bob_rx).await, "joined 0");
    let kind = EventKind::Membership {
        removed: Some(user("bob")),
    };
    let event = Event::new(Topic::Conversation(conv), kind, Bytes::from("left"));
    f.bus.publish(event).await.unwrap();
    assert_eq!(next(&mut bob_rx).await, "left");
    assert!(!bob.is_joined(&conv));
    let m1 = f.history.append(conv, "m1");
    publish(&f.bus, conv, &m1).await;
    assert_eq!(next(&mut ann_rx).await, "m1");
    assert!(bob_rx.try_recv().is_err());
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_connections() {
    let f = fixture();
    let _a = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    let _b = f.hub.register(user("ann"), Inbound::Socket).await.unwrap();
    let third = f.hub.register(user("ann"), Inbound::Socket).await;
    assert!(matches!(third, Err(ChatError::Forbidden(_))));
    assert_eq!(f.hub.connections_of(&user("ann")), 2);
}
