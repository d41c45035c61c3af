//! The store on real databases: SQLite always, Postgres when
//! `CONFAB_TEST_POSTGRES_URL` is set (each test in a schema of its own).
//! Seq allocation stays gap-free and unique under concurrent writers, as
//! when many nodes write to one conversation.

use std::collections::BTreeSet;

use confab::model::{ClientMsgId, ConversationId, MessageType, Seq, UserId};
use confab::store::{NewMessage, Store};
use confab::tasks::Tasks;
use sea_orm::{ConnectOptions, ConnectionTrait, Database};

/// Stores on one fresh database: `n` separate pools, like `n` nodes.
async fn stores(backend: &str, n: usize) -> Option<(Vec<Store>, Option<tempfile::TempDir>)> {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(Store::connect(&url, 4, &Tasks::new()).await.unwrap());
            }
            out[0].migrate().await.unwrap();
            Some((out, Some(dir)))
        }
        _ => {
            let Ok(url) = std::env::var("CONFAB_TEST_POSTGRES_URL") else {
                eprintln!("skipped: set CONFAB_TEST_POSTGRES_URL to run the Postgres store suite");
                return None;
            };
            let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
            let admin = Database::connect(&url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap();
            let mut out = Vec::new();
            for _ in 0..n {
                let mut opts = ConnectOptions::new(url.clone());
                opts.max_connections(4)
                    .set_schema_search_path(schema.clone())
                    .sqlx_logging(false);
                out.push(
                    Store::from_connection(Database::connect(opts).await.unwrap(), &Tasks::new())
                        .unwrap(),
                );
            }
            out[0].migrate().await.unwrap();
            Some((out, None))
        }
    }
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn msg(conv: ConversationId, sender: &str, content: &str, cid: Option<&str>) -> NewMessage {
    NewMessage {
        id: None,
        conversation_id: conv,
        sender_id: user(sender),
        message_type: MessageType::User,
        content: content.into(),
        client_msg_id: cid.map(|c| ClientMsgId::parse(c).unwrap()),
        metadata: None,
    }
}

async fn appends_in_order_and_idempotently(backend: &str) {
    let Some((stores, _dir)) = stores(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let alice = user("alice");
    let conv = store
        .create_chat(&alice, Some("t".into()), &[user("bob")], None)
        .await
        .unwrap();
    assert_eq!(conv.participants, vec![alice.clone(), user("bob")]);

    let first = store
        .append(msg(conv.id, "alice", "one", Some("c1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.message.seq, first.duplicate), (Seq(1), false));
    let retry = store
        .append(msg(conv.id, "alice", "one", Some("c1")))
        .await
        .unwrap()
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        retry.message, first.message,
        "a retry returns the original, equal field by field"
    );
    // Another sender may reuse the same client id.
    let bob = store
        .append(msg(conv.id, "bob", "two", Some("c1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((bob.message.seq, bob.duplicate), (Seq(2), false));
    let third = store
        .append(msg(conv.id, "alice", "three", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.message.seq, Seq(3));

    let (after, more) = store.messages_after(conv.id, Seq(1), 10).await.unwrap();
    assert_eq!(
        after.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(!more);
    let (before, more) = store
        .messages_before(conv.id, Some(Seq(3)), 1)
        .await
        .unwrap();
    assert_eq!(before.iter().map(|m| m.seq.0).collect::<Vec<_>>(), vec![2]);
    assert!(more);
    assert_eq!(store.last_seq(conv.id).await.unwrap(), Some(Seq(3)));

    // A conversation that does not exist stores nothing.
    let missing = ConversationId::new();
    assert!(store
        .append(msg(missing, "alice", "x", None))
        .await
        .unwrap()
        .is_none());

    // Read marks only move forward.
    assert_eq!(
        store.mark_read(conv.id, &alice, Seq(2)).await.unwrap(),
        Some(Seq(2))
    );
    assert_eq!(
        store.mark_read(conv.id, &alice, Seq(1)).await.unwrap(),
        None
    );
    let listed = store.list_chats(&alice).await.unwrap();
    assert_eq!(listed[0].last_read_seq, Some(Seq(2)));

    // Participants and archive.
    assert!(store
        .add_participant(conv.id, &user("carol"))
        .await
        .unwrap());
    assert!(!store
        .add_participant(conv.id, &user("carol"))
        .await
        .unwrap());
    assert!(store
        .remove_participant(conv.id, &user("carol"))
        .await
        .unwrap());
    assert!(!store
        .remove_participant(conv.id, &user("carol"))
        .await
        .unwrap());
    store.archive(conv.id).await.unwrap();
    assert!(store.list_chats(&alice).await.unwrap().is_empty());
    assert!(store.chat(conv.id).await.unwrap().unwrap().archived);

    // Metadata and content survive the round trip as given.
    let mut rich = msg(conv.id, "alice", "quote \" and \\ and ünïcode", None);
    rich.metadata = Some(serde_json::json!({"model": "echo", "tokens": [1, 2], "none": null}));
    let stored = store.append(rich.clone()).await.unwrap().unwrap();
    assert_eq!(stored.message.seq, Seq(4));
    let (read, _) = store.messages_after(conv.id, Seq(3), 10).await.unwrap();
    assert_eq!(read, vec![stored.message.clone()]);
    assert_eq!(read[0].content, rich.content);
    assert_eq!(read[0].metadata, rich.metadata);
}

/// `nodes` stores (pools) each run `writers` tasks of `each` appends into
/// one conversation at once; seqs must be exactly 1..=total.
async fn concurrent_writers_keep_seq_gap_free(
    backend: &str,
    nodes: usize,
    writers: usize,
    each: usize,
) {
    let Some((stores, _dir)) = stores(backend, nodes).await else {
        return;
    };
    let conv = stores[0]
        .create_chat(&user("alice"), None, &[], None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        for w in 0..writers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..each {
                    // Every other send carries a client id, and is retried once.
                    let cid = (i % 2 == 0).then(|| format!("n{n}w{w}i{i}"));
                    let m = msg(conv.id, "alice", &format!("{n}/{w}/{i}"), cid.as_deref());
                    let a = store.append(m.clone()).await.unwrap().unwrap();
                    seqs.push(a.message.seq.0);
                    if cid.is_some() {
                        let again = store.append(m).await.unwrap().unwrap();
                        assert!(again.duplicate);
                        assert_eq!(again.message.seq, a.message.seq);
                    }
                }
                seqs
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = nodes * writers * each;
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), total);
    assert_eq!(
        unique,
        (1..=total as i64).collect::<BTreeSet<_>>(),
        "gap-free and unique"
    );
    let (stored, _) = stores[0]
        .messages_after(conv.id, Seq(0), total as u64 + 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), total);
    assert_eq!(
        stores[0].last_seq(conv.id).await.unwrap(),
        Some(Seq(total as i64))
    );
}

/// Bursts of sends to many conversations at once, so they are committed
/// together: every conversation stays gap-free, each sender's messages keep
/// their order, twin copies of one send store it once, and a send to a
/// missing conversation fails alone.
async fn bursts_across_conversations(backend: &str) {
    let Some((stores, _dir)) = stores(backend, 2).await else {
        return;
    };
    let mut convs = Vec::new();
    for _ in 0..8 {
        let c = stores[0]
            .create_chat(&user("alice"), None, &[], None)
            .await
            .unwrap();
        convs.push(c.id);
    }
    let mut tasks = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        for w in 0..16 {
            let (store, convs) = (store.clone(), convs.clone());
            tasks.push(tokio::spawn(async move {
                let sender = format!("u{n}-{w}");
                let mut mine = Vec::new();
                for i in 0..20 {
                    let conv = convs[(w + i) % convs.len()];
                    let m = msg(conv, &sender, &format!("{i}"), Some(&format!("c{i}")));
                    // Two copies of the same send in flight at once.
                    let (a, b) = tokio::join!(store.append(m.clone()), store.append(m));
                    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
                    assert_eq!(a.message.id, b.message.id, "one send, one message");
                    assert!(a.duplicate != b.duplicate, "exactly one copy stored");
                    mine.push((conv, a.message.seq.0));
                    let missing = msg(ConversationId::new(), &sender, "x", None);
                    assert!(store.append(missing).await.unwrap().is_none());
                }
                mine
            }));
        }
    }
    let mut by_sender = Vec::new();
    for t in tasks {
        by_sender.push(t.await.unwrap());
    }
    for mine in &by_sender {
        for conv in &convs {
            let seqs: Vec<i64> = mine
                .iter()
                .filter(|(c, _)| c == conv)
                .map(|(_, s)| *s)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "a sender's order: {seqs:?}"
            );
        }
    }
    let mut total = 0;
    for conv in &convs {
        let (stored, more) = stores[1].messages_after(*conv, Seq(0), 1000).await.unwrap();
        assert!(!more);
        let seqs: Vec<i64> = stored.iter().map(|m| m.seq.0).collect();
        assert_eq!(seqs, (1..=stored.len() as i64).collect::<Vec<_>>());
        total += stored.len();
    }
    assert_eq!(total, 2 * 16 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bursts_across_conversations() {
    bursts_across_conversations("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bursts_across_conversations() {
    bursts_across_conversations("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_appends_in_order_and_idempotently() {
    appends_in_order_and_idempotently("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writers_keep_seq_gap_free() {
    concurrent_writers_keep_seq_gap_free("sqlite", 2, 4, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_in_order_and_idempotently() {
    appends_in_order_and_idempotently("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_keep_seq_gap_free() {
    concurrent_writers_keep_seq_gap_free("postgres", 4, 4, 50).await;
}
