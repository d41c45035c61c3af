//! A hostile or broken client against one node: it gets a clear error or a
//! close, and the node stays usable for everyone else, with its memory
//! bounded in bytes.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::procs::{self, wait_until, NodeProcess};
use common::raw::RawConn;
use common::{start_node, Client, TestNode, WAIT};
use confab::model::UserId;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A metric's value in `/metrics` text, summed over its labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Sockets the node closed with `code`.
fn closed_with(node: &TestNode, code: u16) -> f64 {
    let label = format!(r#"code="{code}""#);
    node.node
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("confab_sockets_closed_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Sockets of `user` the node holds.
fn sockets_of(node: &TestNode, user: &str) -> usize {
    node.node.hub.connections_of(&UserId::parse(user).unwrap())
}

/// A TCP connection from `source` (any 127/8 address is this machine).
async fn tcp_from(source: IpAddr, to: SocketAddr) -> RawConn {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    RawConn::new(socket.connect(to).await.unwrap())
}

/// No rate limit gets in the way of a client that floods on purpose.
fn unthrottled(s: &mut confab::config::Settings) {
    s.limits.send_rate_per_sec = 1e6;
    s.limits.send_burst = 1_000_000;
    s.limits.frame_burst = 1_000_000;
}

/// Stores `count` messages of `chars` characters in a new chat of alice's
/// with mallory.
async fn chat_with_big_messages(node: &TestNode, count: usize, chars: usize) -> String {
    let conv = node.create_chat("alice", &["mallory"]).await;
    // Not joined: only the sends' replies come back.
    let mut alice = node.connect("alice").await;
    let text = "x".repeat(chars);
    for _ in 0..count {
        alice
            .send(
                json!({"type": "send_message", "data": {"conversation_id": conv, "content": text}}),
            )
            .await;
    }
    alice.sync().await;
    conv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_sockets_asking_for_big_pages_are_closed_and_memory_stays_bounded() {
    let budget = 2 * 1024 * 1024;
    let node = start_node(|s| {
        unthrottled(s);
        s.limits.max_outbound_bytes_per_socket = budget;
        s.limits.history_page_max_bytes = 512 * 1024;
    })
    .await;
    let conv = chat_with_big_messages(&node, 200, 8000).await;

    // Four sockets of one user ask for the largest pages and never read.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(node.connect("mallory").await);
    }
    for round in 0..100 {
        for s in sockets.iter_mut() {
            let frame = json!({"type": "load_messages", "id": format!("h{round}"),
                               "data": {"conversation_id": conv, "limit": 200}});
            // A socket the node closed refuses more writes: that is fine.
            let _ = s.ws().send(Message::text(frame.to_string())).await;
        }
        assert!(
            node.node.metrics.outbound_bytes.get() as usize <= 4 * budget,
            "the node holds at most each socket's budget"
        );
    }
    // ...so the node closes every one of them as too slow.
    wait_until(
        "the never-reading sockets to be closed with 4009",
        WAIT,
        || async { sockets_of(&node, "mallory") == 0 && closed_with(&node, 4009) == 4.0 },
    )
    .await;
    wait_until("queued bytes to be given back", WAIT, || async {
        node.node.metrics.outbound_bytes.get() == 0
    })
    .await;

    // Everyone else is served as before.
    let mut reader = node.connect("alice").await;
    let (page, _) = reader
        .request(
            "load_messages",
            json!({"conversation_id": conv, "limit": 200}),
        )
        .await;
    assert_eq!(page["type"], "messages");
    let got = page["data"]["messages"].as_array().unwrap().len();
    assert!(
        got < 200,
        "a page stops at history_page_max_bytes ({got} messages)"
    );
    assert_eq!(page["data"]["has_more"], true, "the rest is announced");
    let newest = page["data"]["messages"][got - 1]["seq"].as_i64().unwrap();
    assert_eq!(
        newest, 200,
        "a page before the end keeps the newest messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expires_on_time_while_a_reply_waits_for_a_reader() {
    let node = start_node(|s| {
        unthrottled(s);
        // Replies wait for room (two frames), never for bytes.
        s.limits.outbound_queue = 2;
        s.limits.max_outbound_bytes_per_socket = 1 << 30;
        s.server.write_timeout_secs = 3600.0;
    })
    .await;
    let conv = chat_with_big_messages(&node, 200, 8000).await;
    let token = node
        .node
        .auth
        .mint("mallory", None, Duration::from_secs(3))
        .unwrap();
    let url = format!("ws://{}/api/v1/chat/ws", node.addr);
    let mut c = Client::connect(&url, &token, "mallory").await;
    for round in 0..40 {
        let frame = json!({"type": "load_messages", "id": format!("h{round}"),
                           "data": {"conversation_id": conv, "limit": 200}});
        if c.ws().send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
    }
    // The reader is stuck behind a full queue, yet the token's expiry
    // still ends the socket.
    wait_until(
        "the expired socket to be closed with 4003",
        WAIT,
        || async { sockets_of(&node, "mallory") == 0 && closed_with(&node, 4003) == 1.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_auth_get_the_error_and_the_close_not_a_reset() {
    let node = start_node(|_| {}).await;
    let mut c = node.raw().await;
    // Several frames at once, none of them auth: the node must answer the
    // first and then read the rest, so the client is not reset under its
    // error and close frames.
    for i in 0..5 {
        c.send(json!({"type": "ping", "id": format!("p{i}"), "data": {"pad": "y".repeat(2000)}}))
            .await;
    }
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4001), "{closed:?}");
    assert_eq!(closed.frames.len(), 1, "{closed:?}");
    assert_eq!(closed.frames[0]["data"]["code"], "AUTH_REQUIRED");

    // A close before auth gets its code back.
    let mut c = node.raw().await;
    c.ws()
        .close(Some(CloseFrame {
            code: CloseCode::from(4321),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(c.closed().await.code, Some(4321));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_closed_by_the_header_timeout() {
    let node = start_node(|s| s.server.header_timeout_secs = 1.0).await;
    // Headers dribbled a line at a time, forever.
    let mut dribbler = TcpStream::connect(node.addr).await.unwrap();
    dribbler
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = RawConn::connect(node.addr).await.unwrap();
    // A keep-alive connection that goes quiet after one request.
    let mut keep_alive = RawConn::connect(node.addr).await.unwrap();
    keep_alive
        .send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = keep_alive.head().await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let dribbling = async {
        for _ in 0..(WAIT.as_millis() / 100) {
            if dribbler.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(dribbling.await, "the dribbling client is cut off");
    assert!(silent.ended().await, "a silent connection is closed");
    assert!(
        keep_alive.ended().await,
        "an idle keep-alive connection is closed"
    );

    // The node serves as before.
    let (status, _) = node.rest("alice", "GET", "/api/v1/chat/chats", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_in_size_and_time() {
    let node = start_node(|s| s.server.body_timeout_secs = 1.0).await;
    let head = |len: &str| {
        format!(
            "POST /api/v1/chat/chats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            node.token("alice")
        )
    };
    // A body of 2^63 bytes announced: refused at once, nothing read.
    let mut huge = RawConn::connect(node.addr).await.unwrap();
    huge.send(head("9223372036854775808").as_bytes())
        .await
        .unwrap();
    let status = huge.head().await.expect("an answer without the body");
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    // A body that stops arriving: 408.
    let mut slow = RawConn::connect(node.addr).await.unwrap();
    slow.send(format!("{}{{\"title\":", head("100")).as_bytes())
        .await
        .unwrap();
    let status = slow
        .head()
        .await
        .expect("an answer once the body timeout passes");
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    let (_, chats) = node.rest("alice", "GET", "/api/v1/chat/chats", None).await;
    assert_eq!(chats, json!([]), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_not_yet_authenticated_are_limited_per_address_and_in_all() {
    let node = start_node(|s| {
        s.limits.max_pending_connections = 4;
        s.limits.max_pending_connections_per_ip = 2;
        s.server.header_timeout_secs = 600.0;
    })
    .await;
    let one: IpAddr = [127, 0, 0, 1].into();
    let two: IpAddr = [127, 0, 0, 2].into();
    let three: IpAddr = [127, 0, 0, 3].into();
    // An authenticated socket from the first address no longer counts.
    let mut canary = node.connect("carol").await;

    let _a = tcp_from(one, node.addr).await;
    let _b = tcp_from(one, node.addr).await;
    let mut refused = tcp_from(one, node.addr).await;
    assert!(
        refused.ended().await,
        "a third pending connection from one address is closed"
    );

    let _c = tcp_from(two, node.addr).await;
    let _d = tcp_from(two, node.addr).await;
    let mut over = tcp_from(three, node.addr).await;
    assert!(
        over.ended().await,
        "a fifth pending connection on the node is closed"
    );

    let text = node.node.metrics.render();
    assert!(text.contains(r#"limit="pending_per_ip""#), "{text}");
    assert!(text.contains(r#"limit="pending""#), "{text}");
    // Authenticated sockets are served throughout.
    let (pong, _) = canary.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_node_backs_off_and_serves_its_open_sockets() {
    let dir = tempfile::tempdir().unwrap();
    // A node process with few descriptors and no capacity limit of its own,
    // so idle connections exhaust its descriptors and `accept` fails.
    let settings = [
        ("CONFAB_SERVER__MAX_CONNECTIONS", "100000"),
        ("CONFAB_SERVER__HEADER_TIMEOUT_SECS", "600"),
        ("CONFAB_LIMITS__MAX_PENDING_CONNECTIONS", "100000"),
        ("CONFAB_LIMITS__MAX_PENDING_CONNECTIONS_PER_IP", "0"),
        // One database connection, opened at start: no new descriptor is
        // needed for the canary's sends while there are none to be had.
        ("CONFAB_DATABASE__MAX_CONNECTIONS", "1"),
        ("RUST_LOG", "error"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let node = NodeProcess::start_under(
        &["prlimit", "--nofile=256:256"],
        "starved",
        dir.path(),
        &settings,
    )
    .await;
    let base = node.url("");
    let conv = procs::create_chat(&base, "alice", &[]).await;
    let url = node.ws_url();
    let mut canary = Client::connect(&url, &procs::token("alice"), "alice").await;
    canary.join(&conv, None).await;
    let addr = node.addr();

    // More idle connections than the node has descriptors.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // The canary is served while `accept` fails.
    let ack = canary.say(&conv, "still here").await;
    assert_eq!(ack["data"]["seq"], 1);
    let (pong, _) = canary.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");

    // Once the idle connections go, new clients get in again.
    drop(idle);
    let mut late = Client::connect_retrying(&url, &procs::token("bob"), "bob").await;
    let (pong, _) = late.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors = metric(&text, "confab_accept_errors_total");
    assert!(errors >= 1.0, "accept ran out of descriptors:\n{text}");
    // Backing off (10 ms doubling to 1 s) makes a few dozen attempts; a
    // loop that spins makes millions.
    assert!(
        errors < 1000.0,
        "accept backs off instead of spinning: {errors} errors"
    );
}
