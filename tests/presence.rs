//! Presence across a cluster: one `presence_changed` per change, wherever
//! the tabs are; none for a reload within the grace; a killed node's users
//! announced gone once, after ttl + grace, never back as zombies; nothing
//! lost when Redis restarts empty; no events in big conversations.
//!
//! Each test keeps every frame an observer receives and checks the whole
//! sequence at the end, after a later event it waited for: an
//! announcement too many would be there.

mod common;

use common::procs::{token, wait_until, ProcCluster, Redis};
use common::{start_cluster, Client, TestNode, WAIT};
use serde_json::{json, Value};

/// Short timings, so departures are announced within a test's wait.
const TTL_SECS: u64 = 3;
const GRACE_SECS: u64 = 2;

/// `n` in-process nodes on one Redis and one SQLite file, with short
/// presence timings.
async fn cluster(
    n: usize,
    redis: &Redis,
    db: &tempfile::TempDir,
    max_members: usize,
) -> Vec<TestNode> {
    start_cluster(n, &redis.url(), db, |s| {
        s.presence.ttl_secs = TTL_SECS;
        s.presence.grace_secs = GRACE_SECS;
        s.presence.max_members_for_events = max_members;
    })
    .await
}

/// Nodes on a fresh Redis, and a conversation of bob, alice and carol
/// with bob joined on the first node. Bind every field: Redis and the
/// database go when theirs is dropped.
struct Scene {
    redis: Redis,
    _db: tempfile::TempDir,
    nodes: Vec<TestNode>,
    conv: String,
    bob: Client,
}

async fn scene(n: usize, max_members: usize) -> Scene {
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let nodes = cluster(n, &redis, &db, max_members).await;
    let conv = nodes[0].create_chat("bob", &["alice", "carol"]).await;
    let mut bob = nodes[0].connect("bob").await;
    bob.join(&conv, None).await;
    Scene {
        redis,
        _db: db,
        nodes,
        conv,
        bob,
    }
}

/// The `presence_changed` frames among `frames`, as (user, present).
fn changes(frames: &[Value]) -> Vec<(String, bool)> {
    frames
        .iter()
        .filter(|f| f["type"] == "presence_changed")
        .map(|f| {
            (
                f["data"]["user_id"].as_str().unwrap().to_owned(),
                f["data"]["present"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Frames until `user`'s presence changes to `present`; all of them.
async fn until_change(c: &mut Client, user: &str, present: bool) -> Vec<Value> {
    let (last, mut before) = c
        .until(|f| {
            f["type"] == "presence_changed"
                && f["data"]["user_id"] == user
                && f["data"]["present"] == present
        })
        .await;
    before.push(last);
    before
}

async fn present(c: &mut Client, conv: &str) -> Vec<String> {
    let (reply, _) = c
        .request("presence", json!({"conversation_id": conv}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    serde_json::from_value(reply["data"]["users"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_announcement_per_change_wherever_the_tabs_are_and_none_for_a_reload() {
    let Scene {
        redis: _redis,
        _db,
        nodes,
        conv,
        mut bob,
    } = scene(3, 200).await;
    let mut seen = until_change(&mut bob, "bob", true).await;

    // Alice opens a tab on n1, then another on n2: one arrival.
    let mut tab1 = nodes[1].connect("alice").await;
    tab1.join(&conv, None).await;
    seen.extend(until_change(&mut bob, "alice", true).await);
    let mut tab2 = nodes[2].connect("alice").await;
    tab2.join(&conv, None).await;
    // Closing the first tab leaves her present through the second.
    drop(tab1);
    // A reload of the second tab, onto another node, within the grace.
    drop(tab2);
    let mut tab3 = nodes[1].connect("alice").await;
    tab3.join(&conv, None).await;
    assert_eq!(present(&mut bob, &conv).await, ["alice", "bob"]);

    // Carol comes and goes: her departure is announced after the grace.
    let mut carol = nodes[2].connect("carol").await;
    carol.join(&conv, None).await;
    seen.extend(until_change(&mut bob, "carol", true).await);
    let (left, _) = carol
        .request("leave_conversation", json!({"conversation_id": conv}))
        .await;
    assert_eq!(left["type"], "left");
    seen.extend(until_change(&mut bob, "carol", false).await);
    // By then alice's reload is long past its grace: had it been
    // announced, it would be here.
    assert_eq!(
        changes(&seen),
        [
            ("bob".to_owned(), true),
            ("alice".to_owned(), true),
            ("carol".to_owned(), true),
            ("carol".to_owned(), false),
        ]
    );
    assert_eq!(present(&mut bob, &conv).await, ["alice", "bob"]);

    // Alice's last tab closes: announced once, after the grace.
    drop(tab3);
    let gone = until_change(&mut bob, "alice", false).await;
    assert_eq!(changes(&gone), [("alice".to_owned(), false)]);
    assert_eq!(present(&mut bob, &conv).await, ["bob"]);
    // Over REST too.
    let (status, body) = nodes[2]
        .rest(
            "alice",
            "GET",
            &format!("/api/v1/chat/chats/{conv}/presence"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"], json!(["bob"]));
    // Not for outsiders.
    let (status, _) = nodes[2]
        .rest(
            "mallory",
            "GET",
            &format!("/api/v1/chat/chats/{conv}/presence"),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_presence_and_announces_nothing() {
    let Scene {
        mut redis,
        _db,
        nodes,
        conv,
        mut bob,
    } = scene(2, 200).await;
    let mut alice = nodes[1].connect("alice").await;
    alice.join(&conv, None).await;
    let mut seen = until_change(&mut bob, "alice", true).await;

    // Redis restarts empty (no persistence): the nodes re-assert theirs.
    redis.kill();
    redis.restart().await;
    wait_until("presence to be re-asserted", WAIT, || {
        let (node, conv) = (&nodes[1], &conv);
        async move {
            let (status, body) = node
                .rest(
                    "alice",
                    "GET",
                    &format!("/api/v1/chat/chats/{conv}/presence"),
                    None,
                )
                .await;
            status == 200 && body["users"] == json!(["alice", "bob"])
        }
    })
    .await;

    // Events cross nodes again once bob's node has resubscribed: a message
    // stored now reaches him live or through the catch-up that follows
    // the resubscriptions.
    alice.say(&conv, "after the restart").await;
    let (_, before) = bob
        .until(|f| f["data"]["message"]["content"] == "after the restart")
        .await;
    seen.extend(before);

    // A later change is still announced, once: the restart itself was not.
    let mut carol = nodes[1].connect("carol").await;
    carol.join(&conv, None).await;
    seen.extend(until_change(&mut bob, "carol", true).await);
    assert_eq!(
        changes(&seen),
        [
            ("bob".to_owned(), true),
            ("alice".to_owned(), true),
            ("carol".to_owned(), true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_conversation_gets_no_presence_events_but_presence_answers() {
    // More than 2 participants: too big for events.
    let Scene {
        redis: _redis,
        _db,
        nodes,
        conv,
        mut bob,
    } = scene(2, 2).await;
    let mut alice = nodes[1].connect("alice").await;
    alice.join(&conv, None).await;
    wait_until("alice to be present", WAIT, || {
        let (node, conv) = (&nodes[0], &conv);
        async move {
            let (_, body) = node
                .rest(
                    "bob",
                    "GET",
                    &format!("/api/v1/chat/chats/{conv}/presence"),
                    None,
                )
                .await;
            body["users"] == json!(["alice", "bob"])
        }
    })
    .await;
    alice.say(&conv, "after my arrival").await;
    let (_, before) = bob.until(|f| f["type"] == "message_received").await;
    assert_eq!(changes(&before), []);
    assert_eq!(present(&mut bob, &conv).await, ["alice", "bob"]);
}

/// A node process SIGKILLed while its users are present: the survivors
/// announce each one gone exactly once, after ttl + grace, and they stay
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_users_are_announced_gone_once_and_never_return() {
    let env = [
        ("CONFAB_PRESENCE__TTL_SECS".to_owned(), TTL_SECS.to_string()),
        (
            "CONFAB_PRESENCE__GRACE_SECS".to_owned(),
            GRACE_SECS.to_string(),
        ),
    ];
    let cluster = ProcCluster::start_with(3, 0, &env).await;
    let base = cluster.nodes[0].url("");
    let conv = common::procs::create_chat(&base, "bob", &["alice", "dave"]).await;
    let ws = |i: usize| cluster.nodes[i].ws_url();
    let mut bob = Client::connect(&ws(0), &token("bob"), "bob").await;
    bob.join(&conv, None).await;
    let mut dave = Client::connect(&ws(2), &token("dave"), "dave").await;
    dave.join(&conv, None).await;
    let mut alice = Client::connect(&ws(1), &token("alice"), "alice").await;
    alice.join(&conv, None).await;
    let mut seen = until_change(&mut bob, "alice", true).await;
    let mut seen_by_dave = until_change(&mut dave, "alice", true).await;

    // n1 dies without a goodbye; n0 and n2 both sweep, one announces.
    cluster.nodes[1].signal("KILL");
    seen.extend(until_change(&mut bob, "alice", false).await);
    seen_by_dave.extend(until_change(&mut dave, "alice", false).await);

    // A later change, so anything announced twice would have arrived.
    dave.request("leave_conversation", json!({"conversation_id": conv}))
        .await;
    seen.extend(until_change(&mut bob, "dave", false).await);
    let alices = |frames: &[Value]| -> Vec<(String, bool)> {
        changes(frames)
            .into_iter()
            .filter(|(u, _)| u == "alice")
            .collect()
    };
    assert_eq!(
        alices(&seen),
        [("alice".to_owned(), true), ("alice".to_owned(), false)]
    );
    assert_eq!(alices(&seen_by_dave), alices(&seen));
    // No zombie: still gone after dave's departure, which came a grace
    // later (n0 and n2 renewed and swept meanwhile).
    assert_eq!(present(&mut bob, &conv).await, ["bob"]);
}

/// A node drained (SIGTERM) hands its users over: one who reconnects to
/// another node within the grace is never announced gone; one who does not
/// is, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_announces_only_the_users_who_do_not_come_back() {
    let Scene {
        redis: _redis,
        _db,
        nodes,
        conv,
        mut bob,
    } = scene(3, 200).await;
    let mut alice = nodes[1].connect("alice").await;
    alice.join(&conv, None).await;
    let mut seen = until_change(&mut bob, "alice", true).await;
    let mut carol = nodes[1].connect("carol").await;
    carol.join(&conv, None).await;
    seen.extend(until_change(&mut bob, "carol", true).await);

    let draining = nodes[1].node.clone();
    tokio::spawn(async move { draining.drain().await });
    assert_eq!(alice.closed().await.code, Some(1012));
    assert_eq!(carol.closed().await.code, Some(1012));
    // Alice reconnects elsewhere at once; carol does not.
    let mut alice = nodes[2].connect("alice").await;
    alice.join(&conv, None).await;
    seen.extend(until_change(&mut bob, "carol", false).await);
    assert_eq!(
        changes(&seen)
            .into_iter()
            .filter(|(u, _)| u != "bob")
            .collect::<Vec<_>>(),
        [
            ("alice".to_owned(), true),
            ("carol".to_owned(), true),
            ("carol".to_owned(), false),
        ]
    );
    assert_eq!(present(&mut bob, &conv).await, ["alice", "bob"]);
}
