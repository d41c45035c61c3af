//! One confab node: its parts wired together, and its life (start, serve,
//! drain, stop).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use poem::Server;

use crate::assistant::Streams;
use crate::auth::{AuthConfigError, Authenticator};
use crate::bus::{Bus, LocalBus, RedisBus, Topic};
use crate::chat::Chat;
use crate::config::Settings;
use crate::hub::{CloseReason, Hub, HubSettings, StreamControl};
use crate::metrics::Metrics;
use crate::store::Store;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("bus: {0}")]
    Bus(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// Everything one node holds; shared by every request and socket.
pub struct Node {
    pub settings: Settings,
    pub node_id: String,
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub chat: Arc<Chat>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// WebSockets upgraded and not yet ended (authenticated or not).
    sockets: AtomicUsize,
    /// Most WebSockets this node takes: what its file descriptors allow.
    max_sockets: usize,
}

/// Descriptors kept free for the database, Redis, HTTP and the runtime.
const FD_RESERVE: u64 = 512;

impl Node {
    /// Connects storage (migrating it) and the bus, and builds the node.
    pub async fn start(settings: Settings) -> Result<Arc<Node>, StartError> {
        let auth = Authenticator::new(&settings.auth)?;
        let node_id = if settings.server.node_id.is_empty() {
            format!("node-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
        } else {
            settings.server.node_id.clone()
        };
        let metrics = Arc::new(Metrics::new(&node_id));
        let store = Store::connect(&settings.database.url, settings.database.max_connections)
            .await?
            .with_latency(metrics.store_latency.clone());
        store.migrate().await?;
        let bus: Arc<dyn Bus> = if settings.bus.redis_url.is_empty() {
            Arc::new(LocalBus::new())
        } else {
            RedisBus::connect(&settings.bus, &node_id)
                .await
                .map_err(|e| StartError::Bus(e.to_string()))?
        };
        let hub = Hub::new(
            store.clone(),
            bus.clone(),
            metrics.clone(),
            HubSettings {
                gap_wait: Duration::from_millis(settings.bus.gap_fill_ms),
                outbound_queue: settings.limits.outbound_queue,
                recent_messages: settings
                    .limits
                    .recent_messages_per_room
                    .min(settings.limits.outbound_queue / 2),
                max_connections_per_user: settings.limits.max_connections_per_user,
                stream_timeout: Duration::from_secs_f64(settings.streaming.stream_timeout_secs),
            },
        );
        let streams = Arc::new(
            Streams::new(
                &settings.assistants,
                settings.streaming.clone(),
                store.clone(),
                bus.clone(),
                metrics.clone(),
            )
            .map_err(StartError::Config)?,
        );
        let control: Arc<dyn StreamControl> = streams.clone();
        hub.set_stream_control(Arc::downgrade(&control));
        bus.subscribe(&Topic::Streams)
            .await
            .map_err(|e| StartError::Bus(e.to_string()))?;
        let chat = Arc::new(Chat::new(
            store.clone(),
            bus.clone(),
            hub.clone(),
            metrics.clone(),
            settings.limits.clone(),
            streams,
        ));
        Ok(Arc::new(Node {
            settings,
            node_id,
            store,
            bus,
            hub,
            chat,
            auth,
            metrics,
            draining: AtomicBool::new(false),
            sockets: AtomicUsize::new(0),
            max_sockets: socket_capacity(),
        }))
    }

    /// Takes a socket slot, unless the node is full: past its file
    /// descriptor limit `accept` would fail in a loop and starve the node.
    pub fn try_open_socket(self: &Arc<Self>) -> Option<SocketSlot> {
        let n = self.sockets.fetch_add(1, Ordering::AcqRel);
        if n >= self.max_sockets {
            self.sockets.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SocketSlot(self.clone()))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Readiness: storage answers, the bus delivers, not draining.
    pub async fn is_ready(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        self.store
            .ping()
            .await
            .map_err(|e| format!("storage: {e}"))?;
        if !self.bus.healthy().await {
            return Err("bus: not delivering".into());
        }
        Ok(())
    }

    /// Stops taking sockets and closes the open ones with 1012, spread over
    /// `server.drain_secs` so their reconnects do not land all at once.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let conns = self.hub.connections();
        let window = Duration::from_secs(self.settings.server.drain_secs);
        tracing::info!(sockets = conns.len(), ?window, "draining");
        // Close in batches every 10 ms tick (a sleep per socket would take
        // at least a millisecond each, far longer than the window).
        // By tick k, the first (k + 1) / ticks of them are closed: spread
        // evenly over the window whatever their number.
        let tick = Duration::from_millis(10);
        let ticks = (window.as_millis() / tick.as_millis()).max(1) as usize;
        let mut interval = tokio::time::interval(tick);
        let mut closed = 0;
        for k in 0..ticks {
            let due = ((k + 1) * conns.len()).div_ceil(ticks);
            if due > closed {
                for conn in &conns[closed..due] {
                    conn.close(CloseReason::Restart);
                }
                closed = due;
            }
            if closed == conns.len() {
                break;
            }
            interval.tick().await;
        }
        // Give writers a moment to send their close frames.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.hub.connections().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A held socket slot; released when dropped.
pub struct SocketSlot(Arc<Node>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Raises the soft file-descriptor limit to the hard one and returns how
/// many sockets fit under it with a reserve.
fn socket_capacity() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let capacity = limit.saturating_sub(FD_RESERVE).max(16);
    tracing::info!(fd_limit = limit, max_sockets = capacity, "socket capacity");
    capacity as usize
}

/// Binds the configured address (or `addr`, for tests picking port 0).
pub async fn bind(addr: SocketAddr) -> Result<(NoDelayAcceptor, SocketAddr), StartError> {
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
    let acceptor = NoDelayAcceptor(TcpAcceptor::from_tokio(listener)?);
    let local = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .unwrap_or(addr);
    Ok((acceptor, local))
}

/// Accepts TCP connections with Nagle's algorithm off. The node writes
/// small frames as they come; with Nagle on, a frame written while the
/// previous one is unacknowledged waits for the client's delayed ACK (up to
/// 40 ms on Linux), which set the fan-out latency tail.
pub struct NoDelayAcceptor(TcpAcceptor);

impl Acceptor for NoDelayAcceptor {
    type Io = tokio::net::TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let accepted = self.0.accept().await?;
        if let Err(e) = accepted.0.set_nodelay(true) {
            // The connection still works, only with Nagle's delays.
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        Ok(accepted)
    }
}

/// Serves HTTP and WebSockets until `shutdown` completes, then drains.
pub async fn serve(
    node: Arc<Node>,
    acceptor: NoDelayAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::http::routes(node.clone());
    let drain_node = node.clone();
    let signal = async move {
        shutdown.await;
        drain_node.drain().await;
    };
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, signal, Some(Duration::from_secs(5)))
        .await
}
