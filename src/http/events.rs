//! `GET /api/v1/chat/events`: the HTTP transport's event stream, opened
//! with `Authorization: Bearer` (fetch streaming) or `?ticket=` (for
//! `EventSource`, which cannot send headers).

use std::sync::Arc;

use poem::http::header;
use poem::{handler, web::Data, Body, Request, Response};
use serde::Deserialize;

use super::api::error_body;
use crate::auth::Identity;
use crate::error::ChatError;
use crate::server::Admission;
use crate::transport::{sse, Context};

#[derive(Deserialize)]
struct Params {
    ticket: Option<String>,
}

#[handler]
pub async fn stream(req: &Request, Data(ctx): Data<&Arc<Context>>) -> Response {
    let identity = match authenticate(req, ctx).await {
        Ok(identity) => identity,
        Err(e) => return error_body(e),
    };
    let body = match sse::open(ctx, identity).await {
        Ok(body) => body,
        Err(e) => return error_body(e),
    };
    // A stream is a connection's life, not a request: it no longer counts
    // against the limits on connections that have not authenticated.
    if let Some(admission) = req.extensions().get::<Arc<Admission>>() {
        admission.authenticated();
    }
    Response::builder()
        .content_type("text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // nginx and other proxies that honour it: pass each event on at once.
        .header("X-Accel-Buffering", "no")
        .body(Body::from_bytes_stream(body))
}

/// The bearer token if one is sent, else the ticket.
async fn authenticate(req: &Request, ctx: &Context) -> Result<Identity, ChatError> {
    if let Some(authorization) = req.headers().get(header::AUTHORIZATION) {
        return ctx.auth.verify_header(Some(authorization.as_bytes()));
    }
    let params: Params = req
        .params()
        .map_err(|_| ChatError::InvalidFrame("bad query string".into()))?;
    match params.ticket {
        Some(ticket) => sse::redeem_ticket(ctx, &ticket).await,
        None => Err(ChatError::AuthRequired(
            "send Authorization: Bearer <JWT>, or ?ticket= from POST /api/v1/chat/tickets".into(),
        )),
    }
}
