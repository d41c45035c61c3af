//! The bus, presence and the assistants' queue and transcripts on a real
//! three-master Redis Cluster (sharded pub/sub; presence and transcript
//! keys hash-tagged by conversation), built by the test from
//! `redis-server` processes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::procs::{free_port, wait_until, Redis};
use common::{messages, start_node};

async fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_carries_every_conversation_across_nodes() {
    let mut shards = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let extra = vec![
            "--cluster-enabled".to_string(),
            "yes".into(),
            "--cluster-config-file".into(),
            format!("nodes-{port}.conf"),
            "--cluster-node-timeout".into(),
            "5000".into(),
        ];
        shards.push(Redis::start_with(port, extra).await);
    }
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for r in &shards {
        create.arg(format!("127.0.0.1:{}", r.port));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for r in &shards {
        let port = r.port;
        wait_until("cluster_state:ok", Duration::from_secs(20), || {
            cluster_ok(port)
        })
        .await;
    }

    let db = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/shared.db?mode=rwc", db.path().display());
    let mut nodes = Vec::new();
    for (i, seed) in [0usize, 1].into_iter().enumerate() {
        let (db_url, url) = (db_url.clone(), shards[seed].url());
        nodes.push(
            start_node(move |s| {
                s.database.url = db_url;
                s.bus.redis_url = url;
                s.bus.cluster = true;
                s.server.node_id = format!("n{i}");
                s.limits.send_burst = 10_000;
                if let Some(echo) = s.assistants.get_mut("default") {
                    echo.echo_delay_ms = 40;
                }
            })
            .await,
        );
    }

    // Enough conversations that their channels land on every shard.
    let mut convs = Vec::new();
    for _ in 0..8 {
        convs.push(nodes[0].create_chat("alice", &["bob"]).await);
    }
    let mut bob = nodes[1].connect("bob").await;
    let mut alice = nodes[0].connect("alice").await;
    for conv in &convs {
        bob.join(conv, None).await;
    }
    for (i, conv) in convs.iter().enumerate() {
        for k in 1..=5 {
            alice.say(conv, &format!("{i}-{k}")).await;
        }
    }
    let total = convs.len() * 5;
    let mut got = Vec::new();
    while got.len() < total {
        let f = bob.next_of("message_received").await;
        got.extend(messages(&[f]));
    }
    for (i, _) in convs.iter().enumerate() {
        let mine: Vec<_> = got
            .iter()
            .filter(|(_, c)| c.starts_with(&format!("{i}-")))
            .collect();
        let want: Vec<(i64, String)> = (1..=5).map(|k| (k, format!("{i}-{k}"))).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "conversation {i}");
    }
    let frames = bob.sync().await;
    assert!(messages(&frames).is_empty(), "nothing twice: {frames:?}");

    // Presence in every conversation, whichever shard holds its keys: bob
    // is present everywhere; alice arrives in each, announced once.
    for conv in &convs {
        alice.join(conv, None).await;
    }
    let mut arrived = 0;
    while arrived < convs.len() {
        let f = bob.next_of("presence_changed").await;
        if f["data"]["user_id"] == "alice" {
            assert_eq!(f["data"]["present"], true);
            arrived += 1;
        }
    }
    for conv in &convs {
        let (reply, _) = alice
            .request("presence", serde_json::json!({"conversation_id": conv}))
            .await;
        assert_eq!(reply["data"]["users"], serde_json::json!(["alice", "bob"]));
    }

    // An HTTP-transport connection on n1 takes frames POSTed to n0: the
    // connection directory lives in the cluster too.
    let mut tab =
        common::Client::connect_http(&nodes[1].url(""), &nodes[1].token("bob"), "bob").await;
    tab.http().post_base = nodes[0].url("");
    let (pong, _) = tab.request("ping", serde_json::json!({"via": "n0"})).await;
    assert_eq!(pong["data"]["via"], "n0");

    // An answer written on n0 through the queue; a tab joining on n1
    // mid-answer is caught up from the transcript, then follows live.
    let conv = &convs[0];
    let question: String = (0..40).map(|i| format!("word{i} ")).collect();
    alice.say(conv, question.trim_end()).await;
    let (ack, _) = alice
        .request(
            "stream_response",
            serde_json::json!({"conversation_id": conv}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["data"]["stream_id"].clone();
    alice
        .until(|f| {
            f["type"] == "stream_content" && f["data"]["stream_id"] == id && f["data"]["index"] == 3
        })
        .await;
    let mut late = nodes[1].connect("bob").await;
    late.join(conv, None).await;
    let mut text = String::new();
    let mut next = None;
    let stored = loop {
        let f = late.next().await;
        match f["type"].as_str().unwrap_or("") {
            "stream_snapshot" => {
                text = f["data"]["content"].as_str().unwrap().to_owned();
                next = Some(f["data"]["index"].as_u64().unwrap() + 1);
            }
            "stream_content" => {
                let index = f["data"]["index"].as_u64().unwrap();
                assert_eq!(Some(index), next, "every piece after the snapshot, once");
                text.push_str(f["data"]["content"].as_str().unwrap());
                next = Some(index + 1);
            }
            "stream_complete" => break f["data"]["message"]["content"].clone(),
            _ => {}
        }
    };
    assert!(next.is_some(), "a snapshot came first");
    assert_eq!(serde_json::Value::String(text), stored);
}
