//! A local fake of an OpenAI-compatible Chat Completions server: real HTTP
//! (an `Upstream`), real `text/event-stream` in the exact wire format, on
//! `POST /v1/chat/completions`. The request's `model` picks the behaviour:
//!
//! - `ok`: role chunk, one delta per word of "The answer is forty two",
//!   a keep-alive comment, finish `stop`, the usage chunk (empty choices), `[DONE]`
//! - `no-usage`: as `ok` without the usage chunk
//! - `error-event`: two deltas, then `data: {"error": ...}` after the 200
//! - `rate-limited`: always 429 with `Retry-After: 1`
//! - `flaky`: 429 with `Retry-After: 0` on the first request, then as `ok`
//! - `bad-key`: 401
//! - `cut`: two deltas, then the body ends mid-answer
//! - `slow`: a delta every 100 ms for 30 s (for cancel and node death)
//! - `held`: role chunk, the delta "held ", then nothing but a keep-alive
//!   comment every 100 ms until the test releases the request
//!   (`FakeLlm::release_one`, oldest first), then the delta " done", finish
//!   `stop`, usage, `[DONE]` (for queues and concurrency limits)
//! - `limited-once`: 429 with `Retry-After: 2` for the first request of this
//!   mode (per `FakeLlm`), then as `ok`
//! - `cited`: as `ok`, with URL citations (`annotations`, as OpenRouter
//!   sends them) on a delta of their own before the finish: see [`CITATIONS`]
//!
//! Every request, whatever its mode, is open from its arrival until its
//! response body is finished or dropped (the client went away):
//! `FakeLlm::open`, `max_open` and `wait_open` count them, so a test can
//! assert how many were ever in flight at once. `FakeLlm::arrivals` gives
//! each request's model and arrival time.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use poem::http::{header, StatusCode};
use poem::web::Data;
use poem::{handler, post, Body, EndpointExt, Response, Route};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};

use super::upstream::Upstream;

pub const ANSWER: &str = "The answer is forty two";

/// The text of a `held` answer once released.
pub const HELD_ANSWER: &str = "held  done";

/// The `annotations` a `cited` answer carries, as OpenRouter sends them:
/// the ranges are "The" and "answer" of [`ANSWER`].
pub const CITATIONS: &str = r#"[{"type":"url_citation","url_citation":{"url":"https://example.com/a","title":"Example A","start_index":0,"end_index":3}},{"type":"url_citation","url_citation":{"url":"https://example.org/b","start_index":4,"end_index":10}}]"#;

/// How often a held answer sends a keep-alive comment: it keeps the
/// client's idle timeout from firing, and finds a client that went away.
const HELD_KEEP_ALIVE: Duration = Duration::from_millis(100);

/// The fake server; it serves until dropped.
pub struct FakeLlm {
    /// What an assistant's `base_url` is set to.
    pub base_url: String,
    upstream: Upstream,
    state: Arc<State>,
}

/// What the handler and the test share.
struct State {
    /// Requests whose response body is not finished.
    open: watch::Sender<usize>,
    max_open: AtomicUsize,
    /// How many `flaky` requests came so far.
    flaky: AtomicUsize,
    /// How many `limited-once` requests came so far.
    limited_once: AtomicUsize,
    /// Each request's model and arrival, oldest first.
    arrivals: Mutex<Vec<(String, Instant)>>,
    /// The releases of `held` requests, oldest first.
    held: Mutex<VecDeque<oneshot::Sender<()>>>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let state = Arc::new(State {
            open: watch::Sender::new(0),
            max_open: AtomicUsize::new(0),
            flaky: AtomicUsize::new(0),
            limited_once: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::new()),
            held: Mutex::new(VecDeque::new()),
        });
        let app = Route::new()
            .at("/v1/chat/completions", post(completions))
            .data(state.clone());
        let upstream = Upstream::start(app).await;
        FakeLlm {
            base_url: upstream.url("/v1"),
            upstream,
            state,
        }
    }

    /// How many requests are open now: arrived, and their response body
    /// not finished (nor dropped by a client that went away).
    pub fn open(&self) -> usize {
        *self.state.open.borrow()
    }

    /// The most requests ever open at once.
    pub fn max_open(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests are open; false if `timeout`
    /// passed first.
    pub async fn wait_open(&self, n: usize, timeout: Duration) -> bool {
        let mut open = self.state.open.subscribe();
        tokio::time::timeout(timeout, open.wait_for(|open| *open >= n))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Lets the oldest `held` request still waiting finish its answer;
    /// false if none is waiting (a request whose client went away is not
    /// waiting).
    pub fn release_one(&self) -> bool {
        let mut held = self.state.held.lock();
        while let Some(release) = held.pop_front() {
            if release.send(()).is_ok() {
                return true;
            }
        }
        false
    }

    /// Each request's model and the moment it arrived, oldest first.
    pub fn arrivals(&self) -> Vec<(String, Instant)> {
        self.state.arrivals.lock().clone()
    }

    /// How many requests it received.
    pub fn requests(&self) -> usize {
        self.upstream.requests().len()
    }

    /// The JSON bodies of the requests it received, oldest first.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.upstream
            .requests()
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }

    /// The Authorization headers it saw.
    pub fn auth_headers(&self) -> Vec<String> {
        self.upstream
            .requests()
            .iter()
            .filter_map(|r| r.headers.get(header::AUTHORIZATION))
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        // Held answers end (their release is gone) rather than wait forever.
        self.state.held.lock().clear();
    }
}

/// A request counted as open while this lives.
struct OpenGuard(Arc<State>);

impl OpenGuard {
    fn new(state: &Arc<State>) -> OpenGuard {
        state.open.send_modify(|open| {
            *open += 1;
            state.max_open.fetch_max(*open, Ordering::SeqCst);
        });
        OpenGuard(state.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|open| *open -= 1);
    }
}

/// A response body that keeps its request open until the server drops
/// it: at its end, or when the client went away.
struct Guarded<R> {
    body: R,
    _open: OpenGuard,
}

impl<R: AsyncRead + Unpin> AsyncRead for Guarded<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.body).poll_read(cx, buf)
    }
}

/// A non-2xx answer with a JSON error body.
fn refusal(status: StatusCode, retry_after: Option<&str>, body: &'static str) -> Response {
    let mut resp = Response::builder()
        .status(status)
        .content_type("application/json");
    if let Some(secs) = retry_after {
        resp = resp.header(header::RETRY_AFTER, secs);
    }
    resp.body(body)
}

#[handler]
fn completions(body: Vec<u8>, state: Data<&Arc<State>>) -> Response {
    let state = *state;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    state.arrivals.lock().push((model.clone(), Instant::now()));
    // A held request is waiting for its release before it counts as open,
    // so a test that saw it open can release it.
    let release = (model == "held").then(|| {
        let (release, released) = oneshot::channel();
        state.held.lock().push_back(release);
        released
    });
    // Refusals are open until they are answered, streams until their body ends.
    let open = OpenGuard::new(state);
    match model.as_str() {
        "rate-limited" => {
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Some("1"),
                r#"{"error":{"message":"slow down","type":"rate_limit"}}"#,
            )
        }
        "flaky" if state.flaky.fetch_add(1, Ordering::SeqCst) == 0 => {
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Some("0"),
                r#"{"error":{"message":"slow down"}}"#,
            )
        }
        "limited-once" if state.limited_once.fetch_add(1, Ordering::SeqCst) == 0 => {
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Some("2"),
                r#"{"error":{"message":"slow down","type":"rate_limit"}}"#,
            )
        }
        "bad-key" => {
            return refusal(
                StatusCode::UNAUTHORIZED,
                None,
                r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
            )
        }
        _ => {}
    }
    // The events are written as they would be on the wire, into a pipe the
    // response body reads from: a write is sent as soon as it is made, and
    // the writer's end closing ends the body.
    let (events, body) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let _ = answer(events, &model, release).await;
    });
    Response::builder()
        .content_type("text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_async_read(Guarded { body, _open: open }))
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

/// Writes the event stream `model` asks for; a `held` one waits for
/// `release` midway.
async fn answer(
    mut out: impl AsyncWrite + Unpin,
    model: &str,
    release: Option<oneshot::Receiver<()>>,
) -> std::io::Result<()> {
    out.write_all(chunk(json!({"role": "assistant", "content": ""}), None).as_bytes())
        .await?;
    let words: Vec<String> = ANSWER
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    match model {
        "error-event" | "cut" => {
            for w in &words[..2] {
                out.write_all(chunk(json!({"content": w}), None).as_bytes())
                    .await?;
            }
            if model == "error-event" {
                out.write_all(
                    b"data: {\"error\":{\"message\":\"upstream overloaded\",\"code\":502}}\n\n",
                )
                .await?;
            }
            return Ok(()); // the body ends mid-answer
        }
        "slow" => {
            for i in 0..300 {
                out.write_all(chunk(json!({"content": format!("w{i} ")}), None).as_bytes())
                    .await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        "held" => {
            out.write_all(chunk(json!({"content": "held "}), None).as_bytes())
                .await?;
            out.flush().await?;
            if let Some(mut release) = release {
                // Released, or the fake dropped: finish. A client gone
                // fails a keep-alive write, which ends this answer.
                loop {
                    tokio::select! {
                        _ = &mut release => break,
                        _ = tokio::time::sleep(HELD_KEEP_ALIVE) => {
                            out.write_all(b": held\n\n").await?;
                        }
                    }
                }
            }
            out.write_all(chunk(json!({"content": " done"}), None).as_bytes())
                .await?;
        }
        _ => {
            for (i, w) in words.iter().enumerate() {
                out.write_all(chunk(json!({"content": w}), None).as_bytes())
                    .await?;
                if i == 1 {
                    out.write_all(b": OPENROUTER PROCESSING\n\n").await?;
                }
            }
            if model == "cited" {
                // Parsed from a constant that is valid JSON.
                let annotations: Value = serde_json::from_str(CITATIONS).expect("valid JSON");
                let delta = json!({"role": "assistant", "content": "", "annotations": annotations});
                out.write_all(chunk(delta, None).as_bytes()).await?;
            }
        }
    }
    out.write_all(chunk(json!({}), Some("stop")).as_bytes())
        .await?;
    if model != "no-usage" {
        let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}});
        out.write_all(format!("data: {usage}\n\n").as_bytes())
            .await?;
    }
    out.write_all(b"data: [DONE]\n\n").await
}
