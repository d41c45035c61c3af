//! What the hand-run examples share: a socket authenticated on a node, and
//! its next text frame.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket on the node at `base` (http://...), authenticated with `token`.
pub async fn open(base: &str, token: &str) -> Ws {
    let url = format!("{}/api/v1/chat/ws", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    ws.send(Message::text(
        json!({"type": "auth", "token": token}).to_string(),
    ))
    .await
    .unwrap();
    next(&mut ws).await;
    ws
}

/// The next text frame, as JSON.
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        if let Message::Text(t) = ws.next().await.expect("open").expect("ok") {
            return serde_json::from_str(&t).unwrap();
        }
    }
}
