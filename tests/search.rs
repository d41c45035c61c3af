//! Message search over REST (`GET /api/v1/chat/search`) on an in-process
//! node: the answer's shape, the checks (422), the token (401), and the
//! conversation filter held to membership (403, 404). What matches and how
//! it ranks is tested on both databases in tests/store.rs.

mod common;

use common::{start_node, TestNode};
use serde_json::{json, Value};

/// `GET /api/v1/chat/search` with `query`, as `caller` (no token without
/// one): the status and the body.
async fn search(node: &TestNode, caller: Option<&str>, query: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .get(node.url("/api/v1/chat/search"))
        .query(query);
    if let Some(caller) = caller {
        req = req.bearer_auth(node.token(caller));
    }
    let resp = req.send().await.expect("search request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn send(node: &TestNode, user: &str, conv: &str, content: &str) -> Value {
    let (status, body) = node
        .rest(
            user,
            "POST",
            &format!("/api/v1/chat/chats/{conv}/messages"),
            Some(json!({ "content": content })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

#[tokio::test]
async fn search_answers_with_messages_and_snippets() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let sent = send(&node, "bob", &conv, "Un Café noir, s'il vous plaît").await;
    send(&node, "bob", &conv, "nothing to see").await;

    let (status, body) = search(&node, Some("alice"), &[("q", "CAF noi")]).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{body}");
    assert_eq!(results[0]["conversation_id"], conv);
    assert_eq!(results[0]["message"], sent);
    assert_eq!(results[0]["snippet"], "Un Café noir, s'il vous plaît");
    assert!(body.get("next_cursor").is_none(), "{body}");

    // The filter, and paging by cursor.
    for i in 0..3 {
        send(&node, "bob", &conv, &format!("café number {i}")).await;
    }
    let (status, first) = search(
        &node,
        Some("alice"),
        &[("q", "cafe"), ("conversation_id", &conv), ("limit", "3")],
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["results"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (status, second) = search(
        &node,
        Some("alice"),
        &[
            ("q", "cafe"),
            ("conversation_id", &conv),
            ("limit", "3"),
            ("cursor", &cursor),
        ],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["results"].as_array().unwrap().len(), 1, "{second}");
    assert!(second.get("next_cursor").is_none());

    // Someone else's conversation is not searched.
    let (status, body) = search(&node, Some("mallory"), &[("q", "cafe")]).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"], json!([]));
}

#[tokio::test]
async fn search_refuses_what_it_cannot_answer() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &[]).await;
    let long = "a".repeat(201);
    for query in [
        vec![],
        vec![("q", "")],
        vec![("q", "?! …")],
        vec![("q", long.as_str())],
        vec![("q", "a"), ("limit", "0")],
        vec![("q", "a"), ("limit", "51")],
        vec![("q", "a"), ("limit", "x")],
        vec![("q", "a"), ("cursor", "nope")],
        vec![("q", "a"), ("conversation_id", "not-an-id")],
    ] {
        let (status, body) = search(&node, Some("alice"), &query).await;
        assert_eq!(status, 422, "{query:?}: {body}");
        assert_eq!(body["code"], "INVALID_FRAME", "{query:?}: {body}");
    }

    let (status, body) = search(&node, None, &[("q", "a")]).await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = search(
        &node,
        Some("mallory"),
        &[("q", "a"), ("conversation_id", &conv)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "FORBIDDEN");

    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, body) = search(
        &node,
        Some("alice"),
        &[("q", "a"), ("conversation_id", &unknown)],
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
}
