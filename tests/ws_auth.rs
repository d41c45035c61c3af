//! First-frame authentication over a real socket: every failure gets one
//! error frame, then close 4001, and nothing else. Renewal and expiry.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{start_node, TestNode};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn sign(alg: Algorithm, secret: &[u8], sub: &str, exp_from_now: i64) -> String {
    let claims = json!({"sub": sub, "exp": Utc::now().timestamp() + exp_from_now});
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Opens a socket, sends `first` (if any) and checks: one error with `code`,
/// then 4001. Returns the error frame.
async fn assert_rejected(node: &TestNode, first: Option<String>, code: &str) -> serde_json::Value {
    let mut c = node.raw().await;
    if let Some(text) = first {
        c.send_text(text).await;
    }
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4001), "close code for {code}");
    assert_eq!(
        closed.frames.len(),
        1,
        "exactly one frame: {:?}",
        closed.frames
    );
    assert_eq!(closed.frames[0]["type"], "error");
    assert_eq!(
        closed.frames[0]["data"]["code"], code,
        "{:?}",
        closed.frames
    );
    closed.frames[0].clone()
}

/// `GET /api/v1/chat/chats` with this `Authorization` header (or none):
/// the status and the error code and message, if any.
async fn list_with(node: &TestNode, authorization: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(node.url("/api/v1/chat/chats"));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    (status, text("code"), text("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_first_frame_failure_is_an_error_then_4001() {
    let node = start_node(|s| {
        s.auth.timeout_secs = 0.5;
        s.auth.leeway_secs = 0;
    })
    .await;
    let secret = node.node.settings.auth.jwt_secret.clone().into_bytes();

    // Silence past the timeout.
    assert_rejected(&node, None, "AUTH_REQUIRED").await;
    // Another type first.
    let conv = uuid::Uuid::now_v7();
    assert_rejected(
        &node,
        Some(json!({"type": "join_conversation", "data": {"conversation_id": conv}}).to_string()),
        "AUTH_REQUIRED",
    )
    .await;
    // Not JSON.
    assert_rejected(&node, Some("{nope".into()), "AUTH_REQUIRED").await;
    // Signed with another secret.
    let forged = sign(Algorithm::HS256, b"not-the-configured-secret", "eve", 3600);
    assert_rejected(
        &node,
        Some(json!({"type": "auth", "token": forged}).to_string()),
        "AUTH_FAILED",
    )
    .await;
    // Expired.
    let expired = sign(Algorithm::HS256, &secret, "bob", -3600);
    assert_rejected(
        &node,
        Some(json!({"type": "auth", "token": expired}).to_string()),
        "TOKEN_EXPIRED",
    )
    .await;
    // alg: none, unsigned.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJldmUiLCJleHAiOjk5OTk5OTk5OTl9.";
    assert_rejected(
        &node,
        Some(json!({"type": "auth", "token": none}).to_string()),
        "AUTH_FAILED",
    )
    .await;
    // The right secret, but not the configured algorithm.
    let hs512 = sign(Algorithm::HS512, &secret, "eve", 3600);
    assert_rejected(
        &node,
        Some(json!({"type": "auth", "token": hs512}).to_string()),
        "AUTH_FAILED",
    )
    .await;
    // Auth without a token.
    assert_rejected(
        &node,
        Some(json!({"type": "auth"}).to_string()),
        "AUTH_REQUIRED",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_socket_receives_no_events() {
    let node = start_node(|s| s.auth.timeout_secs = 1.0).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let mut alice = node.connect("alice").await;
    alice.join(&conv, None).await;
    let mut lurker = node.raw().await;
    alice.say(&conv, "secret").await;
    let closed = lurker.closed().await;
    assert_eq!(closed.code, Some(4001));
    assert_eq!(closed.frames.len(), 1, "{:?}", closed.frames);
    assert_eq!(closed.frames[0]["data"]["code"], "AUTH_REQUIRED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_closes_the_socket_with_4003() {
    let node = start_node(|s| s.auth.leeway_secs = 0).await;
    let secret = node.node.settings.auth.jwt_secret.clone().into_bytes();
    let mut c = node.raw().await;
    let short = sign(Algorithm::HS256, &secret, "alice", 1);
    c.send(json!({"type": "auth", "token": short})).await;
    assert_eq!(c.next().await["type"], "auth_success");
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4003));
    assert_eq!(
        closed.frames.last().unwrap()["data"]["code"],
        "TOKEN_EXPIRED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_renews_the_session_for_the_same_user_only() {
    let node = start_node(|s| s.auth.leeway_secs = 0).await;
    let secret = node.node.settings.auth.jwt_secret.clone().into_bytes();
    let mut c = node.connect("alice").await;

    let fresh = sign(Algorithm::HS256, &secret, "alice", 7200);
    c.send(json!({"type": "auth", "id": "renew", "token": fresh}))
        .await;
    let ok = c.next().await;
    assert_eq!(ok["type"], "auth_success");
    assert_eq!(ok["data"]["ref"], "renew");
    let expires =
        chrono::DateTime::parse_from_rfc3339(ok["data"]["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires.timestamp() > Utc::now().timestamp() + 7000);

    let other = sign(Algorithm::HS256, &secret, "mallory", 7200);
    c.send(json!({"type": "auth", "id": "steal", "token": other}))
        .await;
    let err = c.next().await;
    assert_eq!(err["data"]["code"], "AUTH_FAILED");
    assert_eq!(err["data"]["ref"], "steal");
    // Still alice, still open.
    let (pong, _) = c.request("ping", json!({"n": 1})).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["data"]["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_sockets_for_one_user_close_with_4008() {
    let node = start_node(|s| s.limits.max_connections_per_user = 2).await;
    let _a = node.connect("alice").await;
    let _b = node.connect("alice").await;
    let mut third = node.raw().await;
    third
        .send(json!({"type": "auth", "token": node.token("alice")}))
        .await;
    let closed = third.closed().await;
    assert_eq!(closed.code, Some(4008));
    assert_eq!(closed.frames[0]["data"]["code"], "FORBIDDEN");
    // Another user is unaffected.
    let _bob = node.connect("bob").await;
}

/// Keepalive: the node pings; a client that answers (tungstenite pongs
/// while reading) outlives the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_an_answering_socket_open() {
    let node = start_node(|s| {
        s.server.ping_interval_secs = 1.0;
        s.server.idle_timeout_secs = 2.0;
    })
    .await;
    let mut c = node.connect("alice").await;
    // Four pings span more than twice the idle timeout.
    let mut pings = 0;
    while pings < 4 {
        match c.next_message().await {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => panic!("closed while answering pings: {frame:?}"),
            _ => {}
        }
    }
    let (pong, _) = c.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

/// A peer that stops reading (so never pongs) is closed with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_as_dead() {
    let node = start_node(|s| {
        s.server.ping_interval_secs = 1.0;
        s.server.idle_timeout_secs = 2.0;
    })
    .await;
    let mut c = node.connect("alice").await;
    let metrics = node.url("/metrics");
    common::procs::wait_until("a dead-peer close", Duration::from_secs(10), || {
        let metrics = metrics.clone();
        async move {
            let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
            text.lines().any(|l| {
                l.starts_with("confab_sockets_closed_total{code=\"1001\"") && l.ends_with(" 1")
            })
        }
    })
    .await;
    // The socket is gone. (Whether this client reads the close frame depends
    // on it: answering the queued pings may hit the closed connection first.)
    let closed = c.closed().await;
    assert!(matches!(closed.code, Some(1001) | None), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_not_valid_yet_or_issued_in_the_future_are_refused_on_both_paths() {
    let node = start_node(|s| s.auth.leeway_secs = 30).await;
    let secret = node.node.settings.auth.jwt_secret.clone().into_bytes();
    let now = Utc::now().timestamp();
    let key = EncodingKey::from_secret(&secret);
    let signed =
        |claims: serde_json::Value| encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let cases = [
        (
            signed(json!({"sub": "alice", "exp": now + 7200, "nbf": now + 3600})),
            "token not valid yet",
        ),
        (
            signed(json!({"sub": "alice", "exp": now + 7200, "iat": now + 3600})),
            "token issued in the future",
        ),
    ];
    for (token, why) in cases {
        let err = assert_rejected(
            &node,
            Some(json!({"type": "auth", "token": token}).to_string()),
            "AUTH_FAILED",
        )
        .await;
        assert_eq!(err["data"]["message"], why);
        let rest = list_with(&node, Some(&format!("Bearer {token}"))).await;
        assert_eq!(rest, (401, "AUTH_FAILED".into(), why.into()));
    }
    // Within the leeway, both are a clock's skew and pass.
    let skewed =
        signed(json!({"sub": "alice", "exp": now + 7200, "nbf": now + 10, "iat": now + 10}));
    let mut c = node.raw().await;
    c.send(json!({"type": "auth", "token": skewed})).await;
    assert_eq!(c.next().await["type"], "auth_success");
    assert_eq!(
        list_with(&node, Some(&format!("Bearer {skewed}"))).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_padded_token_is_refused_on_the_socket_and_over_rest_alike() {
    let node = start_node(|_| {}).await;
    let token = node.token("alice");
    let padded = format!(" {token} ");
    let why = "token must not contain whitespace";

    let err = assert_rejected(
        &node,
        Some(json!({"type": "auth", "token": padded}).to_string()),
        "AUTH_FAILED",
    )
    .await;
    assert_eq!(err["data"]["message"], why);
    let rest = list_with(&node, Some(&format!("Bearer {padded}"))).await;
    assert_eq!(rest, (401, "AUTH_FAILED".into(), why.into()));

    // The exact token passes on both; the scheme's case does not matter.
    let mut c = node.raw().await;
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.next().await["type"], "auth_success");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, _, _) = list_with(&node, Some(&format!("{scheme} {token}"))).await;
        assert_eq!(status, 200, "{scheme}");
    }
    // No header, another scheme, or no token: credentials are missing.
    for header in [
        None,
        Some("Basic YWxpY2U6eA=="),
        Some("Bearer"),
        Some(token.as_str()),
    ] {
        let (status, code, _) = list_with(&node, header).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "AUTH_REQUIRED"),
            "{header:?}"
        );
    }
}
