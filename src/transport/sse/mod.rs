//! The HTTP transport, for networks that break WebSockets: an event stream
//! (`text/event-stream`) carries the server frames down, exactly as a socket
//! would get them, and client frames come up in POSTs to
//! `/connections/{id}/frames`, from any node: one that does not hold the
//! connection hands them on through the bus, on the user's topic (the
//! holding node is subscribed to it while it holds any connection of the
//! user). A connection's frames then go through the same session as a
//! socket's: limits, ordering, renewal and drain hold alike.
//!
//! `EventSource` cannot send headers, so it authenticates with a ticket:
//! bought with the bearer token, single use, valid `TICKET_TTL`.

mod stream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use super::session::{Frames, Input, Session};
use super::Context;
use crate::auth::Identity;
use crate::bus::{Event, EventKind, Topic};
use crate::error::ChatError;
use crate::hub::{Conn, Inbound, PostError, Posted};
use crate::model::{CloseReason, ConnectionId, UserId};

/// How long a ticket may wait to be redeemed.
const TICKET_TTL: Duration = Duration::from_secs(30);
/// POSTs queued for one connection's session; past it the client is told
/// to slow down (429). With each POST at most `max_frame_bytes`, this bounds
/// what a connection's queue holds in bytes.
const POSTS_QUEUED: usize = 8;
/// Most frames in one POST.
const MAX_FRAMES_PER_POST: usize = 64;
/// A comment line goes down an idle stream this often, so proxies keep it.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The connection directory's entry of a stream lives this long unless
/// renewed (every keepalive).
const DIRECTORY_TTL: Duration = Duration::from_secs(45);

/// A ticket for `GET /events?ticket=`.
#[derive(Debug, Serialize)]
pub struct Ticket {
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// What a ticket stands for: the identity that bought it.
#[derive(Serialize, Deserialize)]
struct Grant {
    user_id: UserId,
    name: Option<String>,
    expires_at: DateTime<Utc>,
}

/// Issues a ticket for `identity`. Each one draws on the user's send
/// rate, since each costs the cluster memory for `TICKET_TTL`.
pub async fn issue_ticket(ctx: &Context, identity: &Identity) -> Result<Ticket, ChatError> {
    ctx.chat.take_send_token(&identity.user_id)?;
    let ticket = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let grant = Grant {
        user_id: identity.user_id.clone(),
        name: identity.name.clone(),
        expires_at: identity.expires_at,
    };
    // A grant always serializes: plain strings and a timestamp.
    let grant = serde_json::to_string(&grant).expect("a grant serializes");
    ctx.presence.put_ticket(&ticket, &grant, TICKET_TTL).await?;
    Ok(Ticket {
        ticket,
        expires_at: (Utc::now() + TICKET_TTL).min(identity.expires_at),
    })
}

/// The identity a ticket was bought with; a ticket works once.
pub async fn redeem_ticket(ctx: &Context, ticket: &str) -> Result<Identity, ChatError> {
    let unknown = || ChatError::AuthFailed("unknown, used or expired ticket".into());
    if ticket.len() > 128 {
        return Err(unknown());
    }
    let grant = ctx
        .presence
        .take_ticket(ticket)
        .await?
        .ok_or_else(unknown)?;
    let grant: Grant = serde_json::from_str(&grant).map_err(|_| unknown())?;
    if grant.expires_at <= Utc::now() {
        return Err(ChatError::TokenExpired);
    }
    Ok(Identity {
        user_id: grant.user_id,
        name: grant.name,
        expires_at: grant.expires_at,
    })
}

/// Opens an event stream for `identity`: registers the connection, starts
/// its session, and returns the stream's body (its first event is
/// `auth_success`).
pub async fn open(
    ctx: &Arc<Context>,
    identity: Identity,
) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, ChatError> {
    if ctx.is_draining() {
        return Err(ChatError::Unavailable(
            "node is draining; reconnect to another node".into(),
        ));
    }
    let (posts_tx, posts_rx) = mpsc::channel(POSTS_QUEUED);
    let user = identity.user_id.clone();
    let (conn, outbox) = ctx
        .hub
        .register(user.clone(), Inbound::Posts(posts_tx))
        .await?;
    // Without the entry, POSTs to other nodes are 404 until the keepalive
    // renews it; POSTs to this node work regardless (and while Redis is
    // away, the bus could not carry the others anyway).
    if let Err(e) = ctx
        .presence
        .hold_connection(conn.id, &user, DIRECTORY_TTL)
        .await
    {
        tracing::warn!(error = %e, "connection directory unavailable; POSTs must reach this node");
    }
    let span = tracing::info_span!(
        parent: None,
        "sse.stream",
        node = %ctx.node_id,
        connection_id = %conn.id,
        user_id = %user,
    );
    // The client's frames are its signs of life (it POSTs a ping when it
    // has nothing else to say): a client that vanished without closing its
    // connection is found as on a socket, not when TCP gives up.
    let idle_timeout = Duration::from_secs_f64(ctx.settings.server.idle_timeout_secs.max(1.0));
    let session = Session::open(
        ctx.clone(),
        conn.clone(),
        &identity,
        Some(idle_timeout),
        &span,
    )
    .await;
    let frames = PostedFrames {
        conn: conn.clone(),
        posts: posts_rx,
        queued: Posted::new(),
    };
    ctx.sessions.spawn(live(session, frames).instrument(span));
    Ok(stream::body(ctx.clone(), conn, outbox, KEEPALIVE))
}

/// Handles the connection's frames until it closes, then leaves the hub
/// and the directory.
async fn live(mut session: Session, mut frames: PostedFrames) {
    session.read(&mut frames).await;
    Box::pin(session.finish()).await;
    let conn = &session.conn;
    let reason = conn.close_reason().unwrap_or(CloseReason::Normal);
    session.ctx.metrics.socket_closed(reason);
    if let Err(e) = session.ctx.presence.release_connection(conn.id).await {
        tracing::debug!(error = %e, "releasing a connection's directory entry failed");
    }
}

/// The frames POSTed to a connection, one at a time, in order.
struct PostedFrames {
    conn: Arc<Conn>,
    posts: mpsc::Receiver<Posted>,
    /// The rest of the POST being handled.
    queued: Posted,
}

impl Frames for PostedFrames {
    async fn next(&mut self) -> Input {
        if self.conn.take_posts_dropped() {
            return Input::Dropped;
        }
        if self.queued.is_empty() {
            match self.posts.recv().await {
                Some(post) => self.queued = post,
                None => return Input::Gone(CloseReason::Normal),
            }
            self.queued.reverse();
        }
        match self.queued.pop() {
            Some(frame) => Input::Frame(frame),
            None => Input::Alive,
        }
    }
}

/// Takes the frames of a POST for `connection` (one client frame as a JSON
/// object, or an array of them) on behalf of `user`, and hands them to the
/// connection's session, on this node or through the bus.
pub async fn post(
    ctx: &Context,
    user: &UserId,
    connection: ConnectionId,
    body: serde_json::Value,
) -> Result<(), ChatError> {
    let frames = match body {
        serde_json::Value::Array(frames) => frames,
        frame @ serde_json::Value::Object(_) => vec![frame],
        _ => {
            return Err(ChatError::InvalidFrame(
                "the body must be a frame object or an array of them".into(),
            ))
        }
    };
    ctx.posts.check(user).map_err(|retry_after_ms| {
        ctx.metrics.rate_limited.inc();
        ChatError::RateLimited { retry_after_ms }
    })?;
    if frames.is_empty() {
        return Ok(());
    }
    if frames.len() > MAX_FRAMES_PER_POST {
        return Err(ChatError::InvalidFrame(format!(
            "{} frames in one POST; the limit is {MAX_FRAMES_PER_POST}",
            frames.len()
        )));
    }
    if let Some(conn) = ctx.hub.connection(user, connection) {
        let frames: Posted = frames
            .iter()
            .map(|f| Utf8Bytes::from(f.to_string()))
            .collect();
        return conn.post(frames).map_err(|e| match e {
            PostError::Busy => ChatError::RateLimited {
                retry_after_ms: 100,
            },
            PostError::Gone => ChatError::NotFound("connection"),
        });
    }
    match ctx.presence.connection_user(connection).await? {
        Some(owner) if &owner == user => {}
        Some(_) => {
            return Err(ChatError::Forbidden(
                "only the connection's user may post to it".into(),
            ))
        }
        None => return Err(ChatError::NotFound("connection")),
    }
    // The array's JSON text: the holding node splits it into frames.
    let payload = Bytes::from(serde_json::Value::Array(frames).to_string());
    let event = Event::new(
        Topic::User(user.clone()),
        EventKind::Frames { connection },
        payload,
    );
    ctx.bus.publish(event).await?;
    Ok(())
}
