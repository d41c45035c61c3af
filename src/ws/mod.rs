//! One socket's life: the HTTP upgrade, first-frame authentication, the
//! reader that turns frames into chat calls, and the writer that batches
//! queued frames into one flush.

mod session;
mod writer;

use std::sync::Arc;

use futures_util::StreamExt;
use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{handler, web::Data, Request, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::node::Node;

/// `GET /api/v1/chat/ws`: upgrades to a WebSocket and runs its session.
#[handler]
pub async fn upgrade(req: &Request, Data(node): Data<&Arc<Node>>) -> Response {
    if node.is_draining() {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body("node is draining; reconnect to another node");
    }
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let valid = req.method() == Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && headers.get(header::SEC_WEBSOCKET_VERSION) == Some(&HeaderValue::from_static("13"));
    let (Some(key), true) = (key, valid) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("expected a WebSocket upgrade (version 13)");
    };
    let Ok(on_upgrade) = req.take_upgrade() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("connection cannot be upgraded");
    };
    let max = node.settings.limits.max_frame_bytes;
    // A small read buffer keeps idle sockets cheap (tungstenite allocates it
    // eagerly and keeps it; its default is 128 KiB). Client frames are small;
    // a larger one gets room reserved for its whole length. Frames queued together are encoded
    // into the write buffer and go out in few writes: the writer feeds them
    // all, then flushes once.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let Some(slot) = node.try_open_socket() else {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body("node is full; connect to another node");
    };
    let node = node.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
        let (sink, stream) = ws.split();
        // A task of its own: this one's future is sized for the upgrade
        // steps, and would be held for the socket's whole life.
        tokio::spawn(async move {
            // The slot is held for the socket's whole life.
            let _slot = slot;
            session::run(node, sink, stream).await;
        });
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .finish()
}
