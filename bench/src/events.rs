//! The HTTP transport's client (docs/protocol.md, "the HTTP transport"):
//! an event stream, `GET /api/v1/chat/events` with a Bearer token, read as
//! a byte stream and split into events, and client frames POSTed to
//! `/connections/{id}/frames`. And `Inbox`: what a receiver reads server
//! frames from, whichever transport brings them.
//!
//! Streams and POSTs go through one reqwest client (HTTP/1.1; a stream
//! holds its connection for its life, POSTs share pooled ones). Its
//! connections come from 127.0.0.1 (the port picked at connect), not from
//! the loopback sources the sockets are spread over: one source address
//! has room for about 28k connections to a node, more than one process may
//! open here.

use std::io;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::client::{self, Sources, Ws};
use crate::proto::Proto;

/// How a client talks to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `GET /api/v1/chat/ws`: frames both ways on one socket.
    Websocket,
    /// The HTTP transport: an event stream down, frame POSTs up.
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Http => "http",
        }
    }
}

/// The client for event streams and frame POSTs: no timeout (a stream
/// lasts), idle connections kept for the next POSTs.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .expect("a reqwest client")
}

/// One connection of the HTTP transport: its event stream, and where its
/// frames go.
pub struct EventStream {
    response: reqwest::Response,
    /// The body read so far, not yet returned as events.
    events: Splitter,
    /// `POST` target for this connection's frames.
    frames_url: String,
    token: String,
    /// The node's name for this connection (`auth_success.connection_id`).
    pub connection_id: String,
    /// POSTs a `ping` now and then: a node ends a stream that gets no POST
    /// for `server.idle_timeout_secs` (60 s by default) as a dead peer.
    pinger: Option<tokio::task::JoinHandle<()>>,
}

/// How often a stream's pinger POSTs a `ping`, half the nodes' default
/// idle timeout.
const PING_EVERY: Duration = Duration::from_secs(30);

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(pinger) = self.pinger.take() {
            pinger.abort();
        }
    }
}

impl EventStream {
    /// Opens an event stream to the node at `base` as the token's subject
    /// and reads its first event (`auth_success`). Returns the stream and
    /// the time to that event.
    pub async fn open(
        http: &reqwest::Client,
        base: &str,
        token: &str,
    ) -> io::Result<(Self, Duration)> {
        let start = Instant::now();
        let base = base.trim_end_matches('/');
        let response = http
            .get(format!("{base}/api/v1/chat/events"))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(io::Error::other)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(io::Error::other(format!(
                "GET /api/v1/chat/events answered {}",
                response.status()
            )));
        }
        let mut events = Self {
            response,
            events: Splitter::default(),
            frames_url: String::new(),
            token: token.to_owned(),
            connection_id: String::new(),
            pinger: None,
        };
        let first = events
            .next_frame()
            .await
            .ok_or_else(|| io::Error::other("the stream ended before auth_success"))?;
        if first["type"] != "auth_success" {
            return Err(io::Error::other(format!("auth failed: {first}")));
        }
        events.connection_id = first["data"]["connection_id"]
            .as_str()
            .ok_or_else(|| {
                io::Error::other(format!("auth_success without connection_id: {first}"))
            })?
            .to_owned();
        events.frames_url = format!(
            "{base}/api/v1/chat/connections/{}/frames",
            events.connection_id
        );
        let (http, url, token) = (http.clone(), events.frames_url.clone(), token.to_owned());
        events.pinger = Some(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
            loop {
                tick.tick().await;
                let _ = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"type": "ping"}))
                    .send()
                    .await;
            }
        }));
        Ok((events, start.elapsed()))
    }

    /// The data of the next event (comments and events without data are
    /// skipped); None once the stream has ended.
    pub async fn next_data(&mut self) -> Option<Bytes> {
        loop {
            if let Some(data) = self.events.next_data() {
                return Some(data);
            }
            match self.response.chunk().await {
                Ok(Some(piece)) => self.events.push(piece),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event's frame as JSON; None once the stream has ended.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            let data = self.next_data().await?;
            if let Ok(frame) = serde_json::from_slice(&data) {
                return Some(frame);
            }
        }
    }

    /// POSTs a frame (or an array of frames) to this connection; the node
    /// answers 202 and the replies come on the stream.
    pub async fn post(&self, http: &reqwest::Client, frames: &Value) -> io::Result<()> {
        let response = http
            .post(&self.frames_url)
            .bearer_auth(&self.token)
            .json(frames)
            .send()
            .await
            .map_err(io::Error::other)?;
        if response.status() == reqwest::StatusCode::ACCEPTED {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "POST frames answered {}",
                response.status()
            )))
        }
    }

    /// Joins a conversation: POSTs the join frame, then reads the stream
    /// until its reply. Some(`joined`) if it was; the frames before the
    /// reply are dropped.
    pub async fn join(&mut self, http: &reqwest::Client, conv: &str) -> Option<Value> {
        let frame =
            json!({"type": "join_conversation", "id": "join", "data": {"conversation_id": conv}});
        self.post(http, &frame).await.ok()?;
        loop {
            let f = self.next_frame().await?;
            if f["data"]["ref"] == "join" {
                return (f["type"] == "joined").then_some(f);
            }
        }
    }
}

/// A stream's bytes, split into events as they come. The node writes
/// whole events per chunk, so events are mostly slices of the chunk they
/// came in (no copy); one cut across chunks is put together in `partial`.
#[derive(Default)]
struct Splitter {
    /// What is left of the latest piece.
    pending: Bytes,
    /// The start of an event whose end has not come yet.
    partial: Vec<u8>,
    /// An event put together from `partial`, to be returned first.
    completed: Option<Bytes>,
}

impl Splitter {
    /// Takes the next piece of the stream; call once `next_data` has
    /// returned None.
    fn push(&mut self, piece: Bytes) {
        debug_assert!(self.pending.is_empty() && self.completed.is_none());
        if self.partial.is_empty() {
            self.pending = piece;
            return;
        }
        // Where the carried event ends: a blank line across the cut, or
        // the first one in the piece.
        let end = if self.partial.ends_with(b"\n") && piece.first() == Some(&b'\n') {
            Some((0, 1))
        } else {
            find_blank_line(&piece).map(|at| (at, at + 2))
        };
        match end {
            Some((cut, rest)) => {
                let mut block = std::mem::take(&mut self.partial);
                if rest == 1 {
                    block.pop();
                } else {
                    block.extend_from_slice(&piece[..cut]);
                }
                self.completed = Some(Bytes::from(block));
                self.pending = piece.slice(rest..);
            }
            None => self.partial.extend_from_slice(&piece),
        }
    }

    /// The data of the next complete event with data, if one has come.
    fn next_data(&mut self) -> Option<Bytes> {
        while let Some(block) = self.take_block() {
            if let Some(data) = event_data(block) {
                return Some(data);
            }
        }
        None
    }

    /// The next complete event's text (up to its blank line).
    fn take_block(&mut self) -> Option<Bytes> {
        if let Some(block) = self.completed.take() {
            return Some(block);
        }
        match find_blank_line(&self.pending) {
            Some(at) => {
                let block = self.pending.slice(..at);
                self.pending = self.pending.slice(at + 2..);
                Some(block)
            }
            None => {
                self.partial.extend_from_slice(&self.pending);
                self.pending = Bytes::new();
                None
            }
        }
    }
}

/// Where the first blank line (`\n\n`) starts. The node ends lines with
/// `\n` only.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

/// The data of one event's text (its lines without the blank line): the
/// `data` fields' values joined by newlines, or None for an event without
/// data (a comment such as `: keepalive`). The node's events are one
/// `data: ` line each, which is returned without a copy.
fn event_data(block: Bytes) -> Option<Bytes> {
    if let Some(rest) = block.strip_prefix(b"data: ") {
        if !rest.contains(&b'\n') {
            return Some(block.slice(6..));
        }
    }
    let mut data: Option<Vec<u8>> = None;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data") else {
            continue;
        };
        let value = match value.split_first() {
            None => value,
            Some((b':', value)) => value.strip_prefix(b" ").unwrap_or(value),
            Some(_) => continue,
        };
        match &mut data {
            Some(d) => {
                d.push(b'\n');
                d.extend_from_slice(value);
            }
            None => data = Some(value.to_vec()),
        }
    }
    data.map(Bytes::from)
}

/// What a receiver reads server frames from.
pub enum Inbox {
    Socket(Ws),
    Events(EventStream),
}

impl Inbox {
    /// The next server frame's text; None once the connection has ended.
    pub async fn next_text(&mut self) -> Option<Utf8Bytes> {
        match self {
            Inbox::Socket(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(text)) => return Some(text),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
            Inbox::Events(events) => loop {
                let data = events.next_data().await?;
                if let Ok(text) = Utf8Bytes::try_from(data) {
                    return Some(text);
                }
            },
        }
    }

    /// Answers a Socket.IO heartbeat (only sockets get them).
    pub async fn pong(&mut self, proto: Proto) {
        if let Inbox::Socket(ws) = self {
            let _ = ws.send(proto.pong()).await;
        }
    }
}

/// Opens a connection of `transport` to the node at `base` as the token's
/// subject, joined to `conv` (confab's protocol). Returns it and the time
/// to `auth_success`.
pub async fn connect_and_join(
    transport: Transport,
    base: &str,
    token: &str,
    conv: &str,
    sources: &Sources,
    http: &reqwest::Client,
) -> io::Result<(Inbox, Duration)> {
    match transport {
        Transport::Websocket => {
            let (mut ws, took) = client::connect(base, token, sources).await?;
            client::join(&mut ws, conv, None)
                .await
                .filter(|f| f["type"] == "joined")
                .ok_or_else(|| io::Error::other("join failed"))?;
            Ok((Inbox::Socket(ws), took))
        }
        Transport::Http => {
            let (mut events, took) = EventStream::open(http, base, token).await?;
            events
                .join(http, conv)
                .await
                .ok_or_else(|| io::Error::other("join failed"))?;
            Ok((Inbox::Events(events), took))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split() {
        let block = Bytes::from_static(br#"data: {"type":"pong"}"#);
        assert_eq!(
            event_data(block).as_deref(),
            Some(&br#"{"type":"pong"}"#[..])
        );
        assert_eq!(event_data(Bytes::from_static(b": keepalive")), None);
        assert_eq!(
            event_data(Bytes::from_static(b"id: 3\ndata: a\ndata:b\r\nevent: x")).as_deref(),
            Some(&b"a\nb"[..])
        );
        assert_eq!(event_data(Bytes::from_static(b"datum: a")), None);
        assert_eq!(find_blank_line(b"data: x\n\ndata: y"), Some(7));
        assert_eq!(find_blank_line(b"data: x\n"), None);
    }

    #[test]
    fn events_across_pieces() {
        let mut s = Splitter::default();
        let text = b"data: {\"a\":1}\n\n: keepalive\n\ndata: {\"b\":2}\n\ndata: {\"c\":3}\n\n";
        // Every way of cutting the stream in two gives the same events.
        for cut in 0..text.len() {
            let mut got = Vec::new();
            s.push(Bytes::copy_from_slice(&text[..cut]));
            while let Some(d) = s.next_data() {
                got.push(d);
            }
            s.push(Bytes::copy_from_slice(&text[cut..]));
            while let Some(d) = s.next_data() {
                got.push(d);
            }
            let got: Vec<&[u8]> = got.iter().map(|d| &d[..]).collect();
            assert_eq!(
                got,
                [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"],
                "cut at {cut}"
            );
            assert!(s.partial.is_empty() && s.pending.is_empty());
        }
        // One byte at a time.
        let mut got = 0;
        for b in text {
            s.push(Bytes::copy_from_slice(std::slice::from_ref(b)));
            while s.next_data().is_some() {
                got += 1;
            }
        }
        assert_eq!(got, 3);
    }
}
