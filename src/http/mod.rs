//! HTTP: the REST API (documented with OpenAPI), health, readiness, metrics,
//! and the routes of both transports (the WebSocket upgrade, the event
//! stream). Requests become chat calls; errors become JSON
//! `{code, message}` with the status `ChatError::status` gives.

mod api;
mod dev;
mod events;
mod ops;
mod web;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use poem::http::{header, StatusCode};
use poem::{get, Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;

use crate::auth::Authenticator;
use crate::chat::{Chat, Users};
use crate::config::Settings;
use crate::metrics::Metrics;

pub use api::ChatApi;

/// What the routes use of their node: the use cases, the users directory,
/// the authenticator, the metrics, readiness, and the sockets' context for
/// the upgrade route.
pub struct State {
    pub chat: Arc<Chat>,
    pub users: Arc<Users>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub readiness: Arc<dyn Readiness>,
    pub sockets: Arc<crate::transport::Context>,
}

/// Whether the node should get traffic (`GET /ready`).
#[async_trait]
pub trait Readiness: Send + Sync {
    /// Ok, or why not.
    async fn check(&self) -> Result<(), String>;
}

/// Every route of a node.
pub fn routes(state: Arc<State>) -> impl poem::Endpoint + 'static {
    let api = OpenApiService::new(ChatApi, "confab", env!("CARGO_PKG_VERSION"))
        .description("REST API of the confab chat hub. WebSocket protocol: GET /api/v1/chat/ws; the same frames over HTTP where WebSockets are blocked: GET /api/v1/chat/events (text/event-stream) with the Transport routes below (see docs/protocol.md).");
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    let max_body = state.settings.limits.max_frame_bytes;
    let body_timeout = state.settings.server.body_timeout();
    let allowed = Arc::new(api::AllowedMethods::of_api());
    let mut route = Route::new();
    if state.settings.auth.dev_tokens {
        route = route.at(
            "/api/v1/dev/token",
            poem::post(dev::token)
                .around(move |ep, req| limit_body(ep, req, max_body, body_timeout)),
        );
    }
    route
        .at("/", get(web::index))
        .at("/app.js", get(web::script))
        .at("/sdk/:file", get(web::sdk))
        .at("/style.css", get(web::style))
        .at("/api/v1/chat/ws", get(crate::transport::ws::upgrade))
        .at("/api/v1/chat/events", get(events::stream))
        .nest_no_strip(
            "/api/v1/chat",
            api.around(move |ep, req| limit_body(ep, req, max_body, body_timeout))
                .catch_all_error(api::error_response)
                .around(move |ep, req| api::with_allow(ep, req, allowed.clone()))
                .into_endpoint(),
        )
        .nest("/api/docs", docs)
        .at("/api/openapi.json", spec)
        .at("/health", get(ops::health))
        .at("/ready", get(ops::ready))
        .at("/metrics", get(ops::metrics))
        .data(state.sockets.clone())
        .data(state)
}

/// Reads the request body up to `max` bytes within `timeout`, before any
/// handler runs: a larger one is refused with 413 (at once when its
/// Content-Length says so), a slower one with 408.
async fn limit_body<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    max: usize,
    timeout: Duration,
) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    match tokio::time::timeout(timeout, req.take_body().into_bytes_limit(max)).await {
        Ok(Ok(bytes)) => {
            req.set_body(bytes);
            Ok(ep.call(req).await?.into_response())
        }
        Ok(Err(_)) => Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(_) => Err(poem::Error::from_status(StatusCode::REQUEST_TIMEOUT)),
    }
}
