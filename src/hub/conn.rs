//! One authenticated connection as the hub sees it, whatever its transport:
//! a bounded queue of frames to write, the conversations it joined, and a
//! way to close it. The transport's writer is the one consumer of the queue.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::outbox::{self, PushError, Reservation};
use crate::model::{CloseReason, ConnectionId, ConversationId, Transport, UserId};

/// The client frames of one POST to an HTTP-transport connection, in order.
pub type Posted = Vec<Utf8Bytes>;

/// Where a connection's client frames come from.
pub enum Inbound {
    /// Its socket, which its session reads itself.
    Socket,
    /// POSTs (the HTTP transport), from any node: queued here for its
    /// session, a bounded number of POSTs at a time.
    Posts(mpsc::Sender<Posted>),
}

/// Why POSTed frames were not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PostError {
    /// The connection's queue of POSTs is full: the client must wait.
    Busy,
    /// The connection is closed, or takes no POSTs (a socket).
    Gone,
}

/// A connection's handle, shared by its session, its writer and the hub.
pub struct Conn {
    pub id: ConnectionId,
    pub user: UserId,
    inbound: Inbound,
    /// POSTed frames were dropped on a full queue since the session last
    /// looked (it tells the client).
    posts_dropped: AtomicBool,
    tx: outbox::Sender,
    joined: Mutex<HashSet<ConversationId>>,
    reason: OnceLock<CloseReason>,
    closing: CancellationToken,
}

impl Conn {
    /// A handle bounded only in frames (tests, and sockets outside a node).
    pub fn new(user: UserId, queue: usize) -> (Self, outbox::Receiver) {
        Self::with_limits(user, outbox::Limits::frames(queue), Inbound::Socket)
    }

    /// A handle and the receiving end of its outbound queue (for the writer).
    pub fn with_limits(
        user: UserId,
        limits: Arc<outbox::Limits>,
        inbound: Inbound,
    ) -> (Self, outbox::Receiver) {
        let (tx, rx) = outbox::channel(limits);
        let conn = Conn {
            id: ConnectionId::new(),
            user,
            inbound,
            posts_dropped: AtomicBool::new(false),
            tx,
            joined: Mutex::new(HashSet::new()),
            reason: OnceLock::new(),
            closing: CancellationToken::new(),
        };
        (conn, rx)
    }

    pub fn transport(&self) -> Transport {
        match self.inbound {
            Inbound::Socket => Transport::WebSocket,
            Inbound::Posts(_) => Transport::Http,
        }
    }

    /// Queues the frames of one POST for the connection's session, without
    /// waiting.
    pub fn post(&self, frames: Posted) -> Result<(), PostError> {
        let Inbound::Posts(posts) = &self.inbound else {
            return Err(PostError::Gone);
        };
        if self.close_reason().is_some() {
            return Err(PostError::Gone);
        }
        posts.try_send(frames).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.posts_dropped.store(true, Ordering::Relaxed);
                PostError::Busy
            }
            mpsc::error::TrySendError::Closed(_) => PostError::Gone,
        })
    }

    /// True once after POSTed frames were dropped on a full queue.
    pub fn take_posts_dropped(&self) -> bool {
        self.posts_dropped.swap(false, Ordering::Relaxed)
    }

    /// Queues a broadcast frame without waiting. A full queue, or one over
    /// its byte budget, means the client cannot keep up: the socket is
    /// closed (4009) rather than grow memory.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let pushed = self.tx.try_send(frame);
        self.queued(pushed)
    }

    /// Queues a reply, waiting while the queue holds its limit of frames
    /// (the sender's own requests pace it); over the byte budget the socket
    /// is closed (4009), since waiting for a client that does not read
    /// would hold the reply forever.
    pub async fn send(&self, frame: Utf8Bytes) -> bool {
        tokio::select! {
            res = self.tx.send(frame) => self.queued(res),
            _ = self.closing.cancelled() => false,
        }
    }

    /// Queues the frame that goes before a close the caller asks for next
    /// (an error saying why). Without room it is dropped: the close code
    /// says the same, and waiting could hold the reader.
    pub fn push_before_close(&self, frame: Utf8Bytes) {
        let _ = self.tx.try_send(frame);
    }

    /// Sets `bytes` of the socket's budget aside for a reply about to be
    /// built (a history page), so it counts before the node holds it. A
    /// socket whose queue leaves no room for it is closed (4009).
    pub fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let reserved = self.tx.reserve(bytes);
        if reserved.is_none() {
            self.close(CloseReason::SlowConsumer);
        }
        reserved
    }

    fn queued(&self, pushed: Result<(), PushError>) -> bool {
        match pushed {
            Ok(()) => true,
            Err(PushError::Full | PushError::OverBudget) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Lets frames go out at once through `immediate` when nothing is
    /// queued before them (see `outbox`). Call once the first reply is queued.
    pub fn set_immediate(&self, immediate: Arc<dyn outbox::Immediate>) {
        self.tx.set_immediate(immediate);
    }

    /// Asks the writer to answer the client's ping.
    pub fn pong(&self, payload: Bytes) {
        self.tx.pong(payload);
    }

    /// Asks the writer to close the socket. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.closing.cancel();
        }
    }

    /// Completes once `close` was called.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closing.cancelled()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    pub fn is_joined(&self, conv: &ConversationId) -> bool {
        self.joined.lock().contains(conv)
    }

    pub(super) fn set_joined(&self, conv: ConversationId, joined: bool) {
        let mut set = self.joined.lock();
        if joined {
            set.insert(conv);
        } else {
            set.remove(&conv);
        }
    }

    pub fn joined(&self) -> Vec<ConversationId> {
        self.joined.lock().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_closes_the_socket_as_too_slow() {
        let (conn, rx) = Conn::new(UserId::parse("u").unwrap(), 2);
        assert!(conn.push("a".into()));
        assert!(conn.push("b".into()));
        assert!(!conn.push("c".into()), "the third frame does not fit");
        assert_eq!(conn.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(CloseReason::SlowConsumer.code(), 4009);
        // What was queued is still there; nothing beyond the bound.
        assert_eq!(rx.try_recv().unwrap().as_str(), "a");
        assert_eq!(rx.try_recv().unwrap().as_str(), "b");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (conn, _rx) = Conn::new(UserId::parse("u").unwrap(), 2);
        conn.close(CloseReason::TokenExpired);
        conn.close(CloseReason::Normal);
        assert_eq!(conn.close_reason(), Some(CloseReason::TokenExpired));
    }
}
