//! The presence storm. N users, one connection each, in conversations of M
//! participants, all joined on the first node and present. Then every
//! connection is dropped at once (the TCP connection closed, without a
//! close frame, as a network blip or a proxy restart does) and reconnects
//! to the second node, rejoining its conversation. A move within
//! `presence.grace_secs` must announce nothing, so the `presence_changed`
//! frames the clients get and the announcements the nodes make during the
//! storm should both be about 0.
//!
//! Reported: those two counts (and what the setup announced, for scale),
//! the time until the storm settled (every client rejoined, the second
//! node's `confab_presence_entries` at N and the first's at 0), the Redis
//! commands it took (`INFO`'s `total_commands_processed`, and by command),
//! the nodes' and Redis's CPU, and, once the grace has run out, whether
//! every conversation's `presence` still lists all its participants.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::client::{self, Sources, Tokens};
use crate::events::{connect_and_join, Inbox, Transport};
use crate::scenarios::CONNECT_CONCURRENCY;
use crate::stats::{metric_in, metrics_text, own_cpu_secs, CpuWatch, Latencies};
use crate::{Cli, Report};

pub struct Settings {
    pub connections: usize,
    pub members: usize,
    pub redis_port: Option<u16>,
    pub watch: Duration,
    pub rest: Duration,
    pub transport: Transport,
}

/// Longest wait for the setup, and for the storm to settle.
const PATIENCE: Duration = Duration::from_secs(120);
/// Attempts of a reconnect (the node refuses while its accept queue is
/// full, or answers 503 while it admits too many at once).
const RECONNECT_TRIES: u32 = 100;

/// Where the run is; clients read it to file what they receive.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Setup,
    /// Since this instant.
    Storm(Instant),
    Stop,
}

/// `presence_changed` frames received, by phase and by `present`.
#[derive(Default)]
struct Heard {
    /// 0: setup, 1: storm (until the end of the watch).
    phase: AtomicU8,
    arrived: [AtomicU64; 2],
    gone: [AtomicU64; 2],
    /// Frames of any kind, for the setup's quiet check.
    frames: AtomicU64,
}

impl Heard {
    fn file(&self, text: &str) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if !text.contains("\"presence_changed\"") {
            return;
        }
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if frame["type"] != "presence_changed" {
            return;
        }
        let phase = usize::from(self.phase.load(Ordering::Relaxed).min(1));
        let counter = if frame["data"]["present"] == true {
            &self.arrived[phase]
        } else {
            &self.gone[phase]
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, phase: usize) -> (u64, u64) {
        (
            self.arrived[phase].load(Ordering::Relaxed),
            self.gone[phase].load(Ordering::Relaxed),
        )
    }
}

/// What every client shares.
struct Shared {
    transport: Transport,
    first: String,
    second: String,
    sources: Arc<Sources>,
    http: reqwest::Client,
    gate: Semaphore,
    heard: Heard,
    /// Clients whose setup is over (joined or failed), and those joined.
    set_up: AtomicU64,
    joined: AtomicU64,
    /// Clients rejoined on the second node.
    rejoined: AtomicU64,
}

/// One client's storm.
struct Moved {
    /// From the storm's start to its `joined` on the second node.
    rejoined_after: Option<Duration>,
    /// Connection attempts it took.
    tries: u32,
}

/// Reads the next text frame of a connection, or waits forever without one.
async fn next_or_never(
    inbox: &mut Option<Inbox>,
) -> Option<tokio_tungstenite::tungstenite::Utf8Bytes> {
    match inbox {
        Some(inbox) => inbox.next_text().await,
        None => std::future::pending().await,
    }
}

/// One client: joins on the first node, listens; at the storm drops its
/// connection and reconnects to the second, rejoins, listens until stopped.
async fn client(
    shared: Arc<Shared>,
    token: String,
    conv: String,
    mut phase: watch::Receiver<Phase>,
) -> Moved {
    let mut inbox = {
        let _permit = shared.gate.acquire().await.ok();
        match connect_and_join(
            shared.transport,
            &shared.first,
            &token,
            &conv,
            &shared.sources,
            &shared.http,
        )
        .await
        {
            Ok((inbox, _)) => {
                shared.joined.fetch_add(1, Ordering::AcqRel);
                Some(inbox)
            }
            Err(_) => None,
        }
    };
    shared.set_up.fetch_add(1, Ordering::AcqRel);
    let mut moved = Moved {
        rejoined_after: None,
        tries: 0,
    };
    let storm = loop {
        tokio::select! {
            changed = phase.changed() => match changed.map(|()| *phase.borrow_and_update()) {
                Ok(Phase::Setup) => {}
                Ok(Phase::Storm(at)) => break at,
                Ok(Phase::Stop) | Err(_) => return moved,
            },
            text = next_or_never(&mut inbox) => match text {
                Some(text) => shared.heard.file(&text),
                None => inbox = None,
            },
        }
    };
    // The connection is dropped: its TCP connection closes, no close frame.
    drop(inbox.take());
    while moved.tries < RECONNECT_TRIES {
        moved.tries += 1;
        if let Ok((fresh, _)) = connect_and_join(
            shared.transport,
            &shared.second,
            &token,
            &conv,
            &shared.sources,
            &shared.http,
        )
        .await
        {
            moved.rejoined_after = Some(storm.elapsed());
            shared.rejoined.fetch_add(1, Ordering::AcqRel);
            inbox = Some(fresh);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        tokio::select! {
            changed = phase.changed() => match changed.map(|()| *phase.borrow_and_update()) {
                Ok(Phase::Stop) | Err(_) => return moved,
                Ok(_) => {}
            },
            text = next_or_never(&mut inbox) => match text {
                Some(text) => shared.heard.file(&text),
                None => inbox = None,
            },
        }
    }
}

/// What the nodes say about presence.
#[derive(Clone, Copy, Default, Debug)]
struct NodePresence {
    /// `confab_presence_entries` of each of the first two nodes.
    entries: [f64; 2],
    /// `confab_presence_announcements_total`, all nodes: arrived, gone.
    arrived: f64,
    gone: f64,
}

async fn node_presence(nodes: &[String]) -> NodePresence {
    let mut p = NodePresence::default();
    for (i, base) in nodes.iter().enumerate() {
        let text = metrics_text(base).await;
        if i < 2 {
            p.entries[i] = metric_in(&text, "confab_presence_entries").unwrap_or(0.0);
        }
        p.arrived += metric_in(
            &text,
            "confab_presence_announcements_total{change=\"arrived\"}",
        )
        .unwrap_or(0.0);
        p.gone += metric_in(
            &text,
            "confab_presence_announcements_total{change=\"gone\"}",
        )
        .unwrap_or(0.0);
    }
    p
}

/// Redis's command counts: the total, and calls by command.
#[derive(Default, Clone)]
struct RedisCounts {
    total: u64,
    calls: HashMap<String, u64>,
}

impl RedisCounts {
    /// `INFO all` of the Redis on 127.0.0.1:port, over RESP (one command).
    async fn read(port: u16) -> Option<Self> {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        conn.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")
            .await
            .ok()?;
        let mut reader = tokio::io::BufReader::new(conn);
        let mut head = String::new();
        reader.read_line(&mut head).await.ok()?;
        let len: usize = head.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await.ok()?;
        Some(Self::parse(&String::from_utf8_lossy(&body)))
    }

    fn parse(info: &str) -> Self {
        let mut counts = Self::default();
        for line in info.lines() {
            if let Some(n) = line.strip_prefix("total_commands_processed:") {
                counts.total = n.trim().parse().unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("cmdstat_") {
                let Some((name, stats)) = rest.split_once(':') else {
                    continue;
                };
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                counts.calls.insert(name.to_owned(), calls);
            }
        }
        counts
    }

    /// Commands since `earlier`: the total, and the busiest commands as
    /// "name calls, ..." (the `INFO` reads themselves left out).
    fn since(&self, earlier: &Self, top: usize) -> (u64, String) {
        let mut by: Vec<(String, u64)> = self
            .calls
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, n)| {
                (
                    name.clone(),
                    n.saturating_sub(earlier.calls.get(name).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let listed: Vec<String> = by
            .iter()
            .take(top)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        (self.total.saturating_sub(earlier.total), listed.join(", "))
    }

    fn calls_of(&self, earlier: &Self, names: &[&str]) -> u64 {
        names
            .iter()
            .map(|name| {
                self.calls
                    .get(*name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(earlier.calls.get(*name).copied().unwrap_or(0))
            })
            .sum()
    }
}

async fn redis_counts(port: Option<u16>) -> Option<RedisCounts> {
    RedisCounts::read(port?).await
}

/// Waits until `done` says so, checking every 50 ms; the time it took, or
/// None after `patience`.
async fn until<F, Fut>(patience: Duration, mut done: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > patience {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn presence(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    s: Settings,
) -> Report {
    assert!(
        cli.nodes.len() >= 2,
        "presence needs two nodes: the storm moves every connection from the first to the second"
    );
    let n = s.connections;
    let m = s.members.max(1);
    let user = |i: usize| format!("pres{i}");
    // Conversation k: users k*M .. k*M+M-1, created by the first of them.
    let mut convs = Vec::with_capacity(n.div_ceil(m));
    for first in (0..n).step_by(m) {
        let owner = tokens.mint(&user(first));
        let members: Vec<String> = (first + 1..n.min(first + m)).map(user).collect();
        convs.push(client::create_chat(&cli.nodes[0], &owner, &members).await);
    }
    let shared = Arc::new(Shared {
        transport: s.transport,
        first: cli.nodes[0].clone(),
        second: cli.nodes[1].clone(),
        sources: sources.clone(),
        http: crate::events::http_client(),
        gate: Semaphore::new(CONNECT_CONCURRENCY),
        heard: Heard::default(),
        set_up: AtomicU64::new(0),
        joined: AtomicU64::new(0),
        rejoined: AtomicU64::new(0),
    });
    let generator0 = own_cpu_secs();

    // Setup: everyone joins on the first node.
    let before = node_presence(&cli.nodes).await;
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let setup_start = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(client(
                shared.clone(),
                tokens.mint(&user(i)),
                convs[i / m].clone(),
                phase_rx.clone(),
            ))
        })
        .collect();
    drop(phase_rx);
    let all_set_up = until(PATIENCE, || {
        let shared = shared.clone();
        async move { shared.set_up.load(Ordering::Acquire) as usize >= n }
    })
    .await;
    let joined = shared.joined.load(Ordering::Acquire);
    let join_time = setup_start.elapsed();
    // Then until the first node holds them all, every arrival is announced
    // and the clients have heard nothing for a second.
    let settled_setup = until(PATIENCE, || {
        let (nodes, shared) = (cli.nodes.clone(), shared.clone());
        async move {
            let now = node_presence(&nodes).await;
            let frames = shared.heard.frames.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            now.entries[0] >= joined as f64
                && now.arrived - before.arrived >= joined as f64
                && shared.heard.frames.load(Ordering::Relaxed) == frames
        }
    })
    .await;
    let setup = node_presence(&cli.nodes).await;
    let (setup_heard_arrived, setup_heard_gone) = shared.heard.get(0);

    // Redis at rest, for scale: one renewal period (a third of the nodes'
    // presence.ttl_secs, 10 s by default) without anything else happening,
    // so the first node renews its entries once in it.
    let rest0 = redis_counts(s.redis_port).await;
    let rest_start = Instant::now();
    tokio::time::sleep(s.rest).await;
    let rest1 = redis_counts(s.redis_port).await;
    let rest_took = rest_start.elapsed();
    let rest_rate = match (&rest0, &rest1) {
        (Some(a), Some(b)) => Some(b.since(a, 0).0 as f64 / rest_took.as_secs_f64()),
        _ => None,
    };

    // The storm.
    let (nodes_cpu, others_cpu) = (
        CpuWatch::start(&cli.pids),
        CpuWatch::start(&cli.server_pids),
    );
    let redis0 = redis_counts(s.redis_port).await;
    let p0 = node_presence(&cli.nodes).await;
    let generator_storm0 = own_cpu_secs();
    shared.heard.phase.store(1, Ordering::Relaxed);
    let storm = Instant::now();
    let _ = phase_tx.send(Phase::Storm(storm));
    let settled = until(PATIENCE, || {
        let (nodes, shared) = (cli.nodes.clone(), shared.clone());
        async move {
            if (shared.rejoined.load(Ordering::Acquire) as usize) < n {
                return false;
            }
            let now = node_presence(&nodes).await;
            now.entries[1] == n as f64 && now.entries[0] == 0.0
        }
    })
    .await;
    let settle_time = storm.elapsed();
    let all_rejoined = shared.rejoined.load(Ordering::Acquire);
    let generator_settle = own_cpu_secs() - generator_storm0;
    let node_cpu_settle = nodes_cpu.used();
    let others_cpu_settle = others_cpu.used();
    let redis_settle = redis_counts(s.redis_port).await;
    let p_settle = node_presence(&cli.nodes).await;
    // The watch: past the grace, when a departure wrongly kept would be
    // swept and announced.
    tokio::time::sleep(s.watch).await;
    let watch_end = storm.elapsed();
    let node_cpu_end = nodes_cpu.used();
    let others_cpu_end = others_cpu.used();
    let redis_end = redis_counts(s.redis_port).await;
    let p_end = node_presence(&cli.nodes).await;
    let (storm_heard_arrived, storm_heard_gone) = shared.heard.get(1);

    // Who is present now, conversation by conversation (REST, as the owner).
    let mut complete = 0usize;
    let mut listed = 0usize;
    for (k, conv) in convs.iter().enumerate() {
        let first = k * m;
        let expected = n.min(first + m) - first;
        let users = present(&cli.nodes[1], &tokens.mint(&user(first)), conv).await;
        listed += users.unwrap_or(0);
        complete += usize::from(users == Some(expected));
    }

    let _ = phase_tx.send(Phase::Stop);
    let mut rejoin = Latencies::default();
    let (mut tries, mut failed) = (0u64, 0usize);
    for c in clients {
        if let Ok(moved) = c.await {
            tries += u64::from(moved.tries);
            match moved.rejoined_after {
                Some(d) => rejoin.extend(vec![d.as_micros() as u64]),
                None => failed += 1,
            }
        }
    }
    let generator_cpu = own_cpu_secs() - generator0;

    let mut r = Report::new("presence");
    r.add("transport", s.transport.name());
    r.add("connections (one user each)", n);
    r.add("conversations", convs.len());
    r.add("participants each", m);
    r.add(
        "storm",
        "every connection dropped at once, reconnected to node 2",
    );
    r.add("setup: joined on node 1", joined);
    r.add("setup: time to join all (s)", join_time.as_secs_f64());
    if all_set_up.is_none() || settled_setup.is_none() {
        r.add("setup: SETTLED", false);
    }
    r.add("setup: arrivals announced", setup.arrived - before.arrived);
    r.add(
        "setup: presence_changed received (arrived)",
        setup_heard_arrived,
    );
    if setup_heard_gone > 0 {
        r.add("setup: presence_changed received (gone)", setup_heard_gone);
    }
    r.add("storm: connections rejoined on node 2", all_rejoined);
    r.add("storm: rejoins failed", failed);
    r.add(
        "storm: connection attempts per rejoin",
        tries as f64 / all_rejoined.max(1) as f64,
    );
    let [p50, p99, _, max] = rejoin.summary();
    r.add("storm: rejoined p50 (ms)", p50);
    r.add("storm: rejoined p99 (ms)", p99);
    r.add("storm: rejoined max (ms)", max);
    match settled {
        Some(_) => r.add("storm: time to settle (s)", settle_time.as_secs_f64()),
        None => {
            r.add("storm: SETTLED", false);
            r.add("storm: gave up after (s)", settle_time.as_secs_f64());
        }
    }
    r.add("node 1 presence entries at settle", p_settle.entries[0]);
    r.add("node 2 presence entries at settle", p_settle.entries[1]);
    r.add(
        "storm: presence_changed received (arrived)",
        storm_heard_arrived,
    );
    r.add("storm: presence_changed received (gone)", storm_heard_gone);
    r.add(
        "storm: announcements to settle (arrived + gone)",
        (p_settle.arrived - p0.arrived) + (p_settle.gone - p0.gone),
    );
    r.add(
        "storm: announcements with the watch (arrived)",
        p_end.arrived - p0.arrived,
    );
    r.add(
        "storm: announcements with the watch (gone)",
        p_end.gone - p0.gone,
    );
    r.add(
        "watch: until after the storm's start (s)",
        watch_end.as_secs_f64(),
    );
    r.add(
        "after: conversations listing all participants",
        format!("{complete} of {}", convs.len()),
    );
    r.add("after: users present, all conversations", listed);
    if let (Some(a), Some(b), Some(rate)) = (&rest0, &rest1, rest_rate) {
        r.add("redis: commands/s at rest, before the storm", rate);
        r.add(
            &format!(
                "redis: at rest, per connection per {} s",
                rest_took.as_secs_f64().round()
            ),
            b.since(a, 0).0 as f64 / n.max(1) as f64,
        );
        r.add("redis: at rest, by command", b.since(a, 8).1);
    }
    if let (Some(r0), Some(rs), Some(re)) = (&redis0, &redis_settle, &redis_end) {
        let (total, by) = rs.since(r0, 8);
        r.add("redis: commands to settle", total);
        r.add(
            "redis: commands per connection, to settle",
            total as f64 / n.max(1) as f64,
        );
        if let Some(rate) = rest_rate {
            // What the renewals would have cost over the same time anyway.
            r.add(
                "redis: per connection, to settle, net of the rest rate",
                (total as f64 - rate * settle_time.as_secs_f64()).max(0.0) / n.max(1) as f64,
            );
        }
        r.add(
            "redis: EVALs per connection, to settle",
            rs.calls_of(r0, &["eval", "evalsha"]) as f64 / n.max(1) as f64,
        );
        r.add("redis: to settle, by command", by);
        let (total, by) = re.since(r0, 8);
        r.add("redis: commands with the watch", total);
        r.add(
            "redis: commands per connection, with the watch",
            total as f64 / n.max(1) as f64,
        );
        r.add(
            "redis: EVALs per connection, with the watch",
            re.calls_of(r0, &["eval", "evalsha"]) as f64 / n.max(1) as f64,
        );
        r.add("redis: with the watch, by command", by);
    }
    if !cli.pids.is_empty() {
        r.add("node CPU to settle (s, both)", node_cpu_settle);
        r.add(
            "node CPU per connection moved (µs)",
            node_cpu_settle * 1e6 / all_rejoined.max(1) as f64,
        );
        r.add("node CPU with the watch (s, both)", node_cpu_end);
    }
    if !cli.server_pids.is_empty() {
        r.add("redis (and others) CPU to settle (s)", others_cpu_settle);
        r.add("redis (and others) CPU with the watch (s)", others_cpu_end);
    }
    r.add("generator CPU to settle (s)", generator_settle);
    r.add("generator CPU (s, whole run)", generator_cpu);
    r
}

/// How many users `GET /chats/{id}/presence` lists; None if it fails.
async fn present(base: &str, token: &str, conv: &str) -> Option<usize> {
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/chat/chats/{conv}/presence"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(body["users"].as_array()?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_info_parses() {
        let a = RedisCounts::parse(
            "# Stats\r\ntotal_commands_processed:10\r\n# Commandstats\r\ncmdstat_eval:calls=4,usec=9,usec_per_call=2.25,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=3,usec=1\r\n",
        );
        let b = RedisCounts::parse(
            "total_commands_processed:30\r\ncmdstat_eval:calls=6,usec=9\r\ncmdstat_subscribe:calls=12,usec=1\r\ncmdstat_info:calls=4,usec=1\r\n",
        );
        assert_eq!(a.total, 10);
        assert_eq!(b.since(&a, 8), (20, "subscribe 12, eval 2".to_owned()));
        assert_eq!(b.calls_of(&a, &["eval", "evalsha"]), 2);
    }

    #[test]
    fn frames_are_filed_by_phase() {
        let heard = Heard::default();
        heard.file(r#"{"type":"presence_changed","data":{"conversation_id":"c","user_id":"u","present":true}}"#);
        heard.phase.store(1, Ordering::Relaxed);
        heard.file(r#"{"type":"presence_changed","data":{"conversation_id":"c","user_id":"u","present":false}}"#);
        heard.file(
            r#"{"type":"message_received","data":{"message":{"content":"\"presence_changed\""}}}"#,
        );
        assert_eq!(heard.get(0), (1, 0));
        assert_eq!(heard.get(1), (0, 1));
        assert_eq!(heard.frames.load(Ordering::Relaxed), 3);
    }
}
