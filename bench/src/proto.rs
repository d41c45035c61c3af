//! The seam between the scenarios and the protocol they speak: confab's
//! own (`docs/protocol.md`) or Socket.IO's (the peer in `bench/peer`). The
//! idle and fan-out scenarios go through it, so both protocols run the same
//! scenario code, tally and figures.

use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, now_us, Sources, Ws};
use crate::socketio;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// confab's protocol: first-frame auth, conversations, `message_received`.
    Confab,
    /// Engine.IO 4 / Socket.IO 5 against the peer in `bench/peer`.
    Socketio,
}

/// What a receiver makes of one text frame.
pub enum Incoming<'a> {
    /// A message delivered to a room: its seq and content.
    Delivery {
        seq: i64,
        content: Cow<'a, str>,
    },
    /// The server's heartbeat, to be answered with `Proto::pong`.
    Ping,
    Other,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Confab => "confab",
            Proto::Socketio => "socketio",
        }
    }

    /// Opens a socket to the node at `base` and authenticates as the
    /// token's subject; returns the socket and the time that took.
    pub async fn connect(
        self,
        base: &str,
        token: &str,
        sources: &Sources,
    ) -> io::Result<(Ws, Duration)> {
        match self {
            Proto::Confab => client::connect(base, token, sources).await,
            Proto::Socketio => socketio::connect(base, token, sources).await,
        }
    }

    /// Joins a room and waits until the server says so.
    pub async fn join(self, ws: &mut Ws, room: &str) -> Option<()> {
        match self {
            Proto::Confab => client::join(ws, room, None).await.map(|_| ()),
            Proto::Socketio => socketio::join(ws, room).await,
        }
    }

    /// A room whose members are the owner (the token's subject) and
    /// `members`: a conversation created over REST on `base` for confab;
    /// for Socket.IO just a fresh name, since anyone may join any room.
    pub async fn create_room(self, base: &str, owner_token: &str, members: &[String]) -> String {
        match self {
            Proto::Confab => client::create_chat(base, owner_token, members).await,
            Proto::Socketio => fresh_room_name(),
        }
    }

    /// The frame that sends `content` to `room`, asking for an ack
    /// (numbered `ack`) or not.
    pub fn send_frame(self, room: &str, content: &str, ack: Option<u64>) -> Message {
        let text = match self {
            Proto::Confab => {
                let mut frame = json!({"type": "send_message", "data": {"conversation_id": room, "content": content}});
                if let Some(id) = ack {
                    frame["id"] = id.to_string().into();
                }
                frame.to_string()
            }
            Proto::Socketio => {
                socketio::event("send", json!({"room": room, "content": content}), ack)
            }
        };
        Message::text(text)
    }

    /// Whether a frame answers the send numbered `ack` (an ack or an error).
    pub fn is_ack(self, text: &str, ack: u64) -> bool {
        match self {
            Proto::Confab => serde_json::from_str::<Value>(text)
                .is_ok_and(|f| f["data"]["ref"] == ack.to_string().as_str()),
            Proto::Socketio => socketio::is_ack(text, ack),
        }
    }

    /// Reads a received frame, in place: this runs for every delivery, on
    /// the cores the nodes use, so it must stay cheap.
    pub fn parse(self, text: &str) -> Incoming<'_> {
        match self {
            Proto::Confab => match serde_json::from_str::<ConfabFrame>(text) {
                Ok(ConfabFrame {
                    kind,
                    data: Some(ConfabData { message: Some(m) }),
                }) if kind == "message_received" => Incoming::Delivery {
                    seq: m.seq,
                    content: m.content,
                },
                _ => Incoming::Other,
            },
            Proto::Socketio if text == socketio::PING => Incoming::Ping,
            Proto::Socketio => match socketio::delivery(text) {
                Some((seq, content)) => Incoming::Delivery { seq, content },
                None => Incoming::Other,
            },
        }
    }

    /// The answer to `Incoming::Ping`. (confab's heartbeat is WebSocket
    /// pings, which the WebSocket layer answers while the socket is read.)
    pub fn pong(self) -> Message {
        Message::text(socketio::PONG)
    }
}

/// The part of a `message_received` frame a receiver reads.
#[derive(Deserialize)]
struct ConfabFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    data: Option<ConfabData<'a>>,
}

#[derive(Deserialize)]
struct ConfabData<'a> {
    #[serde(borrow)]
    message: Option<ConfabMessage<'a>>,
}

#[derive(Deserialize)]
struct ConfabMessage<'a> {
    seq: i64,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// A UUID-shaped room name, so the peer's `conversation_id` is as long as
/// confab's.
fn fresh_room_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = now_us();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (t >> 32) as u32,
        (t >> 16) as u16,
        t & 0xfff,
        n & 0xfff,
        (u64::from(std::process::id()) << 24) | (n & 0xff_ffff)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confab_deliveries_parse() {
        let frame = r#"{"type":"message_received","data":{"message":{"id":"x","conversation_id":"c","seq":3,"sender_id":"u","message_type":"user","content":"t=5","created_at":"2025-01-01T00:00:00Z"}}}"#;
        match Proto::Confab.parse(frame) {
            Incoming::Delivery { seq, content } => {
                assert_eq!(seq, 3);
                assert_eq!(content, "t=5");
            }
            _ => panic!("a delivery"),
        }
        assert!(matches!(
            Proto::Confab.parse(r#"{"type":"joined","data":{}}"#),
            Incoming::Other
        ));
    }

    #[test]
    fn socketio_frames() {
        assert!(matches!(Proto::Socketio.parse("2"), Incoming::Ping));
        assert!(Proto::Socketio.is_ack(r#"435[{"id":"x","seq":1}]"#, 5));
        assert_eq!(fresh_room_name().len(), 36);
    }
}
