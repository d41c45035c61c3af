//! A socket's side of its session: authenticate the first frame, register
//! with the hub, start the writer, then feed the socket's frames to the
//! transport-neutral session; after the close, linger for the client's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

use super::frame::{Incoming, ReadError, Reader};
use super::socket::{ReadSide, WriteSide};
use super::writer;
use crate::auth::Identity;
use crate::error::ChatError;
use crate::hub::Inbound;
use crate::model::CloseReason;
use crate::protocol::{self, ClientFrame, ServerFrame};
use crate::server::Admission;
use crate::transport::session::{Ending, Frames, Input, Session};
use crate::transport::Context;

/// The reading half of a socket, as frames.
pub type Stream = Reader<ReadSide>;

/// How long a closing socket keeps reading for the client's close frame.
const LINGER: Duration = Duration::from_secs(2);

/// Opens a socket's session (authentication, registration, its writer) in
/// a `ws.socket` span, then hands it to a task of its own for the rest of
/// its life. That task holds only the session and its wait for the next
/// frame: the opening steps' state, and the arguments they took, would
/// otherwise stay part of every idle socket's memory.
pub async fn start(
    ctx: Arc<Context>,
    admission: Arc<Admission>,
    sink: writer::Sink,
    mut stream: Stream,
) {
    let span = tracing::info_span!(
        parent: None,
        "ws.socket",
        node = %ctx.node_id,
        connection_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let opened = open(ctx, admission, sink, &mut stream)
        .instrument(span.clone())
        .await;
    if let Some((session, writer)) = opened {
        let sessions = session.ctx.sessions.clone();
        sessions.spawn(live(session, stream, writer).instrument(span));
    }
}

/// Authenticates the socket, registers it with the hub, starts its writer
/// and answers `auth_success`. None if the socket was turned away or left.
async fn open(
    ctx: Arc<Context>,
    admission: Arc<Admission>,
    sink: writer::Sink,
    stream: &mut Stream,
) -> Option<(Session, JoinHandle<CloseReason>)> {
    let identity = match authenticate(&ctx, &sink, stream).await {
        Ok(identity) => identity,
        Err(Unauthenticated::Left) => return None,
        Err(Unauthenticated::Closed(reason)) => {
            ctx.metrics.socket_closed(reason);
            writer::close(&sink, reason).await;
            return None;
        }
        Err(Unauthenticated::Refused(err, reason)) => {
            reject(&ctx, &sink, stream, err, reason).await;
            return None;
        }
    };
    admission.authenticated();
    let (conn, rx) = match ctx
        .hub
        .register(identity.user_id.clone(), Inbound::Socket)
        .await
    {
        Ok(registered) => registered,
        Err(err) => {
            let reason = match err {
                ChatError::Forbidden(_) => CloseReason::Policy,
                _ => CloseReason::Restart,
            };
            reject(&ctx, &sink, stream, err, reason).await;
            return None;
        }
    };
    let span = tracing::Span::current();
    span.record("connection_id", tracing::field::display(conn.id));
    span.record("user_id", tracing::field::display(&identity.user_id));
    let server = &ctx.settings.server;
    let ping_every = Duration::from_secs_f64(server.ping_interval_secs.max(1.0));
    let idle_timeout = Duration::from_secs_f64(server.idle_timeout_secs.max(1.0));
    let writer = ctx
        .sessions
        .spawn(writer::run(sink.clone(), rx, conn.clone(), ping_every));
    let session = Session::open(ctx, conn, &identity, Some(idle_timeout), &span).await;
    // From here on, a frame for a socket with nothing queued goes out at once.
    session.conn.set_immediate(sink);
    Some((session, writer))
}

/// Reads frames until the socket closes, then leaves the hub and waits
/// for the writer's last frames.
///
/// Not an `async fn`: its arguments would be stored twice in the future,
/// once as passed and once as bound.
#[allow(clippy::manual_async_fn)] // see above
fn live(
    mut session: Session,
    stream: Stream,
    writer: JoinHandle<CloseReason>,
) -> impl Future<Output = ()> {
    async move {
        let mut frames = SocketFrames(stream);
        let ending = session.read(&mut frames).await;
        Box::pin(session.finish()).await;
        let reason = writer.await.unwrap_or(CloseReason::Normal);
        session.ctx.metrics.socket_closed(reason);
        if let Ending::NodeClosed(why) = ending {
            Box::pin(linger(&mut frames.0, why)).await;
        }
    }
}

/// A socket's frames, as the session takes them.
struct SocketFrames(Stream);

impl Frames for SocketFrames {
    async fn next(&mut self) -> Input {
        match self.0.next().await {
            Some(Ok(Incoming::Text(text))) => Input::Frame(text),
            Some(Ok(Incoming::Binary)) => Input::NotText,
            Some(Ok(Incoming::Ping(payload))) => Input::Ping(payload),
            Some(Ok(Incoming::Pong)) => Input::Alive,
            Some(Ok(Incoming::Close(code))) => Input::Gone(CloseReason::echoing(code)),
            Some(Err(ReadError::Io(_))) | None => Input::Gone(CloseReason::Normal),
            Some(Err(e)) => Input::Broken(e.close_reason()),
        }
    }
}

/// Sends a socket that never got a queue its error and close frame, then
/// lingers for the client's close.
async fn reject(
    ctx: &Context,
    sink: &WriteSide,
    stream: &mut Stream,
    err: ChatError,
    reason: CloseReason,
) {
    ctx.metrics.socket_closed(reason);
    let frame = ServerFrame::error(&err, None).encode();
    writer::reject(sink, frame.into(), reason).await;
    linger(stream, reason).await;
}

/// Why a socket ended before it authenticated.
enum Unauthenticated {
    /// The connection ended; there is no one to answer.
    Left,
    /// The client sent a close frame; the node answers it with this.
    Closed(CloseReason),
    /// The client gets this error, then a close frame with the reason.
    Refused(ChatError, CloseReason),
}

/// Waits for the auth frame, answering pings meanwhile.
async fn authenticate(
    ctx: &Context,
    sink: &WriteSide,
    stream: &mut Stream,
) -> Result<Identity, Unauthenticated> {
    let timeout = ctx.settings.auth.timeout();
    let first = tokio::time::timeout(timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Incoming::Ping(payload))) => writer::pong(sink, &payload).await,
                Some(Ok(Incoming::Pong)) => continue,
                other => return other,
            }
        }
    })
    .await;
    let auth_required = |why: &str| {
        Unauthenticated::Refused(ChatError::AuthRequired(why.into()), CloseReason::AuthFailed)
    };
    let text = match first {
        Err(_) => {
            return Err(auth_required(&format!(
                "no auth frame within {} s",
                timeout.as_secs_f64()
            )))
        }
        Ok(None | Some(Err(ReadError::Io(_)))) => return Err(Unauthenticated::Left),
        Ok(Some(Ok(Incoming::Close(code)))) => {
            return Err(Unauthenticated::Closed(CloseReason::echoing(code)))
        }
        Ok(Some(Err(e))) => {
            let reason = e.close_reason();
            return Err(Unauthenticated::Refused(
                ChatError::InvalidFrame(e.to_string()),
                reason,
            ));
        }
        Ok(Some(Ok(Incoming::Text(text)))) => text,
        Ok(Some(Ok(_))) => return Err(auth_required("the first frame must be a text auth frame")),
    };
    match protocol::decode(&text) {
        Ok((_, ClientFrame::Auth { token })) => ctx
            .auth
            .verify(&token)
            .map_err(|e| Unauthenticated::Refused(e, CloseReason::AuthFailed)),
        _ => Err(auth_required(
            "the first frame must be {\"type\":\"auth\",\"token\":...}",
        )),
    }
}

/// After the node's close frame (and the end of its sending side): reads and
/// drops what the client still sends, until its close frame, the end of the
/// connection (a client closes its side once it saw the node's) or
/// `LINGER`. Closing a socket with unread bytes makes the kernel reset it,
/// and the client would lose the frames still in its receive buffer (the
/// error and the close frame among them). After a frame that broke the
/// framing, nothing more can be parsed: bytes are dropped unread.
async fn linger(stream: &mut Stream, why: CloseReason) {
    let parseable = !matches!(
        why,
        CloseReason::ProtocolError | CloseReason::NotUtf8 | CloseReason::TooBig
    );
    let _ = tokio::time::timeout(LINGER, async {
        if parseable {
            loop {
                match stream.next().await {
                    Some(Ok(Incoming::Close(_)) | Err(ReadError::Io(_))) | None => return,
                    Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        stream.discard().await;
    })
    .await;
}
