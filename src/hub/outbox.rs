//! A socket's bounded queue of frames to write: one sender (the socket's
//! `Conn`), one receiver (its writer task).
//!
//! It exists for memory: tokio's mpsc allocates a block of 32 slots when it
//! is created (about 1.1 KiB per socket, most sockets being idle), while this
//! queue allocates on its first frame and gives back what a burst grew once
//! it is drained.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Capacity kept by an emptied queue; more is given back.
const KEEP: usize = 16;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its limit.
    Full,
    /// The writer is gone.
    Closed,
}

/// What the writer takes off the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// A text frame.
    Frame(Utf8Bytes),
    /// The answer to the client's latest ping, with its payload.
    Pong(Bytes),
}

/// The queue was empty (or closed) when asked.
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

/// No frame was queued; true if the sender is gone too.
struct Closed(bool);

struct Shared {
    state: Mutex<State>,
    limit: usize,
    /// A frame was queued, or the sender left.
    queued: Notify,
    /// A frame was taken, or the receiver left.
    taken: Notify,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    /// A pong owed to the client; only the latest ping needs one (RFC 6455,
    /// 5.5.3), and it goes ahead of queued frames.
    pong: Option<Bytes>,
    /// The sender or the receiver left.
    closed: bool,
}

/// A queue holding at most `limit` frames.
pub fn channel(limit: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            pong: None,
            closed: false,
        }),
        limit: limit.max(1),
        queued: Notify::new(),
        taken: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The queuing end.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `frame` unless the queue is full or the receiver is gone.
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), PushError> {
        self.push(frame).map_err(|(e, _)| e)
    }

    /// Queues `frame`, waiting for room; Err if the receiver is gone.
    pub async fn send(&self, mut frame: Utf8Bytes) -> Result<(), PushError> {
        loop {
            // Registered before the check: a frame taken in between wakes it.
            let taken = self.0.taken.notified();
            match self.push(frame) {
                Err((PushError::Full, back)) => frame = back,
                done => return done.map_err(|(e, _)| e),
            }
            taken.await;
        }
    }

    /// Owes the client a pong with `payload`, replacing any owed before.
    pub fn pong(&self, payload: Bytes) {
        let mut state = self.0.state.lock();
        if state.closed {
            return;
        }
        state.pong = Some(payload);
        drop(state);
        self.0.queued.notify_one();
    }

    fn push(&self, frame: Utf8Bytes) -> Result<(), (PushError, Utf8Bytes)> {
        let mut state = self.0.state.lock();
        if state.closed {
            return Err((PushError::Closed, frame));
        }
        if state.frames.len() >= self.0.limit {
            return Err((PushError::Full, frame));
        }
        state.frames.push_back(frame);
        drop(state);
        self.0.queued.notify_one();
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.queued.notify_one();
    }
}

/// The writing end.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// An owed pong, else the oldest frame, waiting for one; None once the
    /// sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            // Registered before the check: a frame queued in between wakes it.
            let queued = self.0.queued.notified();
            if let Some(payload) = self.0.state.lock().pong.take() {
                return Some(Outbound::Pong(payload));
            }
            match self.take() {
                Ok(frame) => return Some(Outbound::Frame(frame)),
                Err(Closed(true)) => return None,
                Err(Closed(false)) => queued.await,
            }
        }
    }

    /// The oldest frame, if one is queued.
    pub fn try_recv(&self) -> Result<Utf8Bytes, Empty> {
        self.take().map_err(|_| Empty)
    }

    /// The oldest frame; with none queued, whether the sender is gone
    /// (read under the same lock).
    fn take(&self) -> Result<Utf8Bytes, Closed> {
        let mut state = self.0.state.lock();
        let Some(frame) = state.frames.pop_front() else {
            return Err(Closed(state.closed));
        };
        if state.frames.is_empty() && state.frames.capacity() > KEEP {
            state.frames.shrink_to(KEEP);
        }
        drop(state);
        self.0.taken.notify_one();
        Ok(frame)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        drop(state);
        self.0.taken.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_within_the_limit() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send("a".into()), Ok(()));
        assert_eq!(tx.try_send("b".into()), Ok(()));
        assert_eq!(tx.try_send("c".into()), Err(PushError::Full));
        assert_eq!(rx.recv().await, Some(Outbound::Frame("a".into())));
        assert_eq!(rx.try_recv().unwrap().as_str(), "b");
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[tokio::test]
    async fn an_owed_pong_goes_first_and_only_the_latest_counts() {
        let (tx, mut rx) = channel(4);
        tx.try_send("a".into()).unwrap();
        tx.pong(Bytes::from_static(b"1"));
        tx.pong(Bytes::from_static(b"2"));
        assert_eq!(
            rx.recv().await,
            Some(Outbound::Pong(Bytes::from_static(b"2")))
        );
        assert_eq!(rx.recv().await, Some(Outbound::Frame("a".into())));
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[tokio::test]
    async fn a_waiting_send_goes_through_once_a_frame_is_taken() {
        let (tx, mut rx) = channel(1);
        tx.try_send("a".into()).unwrap();
        let send = tokio::spawn(async move {
            tx.send("b".into()).await.unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(Outbound::Frame("a".into())));
        let tx = tokio::time::timeout(std::time::Duration::from_secs(5), send)
            .await
            .expect("the send completes once there is room")
            .unwrap();
        assert_eq!(rx.recv().await, Some(Outbound::Frame("b".into())));
        drop(tx);
        assert_eq!(rx.recv().await, None, "the sender left");
    }

    #[tokio::test]
    async fn a_departed_receiver_refuses_frames_and_frees_the_queue() {
        let (tx, rx) = channel(4);
        tx.try_send("a".into()).unwrap();
        drop(rx);
        assert_eq!(tx.try_send("b".into()), Err(PushError::Closed));
        assert_eq!(tx.send("c".into()).await, Err(PushError::Closed));
        assert!(tx.0.state.lock().frames.is_empty());
    }
}
