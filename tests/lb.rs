//! Three node processes behind a real nginx (round robin, no stickiness):
//! clients spread over the nodes stay in sync, and stay in sync when one node
//! is restarted behind the balancer; the HTTP transport works through it.

mod common;

use std::time::Duration;

use common::http::HttpLink;
use common::procs::{create_chat, token, Nginx, ProcCluster};
use common::{messages, Client, Closed, WAIT};
use serde_json::{json, Value};

/// `confab_sockets_open` of one node.
async fn sockets_open(metrics_url: String) -> i64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("confab_sockets_open"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Tab {
    user: String,
    client: Client,
    seen: Vec<(i64, String)>,
}

impl Tab {
    fn last(&self) -> i64 {
        self.seen.last().map(|(s, _)| *s).unwrap_or(0)
    }

    fn record(&mut self, frames: &[Value]) {
        self.seen.extend(messages(frames));
    }

    /// Sends a message, keeping every frame that came before the ack.
    async fn say(&mut self, conv: &str, content: &str) -> Value {
        let (ack, before) = self
            .client
            .request(
                "send_message",
                serde_json::json!({"conversation_id": conv, "content": content}),
            )
            .await;
        self.record(&before);
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    }

    /// After its socket closed: keeps what arrived first, reconnects through
    /// the balancer and resumes after the last message seen.
    async fn resume(&mut self, lb: &Nginx, conv: &str, closed: Closed) {
        self.record(&closed.frames);
        let mut client =
            Client::connect_retrying(&lb.ws_url(), &token(&self.user), &self.user).await;
        client.join(conv, Some(self.last())).await;
        self.client = client;
    }

    async fn read_to(&mut self, seq: i64) {
        while self.last() < seq {
            let (f, skipped) = self.client.until(|f| f["type"] == "message_received").await;
            self.record(&skipped);
            self.record(&[f]);
        }
    }
}

/// Six users in one conversation, each with a socket through the balancer.
async fn six_tabs(lb: &Nginx, prefix: &str) -> (String, Vec<Tab>) {
    let users: Vec<String> = (0..6).map(|i| format!("{prefix}{i}")).collect();
    let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
    let conv = create_chat(&lb.url(), &users[0], &others).await;
    let mut tabs = Vec::new();
    for u in &users {
        let mut client = Client::connect(&lb.ws_url(), &token(u), u).await;
        client.join(&conv, None).await;
        tabs.push(Tab {
            user: u.clone(),
            client,
            seen: Vec::new(),
        });
    }
    (conv, tabs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_nginx_stay_in_sync_through_a_node_restart() {
    let mut cluster = ProcCluster::start(3, 1).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let lb = Nginx::start(&ports).await;
    let (conv, mut tabs) = six_tabs(&lb, "u").await;
    // Round robin spread them: every node holds some of them.
    for node in &cluster.nodes {
        assert!(
            sockets_open(node.url("/metrics")).await >= 1,
            "{} holds no socket",
            node.node_id
        );
    }

    let mut seq = 0;
    for round in 0..3 {
        for t in tabs.iter_mut() {
            seq += 1;
            let ack = t.say(&conv, &format!("m{seq}")).await;
            assert_eq!(ack["data"]["seq"], seq, "round {round}");
        }
    }
    for t in tabs.iter_mut() {
        t.read_to(seq).await;
    }

    // Restart one node behind the balancer; its clients come back through it.
    let victim = &mut cluster.nodes[1];
    victim.signal("TERM");
    assert_eq!(victim.wait_exit(Duration::from_secs(20)).await, Some(0));
    let mut moved = 0;
    for t in tabs.iter_mut() {
        match t.client.try_sync().await {
            Ok(frames) => t.record(&frames),
            Err(closed) => {
                assert_eq!(closed.code, Some(1012));
                t.resume(&lb, &conv, closed).await;
                moved += 1;
            }
        }
    }
    assert!(moved >= 1, "the restarted node held some clients");
    cluster.nodes[1].restart().await;

    for t in tabs.iter_mut() {
        seq += 1;
        let ack = t.say(&conv, &format!("m{seq}")).await;
        assert_eq!(ack["data"]["seq"], seq);
    }
    let want: Vec<(i64, String)> = (1..=seq).map(|i| (i, format!("m{i}"))).collect();
    for t in tabs.iter_mut() {
        t.read_to(seq).await;
        assert_eq!(t.seen, want, "{}: every message, in order, once", t.user);
    }
}

/// A rolling restart, as Kubernetes does it: each of three nodes in turn
/// gets SIGTERM while clients keep chatting through the balancer. A client
/// whose node drains reconnects through the balancer, resumes with
/// `since_seq`, and retries its unacknowledged send with the same
/// `client_msg_id`. Nothing is lost, nothing is doubled, all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_traffic_loses_nothing() {
    let mut cluster = ProcCluster::start(3, 1).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let lb = Nginx::start(&ports).await;
    let (conv, mut tabs) = six_tabs(&lb, "r").await;

    let mut sent = Vec::new();
    let mut reconnects = 0;
    for victim in 0..cluster.nodes.len() {
        cluster.nodes[victim].signal("TERM");
        // Keep chatting while the node drains (drain_secs = 1) and exits.
        for round in 0..4 {
            for t in tabs.iter_mut() {
                let content = format!("n{victim}r{round}{}", t.user);
                let data = serde_json::json!({
                    "conversation_id": conv, "content": content, "client_msg_id": content,
                });
                loop {
                    match t.client.try_request("send_message", data.clone()).await {
                        Ok((ack, before)) => {
                            t.record(&before);
                            assert_eq!(ack["type"], "ack", "{ack}");

                            break;
                        }
                        Err(closed) => {
                            assert!(matches!(closed.code, Some(1012) | None), "{closed:?}");
                            t.resume(&lb, &conv, closed).await;
                            reconnects += 1;
                        }
                    }
                }
                sent.push(content);
            }
        }
        let node = &mut cluster.nodes[victim];
        assert_eq!(node.wait_exit(Duration::from_secs(20)).await, Some(0));
        node.restart().await;
    }
    assert!(reconnects >= 1, "some client was on a restarted node");

    let total = sent.len() as i64;
    for t in tabs.iter_mut() {
        // A client whose node went away after its last send learns it here.
        match t.client.try_sync().await {
            Ok(frames) => t.record(&frames),
            Err(closed) => t.resume(&lb, &conv, closed).await,
        }
        t.read_to(total).await;
        let seqs: Vec<i64> = t.seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "{}: each once, in order",
            t.user
        );
        let mut contents: Vec<&String> = t.seen.iter().map(|(_, c)| c).collect();
        contents.sort();
        let mut want: Vec<&String> = sent.iter().collect();
        want.sort();
        assert_eq!(contents, want, "{}: every send stored exactly once", t.user);
    }
    // All tabs saw the same order.
    for t in &tabs[1..] {
        assert_eq!(t.seen, tabs[0].seen);
    }
}

/// An HTTP-transport connection of `user` through the balancer, opened
/// with a ticket. While a restart leaves the balancer no node to offer, it
/// is asked again, as a real client would with backoff.
async fn connect_http(lb: &Nginx, user: &str) -> Client {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = http
            .post(format!("{}/api/v1/chat/tickets", lb.url()))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap();
        if resp.status() == 201 {
            let body: Value = resp.json().await.unwrap();
            let query = format!("ticket={}", body["ticket"].as_str().unwrap());
            if let Ok(link) = HttpLink::open(&lb.url(), &token(user), Some(&query)).await {
                return Client::over_http(link, user).await;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no event stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn send_frame(id: &str, conv: &str, content: &str) -> Value {
    json!({"type": "send_message", "id": id, "data": {"conversation_id": conv, "content": content}})
}

/// The HTTP transport through nginx: the event stream is passed on as it
/// comes; frame POSTs reach the stream whichever node each lands on, and
/// keep their order (one at a time, or several in one array); a draining
/// node ends the stream with a last frame saying 1012, after which a POST
/// to that connection is 404, and the client resumes on another node with a
/// new ticket and `since_seq`, missing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_transport_works_through_nginx_and_a_node_drain() {
    let mut cluster = ProcCluster::start(3, 1).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let lb = Nginx::start(&ports).await;
    let conv = create_chat(&lb.url(), "h0", &["h1"]).await;
    let mut h0 = connect_http(&lb, "h0").await;
    h0.join(&conv, None).await;
    let mut h1 = Client::connect(&lb.ws_url(), &token("h1"), "h1").await;
    h1.join(&conv, None).await;

    // What the stream's client holds: (seq, content) of each message received.
    let mut seen = Vec::new();
    // A message from the socket comes down the stream.
    h1.say(&conv, "from the socket").await;
    let (got, _) = h0.until(|f| f["type"] == "message_received").await;
    seen.extend(messages(&[got]));

    // Six POSTs, each after the previous one's 202: round robin spreads
    // them over the nodes, and they are stored in the order sent.
    for i in 0..6 {
        let (ack, before) = h0
            .request(
                "send_message",
                json!({"conversation_id": conv, "content": format!("post {i}")}),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["data"]["seq"], i + 2, "{ack}");
        seen.extend(messages(&before));
    }
    // Three in one POST: handled in order.
    let batch = (0..3)
        .map(|i| send_frame(&format!("b{i}"), &conv, &format!("batch {i}")))
        .collect();
    h0.http().post(batch).await;
    for i in 0..3 {
        let id = format!("b{i}");
        let (ack, before) = h0.until(|f| f["data"]["ref"] == id.as_str()).await;
        assert_eq!(ack["data"]["seq"], i + 8, "{ack}");
        seen.extend(messages(&before));
    }

    // Drain the node holding the stream: the stream's last frame says so.
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.node_id == h0.node_id)
        .expect("the stream's node is one of ours");
    cluster.nodes[victim].signal("TERM");
    let closed = h0.closed().await;
    assert_eq!(closed.code, Some(1012), "{closed:?}");
    seen.extend(messages(&closed.frames));
    let late = json!([{"type": "ping", "id": "late"}]).to_string();
    let (status, body) = h0.http().post_raw(late).await;
    assert_eq!(status, 404, "a POST to the ended connection: {body}");
    assert_eq!(
        cluster.nodes[victim]
            .wait_exit(Duration::from_secs(20))
            .await,
        Some(0)
    );

    // Meanwhile the socket goes on; the stream's client resumes elsewhere.
    h1.say(&conv, "while the stream was away").await;
    let mut h0 = connect_http(&lb, "h0").await;
    let since = seen.last().map(|(s, _)| *s).unwrap_or(0);
    h0.join(&conv, Some(since)).await;
    while seen.len() < 11 {
        let (f, _) = h0.until(|f| f["type"] == "message_received").await;
        seen.extend(messages(&[f]));
    }

    let mut want = vec!["from the socket".to_owned()];
    want.extend((0..6).map(|i| format!("post {i}")));
    want.extend((0..3).map(|i| format!("batch {i}")));
    want.push("while the stream was away".to_owned());
    let want: Vec<(i64, String)> = (1..).zip(want).collect();
    assert_eq!(seen, want, "every message once, in order");
}
