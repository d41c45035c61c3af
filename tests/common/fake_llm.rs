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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poem::http::{header, StatusCode};
use poem::web::Data;
use poem::{handler, post, Body, EndpointExt, Response, Route};
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::upstream::Upstream;

pub const ANSWER: &str = "The answer is forty two";

/// The fake server; it serves until dropped.
pub struct FakeLlm {
    /// What an assistant's `base_url` is set to.
    pub base_url: String,
    upstream: Upstream,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let app = Route::new()
            .at("/v1/chat/completions", post(completions))
            .data(Flaky::default());
        let upstream = Upstream::start(app).await;
        FakeLlm {
            base_url: upstream.url("/v1"),
            upstream,
        }
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

/// How many `flaky` requests came so far.
#[derive(Clone, Default)]
struct Flaky {
    seen: Arc<AtomicUsize>,
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
fn completions(body: Vec<u8>, flaky: Data<&Flaky>) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    match model.as_str() {
        "rate-limited" => {
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Some("1"),
                r#"{"error":{"message":"slow down","type":"rate_limit"}}"#,
            )
        }
        "flaky" if flaky.seen.fetch_add(1, Ordering::SeqCst) == 0 => {
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Some("0"),
                r#"{"error":{"message":"slow down"}}"#,
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
        let _ = answer(events, &model).await;
    });
    Response::builder()
        .content_type("text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_async_read(body))
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

/// Writes the event stream `model` asks for.
async fn answer(mut out: impl AsyncWrite + Unpin, model: &str) -> std::io::Result<()> {
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
        _ => {
            for (i, w) in words.iter().enumerate() {
                out.write_all(chunk(json!({"content": w}), None).as_bytes())
                    .await?;
                if i == 1 {
                    out.write_all(b": OPENROUTER PROCESSING\n\n").await?;
                }
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
