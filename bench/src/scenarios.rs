//! The scenarios. Each returns a `Report`; none asserts a timing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, now_us, Sources, Tokens, Ws};
use crate::events::{EventStream, Inbox, Transport};
use crate::proto::{Incoming, Proto};
use crate::stats::{
    cpu_secs, metric_sum, own_cpu_secs, per_sec, rss_kib, total_cpu, CpuWatch, Latencies, Stages,
};
use crate::{Cli, Report, Scenario};

/// Sockets being set up at once.
pub(crate) const CONNECT_CONCURRENCY: usize = 256;

pub async fn run(cli: &Cli) -> Option<Report> {
    if cli.proto != Proto::Confab
        && !matches!(
            cli.scenario,
            Scenario::Idle { .. } | Scenario::Hold { .. } | Scenario::Fanout { .. }
        )
    {
        eprintln!(
            "confab-bench: --proto {} runs only the idle and fanout scenarios; \
             the others use confab's own features (history, resumes, streams, the log)",
            cli.proto.name()
        );
        std::process::exit(2);
    }
    let tokens = Arc::new(Tokens::new(cli.secret.as_deref()));
    let sources = Arc::new(Sources::new(cli.sources));
    Some(match cli.scenario.clone() {
        Scenario::Idle { sockets, procs } => idle(cli, &tokens, &sources, sockets, procs).await,
        Scenario::Hold {
            first,
            sockets,
            rooms,
            per_room,
        } => {
            hold(cli, &tokens, &sources, first, sockets, rooms, per_room).await;
            return None;
        }
        Scenario::Fanout {
            receivers,
            rate,
            seconds,
            transport,
        } => {
            if transport != Transport::Websocket && cli.proto != Proto::Confab {
                eprintln!("confab-bench: fanout --transport http speaks confab's protocol only");
                std::process::exit(2);
            }
            fanout(cli, &tokens, &sources, receivers, rate, seconds, transport).await
        }
        Scenario::Presence {
            connections,
            members,
            redis_port,
            watch_secs,
            rest_secs,
            transport,
        } => {
            let settings = crate::presence::Settings {
                connections,
                members,
                redis_port,
                watch: Duration::from_secs(watch_secs),
                rest: Duration::from_secs(rest_secs),
                transport,
            };
            crate::presence::presence(cli, &tokens, &sources, settings).await
        }
        Scenario::Rooms {
            rooms: n,
            members,
            rate,
            seconds,
        } => rooms(cli, &tokens, &sources, n, members, rate, seconds).await,
        Scenario::Storm { sockets, kill } => storm(cli, &tokens, &sources, sockets, kill).await,
        Scenario::Stream {
            watchers,
            tokens: n,
        } => stream(cli, &tokens, &sources, watchers, n).await,
        Scenario::StreamCatchup {
            tabs,
            words,
            assistant,
            join_after_ms,
            baseline_ms,
        } => {
            let settings = crate::assistant_streams::CatchupSettings {
                tabs,
                words,
                assistant,
                join_after: Duration::from_millis(join_after_ms),
                baseline: Duration::from_millis(baseline_ms),
            };
            crate::assistant_streams::catchup(cli, &tokens, &sources, settings).await
        }
        Scenario::StreamQueue {
            users,
            conversations,
            requests,
            words,
            assistant,
            limit,
        } => {
            let settings = crate::assistant_streams::QueueSettings {
                users,
                conversations,
                requests,
                words,
                assistant,
                limit,
            };
            crate::assistant_streams::queue(cli, &tokens, &sources, settings).await
        }
        Scenario::Log {
            conversations,
            members,
            rate,
            edits,
            reactions,
            seconds,
        } => {
            if edits + reactions > 100 {
                eprintln!(
                    "confab-bench: log: --edits and --reactions add up to more than 100 (percent)"
                );
                std::process::exit(2);
            }
            let settings = crate::conversation_log::Settings {
                conversations,
                members,
                rate,
                mix: crate::conversation_log::Mix { edits, reactions },
                seconds,
            };
            crate::conversation_log::log(cli, &tokens, &sources, settings).await
        }
        Scenario::Hostile {
            attack,
            conns,
            seconds,
        } => crate::hostile::hostile(cli, &tokens, &sources, attack, conns, seconds).await,
        Scenario::Floor {
            sockets,
            rate,
            seconds,
            bytes,
            per_write,
        } => crate::floor::floor(sockets, rate, seconds, bytes, per_write).await,
    })
}

/// Opens `n` sockets of `user(i)` spread over the nodes, each joined to
/// `conv(i)`, in the protocol the run speaks. Returns (node index, socket)
/// pairs and the auth times.
pub(crate) async fn open_many(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    n: usize,
    user: impl Fn(usize) -> String,
    conv: impl Fn(usize) -> String,
    node_of: impl Fn(usize) -> usize,
) -> (Vec<(usize, Ws)>, Vec<u64>, Duration) {
    let proto = cli.proto;
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let node = node_of(i);
        let base = cli.nodes[node].clone();
        let (token, conv) = (tokens.mint(&user(i)), conv(i));
        let (gate, sources) = (gate.clone(), sources.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let (mut ws, took) = proto.connect(&base, &token, &sources).await.ok()?;
            proto.join(&mut ws, &conv).await?;
            Some((node, ws, took.as_micros() as u64))
        }));
    }
    let mut socks = Vec::with_capacity(n);
    let mut auth = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some((node, ws, took))) = t.await {
            socks.push((node, ws));
            auth.push(took);
        }
    }
    (socks, auth, start.elapsed())
}

/// As `open_many`, over either transport (confab's protocol): for the
/// HTTP transport, an event stream each, joined by a POSTed frame.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open_many_over(
    transport: Transport,
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    n: usize,
    user: impl Fn(usize) -> String,
    conv: impl Fn(usize) -> String,
    node_of: impl Fn(usize) -> usize,
) -> (Vec<(usize, Inbox)>, Vec<u64>, Duration) {
    if transport == Transport::Websocket {
        let (socks, auth, took) = open_many(cli, tokens, sources, n, user, conv, node_of).await;
        let inboxes = socks
            .into_iter()
            .map(|(node, ws)| (node, Inbox::Socket(ws)))
            .collect();
        return (inboxes, auth, took);
    }
    let http = crate::events::http_client();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let node = node_of(i);
        let base = cli.nodes[node].clone();
        let (token, conv) = (tokens.mint(&user(i)), conv(i));
        let (gate, http) = (gate.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let (mut events, took) = EventStream::open(&http, &base, &token).await.ok()?;
            events.join(&http, &conv).await?;
            Some((node, Inbox::Events(events), took.as_micros() as u64))
        }));
    }
    let mut inboxes = Vec::with_capacity(n);
    let mut auth = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some((node, inbox, took))) = t.await {
            inboxes.push((node, inbox));
            auth.push(took);
        }
    }
    (inboxes, auth, start.elapsed())
}

/// What the idle scenario opened, wherever the sockets are held.
#[derive(Serialize, Deserialize)]
struct Opened {
    /// Sockets open (authenticated and joined) on each node.
    per_node: Vec<usize>,
    /// Time to `auth_success` of each, in microseconds.
    auth_us: Vec<u64>,
    /// Time to open them all, in seconds.
    took_s: f64,
}

/// The idle sockets, held open until released.
enum Held {
    /// Held by this process, one task each (see `keep`).
    Here(Vec<JoinHandle<()>>),
    /// Helper processes; each closes its sockets and exits once its stdin
    /// closes (and is killed if dropped before that).
    Helpers(Vec<tokio::process::Child>),
}

impl Held {
    /// CPU seconds the helper processes have used so far (0 for `Here`).
    fn helpers_cpu_secs(&self) -> f64 {
        match self {
            Held::Here(_) => 0.0,
            Held::Helpers(helpers) => helpers
                .iter()
                .filter_map(|h| h.id().and_then(cpu_secs))
                .sum(),
        }
    }

    /// Closes the sockets; waits for helpers to exit.
    async fn release(self) {
        match self {
            Held::Here(keepers) => keepers.iter().for_each(JoinHandle::abort),
            Held::Helpers(helpers) => {
                for mut helper in helpers {
                    drop(helper.stdin.take());
                    let _ = helper.wait().await;
                }
            }
        }
    }
}

/// Holds an idle socket: reads whatever comes, and answers the server's
/// heartbeats (a Socket.IO server closes a socket that misses its pings;
/// confab's WebSocket pings are answered by the read itself).
async fn keep(proto: Proto, mut ws: Ws) {
    while let Some(Ok(frame)) = ws.next().await {
        if let Message::Text(text) = frame {
            if matches!(proto.parse(&text), Incoming::Ping) && ws.send(proto.pong()).await.is_err()
            {
                break;
            }
        }
    }
}

/// Participants of each of confab's idle conversations: an owner and 99
/// members.
const IDLE_PER_CONVERSATION: usize = 100;

async fn idle(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    n: usize,
    procs: usize,
) -> Report {
    let proto = cli.proto;
    let generator0 = own_cpu_secs();
    // One user per socket: socket i is user `idle{i}`. For confab, in
    // conversation i / 100 (created before any socket opens, so no socket
    // hears of it); for Socket.IO, all in one room, which is just a name.
    let per_room = match proto {
        Proto::Confab => IDLE_PER_CONVERSATION,
        Proto::Socketio => n.max(1),
    };
    let mut rooms = Vec::with_capacity(n.div_ceil(per_room));
    for k in 0..n.div_ceil(per_room) {
        let first = k * per_room;
        let owner = tokens.mint(&format!("idle{first}"));
        let members: Vec<String> = (first + 1..n.min(first + per_room))
            .map(|i| format!("idle{i}"))
            .collect();
        let base = &cli.nodes[k % cli.nodes.len()];
        rooms.push(proto.create_room(base, &owner, &members).await);
    }
    let before: Vec<Option<u64>> = cli.pids.iter().map(|p| rss_kib(*p)).collect();
    let (nodes_cpu, others_cpu) = (
        CpuWatch::start(&cli.pids),
        CpuWatch::start(&cli.server_pids),
    );
    let (opened, held) = if procs == 0 {
        let (opened, keepers) = open_idle(cli, tokens, sources, 0, n, &rooms, per_room).await;
        (opened, Held::Here(keepers))
    } else {
        open_in_helpers(cli, n, procs, &rooms, per_room).await
    };
    // Let allocations settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_cpu = nodes_cpu.used() + others_cpu.used();
    let generator_cpu = own_cpu_secs() - generator0 + held.helpers_cpu_secs();
    let total: usize = opened.per_node.iter().sum();
    let mut r = Report::new("idle");
    r.add("protocol", proto.name());
    r.add("sockets requested", n);
    r.add("sockets open (auth + joined)", total);
    r.add("rooms (one user per socket)", rooms.len());
    if procs > 0 {
        r.add("held by helper processes", procs);
    }
    r.add(
        "connect rate (sockets/s)",
        per_sec(total as u64, Duration::from_secs_f64(opened.took_s)),
    );
    let mut lat = Latencies::default();
    lat.extend(opened.auth_us);
    let [p50, p99, _, max] = lat.summary();
    r.add("time to auth_success p50 (ms)", p50);
    r.add("time to auth_success p99 (ms)", p99);
    r.add("time to auth_success max (ms)", max);
    let (mut grown_kib, mut after_kib, mut measured) = (0.0, 0.0, 0usize);
    for (i, pid) in cli.pids.iter().enumerate() {
        let held = opened.per_node.get(i).copied().unwrap_or(0);
        match (before.get(i).copied().flatten(), rss_kib(*pid)) {
            (Some(b), Some(a)) => {
                r.add(&format!("node {i} sockets"), held);
                r.add(&format!("node {i} RSS before (MiB)"), b as f64 / 1024.0);
                r.add(&format!("node {i} RSS after (MiB)"), a as f64 / 1024.0);
                r.add(
                    &format!("node {i} RSS per socket (KiB)"),
                    (a as f64 - b as f64) / held.max(1) as f64,
                );
                grown_kib += a as f64 - b as f64;
                after_kib += a as f64;
                measured += held;
            }
            _ => r.add(
                &format!("node {i} RSS"),
                format!("unreadable for pid {pid}"),
            ),
        }
    }
    if measured > 0 {
        r.add(
            "RSS per socket (KiB, all nodes)",
            grown_kib / measured as f64,
        );
        r.add("node RSS after (MiB, all nodes)", after_kib / 1024.0);
    }
    if !cli.pids.is_empty() {
        r.add("server CPU (s, while opening)", server_cpu);
        r.add(
            "server CPU per socket opened (µs)",
            server_cpu * 1e6 / total.max(1) as f64,
        );
    }
    r.add("generator CPU (s, helpers included)", generator_cpu);
    held.release().await;
    r
}

/// Opens sockets `first..first + n` of an idle run in this process,
/// spread over the nodes (socket i: user `idle{i}`, in `rooms[i /
/// per_room]`), each held by a `keep` task.
async fn open_idle(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    first: usize,
    n: usize,
    rooms: &[String],
    per_room: usize,
) -> (Opened, Vec<JoinHandle<()>>) {
    let nodes = cli.nodes.len();
    let (socks, auth_us, took) = open_many(
        cli,
        tokens,
        sources,
        n,
        |i| format!("idle{}", first + i),
        |i| rooms[((first + i) / per_room).min(rooms.len() - 1)].clone(),
        |i| (first + i) % nodes,
    )
    .await;
    let mut per_node = vec![0; nodes];
    for (node, _) in &socks {
        per_node[*node] += 1;
    }
    let opened = Opened {
        per_node,
        auth_us,
        took_s: took.as_secs_f64(),
    };
    let proto = cli.proto;
    let keepers = socks
        .into_iter()
        .map(|(_, ws)| tokio::spawn(keep(proto, ws)))
        .collect();
    (opened, keepers)
}

/// Splits `n` sockets over `procs` helper processes (copies of this
/// binary running `hold`), all opening at once, and adds up what they
/// opened. The connect time is the slowest helper's.
async fn open_in_helpers(
    cli: &Cli,
    n: usize,
    procs: usize,
    rooms: &[String],
    per_room: usize,
) -> (Opened, Held) {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut helpers = Vec::with_capacity(procs);
    let mut first = 0;
    for k in 0..procs {
        let share = n / procs + usize::from(k < n % procs);
        let mut cmd = tokio::process::Command::new(&exe);
        for node in &cli.nodes {
            cmd.arg("--node").arg(node);
        }
        if let Some(secret) = &cli.secret {
            cmd.arg("--secret").arg(secret);
        }
        cmd.arg("--sources")
            .arg(cli.sources.to_string())
            .arg("--proto")
            .arg(cli.proto.name())
            .args([
                "hold",
                "--first",
                &first.to_string(),
                "--sockets",
                &share.to_string(),
                "--rooms",
                &rooms.join(","),
                "--per-room",
                &per_room.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        helpers.push(cmd.spawn().expect("a helper process starts"));
        first += share;
    }
    let mut total = Opened {
        per_node: vec![0; cli.nodes.len()],
        auth_us: Vec::new(),
        took_s: 0.0,
    };
    for helper in &mut helpers {
        let stdout = helper.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = tokio::io::BufReader::new(stdout).read_line(&mut line).await;
        // A helper that failed reports nothing: its sockets count as not opened.
        let Ok(opened) = serde_json::from_str::<Opened>(&line) else {
            eprintln!("an idle helper reported no sockets");
            continue;
        };
        for (sum, k) in total.per_node.iter_mut().zip(opened.per_node) {
            *sum += k;
        }
        total.auth_us.extend(opened.auth_us);
        total.took_s = total.took_s.max(opened.took_s);
    }
    (total, Held::Helpers(helpers))
}

/// The helper's side of `idle --procs`: opens its sockets, prints what it
/// opened, and holds them until stdin closes.
async fn hold(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    first: usize,
    n: usize,
    rooms: Vec<String>,
    per_room: usize,
) {
    use tokio::io::AsyncReadExt;
    let (opened, keepers) =
        open_idle(cli, tokens, sources, first, n, &rooms, per_room.max(1)).await;
    let line = serde_json::to_string(&opened).expect("plain numbers serialize");
    println!("{line}");
    let _ = tokio::io::stdin().read_to_end(&mut Vec::new()).await;
    Held::Here(keepers).release().await;
}

/// A receiver's tally: latencies, seqs seen, and duplicates.
struct Tally {
    local: bool,
    latencies: Vec<u64>,
    seqs: HashSet<i64>,
    dups: u64,
}

/// One receiver: tallies every delivery until it has `expect` of them
/// (once the sender has set it), or after ten seconds of silence.
/// Deliveries are parsed in place (`Proto::parse`), so the generator's
/// cost per delivery stays small next to the nodes' on the same cores.
async fn receive(
    proto: Proto,
    mut inbox: Inbox,
    local: bool,
    expect: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> Tally {
    let mut t = Tally {
        local,
        latencies: Vec::new(),
        seqs: HashSet::new(),
        dups: 0,
    };
    // One timer for the socket's life, not one per frame: a receiver that
    // already has everything notices when the sender finishes, and ten
    // seconds of silence end it.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut heard, mut quiet) = (false, Duration::ZERO);
    loop {
        let target = expect.load(Ordering::Acquire);
        if target > 0 && t.seqs.len() as u64 >= target {
            break;
        }
        let text = tokio::select! {
            next = inbox.next_text() => match next {
                Some(text) => text,
                None => break,
            },
            _ = tick.tick() => {
                quiet = if heard { Duration::ZERO } else { quiet + tick.period() };
                heard = false;
                if quiet >= Duration::from_secs(10) {
                    break;
                }
                continue;
            }
        };
        heard = true;
        match proto.parse(&text) {
            Incoming::Delivery { seq, content } => {
                if let Some(sent) = content
                    .strip_prefix("t=")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    t.latencies.push(now_us().saturating_sub(sent));
                }
                if !t.seqs.insert(seq) {
                    t.dups += 1;
                }
            }
            Incoming::Ping => inbox.pong(proto).await,
            Incoming::Other => {}
        }
    }
    done.fetch_add(1, Ordering::AcqRel);
    t
}

async fn fanout(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    c: usize,
    rate: u64,
    seconds: u64,
    transport: Transport,
) -> Report {
    let proto = cli.proto;
    let users: Vec<String> = (0..c).map(|i| format!("fan{i}")).collect();
    let sender_token = tokens.mint("fan-sender");
    let conv = proto
        .create_room(&cli.nodes[0], &sender_token, &users)
        .await;
    let nodes = cli.nodes.len();
    let (inboxes, _, _) = open_many_over(
        transport,
        cli,
        tokens,
        sources,
        c,
        |i| format!("fan{i}"),
        |_| conv.clone(),
        |i| i % nodes,
    )
    .await;
    let opened = inboxes.len();
    // What the nodes count: the receivers on the transport asked for.
    let by_transport = if proto == Proto::Confab {
        Some(
            metric_sum(
                &cli.nodes,
                &format!(
                    "confab_connections_by_transport{{transport=\"{}\"}}",
                    transport.name()
                ),
            )
            .await,
        )
    } else {
        None
    };
    let expect = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let receivers: Vec<_> = inboxes
        .into_iter()
        .map(|(node, inbox)| {
            tokio::spawn(receive(
                proto,
                inbox,
                node == 0,
                expect.clone(),
                done.clone(),
            ))
        })
        .collect();

    // The sender is on the first node and not in the room. (The peer
    // numbers a room's messages on the node that sends them, so one
    // sending node keeps its seqs unique.)
    let (mut sender, _) = proto
        .connect(&cli.nodes[0], &sender_token, sources)
        .await
        .expect("sender connects");
    let confab = proto == Proto::Confab;
    let stages0 = if confab {
        Stages::scrape(&cli.nodes).await
    } else {
        Stages::default()
    };
    let (nodes_cpu, others_cpu) = (
        CpuWatch::start(&cli.pids),
        CpuWatch::start(&cli.server_pids),
    );
    let generator0 = own_cpu_secs();
    let start = Instant::now();
    let mut sent = 0u64;
    match 1_000_000u64.checked_div(rate) {
        Some(period_us) => {
            let mut tick = tokio::time::interval(Duration::from_micros(period_us));
            let total = rate * seconds;
            while sent < total {
                tokio::select! {
                    _ = tick.tick() => {
                        let frame = proto.send_frame(&conv, &format!("t={}", now_us()), None);
                        let _ = sender.send(frame).await;
                        sent += 1;
                    }
                    // Nothing comes to the sender but the server's heartbeats.
                    frame = sender.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            if matches!(proto.parse(&text), Incoming::Ping) {
                                let _ = sender.send(proto.pong()).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        None => {
            // As fast as acks allow: one send in flight.
            'sending: while start.elapsed() < Duration::from_secs(seconds) {
                let ack = sent + 1;
                let frame = proto.send_frame(&conv, &format!("t={}", now_us()), Some(ack));
                let _ = sender.send(frame).await;
                loop {
                    match sender.next().await {
                        Some(Ok(Message::Text(text))) => {
                            if proto.is_ack(&text, ack) {
                                break;
                            }
                            if matches!(proto.parse(&text), Incoming::Ping) {
                                let _ = sender.send(proto.pong()).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break 'sending,
                    }
                }
                sent += 1;
            }
        }
    }
    let send_time = start.elapsed();
    expect.store(sent, Ordering::Release);
    let mut tallies = Vec::new();
    for t in receivers {
        if let Ok(t) = t.await {
            tallies.push(t);
        }
    }
    let took = start.elapsed();
    let node_cpu = nodes_cpu.used();
    let server_cpu = node_cpu + others_cpu.used();
    let generator_cpu = own_cpu_secs() - generator0;
    let node_rss_kib: u64 = cli.pids.iter().filter_map(|p| rss_kib(*p)).sum();
    let [append, bus] = if confab {
        stages0.means_until(&Stages::scrape(&cli.nodes).await)
    } else {
        [None, None]
    };
    let delivered: u64 = tallies.iter().map(|t| t.seqs.len() as u64).sum();
    let dups: u64 = tallies.iter().map(|t| t.dups).sum();
    let expected = sent * tallies.len() as u64;
    let (mut local, mut cross, mut all) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    for t in tallies {
        all.extend(t.latencies.clone());
        if t.local {
            local.extend(t.latencies)
        } else {
            cross.extend(t.latencies)
        }
    }
    let mut r = Report::new("fanout");
    r.add("protocol", proto.name());
    r.add("transport (receivers)", transport.name());
    r.add("receivers", c);
    r.add("receivers connected and joined", opened);
    if let Some(n) = by_transport {
        r.add(
            &format!("node: {} connections (metrics, both)", transport.name()),
            n,
        );
    }
    r.add("messages sent", sent);
    r.add("send rate (msgs/s)", per_sec(sent, send_time));
    r.add("deliveries/s offered", (rate * c as u64) as f64);
    r.add("deliveries/s while sending", per_sec(delivered, send_time));
    // Until the last delivery arrived (within the receivers' 100 ms poll):
    // what the nodes sustained, whatever was offered.
    r.add("deliveries/s sustained", per_sec(delivered, took));
    r.add("lost deliveries", expected.saturating_sub(delivered));
    r.add("duplicate deliveries", dups);
    for (name, lat) in [
        ("", &mut all),
        ("local ", &mut local),
        ("cross-node ", &mut cross),
    ] {
        if lat.len() > 0 {
            let [p50, p99, p999, max] = lat.summary();
            r.add(&format!("{name}latency p50 (ms)"), p50);
            r.add(&format!("{name}latency p99 (ms)"), p99);
            r.add(&format!("{name}latency p999 (ms)"), p999);
            r.add(&format!("{name}latency max (ms)"), max);
        }
    }
    // Where a message's time goes inside the nodes before its frames are
    // queued; the rest of the latency is the fan-out, the writes and the
    // receivers' reads.
    if let Some(ms) = append {
        r.add("node: store append mean (ms)", ms);
    }
    if let Some(ms) = bus {
        r.add("node: publish to hub mean (ms)", ms);
    }
    if !cli.pids.is_empty() {
        r.add("node CPU (s, all nodes)", node_cpu);
        r.add(
            "node CPU per delivery (µs)",
            node_cpu * 1e6 / delivered.max(1) as f64,
        );
        // The nodes and every other process the server needs (Redis, a
        // database of its own), per delivery.
        r.add("server CPU (s, nodes + others)", server_cpu);
        r.add(
            "server CPU per delivery (µs)",
            server_cpu * 1e6 / delivered.max(1) as f64,
        );
        r.add(
            "node RSS after (MiB, all nodes)",
            node_rss_kib as f64 / 1024.0,
        );
    }
    r.add("generator CPU (s)", generator_cpu);
    r.add(
        "generator CPU (% of a core)",
        generator_cpu * 100.0 / took.as_secs_f64().max(1e-9),
    );
    r.add(
        "generator CPU per delivery (µs)",
        generator_cpu * 1e6 / delivered.max(1) as f64,
    );
    r.add("run time (s)", took.as_secs_f64());
    r
}

async fn rooms(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    n: usize,
    k: usize,
    rate: u64,
    seconds: u64,
) -> Report {
    let mut convs = Vec::with_capacity(n);
    for room in 0..n {
        let members: Vec<String> = (1..k).map(|m| format!("room{room}-m{m}")).collect();
        let owner = tokens.mint(&format!("room{room}-m0"));
        convs.push(client::create_chat(&cli.nodes[room % cli.nodes.len()], &owner, &members).await);
    }
    let nodes = cli.nodes.len();
    let clients = n * k;
    let (socks, _, _) = open_many(
        cli,
        tokens,
        sources,
        clients,
        |i| format!("room{}-m{}", i / k, i % k),
        |i| convs[i / k].clone(),
        |i| i % nodes,
    )
    .await;
    let acked = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let cpu0 = total_cpu(&cli.pids);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, (_, mut ws)) in socks.into_iter().enumerate() {
        let conv = convs[i / k].clone();
        let (acked, delivered) = (acked.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            // Stagger the first sends.
            tokio::time::sleep(Duration::from_micros((i as u64 * 7919) % (1_000_000 / rate.max(1)))).await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() >= stop_at {
                            break;
                        }
                        let frame = json!({"type": "send_message", "id": "s", "data": {"conversation_id": conv, "content": format!("t={}", now_us())}});
                        client::send(&mut ws, frame).await;
                    }
                    f = client::next(&mut ws) => {
                        let Some(f) = f else { break };
                        match f["type"].as_str() {
                            Some("ack") => { acked.fetch_add(1, Ordering::Relaxed); }
                            Some("message_received") => {
                                delivered.fetch_add(1, Ordering::Relaxed);
                                if let Some(sent) = f["data"]["message"]["content"].as_str().and_then(|c| c.strip_prefix("t=")).and_then(|s| s.parse::<u64>().ok()) {
                                    lat.push(now_us().saturating_sub(sent));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    let took = start.elapsed();
    let cpu = total_cpu(&cli.pids) - cpu0;
    let mut r = Report::new("rooms");
    r.add("conversations", n);
    r.add("members each", k);
    r.add("offered sends/s", (clients as u64 * rate) as f64);
    r.add(
        "acked sends/s",
        per_sec(acked.load(Ordering::Relaxed), took),
    );
    r.add(
        "deliveries/s",
        per_sec(delivered.load(Ordering::Relaxed), took),
    );
    let [p50, p99, p999, max] = all.summary();
    r.add("latency p50 (ms)", p50);
    r.add("latency p99 (ms)", p99);
    r.add("latency p999 (ms)", p999);
    r.add("latency max (ms)", max);
    if !cli.pids.is_empty() {
        r.add("node CPU (s, all nodes)", cpu);
    }
    r
}

async fn storm(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    n: usize,
    kill: bool,
) -> Report {
    assert!(
        cli.nodes.len() >= 2 && !cli.pids.is_empty(),
        "storm needs two nodes and the first node's pid"
    );
    let owner = tokens.mint("storm");
    let conv = client::create_chat(&cli.nodes[1], &owner, &[]).await;
    let (socks, _, _) = open_many(
        cli,
        tokens,
        sources,
        n,
        |_| "storm".into(),
        |_| conv.clone(),
        |_| 0,
    )
    .await;
    let opened = socks.len();
    // A writer on another node keeps the conversation moving throughout.
    let (mut writer, _) = client::connect(&cli.nodes[1], &owner, sources)
        .await
        .expect("writer connects");
    let writing = Arc::new(AtomicU64::new(1));
    let sent = Arc::new(AtomicU64::new(0));
    let (w, s, c2) = (writing.clone(), sent.clone(), conv.clone());
    let writer_task = tokio::spawn(async move {
        while w.load(Ordering::Acquire) == 1 {
            let frame = json!({"type": "send_message", "id": "w", "data": {"conversation_id": c2, "content": "storm"}});
            client::send(&mut writer, frame).await;
            while let Some(f) = client::next(&mut writer).await {
                if f["data"]["ref"] == "w" {
                    break;
                }
            }
            s.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let survivors: Vec<String> = cli.nodes[1..].to_vec();
    let signal_at = Instant::now();
    let sig = if kill { "-KILL" } else { "-TERM" };
    let _ = std::process::Command::new("kill")
        .args([sig, &cli.pids[0].to_string()])
        .status();
    let mut tasks = Vec::new();
    for (i, (_, mut ws)) in socks.into_iter().enumerate() {
        let (token, conv, sources) = (tokens.mint("storm"), conv.clone(), sources.clone());
        let base = survivors[i % survivors.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = HashSet::new();
            while let Some(f) = client::next(&mut ws).await {
                if let Some(seq) = f["data"]["message"]["seq"].as_i64() {
                    seqs.insert(seq);
                }
            }
            let closed = signal_at.elapsed();
            let since = seqs.iter().max().copied().unwrap_or(0);
            for _ in 0..50 {
                if let Ok((mut ws, _)) = client::connect(&base, &token, &sources).await {
                    if client::join(&mut ws, &conv, Some(since)).await.is_some() {
                        return Some((closed, signal_at.elapsed(), ws, seqs));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }));
    }
    let mut resumed = Vec::new();
    let mut resume_lat = Latencies::default();
    let mut closed_lat = Latencies::default();
    for t in tasks {
        if let Ok(Some((closed, at, ws, seqs))) = t.await {
            closed_lat.extend(vec![closed.as_micros() as u64]);
            resume_lat.extend(vec![at.as_micros() as u64]);
            resumed.push((ws, seqs));
        }
    }
    let all_resumed = signal_at.elapsed();
    writing.store(0, Ordering::Release);
    let _ = writer_task.await;
    let total = sent.load(Ordering::Acquire) as i64;
    // Read what each resumed socket still has coming, then count the gaps.
    let mut missed = 0u64;
    for (mut ws, mut seqs) in resumed.drain(..) {
        while seqs.len() < total as usize {
            match tokio::time::timeout(Duration::from_secs(5), client::next(&mut ws)).await {
                Ok(Some(f)) => {
                    if let Some(seq) = f["data"]["message"]["seq"].as_i64() {
                        seqs.insert(seq);
                    }
                }
                _ => break,
            }
        }
        missed += (1..=total).filter(|s| !seqs.contains(s)).count() as u64;
    }
    let mut r = Report::new("storm");
    r.add("sockets on the stopped node", opened);
    r.add("signal", if kill { "SIGKILL" } else { "SIGTERM" });
    r.add("sockets resumed", resume_lat.len());
    r.add("time until all resumed (s)", all_resumed.as_secs_f64());
    let [p50, _, _, max] = closed_lat.summary();
    r.add("old socket closed p50 (ms)", p50);
    r.add("old socket closed max (ms)", max);
    let [p50, p99, _, max] = resume_lat.summary();
    r.add("resume p50 (ms)", p50);
    r.add("resume p99 (ms)", p99);
    r.add("resume max (ms)", max);
    r.add("messages during the storm", total);
    r.add("messages missed", missed);
    r
}

async fn stream(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    w: usize,
    n: usize,
) -> Report {
    let users: Vec<String> = (0..w).map(|i| format!("watch{i}")).collect();
    let owner = tokens.mint("watch-owner");
    let conv = client::create_chat(&cli.nodes[0], &owner, &users).await;
    let nodes = cli.nodes.len();
    let (socks, _, _) = open_many(
        cli,
        tokens,
        sources,
        w,
        |i| format!("watch{i}"),
        |_| conv.clone(),
        |i| i % nodes,
    )
    .await;
    let mut tasks = Vec::new();
    for (_, mut ws) in socks {
        tasks.push(tokio::spawn(async move {
            let (mut frames, mut start) = (0u64, None);
            while let Some(f) = client::next(&mut ws).await {
                match f["type"].as_str() {
                    Some("stream_start") => start = Some(Instant::now()),
                    Some("stream_content") => frames += 1,
                    Some("stream_complete") | Some("stream_error") => break,
                    _ => {}
                }
            }
            (frames, start.map(|s| s.elapsed()).unwrap_or_default())
        }));
    }
    let (mut sender, _) = client::connect(&cli.nodes[0], &owner, sources)
        .await
        .expect("sender connects");
    let text: String = (0..n).map(|i| format!("w{} ", i % 10)).collect();
    client::send(&mut sender, json!({"type": "send_message", "data": {"conversation_id": conv, "content": text.trim_end()}})).await;
    let cpu0 = total_cpu(&cli.pids);
    client::send(
        &mut sender,
        json!({"type": "stream_response", "data": {"conversation_id": conv}}),
    )
    .await;
    let (mut frames, mut longest) = (0u64, Duration::ZERO);
    for t in tasks {
        if let Ok((f, d)) = t.await {
            frames += f;
            longest = longest.max(d);
        }
    }
    let cpu = total_cpu(&cli.pids) - cpu0;
    let per_socket = frames as f64 / w.max(1) as f64;
    let mut r = Report::new("stream");
    r.add("watchers", w);
    r.add("tokens", n);
    r.add("stream time (s)", longest.as_secs_f64());
    r.add("frames per socket", per_socket);
    r.add(
        "frames per socket per second",
        per_socket / longest.as_secs_f64().max(1e-9),
    );
    if !cli.pids.is_empty() {
        r.add("node CPU (s, all nodes)", cpu);
        r.add(
            "node CPU per frame delivered (µs)",
            cpu * 1e6 / frames.max(1) as f64,
        );
    }
    r
}
