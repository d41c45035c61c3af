//! The writer task of one socket: it drains the outbound queue, writing every
//! frame queued at that moment and flushing once, and on close sends the
//! close frame with the reason's code.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream::SplitSink, SinkExt};
use poem::Upgraded;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::hub::{CloseReason, Conn, Outbox};

pub type Sink = SplitSink<WebSocketStream<Upgraded>, Message>;

/// Most frames written before one flush.
const BATCH: usize = 512;
/// How long a closing socket may take to take its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until the connection is closed; returns the reason. Pings the peer
/// every `ping_every` while idle or busy, so proxies see traffic and the
/// reader sees pongs.
pub async fn run(
    mut sink: Sink,
    mut rx: Outbox,
    conn: Arc<Conn>,
    ping_every: Duration,
) -> CloseReason {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            biased;
            _ = conn.closed() => break,
            frame = rx.recv() => match frame {
                Some(frame) => Message::Text(frame),
                None => break,
            },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        let write = async {
            sink.feed(first).await?;
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(frame) => sink.feed(Message::Text(frame)).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        let written = tokio::select! {
            res = write => res.is_ok(),
            // A peer that stopped reading must not hold the writer forever.
            _ = conn.closed() => false,
        };
        if !written {
            conn.close(CloseReason::Normal);
            break;
        }
    }
    let reason = conn.close_reason().unwrap_or(CloseReason::Normal);
    // A slow consumer's backlog is dropped; anyone else gets what was queued
    // (an error frame before the close, say).
    let mut last = Vec::new();
    if reason != CloseReason::SlowConsumer {
        while let Ok(frame) = rx.try_recv() {
            last.push(frame);
        }
    }
    // Boxed: the goodbye's state would otherwise be part of the writer's
    // memory for the socket's whole life.
    Box::pin(goodbye(sink, last, reason)).await;
    reason
}

/// Sends an error and closes a socket that never got a queue (auth failures).
pub async fn reject(sink: Sink, error: Utf8Bytes, reason: CloseReason) {
    goodbye(sink, vec![error], reason).await;
}

/// Writes the last frames and the close frame, within `CLOSE_TIMEOUT`.
async fn goodbye(mut sink: Sink, last: Vec<Utf8Bytes>, reason: CloseReason) {
    let write = async {
        for frame in last {
            sink.feed(Message::Text(frame)).await?;
        }
        sink.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.text().into(),
        })))
        .await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, write).await;
}
