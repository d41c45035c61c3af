//! The writer task of one socket: it drains the outbound queue, encoding
//! every frame queued at that moment into one buffer written at once, and on
//! close sends the close frame with the reason's code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poem::Upgraded;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{self, OpCode};
use crate::hub::{Conn, Outbound, Outbox};
use crate::model::CloseReason;

/// The writing half of a socket.
pub type Sink = WriteHalf<Upgraded>;

/// Most frames written at once.
const BATCH: usize = 512;
/// A batch stops growing past this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// The least time between two writes to one socket while frames keep coming.
const COALESCE: Duration = Duration::from_millis(1);
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
    mut sink: Sink,
    mut rx: Outbox,
    conn: Arc<Conn>,
    ping_every: Duration,
) -> impl Future<Output = CloseReason> {
    async move {
        let start = tokio::time::Instant::now() + ping_every;
        let mut ping = tokio::time::interval_at(start, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first write (the `auth_success` reply) goes out at once.
        let now = tokio::time::Instant::now();
        let mut last_write = now.checked_sub(COALESCE).unwrap_or(now);
        loop {
            let mut out = Vec::new();
            tokio::select! {
                biased;
                _ = conn.closed() => break,
                next = rx.recv() => match next {
                    Some(Outbound::Frame(text)) => frame::encode(&mut out, OpCode::Text, text.as_bytes()),
                    Some(Outbound::Pong(payload)) => frame::encode(&mut out, OpCode::Pong, &payload),
                    None => break,
                },
                _ = ping.tick() => frame::encode(&mut out, OpCode::Ping, &[]),
            }
            // Boxed: a write's state would otherwise be part of every idle
            // socket's writer.
            if let Err(why) = Box::pin(write(&mut sink, &rx, &conn, out, &mut last_write)).await {
                conn.close(why);
                break;
            }
        }
        let reason = conn.close_reason().unwrap_or(CloseReason::Normal);
        // A slow consumer's backlog is dropped; anyone else gets what was
        // queued (an error frame before the close, say).
        let mut last = Vec::new();
        if reason != CloseReason::SlowConsumer {
            while let Ok(frame) = rx.try_recv() {
                last.push(frame);
            }
        }
        Box::pin(goodbye(sink, last, reason)).await;
        reason
    }
}

/// Adds the frames queued behind the first to `out`, up to `BATCH`, and
/// writes them all. Err, with the reason to close for, if the socket failed
/// or was closed meanwhile.
async fn write(
    sink: &mut Sink,
    rx: &Outbox,
    conn: &Conn,
    mut out: Vec<u8>,
    last_write: &mut tokio::time::Instant,
) -> Result<(), CloseReason> {
    // A socket written to moments ago waits out the rest of `COALESCE`,
    // gathering what else is queued meanwhile: Nagle's idea, bounded to a
    // millisecond instead of a delayed ACK's 40. At chat rates writes are
    // further apart and go out at once.
    let due = *last_write + COALESCE;
    if tokio::time::Instant::now() < due {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = conn.closed() => return Err(CloseReason::Normal),
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
    let written = async {
        sink.write_all(&out).await?;
        sink.flush().await
    };
    let result = tokio::select! {
        res = written => res.map_err(|e| match e.kind() {
            // The connection's write timeout: the client stopped reading.
            std::io::ErrorKind::TimedOut => CloseReason::SlowConsumer,
            _ => CloseReason::Normal,
        }),
        // A peer that stopped reading must not hold the writer forever.
        _ = conn.closed() => Err(CloseReason::Normal),
    };
    *last_write = tokio::time::Instant::now();
    result
}

/// Sends an error and closes a socket that never got a queue (auth failures).
pub async fn reject(sink: Sink, error: Utf8Bytes, reason: CloseReason) {
    goodbye(sink, vec![error], reason).await;
}

/// Answers the close frame of a client that never got a queue.
pub async fn close(sink: Sink, reason: CloseReason) {
    goodbye(sink, Vec::new(), reason).await;
}

/// Answers a ping before the socket has a queue (during authentication).
pub async fn pong(sink: &mut Sink, payload: &[u8]) {
    let mut out = Vec::new();
    frame::encode(&mut out, OpCode::Pong, payload);
    let _ = sink.write_all(&out).await;
}

/// Writes the last frames and the close frame, then ends the sending side
/// (the node starts the TCP close, as RFC 6455 7.1.1 asks of a server),
/// within `CLOSE_TIMEOUT`. The connection itself closes when the reader is
/// done with it too: after the client's close frame or its end of the
/// connection, so no frame of the client's in flight meets a reset.
async fn goodbye(mut sink: Sink, last: Vec<Utf8Bytes>, reason: CloseReason) {
    let mut out = Vec::new();
    for text in &last {
        frame::encode(&mut out, OpCode::Text, text.as_bytes());
    }
    let close = frame::close_payload(reason.code(), reason.text());
    frame::encode(&mut out, OpCode::Close, &close);
    let write = async {
        sink.write_all(&out).await?;
        sink.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, write).await;
}
