//! The Socket.IO client of the bench: Engine.IO 4 and Socket.IO 5 over a
//! plain WebSocket, as much of them as the peer in `bench/peer` needs.
//!
//! - The socket opens at `/socket.io/?EIO=4&transport=websocket` (no
//!   long-polling first) and the server sends the Engine.IO open packet,
//!   `0{"sid":..,"pingInterval":..,"pingTimeout":..}`.
//! - `40{"token":..}` connects the default namespace with an auth payload;
//!   the server answers `40{"sid":..}`, or `44{"message":..}` when its
//!   middleware refuses.
//! - The server pings (`2`) and the client must pong (`3`) within the ping
//!   timeout, or the server closes the socket.
//! - An event is `42["name",arg]`; with an ack id, `42<id>["name",arg]`,
//!   answered by `43<id>[arg]`.
//!
//! Over the WebSocket transport every Engine.IO packet is one text frame.

use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Sources, Ws};

/// Where the peer's Engine.IO endpoint is, WebSocket from the start.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";
/// The server's heartbeat and the client's answer (Engine.IO 4: the server pings).
pub const PING: &str = "2";
pub const PONG: &str = "3";

/// Opens a socket, connects the default namespace with `token` as its
/// auth payload, and returns the socket and the time until the server
/// accepted it.
pub async fn connect(base: &str, token: &str, sources: &Sources) -> io::Result<(Ws, Duration)> {
    let start = Instant::now();
    let mut ws = client::open(base, PATH, sources).await?;
    let open = client::next_text(&mut ws)
        .await
        .ok_or_else(|| io::Error::other("closed before the Engine.IO open packet"))?;
    if !open.starts_with('0') {
        return Err(io::Error::other(format!("expected an open packet: {open}")));
    }
    ws.send(Message::text(format!("40{}", json!({ "token": token }))))
        .await
        .map_err(io::Error::other)?;
    loop {
        let packet = client::next_text(&mut ws)
            .await
            .ok_or_else(|| io::Error::other("closed before the namespace connected"))?;
        if packet == PING {
            ws.send(Message::text(PONG))
                .await
                .map_err(io::Error::other)?;
        } else if packet.starts_with("40") {
            return Ok((ws, start.elapsed()));
        } else if packet.starts_with("44") {
            return Err(io::Error::other(format!("connect refused: {packet}")));
        }
    }
}

/// `42["name",arg]`, or `42<ack>["name",arg]` when an ack is asked for.
pub fn event(name: &str, arg: Value, ack: Option<u64>) -> String {
    let body = json!([name, arg]);
    match ack {
        Some(id) => format!("42{id}{body}"),
        None => format!("42{body}"),
    }
}

/// Whether `packet` is the ack `43<id>[...]`.
pub fn is_ack(packet: &str, id: u64) -> bool {
    packet
        .strip_prefix("43")
        .and_then(|rest| rest.strip_prefix(id.to_string().as_str()))
        .is_some_and(|rest| rest.starts_with('['))
}

/// Emits `name` with an ack id and waits for the ack, answering pings
/// meanwhile; returns the ack's packet (None if the socket ended first).
pub async fn call(ws: &mut Ws, name: &str, arg: Value) -> Option<String> {
    static NEXT_ACK: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ACK.fetch_add(1, Ordering::Relaxed);
    ws.send(Message::text(event(name, arg, Some(id))))
        .await
        .ok()?;
    loop {
        let packet = client::next_text(ws).await?;
        if packet == PING {
            ws.send(Message::text(PONG)).await.ok()?;
        } else if is_ack(&packet, id) {
            return Some(packet);
        }
    }
}

/// Joins `room` and waits for the peer's `{ok: true}`.
pub async fn join(ws: &mut Ws, room: &str) -> Option<()> {
    let ack = call(ws, "join", json!({ "room": room })).await?;
    ack.contains("\"ok\":true").then_some(())
}

/// The part of a `42["message",{...}]` event a receiver reads, parsed in
/// place (borrowing the content unless it has escapes).
#[derive(Deserialize)]
struct Event<'a>(#[serde(borrow)] Cow<'a, str>, Delivered<'a>);

#[derive(Deserialize)]
struct Delivered<'a> {
    seq: i64,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// A `message` event's seq and content; None for any other packet.
pub fn delivery(packet: &str) -> Option<(i64, Cow<'_, str>)> {
    // No ack id and the default namespace: `42[` right away.
    let body = packet.strip_prefix("42")?;
    if !body.starts_with('[') {
        return None;
    }
    let Event(name, m) = serde_json::from_str::<Event>(body).ok()?;
    (name == "message").then_some((m.seq, m.content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_acks() {
        assert_eq!(
            event("join", json!({"room": "r"}), None),
            r#"42["join",{"room":"r"}]"#
        );
        assert_eq!(
            event("join", json!({"room": "r"}), Some(12)),
            r#"4212["join",{"room":"r"}]"#
        );
        assert!(is_ack(r#"4312[{"ok":true}]"#, 12));
        assert!(!is_ack(r#"43123[{"ok":true}]"#, 12));
        assert!(!is_ack(r#"4212["join",{}]"#, 12));
    }

    #[test]
    fn deliveries_parse_in_place() {
        let packet = r#"42["message",{"id":"x","conversation_id":"r","seq":7,"user_id":"u","content":"t=123","role":"user","message_type":"user","created_at":"2025-01-01T00:00:00.000Z"}]"#;
        let (seq, content) = delivery(packet).expect("a delivery");
        assert_eq!(seq, 7);
        assert!(matches!(content, Cow::Borrowed("t=123")));
        assert!(delivery(r#"42["other",{"seq":1,"content":"x"}]"#).is_none());
        assert!(delivery(r#"431[{"ok":true}]"#).is_none());
        assert!(delivery(PING).is_none());
    }
}
