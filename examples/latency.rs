//! Cross-node delivery latency, by hand: a sender on node A, a receiver on
//! node B, one message at a time; prints p50/p99/max of send -> receive.
//!
//! cargo run --release --example latency -- http://127.0.0.1:8081 http://127.0.0.1:8082 3000
//!
//! Both nodes must share Redis and the database and run on the embedded dev
//! secret (tokens are minted with it).

mod common;

use std::time::{Duration, Instant};

use confab::auth::Authenticator;
use confab::config::Settings;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{next, open};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (a, b) = (
        args.get(1).expect("node A url"),
        args.get(2).expect("node B url"),
    );
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3000);
    let auth = Authenticator::new(&Settings::embedded().auth).unwrap();
    let ttl = Duration::from_secs(3600);
    let (ta, tb) = (
        auth.mint("lat-a", None, ttl).unwrap(),
        auth.mint("lat-b", None, ttl).unwrap(),
    );
    let conv: Value = reqwest::Client::new()
        .post(format!("{a}/api/v1/chat/chats"))
        .bearer_auth(&ta)
        .json(&json!({"participant_ids": ["lat-b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = conv["id"].as_str().unwrap().to_owned();
    let mut sender = open(a, &ta).await;
    // One receiver on the sender's node, one on the other: each reports when
    // every message arrives.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (slot, (base, token)) in [(a, &ta), (b, &tb)].into_iter().enumerate() {
        let mut ws = open(base, token).await;
        let join =
            json!({"type": "join_conversation", "id": "j", "data": {"conversation_id": conv}});
        ws.send(Message::text(join.to_string())).await.unwrap();
        next(&mut ws).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let f = next(&mut ws).await;
                if f["type"] == "message_received" {
                    let _ = tx.send((slot, Instant::now()));
                }
            }
        });
    }

    let (mut local, mut remote) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let frame = json!({"type": "send_message", "data": {"conversation_id": conv, "content": format!("m{i}")}});
        let start = Instant::now();
        sender.send(Message::text(frame.to_string())).await.unwrap();
        let mut got = [false; 2];
        while !(got[0] && got[1]) {
            let (slot, at) = rx.recv().await.unwrap();
            got[slot] = true;
            if slot == 0 { &mut local } else { &mut remote }.push(at - start);
        }
    }
    for (name, mut lat) in [("same node (A->A)", local), ("other node (A->B)", remote)] {
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "{name}: {n} messages, send -> receive p50 {:?}  p99 {:?}  max {:?}",
            pct(0.50),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
}
