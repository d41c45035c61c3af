//! The bench's WebSocket client: tokens minted by confab's authenticator,
//! connections from several loopback source addresses, auth and join.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Mints tokens the nodes accept: confab's own authenticator, on the
/// embedded auth settings (the development secret unless `secret` is given).
pub struct Tokens {
    auth: confab::auth::Authenticator,
}

impl Tokens {
    pub fn new(secret: Option<&str>) -> Self {
        let mut settings = confab::config::Settings::embedded().auth;
        if let Some(secret) = secret {
            settings.jwt_secret = secret.to_owned();
        }
        Self {
            auth: confab::auth::Authenticator::new(&settings)
                .expect("the auth settings are usable"),
        }
    }

    pub fn mint(&self, user: &str) -> String {
        self.auth
            .mint(user, None, Duration::from_secs(24 * 3600))
            .expect("an HS256 token")
    }
}

/// Spreads sockets over 127.0.0.1, 127.0.0.2, ... so one source address's
/// ephemeral ports are never the limit.
pub struct Sources {
    next: AtomicUsize,
    count: usize,
}

impl Sources {
    pub fn new(count: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            count: count.max(1),
        }
    }

    fn pick(&self) -> IpAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        IpAddr::from([127, 0, 0, 1 + i as u8])
    }
}

/// `http://host:port` -> the node's socket address.
pub fn addr_of(base: &str) -> SocketAddr {
    let hostport = base
        .trim_start_matches("http://")
        .trim_start_matches("ws://");
    let hostport = hostport.split('/').next().unwrap();
    hostport.parse().expect("node URLs are http://IP:PORT")
}

/// Opens a socket from a chosen source address and authenticates.
/// Returns the socket and the time to `auth_success`.
pub async fn connect(
    base: &str,
    token: &str,
    sources: &Sources,
) -> std::io::Result<(Ws, Duration)> {
    let start = Instant::now();
    let mut ws = open(base, "/api/v1/chat/ws", sources).await?;
    ws.send(Message::text(
        json!({"type": "auth", "token": token}).to_string(),
    ))
    .await
    .map_err(std::io::Error::other)?;
    let ok = next(&mut ws)
        .await
        .ok_or_else(|| std::io::Error::other("closed before auth"))?;
    if ok["type"] != "auth_success" {
        return Err(std::io::Error::other(format!("auth failed: {ok}")));
    }
    Ok((ws, start.elapsed()))
}

/// Opens a WebSocket to `path_and_query` on the node at `base`, from a
/// chosen source address, without speaking any protocol over it yet.
pub async fn open(base: &str, path_and_query: &str, sources: &Sources) -> std::io::Result<Ws> {
    let target = addr_of(base);
    let socket = TcpSocket::new_v4()?;
    defer_port_choice(&socket)?;
    socket.bind(SocketAddr::new(sources.pick(), 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{target}{path_and_query}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(std::io::Error::other)?;
    Ok(ws)
}

/// A small read buffer. tungstenite's default is 128 KiB, and it zeroes
/// the unused part on every read: with thousands of sockets that zeroing
/// (and the page faults behind it) was the generator's largest cost.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Lets `connect` choose the source port instead of `bind`. A `bind` to
/// port 0 scans every port in use for a conflict: with thousands of sockets
/// open that scan took most of the load generator's CPU and capped its
/// connect rate. `connect` picks a port by the whole 4-tuple at once.
fn defer_port_choice(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int of the
    // size given, as setsockopt expects for this option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The next text frame as JSON; None when the socket ends.
pub async fn next(ws: &mut Ws) -> Option<Value> {
    serde_json::from_str(&next_text(ws).await?).ok()
}

/// The next text frame, raw; None when the socket ends.
pub async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Sends a frame.
pub async fn send(ws: &mut Ws, frame: Value) -> bool {
    ws.send(Message::text(frame.to_string())).await.is_ok()
}

/// Joins a conversation (optionally from `since`) and waits for `joined`.
pub async fn join(ws: &mut Ws, conv: &str, since: Option<i64>) -> Option<Value> {
    let mut data = json!({"conversation_id": conv});
    if let Some(s) = since {
        data["since_seq"] = s.into();
    }
    send(
        ws,
        json!({"type": "join_conversation", "id": "join", "data": data}),
    )
    .await;
    loop {
        let f = next(ws).await?;
        if f["data"]["ref"] == "join" {
            return Some(f);
        }
    }
}

/// Creates a conversation over REST; returns its id.
pub async fn create_chat(base: &str, token: &str, participants: &[String]) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/chat/chats"))
        .bearer_auth(token)
        .json(&json!({"participant_ids": participants}))
        .send()
        .await
        .expect("node reachable")
        .json()
        .await
        .expect("JSON answer");
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create failed: {body}"))
        .to_owned()
}

/// Microseconds since the Unix epoch (the send timestamp carried in messages).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}
