//! Logs (human or JSON, via tracing); traces (OpenTelemetry over OTLP/HTTP)
//! when `telemetry.otlp_endpoint` is set.
//!
//! Traces are exported by a batch processor on its own thread: spans wait in
//! a bounded queue (dropped when it is full) and an export that fails or
//! times out only loses spans, so a collector that is down never slows a
//! request. The W3C `traceparent` of the span that publishes a bus event
//! travels in the event (see [`traceparent`] and [`set_remote_parent`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// Longest one export may take, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the final flush may hold up exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// True once spans are exported: only then is trace context propagated.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Flushes and stops trace export; returned by [`init`].
#[must_use = "call shutdown() when the node has stopped, or buffered spans are lost"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is still buffered (bounded by a timeout) and stops.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK blocks while it flushes; the export itself runs on the runtime.
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "flushing traces at exit failed");
        }
    }
}

/// Installs the global tracing subscriber: logs filtered by
/// `telemetry.log_level` (`RUST_LOG` overrides it), and, when
/// `otlp_endpoint` is set, every confab span exported to
/// `{otlp_endpoint}/v1/traces` as service `confab`, instance `node_id`.
/// Must run inside a tokio runtime. A second call changes nothing.
pub fn init(settings: &TelemetrySettings, node_id: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_level.clone()));
    let logs = if settings.log_format == LogFormat::Json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let endpoint = settings.otlp_endpoint.trim();
    let provider = if endpoint.is_empty() {
        None
    } else {
        match tracer_provider(endpoint, node_id) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("confab: traces are off: {e}");
                None
            }
        }
    };
    // Spans go to the collector whatever the log level: every confab span
    // (they are all at debug or above), nothing from other crates.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("confab"))
            .with_threads(false)
            .with_filter(Targets::new().with_target("confab", LevelFilter::DEBUG))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
    }
    TelemetryGuard {
        provider: provider.filter(|_| installed),
    }
}

fn tracer_provider(endpoint: &str, node_id: &str) -> Result<SdkTracerProvider, String> {
    let client = ExportClient::new()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    // Queue size, batch size and delay: the SDK defaults (2048 spans, 512
    // per export, every 5 s), overridable with the standard OTEL_BSP_* variables.
    let processor = BatchSpanProcessor::builder(exporter).build();
    let resource = Resource::builder()
        .with_service_name("confab")
        .with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: the node's reqwest client, run on the node's
/// tokio runtime (the batch processor calls it from its own thread).
#[derive(Debug)]
struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Whether the last export failed, so a collector that is down is
    /// reported once, not on every batch.
    failing: AtomicBool,
}

impl ExportClient {
    fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            runtime,
            failing: AtomicBool::new(false),
        })
    }

    fn report(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "trace export failing; spans are dropped until the collector answers");
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self
            .runtime
            .spawn(async move {
                let response = client.execute(request).await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await;
        let (status, headers, body) = match sent {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                self.report(Err(e.to_string()));
                return Err(e.into());
            }
            Err(e) => {
                self.report(Err(e.to_string()));
                return Err(e.into());
            }
        };
        self.report(if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        });
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// The W3C `traceparent` of the current span, to put in a bus event. None
/// when traces are off or there is no sampled span.
pub fn traceparent() -> Option<String> {
    if !TRACING.load(Ordering::Relaxed) {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Traceparent(None);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.0
}

/// Makes `span` a child of the remote span named by `traceparent` (from a
/// bus event). Does nothing when traces are off or the value is invalid.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if !TRACING.load(Ordering::Relaxed) {
        return;
    }
    let carrier = Traceparent(Some(traceparent.to_owned()));
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Starts `span` as the root of a trace of its own (whatever its tracing
/// parent, which still gives logs their context), linked to `link`, with
/// `attributes` (only computed when traces are on).
pub fn set_root_linked(
    span: &tracing::Span,
    link: &SpanContext,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) {
    if !TRACING.load(Ordering::Relaxed) {
        return;
    }
    let _ = span.set_parent(opentelemetry::Context::new());
    span.add_link(link.clone());
    for kv in attributes() {
        span.set_attribute(kv.key, kv.value);
    }
}

/// The OpenTelemetry identity of `span` (invalid when traces are off), for links.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    if !TRACING.load(Ordering::Relaxed) {
        return SpanContext::empty_context();
    }
    span.context().span().span_context().clone()
}

/// A carrier holding one `traceparent` value.
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent")
            .then_some(self.0.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;

    #[test]
    fn traceparent_round_trips_through_the_carrier() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = TraceContextPropagator::new().extract(&Traceparent(Some(tp.into())));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut out = Traceparent(None);
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        assert_eq!(out.0.as_deref(), Some(tp));
    }

    #[test]
    fn nothing_is_propagated_while_traces_are_off() {
        assert_eq!(traceparent(), None);
    }
}
