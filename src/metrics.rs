//! The node's Prometheus metrics, in a registry of its own, rendered at
//! `/metrics`. Labels are bounded sets (frame types, close codes, store
//! operations, error kinds): never user or conversation ids.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::CloseReason;

/// Counters, gauges and histograms of one node.
pub struct Metrics {
    registry: Registry,
    pub sockets_open: IntGauge,
    pub sockets_opened: IntCounter,
    /// Authenticated connections open, by transport (`websocket`, `http`).
    pub connections_by_transport: IntGaugeVec,
    /// (conversation, user) presence entries this node holds.
    pub presence_entries: IntGauge,
    /// `presence_changed` announcements this node made, by change.
    pub presence_announcements: IntCounterVec,
    sockets_closed: IntCounterVec,
    slow_consumer_closes: IntCounter,
    pub frames_in: IntCounterVec,
    pub events_delivered: IntCounter,
    pub delivery_latency: Histogram,
    pub messages_stored: IntCounter,
    pub changes_stored: IntCounter,
    pub store_latency: HistogramVec,
    /// Message searches (`GET /api/v1/chat/search`), from the query's
    /// check to its results.
    pub search_seconds: Histogram,
    pub bus_resyncs: IntCounter,
    pub bus_publish_errors: IntCounter,
    pub gap_fills: IntCounter,
    pub recovery_retries: IntCounter,
    pub rate_limited: IntCounter,
    pub streams_active: IntGauge,
    pub assistant_tokens: IntCounter,
    pub assistant_errors: IntCounterVec,
    /// Tokens the providers counted for assistant answers, by assistant
    /// (configured ids) and `kind`: `prompt` or `completion`.
    pub assistant_usage_tokens: IntCounterVec,
    /// Assistant answers ended, by assistant and `finish`: one of
    /// [`STREAM_FINISHES`] (a provider's own finish reasons are mapped onto
    /// them, so the label stays a bounded set).
    pub assistant_streams: IntCounterVec,
    /// Requests waiting in each assistant's queue (the cluster's, as this
    /// node last read it).
    pub assistant_queue_waiting: IntGaugeVec,
    /// Requests running for each assistant, cluster-wide, likewise.
    pub assistant_queue_running: IntGaugeVec,
    /// How long requests waited before they ran, by assistant.
    pub assistant_queue_wait: HistogramVec,
    /// Bytes queued for all sockets (the node's outbound budget in use).
    pub outbound_bytes: IntGauge,
    /// TCP connections held, HTTP and WebSocket alike.
    pub connections_open: IntGauge,
    /// Connections not yet authenticated.
    pub connections_pending: IntGauge,
    /// Connections closed at accept, by the limit they hit.
    pub connections_refused: IntCounterVec,
    /// `accept` failures (most often: out of file descriptors).
    pub accept_errors: IntCounter,
}

/// The `finish` label values of `assistant_streams_total`, the only ones.
pub const STREAM_FINISHES: &[&str] = &["stop", "length", "cancelled", "error", "other"];

/// The `kind` label values of `assistant_usage_tokens_total`.
pub const TOKEN_KINDS: &[&str] = &["prompt", "completion"];

/// Latency buckets from 0.25 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Metrics {
    pub fn new(node_id: &str) -> Self {
        let registry = Registry::new_custom(
            Some("confab".into()),
            Some([("node".to_string(), node_id.to_string())].into()),
        )
        // Prefix and label names are valid constants.
        .expect("valid registry");
        // Every name and label below is a valid constant and registered
        // once, so creating and registering them cannot fail.
        fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        }
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            register(&registry, c)
        };
        let counter_vec2 = |name: &str, help: &str, labels: [&str; 2]| {
            let c = IntCounterVec::new(Opts::new(name, help), &labels).expect("valid metric");
            register(&registry, c)
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let histogram_opts =
            |name: &str, help: &str| HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.into());
        let delivery_latency = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "delivery_latency_seconds",
                "From an event's publish on any node to its delivery to this node's sockets",
            ))
            .expect("valid metric"),
        );
        let search_seconds = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "search_seconds",
                "Message searches, from the query's check to its results",
            ))
            .expect("valid metric"),
        );
        let store_latency = register(
            &registry,
            HistogramVec::new(
                histogram_opts("store_latency_seconds", "Store calls, by operation"),
                &["op"],
            )
            .expect("valid metric"),
        );
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            register(&registry, g)
        };
        let assistant_queue_wait = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "assistant_queue_wait_seconds",
                    "How long assistant requests waited in their queue before they ran, by assistant",
                )
                .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
                &["assistant"],
            )
            .expect("valid metric"),
        );
        Self {
            assistant_queue_waiting: gauge_vec(
                "assistant_queue_waiting",
                "Requests waiting in each assistant's queue, cluster-wide, as this node last read it",
                "assistant",
            ),
            assistant_queue_running: gauge_vec(
                "assistant_queue_running",
                "Requests running for each assistant, cluster-wide, as this node last read it",
                "assistant",
            ),
            assistant_queue_wait,
            sockets_open: gauge("sockets_open", "WebSockets open and authenticated"),
            sockets_opened: counter("sockets_opened_total", "WebSockets authenticated"),
            connections_by_transport: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "connections_by_transport",
                        "Authenticated connections open, by transport",
                    ),
                    &["transport"],
                )
                .expect("valid metric"),
            ),
            presence_entries: gauge(
                "presence_entries",
                "Users this node holds present, summed over conversations",
            ),
            presence_announcements: counter_vec(
                "presence_announcements_total",
                "presence_changed announcements made by this node, by change",
                "change",
            ),
            sockets_closed: counter_vec(
                "sockets_closed_total",
                "WebSockets closed, by close code",
                "code",
            ),
            slow_consumer_closes: counter(
                "slow_consumer_closes_total",
                "Sockets closed because their outbound queue overflowed (4009)",
            ),
            frames_in: counter_vec("frames_in_total", "Client frames received, by type", "type"),
            events_delivered: counter("events_delivered_total", "Frames queued to local sockets"),
            delivery_latency,
            search_seconds,
            messages_stored: counter("messages_stored_total", "Messages stored by this node"),
            changes_stored: counter(
                "message_changes_stored_total",
                "Edits, deletions and reactions stored by this node",
            ),
            store_latency,
            bus_resyncs: counter(
                "bus_resyncs_total",
                "Catch-ups from the store after the bus reconnected or lagged",
            ),
            bus_publish_errors: counter(
                "bus_publish_errors_total",
                "Events the bus failed to publish (nodes catch up from the store)",
            ),
            gap_fills: counter(
                "gap_fills_total",
                "Times a seq gap was filled from the store",
            ),
            recovery_retries: counter(
                "recovery_retries_total",
                "Store reads to catch a room up or replay a join that failed and are retried",
            ),
            rate_limited: counter("rate_limited_total", "Requests refused as RATE_LIMITED"),
            streams_active: gauge("streams_active", "Assistant streams running on this node"),
            assistant_tokens: counter(
                "assistant_tokens_total",
                "Assistant deltas received from providers",
            ),
            assistant_errors: counter_vec(
                "assistant_errors_total",
                "Assistant upstream errors, by kind",
                "kind",
            ),
            assistant_usage_tokens: counter_vec2(
                "assistant_usage_tokens_total",
                "Tokens providers counted for assistant answers, by assistant and kind (prompt, completion)",
                ["assistant", "kind"],
            ),
            assistant_streams: counter_vec2(
                "assistant_streams_total",
                "Assistant answers ended, by assistant and finish (stop, length, cancelled, error, other)",
                ["assistant", "finish"],
            ),
            outbound_bytes: gauge(
                "outbound_bytes",
                "Bytes queued for this node's sockets, against max_outbound_bytes_per_node",
            ),
            connections_open: gauge(
                "connections_open",
                "TCP connections held (HTTP and WebSocket)",
            ),
            connections_pending: gauge(
                "connections_pending",
                "Connections not yet authenticated (plain HTTP ones for their whole life)",
            ),
            connections_refused: counter_vec(
                "connections_refused_total",
                "Connections closed at accept, by the limit they hit",
                "limit",
            ),
            accept_errors: counter(
                "accept_errors_total",
                "accept() failures, e.g. out of file descriptors (the node backs off)",
            ),
            registry,
        }
    }

    /// Counts a socket's close under its close code.
    pub fn socket_closed(&self, reason: CloseReason) {
        self.sockets_closed
            .with_label_values(&[reason.label()])
            .inc();
        if reason == CloseReason::SlowConsumer {
            self.slow_consumer_closes.inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
