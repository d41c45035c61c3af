//! Assistant answers under the v1.1 queue (docs/protocol.md, "v1.1:
//! assistants"): what tabs joining mid-answer cost (the catch-up: a
//! `stream_snapshot` right after `joined`), and how an assistant's queue
//! runs a burst of requests from many users with `max_concurrent`.
//!
//! Both need assistants configured on the nodes (bench/run.sh sets them):
//! an echo assistant slow enough that an answer lasts seconds for the
//! catch-up, and one with `max_concurrent` (and one without) for the
//! queue; and `streaming.max_streams_per_user` raised for the burst.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::client::{self, Sources, Tokens, Ws};
use crate::stats::{metric_sum, per_sec, sched_cpu_secs, total_cpu, Latencies};
use crate::{Cli, Report};

/// Longest any one phase may take before the scenario gives up on the
/// sockets still waiting (they count as failed).
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// Answers the clients see running at once for less than this are the
/// skew between sockets on two nodes (one answer's end reaching its tab
/// after the next one's start reached another), not answers running.
const SKEW: Duration = Duration::from_millis(10);

/// Words the answers are made of: an echo assistant repeats the question,
/// so the question is a text of these (6 characters a word on average,
/// space included).
const WORDS: [&str; 16] = [
    "the", "answer", "streams", "word", "by", "word", "while", "tabs", "join", "and", "catch",
    "up", "from", "a", "snapshot", "quickly",
];

fn text_of(words: usize, salt: usize) -> String {
    (0..words)
        .map(|i| WORDS[(i * 7 + salt) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The next text frame before `deadline`, raw.
async fn next_until(ws: &mut Ws, deadline: tokio::time::Instant) -> Option<String> {
    tokio::time::timeout_at(deadline, client::next_text(ws))
        .await
        .ok()
        .flatten()
}

/// Reads frames until one answers `reference` (an `ack` or an `error`).
async fn reply_to(ws: &mut Ws, reference: &str) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    loop {
        let f: Value = serde_json::from_str(&next_until(ws, deadline).await?).ok()?;
        if f["data"]["ref"] == reference {
            return Some(f);
        }
    }
}

/// The nodes' and the other servers' (Redis) CPU at one moment: /proc's
/// ticks (as every scenario reads them) and the schedulers' nanoseconds.
#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    nodes_ticks: f64,
    nodes: f64,
    others: f64,
    generator: f64,
}

impl CpuMark {
    fn now(cli: &Cli) -> Self {
        CpuMark {
            at: Instant::now(),
            nodes_ticks: total_cpu(&cli.pids),
            nodes: sched_cpu_secs(&cli.pids),
            others: sched_cpu_secs(&cli.server_pids),
            generator: sched_cpu_secs(&[std::process::id()]),
        }
    }
}

// ------------------------------------------------------------------ catch-up

pub struct CatchupSettings {
    /// Tabs joining mid-answer (and as many again at rest, for comparison).
    pub tabs: usize,
    /// Words of the answer.
    pub words: usize,
    /// The assistant that answers: an echo slow enough to last seconds.
    pub assistant: String,
    /// How long after `stream_start` the tabs join.
    pub join_after: Duration,
    /// How long the nodes' CPU is read before the joins, with the answer
    /// running and no one joining: its rate is taken off the joins' CPU.
    pub baseline: Duration,
}

/// Whether a wave of joins meets an answer being written or none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wave {
    MidAnswer,
    AtRest,
}

/// What one tab saw of its join.
#[derive(Default)]
struct Tab {
    /// The catch-up reached it: `stream_snapshot` (mid-answer; or the first
    /// live piece if the answer had no text yet), or `joined` (at rest).
    reached: bool,
    /// Frames and their payload bytes from the join up to and including
    /// that frame.
    frames: u64,
    bytes: u64,
    /// From sending the join to that frame, and from the release of the
    /// wave (all tabs at once) to it.
    took_us: u64,
    since_release_us: u64,
    /// Mid-answer: the snapshot's index (None: no snapshot, pieces from 0).
    snapshot_index: Option<u64>,
    got_snapshot: bool,
    /// A snapshot that came after live pieces (`early`: the pieces came
    /// too early), and live pieces the snapshot already covered or that
    /// came twice (`repeated`): none should.
    early: u64,
    repeated: u64,
    /// Whether snapshot + later pieces equal the stored answer (None:
    /// the answer's end never came).
    matches: Option<bool>,
    /// What was early or repeated, for a human to read.
    notes: Vec<String>,
}

/// Tally of a wave.
struct WaveFigures {
    tabs: Vec<Tab>,
    /// Release to the last tab reached.
    until_last: Duration,
    /// CPU over the wave (release to last reached), and the CPU rate just
    /// before it (the answer alone, or nothing at rest), per second.
    before: CpuMark,
    released: CpuMark,
    done: CpuMark,
}

/// One tab: waits for the wave's release, joins, counts what comes up to
/// the catch-up, reports it reached, and (mid-answer) follows the answer
/// to its end and checks the text. A tab that fails reports too, so the
/// wave never waits for it.
async fn tab(
    ws: Ws,
    conv: String,
    wave: Wave,
    go: watch::Receiver<Option<Instant>>,
    reached: mpsc::UnboundedSender<()>,
) -> Tab {
    let out = follow(ws, conv, wave, go, &reached).await;
    if !out.reached {
        let _ = reached.send(());
    }
    out
}

async fn follow(
    mut ws: Ws,
    conv: String,
    wave: Wave,
    mut go: watch::Receiver<Option<Instant>>,
    reached: &mpsc::UnboundedSender<()>,
) -> Tab {
    let mut out = Tab::default();
    let Ok(released) = go.wait_for(|v| v.is_some()).await.map(|v| v.unwrap()) else {
        return out;
    };
    let sent = Instant::now();
    let join =
        json!({"type": "join_conversation", "id": "join", "data": {"conversation_id": conv}});
    if !client::send(&mut ws, join).await {
        return out;
    }
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    let mut snapshot = String::new();
    let mut pieces: BTreeMap<u64, String> = BTreeMap::new();
    let mut caught_up = false;
    while let Some(text) = next_until(&mut ws, deadline).await {
        let Ok(f) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let kind = f["type"].as_str().unwrap_or_default();
        if !caught_up {
            let live_piece = kind == "stream_content";
            // The first live piece without a snapshot before it is not
            // part of the catch-up (an answer with no text yet).
            if !live_piece {
                out.frames += 1;
                out.bytes += text.len() as u64;
            }
            if kind == "error" && f["data"]["ref"] == "join" {
                eprintln!("confab-bench: stream-catchup: a join failed: {text}");
                return out;
            }
            let end = match wave {
                Wave::AtRest => kind == "joined",
                Wave::MidAnswer => kind == "stream_snapshot" || live_piece,
            };
            if end {
                caught_up = true;
                out.reached = true;
                out.took_us = sent.elapsed().as_micros() as u64;
                out.since_release_us = released.elapsed().as_micros() as u64;
                let _ = reached.send(());
                if wave == Wave::AtRest {
                    break;
                }
                if kind == "stream_snapshot" {
                    out.got_snapshot = true;
                    out.snapshot_index = f["data"]["index"].as_u64();
                    snapshot = f["data"]["content"].as_str().unwrap_or_default().to_owned();
                    continue;
                }
            }
        }
        match kind {
            "stream_content" => {
                let index = f["data"]["index"].as_u64().unwrap_or(0);
                if let Some(s) = out.snapshot_index.filter(|s| index <= *s) {
                    out.repeated += 1;
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    out.notes.push(format!(
                        "piece {index} after a snapshot up to {s} ({:.1} ms after the snapshot, {ms:.1} ms after the join)",
                        ms - out.took_us as f64 / 1000.0
                    ));
                    continue;
                }
                let piece = f["data"]["content"].as_str().unwrap_or_default().to_owned();
                if pieces.insert(index, piece).is_some() {
                    out.repeated += 1;
                    out.notes.push(format!("piece {index} twice"));
                }
            }
            "stream_snapshot" if caught_up => {
                out.early += 1;
                out.notes.push(format!(
                    "a snapshot up to {} after live pieces",
                    f["data"]["index"]
                ));
            }
            "stream_complete" | "stream_error" => {
                let stored = f["data"]["message"]["content"].as_str();
                let first = out.snapshot_index.map_or(0, |s| s + 1);
                let gapless = pieces
                    .keys()
                    .copied()
                    .eq(first..first + pieces.len() as u64);
                let mut text = snapshot.clone();
                text.extend(pieces.values().map(String::as_str));
                out.matches = Some(gapless && stored == Some(text.as_str()));
                break;
            }
            _ => {}
        }
    }
    out
}

/// Opens `n` tabs of `user` (authenticated, not joined), spread over the
/// nodes, each waiting for the wave's release.
async fn open_tabs(
    cli: &Cli,
    token: &str,
    sources: &Arc<Sources>,
    n: usize,
    offset: usize,
) -> Vec<Ws> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let base = cli.nodes[(i + offset) % cli.nodes.len()].clone();
        let (token, sources) = (token.to_owned(), sources.clone());
        tasks.push(tokio::spawn(async move {
            client::connect(&base, &token, &sources)
                .await
                .ok()
                .map(|(ws, _)| ws)
        }));
    }
    let mut tabs = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(ws)) = t.await {
            tabs.push(ws);
        }
    }
    tabs
}

/// Releases a wave of tabs at once, after reading the CPU for `baseline`
/// first; returns when every tab reached its catch-up (or gave up), with
/// the tabs still running (mid-answer, they follow the answer).
async fn release_wave(
    cli: &Cli,
    socks: Vec<Ws>,
    conv: &str,
    wave: Wave,
    baseline: Duration,
) -> (Vec<tokio::task::JoinHandle<Tab>>, Duration, [CpuMark; 3]) {
    let (go_tx, go_rx) = watch::channel(None);
    let (reached_tx, mut reached_rx) = mpsc::unbounded_channel();
    let n = socks.len();
    let tasks: Vec<_> = socks
        .into_iter()
        .map(|ws| {
            tokio::spawn(tab(
                ws,
                conv.to_owned(),
                wave,
                go_rx.clone(),
                reached_tx.clone(),
            ))
        })
        .collect();
    drop(reached_tx);
    let before = CpuMark::now(cli);
    tokio::time::sleep(baseline).await;
    let released = CpuMark::now(cli);
    let _ = go_tx.send(Some(released.at));
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout_at(deadline, reached_rx.recv()).await {
            Ok(Some(())) => seen += 1,
            _ => break,
        }
    }
    let done = CpuMark::now(cli);
    (tasks, done.at - released.at, [before, released, done])
}

/// What a socket joined before the answer saw of it: its pieces, in
/// index order, and the stored text at its end.
type Observed = Option<(String, Option<String>)>;

/// Follows an answer from a socket joined before it; returns the socket
/// (still joined: the node keeps following the conversation) and what it
/// saw.
async fn observe(mut ws: Ws) -> (Ws, Observed) {
    let seen = observe_on(&mut ws).await;
    (ws, seen)
}

async fn observe_on(ws: &mut Ws) -> Observed {
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    let mut pieces = BTreeMap::new();
    loop {
        let f: Value = serde_json::from_str(&next_until(ws, deadline).await?).ok()?;
        match f["type"].as_str() {
            Some("stream_content") => {
                pieces.insert(
                    f["data"]["index"].as_u64().unwrap_or(0),
                    f["data"]["content"].as_str().unwrap_or_default().to_owned(),
                );
            }
            Some("stream_complete") | Some("stream_error") => {
                let stored = f["data"]["message"]["content"].as_str().map(str::to_owned);
                return Some((pieces.into_values().collect(), stored));
            }
            _ => {}
        }
    }
}

pub async fn catchup(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    s: CatchupSettings,
) -> Report {
    // Every tab is the requester's own (the user is present already, so
    // the joins announce no presence and `joined` lists one participant):
    // what the joins cost is the join and its catch-up only.
    let user = "catchup-user";
    let token = tokens.mint(user);
    let conv = client::create_chat(&cli.nodes[0], &token, &[]).await;
    // One socket per node joined before the answer: both nodes follow the
    // conversation and know the answer runs, as with tabs already open.
    let mut observers = Vec::new();
    for base in &cli.nodes {
        let (mut ws, _) = client::connect(base, &token, sources)
            .await
            .expect("an observer connects");
        client::join(&mut ws, &conv, None)
            .await
            .expect("an observer joins");
        observers.push(ws);
    }
    let mid = open_tabs(cli, &token, sources, s.tabs, 0).await;
    let rest = open_tabs(cli, &token, sources, s.tabs, 0).await;
    let (opened_mid, opened_rest) = (mid.len(), rest.len());

    // The question, then the answer, asked on the first node (which runs it).
    let question = text_of(s.words, 0);
    let mut asker = observers.remove(0);
    let others: Vec<_> = observers
        .into_iter()
        .map(|ws| tokio::spawn(observe(ws)))
        .collect();
    client::send(&mut asker, json!({"type": "send_message", "id": "q", "data": {"conversation_id": conv, "content": question}})).await;
    let acked = reply_to(&mut asker, "q")
        .await
        .expect("the question is acked");
    assert_eq!(acked["type"], "ack", "the question was refused: {acked}");
    client::send(&mut asker, json!({"type": "stream_response", "id": "a", "data": {"conversation_id": conv, "assistant_id": s.assistant}})).await;
    // The ack and `stream_start`, in whichever order they come.
    let (mut acked, mut started) = (false, None);
    while !acked || started.is_none() {
        let text = client::next_text(&mut asker)
            .await
            .expect("the answer starts");
        let f: Value = serde_json::from_str(&text).unwrap_or_default();
        if f["data"]["ref"] == "a" {
            assert_eq!(
                f["type"], "ack",
                "stream_response was refused (is assistant `{}` configured?): {f}",
                s.assistant
            );
            acked = true;
        }
        match f["type"].as_str() {
            Some("stream_start") => started = Some(Instant::now()),
            Some("stream_error") => panic!("the answer failed: {f}"),
            _ => {}
        }
    }
    let started = started.unwrap_or_else(Instant::now);
    let asker_task = tokio::spawn(observe(asker));

    // Mid-answer: the tabs join at once.
    let wait = s.join_after.saturating_sub(s.baseline);
    tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
    let (tasks, until_last, [before, released, done]) =
        release_wave(cli, mid, &conv, Wave::MidAnswer, s.baseline).await;
    let joined_at = released.at - started;
    let mut tabs = Vec::new();
    for t in tasks {
        tabs.push(t.await.unwrap_or_default());
    }
    let mid_wave = WaveFigures {
        tabs,
        until_last,
        before,
        released,
        done,
    };
    let answer_time = started.elapsed();
    // The observers stay joined: both nodes keep following the
    // conversation, and know no answer runs in it.
    let mut observed = Vec::new();
    let mut kept = Vec::new();
    for t in std::iter::once(asker_task).chain(others) {
        match t.await {
            Ok((ws, seen)) => {
                observed.push(seen);
                kept.push(ws);
            }
            Err(_) => observed.push(None),
        }
    }
    // At rest: the answer is over (and out of the queue); as many tabs
    // join, on nodes that follow the conversation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tasks, until_last, [before, released, done]) =
        release_wave(cli, rest, &conv, Wave::AtRest, s.baseline).await;
    let mut tabs = Vec::new();
    for t in tasks {
        tabs.push(t.await.unwrap_or_default());
    }
    let rest_wave = WaveFigures {
        tabs,
        until_last,
        before,
        released,
        done,
    };
    drop(kept);

    let mut r = Report::new("stream catch-up");
    r.add("assistant", s.assistant.as_str());
    r.add("answer words", s.words);
    r.add("answer time (s, start to end)", answer_time.as_secs_f64());
    r.add(
        "tabs joined after stream_start (s)",
        joined_at.as_secs_f64(),
    );
    r.add(
        "tabs opened (mid-answer, at rest)",
        format!("{opened_mid}, {opened_rest}"),
    );
    let stored = observed
        .first()
        .and_then(|o| o.as_ref())
        .and_then(|(_, stored)| stored.clone());
    r.add(
        "stored answer (chars)",
        stored.as_ref().map_or(0, |t| t.chars().count()),
    );
    r.add(
        "stored answer = question (echo)",
        stored.as_deref() == Some(question.as_str()),
    );
    // The sockets joined before the answer must see all of it too.
    let observers_wrong = observed
        .iter()
        .filter(|o| !matches!(o, Some((pieces, Some(stored))) if pieces == stored))
        .count();
    r.add("observers whose pieces != stored answer", observers_wrong);
    for (name, wave) in [("mid-answer", &mid_wave), ("at rest", &rest_wave)] {
        let n = wave.tabs.len().max(1) as f64;
        let reached = wave.tabs.iter().filter(|t| t.reached).count();
        let bytes: u64 = wave.tabs.iter().map(|t| t.bytes).sum();
        let frames: u64 = wave.tabs.iter().map(|t| t.frames).sum();
        let upto = if name == "at rest" {
            "joined"
        } else {
            "snapshot"
        };
        r.add(&format!("{name}: tabs caught up"), reached);
        r.add(
            &format!("{name}: bytes per tab (to {upto})"),
            bytes as f64 / n,
        );
        r.add(
            &format!("{name}: frames per tab (to {upto})"),
            frames as f64 / n,
        );
        r.add(&format!("{name}: bytes, all tabs"), bytes);
        let mut took = Latencies::default();
        took.extend(
            wave.tabs
                .iter()
                .filter(|t| t.reached)
                .map(|t| t.took_us)
                .collect(),
        );
        let [p50, p99, _, max] = took.summary();
        r.add(&format!("{name}: join to {upto} p50 (ms)"), p50);
        r.add(&format!("{name}: join to {upto} p99 (ms)"), p99);
        r.add(&format!("{name}: join to {upto} max (ms)"), max);
        r.add(
            &format!("{name}: release to last {upto} (ms)"),
            wave.until_last.as_secs_f64() * 1000.0,
        );
        let window = (wave.done.at - wave.released.at).as_secs_f64();
        let base = (wave.released.at - wave.before.at).as_secs_f64().max(1e-9);
        let nodes = wave.done.nodes - wave.released.nodes;
        let nodes_rate = (wave.released.nodes - wave.before.nodes) / base;
        let others = wave.done.others - wave.released.others;
        let others_rate = (wave.released.others - wave.before.others) / base;
        if !cli.pids.is_empty() {
            r.add(
                &format!("{name}: node CPU (s, both, /proc ticks)"),
                wave.done.nodes_ticks - wave.released.nodes_ticks,
            );
            r.add(
                &format!("{name}: node CPU (ms, both, schedstat)"),
                nodes * 1000.0,
            );
            r.add(
                &format!("{name}: node CPU before, same span (ms)"),
                nodes_rate * window * 1000.0,
            );
            let net = nodes - nodes_rate * window;
            r.add(
                &format!("{name}: node CPU net per join (µs)"),
                net * 1e6 / n,
            );
        }
        if !cli.server_pids.is_empty() {
            r.add(
                &format!("{name}: Redis CPU (ms, schedstat)"),
                others * 1000.0,
            );
            r.add(
                &format!("{name}: Redis CPU net per join (µs)"),
                (others - others_rate * window) * 1e6 / n,
            );
        }
        r.add(
            &format!("{name}: generator CPU (ms)"),
            (wave.done.generator - wave.released.generator) * 1000.0,
        );
    }
    let tabs = &mid_wave.tabs;
    r.add(
        "mid-answer: tabs with a snapshot",
        tabs.iter().filter(|t| t.got_snapshot).count(),
    );
    let mut covered: Vec<u64> = tabs
        .iter()
        .filter_map(|t| t.snapshot_index.map(|i| i + 1))
        .collect();
    covered.sort_unstable();
    r.add(
        "mid-answer: pieces in the snapshot (median)",
        covered.get(covered.len() / 2).copied().unwrap_or(0),
    );
    r.add(
        "mid-answer: snapshots after a live piece",
        tabs.iter().map(|t| t.early).sum::<u64>(),
    );
    r.add(
        "mid-answer: pieces repeated",
        tabs.iter().map(|t| t.repeated).sum::<u64>(),
    );
    for note in tabs.iter().flat_map(|t| &t.notes).take(5) {
        eprintln!("confab-bench: stream-catchup: {note}");
    }
    r.add(
        "mid-answer: answer never ended",
        tabs.iter().filter(|t| t.matches.is_none()).count(),
    );
    // The check: snapshot + later pieces = the stored answer, every tab.
    r.add(
        "mid-answer: snapshot + pieces != stored",
        tabs.iter().filter(|t| t.matches != Some(true)).count(),
    );
    r
}

// ------------------------------------------------------------------ queue

pub struct QueueSettings {
    /// Users asking, one socket each, spread over the nodes.
    pub users: usize,
    /// Conversations of each user (one answer at a time in each).
    pub conversations: usize,
    /// Requests each user sends in each of its conversations, at once.
    pub requests: usize,
    /// Words of each answer.
    pub words: usize,
    /// The assistant asked.
    pub assistant: String,
    /// Its `max_concurrent` as configured on the nodes (0: none): the most
    /// answers the clients may see running at once.
    pub limit: usize,
}

/// One request, as its user's socket saw it.
#[derive(Default, Clone)]
struct Request {
    sent: Option<Instant>,
    acked: Option<Instant>,
    refused: Option<String>,
    stream: Option<String>,
    queued_frames: u64,
    max_position: u64,
    start: Option<Instant>,
    /// `stream_complete` came; `end`: it or `stream_error` came.
    complete: Option<Instant>,
    end: Option<Instant>,
    /// The answer ended with `stream_complete` carrying the stored message.
    stored: bool,
    finish: Option<String>,
    error: Option<String>,
    /// `stream_queued` after the stream started (a stale position).
    queued_late: u64,
    /// `stream_start`s beyond the first: the answer ran again.
    reruns: u64,
    /// Other frames of the stream in the wrong order: a piece or an end
    /// before `stream_start`, anything after the end.
    out_of_order: u64,
    /// The stream's frames as they came: kind, milliseconds after the
    /// request was sent, and the message of a `stream_error`.
    log: Vec<String>,
}

/// A user: joins its conversations, asks its questions, waits for the
/// release, sends every request at once, and follows them to their ends.
async fn asker(
    mut ws: Ws,
    convs: Vec<String>,
    s: Arc<QueueSettings>,
    salt: usize,
    ready: mpsc::UnboundedSender<()>,
    mut go: watch::Receiver<bool>,
) -> Vec<Request> {
    for conv in &convs {
        if client::join(&mut ws, conv, None).await.is_none() {
            return Vec::new();
        }
    }
    for (c, conv) in convs.iter().enumerate() {
        let id = format!("q{c}");
        let question = text_of(s.words, salt + c);
        client::send(&mut ws, json!({"type": "send_message", "id": id, "data": {"conversation_id": conv, "content": question}})).await;
        match reply_to(&mut ws, &id).await {
            Some(f) if f["type"] == "ack" => {}
            other => {
                eprintln!("confab-bench: stream-queue: a question was refused: {other:?}");
                return Vec::new();
            }
        }
    }
    let _ = ready.send(());
    if go.wait_for(|v| *v).await.is_err() {
        return Vec::new();
    }
    let total = convs.len() * s.requests;
    let mut reqs = vec![Request::default(); total];
    // Round by round, so each conversation's requests are interleaved
    // with the others'.
    for (k, req) in reqs.iter_mut().enumerate() {
        let conv = &convs[k % convs.len()];
        req.sent = Some(Instant::now());
        let frame = json!({"type": "stream_response", "id": format!("r{k}"), "data": {"conversation_id": conv, "assistant_id": s.assistant}});
        if !client::send(&mut ws, frame).await {
            return reqs;
        }
    }
    let mut by_stream: HashMap<String, usize> = HashMap::new();
    // Frames of a stream that came before its ack (its start may).
    let mut before_ack: HashMap<String, Vec<(Value, Instant)>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    let settled = |reqs: &[Request]| reqs.iter().all(|r| r.refused.is_some() || r.end.is_some());
    while !settled(&reqs) {
        let Some(text) = next_until(&mut ws, deadline).await else {
            break;
        };
        let now = Instant::now();
        let Ok(f) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let kind = f["type"].as_str().unwrap_or_default();
        let reference = f["data"]["ref"].as_str().unwrap_or_default();
        if let Some(k) = reference
            .strip_prefix('r')
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|k| *k < total)
        {
            match kind {
                "ack" => {
                    let stream = f["data"]["stream_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    reqs[k].acked = Some(now);
                    reqs[k].stream = Some(stream.clone());
                    by_stream.insert(stream.clone(), k);
                    for (early, at) in before_ack.remove(&stream).unwrap_or_default() {
                        on_stream_frame(&mut reqs[k], &early, at);
                    }
                }
                _ => {
                    let code = f["data"]["code"].as_str().unwrap_or("?").to_owned();
                    reqs[k].refused = Some(code);
                }
            }
            continue;
        }
        let Some(stream) = f["data"]["stream_id"].as_str() else {
            continue;
        };
        match by_stream.get(stream) {
            Some(&k) => on_stream_frame(&mut reqs[k], &f, now),
            None => before_ack
                .entry(stream.to_owned())
                .or_default()
                .push((f.clone(), now)),
        }
    }
    reqs
}

/// A frame of the request's stream, which came at `at`.
/// The most answers running at once for at least `min` in one stretch,
/// from the (instant, +1 start / -1 end) edges in time order.
fn most_held(edges: &[(Instant, i32)], min: Duration) -> usize {
    let mut best = 0;
    for level in 1.. {
        let (mut running, mut since, mut held) = (0i32, None, false);
        for &(at, d) in edges {
            running += d;
            match (running >= level, since) {
                (true, None) => since = Some(at),
                (false, Some(from)) => {
                    held |= at - from >= min;
                    since = None;
                }
                _ => {}
            }
        }
        if !held {
            return best;
        }
        best = level as usize;
    }
    best
}

fn on_stream_frame(req: &mut Request, f: &Value, at: Instant) {
    let ended = req.end.is_some();
    let kind = f["type"].as_str().unwrap_or_default();
    if kind != "stream_content" {
        let ms = req.sent.map_or(0.0, |s| {
            at.saturating_duration_since(s).as_secs_f64() * 1000.0
        });
        let detail = match kind {
            "stream_queued" => format!(" {}", f["data"]["position"]),
            "stream_error" => format!(" {} {}", f["data"]["code"], f["data"]["message"]),
            _ => String::new(),
        };
        req.log.push(format!("{kind}{detail} @{ms:.1}ms"));
    }
    match kind {
        "stream_queued" => {
            req.queued_frames += 1;
            req.max_position = req
                .max_position
                .max(f["data"]["position"].as_u64().unwrap_or(0));
            if req.start.is_some() || ended {
                req.queued_late += 1;
            }
        }
        "stream_start" => {
            if req.start.is_some() || ended {
                req.out_of_order += 1;
            }
            if req.start.is_some() {
                req.reruns += 1;
            }
            req.start.get_or_insert(at);
        }
        "stream_content" if req.start.is_none() || ended => req.out_of_order += 1,
        "stream_complete" => {
            if req.start.is_none() || ended {
                req.out_of_order += 1;
            }
            req.complete = Some(at);
            req.end = Some(at);
            req.stored = f["data"]["message"].is_object();
            req.finish = f["data"]["finish_reason"].as_str().map(str::to_owned);
        }
        "stream_error" => {
            if ended {
                req.out_of_order += 1;
            }
            req.end = Some(at);
            req.error = Some(f["data"]["code"].as_str().unwrap_or("?").to_owned());
        }
        _ => {}
    }
}

pub async fn queue(
    cli: &Cli,
    tokens: &Arc<Tokens>,
    sources: &Arc<Sources>,
    s: QueueSettings,
) -> Report {
    let s = Arc::new(s);
    let nodes = cli.nodes.len();
    let mut convs: Vec<Vec<String>> = Vec::with_capacity(s.users);
    let user = |u: usize| format!("queue-{}-u{u}", s.assistant);
    for u in 0..s.users {
        let token = tokens.mint(&user(u));
        let mut mine = Vec::with_capacity(s.conversations);
        for _ in 0..s.conversations {
            mine.push(client::create_chat(&cli.nodes[u % nodes], &token, &[]).await);
        }
        convs.push(mine);
    }
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(s.users);
    for (u, mine) in convs.into_iter().enumerate() {
        let (ws, _) = client::connect(&cli.nodes[u % nodes], &tokens.mint(&user(u)), sources)
            .await
            .expect("a user connects");
        tasks.push(tokio::spawn(asker(
            ws,
            mine,
            s.clone(),
            u,
            ready_tx.clone(),
            go_rx.clone(),
        )));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < s.users && ready_rx.recv().await.is_some() {
        ready += 1;
    }
    let wait_key = format!(
        "confab_assistant_queue_wait_seconds_sum{{assistant=\"{}\"}}",
        s.assistant
    );
    let count_key = format!(
        "confab_assistant_queue_wait_seconds_count{{assistant=\"{}\"}}",
        s.assistant
    );
    let (wait0, count0) = (
        metric_sum(&cli.nodes, &wait_key).await,
        metric_sum(&cli.nodes, &count_key).await,
    );
    let before = CpuMark::now(cli);
    let others0 = total_cpu(&cli.server_pids);
    let go = Instant::now();
    let _ = go_tx.send(true);
    let mut per_user: Vec<Vec<Request>> = Vec::with_capacity(s.users);
    for t in tasks {
        per_user.push(t.await.unwrap_or_default());
    }
    let after = CpuMark::now(cli);
    let others = total_cpu(&cli.server_pids) - others0;
    let (wait1, count1) = (
        metric_sum(&cli.nodes, &wait_key).await,
        metric_sum(&cli.nodes, &count_key).await,
    );
    let all: Vec<&Request> = per_user.iter().flatten().collect();
    let sent = all.iter().filter(|r| r.sent.is_some()).count();
    let acked = all.iter().filter(|r| r.acked.is_some()).count();
    let refused = all.iter().filter(|r| r.refused.is_some()).count();
    let completed = all
        .iter()
        .filter(|r| r.start.is_some() && r.complete.is_some() && r.stored)
        .count();
    let stopped = all
        .iter()
        .filter(|r| r.finish.as_deref() == Some("stop"))
        .count();
    let errors = all.iter().filter(|r| r.error.is_some()).count();
    let lost = all
        .iter()
        .filter(|r| r.acked.is_some() && !(r.start.is_some() && r.end.is_some()))
        .count();
    let out_of_order: u64 = all.iter().map(|r| r.out_of_order).sum();
    let queued_late: u64 = all.iter().map(|r| r.queued_late).sum();
    // A few examples of whatever went wrong, for a human to read.
    let mut odd: Vec<&&Request> = all
        .iter()
        .filter(|r| r.out_of_order > 0 || r.error.is_some() || r.queued_late > 0)
        .collect();
    // Errors and frames out of order first, stale positions last.
    odd.sort_by_key(|r| (r.error.is_none(), r.out_of_order == 0));
    for req in odd.iter().take(5) {
        eprintln!(
            "confab-bench: stream-queue: stream {}: {}",
            req.stream.as_deref().unwrap_or("?"),
            req.log.join(", ")
        );
    }
    let last_end = all
        .iter()
        .filter_map(|r| r.end.or(r.start))
        .max()
        .unwrap_or(go);
    let took = last_end.saturating_duration_since(go);
    // The most answers running at once, as the clients saw them: from each
    // one's stream_start to its stream_complete (an end before a start at
    // the same instant).
    // With a limit, also how long (in all) and how long at most in one
    // stretch they saw more: a few milliseconds is the skew between
    // sockets on two nodes (one answer's end reaching its tab after the
    // next one's start reached another), more would be a real excess.
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for r in &all {
        if let (Some(a), Some(b)) = (r.start, r.end) {
            edges.push((a, 1));
            edges.push((b, -1));
        }
    }
    edges.sort();
    let held = most_held(&edges, SKEW);
    // The mean running over the run: how well the slots were kept busy.
    let mut busy = 0.0;
    let (mut running, mut most) = (0i32, 0i32);
    let (mut over_since, mut over_total, mut over_longest) = (None, Duration::ZERO, Duration::ZERO);
    let mut last = go;
    for &(at, d) in &edges {
        busy += running as f64 * (at - last).as_secs_f64();
        last = at;
        running += d;
        most = most.max(running);
        let over = s.limit > 0 && running as usize > s.limit;
        match (over, over_since) {
            (true, None) => over_since = Some(at),
            (false, Some(since)) => {
                let stretch = at - since;
                over_total += stretch;
                over_longest = over_longest.max(stretch);
                over_since = None;
            }
            _ => {}
        }
    }
    let mut wait = Latencies::default();
    wait.extend(
        all.iter()
            .filter_map(|r| Some(r.start?.saturating_duration_since(r.acked?).as_micros() as u64))
            .collect(),
    );
    let mut whole = Latencies::default();
    whole.extend(
        all.iter()
            .filter_map(|r| Some(r.complete?.saturating_duration_since(r.sent?).as_micros() as u64))
            .collect(),
    );
    let mut ack = Latencies::default();
    ack.extend(
        all.iter()
            .filter_map(|r| Some(r.acked?.saturating_duration_since(r.sent?).as_micros() as u64))
            .collect(),
    );
    // Fairness: when each user's last answer ended.
    let mut user_done = Latencies::default();
    user_done.extend(
        per_user
            .iter()
            .filter_map(|reqs| reqs.iter().filter_map(|r| r.complete).max())
            .map(|t| t.saturating_duration_since(go).as_micros() as u64)
            .collect(),
    );
    let mut r = Report::new("stream queue");
    r.add("assistant", s.assistant.as_str());
    r.add(
        "max_concurrent (configured)",
        if s.limit == 0 {
            "none".to_string()
        } else {
            s.limit.to_string()
        },
    );
    r.add("users", s.users);
    r.add("conversations per user", s.conversations);
    r.add("requests per conversation", s.requests);
    r.add("answer words", s.words);
    r.add("requests sent", sent);
    r.add("acked", acked);
    r.add("refused", refused);
    let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
    for req in &all {
        if let Some(c) = req.refused.as_deref().or(req.error.as_deref()) {
            *codes.entry(c).or_default() += 1;
        }
    }
    if !codes.is_empty() {
        r.add(
            "refusal and error codes",
            codes
                .iter()
                .map(|(c, n)| format!("{c} x{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    r.add("completed (start, then complete, stored)", completed);
    r.add("finished with stop", stopped);
    r.add("stream errors", errors);
    r.add("lost (acked, no start or no end)", lost);
    r.add(
        "answers run again (stream_start again)",
        all.iter().filter(|r| r.reruns > 0).count(),
    );
    r.add("extra runs", all.iter().map(|r| r.reruns).sum::<u64>());
    r.add("frames out of order", out_of_order);
    r.add("stream_queued after stream_start", queued_late);
    r.add("time to the last answer (s)", took.as_secs_f64());
    r.add(
        "answers completed per second",
        per_sec(completed as u64, took),
    );
    let [p50, p99, _, max] = ack.summary();
    r.add("ack p50 (ms)", p50);
    r.add("ack p99 (ms)", p99);
    r.add("ack max (ms)", max);
    let [p50, p99, _, max] = wait.summary();
    r.add("queue wait (ack to start) p50 (ms)", p50);
    r.add("queue wait (ack to start) p99 (ms)", p99);
    r.add("queue wait (ack to start) max (ms)", max);
    if count1 > count0 {
        r.add(
            "node: queue wait mean (ms, metrics)",
            (wait1 - wait0) / (count1 - count0) * 1000.0,
        );
    }
    let [p50, p99, _, max] = whole.summary();
    r.add("request to complete p50 (ms)", p50);
    r.add("request to complete p99 (ms)", p99);
    r.add("request to complete max (ms)", max);
    let first = user_done.min_ms();
    let [p50, _, _, max] = user_done.summary();
    r.add("a user's last answer: first user (s)", first / 1000.0);
    r.add("a user's last answer: median user (s)", p50 / 1000.0);
    r.add("a user's last answer: last user (s)", max / 1000.0);
    r.add(
        "stream_queued frames",
        all.iter().map(|r| r.queued_frames).sum::<u64>(),
    );
    r.add(
        "highest position told",
        all.iter().map(|r| r.max_position).max().unwrap_or(0),
    );
    r.add("most running at once (clients)", most);
    r.add(
        &format!("most running at once, held {} ms+", SKEW.as_millis()),
        held,
    );
    r.add("mean running at once", busy / took.as_secs_f64().max(1e-9));
    if s.limit > 0 {
        r.add("within max_concurrent (held)", held <= s.limit);
        r.add(
            "time above max_concurrent (ms, all)",
            over_total.as_secs_f64() * 1000.0,
        );
        r.add(
            "time above max_concurrent (ms, longest)",
            over_longest.as_secs_f64() * 1000.0,
        );
    }
    if !cli.pids.is_empty() {
        let cpu = after.nodes_ticks - before.nodes_ticks;
        r.add("node CPU (s, all nodes)", cpu);
        r.add(
            "node CPU per answer (ms)",
            cpu * 1000.0 / completed.max(1) as f64,
        );
    }
    if !cli.server_pids.is_empty() {
        r.add("Redis CPU (s)", others);
        r.add(
            "Redis CPU per answer (ms)",
            others * 1000.0 / completed.max(1) as f64,
        );
    }
    r.add("generator CPU (s)", after.generator - before.generator);
    r
}
