//! REST bodies, methods and content types are held to their contract: a
//! wrong JSON type is 422 INVALID_FRAME and stores nothing, a wrong method is
//! 405 METHOD_NOT_ALLOWED with `Allow`, a wrong content type is 415
//! UNSUPPORTED_TYPE.

mod common;

use common::{start_node, TestNode};
use serde_json::{json, Value};

/// The caller's conversations, as REST lists them.
async fn chats_of(node: &TestNode, user: &str) -> Value {
    let (status, list) = node.rest(user, "GET", "/api/v1/chat/chats", None).await;
    assert_eq!(status, 200, "{list}");
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_json_type_is_invalid_and_stores_nothing() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let messages = format!("/api/v1/chat/chats/{conv}/messages");
    let participants = format!("/api/v1/chat/chats/{conv}/participants");
    let cases = [
        ("/api/v1/chat/chats", json!({"title": 7})),
        ("/api/v1/chat/chats", json!({"participant_ids": [1]})),
        (
            "/api/v1/chat/chats",
            json!({"participant_ids": ["bob", true]}),
        ),
        ("/api/v1/chat/chats", json!({"assistant_id": 5})),
        (messages.as_str(), json!({"content": 5})),
        (messages.as_str(), json!({"content": true})),
        (
            messages.as_str(),
            json!({"content": "x", "client_msg_id": 9}),
        ),
        (participants.as_str(), json!({"user_id": 3})),
    ];
    for (path, body) in cases {
        let (status, reply) = node.rest("alice", "POST", path, Some(body.clone())).await;
        assert_eq!(
            (status, reply["code"].as_str()),
            (422, Some("INVALID_FRAME")),
            "{path} {body}: {reply}"
        );
    }
    // Nothing was stored: still one conversation, no message, two members.
    let list = chats_of(&node, "alice").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["last_seq"], 0);
    assert_eq!(list[0]["participants"], json!(["alice", "bob"]));
    assert_eq!(chats_of(&node, "3").await, json!([]));

    // The same bodies with strings are taken.
    let (status, sent) = node
        .rest("alice", "POST", &messages, Some(json!({"content": "5"})))
        .await;
    assert_eq!((status, sent["content"].as_str()), (201, Some("5")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_with_allow() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &[]).await;
    let client = reqwest::Client::new();
    for (path, allow) in [
        ("/api/v1/chat/chats".to_owned(), "GET, POST, HEAD"),
        (format!("/api/v1/chat/chats/{conv}/messages"), "POST"),
    ] {
        let resp = client
            .put(node.url(&path))
            .bearer_auth(node.token("alice"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{path}");
        let got = resp.headers()["allow"].to_str().unwrap().to_owned();
        let mut got: Vec<&str> = got.split(", ").collect();
        let mut want: Vec<&str> = allow.split(", ").collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "METHOD_NOT_ALLOWED", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_type_is_415_and_stores_nothing() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &[]).await;
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/api/v1/chat/chats/{conv}/messages")))
        .bearer_auth(node.token("alice"))
        .header("content-type", "text/plain")
        .body(r#"{"content": "hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "UNSUPPORTED_TYPE", "{body}");
    assert_eq!(chats_of(&node, "alice").await[0]["last_seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_spec_still_shows_bearer_auth_and_string_fields() {
    let node = start_node(|_| {}).await;
    let spec: Value = reqwest::get(node.url("/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemes = &spec["components"]["securitySchemes"];
    let scheme = schemes.as_object().unwrap().values().next().unwrap();
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    let send = &spec["components"]["schemas"]["SendBody"]["properties"];
    assert_eq!(send["content"]["type"], "string", "{send}");
    let create = &spec["components"]["schemas"]["CreateChatBody"]["properties"];
    assert_eq!(
        create["participant_ids"]["items"]["type"], "string",
        "{create}"
    );
}
