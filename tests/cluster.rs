//! Many nodes, one conversation: nodes share only Redis (started by each
//! test) and the database. Tabs on every node see every event once, in one
//! order; a Redis restart loses no stored message.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::procs::{wait_until, Redis};
use common::{messages, start_cluster, Client, TestNode};
use serde_json::{json, Value};

/// `n` in-process nodes on one Redis and one SQLite file.
async fn cluster(n: usize, redis: &Redis, db: &tempfile::TempDir) -> Vec<TestNode> {
    start_cluster(n, &redis.url(), db, |s| {
        s.limits.send_burst = 10_000;
        s.limits.send_rate_per_sec = 10_000.0;
    })
    .await
}

/// How many frames of `kind` are in `frames`.
fn count_of(frames: &[Value], kind: &str) -> usize {
    frames.iter().filter(|f| f["type"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_on_three_nodes_and_a_friend_on_a_fourth_see_everything_once() {
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(4, &redis, &db).await;
    let mut tabs = [
        nodes[0].connect("alice").await,
        nodes[1].connect("alice").await,
        nodes[2].connect("alice").await,
    ];
    let mut bob = nodes[3].connect("bob").await;
    let conv = nodes[0].create_chat("alice", &["bob"]).await;

    let mut all: Vec<&mut Client> = tabs.iter_mut().collect();
    all.push(&mut bob);
    for c in all.iter_mut() {
        let u = c.next_of("conversation_updated").await;
        assert_eq!(u["data"]["reason"], "created");
        c.join(&conv, None).await;
    }

    // Every frame each tab receives from here on, in order.
    let mut logs: Vec<Vec<Value>> = vec![Vec::new(); 4];
    async fn log_until(c: &mut Client, log: &mut Vec<Value>, pred: impl Fn(&Value) -> bool) {
        let (hit, skipped) = c.until(pred).await;
        log.extend(skipped);
        log.push(hit);
    }

    // A message from alice's first tab, typing from her second, a receipt from bob.
    let (ack, before) = all[0]
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "hi from n0"}),
        )
        .await;
    logs[0].extend(before);
    assert_eq!(ack["data"]["seq"], 1);
    let (_, before) = all[1]
        .request(
            "typing",
            json!({"conversation_id": conv, "is_typing": true}),
        )
        .await;
    logs[1].extend(before);
    for i in [2usize, 3] {
        log_until(all[i], &mut logs[i], |f| f["type"] == "typing_indicator").await;
    }
    let (_, before) = all[3]
        .request("mark_read", json!({"conversation_id": conv, "seq": 1}))
        .await;
    logs[3].extend(before);
    for i in 0..3 {
        log_until(all[i], &mut logs[i], |f| f["type"] == "read_receipt").await;
    }
    // A marker message proves everything before it has been delivered everywhere.
    let (marker, before) = all[3]
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "marker"}),
        )
        .await;
    logs[3].extend(before);
    assert_eq!(marker["data"]["seq"], 2);
    for (i, c) in all.iter_mut().enumerate() {
        if !logs[i]
            .iter()
            .any(|f| f["data"]["message"]["content"] == "marker")
        {
            log_until(c, &mut logs[i], |f| {
                f["data"]["message"]["content"] == "marker"
            })
            .await;
        }
        logs[i].extend(c.sync().await);
        let frames = &logs[i];
        assert_eq!(
            messages(frames),
            vec![(1, "hi from n0".to_string()), (2, "marker".to_string())],
            "tab {i}: {frames:?}"
        );
        let typing: Vec<_> = frames
            .iter()
            .filter(|f| f["type"] == "typing_indicator" && f["data"]["is_typing"] == true)
            .collect();
        assert_eq!(
            typing.len(),
            if i == 1 { 0 } else { 1 },
            "tab {i} typing: {frames:?}"
        );
        assert_eq!(count_of(frames, "read_receipt"), 1, "tab {i}: {frames:?}");
        assert_eq!(
            count_of(frames, "conversation_updated"),
            0,
            "tab {i}: {frames:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_every_node_yield_one_order_everywhere() {
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(3, &redis, &db).await;
    let users = ["u0", "u1", "u2"];
    let conv = nodes[0].create_chat("u0", &["u1", "u2"]).await;
    let mut receivers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut r = node.connect(users[i]).await;
        r.join(&conv, None).await;
        receivers.push(r);
    }
    const EACH: usize = 200;
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut s = node.connect(users[i]).await;
        let conv = conv.clone();
        senders.push(tokio::spawn(async move {
            for k in 0..EACH {
                s.say(&conv, &format!("{i}-{k}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let total = (EACH * nodes.len()) as i64;
    let mut orders = Vec::new();
    for r in receivers.iter_mut() {
        let (last, frames) = r.until(|f| f["data"]["message"]["seq"] == total).await;
        let mut got = messages(&frames);
        got.extend(messages(&[last]));
        let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "contiguous, in order, once"
        );
        orders.push(got);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "the same order on every node"
    );
    // Each sender's own messages are in its send order.
    for i in 0..nodes.len() {
        let mine: Vec<&String> = orders[0]
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.starts_with(&format!("{i}-")))
            .collect();
        let want: Vec<String> = (0..EACH).map(|k| format!("{i}-{k}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_stored_message() {
    let mut redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(2, &redis, &db).await;
    let conv = nodes[0].create_chat("alice", &["bob"]).await;
    let mut bob0 = nodes[0].connect("bob").await;
    let mut bob1 = nodes[1].connect("bob").await;
    bob0.join(&conv, None).await;
    bob1.join(&conv, None).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut alice_far = nodes[1].connect("alice").await;

    let mut sent = 0;
    for _ in 0..20 {
        sent += 1;
        alice.say(&conv, &format!("m{sent}")).await;
    }
    redis.kill();
    // Sends keep succeeding on both nodes: they are stored.
    for i in 0..20 {
        sent += 1;
        let c = if i % 2 == 0 {
            &mut alice
        } else {
            &mut alice_far
        };
        let ack = c.say(&conv, &format!("m{sent}")).await;
        assert_eq!(ack["data"]["seq"], sent);
    }
    // A socket that arrives while Redis is away connects and joins anyway.
    let mut late = nodes[1].connect("bob").await;
    late.join(&conv, Some(0)).await;
    redis.restart().await;
    for node in &nodes {
        let url = node.url("/ready");
        wait_until("ready after the restart", Duration::from_secs(20), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
        })
        .await;
    }
    for _ in 0..10 {
        sent += 1;
        alice_far.say(&conv, &format!("m{sent}")).await;
    }
    for bob in [&mut bob0, &mut bob1, &mut late] {
        let (last, frames) = bob.until(|f| f["data"]["message"]["seq"] == sent).await;
        let mut got = messages(&frames);
        got.extend(messages(&[last]));
        let want: Vec<(i64, String)> = (1..=sent).map(|i| (i, format!("m{i}"))).collect();
        assert_eq!(got, want, "every message, in order, once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_bus() {
    let mut redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(1, &redis, &db).await;
    let url = nodes[0].url("/ready");
    let status = |url: String| async move {
        reqwest::get(&url)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_until("ready", Duration::from_secs(10), || {
        let url = url.clone();
        async move { status(url).await == 200 }
    })
    .await;
    redis.kill();
    wait_until("not ready without Redis", Duration::from_secs(10), || {
        let url = url.clone();
        async move { status(url).await == 503 }
    })
    .await;
    redis.restart().await;
    wait_until("ready again", Duration::from_secs(20), || {
        let url = url.clone();
        async move { status(url).await == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_updates_cross_nodes_to_every_tab() {
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(3, &redis, &db).await;
    let conv = nodes[0].create_chat("alice", &[]).await;
    let mut carol = [
        nodes[1].connect("carol").await,
        nodes[2].connect("carol").await,
    ];
    let (status, _) = nodes[0]
        .rest(
            "alice",
            "POST",
            &format!("/api/v1/chat/chats/{conv}/participants"),
            Some(json!({"user_id": "carol"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut per_tab = HashMap::new();
    for (i, c) in carol.iter_mut().enumerate() {
        let u = c.next_of("conversation_updated").await;
        assert_eq!(u["data"]["reason"], "participant_added");
        let mut rest = c.sync().await;
        rest.retain(|f| f["type"] == "conversation_updated");
        per_tab.insert(i, rest.len());
    }
    assert_eq!(per_tab.values().sum::<usize>(), 0, "once per tab");
}
