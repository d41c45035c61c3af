//! One confab node: its parts wired together, and its life (start, serve,
//! drain, stop).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poem::EndpointExt;
use tokio::net::TcpListener;

use crate::assistant::Streams;
use crate::auth::{AuthConfigError, Authenticator};
use crate::bus::{Bus, LocalBus, RedisBus, Topic};
use crate::chat::Chat;
use crate::config::Settings;
use crate::hub::{CloseReason, Hub, HubSettings, NodeBudget, StreamControl};
use crate::metrics::Metrics;
use crate::server::{Gate, Options};
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
}

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
                outbound_bytes: settings.limits.max_outbound_bytes_per_socket,
                outbound_budget: NodeBudget::new(
                    metrics.outbound_bytes.clone(),
                    settings.limits.max_outbound_bytes_per_node,
                ),
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
        }))
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

/// Serves HTTP and WebSockets on `listener` until `shutdown` completes,
/// then drains.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let gate = Gate::new(Options::from_settings(&node.settings), node.metrics.clone());
    let app = crate::http::routes(node.clone()).map_to_response();
    let signal = async move {
        shutdown.await;
        node.drain().await;
    };
    crate::server::serve(listener, app, gate, signal).await
}
