//! Recovery that never gives up: Redis and the database failing together
//! strand no acknowledged message, and a join answers exactly once even
//! when its replay cannot be read.
//!
//! Nodes run in-process on Postgres, reached through a relay the test cuts
//! (the database keeps running, it just refuses the nodes), and on a
//! `redis-server` the test kills and restarts. Needs
//! `CONFAB_TEST_POSTGRES_URL` (each test makes a database of its own there);
//! skipped with a notice when it is unset.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::procs::{wait_until, Redis};
use common::relay::Relay;
use common::{messages, start_node, TestNode};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::json;

/// How long a test waits for a node to notice a fault or a recovery.
const NOTICE: Duration = Duration::from_secs(30);

/// A database of this test's own, reached through a relay.
struct Postgres {
    relay: Relay,
    /// The nodes' URL: the relay's address, this test's database.
    url: String,
    admin: DatabaseConnection,
    name: String,
}

impl Postgres {
    /// None (with a notice) when no Postgres is configured.
    async fn start() -> Option<Postgres> {
        let Ok(url) = std::env::var("CONFAB_TEST_POSTGRES_URL") else {
            eprintln!("skipped: set CONFAB_TEST_POSTGRES_URL to run the recovery tests");
            return None;
        };
        let parsed = reqwest::Url::parse(&url).expect("CONFAB_TEST_POSTGRES_URL is a URL");
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = parsed.port().unwrap_or(5432);
        let target: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .expect("the Postgres host resolves");
        let name = format!("recovery_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(&url).await.unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let relay = Relay::start(target).await;
        let mut node_url = parsed;
        node_url.set_host(Some("127.0.0.1")).unwrap();
        node_url.set_port(Some(relay.port)).unwrap();
        node_url.set_path(&format!("/{name}"));
        Some(Postgres {
            relay,
            url: node_url.to_string(),
            admin,
            name,
        })
    }

    /// Drops the test's database (the nodes' connections with it).
    async fn remove(self) {
        let _ = self
            .admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// A node on the test's database and, if given, Redis.
async fn node(id: &str, pg: &Postgres, redis: Option<&Redis>) -> TestNode {
    let (id, db, redis) = (id.to_owned(), pg.url.clone(), redis.map(Redis::url));
    start_node(move |s| {
        s.server.node_id = id;
        s.database.url = db;
        s.bus.redis_url = redis.unwrap_or_default();
        // Every resume further back than the room's position reads the store.
        s.limits.recent_messages_per_room = 0;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_while_redis_was_down_arrives_once_the_database_is_back_too() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let mut redis = Redis::start().await;
    let a = node("a", &pg, Some(&redis)).await;
    let b = node("b", &pg, Some(&redis)).await;
    let conv = a.create_chat("alice", &["bob"]).await;
    let mut bob = b.connect("bob").await;
    bob.join(&conv, None).await;
    let mut alice = a.connect("alice").await;
    alice.join(&conv, None).await;

    // Redis dies: a message sent via A is stored and acknowledged, but its
    // publish fails.
    redis.kill();
    let (status, sent) = a
        .rest(
            "alice",
            "POST",
            &format!("/api/v1/chat/chats/{conv}/messages"),
            Some(json!({"content": "sent while redis was down"})),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["seq"], 1);
    // A's own socket has it from the store, Redis still down.
    let (got, _) = alice.until(|f| f["type"] == "message_received").await;
    assert_eq!(got["data"]["message"]["seq"], 1, "{got}");

    // The database refuses the nodes while Redis comes back: B's catch-up
    // after the reconnect fails.
    pg.relay.down();
    let metrics = &b.node.metrics;
    let (resyncs, retries) = (metrics.bus_resyncs.get(), metrics.recovery_retries.get());
    redis.restart().await;
    wait_until("B to resync and fail to read the store", NOTICE, || async {
        metrics.bus_resyncs.get() > resyncs && metrics.recovery_retries.get() > retries
    })
    .await;

    // The database is back; nothing else is sent.
    pg.relay.up();
    let (got, before) = bob.until(|f| f["type"] == "message_received").await;
    assert_eq!(messages(&before), vec![]);
    assert_eq!(
        messages(&[got]),
        vec![(1, "sent while redis was down".to_string())]
    );
    assert_eq!(messages(&bob.sync().await), vec![], "once");

    // A resume from before it, on B, replays it too.
    let mut again = b.connect("bob").await;
    let (joined, _) = again
        .request(
            "join_conversation",
            json!({"conversation_id": conv, "since_seq": 0}),
        )
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["data"]["last_seq"], 1);
    let replayed = again.next().await;
    assert_eq!(
        messages(&[replayed]),
        vec![(1, "sent while redis was down".to_string())]
    );

    drop((a, b));
    pg.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_replay_cannot_be_read_gets_one_error_and_is_not_joined() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let n = node("n", &pg, None).await;
    let conv = n.create_chat("alice", &["bob"]).await;
    let mut alice = n.connect("alice").await;
    alice.join(&conv, None).await;
    for i in 1..=3 {
        alice.say(&conv, &format!("m{i}")).await;
    }
    let mut bob = n.connect("bob").await;

    // The room is open at seq 3; a resume from 1 must read the store.
    pg.relay.down();
    let (reply, before) = bob
        .request(
            "join_conversation",
            json!({"conversation_id": conv, "since_seq": 1}),
        )
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["data"]["code"], "UNAVAILABLE");
    assert!(
        before.is_empty(),
        "nothing before the one reply: {before:?}"
    );
    let join_ref = reply["data"]["ref"].clone();
    let after = bob.sync().await;
    assert!(
        after.iter().all(|f| f["data"]["ref"] != join_ref),
        "a second reply to the join: {after:?}"
    );

    // The database is back: bob was not left joined ...
    pg.relay.up();
    let (ack, before) = alice
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "m4"}),
        )
        .await;
    assert_eq!(ack["data"]["seq"], 4, "{ack}");
    // Queued to every joined socket of the node at once, before the ack.
    assert_eq!(messages(&before), vec![(4, "m4".to_string())]);
    assert_eq!(messages(&bob.sync().await), vec![], "not half-joined");

    // ... and the same join now works.
    let (joined, _) = bob
        .request(
            "join_conversation",
            json!({"conversation_id": conv, "since_seq": 1}),
        )
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(bob.next().await);
    }
    assert_eq!(
        messages(&replayed),
        vec![(2, "m2".into()), (3, "m3".into()), (4, "m4".into())]
    );

    drop(n);
    pg.remove().await;
}
