//! The writer task of one socket: it drains the outbound queue, encoding
//! every frame queued at that moment into one buffer written at once, and on
//! close sends the close frame with the reason's code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{self, OpCode};
use super::socket::WriteSide;
use crate::hub::{Conn, Outbound, Outbox, COALESCE};
use crate::model::CloseReason;

/// The writing side of a socket.
pub type Sink = Arc<WriteSide>;

/// Most frames written at once.
const BATCH: usize = 512;
/// A batch stops growing past this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// How long a closing socket may take to take its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until the connection is closed; returns the reason. Pings the peer
/// every `ping_every` while idle or busy, so proxies see traffic and the
/// reader sees pongs.
///
/// Not an `async fn`: its arguments would be stored twice in the future,
/// which every socket holds for its whole life.
#[allow(clippy::manual_async_fn)] // see above
pub fn run(
    sink: Sink,
    mut rx: Outbox,
    conn: Arc<Conn>,
    ping_every: Duration,
) -> impl Future<Output = CloseReason> {
    async move {
        let start = tokio::time::Instant::now() + ping_every;
        let mut ping = tokio::time::interval_at(start, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut out = Vec::new();
            tokio::select! {
                biased;
                _ = conn.closed() => break,
                next = rx.recv() => match next {
                    Some(Outbound::Frame(text)) => frame::encode(&mut out, OpCode::Text, text.as_bytes()),
                    Some(Outbound::Pong(payload)) => frame::encode(&mut out, OpCode::Pong, &payload),
                    Some(Outbound::Rest(rest)) => out.extend_from_slice(&rest),
                    None => break,
                },
                _ = ping.tick() => {
                    if let Some(rest) = rx.claim() {
                        out.extend_from_slice(&rest);
                    }
                    frame::encode(&mut out, OpCode::Ping, &[]);
                }
            }
            // Boxed: a write's state would otherwise be part of every idle
            // socket's writer.
            if let Err(why) = Box::pin(write(&sink, &rx, &conn, out)).await {
                conn.close(why);
                break;
            }
        }
        let reason = conn.close_reason().unwrap_or(CloseReason::Normal);
        // The rest of a frame begun at once goes first, whatever follows.
        let mut out = rx.claim().map(Vec::from).unwrap_or_default();
        // A slow consumer's backlog is dropped; anyone else gets what was
        // queued (an error frame before the close, say).
        let mut last = Vec::new();
        if reason != CloseReason::SlowConsumer {
            while let Ok(frame) = rx.try_recv() {
                last.push(frame);
            }
        }
        for text in &last {
            frame::encode(&mut out, OpCode::Text, text.as_bytes());
        }
        Box::pin(goodbye(&sink, out, reason)).await;
        reason
    }
}

/// Adds the frames queued behind the first to `out`, up to `BATCH`, and
/// writes them all. Err, with the reason to close for, if the socket failed
/// or was closed meanwhile.
async fn write(
    sink: &WriteSide,
    rx: &Outbox,
    conn: &Conn,
    mut out: Vec<u8>,
) -> Result<(), CloseReason> {
    // A socket written to moments ago (by this writer or at once) waits out
    // the rest of `COALESCE`, gathering what else is queued meanwhile.
    if let Some(due) = rx
        .last_write()
        .map(|at| tokio::time::Instant::from_std(at + COALESCE))
    {
        if tokio::time::Instant::now() < due {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = conn.closed() => return Err(CloseReason::Normal),
            }
        }
    }
    for _ in 1..BATCH {
        if out.len() >= BATCH_BYTES {
            break;
        }
        match rx.try_recv() {
            Ok(text) => frame::encode(&mut out, OpCode::Text, text.as_bytes()),
            Err(_) => break,
        }
    }
    let written = sink.write_all(&out);
    let result = tokio::select! {
        res = written => res.map_err(|e| match e.kind() {
            // The connection's write timeout: the client stopped reading.
            std::io::ErrorKind::TimedOut => CloseReason::SlowConsumer,
            _ => CloseReason::Normal,
        }),
        // A peer that stopped reading must not hold the writer forever.
        _ = conn.closed() => Err(CloseReason::Normal),
    };
    // A write cut short leaves a frame in part: the socket stays claimed
    // until it closes.
    if result.is_ok() {
        rx.release(std::time::Instant::now());
    }
    result
}

/// Sends an error and closes a socket that never got a queue (auth failures).
pub async fn reject(sink: &WriteSide, error: Utf8Bytes, reason: CloseReason) {
    let mut out = Vec::new();
    frame::encode(&mut out, OpCode::Text, error.as_bytes());
    goodbye(sink, out, reason).await;
}

/// Answers the close frame of a client that never got a queue.
pub async fn close(sink: &WriteSide, reason: CloseReason) {
    goodbye(sink, Vec::new(), reason).await;
}

/// Answers a ping before the socket has a queue (during authentication).
pub async fn pong(sink: &WriteSide, payload: &[u8]) {
    let mut out = Vec::new();
    frame::encode(&mut out, OpCode::Pong, payload);
    let _ = sink.write_all(&out).await;
}

/// Writes `out` (the last frames, encoded) and the close frame, then ends
/// the sending side (the node starts the TCP close, as RFC 6455 7.1.1 asks
/// of a server), within `CLOSE_TIMEOUT`. The connection itself closes when
/// the reader is done with it too: after the client's close frame or its
/// end of the connection, so no frame of the client's in flight meets a
/// reset.
async fn goodbye(sink: &WriteSide, mut out: Vec<u8>, reason: CloseReason) {
    let close = frame::close_payload(reason.code(), reason.text());
    frame::encode(&mut out, OpCode::Close, &close);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.write_all(&out)).await;
    sink.shutdown();
}
