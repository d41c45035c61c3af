//! Logs (human or JSON, via tracing); traces (OpenTelemetry) join them.

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
