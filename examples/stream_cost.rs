//! The cost of one fast assistant stream watched by many sockets, by hand:
//! W watchers join one conversation, the echo assistant answers a long
//! message, and this prints frames per socket per second and the node's CPU
//! time (from /proc/PID/stat) for the stream.
//!
//! cargo run --release --example stream_cost -- http://127.0.0.1:8080 <node-pid> 100
//!
//! Run the node with a fast echo, e.g. CONFAB_ASSISTANTS__DEFAULT__ECHO_DELAY_MS=1,
//! once with the default coalescing and once with CONFAB_STREAMING__COALESCE_MS=0.

mod common;

use std::time::{Duration, Instant};

use confab::auth::Authenticator;
use confab::config::Settings;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{next, open};

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("node pid");
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).expect("node url").clone();
    let pid: u32 = args.get(2).expect("node pid").parse().unwrap();
    let watchers: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    let words: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let auth = Authenticator::new(&Settings::embedded().auth).unwrap();
    let token = |u: &str| auth.mint(u, None, Duration::from_secs(3600)).unwrap();
    let users: Vec<String> = (0..watchers).map(|i| format!("w{i}")).collect();
    let conv: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/chat/chats"))
        .bearer_auth(token(&users[0]))
        .json(&json!({"participant_ids": users}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = conv["id"].as_str().unwrap().to_owned();

    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for u in &users {
        let mut ws = open(&base, &token(u)).await;
        let join =
            json!({"type": "join_conversation", "id": "j", "data": {"conversation_id": conv}});
        ws.send(Message::text(join.to_string())).await.unwrap();
        next(&mut ws).await;
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            ready.send(()).await.unwrap();
            let (mut frames, mut start) = (0u64, None);
            loop {
                let f = next(&mut ws).await;
                match f["type"].as_str() {
                    Some("stream_start") => start = Some(Instant::now()),
                    Some("stream_content") => frames += 1,
                    Some("stream_complete") | Some("stream_error") => {
                        return (frames, start.map(|s| s.elapsed()).unwrap_or_default());
                    }
                    _ => {}
                }
            }
        }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await;
    }
    let mut sender = open(&base, &token(&users[0])).await;
    let text: String = (0..words).map(|i| format!("w{} ", i % 10)).collect();
    let send = json!({"type": "send_message", "id": "s", "data": {"conversation_id": conv, "content": text.trim_end()}});
    sender.send(Message::text(send.to_string())).await.unwrap();
    let cpu0 = cpu_secs(pid);
    let ask = json!({"type": "stream_response", "id": "a", "data": {"conversation_id": conv}});
    sender.send(Message::text(ask.to_string())).await.unwrap();
    let mut frames = 0;
    let mut longest = Duration::ZERO;
    for t in tasks {
        let (f, d) = t.await.unwrap();
        frames += f;
        longest = longest.max(d);
    }
    let cpu = cpu_secs(pid) - cpu0;
    let per_socket = frames as f64 / watchers as f64;
    println!(
        "{watchers} watchers, {words} tokens in {longest:.2?}: {per_socket:.0} frames per socket \
         ({:.1} frames/socket/s), {frames} frames total; node CPU {cpu:.2} s \
         ({:.1} µs per frame delivered)",
        per_socket / longest.as_secs_f64(),
        cpu * 1e6 / frames.max(1) as f64
    );
}
