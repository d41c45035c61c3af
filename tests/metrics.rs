//! `/metrics` follows the traffic: counters move by exactly what clients did.

mod common;

use common::start_node;
use serde_json::json;

/// The value of one sample (`name` including its labels), 0 if absent.
async fn sample(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            // Every sample also carries the constant `node` label.
            let key = key.replace(",node=\"m1\"", "").replace("{node=\"m1\"}", "");
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_the_traffic() {
    let node = start_node(|s| {
        s.server.node_id = "m1".into();
        s.limits.send_rate_per_sec = 0.001;
        s.limits.send_burst = 3;
    })
    .await;
    let url = node.url("/metrics");
    let conv = node.create_chat("alice", &["bob"]).await;
    assert_eq!(sample(&url, "confab_sockets_open").await, 0.0);

    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join(&conv, None).await;
    bob.join(&conv, None).await;
    assert_eq!(sample(&url, "confab_sockets_open").await, 2.0);
    assert_eq!(sample(&url, "confab_sockets_opened_total").await, 2.0);

    for i in 0..3 {
        alice.say(&conv, &format!("m{i}")).await;
    }
    bob.sync().await;
    let (limited, _) = alice
        .request(
            "send_message",
            json!({"conversation_id": conv, "content": "x"}),
        )
        .await;
    assert_eq!(limited["data"]["code"], "RATE_LIMITED");

    let frames = r#"confab_frames_in_total{type="send_message"}"#;
    assert_eq!(sample(&url, frames).await, 4.0);
    assert_eq!(sample(&url, "confab_messages_stored_total").await, 3.0);
    assert_eq!(sample(&url, "confab_rate_limited_total").await, 1.0);
    // Each message reached both sockets: 6 deliveries (plus joined frames
    // and replies are not counted).
    assert!(sample(&url, "confab_events_delivered_total").await >= 6.0);
    assert!(sample(&url, "confab_delivery_latency_seconds_count").await >= 3.0);
    let appends = r#"confab_store_latency_seconds_count{op="append"}"#;
    assert_eq!(sample(&url, appends).await, 3.0);

    bob.ws().close(None).await.unwrap();
    common::procs::wait_until(
        "bob's close counted",
        std::time::Duration::from_secs(10),
        || {
            let url = url.clone();
            async move { sample(&url, r#"confab_sockets_closed_total{code="1000"}"#).await == 1.0 }
        },
    )
    .await;
    assert_eq!(sample(&url, "confab_sockets_open").await, 1.0);
}
