//! The HTTP transport, where WebSockets are blocked: an event stream down,
//! frame POSTs up, to any node. What tests/chat.rs checks of a connection
//! runs on it too (`name::http`); here, what is its own: tickets, the
//! POST route's answers, expiry and drain as a last error event, a POST
//! that lands on another node, and one conversation seen alike over both
//! transports.

mod common;

use std::time::Duration;

use common::http::HttpLink;
use common::procs::Redis;
use common::{messages, start_cluster, start_node, Client, TestNode};
use serde_json::{json, Value};

/// A ticket for `user`, bought with their bearer token.
async fn ticket(node: &TestNode, user: &str) -> String {
    let (status, body) = node.rest(user, "POST", "/api/v1/chat/tickets", None).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["expires_at"].is_string(), "{body}");
    body["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_opens_with_a_ticket_once_or_a_bearer_token() {
    let node = start_node(|_| {}).await;
    let base = node.url("");

    let t = ticket(&node, "alice").await;
    let link = HttpLink::open(&base, "", Some(&format!("ticket={t}")))
        .await
        .expect("a ticket opens the stream");
    let mut alice = Client::over_http(link, "alice").await;
    // Its frames are POSTed with her bearer token.
    alice.http().token = node.token("alice");
    let again = HttpLink::open(&base, "", Some(&format!("ticket={t}"))).await;
    let refused = again.err().expect("a ticket works once");
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (401, Some("AUTH_FAILED"))
    );

    let refused = HttpLink::open(&base, "", Some("ticket=made-up"))
        .await
        .err()
        .expect("an unknown ticket is refused");
    assert_eq!(refused.status, 401);
    let refused = HttpLink::open(&base, "", Some("x=1")).await.err().unwrap();
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (401, Some("AUTH_REQUIRED"))
    );
    let refused = HttpLink::open(&base, "not.a.jwt", None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (401, Some("AUTH_FAILED"))
    );

    // The stream works as a socket would.
    let conv = node.create_chat("alice", &[]).await;
    alice.join(&conv, None).await;
    let ack = alice.say(&conv, "over http").await;
    assert_eq!(ack["data"]["seq"], 1);

    // Proxies are told not to buffer it.
    let resp = reqwest::Client::new()
        .get(node.url("/api/v1/chat/events"))
        .bearer_auth(node.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_posts_are_answered_on_the_stream_in_order_and_refused_when_wrong() {
    let node = start_node(|s| s.limits.max_frame_bytes = 4096).await;
    let conv = node.create_chat("alice", &[]).await;
    let mut alice = node_http(&node, "alice").await;
    let id = alice.http().connection_id.clone();

    // Frames of one POST are handled in order; a bad one fails alone.
    let frames = vec![
        json!({"type": "join_conversation", "id": "j", "data": {"conversation_id": conv}}),
        json!({"type": "send_message", "id": "a", "data": {"conversation_id": conv, "content": "one"}}),
        json!({"type": "teleport", "id": "bad", "data": {}}),
        json!({"type": "send_message", "id": "b", "data": {"conversation_id": conv, "content": "two"}}),
    ];
    alice.http().post(frames).await;
    let (ack, before) = alice.until(|f| f["data"]["ref"] == "b").await;
    assert_eq!(ack["data"]["seq"], 2);
    let refs: Vec<&str> = before
        .iter()
        .filter_map(|f| f["data"]["ref"].as_str())
        .collect();
    assert_eq!(refs, ["j", "a", "bad"]);
    let bad = before.iter().find(|f| f["data"]["ref"] == "bad").unwrap();
    assert_eq!(bad["data"]["code"], "UNKNOWN_TYPE");
    assert_eq!(
        messages(&before),
        [(1, "one".to_owned()), (2, "two".to_owned())],
        "each message live, before its ack"
    );

    // What the POST route itself refuses.
    let link = alice.http();
    let (status, body) = link.post_raw("\"a string\"".into()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("INVALID_FRAME"))
    );
    let (status, _) = link.post_raw("not json".into()).await;
    assert_eq!(status, 422);
    let many: Vec<Value> = (0..65).map(|_| json!({"type": "ping"})).collect();
    let (status, _) = link.post_raw(Value::Array(many).to_string()).await;
    assert_eq!(status, 422, "more than 64 frames in one POST");
    let huge = json!([{"type": "ping", "data": {"pad": "x".repeat(5000)}}]).to_string();
    let (status, _) = link.post_raw(huge).await;
    assert_eq!(status, 413);

    // Someone else's connection, and one that does not exist.
    let mallory = node.token("mallory");
    let (status, body) = post_as(&node, &mallory, &id, json!({"type": "ping"})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("FORBIDDEN")));
    let unknown = "01890000-0000-7000-8000-000000000000";
    let (status, body) = post_as(
        &node,
        &node.token("alice"),
        unknown,
        json!({"type": "ping"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    let (status, _) = post_as(&node, "forged", &id, json!({"type": "ping"})).await;
    assert_eq!(status, 401);

    // None of it reached the stream: the next frame is the next reply
    // (but for the announcement of Alice's own arrival, which comes when
    // it comes).
    let (pong, before) = alice.request("ping", json!({"n": 7})).await;
    assert_eq!(pong["data"]["n"], 7);
    assert!(
        before.iter().all(|f| f["type"] == "presence_changed"),
        "{before:?}"
    );

    // A closed connection's frames are NOT_FOUND.
    drop(alice);
    let alice_token = node.token("alice");
    common::procs::wait_until("the closed stream to be forgotten", common::WAIT, || {
        let (node, token, id) = (&node, &alice_token, &id);
        async move { post_as(node, token, id, json!({"type": "ping"})).await.0 == 404 }
    })
    .await;
}

/// POSTs `frame` to connection `id` with `token`.
async fn post_as(node: &TestNode, token: &str, id: &str, frame: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/api/v1/chat/connections/{id}/frames")))
        .bearer_auth(token)
        .json(&frame)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn node_http(node: &TestNode, user: &str) -> Client {
    Client::connect_http(&node.url(""), &node.token(user), user).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_stream_unless_renewed_by_a_post() {
    let node = start_node(|s| s.auth.leeway_secs = 0).await;
    let short = node
        .node
        .auth
        .mint("alice", None, Duration::from_secs(2))
        .unwrap();
    let link = HttpLink::open(&node.url(""), &short, None).await.unwrap();
    let mut renewed = Client::over_http(link, "alice").await;
    let link = HttpLink::open(&node.url(""), &short, None).await.unwrap();
    let mut lapsing = Client::over_http(link, "alice").await;

    let fresh = node.token("alice");
    renewed.http().token = fresh.clone();
    renewed
        .send(json!({"type": "auth", "id": "renew", "token": fresh}))
        .await;
    let ok = renewed.next_of("auth_success").await;
    assert_eq!(ok["data"]["ref"], "renew");

    let closed = lapsing.closed().await;
    assert_eq!(closed.code, Some(4003));
    let last = closed.frames.last().unwrap();
    assert_eq!(last["data"]["code"], "TOKEN_EXPIRED");
    assert_eq!(last["data"]["close_code"], 4003);

    // The renewed one outlives the first token.
    let (pong, _) = renewed.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_the_stream_with_1012_and_the_limits_hold() {
    let node = start_node(|s| s.limits.max_connections_per_user = 2).await;
    let mut a = node_http(&node, "alice").await;
    let _b = node.connect("alice").await;
    // A third connection of one user is refused, whatever the transport.
    let refused = HttpLink::open(&node.url(""), &node.token("alice"), None)
        .await
        .err()
        .expect("over the per-user limit");
    assert_eq!(refused.status, 403);

    let metrics = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("confab_connections_by_transport{transport=\"http\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );

    let draining = node.node.clone();
    tokio::spawn(async move { draining.drain().await });
    let closed = a.closed().await;
    assert_eq!(closed.code, Some(1012));
    assert_eq!(closed.frames.last().unwrap()["data"]["code"], "UNAVAILABLE");
    // A draining node takes no new stream.
    let refused = HttpLink::open(&node.url(""), &node.token("carol"), None)
        .await
        .err()
        .expect("a draining node refuses streams");
    assert_eq!(refused.status, 503);
}

/// Two nodes on one Redis and one database.
async fn pair(redis: &Redis, db: &tempfile::TempDir) -> (TestNode, TestNode) {
    let mut nodes = start_cluster(2, &redis.url(), db, |s| {
        s.limits.send_burst = 10_000;
        s.limits.send_rate_per_sec = 10_000.0;
    })
    .await;
    let second = nodes.pop().unwrap();
    (nodes.pop().unwrap(), second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_to_another_node_reach_the_stream_and_both_transports_see_one_conversation() {
    let redis = Redis::start().await;
    let db = tempfile::tempdir().unwrap();
    let (n0, n1) = pair(&redis, &db).await;
    let conv = n0.create_chat("alice", &["bob"]).await;

    // Alice's stream is on n0; her frames go to n1 (another balancer pick).
    let mut alice = node_http(&n0, "alice").await;
    alice.http().post_base = n1.url("");
    let mut bob = n1.connect("bob").await;
    alice.join(&conv, None).await;
    bob.join(&conv, None).await;

    // Interleaved sends, edits and reactions from both transports; every
    // frame each receives is kept.
    let (mut seen_by_alice, mut seen_by_bob) = (Vec::new(), Vec::new());
    let mut first_id = String::new();
    for i in 0..5 {
        let ack = keep(
            &mut alice,
            &mut seen_by_alice,
            "send_message",
            json!({"conversation_id": conv, "content": format!("a{i}")}),
        )
        .await;
        if i == 0 {
            first_id = ack["data"]["message_id"].as_str().unwrap().to_owned();
        }
        keep(
            &mut bob,
            &mut seen_by_bob,
            "send_message",
            json!({"conversation_id": conv, "content": format!("b{i}")}),
        )
        .await;
    }
    let edit = json!({"conversation_id": conv, "message_id": first_id, "content": "a0 (edited)"});
    let ack = keep(&mut alice, &mut seen_by_alice, "edit_message", edit).await;
    assert_eq!(ack["data"]["seq"], 11, "{ack}");
    let react = json!({"conversation_id": conv, "message_id": first_id, "emoji": "👍"});
    let ack = keep(&mut bob, &mut seen_by_bob, "add_reaction", react).await;
    assert_eq!(ack["data"]["seq"], 12, "{ack}");

    // Each saw every entry once, in one order, the same on both transports.
    let log = |frames: &[Value]| -> Vec<(i64, String)> {
        frames
            .iter()
            .filter_map(|f| match f["type"].as_str() {
                Some("message_received") => Some((
                    f["data"]["message"]["seq"].as_i64().unwrap(),
                    f["data"]["message"]["content"].as_str().unwrap().to_owned(),
                )),
                Some("message_updated") => Some((
                    f["data"]["seq"].as_i64().unwrap(),
                    f["data"]["change"]["kind"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                )),
                _ => None,
            })
            .collect()
    };
    seen_by_alice.extend(until_seq(&mut alice, &seen_by_alice, 12).await);
    seen_by_bob.extend(until_seq(&mut bob, &seen_by_bob, 12).await);
    let (alices, bobs) = (log(&seen_by_alice), log(&seen_by_bob));
    assert_eq!(alices.len(), 12, "{alices:?}");
    assert_eq!(alices, bobs);
    let seqs: Vec<i64> = alices.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());

    // Alice's stream ends; she reconnects on n1 and resumes from seq 4.
    drop(alice);
    bob.say(&conv, "while she was away").await;
    let mut alice = node_http(&n1, "alice").await;
    alice.join(&conv, Some(4)).await;
    let (_, replayed) = alice.request("ping", json!({})).await;
    let seqs: Vec<i64> = log(&replayed).iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (5..=13).collect::<Vec<_>>());
}

/// Sends a request; keeps every frame up to its reply (included) in
/// `kept`; returns the reply.
async fn keep(c: &mut Client, kept: &mut Vec<Value>, kind: &str, data: Value) -> Value {
    let (reply, before) = c.request(kind, data).await;
    kept.extend(before);
    kept.push(reply.clone());
    reply
}

/// Frames until the log entry with `seq` arrived, unless it is among
/// `kept` already.
async fn until_seq(c: &mut Client, kept: &[Value], seq: i64) -> Vec<Value> {
    let is_it = |f: &Value| {
        let at = f["data"]["seq"]
            .as_i64()
            .or_else(|| f["data"]["message"]["seq"].as_i64());
        matches!(
            f["type"].as_str(),
            Some("message_received" | "message_updated")
        ) && at == Some(seq)
    };
    if kept.iter().any(is_it) {
        return Vec::new();
    }
    let (last, mut before) = c.until(is_it).await;
    before.push(last);
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_posts_nothing_ends_as_a_dead_peer() {
    let node = start_node(|s| {
        s.server.idle_timeout_secs = 1.0;
        s.presence.grace_secs = 1;
    })
    .await;
    let conv = node.create_chat("alice", &[]).await;
    let mut alice = node_http(&node, "alice").await;
    alice.join(&conv, None).await;
    // Silent: no POST, so no sign of life.
    let closed = alice.closed().await;
    assert_eq!(closed.code, Some(1001));
    // And she is not left present.
    let path = format!("/api/v1/chat/chats/{conv}/presence");
    common::procs::wait_until("alice to be gone", common::WAIT, || {
        let (node, path) = (&node, &path);
        async move { node.rest("alice", "GET", path, None).await.1["users"] == json!([]) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_posts_is_rate_limited_before_it_reaches_the_bus() {
    let node = start_node(|s| {
        s.limits.frame_rate_per_sec = 0.5;
        s.limits.frame_burst = 2;
        s.limits.send_rate_per_sec = 0.0;
        s.limits.send_burst = 1;
    })
    .await;
    let mut alice = node_http(&node, "alice").await;
    let id = alice.http().connection_id.clone();
    let token = node.token("alice");
    for _ in 0..3 {
        let (status, body) = post_as(&node, &token, &id, json!({"type": "ping"})).await;
        assert_eq!(status, 202, "{body}");
    }
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/api/v1/chat/connections/{id}/frames")))
        .bearer_auth(&token)
        .json(&json!({"type": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
}
