//! A socket's bounded queue of frames to write: one sender (the socket's
//! `Conn`), one receiver (its writer task).
//!
//! It exists for memory. It is bounded in frames and in bytes, per socket and
//! across the node (`NodeBudget`), since a client that does not read must not
//! make the node hold more than its share; and tokio's mpsc allocates a block
//! of 32 slots when it is created (about 1.1 KiB per socket, most sockets
//! being idle), while this queue allocates on its first frame and gives back
//! what a burst grew once it is drained.
//!
//! It also spares a task wake-up per frame: a transport may lend the queue
//! an `Immediate` writer, and a frame for a socket with nothing queued, no
//! write under way and no write within `COALESCE` is written at once by the
//! caller, without waking the writer task (bench/run.sh, fanout: the
//! wake-ups and the thread hand-offs behind them were the largest cost per
//! delivery above the kernel's). The writer and the immediate path never
//! write at once: the writer claims the socket under the queue's lock, and
//! the immediate path writes under that lock only while it is unclaimed.
//! An immediate write never waits (a full socket takes nothing and the
//! frame is queued), so it is safe under a room's lock, where deliveries
//! are made.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Capacity kept by an emptied queue; more is given back.
const KEEP: usize = 16;
/// The least time between two writes to one socket while frames keep
/// coming: a frame sooner than that after the last write is queued, and the
/// writer batches it with what follows (Nagle's idea, bounded to a
/// millisecond instead of a delayed ACK's 40). At chat rates frames are
/// further apart and go out at once.
pub const COALESCE: Duration = Duration::from_millis(1);

/// A transport's way to write a frame at once, on the caller's thread.
pub trait Immediate: Send + Sync {
    /// Writes `frame` as far as the socket takes it without waiting.
    /// `Written::Part` holds the encoded bytes it did not take.
    fn try_write(&self, frame: &[u8]) -> Written;
}

/// How far an immediate write got.
pub enum Written {
    /// The whole frame.
    All,
    /// Nothing: the socket is full (or failed; the writer will find out).
    Nothing,
    /// Part of it; the rest of the encoded frame must go out before anything else.
    Part(Bytes),
}

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
    /// The encoded tail of a frame written in part at once: raw bytes.
    Rest(Bytes),
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
    /// The writer took frames and has not finished writing them (or is
    /// closing the socket): nothing may be written at once meanwhile.
    claimed: bool,
    /// The tail of a frame written in part at once (see `Outbound::Rest`).
    rest: Option<Bytes>,
    /// When the socket was last written to (by either path).
    last_write: Option<Instant>,
    /// The transport's immediate writer, once it lent one.
    immediate: Option<Arc<dyn Immediate>>,
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
            claimed: false,
            rest: None,
            last_write: None,
            immediate: None,
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

    /// Lends the queue the transport's immediate writer. Call it once the
    /// writer runs and the first reply is queued: frames queued earlier
    /// keep their order either way.
    pub fn set_immediate(&self, immediate: Arc<dyn Immediate>) {
        let mut state = self.0.state.lock();
        if !state.closed {
            state.immediate = Some(immediate);
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
        if let Some(written) = state.write_now(frame.as_bytes()) {
            match written {
                Written::All => return Ok(()),
                Written::Nothing => {}
                Written::Part(rest) => {
                    // Counted as queued bytes: the writer owes them.
                    let n = rest.len();
                    self.0.limits.node.take(n, false);
                    state.bytes += n;
                    state.rest = Some(rest);
                    drop(state);
                    self.0.queued.notify_one();
                    return Ok(());
                }
            }
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
        let mut state = self.0.state.lock();
        state.closed = true;
        state.immediate = None;
        drop(state);
        self.0.queued.notify_one();
    }
}

impl State {
    /// Writes `frame` at once if the socket is free for it: an immediate
    /// writer lent, nothing queued or owed before it, no write under way,
    /// and the last write at least `COALESCE` ago. None if it is not.
    fn write_now(&mut self, frame: &[u8]) -> Option<Written> {
        let immediate = self.immediate.as_ref()?;
        if self.claimed || !self.frames.is_empty() || self.rest.is_some() || self.pong.is_some() {
            return None;
        }
        let now = Instant::now();
        if self.last_write.is_some_and(|at| now < at + COALESCE) {
            return None;
        }
        let written = immediate.try_write(frame);
        if !matches!(written, Written::Nothing) {
            self.last_write = Some(now);
        }
        Some(written)
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
    /// The rest of a frame written in part, else an owed pong, else the
    /// oldest frame, waiting for one; None once the sender is gone and the
    /// queue is empty. What it returns claims the socket for the writer
    /// until `release`.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            // Registered before the check: a frame queued in between wakes it.
            let queued = self.0.queued.notified();
            {
                let mut state = self.0.state.lock();
                if let Some(rest) = state.rest.take() {
                    state.claimed = true;
                    state.bytes -= rest.len();
                    drop(state);
                    self.0.limits.node.give_back(rest.len());
                    return Some(Outbound::Rest(rest));
                }
                if let Some(payload) = state.pong.take() {
                    state.claimed = true;
                    return Some(Outbound::Pong(payload));
                }
            }
            match self.take() {
                Ok(frame) => return Some(Outbound::Frame(frame)),
                Err(Closed(true)) => return None,
                Err(Closed(false)) => queued.await,
            }
        }
    }

    /// Claims the socket for a write of the writer's own (a ping, the
    /// close); returns the rest of a frame written in part, which must go
    /// first.
    pub fn claim(&self) -> Option<Bytes> {
        let mut state = self.0.state.lock();
        state.claimed = true;
        let rest = state.rest.take()?;
        state.bytes -= rest.len();
        drop(state);
        self.0.limits.node.give_back(rest.len());
        Some(rest)
    }

    /// When the socket was last written to, by either path.
    pub fn last_write(&self) -> Option<Instant> {
        self.0.state.lock().last_write
    }

    /// The writer wrote what it claimed: the socket is free for immediate
    /// writes again.
    pub fn release(&self, written_at: Instant) {
        let mut state = self.0.state.lock();
        state.claimed = false;
        state.last_write = Some(written_at);
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
        state.claimed = true;
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
        state.claimed = true;
        state.immediate = None;
        state.rest = None;
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

    /// A transport that takes what it is told to, and keeps what it took.
    struct Fake {
        took: Mutex<Vec<Vec<u8>>>,
        answer: Mutex<VecDeque<Written>>,
    }

    impl Fake {
        fn new(answers: Vec<Written>) -> Arc<Self> {
            Arc::new(Fake {
                took: Mutex::new(Vec::new()),
                answer: Mutex::new(answers.into()),
            })
        }
    }

    impl Immediate for Fake {
        fn try_write(&self, frame: &[u8]) -> Written {
            let answer = self.answer.lock().pop_front().unwrap_or(Written::All);
            if !matches!(answer, Written::Nothing) {
                self.took.lock().push(frame.to_vec());
            }
            answer
        }
    }

    #[tokio::test]
    async fn an_idle_socket_takes_a_frame_at_once() {
        let node = NodeBudget::unlimited();
        let (tx, rx) = channel(limits(100, &node));
        let fake = Fake::new(vec![]);
        tx.set_immediate(fake.clone());
        assert_eq!(tx.try_send("a".into()), Ok(()));
        assert_eq!(*fake.took.lock(), vec![b"a".to_vec()]);
        assert_eq!(rx.try_recv(), Err(Empty), "nothing left for the writer");
        assert_eq!(node.queued(), 0);
        assert!(rx.last_write().is_some());
    }

    #[tokio::test]
    async fn a_socket_the_writer_claimed_queues_frames_in_order() {
        let (tx, mut rx) = channel(Limits::frames(4));
        let fake = Fake::new(vec![]);
        tx.set_immediate(fake.clone());
        assert_eq!(rx.claim(), None);
        tx.try_send("a".into()).unwrap();
        tx.try_send("b".into()).unwrap();
        assert!(
            fake.took.lock().is_empty(),
            "no write while the writer holds the socket"
        );
        assert_eq!(rx.recv().await, Some(Outbound::Frame("a".into())));
        assert_eq!(rx.try_recv().unwrap().as_str(), "b");
    }

    #[tokio::test]
    async fn the_rest_of_a_frame_written_in_part_goes_out_first() {
        let node = NodeBudget::unlimited();
        let (tx, mut rx) = channel(limits(100, &node));
        let fake = Fake::new(vec![Written::Part(Bytes::from_static(b"xyz"))]);
        tx.set_immediate(fake.clone());
        tx.try_send("first".into()).unwrap();
        assert_eq!(node.queued(), 3, "the rest counts against the budget");
        tx.pong(Bytes::from_static(b"p"));
        tx.try_send("second".into()).unwrap();
        assert_eq!(
            fake.took.lock().len(),
            1,
            "nothing else at once behind a rest"
        );
        assert_eq!(
            rx.recv().await,
            Some(Outbound::Rest(Bytes::from_static(b"xyz")))
        );
        assert_eq!(
            rx.recv().await,
            Some(Outbound::Pong(Bytes::from_static(b"p")))
        );
        assert_eq!(rx.recv().await, Some(Outbound::Frame("second".into())));
        assert_eq!(node.queued(), 0);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_frame_to_the_writer() {
        let (tx, mut rx) = channel(Limits::frames(4));
        tx.set_immediate(Fake::new(vec![Written::Nothing]));
        tx.try_send("a".into()).unwrap();
        assert_eq!(rx.recv().await, Some(Outbound::Frame("a".into())));
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
