//! Group commit of appends. Sends that arrive while a transaction is in
//! flight wait for it and then go together in the next one, so a busy node
//! pays one commit (one fsync, one round trip per conversation) for many
//! messages, while a quiet node commits each send at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{mpsc, oneshot};

use super::messages::{append_one, insert_batch, Appended, NewMessage};

/// Most messages in one transaction.
const MAX_BATCH: usize = 256;
/// Appends queued per writer before callers wait (a bound on memory).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Option<Appended>, DbErr>>;

/// Hands appends to writer tasks; a conversation always goes to the same
/// writer, so its sends are stored in the order they were made.
#[derive(Clone)]
pub(super) struct Appender {
    writers: Vec<mpsc::Sender<(NewMessage, Reply)>>,
}

impl Appender {
    /// Starts `writers` writer tasks on `db` (one for SQLite: it has one
    /// writer anyway).
    pub fn start(db: &DatabaseConnection, writers: usize) -> Self {
        let writers = (0..writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(write(db.clone(), rx));
                tx
            })
            .collect();
        Self { writers }
    }

    /// Queues `new` for its conversation's writer (waiting only for room in
    /// the queue) and returns what completes once it is stored. Appends
    /// queued one after another are stored in that order.
    pub async fn submit(&self, db: &DatabaseConnection, new: NewMessage) -> PendingAppend {
        let shard = new.conversation_id.0.as_u128() as usize % self.writers.len();
        let (reply, answer) = oneshot::channel();
        match self.writers[shard].send((new, reply)).await {
            Ok(()) => PendingAppend::Queued(answer),
            // No writer (the runtime is shutting down): write it here.
            Err(mpsc::error::SendError((new, _))) => {
                PendingAppend::Done(Some(append_one(db, &new).await))
            }
        }
    }
}

/// An append on its way: completes with the stored message.
pub enum PendingAppend {
    Queued(oneshot::Receiver<Result<Option<Appended>, DbErr>>),
    Done(Option<Result<Option<Appended>, DbErr>>),
}

impl Future for PendingAppend {
    type Output = Result<Option<Appended>, DbErr>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            PendingAppend::Queued(answer) => Pin::new(answer).poll(cx).map(|answer| {
                answer.unwrap_or_else(|_| Err(DbErr::Custom("the message writer stopped".into())))
            }),
            PendingAppend::Done(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(DbErr::Custom("append polled after completion".into()))),
            ),
        }
    }
}

/// One writer: takes whatever is queued (up to `MAX_BATCH`) and commits it
/// in one transaction. If that fails (a retried send racing its first copy,
/// a conflict), each message is tried alone, so one bad message fails only
/// its own send.
async fn write(db: DatabaseConnection, mut queue: mpsc::Receiver<(NewMessage, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (news, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        if news.len() > 1 {
            match insert_batch(&db, &news).await {
                Ok(stored) => {
                    for (reply, result) in replies.into_iter().zip(stored) {
                        let _ = reply.send(Ok(result));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, size = news.len(), "batch append failed; appending one by one")
                }
            }
        }
        for (new, reply) in news.iter().zip(replies) {
            let _ = reply.send(append_one(&db, new).await);
        }
    }
}
