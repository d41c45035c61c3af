//! The conversation log over real sockets and REST, on SQLite and (with
//! `CONFAB_TEST_POSTGRES_URL`) Postgres: edits, deletions, reactions and
//! replies with their rules and errors, each change taking the next seq;
//! rename, read marks, unread counts and the paged listing; replays that
//! carry the changes once, in order, in their current state; and three
//! nodes on one Redis ending with one identical log on every socket.

mod common;

use std::collections::BTreeSet;

use common::procs::Redis;
use common::{fresh_postgres, start_node, Client, TestNode};
use confab::config::Settings;
use serde_json::{json, Value};

/// The database a test's nodes use: a fresh SQLite file (under `dir`) or a
/// fresh Postgres database.
async fn database(backend: &str, dir: &tempfile::TempDir) -> Option<String> {
    match backend {
        "sqlite" => Some(format!(
            "sqlite://{}/shared.db?mode=rwc",
            dir.path().display()
        )),
        _ => fresh_postgres().await,
    }
}

async fn node_on(url: String, redis: Option<String>, tweak: fn(&mut Settings)) -> TestNode {
    start_node(move |s| {
        s.database.url = url;
        if let Some(redis) = redis {
            s.bus.redis_url = redis;
        }
        s.limits.send_burst = 10_000;
        s.limits.send_rate_per_sec = 10_000.0;
        tweak(s);
    })
    .await
}

/// The log entries (`message_received`, `message_updated`) among frames.
fn entries(frames: &[Value]) -> Vec<&Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message_received" || f["type"] == "message_updated")
        .collect()
}

/// An entry's own seq: a message's, or a change's.
fn seq_of(entry: &Value) -> i64 {
    match entry["type"].as_str() {
        Some("message_updated") => entry["data"]["seq"].as_i64().unwrap(),
        _ => entry["data"]["message"]["seq"].as_i64().unwrap(),
    }
}

/// Sends a frame with an id and returns its reply.
async fn ask(c: &mut Client, kind: &str, data: Value) -> Value {
    c.request(kind, data).await.0
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["data"]["code"].as_str().unwrap()
}

async fn frames_and_routes_keep_their_rules(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database(backend, &dir).await else {
        return;
    };
    let node = node_on(url, None, |_| {}).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let other = node.create_chat("carol", &[]).await;
    let mut alice = node.connect("alice").await;
    let mut alice2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    for c in [&mut alice, &mut alice2, &mut bob] {
        c.join(&conv, None).await;
    }
    carol.join(&other, None).await;
    let m1 = alice.say(&conv, "hello").await["data"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let foreign = carol.say(&other, "elsewhere").await["data"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let on = |msg: &str| json!({"conversation_id": conv, "message_id": msg});
    let with = |msg: &str, key: &str, value: Value| {
        let mut data = on(msg);
        data[key] = value;
        data
    };

    // A reply names a message of the same conversation.
    let reply = ask(
        &mut bob,
        "send_message",
        json!({"conversation_id": conv, "content": "hi", "reply_to": m1}),
    )
    .await;
    assert_eq!(reply["data"]["seq"], 2, "{reply}");
    let m2 = reply["data"]["message_id"].as_str().unwrap().to_owned();
    let received = alice2
        .until(|f| f["data"]["message"]["id"] == m2.as_str())
        .await
        .0;
    assert_eq!(received["data"]["message"]["reply_to"], m1.as_str());
    assert_eq!(received["data"]["message"]["deleted"], false);
    assert_eq!(received["data"]["message"]["reactions"], json!([]));
    for (data, code) in [
        (
            json!({"conversation_id": conv, "content": "x", "reply_to": foreign}),
            "NOT_FOUND",
        ),
        (
            json!({"conversation_id": conv, "content": "x", "attachment_ids": ["a"]}),
            "NOT_FOUND",
        ),
        (
            json!({"conversation_id": conv, "content": "x", "attachment_ids": vec!["a"; 11]}),
            "INVALID_FRAME",
        ),
    ] {
        assert_eq!(error_code(&ask(&mut bob, "send_message", data).await), code);
    }

    // Edits: the sender only; the same text is a no-op.
    let ack = ask(
        &mut alice,
        "edit_message",
        with(&m1, "content", "hello!".into()),
    )
    .await;
    assert_eq!(
        (ack["type"].as_str(), ack["data"]["seq"].as_i64()),
        (Some("ack"), Some(3)),
        "{ack}"
    );
    assert_eq!(ack["data"]["message_id"], m1.as_str());
    for c in [&mut alice2, &mut bob] {
        let updated = c.next_of("message_updated").await;
        assert_eq!(updated["data"]["seq"], 3);
        assert_eq!(
            updated["data"]["change"],
            json!({"kind": "edited", "by": "alice"})
        );
        assert_eq!(updated["data"]["message"]["content"], "hello!");
        assert_eq!(
            updated["data"]["message"]["seq"], 1,
            "the message keeps its seq"
        );
        assert!(updated["data"]["message"]["edited_at"].is_string());
    }
    let same = ask(
        &mut alice,
        "edit_message",
        with(&m1, "content", "hello!".into()),
    )
    .await;
    assert_eq!(same["type"], "ack");
    assert!(
        same["data"].get("seq").is_none(),
        "a no-op takes no seq: {same}"
    );
    let quiet = alice2.sync().await;
    assert!(
        entries(&quiet).is_empty(),
        "and is not broadcast: {quiet:?}"
    );
    let cases = [
        (
            "edit_message",
            with(&m1, "content", "mine".into()),
            "FORBIDDEN",
        ),
        (
            "edit_message",
            with(&m1, "content", "x".repeat(8001).into()),
            "MESSAGE_TOO_LONG",
        ),
        (
            "edit_message",
            with(&m1, "content", "  ".into()),
            "INVALID_FRAME",
        ),
        (
            "edit_message",
            with(&foreign, "content", "x".into()),
            "NOT_FOUND",
        ),
        (
            "add_reaction",
            with(&m1, "emoji", "a b".into()),
            "INVALID_FRAME",
        ),
        (
            "add_reaction",
            with(&m1, "emoji", "x".repeat(17).into()),
            "INVALID_FRAME",
        ),
        (
            "add_reaction",
            with(&m1, "emoji", "".into()),
            "INVALID_FRAME",
        ),
        ("delete_message", on(&m1), "FORBIDDEN"),
    ];
    for (kind, data, code) in cases {
        assert_eq!(
            error_code(&ask(&mut bob, kind, data.clone()).await),
            code,
            "{kind} {data}"
        );
    }
    let outsider = ask(&mut carol, "add_reaction", with(&m1, "emoji", "👍".into())).await;
    assert_eq!(error_code(&outsider), "FORBIDDEN");

    // Reactions: a repeat is a no-op.
    let ack = ask(&mut bob, "add_reaction", with(&m1, "emoji", "👍".into())).await;
    assert_eq!(ack["data"]["seq"], 4, "{ack}");
    let updated = alice.next_of("message_updated").await;
    assert_eq!(
        updated["data"]["change"],
        json!({"kind": "reaction_added", "by": "bob", "emoji": "👍"})
    );
    assert_eq!(
        updated["data"]["message"]["reactions"],
        json!([{"emoji": "👍", "count": 1, "user_ids": ["bob"]}])
    );
    let again = ask(&mut bob, "add_reaction", with(&m1, "emoji", "👍".into())).await;
    assert!(again["data"].get("seq").is_none(), "{again}");

    // The owner deletes bob's message: its text and reactions are gone.
    let ack = ask(&mut alice, "delete_message", on(&m2)).await;
    assert_eq!(ack["data"]["seq"], 5, "{ack}");
    let deleted = bob.until(|f| f["data"]["seq"] == 5).await.0;
    assert_eq!(deleted["data"]["change"]["kind"], "deleted");
    assert_eq!(deleted["data"]["message"]["deleted"], true);
    assert_eq!(deleted["data"]["message"]["content"], "");
    for (kind, data) in [
        ("delete_message", on(&m2)),
        ("edit_message", with(&m2, "content", "x".into())),
        ("add_reaction", with(&m2, "emoji", "👍".into())),
        ("delete_message", on(&uuid::Uuid::now_v7().to_string())),
    ] {
        assert_eq!(error_code(&ask(&mut bob, kind, data).await), "NOT_FOUND");
    }

    // REST does the same, through the same path.
    let base = format!("/api/v1/chat/chats/{conv}/messages/{m1}");
    let (status, body) = node
        .rest(
            "alice",
            "PATCH",
            &base,
            Some(json!({"content": "via rest"})),
        )
        .await;
    assert_eq!((status, body["seq"].as_i64()), (200, Some(6)), "{body}");
    assert_eq!(body["message"]["content"], "via rest");
    let party = "%F0%9F%8E%89"; // 🎉
    let (status, body) = node
        .rest("bob", "PUT", &format!("{base}/reactions/{party}"), None)
        .await;
    assert_eq!((status, body["seq"].as_i64()), (200, Some(7)), "{body}");
    let (status, body) = node
        .rest("bob", "DELETE", &format!("{base}/reactions/{party}"), None)
        .await;
    assert_eq!((status, body["seq"].as_i64()), (200, Some(8)), "{body}");
    let (status, body) = node
        .rest("bob", "DELETE", &format!("{base}/reactions/{party}"), None)
        .await;
    assert_eq!((status, body.get("seq")), (200, None), "{body}");
    let (status, _) = node.rest("bob", "DELETE", &base, None).await;
    assert_eq!(status, 403);
    let (status, body) = node
        .rest("bob", "PUT", &format!("{base}/reactions/a%20b"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("INVALID_FRAME"))
    );
    let (status, _) = node
        .rest("carol", "PATCH", &base, Some(json!({"content": "x"})))
        .await;
    assert_eq!(status, 403);

    // A replay from the start is the whole log, gap-free, in seq order.
    let mut watcher = node.connect("bob").await;
    watcher.join(&conv, Some(0)).await;
    let log = watcher.sync().await;
    let seqs: Vec<i64> = entries(&log).iter().map(|e| seq_of(e)).collect();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<_>>(),
        "a replay from 0 is the whole log"
    );
    let all_text = serde_json::to_string(&log).unwrap();
    assert!(
        !all_text.contains("\"hi\""),
        "a deleted text is never replayed"
    );

    // History folds the changes.
    let (page, _) = alice
        .request("load_messages", json!({"conversation_id": conv}))
        .await;
    assert_eq!(page["data"]["messages"].as_array().map(Vec::len), Some(2));
    let (status, body) = node
        .rest("alice", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
        .await;
    assert_eq!(status, 200);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "messages only: {body}");
    assert_eq!(messages[0]["content"], "via rest");
    assert_eq!(messages[0]["reactions"][0]["emoji"], "👍");
    assert_eq!(messages[1]["deleted"], true);

    // Read marks and unread counts.
    let unread = |user: &'static str| {
        let node = &node;
        let conv = conv.clone();
        async move {
            let (status, body) = node.rest(user, "GET", "/api/v1/chat/chats", None).await;
            assert_eq!(status, 200);
            let chat = body
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == conv.as_str())
                .cloned()
                .unwrap();
            chat["unread_count"].as_i64().unwrap()
        }
    };
    assert_eq!(
        unread("bob").await,
        0,
        "his send at seq 2 read what came before"
    );
    alice.say(&conv, "more").await;
    assert_eq!((unread("bob").await, unread("alice").await), (1, 0));
    let (status, _) = node
        .rest(
            "bob",
            "POST",
            &format!("/api/v1/chat/chats/{conv}/read"),
            Some(json!({"seq": 9})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(unread("bob").await, 0);
    let receipt = alice.next_of("read_receipt").await;
    assert_eq!(
        (
            receipt["data"]["user_id"].as_str(),
            receipt["data"]["seq"].as_i64()
        ),
        (Some("bob"), Some(9))
    );

    // Rename: any participant; every tab hears of it.
    let path = format!("/api/v1/chat/chats/{conv}");
    let (status, body) = node
        .rest("bob", "PATCH", &path, Some(json!({"title": "  Plans  "})))
        .await;
    assert_eq!(
        (status, body["title"].as_str()),
        (200, Some("Plans")),
        "{body}"
    );
    for c in [&mut alice, &mut alice2] {
        let u = c
            .until(|f| f["type"] == "conversation_updated" && f["data"]["reason"] == "renamed")
            .await
            .0;
        assert_eq!(u["data"]["conversation"]["title"], "Plans");
    }
    for title in ["", "   ", &"x".repeat(201)] {
        let (status, _) = node
            .rest("bob", "PATCH", &path, Some(json!({"title": title})))
            .await;
        assert_eq!(status, 422, "{title:?}");
    }

    // The owner leaves only after handing ownership on.
    let leave = format!("{path}/participants/alice");
    assert_eq!(node.rest("alice", "DELETE", &leave, None).await.0, 403);
    let (status, _) = node
        .rest("bob", "PATCH", &path, Some(json!({"owner_id": "bob"})))
        .await;
    assert_eq!(status, 403, "only the owner hands ownership on");
    let (status, _) = node
        .rest("alice", "PATCH", &path, Some(json!({"owner_id": "carol"})))
        .await;
    assert_eq!(status, 404, "to a participant only");
    let (status, body) = node
        .rest("alice", "PATCH", &path, Some(json!({"owner_id": "bob"})))
        .await;
    assert_eq!(
        (status, body["owner_id"].as_str()),
        (200, Some("bob")),
        "{body}"
    );
    let u = bob
        .until(|f| f["data"]["reason"] == "owner_changed")
        .await
        .0;
    assert_eq!(u["data"]["conversation"]["owner_id"], "bob");
    assert_eq!(node.rest("alice", "DELETE", &leave, None).await.0, 200);

    // Archived: every change is refused.
    assert_eq!(node.rest("bob", "DELETE", &path, None).await.0, 204);
    let edit = ask(&mut bob, "add_reaction", with(&m1, "emoji", "👍".into())).await;
    assert_eq!(error_code(&edit), "FORBIDDEN");
    let (status, _) = node
        .rest("bob", "PATCH", &path, Some(json!({"title": "late"})))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_frames_and_routes_keep_their_rules() {
    frames_and_routes_keep_their_rules("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frames_and_routes_keep_their_rules() {
    frames_and_routes_keep_their_rules("postgres").await;
}

/// A tab that was away gets every entry it missed, messages and changes,
/// once, in order, each in its current state; from the room's memory or
/// from the store (`recent` entries kept per room).
async fn a_resume_replays_what_was_missed(backend: &str, recent: usize) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database(backend, &dir).await else {
        return;
    };
    let tweak: fn(&mut Settings) = if recent == 0 {
        |s| s.limits.recent_messages_per_room = 0
    } else {
        |_| {}
    };
    let node = node_on(url, None, tweak).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let mut bob = node.connect("bob").await;
    bob.join(&conv, None).await;
    let first = bob.say(&conv, "before").await["data"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut away = node.connect("alice").await;
    away.join(&conv, None).await;
    away.sync().await;
    drop(away);

    // While alice is away: a message, an edit of an old one, a secret
    // written and deleted, reactions.
    let secret = bob.say(&conv, "secret").await["data"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let on = |msg: &str, extra: Value| {
        let mut data = json!({"conversation_id": conv, "message_id": msg});
        for (k, v) in extra.as_object().unwrap() {
            data[k] = v.clone();
        }
        data
    };
    for (kind, data) in [
        (
            "edit_message",
            on(&first, json!({"content": "before, edited"})),
        ),
        ("add_reaction", on(&secret, json!({"emoji": "👀"}))),
        ("delete_message", on(&secret, json!({}))),
        ("add_reaction", on(&first, json!({"emoji": "👍"}))),
    ] {
        let ack = ask(&mut bob, kind, data).await;
        assert!(ack["data"]["seq"].is_i64(), "{ack}");
    }
    bob.say(&conv, "after").await;

    let mut back = node.connect("alice").await;
    let joined = back.join(&conv, Some(1)).await;
    assert_eq!(joined["data"]["last_seq"], 7);
    let frames = back.sync().await;
    let log = entries(&frames);
    let seqs: Vec<i64> = log.iter().map(|e| seq_of(e)).collect();
    assert_eq!(
        seqs,
        vec![2, 3, 4, 5, 6, 7],
        "each missed entry once, in order"
    );
    let kinds: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message_received",
            "message_updated",
            "message_updated",
            "message_updated",
            "message_updated",
            "message_received"
        ]
    );
    let text = serde_json::to_string(&frames).unwrap();
    assert!(
        !text.contains("secret"),
        "a deleted text is never sent again: {text}"
    );
    assert_eq!(log[1]["data"]["message"]["content"], "before, edited");
    assert_eq!(
        log[1]["data"]["message"]["reactions"][0]["emoji"], "👍",
        "current state"
    );

    // And live from there, nothing twice.
    bob.say(&conv, "live").await;
    let live = back.next_of("message_received").await;
    assert_eq!(live["data"]["message"]["seq"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_the_rooms_memory_replays_changes_once_in_current_state() {
    a_resume_replays_what_was_missed("sqlite", 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_resume_from_the_store_replays_changes_once_in_current_state() {
    a_resume_replays_what_was_missed("sqlite", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_resume_from_the_store_replays_changes_once_in_current_state() {
    a_resume_replays_what_was_missed("postgres", 0).await;
}

/// Three nodes on one Redis: sends, edits and reactions from tabs on every
/// node, interleaved; every socket ends with the same log, gap-free.
async fn three_nodes_end_with_one_log(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database(backend, &dir).await else {
        return;
    };
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node_on(url.clone(), Some(redis.url()), |_| {}).await);
    }
    let users = ["ann", "ben", "cat"];
    let conv = nodes[0].create_chat("ann", &["ben", "cat"]).await;
    let mut tabs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for user in users {
            let mut c = node.connect(user).await;
            c.join(&conv, None).await;
            tabs.push((i, user, c));
        }
    }
    // Each tab sends, then edits its own message and reacts to the
    // previous tab's, pipelined with the others' traffic.
    let mut ids: Vec<String> = Vec::new();
    for round in 0..3 {
        for (t, (_, _, c)) in tabs.iter_mut().enumerate() {
            let ack = c.say(&conv, &format!("r{round} t{t}")).await;
            ids.push(ack["data"]["message_id"].as_str().unwrap().to_owned());
        }
        let count = tabs.len();
        for (t, (_, _, c)) in tabs.iter_mut().enumerate() {
            let own = &ids[ids.len() - count + t];
            let theirs = &ids[ids.len() - count + (t + count - 1) % count];
            c.send(json!({"type": "edit_message", "data": {
                "conversation_id": conv, "message_id": own, "content": format!("r{round} t{t} edited")}}))
                .await;
            c.send(json!({"type": "add_reaction", "data": {
                "conversation_id": conv, "message_id": theirs, "emoji": EMOJIS[t % 3]}}))
                .await;
        }
    }
    // 9 tabs × 3 rounds: 27 messages, 27 edits and 27 reactions (each
    // tab reacts to another tab's message, so none is a repeat).
    let total = 81;
    let mut logs = Vec::new();
    for (node, user, c) in tabs.iter_mut() {
        // Live: each tab gets every entry, in order, once.
        let (last, before) = c.until(|f| seq_of_any(f) == Some(total)).await;
        let mut live: Vec<i64> = entries(&before).iter().map(|e| seq_of(e)).collect();
        live.push(seq_of(&last));
        let first = live[0];
        assert_eq!(
            live,
            (first..=total).collect::<Vec<_>>(),
            "live, in order, once"
        );
        // And the whole log once more through a replay, to compare.
        let mut check = nodes[*node].connect(user).await;
        check.join(&conv, Some(0)).await;
        let frames = check.sync().await;
        let log: Vec<_> = entries(&frames)
            .iter()
            .map(|e| {
                (
                    seq_of(e),
                    e["type"].clone(),
                    e["data"]["message"]["id"].clone(),
                )
            })
            .collect();
        logs.push(log);
    }
    let want: Vec<i64> = (1..=total).collect();
    for log in &logs {
        assert_eq!(log.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(), want);
        assert_eq!(log, &logs[0], "every node replays the same log");
    }
    // The final states agree as well.
    let mut states = BTreeSet::new();
    for node in &nodes {
        let (_, body) = node
            .rest(
                "ann",
                "GET",
                &format!("/api/v1/chat/chats/{conv}?limit=200"),
                None,
            )
            .await;
        states.insert(body["messages"].to_string());
    }
    assert_eq!(states.len(), 1, "one state on every node");
}

const EMOJIS: [&str; 3] = ["👍", "🎉", "👀"];

/// The seq of a log entry frame, if it is one.
fn seq_of_any(f: &Value) -> Option<i64> {
    (f["type"] == "message_received" || f["type"] == "message_updated").then(|| seq_of(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_three_nodes_end_with_one_log() {
    three_nodes_end_with_one_log("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_nodes_end_with_one_log() {
    three_nodes_end_with_one_log("postgres").await;
}

/// A listing pages with `Confab-Next-Cursor` and refuses a forged cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let url = database("sqlite", &dir).await.unwrap();
    let node = node_on(url, None, |_| {}).await;
    let mut made = BTreeSet::new();
    for _ in 0..5 {
        made.insert(node.create_chat("dee", &[]).await);
    }
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut next = Some(String::new());
    while let Some(cursor) = next {
        let mut url = node.url("/api/v1/chat/chats?limit=2");
        if !cursor.is_empty() {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let resp = client
            .get(url)
            .bearer_auth(node.token("dee"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        next = resp
            .headers()
            .get("confab-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let link = resp.headers().get("link").is_some();
        assert_eq!(
            link,
            next.is_some(),
            "a Link header exactly when more follow"
        );
        let page: Vec<Value> = resp.json().await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), made);
    let (status, body) = node
        .rest("dee", "GET", "/api/v1/chat/chats?cursor=forged", None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("INVALID_FRAME"))
    );
}

/// Writes `from..=to` as pairs: a message, then an edit of it (two entries
/// each), from bob on `url`.
async fn write_and_edit(url: String, conv: String, from: i64, to: i64) {
    let mut bob = Client::connect(&url, &common::procs::token("bob"), "bob").await;
    for i in from..=to {
        let ack = bob.say(&conv, &format!("m{i}")).await;
        let id = ack["data"]["message_id"].as_str().unwrap().to_owned();
        let edit = json!({"conversation_id": conv, "message_id": id, "content": format!("m{i}!")});
        let ack = ask(&mut bob, "edit_message", edit).await;
        assert!(ack["data"]["seq"].is_i64(), "{ack}");
    }
}

/// A tab whose node is SIGKILLed resumes on another with `since_seq` and
/// ends with every entry, messages and edits, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_tabs_resume_elsewhere_with_every_change() {
    use common::procs::{create_chat, token, ProcCluster};
    let s = ProcCluster::start(2, 1).await;
    let conv = create_chat(&s.nodes[1].url(""), "bob", &["alice"]).await;
    let mut alice = Client::connect(&s.nodes[0].ws_url(), &token("alice"), "alice").await;
    alice.join(&conv, None).await;
    write_and_edit(s.nodes[1].ws_url(), conv.clone(), 1, 10).await;
    let (last, before) = alice.until(|f| seq_of_any(f) == Some(20)).await;
    let mut seqs: Vec<i64> = entries(&before).iter().map(|e| seq_of(e)).collect();
    seqs.push(seq_of(&last));

    let writer = tokio::spawn(write_and_edit(s.nodes[1].ws_url(), conv.clone(), 11, 40));
    s.nodes[0].signal("KILL");
    let closed = alice.closed().await;
    seqs.extend(entries(&closed.frames).iter().map(|e| seq_of(e)));
    let since = *seqs.last().unwrap();
    let mut again = Client::connect(&s.nodes[1].ws_url(), &token("alice"), "alice").await;
    again.join(&conv, Some(since)).await;
    writer.await.unwrap();
    let (last, before) = again.until(|f| seq_of_any(f) == Some(80)).await;
    seqs.extend(entries(&before).iter().map(|e| seq_of(e)));
    seqs.push(seq_of(&last));
    assert_eq!(
        seqs,
        (1..=80).collect::<Vec<_>>(),
        "every entry once, in order"
    );
}

/// Every change draws on the sender's send bucket, as a send does; a
/// message holds at most `limits.max_reactions_per_message` emojis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_rate_limited_and_reactions_bounded() {
    let node = start_node(|s| {
        s.limits.send_burst = 3;
        s.limits.send_rate_per_sec = 0.1;
        s.limits.max_reactions_per_message = 1;
    })
    .await;
    let conv = node.create_chat("ann", &[]).await;
    let mut ann = node.connect("ann").await;
    ann.join(&conv, None).await;
    let message = ann.say(&conv, "one").await["data"]["message_id"].clone();
    let react =
        |emoji: &str| json!({"conversation_id": conv, "message_id": message, "emoji": emoji});
    let ok = ask(&mut ann, "add_reaction", react("👍")).await;
    assert_eq!(ok["data"]["seq"], 2, "{ok}");
    let bounded = ask(&mut ann, "add_reaction", react("🎉")).await;
    assert_eq!(error_code(&bounded), "INVALID_FRAME");
    let limited = ask(&mut ann, "remove_reaction", react("👍")).await;
    assert_eq!(error_code(&limited), "RATE_LIMITED");
    assert!(limited["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    let (status, body) = node
        .rest("ann", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["conversation"]["last_seq"], 2,
        "nothing refused was stored"
    );
}
