//! Logs (human or JSON, via tracing) and the node's Prometheus metrics.
//! Metric labels are bounded sets (frame types, close codes): never user or
//! conversation ids.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::TelemetrySettings;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the level.
pub fn init_logging(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_level.clone()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if settings.log_format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Counters and gauges of one node, in a registry of its own.
pub struct Metrics {
    registry: Registry,
    pub sockets_open: IntGauge,
    pub sockets_closed: IntCounterVec,
    pub frames_in: IntCounterVec,
    pub events_delivered: IntCounter,
    pub messages_stored: IntCounter,
    pub gap_fills: IntCounter,
    pub rate_limited: IntCounter,
    pub streams_active: IntGauge,
    pub assistant_tokens: IntCounter,
    pub assistant_errors: IntCounterVec,
}

impl Metrics {
    pub fn new(node_id: &str) -> Self {
        let registry = Registry::new_custom(
            Some("confab".into()),
            Some([("node".to_string(), node_id.to_string())].into()),
        )
        // Prefix and label names above are valid constants.
        .expect("valid registry");
        let sockets_open =
            IntGauge::new("sockets_open", "WebSockets open and authenticated").unwrap();
        let sockets_closed = IntCounterVec::new(
            Opts::new("sockets_closed_total", "WebSockets closed, by close code"),
            &["code"],
        )
        .unwrap();
        let frames_in = IntCounterVec::new(
            Opts::new("frames_in_total", "Client frames received, by type"),
            &["type"],
        )
        .unwrap();
        let events_delivered =
            IntCounter::new("events_delivered_total", "Frames queued to local sockets").unwrap();
        let messages_stored =
            IntCounter::new("messages_stored_total", "Messages stored by this node").unwrap();
        let gap_fills = IntCounter::new(
            "gap_fills_total",
            "Times a seq gap was filled from the store",
        )
        .unwrap();
        let rate_limited =
            IntCounter::new("rate_limited_total", "Requests refused as RATE_LIMITED").unwrap();
        let streams_active =
            IntGauge::new("streams_active", "Assistant streams running on this node").unwrap();
        let assistant_tokens = IntCounter::new(
            "assistant_tokens_total",
            "Assistant deltas received from providers",
        )
        .unwrap();
        let assistant_errors = IntCounterVec::new(
            Opts::new(
                "assistant_errors_total",
                "Assistant upstream errors, by kind",
            ),
            &["kind"],
        )
        .unwrap();
        for c in [
            Box::new(sockets_open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sockets_closed.clone()),
            Box::new(frames_in.clone()),
            Box::new(events_delivered.clone()),
            Box::new(messages_stored.clone()),
            Box::new(gap_fills.clone()),
            Box::new(rate_limited.clone()),
            Box::new(streams_active.clone()),
            Box::new(assistant_tokens.clone()),
            Box::new(assistant_errors.clone()),
        ] {
            // Each collector has a distinct name, registered once.
            registry.register(c).expect("distinct metric names");
        }
        Self {
            registry,
            sockets_open,
            sockets_closed,
            frames_in,
            events_delivered,
            messages_stored,
            gap_fills,
            rate_limited,
            streams_active,
            assistant_tokens,
            assistant_errors,
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
