//! A socket's bounded queue of frames to write: one sender (the socket's
//! `Conn`), one receiver (its writer task).
//!
//! It exists for memory. It is bounded in frames and in bytes, per socket and
//! across the node (`NodeBudget`), since a client that does not read must not
//! make the node hold more than its share; and tokio's mpsc allocates a block
//! of 32 slots when it is created (about 1.1 KiB per socket, most sockets
//! being idle), while this queue allocates on its first frame and gives back
//! what a burst grew once it is drained.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Capacity kept by an emptied queue; more is given back.
const KEEP: usize = 16;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its limit of frames.
    Full,
    /// The frame would take the socket, or the node, past its byte budget.
    OverBudget,
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

/// The bytes queued for all of a node's sockets, against one limit. The
/// gauge is the count itself, so `/metrics` shows it as it is.
#[derive(Debug)]
pub struct NodeBudget {
    queued: IntGauge,
    limit: i64,
}

impl NodeBudget {
    pub fn new(queued: IntGauge, limit: usize) -> Arc<Self> {
        Arc::new(NodeBudget {
            queued,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        })
    }

    /// A budget no test will reach, for queues made outside a node.
    pub fn unlimited() -> Arc<Self> {
        // A valid constant name: creating the gauge cannot fail.
        let gauge = IntGauge::new("outbound_bytes", "bytes queued").expect("valid gauge");
        Self::new(gauge, usize::MAX)
    }

    /// Bytes queued on the node now.
    pub fn queued(&self) -> usize {
        self.queued.get().max(0) as usize
    }

    /// Counts `n` bytes unless that passes the limit and `behind` (the socket
    /// already has frames waiting): a socket that keeps up always gets its
    /// frame, one that lags is the one to shed.
    fn take(&self, n: usize, behind: bool) -> bool {
        let n = n as i64;
        self.queued.add(n);
        if behind && self.queued.get() > self.limit {
            self.queued.sub(n);
            return false;
        }
        true
    }

    fn give_back(&self, n: usize) {
        self.queued.sub(n as i64);
    }
}

/// A queue's bounds.
#[derive(Clone)]
pub struct Limits {
    /// Frames queued at most.
    pub frames: usize,
    /// Bytes queued or reserved at most.
    pub bytes: usize,
    pub node: Arc<NodeBudget>,
}

impl Limits {
    /// Only a bound in frames (tests, and queues outside a node).
    pub fn frames(frames: usize) -> Arc<Self> {
        Arc::new(Limits {
            frames: frames.max(1),
            bytes: usize::MAX,
            node: NodeBudget::unlimited(),
        })
    }
}

struct Shared {
    state: Mutex<State>,
    /// Shared by every socket of a node (one pointer per idle socket).
    limits: Arc<Limits>,
    /// A frame was queued, or the sender left.
    queued: Notify,
    /// A frame was taken, or the receiver left.
    taken: Notify,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes of `frames`.
    bytes: usize,
    /// Bytes promised to replies still being built (`Sender::reserve`).
    reserved: usize,
    /// A pong owed to the client; only the latest ping needs one (RFC 6455,
    /// 5.5.3), and it goes ahead of queued frames.
    pong: Option<Bytes>,
    /// The sender or the receiver left.
    closed: bool,
}

/// A queue within `limits` (`frames` at least 1).
pub fn channel(limits: Arc<Limits>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            bytes: 0,
            reserved: 0,
            pong: None,
            closed: false,
        }),
        limits,
        queued: Notify::new(),
        taken: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The queuing end.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `frame` unless the queue is full, over budget, or the receiver
    /// is gone.
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), PushError> {
        self.push(frame).map_err(|(e, _)| e)
    }

    /// Queues `frame`, waiting while the queue holds its limit of frames;
    /// Err if the receiver is gone or the frame is over budget (waiting
    /// would not help a client that does not read).
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

    /// Sets `n` bytes of the budget aside for a reply about to be built, so
    /// a request for a large reply counts before the node holds it. None if
    /// they do not fit; the bytes are given back when the guard drops.
    pub fn reserve(&self, n: usize) -> Option<Reservation> {
        let mut state = self.0.state.lock();
        if state.closed || state.bytes + state.reserved + n > self.0.limits.bytes {
            return None;
        }
        let behind = !state.frames.is_empty() || state.reserved > 0;
        if !self.0.limits.node.take(n, behind) {
            return None;
        }
        state.reserved += n;
        Some(Reservation {
            shared: self.0.clone(),
            bytes: n,
        })
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
        if state.frames.len() >= self.0.limits.frames {
            return Err((PushError::Full, frame));
        }
        let n = frame.len();
        if state.bytes + state.reserved + n > self.0.limits.bytes
            || !self.0.limits.node.take(n, !state.frames.is_empty())
        {
            return Err((PushError::OverBudget, frame));
        }
        state.bytes += n;
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

/// Bytes of a socket's budget set aside for a reply being built.
pub struct Reservation {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.state.lock().reserved -= self.bytes;
        self.shared.limits.node.give_back(self.bytes);
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
        state.bytes -= frame.len();
        if state.frames.is_empty() && state.frames.capacity() > KEEP {
            state.frames.shrink_to(KEEP);
        }
        drop(state);
        self.0.limits.node.give_back(frame.len());
        self.0.taken.notify_one();
        Ok(frame)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        let freed = std::mem::take(&mut state.bytes);
        drop(state);
        self.0.limits.node.give_back(freed);
        self.0.taken.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_within_the_limit() {
        let (tx, mut rx) = channel(Limits::frames(2));
        assert_eq!(tx.try_send("a".into()), Ok(()));
        assert_eq!(tx.try_send("b".into()), Ok(()));
        assert_eq!(tx.try_send("c".into()), Err(PushError::Full));
        assert_eq!(rx.recv().await, Some(Outbound::Frame("a".into())));
        assert_eq!(rx.try_recv().unwrap().as_str(), "b");
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[tokio::test]
    async fn an_owed_pong_goes_first_and_only_the_latest_counts() {
        let (tx, mut rx) = channel(Limits::frames(4));
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
        let (tx, mut rx) = channel(Limits::frames(1));
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
        let (tx, rx) = channel(Limits::frames(4));
        tx.try_send("a".into()).unwrap();
        drop(rx);
        assert_eq!(tx.try_send("b".into()), Err(PushError::Closed));
        assert_eq!(tx.send("c".into()).await, Err(PushError::Closed));
        assert!(tx.0.state.lock().frames.is_empty());
    }

    fn limits(bytes: usize, node: &Arc<NodeBudget>) -> Arc<Limits> {
        Arc::new(Limits {
            frames: 100,
            bytes,
            node: node.clone(),
        })
    }

    #[tokio::test]
    async fn a_socket_never_holds_more_than_its_bytes() {
        let node = NodeBudget::unlimited();
        let (tx, rx) = channel(limits(10, &node));
        assert_eq!(tx.try_send("12345".into()), Ok(()));
        assert_eq!(tx.try_send("123456".into()), Err(PushError::OverBudget));
        assert_eq!(
            tx.send("123456".into()).await,
            Err(PushError::OverBudget),
            "a reply does not wait for bytes a client may never read"
        );
        assert_eq!(tx.try_send("12345".into()), Ok(()));
        assert_eq!(node.queued(), 10);
        rx.try_recv().unwrap();
        assert_eq!(node.queued(), 5, "taken bytes are given back");
        drop(rx);
        assert_eq!(node.queued(), 0, "a closed queue gives back the rest");
    }

    #[test]
    fn a_reservation_counts_until_it_is_dropped() {
        let node = NodeBudget::unlimited();
        let (tx, _rx) = channel(limits(10, &node));
        let held = tx.reserve(8).expect("8 of 10 bytes are free");
        assert!(tx.reserve(3).is_none(), "8 + 3 is over the budget");
        assert_eq!(tx.try_send("abc".into()), Err(PushError::OverBudget));
        assert_eq!(node.queued(), 8);
        drop(held);
        assert_eq!(node.queued(), 0);
        assert_eq!(tx.try_send("abc".into()), Ok(()));
    }

    #[test]
    fn past_the_node_budget_only_sockets_that_lag_are_refused() {
        let gauge = IntGauge::new("q", "q").unwrap();
        let node = NodeBudget::new(gauge, 8);
        let (lagging, _rx1) = channel(limits(100, &node));
        let (keeping_up, _rx2) = channel(limits(100, &node));
        assert_eq!(lagging.try_send("123456".into()), Ok(()));
        // Over the node's 8 bytes: the socket with a frame waiting is refused...
        assert_eq!(lagging.try_send("123".into()), Err(PushError::OverBudget));
        // ...one with nothing waiting still gets its frame.
        assert_eq!(keeping_up.try_send("123".into()), Ok(()));
        assert_eq!(node.queued(), 9);
    }
}
