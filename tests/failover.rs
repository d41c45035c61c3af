//! Real node processes sharing Redis and one database: a node killed with
//! SIGKILL or drained with SIGTERM costs its clients a reconnect, never a
//! message.

mod common;

use std::time::Duration;

use common::procs::{self, token, NodeProcess, ProcCluster};
use common::{messages, Client};
use serde_json::json;

async fn create_chat(node: &NodeProcess, owner: &str, others: &[&str]) -> String {
    procs::create_chat(&node.url(""), owner, others).await
}

/// A reader that remembers the highest seq it has seen.
struct Reader {
    client: Client,
    seen: Vec<(i64, String)>,
}

impl Reader {
    async fn join(url: &str, conv: &str, since: Option<i64>) -> Reader {
        let mut client = Client::connect(url, &token("bob"), "bob").await;
        client.join(conv, since).await;
        Reader {
            client,
            seen: Vec::new(),
        }
    }

    fn last(&self) -> i64 {
        self.seen.last().map(|(s, _)| *s).unwrap_or(0)
    }

    /// Reads messages until the socket ends; returns the close code.
    async fn read_until_closed(&mut self) -> Option<u16> {
        let closed = self.client.closed().await;
        self.seen.extend(messages(&closed.frames));
        closed.code
    }

    async fn read_until_seq(&mut self, seq: i64) {
        if self.last() >= seq {
            return;
        }
        let (last, frames) = self
            .client
            .until(|f| f["data"]["message"]["seq"] == seq)
            .await;
        self.seen.extend(messages(&frames));
        self.seen.extend(messages(&[last]));
    }
}

fn assert_complete(seen: &[(i64, String)], total: i64) {
    let want: Vec<(i64, String)> = (1..=total).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(seen, want.as_slice(), "every message, in order, once");
}

/// Sends m{from}..=m{to} from alice on `url`.
async fn send_range(url: String, conv: String, from: i64, to: i64) {
    let mut alice = Client::connect(&url, &token("alice"), "alice").await;
    for i in from..=to {
        let ack = alice.say(&conv, &format!("m{i}")).await;
        assert_eq!(ack["data"]["seq"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_elsewhere_with_since_seq() {
    let s = ProcCluster::start(2, 1).await;
    let conv = create_chat(&s.nodes[1], "alice", &["bob"]).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(Reader::join(&s.nodes[0].ws_url(), &conv, None).await);
    }
    send_range(s.nodes[1].ws_url(), conv.clone(), 1, 30).await;
    for r in readers.iter_mut() {
        r.read_until_seq(30).await;
    }
    // Alice keeps writing while the readers' node dies.
    let writer = tokio::spawn(send_range(s.nodes[1].ws_url(), conv.clone(), 31, 80));
    s.nodes[0].signal("KILL");
    for r in readers.iter_mut() {
        r.read_until_closed().await;
        let since = r.last();
        let mut again = Reader::join(&s.nodes[1].ws_url(), &conv, Some(since)).await;
        again.seen = std::mem::take(&mut r.seen);
        *r = again;
    }
    writer.await.unwrap();
    for r in readers.iter_mut() {
        r.read_until_seq(80).await;
        assert_complete(&r.seen, 80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1012_and_not_ready_then_exits_zero() {
    let mut s = ProcCluster::start(2, 2).await;
    let conv = create_chat(&s.nodes[0], "alice", &["bob"]).await;
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(Reader::join(&s.nodes[0].ws_url(), &conv, None).await);
    }
    send_range(s.nodes[1].ws_url(), conv.clone(), 1, 20).await;
    let writer = tokio::spawn(send_range(s.nodes[1].ws_url(), conv.clone(), 21, 60));

    s.nodes[0].signal("TERM");
    // Draining: not ready while it still closes its sockets (they close
    // over the 2 s window, so the node is still up to answer).
    let ready_url = s.nodes[0].url("/ready");
    procs::wait_until(
        "the draining node to report not ready",
        Duration::from_secs(10),
        || {
            let url = ready_url.clone();
            async move {
                let status = reqwest::get(url)
                    .await
                    .expect("a draining node still answers")
                    .status();
                status == 503
            }
        },
    )
    .await;
    for r in readers.iter_mut() {
        assert_eq!(r.read_until_closed().await, Some(1012));
    }
    assert_eq!(s.nodes[0].wait_exit(Duration::from_secs(20)).await, Some(0));

    for r in readers.iter_mut() {
        let since = r.last();
        let mut again = Reader::join(&s.nodes[1].ws_url(), &conv, Some(since)).await;
        again.seen = std::mem::take(&mut r.seen);
        *r = again;
    }
    writer.await.unwrap();
    for r in readers.iter_mut() {
        r.read_until_seq(60).await;
        assert_complete(&r.seen, 60);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_node_dies_is_reported_interrupted_elsewhere() {
    let llm = common::fake_llm::FakeLlm::start().await;
    let mut env = vec![
        (
            "CONFAB_STREAMING__STREAM_TIMEOUT_SECS".to_string(),
            "1.5".to_string(),
        ),
        (
            "CONFAB_STREAMING__HEARTBEAT_SECS".to_string(),
            "0.3".to_string(),
        ),
    ];
    for (name, model) in [("SLOW", "slow"), ("OK", "ok")] {
        env.push((
            format!("CONFAB_ASSISTANTS__{name}__PROVIDER"),
            "openai".into(),
        ));
        env.push((format!("CONFAB_ASSISTANTS__{name}__MODEL"), model.into()));
        env.push((
            format!("CONFAB_ASSISTANTS__{name}__BASE_URL"),
            llm.base_url.clone(),
        ));
    }
    let s = ProcCluster::start_with(2, 1, &env).await;
    let conv = create_chat(&s.nodes[0], "alice", &["bob"]).await;
    let mut alice = Client::connect(&s.nodes[0].ws_url(), &token("alice"), "alice").await;
    let mut bob = Client::connect(&s.nodes[1].ws_url(), &token("bob"), "bob").await;
    alice.join(&conv, None).await;
    bob.join(&conv, None).await;
    alice.say(&conv, "a long story please").await;
    let (ack, _) = alice
        .request(
            "stream_response",
            json!({"conversation_id": conv, "assistant_id": "slow"}),
        )
        .await;
    let stream = ack["data"]["stream_id"].as_str().unwrap().to_owned();
    bob.until(|f| f["type"] == "stream_content" && f["data"]["index"] == 2)
        .await;

    s.nodes[0].signal("KILL");
    let (err, _) = bob
        .until(|f| f["type"] == "stream_error" && f["data"]["stream_id"] == stream.as_str())
        .await;
    assert_eq!(err["data"]["code"], "INTERRUPTED");
    assert_eq!(err["data"]["conversation_id"], conv.as_str());

    // The dead node's claim lapsed with it: a new answer may start.
    let (ack, _) = bob
        .request(
            "stream_response",
            json!({"conversation_id": conv, "assistant_id": "ok"}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (done, _) = bob.until(|f| f["type"] == "stream_complete").await;
    assert_eq!(done["data"]["message"]["content"], common::fake_llm::ANSWER);
}
