//! Operational endpoints: liveness, readiness, Prometheus metrics, and the
//! landing page.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Html};
use poem::{handler, IntoResponse, Response};

use crate::node::Node;

/// `GET /health`: the process is up.
#[handler]
pub fn health() -> &'static str {
    "ok"
}

/// `GET /ready`: storage and bus reachable, not draining.
#[handler]
pub async fn ready(Data(node): Data<&Arc<Node>>) -> Response {
    match node.is_ready().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
#[handler]
pub fn metrics(Data(node): Data<&Arc<Node>>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(node.metrics.render())
}

/// `GET /`: what this node is and where to go from here.
#[handler]
pub fn index(Data(node): Data<&Arc<Node>>) -> Html<String> {
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>confab</title>\
         <h1>confab node {}</h1>\
         <ul><li>WebSocket: <code>/api/v1/chat/ws</code></li>\
         <li><a href=/api/docs>REST API (OpenAPI)</a></li>\
         <li><a href=/health>/health</a>, <a href=/ready>/ready</a>, <a href=/metrics>/metrics</a></li></ul>",
        node.node_id
    ))
}
