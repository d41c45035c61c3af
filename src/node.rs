//! One confab node: its parts wired together, and its life (start, serve,
//! drain, stop). Wiring only: nothing imports this module but `main`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use poem::EndpointExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::assistant::queue::{MemoryQueueStore, QueueStore, RedisQueueStore};
use crate::assistant::transcript::{MemoryTranscripts, RedisTranscripts, Transcripts};
use crate::assistant::{redis_pool, Streams, StreamsParts};
use crate::auth::{AuthConfigError, Authenticator};
use crate::bus::{Bus, LocalBus, RedisBus, Topic};
use crate::chat::{
    Assistants, Chat, Events, PresenceTracker, StoredHistory, UserRateLimiter, Users,
};
use crate::config::Settings;
use crate::http::{Readiness, State};
use crate::hub::{Attendance, Hub, HubSettings, NodeBudget, StreamEvents};
use crate::metrics::Metrics;
use crate::model::CloseReason;
use crate::presence::{MemoryPresence, Presence, RedisPresence, Timing};
use crate::server::{Gate, Options};
use crate::store::Store;
use crate::tasks::Tasks;

/// How long a drain waits for closed sockets to finish (their close
/// handshake), and a stop for background tasks to end.
const GRACE: Duration = Duration::from_secs(2);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("bus: {0}")]
    Bus(String),
    #[error("presence: {0}")]
    Presence(#[from] crate::presence::PresenceError),
    #[error("configuration: {0}")]
    Config(String),
}

/// Everything one node holds.
pub struct Node {
    pub settings: Settings,
    pub node_id: String,
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub chat: Arc<Chat>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Background tasks (bus receivers, message writers, recoveries,
    /// streams), stopped after the drain.
    pub tasks: Tasks,
    /// The sockets' context (their tasks among it).
    sockets: Arc<crate::transport::Context>,
    draining: Arc<AtomicBool>,
    /// Held so the hub's weak handle on the assistants stays valid.
    streams: Arc<Streams>,
    /// Held so the hub's weak handle on presence stays valid.
    _presence: Arc<PresenceTracker>,
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
        let tasks = Tasks::new();
        let metrics = Arc::new(Metrics::new(&node_id));
        let store = Store::connect(
            &settings.database.url,
            settings.database.max_connections,
            &tasks,
        )
        .await?
        .with_latency(metrics.store_latency.clone());
        store.migrate().await?;
        let bus: Arc<dyn Bus> = if settings.bus.redis_url.is_empty() {
            Arc::new(LocalBus::new())
        } else {
            RedisBus::connect(&settings.bus, &node_id, &tasks)
                .await
                .map_err(|e| StartError::Bus(e.to_string()))?
        };
        let timing = Timing {
            ttl: settings.presence.ttl().as_millis() as u64,
            grace: settings.presence.grace().as_millis() as u64,
        };
        let presence: Arc<dyn Presence> = if settings.bus.redis_url.is_empty() {
            Arc::new(MemoryPresence::new(&node_id, timing))
        } else {
            RedisPresence::connect(&settings.bus, &node_id, timing, &tasks).await?
        };
        let limits = &settings.limits;
        let hub = Hub::new(
            Arc::new(StoredHistory(store.clone())),
            bus.clone(),
            metrics.clone(),
            HubSettings {
                gap_wait: Duration::from_millis(settings.bus.gap_fill_ms),
                outbound_queue: limits.outbound_queue,
                outbound_bytes: limits.max_outbound_bytes_per_socket,
                outbound_budget: NodeBudget::new(
                    metrics.outbound_bytes.clone(),
                    limits.max_outbound_bytes_per_node,
                ),
                recent_messages: limits
                    .recent_messages_per_room
                    .min(limits.outbound_queue / 2),
                max_connections_per_user: limits.max_connections_per_user,
            },
            tasks.clone(),
        );
        let events = Arc::new(Events::new(
            store.clone(),
            bus.clone(),
            hub.clone(),
            metrics.clone(),
        ));
        let (queue, transcripts): (Arc<dyn QueueStore>, Arc<dyn Transcripts>) =
            if settings.bus.redis_url.is_empty() {
                (
                    Arc::new(MemoryQueueStore::default()),
                    Arc::new(MemoryTranscripts::default()),
                )
            } else {
                let pool = redis_pool(&settings.bus).await.map_err(StartError::Bus)?;
                (
                    Arc::new(RedisQueueStore::new(pool.clone(), &settings.bus.prefix)),
                    Arc::new(RedisTranscripts::new(pool, &settings.bus.prefix)),
                )
            };
        let streams = Streams::new(
            &settings.assistants,
            settings.streaming.clone(),
            StreamsParts {
                store: store.clone(),
                events: events.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                tasks: tasks.clone(),
                node_id: node_id.clone(),
                queue,
                transcripts,
            },
        )
        .map_err(StartError::Config)?;
        let stream_events: Arc<dyn StreamEvents> = streams.clone();
        hub.set_stream_events(Arc::downgrade(&stream_events));
        bus.subscribe(&Topic::Streams)
            .await
            .map_err(|e| StartError::Bus(e.to_string()))?;
        let tracker = PresenceTracker::start(
            presence.clone(),
            events.clone(),
            &hub,
            store.clone(),
            metrics.clone(),
            settings.presence.clone(),
            &tasks,
        );
        let attendance: Arc<dyn Attendance> = tracker.clone();
        hub.set_attendance(Arc::downgrade(&attendance));
        let assistants: Arc<dyn Assistants> = streams.clone();
        let chat = Arc::new(Chat::new(
            store.clone(),
            events,
            hub.clone(),
            metrics.clone(),
            settings.limits.clone(),
            assistants,
            tracker.clone(),
        ));
        let users = Users::start(store.clone(), &tasks);
        let draining = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(crate::transport::Context {
            chat: chat.clone(),
            users,
            hub: hub.clone(),
            bus: bus.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            presence,
            settings: settings.clone(),
            node_id: node_id.clone(),
            draining: draining.clone(),
            sessions: TaskTracker::new(),
            // A POST carries at least one frame, and a socket may send its
            // frames at the frame rate and its messages at the send rate.
            posts: UserRateLimiter::new(
                limits.frame_rate_per_sec + limits.send_rate_per_sec,
                limits.frame_burst + limits.send_burst,
            ),
        });
        Ok(Arc::new(Node {
            settings,
            node_id,
            store,
            bus,
            hub,
            chat,
            auth,
            metrics,
            tasks,
            sockets,
            draining,
            streams,
            _presence: tracker,
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops taking sockets and closes the open ones with 1012, spread over
    /// `server.drain_secs` so their reconnects do not land all at once;
    /// then waits (at most `GRACE`) for their sessions to end.
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
        // Each session sends its close frame, leaves the hub and ends.
        let sessions = &self.sockets.sessions;
        sessions.close();
        if tokio::time::timeout(GRACE, sessions.wait()).await.is_err() {
            tracing::info!(left = sessions.len(), "some sockets were still closing");
        }
    }

    /// Stops every background task (message writers commit what is
    /// queued first), then closes the bus.
    pub async fn stop(&self) {
        self.streams.leave().await;
        if !self.tasks.stop(GRACE).await {
            tracing::warn!("some background tasks did not stop in time");
        }
        self.bus.close().await;
    }
}

#[async_trait]
impl Readiness for Node {
    /// Storage answers, the bus delivers, not draining.
    async fn check(&self) -> Result<(), String> {
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
}

/// Serves HTTP and WebSockets on `listener` until `shutdown` completes,
/// then drains and stops the node.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let gate = Gate::new(Options::from_settings(&node.settings), node.metrics.clone());
    let state = Arc::new(State {
        chat: node.chat.clone(),
        users: node.sockets.users.clone(),
        auth: node.auth.clone(),
        metrics: node.metrics.clone(),
        settings: node.settings.clone(),
        readiness: node.clone(),
        sockets: node.sockets.clone(),
    });
    let app = crate::http::routes(state).map_to_response();
    let draining = node.clone();
    let signal = async move {
        shutdown.await;
        draining.drain().await;
    };
    crate::server::serve(listener, app, gate, signal).await;
    node.stop().await;
}
