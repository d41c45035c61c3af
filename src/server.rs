//! Binding and serving: the accept loop, what an accepted connection may
//! hold before it authenticates, and HTTP's timeouts.
//!
//! It exists because a node must stay usable whatever arrives at its port.
//! Every accepted TCP connection counts against the node's capacity, and
//! until it authenticates (a WebSocket's auth frame; a plain HTTP connection
//! never does) against a node-wide and a per-address limit of pending
//! connections: over a limit it is closed at accept, before it costs more
//! than a descriptor for a moment. A request head must arrive within
//! `header_timeout_secs` (slowloris, idle keep-alive), and every write may
//! wait at most `write_timeout_secs` for the client to take bytes. When
//! `accept` itself fails (out of descriptors), the loop backs off instead of
//! spinning, and the connections already open are served as before.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;

/// Descriptors kept free for the database, Redis, HTTP clients and the
/// runtime when the capacity comes from the descriptor limit.
const FD_RESERVE: u64 = 512;
/// Longest pause between two `accept` attempts after a failure.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long open HTTP connections get to finish after a shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds `addr` (port 0 picks a free one) and returns the listener and the
/// address it got.
pub async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    // A deep accept queue: after a node drains, thousands of clients
    // reconnect at once, and an overflowing queue costs each a SYN retry.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(8192)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// How a node serves: limits on connections and HTTP's timeouts.
#[derive(Clone, Debug)]
pub struct Options {
    /// Most connections held at once.
    pub capacity: usize,
    pub max_pending: usize,
    /// 0: no per-address limit.
    pub max_pending_per_ip: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
}

impl Options {
    /// From the settings; a capacity of 0 becomes what the descriptor limit
    /// allows (the soft limit is raised to the hard one first).
    pub fn from_settings(settings: &Settings) -> Self {
        let server = &settings.server;
        let capacity = match server.max_connections {
            0 => descriptor_capacity(),
            n => n,
        };
        Options {
            capacity,
            max_pending: settings.limits.max_pending_connections.max(1),
            max_pending_per_ip: settings.limits.max_pending_connections_per_ip,
            header_timeout: server.header_timeout(),
            write_timeout: server.write_timeout(),
        }
    }
}

fn descriptor_capacity() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let capacity = limit.saturating_sub(FD_RESERVE).max(16);
    tracing::info!(
        fd_limit = limit,
        max_connections = capacity,
        "connection capacity"
    );
    capacity as usize
}

/// Which limit turned a connection away at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Capacity,
    Pending,
    PendingPerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::Pending => "pending",
            Refusal::PendingPerIp => "pending_per_ip",
        }
    }
}

/// The counts every accepted connection is admitted against.
pub struct Gate {
    options: Options,
    metrics: Arc<Metrics>,
    open: AtomicUsize,
    pending: AtomicUsize,
    pending_by_ip: DashMap<IpAddr, usize>,
    /// Woken when the last connection closes (shutdown waits for it).
    idle: Notify,
}

impl Gate {
    pub fn new(options: Options, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Gate {
            options,
            metrics,
            open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            pending_by_ip: DashMap::new(),
            idle: Notify::new(),
        })
    }

    /// Admits a connection from `ip` as pending, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<Admission>, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.options.capacity {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Capacity);
        }
        // From here on, the admission's drop gives the place back.
        let admission = Admission {
            gate: self.clone(),
            ip,
            pending: AtomicBool::new(false),
        };
        self.metrics.connections_open.inc();
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.options.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Pending);
        }
        let per_ip = self.options.max_pending_per_ip;
        if per_ip > 0 {
            let mut from_ip = self.pending_by_ip.entry(ip).or_insert(0);
            if *from_ip >= per_ip {
                drop(from_ip);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.pending_by_ip.remove_if(&ip, |_, n| *n == 0);
                return Err(Refusal::PendingPerIp);
            }
            *from_ip += 1;
        }
        admission.pending.store(true, Ordering::Release);
        self.metrics.connections_pending.inc();
        Ok(Arc::new(admission))
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn leave_pending(&self, ip: IpAddr) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections_pending.dec();
        if self.options.max_pending_per_ip == 0 {
            return;
        }
        if let Some(mut n) = self.pending_by_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
        }
        self.pending_by_ip.remove_if(&ip, |_, n| *n == 0);
    }

    /// Completes once no connection is open.
    async fn all_closed(&self) {
        loop {
            let idle = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One accepted connection's place in the gate, given back when the
/// connection and every request of it are gone. The WebSocket route finds it
/// in its request's extensions and calls `authenticated` after the auth frame.
pub struct Admission {
    gate: Arc<Gate>,
    ip: IpAddr,
    pending: AtomicBool,
}

impl Admission {
    /// The connection authenticated: it no longer counts as pending.
    pub fn authenticated(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.gate.leave_pending(self.ip);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.authenticated();
        self.gate.metrics.connections_open.dec();
        if self.gate.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gate.idle.notify_waiters();
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes (it may drain the
/// node's sockets before completing), then lets open HTTP requests finish
/// for a few seconds.
pub async fn serve<E>(
    listener: TcpListener,
    app: E,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send,
) where
    E: Endpoint<Output = Response> + 'static,
{
    let app = Arc::new(app);
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                gate.metrics.accept_errors.inc();
                if backoff.is_zero() {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let admission = match gate.admit(remote.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                gate.metrics
                    .connections_refused
                    .with_label_values(&[refusal.label()])
                    .inc();
                // Dropped: closed before a byte of it is read.
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            // The connection still works, only with Nagle's delays.
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let local = stream.local_addr().unwrap_or(remote);
        let conn = Connection {
            app: app.clone(),
            admission,
            local,
            remote,
            header_timeout: gate.options.header_timeout,
        };
        tokio::spawn(conn.serve(stream, stop.clone()));
    }
    drop(listener);
    stop.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, gate.all_closed()).await;
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// One accepted connection on its way to HTTP.
struct Connection<E> {
    app: Arc<E>,
    admission: Arc<Admission>,
    local: SocketAddr,
    remote: SocketAddr,
    header_timeout: Duration,
}

impl<E: Endpoint<Output = Response> + 'static> Connection<E> {
    /// Serves HTTP/1.1 (and its upgrades) on the connection until it ends,
    /// or until `stop`, when the request under way may finish.
    async fn serve(self, stream: TcpStream, stop: CancellationToken) {
        let Connection {
            app,
            admission,
            local,
            remote,
            header_timeout,
        } = self;
        let io = Guarded {
            io: stream,
            stalled: None,
            admission: admission.clone(),
        };
        // Told when the first request reaches the service.
        let started = Arc::new(Notify::new());
        let first_request = started.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            first_request.notify_one();
            // Kept from poem, whose upgraded stream hides the socket.
            let upgrade = req
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
                .map(PendingUpgrade::new);
            let mut req: poem::Request = (
                req,
                LocalAddr(local.into()),
                RemoteAddr(remote.into()),
                Scheme::HTTP,
            )
                .into();
            req.extensions_mut().insert(admission.clone());
            if let Some(upgrade) = upgrade {
                req.extensions_mut().insert(upgrade);
            }
            let app = app.clone();
            async move {
                let resp: hyper::Response<BoxBody<Bytes, io::Error>> =
                    app.get_response(req).await.into();
                Ok::<_, Infallible>(resp)
            }
        });
        // Served through hyper_util's connection, as poem serves: with
        // hyper's HTTP/1 connection used directly, an idle socket measured
        // 1.5 KiB more after a connect storm (bench/run.sh, idle), for
        // reasons not pinned down (the heap held at the end was the same).
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let http = http.http1_only();
        let mut conn =
            std::pin::pin!(http.serve_connection_with_upgrades(TokioIo::new(io), service));
        // hyper times each request head once it reads one; until the first
        // request starts (bytes sniffed, head read), the time is ours.
        let first = tokio::time::timeout(header_timeout, started.notified());
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled() => return,
            started = first => if started.is_err() {
                return;
            },
        }
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// The error of a write to a client that took no bytes for the write
/// timeout, over HTTP or an upgraded connection alike.
pub fn write_stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took no bytes within the write timeout",
    )
}

/// A request's upgrade, taken from hyper before poem sees the request, so
/// that the upgraded connection can be handed over whole (`Handover`).
#[derive(Clone)]
pub struct PendingUpgrade(Arc<parking_lot::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

/// A connection upgraded to another protocol, handed over to it: the TCP
/// stream, the bytes the HTTP parser had read past the request, and the
/// time a client may take no bytes before writes to it fail.
pub struct Handover {
    pub stream: TcpStream,
    pub read_buf: Bytes,
    pub write_timeout: Duration,
}

impl PendingUpgrade {
    fn new(upgrade: hyper::upgrade::OnUpgrade) -> Self {
        Self(Arc::new(parking_lot::Mutex::new(Some(upgrade))))
    }

    /// The request's upgrade, once: completes with the connection after
    /// the response (101) is sent. None if the request has none, or it was
    /// taken.
    pub fn take(req: &poem::Request) -> Option<impl Future<Output = io::Result<Handover>>> {
        let upgrade = req.extensions().get::<PendingUpgrade>()?.0.lock().take()?;
        Some(async move {
            let upgraded = upgrade.await.map_err(io::Error::other)?;
            let parts = auto::upgrade::downcast::<TokioIo<Guarded>>(upgraded)
                .map_err(|_| io::Error::other("an upgraded connection of another type"))?;
            let guarded = parts.io.into_inner();
            Ok(Handover {
                write_timeout: guarded.admission.gate.options.write_timeout,
                stream: guarded.io,
                read_buf: parts.read_buf,
            })
        })
    }
}

/// A connection's socket while it speaks HTTP, holding its admission,
/// whose writes fail once the client has taken no bytes for
/// `write_timeout`: a client that stops reading cannot hold a writer, or
/// the memory behind it, for longer. An upgrade hands the stream over
/// (`Handover`), and the WebSocket's writes keep the same timeout.
struct Guarded {
    io: TcpStream,
    /// Armed when a write finds the socket full; dropped by the next write
    /// that goes through. Boxed: an idle connection holds no timer.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Also where the write timeout is read: every idle socket holds this.
    admission: Arc<Admission>,
}

impl Guarded {
    /// Passes a write's outcome on; a write that waits arms the stall timer,
    /// and fails once it fires.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.admission.gate.options.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(write_stalled())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(capacity: usize, max_pending: usize, per_ip: usize) -> Arc<Gate> {
        Gate::new(
            Options {
                capacity,
                max_pending,
                max_pending_per_ip: per_ip,
                header_timeout: Duration::from_secs(1),
                write_timeout: Duration::from_secs(1),
            },
            Arc::new(Metrics::new("test")),
        )
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn pending_connections_are_limited_per_address_and_in_all() {
        let gate = gate(100, 3, 2);
        let a1 = gate.admit(A).unwrap();
        let _a2 = gate.admit(A).unwrap();
        assert_eq!(gate.admit(A).err(), Some(Refusal::PendingPerIp));
        let _b1 = gate.admit(B).unwrap();
        assert_eq!(gate.admit(B).err(), Some(Refusal::Pending));
        assert_eq!(gate.open(), 3, "refused connections hold no place");
        // Authenticated, a connection leaves both pending counts.
        a1.authenticated();
        let _a3 = gate.admit(A).unwrap();
        assert_eq!(gate.open(), 4);
    }

    #[test]
    fn every_connection_counts_against_capacity_until_dropped() {
        let gate = gate(2, 10, 0);
        let a = gate.admit(A).unwrap();
        a.authenticated();
        let _b = gate.admit(B).unwrap();
        assert_eq!(gate.admit(B).err(), Some(Refusal::Capacity));
        drop(a);
        assert!(gate.admit(A).is_ok(), "a closed connection frees its place");
        assert!(
            gate.pending_by_ip.get(&A).is_none(),
            "no entry outlives its connections"
        );
    }
}
