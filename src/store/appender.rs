//! The write path of messages: `Store::submit` queues an append, and group
//! commit stores it. Sends that arrive while a transaction is in
//! flight wait for it and then go together in the next one, so a busy node
//! pays one commit (one fsync, one round trip per conversation) for many
//! messages, while a quiet node commits each send at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus::HistogramTimer;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::log::{ChangeOrder, ChangeResult};
use super::messages::{append_one, insert_batch, Appended, Job, NewMessage, MAX_BATCH};
use super::{sqlite, Store};
use crate::tasks::Tasks;
use tokio_util::sync::CancellationToken;

/// Appends queued per writer before callers wait (a bound on memory).
const QUEUE: usize = 4096;

/// Hands appends to the writers; a conversation always goes to the same
/// writer, so its sends are stored in the order they were made.
#[derive(Clone)]
pub(super) enum Appender {
    /// Postgres: writer tasks, one per shard of conversations.
    Tasks(Vec<mpsc::Sender<Job>>),
    /// SQLite: the writer thread, which applies changes too.
    Sqlite(mpsc::Sender<sqlite::Task>),
}

impl Appender {
    /// Starts `writers` writer tasks on `db` (Postgres).
    pub fn start(db: &DatabaseConnection, writers: usize, tasks: &Tasks) -> Self {
        let writers = (0..writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tasks.spawn_graceful(write(db.clone(), rx, tasks.stop_signal()));
                tx
            })
            .collect();
        Appender::Tasks(writers)
    }

    /// Starts the SQLite writer on its own connection to `path`; it stops
    /// once the store is dropped, after what is queued.
    pub fn start_sqlite(path: &std::path::Path) -> Result<Self, DbErr> {
        let (tx, rx) = mpsc::channel(QUEUE);
        sqlite::Writer::open(path)?.spawn(path.to_owned(), rx)?;
        Ok(Appender::Sqlite(tx))
    }

    /// Queues `new` for its conversation's writer (waiting only for room in
    /// the queue) and returns what completes once it is stored. Appends
    /// queued one after another are stored in that order.
    pub async fn submit(&self, db: &DatabaseConnection, new: NewMessage) -> PendingAppend {
        let (reply, answer) = oneshot::channel();
        let writers = match self {
            Appender::Sqlite(writer) => {
                return match writer.send(sqlite::Task::Append((new, reply))).await {
                    Ok(()) => PendingAppend::Queued(answer),
                    Err(_) => PendingAppend::Done(Some(Box::new(Err(stopped())))),
                };
            }
            Appender::Tasks(writers) => writers,
        };
        let shard = new.conversation_id.0.as_u128() as usize % writers.len();
        match writers[shard].send((new, reply)).await {
            Ok(()) => PendingAppend::Queued(answer),
            // No writer (the runtime is shutting down): write it here.
            Err(mpsc::error::SendError((new, _))) => {
                PendingAppend::Done(Some(Box::new(append_one(db, &new).await)))
            }
        }
    }

    /// Has the SQLite writer thread apply a change, after the appends
    /// queued before it; None on Postgres, where the caller applies it.
    pub async fn change(&self, order: &ChangeOrder) -> Option<ChangeResult> {
        let Appender::Sqlite(writer) = self else {
            return None;
        };
        let (reply, answer) = oneshot::channel();
        if writer
            .send(sqlite::Task::Change(order.clone(), reply))
            .await
            .is_err()
        {
            return Some(Err(stopped()));
        }
        Some(answer.await.unwrap_or_else(|_| Err(stopped())))
    }
}

fn stopped() -> DbErr {
    DbErr::Custom("the message writer stopped".into())
}

/// An append on its way: completes with the stored message.
pub enum PendingAppend {
    Queued(oneshot::Receiver<Result<Option<Appended>, DbErr>>),
    /// Written by the caller (boxed: a message is large, and rare here).
    Done(Option<Box<Result<Option<Appended>, DbErr>>>),
}

impl Future for PendingAppend {
    type Output = Result<Option<Appended>, DbErr>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            PendingAppend::Queued(answer) => Pin::new(answer)
                .poll(cx)
                .map(|answer| answer.unwrap_or_else(|_| Err(stopped()))),
            PendingAppend::Done(result) => Poll::Ready(result.take().map_or_else(
                || Err(DbErr::Custom("append polled after completion".into())),
                |r| *r,
            )),
        }
    }
}

/// One writer: takes whatever is queued (up to `MAX_BATCH`) and commits it
/// in one transaction. If that fails (a retried send racing its first copy,
/// a conflict), each message is tried alone, so one bad message fails only
/// its own send. Once the node stops, it ends when the queue is empty.
async fn write(db: DatabaseConnection, mut queue: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = tokio::select! {
            biased;
            taken = queue.recv_many(&mut batch, MAX_BATCH) => taken,
            _ = stop.cancelled() => 0,
        };
        if taken == 0 {
            return;
        }
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

impl Store {
    /// Stores a message at the conversation's next seq. None if the
    /// conversation does not exist.
    ///
    /// Sends that arrive together are committed together (see `appender`
    /// and `insert_batch`); seq stays unique and gap-free.
    pub async fn append(&self, new: NewMessage) -> Result<Option<Appended>, DbErr> {
        self.submit(new).await.await
    }

    /// Queues a message for appending and returns what completes once it
    /// is stored, so a caller can queue its next message meanwhile: messages
    /// submitted one after another to one conversation get ascending seqs.
    pub async fn submit(&self, new: NewMessage) -> Submitted {
        let span = tracing::debug_span!("store.append", conversation_id = %new.conversation_id);
        let timer = self.timer("append");
        let append = self
            .appender
            .submit(&self.db, new)
            .instrument(span.clone())
            .await;
        Submitted {
            append,
            until_stored: Some((timer, span)),
        }
    }
}

/// A submitted append. Its latency timer and `store.append` span run until
/// it completes.
pub struct Submitted {
    append: PendingAppend,
    until_stored: Option<(Option<HistogramTimer>, tracing::Span)>,
}

impl Future for Submitted {
    type Output = Result<Option<Appended>, DbErr>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let stored = ready!(Pin::new(&mut self.append).poll(cx));
        self.until_stored = None;
        Poll::Ready(stored)
    }
}
