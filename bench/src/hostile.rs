//! Hostile clients against the first node, with what they cost it: never
//! reading sockets asking for the largest history pages (the node's memory),
//! slowloris connections (how long they live), and more idle connections
//! than the node has descriptors (its CPU meanwhile). Figures only; the
//! tests in `tests/abuse.rs` assert the behaviour.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, addr_of, Sources, Tokens};
use crate::stats::{cpu_secs, rss_kib, Latencies};
use crate::{Cli, Report};

/// What `hostile` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Attack {
    /// Never-reading sockets of one user asking for the largest pages.
    History,
    /// Connections dribbling a header line every second, or sending nothing.
    Slowloris,
    /// Idle TCP connections, more than the node has descriptors.
    Flood,
}

pub async fn hostile(
    cli: &Cli,
    tokens: &Tokens,
    sources: &Sources,
    attack: Attack,
    conns: usize,
    seconds: u64,
) -> Report {
    let base = &cli.nodes[0];
    let pid = cli.pids.first().copied();
    match attack {
        Attack::History => history(base, pid, tokens, sources, conns, seconds).await,
        Attack::Slowloris => slowloris(addr_of(base), conns, seconds).await,
        Attack::Flood => flood(addr_of(base), pid, conns, seconds).await,
    }
}

/// `conns` sockets of one user, each sending 100 `load_messages` (limit
/// 200) over 200 messages of 8000 characters, reading nothing; the node's
/// RSS is sampled every 100 ms for `seconds`.
async fn history(
    base: &str,
    pid: Option<u32>,
    tokens: &Tokens,
    sources: &Sources,
    conns: usize,
    seconds: u64,
) -> Report {
    let owner = tokens.mint("owner");
    let conv = client::create_chat(base, &owner, &["mallory".to_string()]).await;
    let (mut writer, _) = client::connect(base, &owner, sources)
        .await
        .expect("the owner connects");
    let text = "x".repeat(8000);
    for i in 0..200 {
        let frame = json!({"type": "send_message", "id": format!("s{i}"),
                           "data": {"conversation_id": conv, "content": text}});
        client::send(&mut writer, frame).await;
        while let Some(f) = client::next(&mut writer).await {
            if f["type"] == "ack" || f["type"] == "error" {
                break;
            }
        }
    }
    let rss = || pid.and_then(rss_kib).unwrap_or(0) as f64 / 1024.0;
    let before = rss();
    let mut sockets = Vec::new();
    for _ in 0..conns {
        if let Ok((ws, _)) = client::connect(base, &tokens.mint("mallory"), sources).await {
            sockets.push(ws);
        }
    }
    let opened = sockets.len();
    for round in 0..100 {
        for ws in sockets.iter_mut() {
            let frame = json!({"type": "load_messages", "id": format!("h{round}"),
                               "data": {"conversation_id": conv, "limit": 200}});
            client::send(ws, frame).await;
        }
    }
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = rss();
    let closed = closed_sockets(base).await;
    drop(sockets);
    let mut r = Report::new("hostile history");
    r.add("never-reading sockets", opened);
    r.add("node RSS before, MiB", before);
    r.add("node RSS peak, MiB", peak);
    r.add(&format!("node RSS after {seconds} s, MiB"), after);
    r.add("sockets closed 4009 (node metric)", closed);
    r
}

/// Sockets the node closed with 4009, from its `/metrics`.
async fn closed_sockets(base: &str) -> f64 {
    let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("confab_sockets_closed_total{") && l.contains("code=\"4009\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Half the connections dribble a header line every second, half send
/// nothing; each one's life (until the node closes it) is measured, up to
/// `seconds`.
async fn slowloris(addr: SocketAddr, conns: usize, seconds: u64) -> Report {
    let limit = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return None;
            };
            let dribble = i % 2 == 0;
            if dribble {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            }
            let mut buf = [0u8; 1024];
            while start.elapsed() < limit {
                tokio::select! {
                    read = s.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) {
                        return Some(start.elapsed());
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if dribble && s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                            return Some(start.elapsed());
                        }
                    }
                }
            }
            Some(start.elapsed())
        }));
    }
    let mut lives = Latencies::default();
    let mut open_at_end = 0;
    for t in tasks {
        if let Ok(Some(life)) = t.await {
            if life >= limit {
                open_at_end += 1;
            }
            lives.extend(vec![life.as_micros() as u64]);
        }
    }
    let [p50, _, _, max] = lives.summary();
    let mut r = Report::new("hostile slowloris");
    r.add("connections", lives.len());
    r.add("life p50, ms", p50);
    r.add("life max, ms", max);
    r.add(&format!("still open after {seconds} s"), open_at_end);
    r
}

/// Opens `conns` idle connections (more than the node's descriptors), then
/// measures the node's CPU over `seconds` while they are held.
async fn flood(addr: SocketAddr, pid: Option<u32>, conns: usize, seconds: u64) -> Report {
    let mut held = Vec::new();
    for _ in 0..conns {
        match TcpStream::connect(addr).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let cpu = || pid.and_then(cpu_secs).unwrap_or(0.0);
    let start_cpu = cpu();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = cpu() - start_cpu;
    let wall = start.elapsed().as_secs_f64();
    let mut r = Report::new("hostile flood");
    r.add("idle connections held", held.len());
    r.add("node CPU while held, % of a core", 100.0 * used / wall);
    r
}
