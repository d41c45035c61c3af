//! RFC 6455 conformance over a real socket. A client library refuses to send
//! broken frames, so this test speaks the protocol by hand: a raw TCP
//! stream, a hand-written upgrade request and hand-built masked frames.
//!
//! Every case ends with the closing handshake: the node sends its close
//! frame with the code the RFC gives, the client answers with its own, and
//! the node then ends the TCP connection cleanly (EOF, not a reset).
//!
//! Cases run concurrently, each on a socket of its own, and every failure
//! is collected so one run names all the cases that do not hold.

mod common;

use std::future::Future;
use std::pin::Pin;

use common::raw::{
    frame, frame_with, Frame, RawConn, BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT,
};
use common::{start_node, TestNode};
use futures_util::future::join_all;
use serde_json::{json, Value};

/// `limits.max_frame_bytes` of the node under test: small, so that a
/// message over it is cheap to send.
const MAX_FRAME: usize = 4096;

/// A case's outcome: Err says what went wrong.
type Outcome = Result<(), String>;

/// A close frame's payload: the code, then the reason's bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason);
    out
}

/// The code a close frame carries; None if its payload is empty.
fn close_code(frame: &Frame) -> Result<Option<u16>, String> {
    match frame.payload[..] {
        [] => Ok(None),
        [a, b, ..] => Ok(Some(u16::from_be_bytes([a, b]))),
        _ => Err(format!("the node's close payload is one byte: {frame:?}")),
    }
}

/// A `ping` request and the `pong` it must get back.
fn ping_request(id: &str, text: &str) -> (String, Value) {
    let request = json!({"type": "ping", "id": id, "data": {"s": text}}).to_string();
    let reply = json!({"type": "pong", "data": {"s": text, "ref": id}});
    (request, reply)
}

/// A WebSocket spoken by hand over TCP.
struct Raw(RawConn);

impl Raw {
    /// Connects and upgrades; not authenticated.
    async fn open(node: &TestNode) -> Result<Raw, String> {
        let mut conn = RawConn::connect(node.addr).await?;
        // The key and accept value of RFC 6455's own example (1.3).
        let request = format!(
            "GET /api/v1/chat/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        conn.send(request.as_bytes())
            .await
            .map_err(|e| format!("upgrade request: {e}"))?;
        let head = conn
            .head()
            .await
            .map_err(|e| format!("during the upgrade: {e}"))?
            .to_lowercase();
        if !head.starts_with("http/1.1 101")
            || !head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
        {
            return Err(format!("not upgraded: {head}"));
        }
        Ok(Raw(conn))
    }

    /// Connects, upgrades and authenticates as `user`.
    async fn authenticated(node: &TestNode, user: &str) -> Result<Raw, String> {
        let mut raw = Raw::open(node).await?;
        let auth = json!({"type": "auth", "token": node.token(user)}).to_string();
        raw.send(&frame(true, TEXT, auth.as_bytes())).await?;
        let reply = raw.next_text().await?;
        if reply["type"] != "auth_success" {
            return Err(format!("auth answered with {reply}"));
        }
        Ok(raw)
    }

    async fn send(&mut self, bytes: &[u8]) -> Outcome {
        self.0.send(bytes).await
    }

    async fn next_frame(&mut self) -> Result<Frame, String> {
        self.0.next_frame().await
    }

    /// The node's next text frame as JSON, skipping its pings.
    async fn next_text(&mut self) -> Result<Value, String> {
        loop {
            let frame = self.next_frame().await?;
            match frame.opcode {
                PING => continue,
                TEXT if frame.fin => return frame.text(),
                _ => return Err(format!("expected a text frame, got {frame:?}")),
            }
        }
    }

    /// Reads until the node's close frame (skipping its pings and any error
    /// frame before it) and returns the frame's code.
    async fn close_from_node(&mut self) -> Result<Option<u16>, String> {
        loop {
            let frame = self.next_frame().await?;
            match frame.opcode {
                CLOSE => return close_code(&frame),
                PING | TEXT => continue,
                _ => return Err(format!("unexpected frame before the close: {frame:?}")),
            }
        }
    }

    /// After the close frames crossed: the node ends the connection, cleanly.
    async fn expect_eof(&mut self) -> Outcome {
        match self.0.read_more().await {
            Ok(0) if self.0.buffered().is_empty() => Ok(()),
            Ok(_) => Err(format!(
                "bytes after the close frame: {:?}",
                self.0.buffered()
            )),
            Err(e) => Err(format!("no clean EOF after the closing handshake: {e}")),
        }
    }

    /// The node closes with `want`; the client answers with the same code
    /// and the node then ends the connection cleanly.
    async fn expect_close(&mut self, want: u16) -> Outcome {
        let got = self.close_from_node().await?;
        if got != Some(want) {
            return Err(format!("the node closed with {got:?}, not {want}"));
        }
        self.send(&frame(true, CLOSE, &close_payload(want, b"")))
            .await
            .map_err(|e| format!("answering the node's close: {e}"))?;
        self.expect_eof().await
    }

    /// The client closes with `payload`; the node must answer `want` (a
    /// close the node accepted ends the handshake; one it refused is
    /// answered by the client once more, as for any close the node starts).
    async fn client_close(&mut self, payload: &[u8], want: u16) -> Outcome {
        self.send(&frame(true, CLOSE, payload)).await?;
        let refused = want == 1002 || want == 1007;
        if refused {
            return self.expect_close(want).await;
        }
        let got = self.close_from_node().await?;
        if got != Some(want) {
            return Err(format!(
                "the node answered the close with {got:?}, not {want}"
            ));
        }
        self.expect_eof().await
    }
}

/// A case: its name and its run.
type Case<'a> = (String, Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>);

fn case<'a>(name: impl Into<String>, run: impl Future<Output = Outcome> + Send + 'a) -> Case<'a> {
    (name.into(), Box::pin(run))
}

/// Runs the cases concurrently; fails naming every case that did not hold.
async fn run(cases: Vec<Case<'_>>) {
    let (names, runs): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
    let failed: Vec<String> = names
        .into_iter()
        .zip(join_all(runs).await)
        .filter_map(|(name, outcome)| outcome.err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// A socket of its own, authenticated or not.
async fn socket(node: &TestNode, authed: bool) -> Result<Raw, String> {
    if authed {
        Raw::authenticated(node, "alice").await
    } else {
        Raw::open(node).await
    }
}

/// A case: `bytes` are sent and the node must close with `want`.
fn closes_with<'a>(
    node: &'a TestNode,
    authed: bool,
    name: impl Into<String>,
    bytes: Vec<u8>,
    want: u16,
) -> Case<'a> {
    case(name, async move {
        let mut raw = socket(node, authed).await?;
        raw.send(&bytes).await?;
        raw.expect_close(want).await
    })
}

/// A case: the client starts the closing handshake with `payload` and the
/// node must answer `want`.
fn client_closes<'a>(
    node: &'a TestNode,
    authed: bool,
    name: impl Into<String>,
    payload: Vec<u8>,
    want: u16,
) -> Case<'a> {
    case(name, async move {
        let mut raw = socket(node, authed).await?;
        raw.client_close(&payload, want).await
    })
}

async fn conformance_node() -> TestNode {
    start_node(|s| {
        s.limits.max_frame_bytes = MAX_FRAME;
        // Every case is a socket of alice's, and some send many frames;
        // neither limit is under test here.
        s.limits.max_connections_per_user = 1000;
        s.limits.frame_rate_per_sec = 10_000.0;
        s.limits.frame_burst = 10_000;
    })
    .await
}

/// The frames RFC 6455 forbids a client, each answered with 1002.
fn broken_frames(node: &TestNode, authed: bool) -> Vec<Case<'_>> {
    let ping = br#"{"type":"ping"}"#;
    let mut cases = vec![closes_with(
        node,
        authed,
        "unmasked frame",
        {
            let mut f = vec![0x80 | TEXT, ping.len() as u8];
            f.extend_from_slice(ping);
            f
        },
        1002,
    )];
    for (bit, name) in [(0x40, "RSV1"), (0x20, "RSV2"), (0x10, "RSV3")] {
        cases.push(closes_with(
            node,
            authed,
            format!("{name} set"),
            frame_with(0x80 | bit | TEXT, ping),
            1002,
        ));
    }
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push(closes_with(
            node,
            authed,
            format!("reserved opcode {opcode:#x}"),
            frame(true, opcode, b""),
            1002,
        ));
    }
    cases.extend([
        closes_with(
            node,
            authed,
            "ping of 126 bytes",
            frame(true, PING, &[b'p'; 126]),
            1002,
        ),
        closes_with(
            node,
            authed,
            "pong of 126 bytes",
            frame(true, PONG, &[b'p'; 126]),
            1002,
        ),
        closes_with(
            node,
            authed,
            "close of 126 bytes",
            frame(true, CLOSE, &close_payload(1000, &[b'r'; 124])),
            1002,
        ),
        closes_with(
            node,
            authed,
            "fragmented ping",
            frame(false, PING, b"p"),
            1002,
        ),
        closes_with(
            node,
            authed,
            "continuation of nothing",
            frame(true, CONTINUATION, ping),
            1002,
        ),
        closes_with(
            node,
            authed,
            "text inside a fragmented message",
            [frame(false, TEXT, b"{\"type\""), frame(true, TEXT, ping)].concat(),
            1002,
        ),
        closes_with(
            node,
            authed,
            "binary inside a fragmented message",
            [frame(false, TEXT, b"{\"type\""), frame(true, BINARY, b"x")].concat(),
            1002,
        ),
    ]);
    cases
}

/// Text that is not UTF-8, and messages over `max_frame_bytes`.
fn bad_messages(node: &TestNode) -> Vec<Case<'_>> {
    let too_long = vec![b'a'; MAX_FRAME + 1];
    let half = MAX_FRAME / 2 + 1;
    vec![
        closes_with(
            node,
            true,
            "invalid UTF-8 in one frame",
            frame(true, TEXT, b"{\"type\":\"ping\",\"x\":\"\xC3\x28\"}"),
            1007,
        ),
        closes_with(
            node,
            true,
            "invalid UTF-8 across fragments",
            [
                frame(false, TEXT, b"{\"type\":\"ping\",\"x\":\"\xE2\x82"),
                frame(true, CONTINUATION, b"\x28\"}"),
            ]
            .concat(),
            1007,
        ),
        closes_with(
            node,
            true,
            "a message cut inside a character",
            [
                frame(false, TEXT, b"\xE2\x82"),
                frame(true, CONTINUATION, b""),
            ]
            .concat(),
            1007,
        ),
        closes_with(
            node,
            true,
            "a frame over the limit",
            frame(true, TEXT, &too_long),
            1009,
        ),
        closes_with(
            node,
            true,
            "fragments over the limit",
            [
                frame(false, TEXT, &too_long[..half]),
                frame(true, CONTINUATION, &too_long[..half]),
            ]
            .concat(),
            1009,
        ),
    ]
}

/// The closing handshakes a client starts, valid and not.
fn client_closes_all(node: &TestNode, authed: bool) -> Vec<Case<'_>> {
    let mut cases = vec![
        client_closes(node, authed, "empty close", Vec::new(), 1000),
        client_closes(node, authed, "close of one byte", vec![0x03], 1002),
        client_closes(
            node,
            authed,
            "close 1000 with a reason that is not UTF-8",
            close_payload(1000, b"bye \xFF"),
            1007,
        ),
    ];
    for code in [1000, 1001, 3000, 4999] {
        cases.push(client_closes(
            node,
            authed,
            format!("close {code} (echoed)"),
            close_payload(code, "bye".as_bytes()),
            code,
        ));
    }
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push(client_closes(
            node,
            authed,
            format!("invalid close code {code}"),
            close_payload(code, b""),
            1002,
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_the_rfc_forbids_close_with_1002() {
    let node = conformance_node().await;
    run(broken_frames(&node, true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_closes_with_1007_and_too_much_with_1009() {
    let node = conformance_node().await;
    run(bad_messages(&node)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_closes_are_echoed_or_refused() {
    let node = conformance_node().await;
    run(client_closes_all(&node, true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_authentication_the_same_rules_hold() {
    let node = conformance_node().await;
    let ping = br#"{"type":"ping"}"#;
    let mut unmasked = vec![0x80 | TEXT, ping.len() as u8];
    unmasked.extend_from_slice(ping);
    run(vec![
        closes_with(&node, false, "unmasked frame", unmasked, 1002),
        closes_with(
            &node,
            false,
            "invalid UTF-8",
            frame(true, TEXT, b"{\"type\":\"auth\",\"token\":\"\xFF\"}"),
            1007,
        ),
        client_closes(&node, false, "empty close", Vec::new(), 1000),
        client_closes(
            &node,
            false,
            "close 1001 (echoed)",
            close_payload(1001, b""),
            1001,
        ),
        client_closes(
            &node,
            false,
            "invalid close code 1005",
            close_payload(1005, b""),
            1002,
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_inside_a_fragmented_message_are_answered_and_the_message_handled() {
    let node = conformance_node().await;
    let outcome = async {
        let mut raw = Raw::authenticated(&node, "alice").await?;
        let (request, reply) = ping_request("p1", "fragments");
        let (one, rest) = request.as_bytes().split_at(10);
        let (two, three) = rest.split_at(10);
        raw.send(
            &[
                frame(false, TEXT, one),
                frame(true, PING, b"first"),
                frame(false, CONTINUATION, two),
                frame(true, PING, b""),
                frame(true, PING, b"third"),
                frame(true, CONTINUATION, three),
            ]
            .concat(),
        )
        .await?;
        // A pong may answer only the latest of pings not yet answered
        // (RFC 6455, 5.5.3), and need not come before the reply: every pong
        // carries a ping's payload, in order, and the last ping is answered.
        let pings: [&[u8]; 3] = [b"first", b"", b"third"];
        let mut pongs = Vec::new();
        let mut answer = None;
        while answer.is_none() || pongs.last() != Some(&pings[2].to_vec()) {
            let frame = raw.next_frame().await?;
            match frame.opcode {
                PING => {}
                PONG => pongs.push(frame.payload),
                TEXT if answer.is_none() => answer = Some(frame.text()?),
                _ => return Err(format!("unexpected {frame:?}; pongs so far {pongs:?}")),
            }
        }
        let mut unanswered = pings.iter();
        for pong in &pongs {
            if !unanswered.any(|ping| ping == pong) {
                return Err(format!("pongs {pongs:?} do not follow the pings {pings:?}"));
            }
        }
        if answer.as_ref() != Some(&reply) {
            return Err(format!("the message got {answer:?}, not {reply}"));
        }
        raw.client_close(&close_payload(1000, b""), 1000).await
    };
    run(vec![case("pings between fragments", outcome)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_split_inside_a_character_is_joined_whole() {
    let node = conformance_node().await;
    let outcome = async {
        let mut raw = Raw::authenticated(&node, "alice").await?;
        let text = "é€😀";
        let mut sent = 0;
        // Every cut inside every character.
        let body = format!("a{text}b");
        let inside = body
            .char_indices()
            .flat_map(|(at, c)| (1..c.len_utf8()).map(move |i| at + i));
        for cut in inside {
            let (request, reply) = ping_request(&format!("cut{cut}"), &body);
            // serde_json writes non-ASCII text as is, so the text's bytes
            // are in the request.
            let at = request.find(&body).expect("the text is in the request") + cut;
            let (head, tail) = request.as_bytes().split_at(at);
            raw.send(&[frame(false, TEXT, head), frame(true, CONTINUATION, tail)].concat())
                .await?;
            let got = raw.next_text().await?;
            if got != reply {
                return Err(format!("cut at byte {at} of {request}: got {got}"));
            }
            sent += 1;
        }
        // And one fragment per byte.
        let (request, reply) = ping_request("bytes", text);
        let bytes = request.as_bytes();
        let mut frames = Vec::new();
        for (i, byte) in bytes.iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == bytes.len();
            frames.extend(frame(
                last,
                if first { TEXT } else { CONTINUATION },
                &[*byte],
            ));
        }
        raw.send(&frames).await?;
        let got = raw.next_text().await?;
        if got != reply {
            return Err(format!("byte by byte: got {got}, not {reply}"));
        }
        if sent != 1 + 2 + 3 {
            return Err(format!("{sent} cuts tried, not 6"));
        }
        raw.client_close(&close_payload(1000, b""), 1000).await
    };
    run(vec![case("UTF-8 split across fragments", outcome)]).await;
}
