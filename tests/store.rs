//! The store on real databases: SQLite always, Postgres when
//! `CONFAB_TEST_POSTGRES_URL` is set (each test in a schema of its own).
//! Seq allocation stays gap-free and unique under concurrent writers, as
//! when many nodes write to one conversation.

use std::collections::BTreeSet;

use confab::model::{
    ChangeRequest, ClientMsgId, Conversation, ConversationId, Emoji, LogEntry, Message,
    MessageType, Refusal, Seq, UserId,
};
use confab::search::{search, Query};
use confab::store::{ChangeOrder, Changed, NewMessage, Store};
use confab::tasks::Tasks;
use sea_orm::{ConnectOptions, ConnectionTrait, Database};

/// Stores on one fresh database: `n` separate pools, like `n` nodes.
async fn stores(backend: &str, n: usize) -> Option<(Vec<Store>, Option<tempfile::TempDir>)> {
    let (stores, dir) = unmigrated(backend, n).await?;
    stores[0].migrate().await.unwrap();
    Some((stores, dir))
}

/// As `stores`, with an empty database.
async fn unmigrated(backend: &str, n: usize) -> Option<(Vec<Store>, Option<tempfile::TempDir>)> {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(Store::connect(&url, 4, &Tasks::new()).await.unwrap());
            }
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
        reply_to: None,
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

    // A sender's own send moves their read mark; others' messages count
    // as unread until read; read marks only move forward.
    let unread = |listed: &[Conversation]| (listed[0].last_read_seq, listed[0].unread_count);
    let listed = store.list_chats(&alice, 50, None).await.unwrap().chats;
    assert_eq!(unread(&listed), (Some(Seq(3)), Some(0)));
    let bob_id = user("bob");
    let listed = store.list_chats(&bob_id, 50, None).await.unwrap().chats;
    assert_eq!(unread(&listed), (Some(Seq(2)), Some(1)));
    assert_eq!(
        store.mark_read(conv.id, &bob_id, Seq(3)).await.unwrap(),
        Some(Seq(3))
    );
    assert_eq!(
        store.mark_read(conv.id, &bob_id, Seq(1)).await.unwrap(),
        None
    );
    let listed = store.list_chats(&bob_id, 50, None).await.unwrap().chats;
    assert_eq!(unread(&listed), (Some(Seq(3)), Some(0)));

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
    assert!(store
        .list_chats(&alice, 50, None)
        .await
        .unwrap()
        .chats
        .is_empty());
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

/// Every change takes the next seq and folds into the message's state;
/// the log reads back messages and changes in seq order, each with its
/// message's current state; the rules refuse what they must.
async fn changes_take_seqs_and_fold_into_state(backend: &str) {
    let Some((stores, _dir)) = stores(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = store
        .create_chat(&alice, None, std::slice::from_ref(&bob), None)
        .await
        .unwrap();
    let m1 = store
        .append(msg(conv.id, "alice", "one", None))
        .await
        .unwrap()
        .unwrap()
        .message;
    let mut reply = msg(conv.id, "bob", "two", None);
    reply.reply_to = Some(m1.id);
    let m2 = store.append(reply).await.unwrap().unwrap().message;
    assert_eq!(m2.reply_to, Some(m1.id));

    let change = |actor: &UserId, message: &Message, request: ChangeRequest| ChangeOrder {
        conversation_id: conv.id,
        message_id: message.id,
        actor: actor.clone(),
        request,
        max_reactions: 2,
    };
    let edit = |text: &str| ChangeRequest::Edit {
        content: text.into(),
    };
    let react = |e: &str, add: bool| ChangeRequest::React {
        emoji: Emoji::parse(e).unwrap(),
        add,
    };
    let seq_of = |c: Result<Changed, Refusal>| c.expect("allowed").seq();
    let run = |order: ChangeOrder| async move { store.change(&order).await.unwrap() };

    assert_eq!(
        seq_of(run(change(&alice, &m1, edit("one!"))).await),
        Some(Seq(3))
    );
    assert_eq!(
        seq_of(run(change(&alice, &m1, edit("one!"))).await),
        None,
        "same text"
    );
    assert!(matches!(
        run(change(&bob, &m1, edit("mine"))).await,
        Err(Refusal::Forbidden(_))
    ));
    assert_eq!(
        seq_of(run(change(&bob, &m1, react("👍", true))).await),
        Some(Seq(4))
    );
    assert_eq!(
        seq_of(run(change(&bob, &m1, react("👍", true))).await),
        None,
        "twice"
    );
    assert_eq!(
        seq_of(run(change(&alice, &m1, react("👍", true))).await),
        Some(Seq(5))
    );
    assert_eq!(
        seq_of(run(change(&alice, &m1, react("🎉", true))).await),
        Some(Seq(6))
    );
    assert_eq!(
        run(change(&bob, &m1, react("❤", true))).await.unwrap_err(),
        Refusal::TooManyReactions { max: 2 }
    );
    let removed = run(change(&bob, &m1, react("👍", false))).await.unwrap();
    assert_eq!(removed.seq(), Some(Seq(7)));
    let shown: Vec<(String, u64, Vec<String>)> = removed
        .message()
        .reactions
        .iter()
        .map(|r| {
            let users = r.user_ids.iter().map(|u| u.as_str().to_owned()).collect();
            (r.emoji.as_str().to_owned(), r.count, users)
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            ("👍".to_string(), 1, vec!["alice".to_string()]),
            ("🎉".to_string(), 1, vec!["alice".to_string()])
        ]
    );
    assert_eq!(
        seq_of(run(change(&bob, &m1, react("👍", false))).await),
        None,
        "not there"
    );
    // The owner deletes another's message; a deleted message is gone.
    let deleted = run(change(&alice, &m2, ChangeRequest::Delete))
        .await
        .unwrap();
    assert_eq!(deleted.seq(), Some(Seq(8)));
    assert!(deleted.message().deleted && deleted.message().content.is_empty());
    for request in [ChangeRequest::Delete, edit("x"), react("👍", true)] {
        assert_eq!(
            run(change(&bob, &m2, request)).await.unwrap_err(),
            Refusal::NotFound("message")
        );
    }
    let other = store.create_chat(&bob, None, &[], None).await.unwrap();
    let mut elsewhere = change(&bob, &m1, react("👍", true));
    elsewhere.conversation_id = other.id;
    assert_eq!(
        run(elsewhere).await.unwrap_err(),
        Refusal::NotFound("message")
    );
    assert_eq!(store.last_seq(conv.id).await.unwrap(), Some(Seq(8)));

    // The log: every entry once, in order, each with the current state.
    let (log, more) = store.log_after(conv.id, Seq(0), 100).await.unwrap();
    assert!(!more);
    assert_eq!(
        log.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    for entry in &log {
        let message = match entry {
            LogEntry::Message(m) | LogEntry::Change { message: m, .. } => m,
        };
        if message.id == m2.id {
            assert!(message.deleted && message.content.is_empty(), "{entry:?}");
        } else {
            assert_eq!(message.content, "one!");
            assert_eq!(message.reactions.len(), 2);
        }
    }
    let (page, more) = store.log_after(conv.id, Seq(2), 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(more);
    let (page, more) = store.log_before(conv.id, Seq(8), 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(more);
    let (page, more) = store.log_before(conv.id, Seq(3), 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(!more);
    // History pages hold messages only, in their current state.
    let (messages, _) = store.messages_after(conv.id, Seq(0), 10).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert!(messages[0].edited_at.is_some() && messages[1].deleted);

    // Unread: not one's own, not deleted, above the read mark.
    let unread = |u: UserId| async move {
        store.list_chats(&u, 10, None).await.unwrap().chats[0].unread_count
    };
    assert_eq!(
        unread(alice.clone()).await,
        Some(0),
        "bob's message was deleted"
    );
    store
        .append(msg(conv.id, "bob", "three", None))
        .await
        .unwrap();
    assert_eq!(unread(alice.clone()).await, Some(1));

    store.archive(conv.id).await.unwrap();
    assert_eq!(
        run(change(&alice, &m1, edit("late"))).await.unwrap_err(),
        Refusal::Archived
    );
}

/// Paging through a listing while conversations are active, created and
/// joined returns every conversation of the first page's moment once.
async fn listing_pages_hold_still_under_activity(backend: &str) {
    let Some((stores, _dir)) = stores(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let ann = user("ann");
    let mut all = BTreeSet::new();
    for _ in 0..23 {
        let conv = store.create_chat(&ann, None, &[], None).await.unwrap();
        all.insert(conv.id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_chats(&ann, 5, cursor.as_ref()).await.unwrap();
        assert!(page.chats.len() <= 5);
        seen.extend(page.chats.iter().map(|c| c.id));
        // Activity between pages: a message in every conversation not yet
        // listed and one listed, and a new conversation.
        for id in all.iter().filter(|id| !seen.contains(id)).take(3) {
            store.append(msg(*id, "ann", "up", None)).await.unwrap();
        }
        store.append(msg(seen[0], "ann", "up", None)).await.unwrap();
        store.create_chat(&ann, None, &[], None).await.unwrap();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let distinct: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "no conversation twice");
    assert_eq!(distinct, all, "every conversation once, none added");
}

#[tokio::test]
async fn sqlite_changes_take_seqs_and_fold_into_state() {
    changes_take_seqs_and_fold_into_state("sqlite").await;
}

#[tokio::test]
async fn postgres_changes_take_seqs_and_fold_into_state() {
    changes_take_seqs_and_fold_into_state("postgres").await;
}

#[tokio::test]
async fn sqlite_listing_pages_hold_still_under_activity() {
    listing_pages_hold_still_under_activity("sqlite").await;
}

#[tokio::test]
async fn postgres_listing_pages_hold_still_under_activity() {
    listing_pages_hold_still_under_activity("postgres").await;
}

/// A database written by the schema before the log (three migrations)
/// keeps every message through the log's migration, and works on.
async fn the_log_migration_keeps_existing_history(backend: &str) {
    use migration::{Migrator, MigratorTrait};
    let Some((stores, _dir)) = unmigrated(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let db = store.connection();
    Migrator::up(db, Some(3)).await.unwrap();
    let conv = uuid::Uuid::now_v7();
    let (m1, m2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let (uuid, at): (fn(uuid::Uuid) -> String, &str) = match backend {
        "sqlite" => (
            |u| format!("X'{}'", u.simple()),
            "'2026-12-01T10:00:00+00:00'",
        ),
        _ => (
            |u| format!("'{u}'"),
            "'2026-12-01T10:00:00+00:00'::timestamptz",
        ),
    };
    for sql in [
        format!(
            "INSERT INTO chats (id, title, owner_id, archived, last_seq, created_at, updated_at) \
             VALUES ({}, 'old', 'ann', false, 2, {at}, {at})",
            uuid(conv)
        ),
        format!(
            "INSERT INTO chat_participants (chat_id, user_id, role, last_read_seq, joined_at) \
             VALUES ({c}, 'ann', 'owner', 1, {at}), ({c}, 'bob', 'member', 0, {at})",
            c = uuid(conv)
        ),
        format!(
            "INSERT INTO chat_messages (id, chat_id, seq, sender_id, message_type, content, created_at) \
             VALUES ({}, {c}, 1, 'ann', 'user', 'first', {at}), ({}, {c}, 2, 'bob', 'user', 'second', {at})",
            uuid(m1),
            uuid(m2),
            c = uuid(conv)
        ),
    ] {
        db.execute_unprepared(&sql).await.unwrap();
    }
    store.migrate().await.unwrap();

    let conv = ConversationId(conv);
    let (messages, _) = store.messages_after(conv, Seq(0), 10).await.unwrap();
    let texts: Vec<(&str, bool, usize)> = messages
        .iter()
        .map(|m| (m.content.as_str(), m.deleted, m.reactions.len()))
        .collect();
    assert_eq!(texts, vec![("first", false, 0), ("second", false, 0)]);
    let listed = store
        .list_chats(&user("ann"), 10, None)
        .await
        .unwrap()
        .chats;
    assert_eq!(
        listed[0].unread_count,
        Some(1),
        "bob's message, above ann's mark"
    );
    let edit = ChangeOrder {
        conversation_id: conv,
        message_id: messages[0].id,
        actor: user("ann"),
        request: ChangeRequest::Edit {
            content: "first, edited".into(),
        },
        max_reactions: 20,
    };
    let changed = store.change(&edit).await.unwrap().unwrap();
    assert_eq!(
        changed.seq(),
        Some(Seq(3)),
        "the log continues where it was"
    );
}

#[tokio::test]
async fn sqlite_the_log_migration_keeps_existing_history() {
    the_log_migration_keeps_existing_history("sqlite").await;
}

#[tokio::test]
async fn postgres_the_log_migration_keeps_existing_history() {
    the_log_migration_keeps_existing_history("postgres").await;
}

/// An answer's usage is recorded once however often (and from however
/// many nodes at once) it is recorded, and summed per user, from `since`.
async fn usage_is_recorded_once_and_summed(backend: &str) {
    use chrono::{DateTime, Duration, Utc};
    use confab::model::{StreamId, Usage, UsageRecord, UsageTotals};

    let Some((stores, _dir)) = stores(backend, 2).await else {
        return;
    };
    let store = &stores[0];
    let at = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    };
    let record = |who: &str, prompt: u64, completion: u64, when: &str| UsageRecord {
        stream_id: StreamId::new(),
        user_id: user(who),
        assistant_id: "helper".into(),
        conversation_id: ConversationId::new(),
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        },
        created_at: at(when),
    };
    let totals = |prompt, completion, streams| UsageTotals {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        streams,
    };
    let (ann, bob) = (user("ann"), user("bob"));
    assert_eq!(
        store.usage_of(&ann, None).await.unwrap(),
        UsageTotals::default(),
        "nothing recorded: zero"
    );

    let first = record("ann", 11, 5, "2026-12-01T10:00:00Z");
    store.record_usage(&first).await.unwrap();
    // Recorded again, even with other numbers: the first record stands.
    store.record_usage(&first).await.unwrap();
    let mut other_numbers = first.clone();
    other_numbers.usage.prompt_tokens = 1000;
    store.record_usage(&other_numbers).await.unwrap();
    let second = record("ann", 20, 7, "2026-12-02T10:00:00.250Z");
    store.record_usage(&second).await.unwrap();
    store
        .record_usage(&record("bob", 1000, 1, "2026-12-03T00:00:00Z"))
        .await
        .unwrap();

    assert_eq!(store.usage_of(&ann, None).await.unwrap(), totals(31, 12, 2));
    assert_eq!(
        store.usage_of(&bob, None).await.unwrap(),
        totals(1000, 1, 1)
    );
    let since = |when| store.usage_of(&ann, Some(when));
    assert_eq!(
        since(at("2026-12-02T00:00:00Z")).await.unwrap(),
        totals(20, 7, 1)
    );
    assert_eq!(
        since(second.created_at).await.unwrap(),
        totals(20, 7, 1),
        "`since` includes its own moment"
    );
    assert_eq!(
        since(second.created_at + Duration::milliseconds(1))
            .await
            .unwrap(),
        UsageTotals::default()
    );
    assert_eq!(
        since(at("2026-12-01T11:00:00+01:00")).await.unwrap(),
        totals(31, 12, 2),
        "an offset is a moment like any other"
    );

    // Two nodes recording the same answer at once: no error, counted once.
    for _ in 0..10 {
        let same = record("cy", 3, 4, "2026-12-04T00:00:00Z");
        let (a, b) = tokio::join!(stores[0].record_usage(&same), stores[1].record_usage(&same));
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(
        store.usage_of(&user("cy"), None).await.unwrap(),
        totals(30, 40, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_usage_is_recorded_once_and_summed() {
    usage_is_recorded_once_and_summed("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_usage_is_recorded_once_and_summed() {
    usage_is_recorded_once_and_summed("postgres").await;
}

/// The users directory: an upsert keeps a user's first sighting and their
/// name when a later token has none, takes a new name when one comes, and
/// races between nodes; a lookup returns the known users only.
async fn users_are_recorded_and_looked_up(backend: &str) {
    use chrono::{DateTime, Utc};
    use confab::model::User;
    use confab::store::Sighting;

    let Some((stores, _dir)) = stores(backend, 2).await else {
        return;
    };
    let store = &stores[0];
    let at = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    };
    let seen = |who: &str, name: Option<&str>, when: &str| Sighting {
        user_id: user(who),
        name: name.map(str::to_owned),
        at: at(when),
    };
    let zoe = user("zoë-q");
    assert_eq!(
        store.users(std::slice::from_ref(&zoe)).await.unwrap(),
        vec![]
    );
    assert_eq!(store.users(&[]).await.unwrap(), vec![]);

    store
        .record_users(&[seen("zoë-q", Some("Zoë Q"), "2026-12-15T10:00:00.125Z")])
        .await
        .unwrap();
    let first = User {
        id: zoe.clone(),
        name: Some("Zoë Q".into()),
        first_seen_at: at("2026-12-15T10:00:00.125Z"),
        last_seen_at: at("2026-12-15T10:00:00.125Z"),
    };
    assert_eq!(
        store.users(std::slice::from_ref(&zoe)).await.unwrap(),
        vec![first.clone()]
    );

    // A later token without a name: seen again, the name kept.
    store
        .record_users(&[seen("zoë-q", None, "2026-12-15T11:00:00Z")])
        .await
        .unwrap();
    let later = User {
        last_seen_at: at("2026-12-15T11:00:00Z"),
        ..first.clone()
    };
    assert_eq!(
        store.users(std::slice::from_ref(&zoe)).await.unwrap(),
        vec![later.clone()]
    );

    // Another name: taken; the first sighting stays.
    store
        .record_users(&[seen("zoë-q", Some("Zoë"), "2026-12-15T12:00:00Z")])
        .await
        .unwrap();
    let renamed = User {
        name: Some("Zoë".into()),
        last_seen_at: at("2026-12-15T12:00:00Z"),
        ..first.clone()
    };
    assert_eq!(
        store.users(std::slice::from_ref(&zoe)).await.unwrap(),
        vec![renamed.clone()]
    );

    // A batch: a user seen twice counts as the later sighting with the
    // latest name given; a user never named stays without a name.
    store
        .record_users(&[
            seen("ann", Some("Ann"), "2026-12-15T13:00:00Z"),
            seen("bob", None, "2026-12-15T13:00:01Z"),
            seen("ann", None, "2026-12-15T13:00:02Z"),
            seen("zoë-q", None, "2026-12-15T13:00:03Z"),
        ])
        .await
        .unwrap();
    store.record_users(&[]).await.unwrap();
    let mut found = store
        .users(&[user("bob"), user("ann"), user("nobody"), zoe.clone()])
        .await
        .unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        found,
        vec![
            User {
                id: user("ann"),
                name: Some("Ann".into()),
                first_seen_at: at("2026-12-15T13:00:02Z"),
                last_seen_at: at("2026-12-15T13:00:02Z"),
            },
            User {
                id: user("bob"),
                name: None,
                first_seen_at: at("2026-12-15T13:00:01Z"),
                last_seen_at: at("2026-12-15T13:00:01Z"),
            },
            User {
                last_seen_at: at("2026-12-15T13:00:03Z"),
                ..renamed
            },
        ],
        "unknown ids are absent"
    );

    // Two nodes recording the same new user at once: no error, one row.
    for i in 0..10 {
        let id = format!("racer{i}");
        let a = [seen(&id, Some("A"), "2026-12-15T14:00:00Z")];
        let b = [seen(&id, None, "2026-12-15T14:00:00Z")];
        let (ra, rb) = tokio::join!(stores[0].record_users(&a), stores[1].record_users(&b));
        ra.unwrap();
        rb.unwrap();
        let found = store.users(&[user(&id)]).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name.as_deref(), Some("A"), "a name is never lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_users_are_recorded_and_looked_up() {
    users_are_recorded_and_looked_up("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_users_are_recorded_and_looked_up() {
    users_are_recorded_and_looked_up("postgres").await;
}

/// What a search of `q` (optionally in `conv`) by `who` finds: the
/// contents, best first, and the next cursor.
async fn found(store: &Store, who: &str, q: &str, conv: Option<ConversationId>) -> Vec<String> {
    let query = Query::parse(q, conv, None, None).unwrap();
    search(store, &user(who), &query)
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| h.message.content)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn search_finds_current_text_where_the_caller_is(backend: &str) {
    let Some((stores, _dir)) = stores(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let ours = store
        .create_chat(&alice, None, std::slice::from_ref(&bob), None)
        .await
        .unwrap()
        .id;
    let theirs = store.create_chat(&carol, None, &[], None).await.unwrap().id;
    let left = store
        .create_chat(&bob, None, std::slice::from_ref(&alice), None)
        .await
        .unwrap()
        .id;
    let append = |conv: ConversationId, sender: &str, text: &str| {
        let new = msg(conv, sender, text, None);
        async move { store.append(new).await.unwrap().unwrap().message }
    };
    let noir = append(ours, "bob", "Un Café noir, s'il vous plaît").await;
    append(ours, "alice", "Le CAFETIER arrive").await;
    append(ours, "bob", "thé vert").await;
    let both = append(ours, "bob", "café et thé").await;
    let mut answer = msg(ours, "echo", "le cafe\u{301} des assistants", None);
    answer.message_type = MessageType::Assistant;
    store.append(answer).await.unwrap().unwrap();
    append(theirs, "carol", "café secret").await;
    append(left, "bob", "café d'avant").await;
    assert!(store.remove_participant(left, &alice).await.unwrap());

    let cafes = sorted(vec![
        "Le CAFETIER arrive".into(),
        "Un Café noir, s'il vous plaît".into(),
        "café et thé".into(),
        "le cafe\u{301} des assistants".into(),
    ]);
    // Prefix, case and accents; only conversations alice is in now.
    assert_eq!(sorted(found(store, "alice", "cafe", None).await), cafes);
    assert_eq!(sorted(found(store, "alice", "CAF", None).await), cafes);
    assert_eq!(sorted(found(store, "alice", "Càfé", None).await), cafes);
    // Every word, in any order.
    assert_eq!(
        found(store, "alice", "thé café", None).await,
        vec!["café et thé"]
    );
    assert_eq!(
        found(store, "alice", "cafe-the!", None).await,
        vec!["café et thé"]
    );
    assert!(found(store, "alice", "cafe zebra", None).await.is_empty());
    // Another user's conversation, and one alice left.
    assert_eq!(
        found(store, "carol", "cafe", None).await,
        vec!["café secret"]
    );
    assert!(found(store, "alice", "secret", None).await.is_empty());
    assert!(found(store, "alice", "avant", None).await.is_empty());
    assert_eq!(
        found(store, "bob", "avant", None).await,
        vec!["café d'avant"]
    );
    // The conversation filter.
    assert_eq!(
        found(store, "carol", "cafe", Some(ours)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        found(store, "bob", "cafe", Some(left)).await,
        vec!["café d'avant"]
    );
    assert_eq!(sorted(found(store, "bob", "cafe", Some(ours)).await), cafes);

    // An edit is found by its new text only; a deletion not at all.
    let order = |message: &Message, request: ChangeRequest| ChangeOrder {
        conversation_id: ours,
        message_id: message.id,
        actor: bob.clone(),
        request,
        max_reactions: 20,
    };
    let edit = ChangeRequest::Edit {
        content: "Un Espresso, s'il vous plaît".into(),
    };
    store.change(&order(&noir, edit)).await.unwrap().unwrap();
    assert!(found(store, "alice", "noir", None).await.is_empty());
    let query = Query::parse("espr", None, None, None).unwrap();
    let hits = search(store, &alice, &query).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].message.id, noir.id);
    assert!(
        hits[0].message.edited_at.is_some(),
        "the message as history has it"
    );
    assert_eq!(hits[0].snippet, "Un Espresso, s'il vous plaît");
    store
        .change(&order(&both, ChangeRequest::Delete))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found(store, "alice", "the", None).await, vec!["thé vert"]);

    // The snippet is cut from the original text around the first match.
    let long = format!(
        "{} Crème BRÛLÉE au dessert {}",
        "avant ".repeat(40),
        "après ".repeat(40)
    );
    append(ours, "alice", &long).await;
    let query = Query::parse("brulee", None, None, None).unwrap();
    let hits = search(store, &bob, &query).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    let snippet = &hits[0].snippet;
    assert!(
        snippet.starts_with('…') && snippet.ends_with('…'),
        "{snippet}"
    );
    assert!(snippet.contains("Crème BRÛLÉE au dessert"), "{snippet}");
    assert!(snippet.chars().count() <= 162, "{snippet}");
}

async fn search_pages_by_cursor(backend: &str) {
    let Some((stores, _dir)) = stores(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let alice = user("alice");
    let conv = store.create_chat(&alice, None, &[], None).await.unwrap().id;
    let mut sent = BTreeSet::new();
    for i in 0..7 {
        let new = msg(conv, "alice", &format!("page item {i}"), None);
        sent.insert(store.append(new).await.unwrap().unwrap().message.id.0);
    }
    // Equal matches: the newest first.
    let query = Query::parse("item", None, Some(3), None).unwrap();
    let first = search(store, &alice, &query).await.unwrap();
    let seqs: Vec<i64> = first.hits.iter().map(|h| h.message.seq.0).collect();
    assert_eq!(seqs, vec![7, 6, 5]);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = Query::parse("page ITEM", Some(conv), Some(3), cursor.as_deref()).unwrap();
        let page = search(store, &alice, &query).await.unwrap();
        seen.extend(page.hits.iter().map(|h| h.message.id.0));
        pages += 1;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "no duplicates across pages");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), sent);
    // A cursor belongs to its search.
    let cursor = search(
        store,
        &alice,
        &Query::parse("item", None, Some(3), None).unwrap(),
    )
    .await
    .unwrap()
    .next_cursor
    .unwrap();
    assert!(Query::parse("page", None, Some(3), Some(&cursor)).is_err());
}

/// Messages stored before search existed are found once the migration ran.
async fn the_search_migration_indexes_existing_messages(backend: &str) {
    use migration::{Migrator, MigratorTrait};
    let Some((stores, _dir)) = unmigrated(backend, 1).await else {
        return;
    };
    let store = &stores[0];
    let db = store.connection();
    Migrator::up(db, Some(6)).await.unwrap();
    let ann = user("ann");
    let conv = store.create_chat(&ann, None, &[], None).await.unwrap().id;
    let (kept, gone) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let (uuid, at): (fn(uuid::Uuid) -> String, &str) = match backend {
        "sqlite" => (
            |u| format!("X'{}'", u.simple()),
            "'2026-12-01T10:00:00+00:00'",
        ),
        _ => (
            |u| format!("'{u}'"),
            "'2026-12-01T10:00:00+00:00'::timestamptz",
        ),
    };
    db.execute_unprepared(&format!(
        "INSERT INTO chat_messages \
         (id, chat_id, seq, sender_id, message_type, content, created_at, deleted) \
         VALUES ({}, {c}, 1, 'ann', 'user', 'Ancienne Crème', {at}, false), \
                ({}, {c}, 2, 'ann', 'user', '', {at}, true)",
        uuid(kept),
        uuid(gone),
        c = uuid(conv.0)
    ))
    .await
    .unwrap();
    db.execute_unprepared(&format!(
        "UPDATE chats SET last_seq = 2 WHERE id = {}",
        uuid(conv.0)
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let query = Query::parse("creme", None, None, None).unwrap();
    let hits = search(store, &ann, &query).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].message.id.0, kept);
    assert_eq!(hits[0].message.content, "Ancienne Crème");
    // And what is stored afterwards is indexed by the store.
    store
        .append(msg(conv, "ann", "nouvelle crème", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(search(store, &ann, &query).await.unwrap().hits.len(), 2);
}

/// SQLite's `VACUUM` renumbers the rowids of a table without an integer
/// primary key; the search index must still name the right messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_search_survives_a_vacuum() {
    let Some((stores, _dir)) = stores("sqlite", 1).await else {
        return;
    };
    let store = &stores[0];
    let ann = user("ann");
    let conv = store.create_chat(&ann, None, &[], None).await.unwrap().id;
    for text in ["alpha one", "bravo two", "charlie three", "delta four"] {
        store
            .append(msg(conv, "ann", text, None))
            .await
            .unwrap()
            .unwrap();
    }
    // Rows gone for good (as a chat's removal would take them) leave gaps
    // that a VACUUM closes by renumbering the later rows.
    let db = store.connection();
    db.execute_unprepared("DELETE FROM chat_messages WHERE content IN ('alpha one', 'bravo two')")
        .await
        .unwrap();
    db.execute_unprepared("VACUUM").await.unwrap();
    assert_eq!(
        found(store, "ann", "charl", None).await,
        vec!["charlie three"]
    );
    assert_eq!(found(store, "ann", "delt", None).await, vec!["delta four"]);
    assert!(found(store, "ann", "alph", None).await.is_empty());
    // New messages after the VACUUM get keys of their own.
    store
        .append(msg(conv, "ann", "echo five", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found(store, "ann", "echo", None).await, vec!["echo five"]);
    assert_eq!(found(store, "ann", "delta", None).await, vec!["delta four"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_search_finds_current_text_where_the_caller_is() {
    search_finds_current_text_where_the_caller_is("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_finds_current_text_where_the_caller_is() {
    search_finds_current_text_where_the_caller_is("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_search_pages_by_cursor() {
    search_pages_by_cursor("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_pages_by_cursor() {
    search_pages_by_cursor("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_search_migration_indexes_existing_messages() {
    the_search_migration_indexes_existing_messages("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_search_migration_indexes_existing_messages() {
    the_search_migration_indexes_existing_messages("postgres").await;
}
