//! An event stream's body: the connection's queued frames, each as one
//! `data:` event, batched as the writer of a socket batches them; a comment
//! line while idle; and, when the node closes the connection, a last
//! `error` event saying why. The stream is dropped when the client goes
//! away (or stops reading for the write timeout): that closes the
//! connection, and its session leaves the hub.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, Stream};

use crate::error::ChatError;
use crate::hub::{Conn, Outbound, Outbox};
use crate::model::CloseReason;
use crate::protocol::ServerFrame;
use crate::transport::Context;

/// A batch stops growing past this many bytes.
const BATCH_BYTES: usize = 256 * 1024;

/// The body of a connection's event stream.
pub fn body(
    ctx: Arc<Context>,
    conn: Arc<Conn>,
    outbox: Outbox,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Body {
        ctx,
        conn: conn.clone(),
        outbox,
        tick,
        ended: false,
        _close_on_drop: CloseOnDrop(conn),
    };
    stream::unfold(state, |mut body| async move {
        let chunk = body.next().await?;
        Some((Ok(chunk), body))
    })
}

/// The stream's state.
struct Body {
    ctx: Arc<Context>,
    conn: Arc<Conn>,
    outbox: Outbox,
    tick: tokio::time::Interval,
    ended: bool,
    _close_on_drop: CloseOnDrop,
}

impl Body {
    /// The next chunk to write; None once the stream has ended.
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let mut out = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = self.conn.closed() => {
                    self.ended = true;
                    self.farewell(&mut out);
                    return Some(out.into());
                }
                next = self.outbox.recv() => match next {
                    Some(Outbound::Frame(text)) => {
                        event(&mut out, text.as_bytes());
                        while out.len() < BATCH_BYTES {
                            match self.outbox.try_recv() {
                                Ok(text) => event(&mut out, text.as_bytes()),
                                Err(_) => break,
                            }
                        }
                        return Some(out.into());
                    }
                    // Pongs and partial writes belong to sockets.
                    Some(Outbound::Pong(_) | Outbound::Rest(_)) => continue,
                    None => {
                        self.ended = true;
                        return None;
                    }
                },
                _ = self.tick.tick() => {
                    self.renew();
                    return Some(Bytes::from_static(b": keepalive\n\n"));
                }
            }
        }
    }

    /// What was still queued for the client, then the error that says why
    /// the node ends the stream (a token that expired said so already).
    fn farewell(&mut self, out: &mut Vec<u8>) {
        let reason = self.conn.close_reason().unwrap_or(CloseReason::Normal);
        if reason != CloseReason::SlowConsumer {
            while let Ok(text) = self.outbox.try_recv() {
                event(out, text.as_bytes());
            }
        }
        let err = match reason {
            CloseReason::TokenExpired | CloseReason::Normal => return,
            CloseReason::Restart => ChatError::Unavailable("node restarting; reconnect".into()),
            CloseReason::Policy => ChatError::Forbidden("policy violation".into()),
            CloseReason::SlowConsumer => {
                ChatError::Unavailable("too slow a consumer; reconnect".into())
            }
            other => ChatError::Unavailable(format!("closed: {}", other.text())),
        };
        event(out, ServerFrame::closing(&err, reason).encode().as_bytes());
    }

    /// Renews the connection's directory entry, so POSTs keep finding it.
    fn renew(&self) {
        let (ctx, conn) = (self.ctx.clone(), self.conn.clone());
        tokio::spawn(async move {
            if let Err(e) = ctx
                .presence
                .hold_connection(conn.id, &conn.user, super::DIRECTORY_TTL)
                .await
            {
                tracing::debug!(error = %e, "renewing a connection's directory entry failed");
            }
        });
    }
}

/// One server frame as one event (a frame's JSON has no line breaks).
fn event(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(frame);
    out.extend_from_slice(b"\n\n");
}

/// Closes the connection when its stream is dropped: the client went away.
struct CloseOnDrop(Arc<Conn>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(CloseReason::Normal);
    }
}
