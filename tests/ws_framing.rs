//! WebSocket framing over a real socket: client pings are answered, and a
//! frame that breaks RFC 6455 closes only its own socket, with the code the
//! RFC gives, and stores nothing.

mod common;

use common::start_node;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Waits for the pong answering a ping, skipping other frames.
async fn pong_of(c: &mut common::Client) -> Bytes {
    loop {
        match c.next_message().await {
            Message::Pong(payload) => return payload,
            Message::Close(frame) => panic!("closed instead of a pong: {frame:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pings_get_their_payload_back_before_and_after_auth() {
    let node = start_node(|_| {}).await;
    let mut c = node.raw().await;
    c.ws()
        .send(Message::Ping(Bytes::from_static(b"early")))
        .await
        .unwrap();
    assert_eq!(pong_of(&mut c).await, Bytes::from_static(b"early"));

    c.send(json!({"type": "auth", "token": node.token("alice")}))
        .await;
    assert_eq!(c.next().await["type"], "auth_success");
    c.ws()
        .send(Message::Ping(Bytes::from_static(b"late")))
        .await
        .unwrap();
    assert_eq!(pong_of(&mut c).await, Bytes::from_static(b"late"));
    // The session carries on.
    let (pong, _) = c.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_the_rfc_close_with_1002_or_1007_and_store_nothing() {
    let node = start_node(|_| {}).await;
    let conv = node.create_chat("alice", &["bob"]).await;
    let mut bob = node.connect("bob").await;
    bob.join(&conv, None).await;

    // A reserved bit set, with no extension negotiated: 1002.
    let mut alice = node.connect("alice").await;
    alice.join(&conv, None).await;
    let send = json!({"type": "send_message", "data": {"conversation_id": conv, "content": "x"}});
    let mut frame = Frame::message(send.to_string(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    alice.ws().send(Message::Frame(frame)).await.unwrap();
    assert_eq!(alice.closed().await.code, Some(1002));

    // A text frame that is not UTF-8: 1007.
    let mut alice = node.connect("alice").await;
    let bad = Frame::message(
        &b"{\"type\":\"ping\",\"x\":\"\xC3\x28\"}"[..],
        OpCode::Data(Data::Text),
        true,
    );
    alice.ws().send(Message::Frame(bad)).await.unwrap();
    assert_eq!(alice.closed().await.code, Some(1007));

    // Before authentication too, and nothing was stored or delivered.
    let mut lurker = node.raw().await;
    let bad = Frame::message(&b"\xFF"[..], OpCode::Data(Data::Text), true);
    lurker.ws().send(Message::Frame(bad)).await.unwrap();
    assert_eq!(lurker.closed().await.code, Some(1007));
    let frames = bob.sync().await;
    assert!(
        common::messages(&frames).is_empty(),
        "nothing reached bob: {frames:?}"
    );
    let (_, page) = node
        .rest("bob", "GET", &format!("/api/v1/chat/chats/{conv}"), None)
        .await;
    assert_eq!(page["conversation"]["last_seq"], 0, "{page}");
}
