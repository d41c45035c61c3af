//! The OpenAI-compatible provider: streams a completion from any server that
//! speaks the Chat Completions API with `stream: true` (OpenAI, OpenRouter,
//! Ollama, vLLM, llama.cpp, ...), so assistants can use a real model.
//!
//! The answer arrives as Server-Sent Events; `eventsource-stream` parses the
//! wire format (including `: keep-alive` comment lines, which it drops) and
//! this module turns each event's JSON into [`Chunk`]s (text, finish reason,
//! usage, and the URL citations OpenAI and OpenRouter send as
//! `annotations`), maps HTTP failures to [`ProviderError`]s and enforces an
//! idle timeout between bytes.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use reqwest::header::{HeaderMap, ACCEPT, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::provider::{Chunk, Citation, CompletionRequest, Provider, ProviderError, Role, Usage};

/// How much of an error body (in characters) ends up in an error message.
const MAX_ERROR_CHARS: usize = 200;

/// Streams completions from an OpenAI-compatible `/chat/completions`
/// endpoint. Cheap to share: one HTTP client (connection pool) per provider.
pub struct OpenAiProvider {
    client: reqwest::Client,
    /// `{base_url}/chat/completions`, built once.
    url: String,
    api_key: Option<String>,
    /// Longest wait for the response headers, and for the next bytes of the
    /// body once it streams.
    timeout: Duration,
}

impl OpenAiProvider {
    /// base_url like "https://api.openai.com/v1" or "http://127.0.0.1:11434/v1" (a trailing slash is tolerated).
    /// The request goes to "{base_url}/chat/completions".
    pub fn new(base_url: &str, api_key: Option<String>, timeout: std::time::Duration) -> Self {
        // No client-wide timeout: it would cap the whole (long) stream. The
        // idle timeout is applied per wait instead, see `stream`.
        Self {
            client: reqwest::Client::new(),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            timeout,
        }
    }
}

// Hand-written so the API key can never end up in a log line.
impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn stream(
        &self,
        request: CompletionRequest,
    ) -> Result<BoxStream<'static, Result<Chunk, ProviderError>>, ProviderError> {
        let body = WireRequest {
            model: &request.model,
            messages: request
                .turns
                .iter()
                .map(|turn| WireMessage {
                    role: match turn.role {
                        Role::System => "system",
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    },
                    content: &turn.content,
                })
                .collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        let mut builder = self
            .client
            .post(&self.url)
            .header(ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        tracing::debug!(url = %self.url, model = %request.model, turns = request.turns.len(), "starting completion");

        let response = match tokio::time::timeout(self.timeout, builder.send()).await {
            Err(_elapsed) => return Err(ProviderError::Timeout(self.timeout)),
            Ok(Err(err)) => {
                return Err(ProviderError::Upstream(format!(
                    "could not reach the provider: {}",
                    error_chain(&err)
                )))
            }
            Ok(Ok(response)) => response,
        };

        let status = response.status();
        if !status.is_success() {
            return Err(self.status_error(response).await);
        }

        let events = with_idle_timeout(response.bytes_stream(), self.timeout)
            .eventsource()
            .boxed();
        let state = StreamState {
            events,
            pending: VecDeque::new(),
            finished: false,
            done: false,
            timeout: self.timeout,
        };
        Ok(stream::unfold(state, next_item).boxed())
    }
}

impl OpenAiProvider {
    /// Turns a non-2xx response into an error. Only the status and the body
    /// are used: the request (and its Authorization header) is never shown.
    async fn status_error(&self, response: reqwest::Response) -> ProviderError {
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = parse_retry_after(response.headers());
            tracing::debug!(?retry_after, "provider rate limited the request");
            return ProviderError::RateLimited { retry_after };
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return ProviderError::Unauthorized {
                status: status.as_u16(),
            };
        }
        // The body is only for the message: if it does not come quickly or
        // cannot be read, report the status alone.
        let body = match tokio::time::timeout(self.timeout, response.text()).await {
            Ok(Ok(body)) => body,
            _ => String::new(),
        };
        let detail = error_message_from_body(&body);
        if detail.is_empty() {
            ProviderError::Upstream(format!("HTTP {status}"))
        } else {
            ProviderError::Upstream(format!("HTTP {status}: {detail}"))
        }
    }
}

// ---- request and chunk formats on the wire ----

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One `data:` payload of the stream. Every field is optional (servers differ
/// and send `null`s); unknown fields are ignored.
#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// Present when the server fails after it already answered 200.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
    /// A whole message, which some servers send in the last chunk: only
    /// its `annotations` are read (its text came in the deltas).
    #[serde(default)]
    message: Option<WireMessageOut>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    /// Kept as raw JSON and read entry by entry (`citations_of`): a
    /// malformed annotation is skipped, never a reason to fail the stream.
    #[serde(default)]
    annotations: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireMessageOut {
    #[serde(default)]
    annotations: Option<serde_json::Value>,
}

/// Usage as sent: some servers omit `total_tokens` or send `null`s.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(wire: WireUsage) -> Self {
        let prompt_tokens = wire.prompt_tokens.unwrap_or(0);
        let completion_tokens = wire.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: wire
                .total_tokens
                .unwrap_or(prompt_tokens + completion_tokens),
        }
    }
}

// ---- the body stream ----

/// Why the body stopped delivering bytes.
#[derive(Debug)]
enum BodyError {
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The connection failed mid-body.
    Http(reqwest::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Idle => f.write_str("no data within the timeout"),
            BodyError::Http(err) => f.write_str(&error_chain(err)),
        }
    }
}

/// Passes the body through, failing with [`BodyError::Idle`] when no bytes
/// arrive within `idle`. The timer restarts on any bytes, so keep-alive
/// comments (which produce no event) keep a slow but alive stream going.
fn with_idle_timeout(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    // `None` state: the body failed or timed out, and the stream is over.
    stream::unfold(Some(body.boxed()), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
            Ok(Some(Err(err))) => Some((Err(BodyError::Http(err)), None)),
            Ok(None) => None,
            Err(_elapsed) => Some((Err(BodyError::Idle), None)),
        }
    })
}

/// What the output stream carries between items.
struct StreamState {
    events: BoxStream<'static, Result<Event, EventStreamError<BodyError>>>,
    /// Chunks decoded from one event and not yielded yet (one event can carry
    /// text, a finish reason and usage at once).
    pending: VecDeque<Chunk>,
    /// Saw a `finish_reason` or `[DONE]`: the answer is complete, so the body
    /// ending is not an error.
    finished: bool,
    /// Nothing more to read: yield what is pending, then end.
    done: bool,
    timeout: Duration,
}

/// Produces the next item of the output stream (for `stream::unfold`).
async fn next_item(mut state: StreamState) -> Option<(Result<Chunk, ProviderError>, StreamState)> {
    loop {
        if let Some(chunk) = state.pending.pop_front() {
            return Some((Ok(chunk), state));
        }
        if state.done {
            return None;
        }
        let event = match state.events.next().await {
            Some(Ok(event)) => event,
            Some(Err(err)) => {
                state.done = true;
                return Some((Err(event_stream_error(err, state.timeout)), state));
            }
            None => {
                state.done = true;
                if state.finished {
                    return None;
                }
                return Some((
                    Err(ProviderError::Upstream(
                        "stream cut before it finished".to_owned(),
                    )),
                    state,
                ));
            }
        };
        if let Err(err) = decode_event(&event, &mut state) {
            state.done = true;
            return Some((Err(err), state));
        }
    }
}

/// Decodes one SSE event into `state.pending`, or fails.
fn decode_event(event: &Event, state: &mut StreamState) -> Result<(), ProviderError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        state.finished = true;
        state.done = true;
        return Ok(());
    }
    let chunk: WireChunk = match serde_json::from_str(data) {
        Ok(chunk) => chunk,
        // Some servers send `event: error` with plain text.
        Err(_) if event.event == "error" => {
            return Err(ProviderError::Upstream(truncate(data)));
        }
        Err(err) => {
            return Err(ProviderError::Upstream(format!(
                "unreadable chunk ({err}): {}",
                truncate(data)
            )));
        }
    };
    if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
        return Err(ProviderError::Upstream(error_message_from_value(&error)));
    }
    for choice in chunk.choices.unwrap_or_default() {
        let (text, delta_notes) = match choice.delta {
            Some(delta) => (delta.content, delta.annotations),
            None => (None, None),
        };
        if let Some(text) = text {
            if !text.is_empty() {
                state.pending.push_back(Chunk::Delta(text));
            }
        }
        let message_notes = choice.message.and_then(|m| m.annotations);
        let mut citations = citations_of(delta_notes.as_ref());
        for citation in citations_of(message_notes.as_ref()) {
            // A server that sends both says the same thing twice.
            if !citations.contains(&citation) {
                citations.push(citation);
            }
        }
        if !citations.is_empty() {
            state.pending.push_back(Chunk::Citations(citations));
        }
        if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
            state.finished = true;
            state.pending.push_back(Chunk::Finish(reason));
        }
    }
    if let Some(usage) = chunk.usage {
        state.pending.push_back(Chunk::Usage(usage.into()));
    }
    Ok(())
}

/// The URL citations of an `annotations` value: an array of
/// `{"type": "url_citation", "url_citation": {"url", "title"?,
/// "start_index"?, "end_index"?}}`. Other annotation types, entries without
/// a URL and anything that is not an array are left out; a field of the
/// wrong type is dropped, as is a range that ends before it starts.
fn citations_of(annotations: Option<&serde_json::Value>) -> Vec<Citation> {
    let Some(entries) = annotations.and_then(|a| a.as_array()) else {
        return Vec::new();
    };
    entries.iter().filter_map(citation_of).collect()
}

fn citation_of(entry: &serde_json::Value) -> Option<Citation> {
    if entry.get("type")?.as_str()? != "url_citation" {
        return None;
    }
    // Chat Completions nests the fields; tolerate them flat as well.
    let fields = entry.get("url_citation").unwrap_or(entry);
    let url = fields.get("url")?.as_str()?.trim();
    if url.is_empty() {
        return None;
    }
    let title = fields
        .get("title")
        .and_then(|t| t.as_str())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let mut start = fields.get("start_index").and_then(|i| i.as_u64());
    let mut end = fields.get("end_index").and_then(|i| i.as_u64());
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            (start, end) = (None, None);
        }
    }
    Some(Citation {
        url: url.to_owned(),
        title,
        start,
        end,
    })
}

fn event_stream_error(err: EventStreamError<BodyError>, timeout: Duration) -> ProviderError {
    match err {
        EventStreamError::Transport(BodyError::Idle) => ProviderError::Timeout(timeout),
        EventStreamError::Transport(BodyError::Http(err)) => {
            ProviderError::Upstream(format!("connection lost mid-stream: {}", error_chain(&err)))
        }
        EventStreamError::Utf8(err) => {
            ProviderError::Upstream(format!("unreadable stream (not UTF-8): {err}"))
        }
        EventStreamError::Parser(err) => {
            ProviderError::Upstream(truncate(&format!("unreadable stream: {err}")))
        }
    }
}

// ---- helpers ----

/// `Retry-After` as a delay: integer seconds, or an HTTP date (a date in the
/// past means "now"). `None` if absent or unreadable.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is valid RFC 2822.
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The useful part of an error body: `error.message` if it is OpenAI-style
/// JSON, else the body itself, truncated.
fn error_message_from_body(body: &str) -> String {
    let body = body.trim();
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) if value.get("error").is_some_and(|e| !e.is_null()) => {
            error_message_from_value(&value["error"])
        }
        _ => truncate(body),
    }
}

/// The message of an `error` value: `{"message": ...}`, a plain string, or
/// the JSON itself.
fn error_message_from_value(error: &serde_json::Value) -> String {
    let text = match error {
        serde_json::Value::String(message) => message.clone(),
        _ => match error.get("message").and_then(|m| m.as_str()) {
            Some(message) => message.to_owned(),
            None => error.to_string(),
        },
    };
    truncate(&text)
}

/// At most [`MAX_ERROR_CHARS`] characters, with an ellipsis if cut.
fn truncate(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX_ERROR_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// An error with its causes ("error sending request: connection refused"):
/// reqwest's own message alone rarely says what went wrong. Never contains
/// headers, so never the API key.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::provider::Turn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SSE_HEAD: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

    /// What the fake server does after reading the request.
    enum Step {
        Write(String),
        /// Keeps the connection open without sending anything.
        Hold(Duration),
    }

    fn write(text: &str) -> Step {
        Step::Write(text.to_owned())
    }

    /// The request as the fake server received it.
    #[derive(Debug)]
    struct Received {
        request_line: String,
        /// Lower-cased names.
        headers: Vec<(String, String)>,
        body: serde_json::Value,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A one-shot HTTP/1.1 server on 127.0.0.1: reads one request, plays the
    /// steps, closes. Returns its base URL and the received request.
    async fn serve(steps: Vec<Step>) -> (String, tokio::task::JoinHandle<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let received = read_request(&mut socket).await;
            for step in steps {
                match step {
                    Step::Write(text) => {
                        // The client may already have hung up (after an
                        // error event, say): that is not the test's concern.
                        if socket.write_all(text.as_bytes()).await.is_err() {
                            break;
                        }
                        let _ = socket.flush().await;
                    }
                    Step::Hold(duration) => tokio::time::sleep(duration).await,
                }
            }
            let _ = socket.shutdown().await;
            received
        });
        (base, handle)
    }

    /// Reads the head up to the blank line, then Content-Length bytes of body.
    async fn read_request(socket: &mut tokio::net::TcpStream) -> Received {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = socket.read(&mut tmp).await.unwrap();
            assert!(n > 0, "client closed before sending the request head");
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = socket.read(&mut tmp).await.unwrap();
            assert!(n > 0, "client closed before sending the whole body");
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
        Received {
            request_line,
            headers,
            body,
        }
    }

    fn request() -> CompletionRequest {
        CompletionRequest {
            model: "test-model".to_owned(),
            turns: vec![
                Turn {
                    role: Role::System,
                    content: "be brief".to_owned(),
                },
                Turn {
                    role: Role::User,
                    content: "hello".to_owned(),
                },
                Turn {
                    role: Role::Assistant,
                    content: "hi!".to_owned(),
                },
                Turn {
                    role: Role::User,
                    content: "how are you?".to_owned(),
                },
            ],
        }
    }

    fn provider(base: &str, timeout: Duration) -> OpenAiProvider {
        OpenAiProvider::new(base, Some("test-key".to_owned()), timeout)
    }

    fn delta(text: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({
                "id": "c1", "object": "chat.completion.chunk", "model": "test-model",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
                "usage": null
            })
        )
    }

    const ROLE: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
    const FINISH: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n";
    const KEEP_ALIVE: &str = ": OPENROUTER PROCESSING\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    /// Collects a whole stream (bounded, so a bug cannot hang the test run)
    /// and splits it into the chunks and the final error, asserting that an
    /// error, if any, is the last item.
    async fn collect(
        stream: BoxStream<'static, Result<Chunk, ProviderError>>,
    ) -> (Vec<Chunk>, Option<ProviderError>) {
        let items: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
            .await
            .expect("the stream did not end");
        let mut chunks = Vec::new();
        let mut error = None;
        for item in items {
            assert!(error.is_none(), "an item came after an error: {item:?}");
            match item {
                Ok(chunk) => chunks.push(chunk),
                Err(err) => error = Some(err),
            }
        }
        (chunks, error)
    }

    /// Serves `steps`, streams one request through them, and collects it.
    async fn stream_through(
        steps: Vec<Step>,
        timeout: Duration,
    ) -> (Vec<Chunk>, Option<ProviderError>) {
        let (base, _server) = serve(steps).await;
        let stream = provider(&base, timeout).stream(request()).await.unwrap();
        collect(stream).await
    }

    #[tokio::test]
    async fn normal_stream_yields_deltas_finish_and_usage() {
        let (base, server) = serve(vec![
            write(SSE_HEAD),
            write(ROLE),
            write(&delta("Hel")),
            write(&delta("lo ")),
            write(KEEP_ALIVE),
            write(&delta("there")),
            write(FINISH),
            write(USAGE),
            write(DONE),
        ])
        .await;
        let stream = provider(&base, Duration::from_secs(5))
            .stream(request())
            .await
            .unwrap();
        let (chunks, error) = collect(stream).await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(
            chunks,
            vec![
                Chunk::Delta("Hel".into()),
                Chunk::Delta("lo ".into()),
                Chunk::Delta("there".into()),
                Chunk::Finish("stop".into()),
                Chunk::Usage(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3,
                    total_tokens: 15
                }),
            ]
        );

        let received = server.await.unwrap();
        assert_eq!(received.request_line, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(received.header("authorization"), Some("Bearer test-key"));
        assert_eq!(received.header("accept"), Some("text/event-stream"));
        assert_eq!(received.header("content-type"), Some("application/json"));
        assert_eq!(
            received.body,
            serde_json::json!({
                "model": "test-model",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi!"},
                    {"role": "user", "content": "how are you?"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[tokio::test]
    async fn error_event_after_200_ends_with_upstream() {
        let (chunks, error) = stream_through(
            vec![
                write(SSE_HEAD),
                write(&delta("Partial")),
                write(&delta(" answer")),
                write(&format!(
                    "data: {}\n\n",
                    r#"{"error":{"message":"overloaded","code":502}}"#
                )),
                // Never read: the error ends the stream.
                write(&delta("ignored")),
                write(DONE),
            ],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            chunks,
            vec![
                Chunk::Delta("Partial".into()),
                Chunk::Delta(" answer".into())
            ]
        );
        match error {
            Some(ProviderError::Upstream(message)) => {
                assert!(message.contains("overloaded"), "{message}")
            }
            other => panic!("expected Upstream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rate_limited_with_retry_after() {
        let body = r#"{"error":{"message":"slow down please"}}"#;
        let (base, _server) = serve(vec![write(&format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))])
        .await;
        let result = provider(&base, Duration::from_secs(5))
            .stream(request())
            .await;
        match result {
            Err(ProviderError::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)))
            }
            Err(other) => panic!("expected RateLimited, got {other:?}"),
            Ok(_) => panic!("expected RateLimited, got a stream"),
        }
    }

    #[tokio::test]
    async fn unauthorized_never_shows_the_key() {
        let key = "sk-very-secret-key-123";
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-very-secret-key-123"}}"#;
        let (base, server) = serve(vec![write(&format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))])
        .await;
        let provider = OpenAiProvider::new(&base, Some(key.to_owned()), Duration::from_secs(5));
        let result = provider.stream(request()).await;
        let error = match result {
            Err(error) => error,
            Ok(_) => panic!("expected Unauthorized, got a stream"),
        };
        assert!(
            matches!(error, ProviderError::Unauthorized { status: 401 }),
            "{error:?}"
        );
        assert!(!error.to_string().contains(key), "{error}");
        assert!(!format!("{error:?}").contains(key));
        assert!(!format!("{provider:?}").contains(key));
        // The key was sent, so the server saw it: only our texts hide it.
        assert_eq!(
            server.await.unwrap().header("authorization"),
            Some(format!("Bearer {key}").as_str())
        );
    }

    #[tokio::test]
    async fn stream_cut_mid_answer_is_an_error() {
        let (chunks, error) = stream_through(
            vec![
                write(SSE_HEAD),
                write(ROLE),
                write(&delta("Once upon")),
                write(&delta(" a time")),
            ],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            chunks,
            vec![
                Chunk::Delta("Once upon".into()),
                Chunk::Delta(" a time".into())
            ]
        );
        match error {
            Some(ProviderError::Upstream(message)) => {
                assert_eq!(message, "stream cut before it finished")
            }
            other => panic!("expected Upstream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn silence_mid_stream_times_out() {
        let timeout = Duration::from_millis(300);
        let (chunks, error) = stream_through(
            vec![
                write(SSE_HEAD),
                write(&delta("thinking")),
                Step::Hold(Duration::from_secs(60)),
            ],
            timeout,
        )
        .await;
        assert_eq!(chunks, vec![Chunk::Delta("thinking".into())]);
        match error {
            Some(ProviderError::Timeout(t)) => assert_eq!(t, timeout),
            other => panic!("expected Timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stream_without_usage_is_fine() {
        let (chunks, error) = stream_through(
            vec![
                write(SSE_HEAD),
                write(&delta("ok")),
                write(FINISH),
                write(DONE),
            ],
            Duration::from_secs(5),
        )
        .await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(
            chunks,
            vec![Chunk::Delta("ok".into()), Chunk::Finish("stop".into())]
        );
    }

    // ---- extra cases ----

    #[tokio::test]
    async fn keep_alives_reset_the_idle_timeout() {
        // 6 keep-alives 100 ms apart: 600 ms in all, longer than the 400 ms
        // timeout, but never 400 ms without bytes.
        let mut steps = vec![write(SSE_HEAD)];
        for _ in 0..6 {
            steps.push(Step::Hold(Duration::from_millis(100)));
            steps.push(write(KEEP_ALIVE));
        }
        steps.extend([write(&delta("late")), write(FINISH), write(DONE)]);
        let (chunks, error) = stream_through(steps, Duration::from_millis(400)).await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(
            chunks,
            vec![Chunk::Delta("late".into()), Chunk::Finish("stop".into())]
        );
    }

    #[tokio::test]
    async fn no_response_headers_times_out() {
        let (base, _server) = serve(vec![Step::Hold(Duration::from_secs(60))]).await;
        let timeout = Duration::from_millis(300);
        match provider(&base, timeout).stream(request()).await {
            Err(ProviderError::Timeout(t)) => assert_eq!(t, timeout),
            Err(other) => panic!("expected Timeout, got {other:?}"),
            Ok(_) => panic!("expected Timeout, got a stream"),
        }
    }

    #[tokio::test]
    async fn server_error_uses_the_json_message() {
        let body = r#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#;
        let (base, _server) = serve(vec![write(&format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))])
        .await;
        match provider(&base, Duration::from_secs(5))
            .stream(request())
            .await
        {
            Err(ProviderError::Upstream(message)) => {
                assert!(message.contains("404"), "{message}");
                assert!(message.contains("model not found"), "{message}");
                assert!(!message.contains("invalid_request_error"), "{message}");
            }
            Err(other) => panic!("expected Upstream, got {other:?}"),
            Ok(_) => panic!("expected Upstream, got a stream"),
        }
    }

    #[tokio::test]
    async fn long_error_body_is_truncated() {
        let body = "x".repeat(5000);
        let (base, _server) = serve(vec![write(&format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))])
        .await;
        match provider(&base, Duration::from_secs(5))
            .stream(request())
            .await
        {
            Err(ProviderError::Upstream(message)) => {
                assert!(message.contains("502"), "{message}");
                assert!(message.len() < 300, "{} chars", message.len());
            }
            Err(other) => panic!("expected Upstream, got {other:?}"),
            Ok(_) => panic!("expected Upstream, got a stream"),
        }
    }

    #[tokio::test]
    async fn unreadable_chunk_is_an_error() {
        let (chunks, error) = stream_through(
            vec![
                write(SSE_HEAD),
                write(&delta("a")),
                write("data: {not json\n\n"),
                write(DONE),
            ],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(chunks, vec![Chunk::Delta("a".into())]);
        match error {
            Some(ProviderError::Upstream(message)) => {
                assert!(message.contains("unreadable chunk"), "{message}")
            }
            other => panic!("expected Upstream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_key_no_authorization_header_and_trailing_slash() {
        let (base, server) = serve(vec![write(SSE_HEAD), write(FINISH), write(DONE)]).await;
        let provider = OpenAiProvider::new(&format!("{base}/"), None, Duration::from_secs(5));
        let stream = provider.stream(request()).await.unwrap();
        let (chunks, error) = collect(stream).await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(chunks, vec![Chunk::Finish("stop".into())]);
        let received = server.await.unwrap();
        assert_eq!(received.request_line, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(received.header("authorization"), None);
    }

    #[tokio::test]
    async fn connection_refused_is_upstream() {
        // Bind then drop to get a port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let provider = provider(&format!("http://{addr}/v1"), Duration::from_secs(5));
        match provider.stream(request()).await {
            Err(ProviderError::Upstream(message)) => {
                assert!(!message.contains("test-key"), "{message}")
            }
            Err(other) => panic!("expected Upstream, got {other:?}"),
            Ok(_) => panic!("expected Upstream, got a stream"),
        }
    }

    // ---- citations ----

    /// A `data:` event whose only choice carries `choice` (delta, message,
    /// finish_reason as given).
    fn choice_event(choice: serde_json::Value) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [choice]})
        )
    }

    fn cited(url: &str, title: Option<&str>, start: Option<u64>, end: Option<u64>) -> Citation {
        Citation {
            url: url.to_owned(),
            title: title.map(str::to_owned),
            start,
            end,
        }
    }

    #[tokio::test]
    async fn url_annotations_become_citations() {
        // As OpenRouter streams them: on a delta of their own, before the
        // finish, next to annotations of other kinds and broken ones.
        let annotated = choice_event(serde_json::json!({
            "index": 0,
            "delta": {"role": "assistant", "content": "", "annotations": [
                {"type": "url_citation", "url_citation": {
                    "url": "https://example.com/a", "title": "Example A",
                    "start_index": 0, "end_index": 3}},
                {"type": "file_citation", "file_citation": {"file_id": "f1"}},
                {"type": "url_citation", "url_citation": {"title": "no url"}},
                {"type": "url_citation"},
                "not an object",
                42,
                {"type": "url_citation", "url_citation": {
                    "url": "https://example.org/b", "start_index": "4", "end_index": 10}},
            ]},
            "finish_reason": null
        }));
        let (chunks, error) = stream_through(
            vec![
                write(SSE_HEAD),
                write(ROLE),
                write(&delta("Hello there")),
                write(&annotated),
                write(FINISH),
                write(USAGE),
                write(DONE),
            ],
            Duration::from_secs(5),
        )
        .await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(
            chunks,
            vec![
                Chunk::Delta("Hello there".into()),
                Chunk::Citations(vec![
                    cited("https://example.com/a", Some("Example A"), Some(0), Some(3)),
                    // A start that is not a number is dropped, not the source.
                    cited("https://example.org/b", None, None, Some(10)),
                ]),
                Chunk::Finish("stop".into()),
                Chunk::Usage(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3,
                    total_tokens: 15
                }),
            ]
        );
    }

    #[tokio::test]
    async fn message_annotations_are_read_once() {
        // Text, delta annotations, the whole message's annotations (which
        // repeat one of them) and the finish in one event.
        let a = serde_json::json!({"type": "url_citation", "url_citation": {
            "url": "https://example.com/a", "title": "A", "start_index": 0, "end_index": 2}});
        let b = serde_json::json!({"type": "url_citation", "url_citation": {
            "url": "https://example.com/b"}});
        let last = choice_event(serde_json::json!({
            "index": 0,
            "delta": {"content": "ok", "annotations": [a.clone()]},
            "message": {"role": "assistant", "content": "ok", "annotations": [a, b]},
            "finish_reason": "stop"
        }));
        let (chunks, error) = stream_through(
            vec![write(SSE_HEAD), write(&last), write(DONE)],
            Duration::from_secs(5),
        )
        .await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(
            chunks,
            vec![
                Chunk::Delta("ok".into()),
                Chunk::Citations(vec![
                    cited("https://example.com/a", Some("A"), Some(0), Some(2)),
                    cited("https://example.com/b", None, None, None),
                ]),
                Chunk::Finish("stop".into()),
            ]
        );
    }

    #[tokio::test]
    async fn malformed_annotations_never_fail_the_stream() {
        let mut steps = vec![write(SSE_HEAD), write(&delta("a"))];
        for annotations in [
            serde_json::json!("oops"),
            serde_json::json!({"type": "url_citation"}),
            serde_json::json!(null),
            serde_json::json!(7),
            serde_json::json!([]),
            serde_json::json!([{"type": "url_citation", "url_citation": {"url": ""}}]),
            serde_json::json!([{"type": "url_citation", "url_citation": {"url": 5}}]),
        ] {
            steps.push(write(&choice_event(serde_json::json!({
                "index": 0, "delta": {"annotations": annotations}, "finish_reason": null
            }))));
        }
        steps.push(write(&choice_event(serde_json::json!({
            "index": 0, "message": {"annotations": {"not": "a list"}}, "finish_reason": null
        }))));
        steps.extend([write(&delta("b")), write(FINISH), write(DONE)]);
        let (chunks, error) = stream_through(steps, Duration::from_secs(5)).await;
        assert!(error.is_none(), "unexpected error: {error:?}");
        assert_eq!(
            chunks,
            vec![
                Chunk::Delta("a".into()),
                Chunk::Delta("b".into()),
                Chunk::Finish("stop".into())
            ]
        );
    }

    #[test]
    fn citation_entries() {
        let entry = |value: serde_json::Value| citation_of(&value);
        // Flat fields (as the Responses API has them) are taken too.
        assert_eq!(
            entry(
                serde_json::json!({"type": "url_citation", "url": " https://x.test/ ",
                "title": "  ", "start_index": 1, "end_index": 1})
            ),
            Some(cited("https://x.test/", None, Some(1), Some(1)))
        );
        // A range that ends before it starts says nothing.
        assert_eq!(
            entry(serde_json::json!({"type": "url_citation", "url_citation": {
                "url": "https://x.test/", "start_index": 9, "end_index": 2}})),
            Some(cited("https://x.test/", None, None, None))
        );
        // Negative indices are not indices.
        assert_eq!(
            entry(serde_json::json!({"type": "url_citation", "url_citation": {
                "url": "https://x.test/", "start_index": -1, "end_index": 2}})),
            Some(cited("https://x.test/", None, None, Some(2)))
        );
        assert_eq!(
            entry(
                serde_json::json!({"type": "URL_CITATION", "url_citation": {"url": "https://x.test/"}})
            ),
            None
        );
        assert_eq!(
            entry(serde_json::json!({"url_citation": {"url": "https://x.test/"}})),
            None
        );
        assert_eq!(citations_of(None), vec![]);
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), None);
        // A date in the past: retry now.
        headers.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&headers), Some(Duration::ZERO));
        // A date about a minute ahead.
        let later = (chrono::Utc::now() + chrono::Duration::seconds(60))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let wait = parse_retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
    }
}
