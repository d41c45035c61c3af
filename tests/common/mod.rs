//! Test support: nodes started in-process on free ports with their own
//! SQLite file, and a WebSocket client that waits for frames with a timeout.
#![allow(dead_code)]

pub mod fake_llm;
pub mod http;
pub mod procs;
pub mod raw;
pub mod relay;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use confab::config::Settings;
use confab::node::{self, Node};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Which transport `TestNode::connect` opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Http,
}

tokio::task_local! {
    static TRANSPORT: Transport;
}

/// Runs `test` with `TestNode::connect` opening `transport`.
pub async fn over<F: std::future::Future>(transport: Transport, test: F) -> F::Output {
    TRANSPORT.scope(transport, test).await
}

/// The transport `TestNode::connect` opens (WebSockets unless `over` says).
pub fn transport() -> Transport {
    TRANSPORT.try_with(|t| *t).unwrap_or(Transport::WebSocket)
}

/// A test that runs once per transport, as `name::websocket` and
/// `name::http`: what a client sees must not depend on the transport.
#[macro_export]
macro_rules! on_every_transport {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            $(#[$meta])*
            async fn websocket() {
                common::over(common::Transport::WebSocket, body()).await
            }

            $(#[$meta])*
            async fn http() {
                common::over(common::Transport::Http, body()).await
            }
        }
    };
}

/// A node serving on 127.0.0.1 with a fresh SQLite database.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

pub async fn start_node(tweak: impl FnOnce(&mut Settings)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded();
    settings.database.url = format!("sqlite://{}/confab.db?mode=rwc", dir.path().display());
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.drain_secs = 0;
    tweak(&mut settings);
    let node = Node::start(settings).await.expect("node starts");
    let (listener, addr) = confab::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(node::serve(node.clone(), listener, async move {
        let _ = rx.await;
    }));
    TestNode {
        addr,
        node,
        shutdown: Some(tx),
        _dir: dir,
    }
}

/// `n` in-process nodes (`n0`, `n1`, ...) sharing Redis at `redis_url` and
/// one SQLite file in `db`, each also set up by `tweak`.
pub async fn start_cluster(
    n: usize,
    redis_url: &str,
    db: &tempfile::TempDir,
    tweak: impl Fn(&mut Settings),
) -> Vec<TestNode> {
    let url = format!("sqlite://{}/shared.db?mode=rwc", db.path().display());
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(
            start_node(|s| {
                s.database.url = url.clone();
                s.bus.redis_url = redis_url.to_owned();
                s.server.node_id = format!("n{i}");
                tweak(s);
            })
            .await,
        );
    }
    nodes
}

impl TestNode {
    pub fn token(&self, user: &str) -> String {
        self.node
            .auth
            .mint(user, None, Duration::from_secs(3600))
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A socket that has not authenticated yet.
    pub async fn raw(&self) -> Client {
        Client::open(&format!("ws://{}/api/v1/chat/ws", self.addr)).await
    }

    /// An authenticated connection of `user`, over the test's transport.
    pub async fn connect(&self, user: &str) -> Client {
        self.connect_with(&self.token(user), user).await
    }

    /// A connection authenticated with `token` (for `user`), over the
    /// test's transport.
    pub async fn connect_with(&self, token: &str, user: &str) -> Client {
        match transport() {
            Transport::WebSocket => self.raw().await.authenticate(token, user).await,
            Transport::Http => Client::connect_http(&self.url(""), token, user).await,
        }
    }

    /// REST call with the user's token; returns status and JSON body.
    pub async fn rest(
        &self,
        user: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = reqwest::Client::new();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client
            .request(method, self.url(path))
            .bearer_auth(self.token(user));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// Creates a conversation owned by `owner` with `others`; returns its id.
    pub async fn create_chat(&self, owner: &str, others: &[&str]) -> String {
        let (status, body) = self
            .rest(
                owner,
                "POST",
                "/api/v1/chat/chats",
                Some(json!({"title": "t", "participant_ids": others})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A test's connection: a WebSocket, or the HTTP transport.
pub struct Client {
    link: Link,
    pub user: String,
    /// The node holding the socket, from `auth_success`.
    pub node_id: String,
    /// The `auth_success` frame the connection was greeted with.
    pub greeting: Value,
    next_id: u64,
}

enum Link {
    Ws(Ws),
    Http(http::HttpLink),
}

/// How a socket ended.
#[derive(Debug)]
pub struct Closed {
    pub code: Option<u16>,
    /// Text frames received before the close.
    pub frames: Vec<Value>,
}

impl Client {
    /// Opens a socket without authenticating.
    pub async fn open(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Client::new(ws)
    }

    fn new(ws: Ws) -> Client {
        Client::with(Link::Ws(ws))
    }

    fn with(link: Link) -> Client {
        Client {
            link,
            user: String::new(),
            node_id: String::new(),
            greeting: Value::Null,
            next_id: 0,
        }
    }

    /// Opens an HTTP-transport connection of `user` on the node at `base`
    /// (bearer token); its first frame, `auth_success`, is read.
    pub async fn connect_http(base: &str, token: &str, user: &str) -> Client {
        let link = http::HttpLink::open(base, token, None)
            .await
            .expect("the event stream opens");
        Client::with(Link::Http(link)).greeted(user).await
    }

    /// An HTTP-transport connection whose stream is `link`, once greeted.
    pub async fn over_http(link: http::HttpLink, user: &str) -> Client {
        Client::with(Link::Http(link)).greeted(user).await
    }

    async fn greeted(mut self, user: &str) -> Client {
        let ok = self.next().await;
        assert_eq!(ok["type"], "auth_success", "{ok}");
        assert_eq!(ok["data"]["user_id"], user);
        self.user = user.to_owned();
        self.node_id = ok["data"]["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Link::Http(link) = &mut self.link {
            link.connection_id = ok["data"]["connection_id"].as_str().unwrap().to_owned();
        }
        self.greeting = ok;
        self
    }

    /// The WebSocket (panics on the HTTP transport).
    pub fn ws(&mut self) -> &mut Ws {
        match &mut self.link {
            Link::Ws(ws) => ws,
            Link::Http(_) => panic!("a WebSocket test on the HTTP transport"),
        }
    }

    /// The HTTP-transport link (panics on a WebSocket).
    pub fn http(&mut self) -> &mut http::HttpLink {
        match &mut self.link {
            Link::Http(link) => link,
            Link::Ws(_) => panic!("an HTTP-transport test on a WebSocket"),
        }
    }

    /// The next message of any kind; None once the connection ended.
    async fn recv(&mut self) -> Option<Message> {
        match &mut self.link {
            Link::Ws(ws) => ws.next().await.and_then(Result::ok),
            Link::Http(link) => link.next().await,
        }
    }

    /// Opens a socket and authenticates as `user` with `token`.
    pub async fn connect(url: &str, token: &str, user: &str) -> Client {
        Client::open(url).await.authenticate(token, user).await
    }

    /// Like `connect`, but while the balancer has no node to offer (502 or
    /// 503 during restarts) it retries every 100 ms for up to `WAIT`, as
    /// a real client reconnects with backoff.
    pub async fn connect_retrying(url: &str, token: &str, user: &str) -> Client {
        let deadline = tokio::time::Instant::now() + WAIT;
        let ws = loop {
            match tokio_tungstenite::connect_async(url).await {
                Ok((ws, _)) => break ws,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "no node: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Client::new(ws).authenticate(token, user).await
    }

    async fn authenticate(mut self, token: &str, user: &str) -> Client {
        let c = &mut self;
        c.send(json!({"type": "auth", "token": token})).await;
        let ok = c.next().await;
        assert_eq!(ok["type"], "auth_success", "{ok}");
        assert_eq!(ok["data"]["user_id"], user);
        c.user = user.to_owned();
        c.node_id = ok["data"]["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        c.greeting = ok;
        self
    }

    pub async fn send(&mut self, frame: Value) {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::text(frame.to_string())).await.unwrap(),
            Link::Http(link) => link.post(vec![frame]).await,
        }
    }

    pub async fn send_text(&mut self, text: String) {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::text(text)).await.unwrap(),
            Link::Http(link) => {
                let (status, body) = link.post_raw(text).await;
                assert_eq!(status, 202, "frames POST: {body}");
            }
        }
    }

    /// The next message of any kind; panics if none comes within `WAIT` or
    /// the connection ends.
    pub async fn next_message(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.recv())
            .await
            .expect("a frame within the timeout")
            .expect("connection open")
    }

    /// The next text frame; panics if none comes within `WAIT` or the socket closes.
    pub async fn next(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("socket closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Frames until one matches; returns it and the frames skipped before it.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let f = self.next().await;
            if pred(&f) {
                return (f, skipped);
            }
            skipped.push(f);
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.until(|f| f["type"] == kind).await.0
    }

    /// Sends a frame with a fresh `id` and returns the reply carrying it as
    /// `ref`, and the frames that came before it.
    pub async fn request(&mut self, kind: &str, data: Value) -> (Value, Vec<Value>) {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send(json!({"type": kind, "id": id, "data": data}))
            .await;
        self.until(|f| f["data"]["ref"] == id.as_str()).await
    }

    pub async fn join(&mut self, conv: &str, since: Option<i64>) -> Value {
        let mut data = json!({"conversation_id": conv});
        if let Some(s) = since {
            data["since_seq"] = s.into();
        }
        let (reply, _) = self.request("join_conversation", data).await;
        assert_eq!(reply["type"], "joined", "{reply}");
        reply
    }

    /// Sends a message and returns its ack.
    pub async fn say(&mut self, conv: &str, content: &str) -> Value {
        let (ack, _) = self
            .request(
                "send_message",
                json!({"conversation_id": conv, "content": content}),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    }

    /// Waits for the server to close the socket.
    pub async fn closed(&mut self) -> Closed {
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.recv())
                .await
                .expect("the connection closes within the timeout");
            match msg {
                Some(Message::Text(t)) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Message::Close(c)) => {
                    return Closed {
                        code: c.map(|c| u16::from(c.code)),
                        frames,
                    }
                }
                Some(_) => continue,
                None => return Closed { code: None, frames },
            }
        }
    }

    /// Like `sync`, but a socket that was closed reports how instead of panicking.
    pub async fn try_sync(&mut self) -> Result<Vec<Value>, Closed> {
        self.try_request("ping", json!({}))
            .await
            .map(|(_, before)| before)
    }

    /// Like `request`, but a socket that closes first reports how (with
    /// the frames it received) instead of panicking.
    pub async fn try_request(
        &mut self,
        kind: &str,
        data: Value,
    ) -> Result<(Value, Vec<Value>), Closed> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        let frame = json!({"type": kind, "id": id, "data": data});
        match &mut self.link {
            Link::Ws(ws) => {
                let _ = ws.send(Message::text(frame.to_string())).await;
            }
            Link::Http(link) => {
                // A connection that is gone answers 404; the stream says why.
                let _ = link.post_raw(json!([frame]).to_string()).await;
            }
        }
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.recv())
                .await
                .expect("a reply or a close within the timeout");
            match msg {
                Some(Message::Text(t)) => {
                    let f: Value = serde_json::from_str(&t).unwrap();
                    if f["data"]["ref"] == id.as_str() {
                        return Ok((f, frames));
                    }
                    frames.push(f);
                }
                Some(Message::Close(c)) => {
                    return Err(Closed {
                        code: c.map(|c| u16::from(c.code)),
                        frames,
                    })
                }
                Some(_) => continue,
                None => return Err(Closed { code: None, frames }),
            }
        }
    }

    /// Round-trips a ping, proving every frame queued before it has arrived.
    /// Returns the frames that came first.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.request("ping", json!({})).await.1
    }
}

/// The `message_received` frames among `frames`, as (seq, content).
pub fn messages(frames: &[Value]) -> Vec<(i64, String)> {
    frames
        .iter()
        .filter(|f| f["type"] == "message_received")
        .map(|f| {
            (
                f["data"]["message"]["seq"].as_i64().unwrap(),
                f["data"]["message"]["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A fresh, empty Postgres database on the server of
/// `CONFAB_TEST_POSTGRES_URL`, as a URL; None (the test skips its Postgres
/// half) when the variable is not set.
pub async fn fresh_postgres() -> Option<String> {
    use sea_orm::{ConnectionTrait, Database};
    let Ok(url) = std::env::var("CONFAB_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set CONFAB_TEST_POSTGRES_URL to run the Postgres half");
        return None;
    };
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = Database::connect(&url).await.expect("Postgres answers");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    let (server, rest) = url.rsplit_once('/').expect("a database URL");
    let query = rest.split_once('?').map(|(_, q)| format!("?{q}"));
    Some(format!("{server}/{name}{}", query.unwrap_or_default()))
}
