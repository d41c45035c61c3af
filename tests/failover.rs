//! Real node processes sharing Redis and one database: a node killed with
//! SIGKILL or drained with SIGTERM costs its clients a reconnect, never a
//! message.

mod common;

use std::time::Duration;

use common::procs::{self, token, NodeProcess, ProcCluster};
use common::{messages, Client};

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
    let first = readers[0].read_until_closed().await;
    assert_eq!(first, Some(1012));
    // Still draining: not ready, and no new sockets.
    let ready = reqwest::get(s.nodes[0].url("/ready"))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503);
    for r in readers.iter_mut().skip(1) {
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
