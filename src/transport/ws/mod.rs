//! The WebSocket transport: the HTTP upgrade, RFC 6455 framing,
//! first-frame authentication, the reader that feeds the session, and the
//! writer that batches queued frames into one write.

mod frame;
mod session;
mod socket;
mod writer;

use std::sync::Arc;

use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{handler, web::Data, Request, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::Context;
use crate::server::{Admission, PendingUpgrade};

/// `GET /api/v1/chat/ws`: upgrades to a WebSocket and runs its session.
#[handler]
pub async fn upgrade(req: &Request, Data(ctx): Data<&Arc<Context>>) -> Response {
    if ctx.is_draining() {
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
    let Some(on_upgrade) = PendingUpgrade::take(req) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("connection cannot be upgraded");
    };
    // Every connection the node serves was admitted at accept.
    let Some(admission) = req.extensions().get::<Arc<Admission>>().cloned() else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body("connection was not admitted");
    };
    let ctx = ctx.clone();
    ctx.sessions.clone().spawn(async move {
        let Ok(handover) = on_upgrade.await else {
            return;
        };
        let (read, write) = handover.stream.into_split();
        let read = socket::ReadSide::new(&handover.read_buf, read);
        let stream = frame::Reader::new(read, ctx.settings.limits.max_frame_bytes);
        let sink = Arc::new(socket::WriteSide::new(write, handover.write_timeout));
        session::start(ctx, admission, sink, stream).await;
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

/// The frame decoder, for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::frame::{Decoder, Incoming, ReadError};
}
