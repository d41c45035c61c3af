//! A minimal WebSocket console for trying a node by hand: every line typed
//! is sent as a text frame, every frame received is printed.
//!
//! cargo run --release --example wscat -- ws://127.0.0.1:8080/api/v1/chat/ws

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/api/v1/chat/ws".into());
    let (ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("cannot connect to {url}: {e}");
            std::process::exit(1);
        }
    };
    let (mut tx, mut rx) = ws.split();
    let printer = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Text(t) => println!("< {t}"),
                Message::Close(c) => {
                    println!("< closed {c:?}");
                    break;
                }
                _ => {}
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        if tx.send(Message::text(line)).await.is_err() {
            break;
        }
    }
    // Input ended: close politely and print what is still on its way.
    let _ = tx.send(Message::Close(None)).await;
    let _ = printer.await;
}
