//! Operational endpoints: liveness, readiness, Prometheus metrics.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{handler, IntoResponse, Response};

use super::State;

/// `GET /health`: the process is up.
#[handler]
pub fn health() -> &'static str {
    "ok"
}

/// `GET /ready`: storage and bus reachable, not draining.
#[handler]
pub async fn ready(Data(state): Data<&Arc<State>>) -> Response {
    match state.readiness.check().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
#[handler]
pub fn metrics(Data(state): Data<&Arc<State>>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
