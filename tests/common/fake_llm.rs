//! A local fake of an OpenAI-compatible Chat Completions server: real HTTP,
//! real `text/event-stream` in the exact wire format. The request's `model`
//! picks the behaviour:
//!
//! - `ok`: role chunk, one delta per word of "The answer is forty two",
//!   a keep-alive comment, finish `stop`, the usage chunk (empty choices), `[DONE]`
//! - `no-usage`: as `ok` without the usage chunk
//! - `error-event`: two deltas, then `data: {"error": ...}` after the 200
//! - `rate-limited`: always 429 with `Retry-After: 1`
//! - `flaky`: 429 with `Retry-After: 0` on the first request, then as `ok`
//! - `bad-key`: 401
//! - `cut`: two deltas, then the connection closes mid-answer
//! - `slow`: a delta every 100 ms for 30 s (for cancel and node death)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ANSWER: &str = "The answer is forty two";

/// The fake server; it runs until the test ends.
pub struct FakeLlm {
    pub base_url: String,
    pub requests: Arc<AtomicUsize>,
    /// The Authorization headers it saw.
    pub auth_headers: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let auth_headers = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (count, auths) = (requests.clone(), auth_headers.clone());
        let flaky_seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (count, auths, flaky_seen) = (count.clone(), auths.clone(), flaky_seen.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, count, auths, flaky_seen).await;
                });
            }
        });
        FakeLlm {
            base_url,
            requests,
            auth_headers,
        }
    }
}

async fn read_request(sock: &mut TcpStream) -> std::io::Result<(String, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    Ok((head, body))
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

async fn serve(
    mut sock: TcpStream,
    count: Arc<AtomicUsize>,
    auths: Arc<parking_lot::Mutex<Vec<String>>>,
    flaky_seen: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut sock).await?;
    count.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
    {
        auths.lock().push(
            auth.split_once(':')
                .map(|x| x.1.trim().to_string())
                .unwrap_or_default(),
        );
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    let status = |code: &str, extra: &str, body: &str| {
        format!("HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}", body.len())
    };
    match model.as_str() {
        "rate-limited" => {
            let b = r#"{"error":{"message":"slow down","type":"rate_limit"}}"#;
            return sock
                .write_all(status("429 Too Many Requests", "retry-after: 1\r\n", b).as_bytes())
                .await;
        }
        "flaky" if flaky_seen.fetch_add(1, Ordering::SeqCst) == 0 => {
            let b = r#"{"error":{"message":"slow down"}}"#;
            return sock
                .write_all(status("429 Too Many Requests", "retry-after: 0\r\n", b).as_bytes())
                .await;
        }
        "bad-key" => {
            let b = r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#;
            return sock
                .write_all(status("401 Unauthorized", "", b).as_bytes())
                .await;
        }
        _ => {}
    }
    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")
        .await?;
    sock.write_all(chunk(json!({"role": "assistant", "content": ""}), None).as_bytes())
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
    match model.as_str() {
        "error-event" | "cut" => {
            for w in &words[..2] {
                sock.write_all(chunk(json!({"content": w}), None).as_bytes())
                    .await?;
            }
            if model == "error-event" {
                sock.write_all(
                    b"data: {\"error\":{\"message\":\"upstream overloaded\",\"code\":502}}\n\n",
                )
                .await?;
            }
            sock.flush().await?;
            return Ok(()); // closes the connection mid-answer
        }
        "slow" => {
            for i in 0..300 {
                sock.write_all(chunk(json!({"content": format!("w{i} ")}), None).as_bytes())
                    .await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        _ => {
            for (i, w) in words.iter().enumerate() {
                sock.write_all(chunk(json!({"content": w}), None).as_bytes())
                    .await?;
                if i == 1 {
                    sock.write_all(b": OPENROUTER PROCESSING\n\n").await?;
                }
            }
        }
    }
    sock.write_all(chunk(json!({}), Some("stop")).as_bytes())
        .await?;
    if model != "no-usage" {
        let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}});
        sock.write_all(format!("data: {usage}\n\n").as_bytes())
            .await?;
    }
    sock.write_all(b"data: [DONE]\n\n").await?;
    sock.flush().await
}
