//! The test client's HTTP transport: the event stream read as a stream of
//! frames, and frames sent as POSTs, to the stream's node or another.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Events = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send + Sync>>;

/// One HTTP-transport connection.
pub struct HttpLink {
    http: reqwest::Client,
    events: Events,
    buf: Vec<u8>,
    /// The bearer token frames are POSTed with.
    pub token: String,
    /// Where frames go: `{base}/api/v1/chat/connections/{id}/frames`.
    pub post_base: String,
    pub connection_id: String,
    /// The close code the stream's last error frame gave, if any.
    close_code: Option<u16>,
    ended: bool,
}

/// Why an event stream could not be opened: its HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl HttpLink {
    /// Opens `GET {base}/api/v1/chat/events` with `query` (e.g. a ticket)
    /// or, without one, the bearer token.
    pub async fn open(base: &str, token: &str, query: Option<&str>) -> Result<HttpLink, Refused> {
        let http = reqwest::Client::new();
        let mut req = match query {
            Some(q) => http.get(format!("{base}/api/v1/chat/events?{q}")),
            None => http
                .get(format!("{base}/api/v1/chat/events"))
                .bearer_auth(token),
        };
        req = req.header("accept", "text/event-stream");
        let resp = req.send().await.expect("events request");
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.json().await.unwrap_or(Value::Null);
            return Err(Refused { status, body });
        }
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        Ok(HttpLink {
            http,
            events: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            token: token.to_owned(),
            post_base: base.to_owned(),
            connection_id: String::new(),
            close_code: None,
            ended: false,
        })
    }

    /// POSTs a body of frames; returns the status and the body.
    pub async fn post_raw(&self, body: String) -> (u16, Value) {
        let url = format!(
            "{}/api/v1/chat/connections/{}/frames",
            self.post_base, self.connection_id
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("frames request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POSTs frames and expects them taken (202).
    pub async fn post(&self, frames: Vec<Value>) {
        let (status, body) = self.post_raw(Value::Array(frames).to_string()).await;
        assert_eq!(status, 202, "frames POST: {body}");
    }

    /// The next event as a WebSocket message would be: a text frame, or
    /// once the stream ends, a close with the code its last error gave.
    /// None: nothing more will come.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(event).expect("UTF-8 events");
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if data.is_empty() {
                    continue; // a comment (keepalive)
                }
                let frame = data.join("\n");
                if let Ok(v) = serde_json::from_str::<Value>(&frame) {
                    if let Some(code) = v["data"]["close_code"].as_u64() {
                        self.close_code = Some(code as u16);
                    }
                }
                return Some(Message::text(frame));
            }
            if self.ended {
                return None;
            }
            match self.events.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(_)) | None => {
                    self.ended = true;
                    return Some(Message::Close(self.close_code.map(|code| CloseFrame {
                        code: CloseCode::from(code),
                        reason: "".into(),
                    })));
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
