//! The log scenario (docs/protocol.md, "v1.1: the conversation log"):
//! conversations whose members send messages and, mixed in, edit their own
//! recent messages and add or remove reactions on the others'. Each of
//! those takes the conversation's next seq, so besides rates and latencies
//! per kind the scenario checks what only concurrent load can break: that
//! every receiving socket gets the seqs gap-free and in order, and that
//! the acks hand out each seq exactly once.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Sources, Tokens, Ws};
use crate::scenarios::open_many;
use crate::stats::{own_cpu_secs, per_sec, CpuWatch, Latencies};
use crate::{Cli, Report};

/// Messages a member remembers as targets: its own latest, and the
/// others' latest ("recent" in the mix's terms).
const RECENT: usize = 32;

/// The emojis members react with: one scalar each, and few enough that a
/// message stays far below the distinct emojis a node allows (20).
const EMOJIS: [&str; 6] = ["👍", "🎉", "😂", "👀", "🚀", "🔥"];

/// A socket silent this long after the sending ended has seen all it will.
const QUIET: Duration = Duration::from_secs(10);

/// What an operation is, for its rates and ack latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Send,
    Edit,
    React,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Send, Kind::Edit, Kind::React];

    fn name(self) -> &'static str {
        match self {
            Kind::Send => "sends",
            Kind::Edit => "edits",
            Kind::React => "reactions",
        }
    }
}

/// The share of operations that are changes, in percent; the rest are
/// sends.
#[derive(Clone, Copy)]
pub struct Mix {
    pub edits: u64,
    pub reactions: u64,
}

impl Mix {
    /// The kind of a member's `n`th operation. Stepping by 37 (prime to
    /// 100) through a hundred buckets interleaves the kinds and gives
    /// exactly the shares over every hundred operations; `offset` varies
    /// the order between members.
    fn kind(self, n: u64, offset: u64) -> Kind {
        let bucket = (n * 37 + offset) % 100;
        if bucket < self.edits {
            Kind::Edit
        } else if bucket < self.edits + self.reactions {
            Kind::React
        } else {
            Kind::Send
        }
    }

    /// The percent of operations of `kind`.
    fn percent(self, kind: Kind) -> u64 {
        match kind {
            Kind::Send => 100 - self.edits - self.reactions,
            Kind::Edit => self.edits,
            Kind::React => self.reactions,
        }
    }
}

/// The scenario's settings (see `Scenario::Log`).
pub struct Settings {
    pub conversations: usize,
    pub members: usize,
    /// Operations per second, all members together.
    pub rate: u64,
    pub mix: Mix,
    pub seconds: u64,
}

/// What a conversation's members share while the run lasts: enough to
/// know, once they stop, the last seq every socket must reach.
struct Conv {
    id: String,
    members: usize,
    /// Members done sending with every one of their frames answered.
    settled: AtomicUsize,
    /// The highest seq acknowledged to any member.
    last: AtomicI64,
}

impl Conv {
    /// The conversation's last seq, once every member's frames were
    /// answered (all its entries exist then).
    fn final_seq(&self) -> Option<i64> {
        (self.settled.load(Ordering::Acquire) == self.members)
            .then(|| self.last.load(Ordering::Acquire))
    }
}

/// When each reaction change was sent. A reaction's frames carry no
/// timestamp of their own, so its receivers look the send time up here.
/// A member adds an emoji to a message at most once and removes it at most
/// once, so (message, reactor, emoji, direction) names one change.
#[derive(Default)]
struct ReactionTimes(Mutex<HashMap<String, u64>>);

impl ReactionTimes {
    fn key(message: &str, by: &str, emoji: &str, added: bool) -> String {
        format!("{message} {by} {emoji} {added}")
    }

    fn sent(&self, key: String) {
        self.0.lock().expect("not poisoned").insert(key, clock_us());
    }

    fn when(&self, key: &str) -> Option<u64> {
        self.0.lock().expect("not poisoned").get(key).copied()
    }
}

/// What an operation is about, to update the member's memory once it is
/// answered.
enum Target {
    /// A new message.
    New,
    /// An edit of this (own) message.
    Edit(String),
    /// A reaction with `EMOJIS[emoji]` added to or removed from a message.
    React {
        message: String,
        emoji: usize,
        add: bool,
    },
}

impl Target {
    fn kind(&self) -> Kind {
        match self {
            Target::New => Kind::Send,
            Target::Edit(_) => Kind::Edit,
            Target::React { .. } => Kind::React,
        }
    }

    /// The message the answer must name (None for a new message).
    fn message(&self) -> Option<&str> {
        match self {
            Target::New => None,
            Target::Edit(m) | Target::React { message: m, .. } => Some(m),
        }
    }
}

/// A frame of the member's waiting for its ack, by frame id.
struct Pending {
    target: Target,
    sent_us: u64,
}

/// One member's figures.
#[derive(Default)]
struct Tally {
    /// Operations issued, acked with a seq, and ack latencies, by kind.
    issued: [u64; 3],
    acked: [u64; 3],
    ack_us: [Vec<u64>; 3],
    /// When the last ack arrived.
    last_ack: Option<Instant>,
    /// Seqs this member was acknowledged.
    acked_seqs: Vec<i64>,
    /// Changes the mix asked for that had no target yet, sent as messages.
    substituted: u64,
    /// `error` replies by "kind CODE".
    errors: BTreeMap<String, u64>,
    /// Acks of changes without a seq: a no-op, which the bench never asks for.
    no_seq: u64,
    /// Acks naming another message than the change's target.
    wrong_message: u64,
    /// Delivery latencies of the other members' entries: messages, then
    /// edits and reactions (`message_updated`).
    received_us: Vec<u64>,
    edited_us: Vec<u64>,
    reacted_us: Vec<u64>,
    /// Log entries delivered to this socket.
    entries: u64,
    /// Seqs skipped over, and seqs at or below one already seen.
    skipped: u64,
    disordered: u64,
    /// The highest seq seen in order.
    last_seen: i64,
    /// `message_updated` of a reaction whose message does not show it.
    stale: u64,
}

/// One member: a user with one socket, joined to one conversation.
struct Member {
    me: String,
    ws: Ws,
    conv: Arc<Conv>,
    times: Arc<ReactionTimes>,
    mix: Mix,
    /// Varies the kinds' order and the targets between members.
    offset: u64,
    rng: u64,
    /// Operations issued so far (the mix schedules the next by it).
    ops: u64,
    pending: HashMap<u64, Pending>,
    /// Own recent messages (acked), and those of them with an edit in
    /// flight: one edit at a time per message, so each delivery shows the
    /// content of its own edit.
    own: VecDeque<String>,
    editing: HashSet<String>,
    /// The others' recent messages.
    others: VecDeque<String>,
    /// (message, emoji) reactions ever asked for, and those added and
    /// acked but not removed yet.
    reacted: HashSet<(String, usize)>,
    held: Vec<(String, usize)>,
    /// Reaction operations alternate between adding and removing.
    remove_next: bool,
    /// The seq this socket expects next.
    next_seq: i64,
    tally: Tally,
}

/// Microseconds on this process's monotonic clock. Every sender and
/// receiver of the scenario is in this process, so its stamps need no wall
/// clock: with the wall clock, one run here reported acks 19 s "slower"
/// than the whole 11 s run (the VM's clock stepped).
fn clock_us() -> u64 {
    static ZERO: OnceLock<Instant> = OnceLock::new();
    ZERO.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Remembers `id` among the latest `RECENT`.
fn remember(recent: &mut VecDeque<String>, id: &str) {
    if recent.len() == RECENT {
        recent.pop_front();
    }
    recent.push_back(id.to_owned());
}

/// The send time a message's content carries (`t=<µs>`).
fn stamped(content: &str) -> Option<u64> {
    content.strip_prefix("t=")?.parse().ok()
}

impl Member {
    /// A number in 0..n (xorshift: no dependency, and each member its own
    /// repeatable sequence).
    fn pick(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n.max(1) as u64) as usize
    }

    /// An edit of one of the member's recent messages with no edit in
    /// flight, if there is one.
    fn pick_edit(&mut self) -> Option<Target> {
        let free: Vec<usize> = (0..self.own.len())
            .filter(|i| !self.editing.contains(&self.own[*i]))
            .collect();
        if free.is_empty() {
            return None;
        }
        let at = free[self.pick(free.len())];
        let message = self.own[at].clone();
        self.editing.insert(message.clone());
        Some(Target::Edit(message))
    }

    /// A reaction: alternately added (an emoji this member never used on a
    /// recent message of another) and removed (one it added, acked), so a
    /// reaction never asks for a no-op. Either falls back to the other.
    fn pick_reaction(&mut self) -> Option<Target> {
        self.remove_next = !self.remove_next;
        if self.remove_next {
            self.pick_removal().or_else(|| self.pick_addition())
        } else {
            self.pick_addition().or_else(|| self.pick_removal())
        }
    }

    fn pick_addition(&mut self) -> Option<Target> {
        for _ in 0..4 {
            if self.others.is_empty() {
                return None;
            }
            let at = self.pick(self.others.len());
            let message = self.others[at].clone();
            let emoji = self.pick(EMOJIS.len());
            if self.reacted.insert((message.clone(), emoji)) {
                return Some(Target::React {
                    message,
                    emoji,
                    add: true,
                });
            }
        }
        None
    }

    fn pick_removal(&mut self) -> Option<Target> {
        if self.held.is_empty() {
            return None;
        }
        let at = self.pick(self.held.len());
        let (message, emoji) = self.held.swap_remove(at);
        Some(Target::React {
            message,
            emoji,
            add: false,
        })
    }

    /// The frame asking for `target`, numbered `id`. Sends and edits carry
    /// their send time as content; a reaction's is noted in `times`.
    fn frame(&self, target: &Target, id: u64) -> Value {
        let conv = &self.conv.id;
        let content = format!("t={}", clock_us());
        let (kind, data) = match target {
            Target::New => (
                "send_message",
                json!({"conversation_id": conv, "content": content}),
            ),
            Target::Edit(m) => (
                "edit_message",
                json!({"conversation_id": conv, "message_id": m, "content": content}),
            ),
            Target::React {
                message,
                emoji,
                add,
            } => {
                let emoji = EMOJIS[*emoji];
                self.times
                    .sent(ReactionTimes::key(message, &self.me, emoji, *add));
                (
                    if *add {
                        "add_reaction"
                    } else {
                        "remove_reaction"
                    },
                    json!({"conversation_id": conv, "message_id": message, "emoji": emoji}),
                )
            }
        };
        json!({"type": kind, "id": id.to_string(), "data": data})
    }

    /// Issues the member's next operation: the kind the mix schedules, or
    /// a send when the change has no target yet (early in the run).
    async fn act(&mut self) {
        let scheduled = self.mix.kind(self.ops, self.offset);
        let chosen = match scheduled {
            Kind::Send => None,
            Kind::Edit => self.pick_edit(),
            Kind::React => self.pick_reaction(),
        };
        let target = chosen.unwrap_or_else(|| {
            if scheduled != Kind::Send {
                self.tally.substituted += 1;
            }
            Target::New
        });
        self.ops += 1;
        let frame = self.frame(&target, self.ops);
        self.tally.issued[target.kind() as usize] += 1;
        self.pending.insert(
            self.ops,
            Pending {
                target,
                sent_us: clock_us(),
            },
        );
        client::send(&mut self.ws, frame).await;
    }

    /// One frame from the node.
    fn read(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            return;
        };
        let Some(data) = frame.data else { return };
        match &*frame.kind {
            "ack" | "error" => {
                if let Ok(reply) = serde_json::from_str::<Reply>(data.get()) {
                    self.answered(reply, frame.kind == "error");
                }
            }
            "message_received" | "message_updated" => {
                if let Ok(entry) = serde_json::from_str::<Entry>(data.get()) {
                    self.entry(entry);
                }
            }
            _ => {}
        }
    }

    /// The answer to one of the member's frames.
    fn answered(&mut self, reply: Reply, error: bool) {
        let asked = reply
            .to
            .parse::<u64>()
            .ok()
            .and_then(|id| self.pending.remove(&id));
        let Some(Pending { target, sent_us }) = asked else {
            if error {
                *self
                    .tally
                    .errors
                    .entry(format!("unasked {}", reply.code))
                    .or_default() += 1;
            }
            return;
        };
        let k = target.kind() as usize;
        if error {
            *self
                .tally
                .errors
                .entry(format!("{} {}", target.kind().name(), reply.code))
                .or_default() += 1;
        } else {
            self.tally.ack_us[k].push(clock_us().saturating_sub(sent_us));
            self.tally.last_ack = Some(Instant::now());
            match reply.seq {
                Some(seq) => {
                    self.tally.acked[k] += 1;
                    self.tally.acked_seqs.push(seq);
                    self.conv.last.fetch_max(seq, Ordering::AcqRel);
                }
                None => self.tally.no_seq += 1,
            }
            if target.message().is_some_and(|m| m != reply.message_id) {
                self.tally.wrong_message += 1;
            }
        }
        match target {
            Target::New if !error => remember(&mut self.own, &reply.message_id),
            Target::New => {}
            Target::Edit(m) => {
                self.editing.remove(&m);
            }
            Target::React {
                message,
                emoji,
                add: true,
            } if !error => self.held.push((message, emoji)),
            Target::React { .. } => {}
        }
    }

    /// A log entry delivered to this socket: its seq must follow the
    /// previous one; one another member caused has its latency taken.
    fn entry(&mut self, entry: Entry) {
        // A message_updated has a seq of its own; a new message's is its own.
        let Some(seq) = (match &entry.change {
            Some(_) => entry.seq,
            None => Some(entry.message.seq),
        }) else {
            return;
        };
        self.check_seq(seq);
        let message = &entry.message;
        let Some(change) = &entry.change else {
            if message.sender_id != self.me {
                remember(&mut self.others, &message.id);
                self.tally
                    .received_us
                    .extend(latency(stamped(&message.content)));
            }
            return;
        };
        let added = change.kind == "reaction_added";
        let reaction = added || change.kind == "reaction_removed";
        if reaction && reflects(message, &change.by, &change.emoji) != added {
            self.tally.stale += 1;
        }
        if change.by == self.me {
            return;
        }
        if change.kind == "edited" {
            self.tally
                .edited_us
                .extend(latency(stamped(&message.content)));
        } else if reaction {
            let key = ReactionTimes::key(&message.id, &change.by, &change.emoji, added);
            self.tally.reacted_us.extend(latency(self.times.when(&key)));
        }
    }

    /// Counts a seq that does not follow the last one seen.
    fn check_seq(&mut self, seq: i64) {
        self.tally.entries += 1;
        if seq < self.next_seq {
            self.tally.disordered += 1;
            return;
        }
        self.tally.skipped += (seq - self.next_seq) as u64;
        self.next_seq = seq + 1;
        self.tally.last_seen = seq;
    }
}

/// Microseconds since a send time, if there is one.
fn latency(sent_us: Option<u64>) -> Option<u64> {
    sent_us.map(|t| clock_us().saturating_sub(t))
}

/// Whether `by` is among the reactors of `emoji` on `message` (all are
/// named: a message here has fewer reactors than the 20 a node lists).
fn reflects(message: &Msg, by: &str, emoji: &str) -> bool {
    message
        .reactions
        .iter()
        .any(|r| r.emoji == emoji && r.user_ids.iter().any(|u| u == by))
}

/// A frame from the node, its data read only for the types that matter.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// `ack` or `error`: the answer to one frame.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(rename = "ref", borrow, default)]
    to: Cow<'a, str>,
    #[serde(borrow, default)]
    message_id: Cow<'a, str>,
    seq: Option<i64>,
    #[serde(borrow, default)]
    code: Cow<'a, str>,
}

/// `message_received` or `message_updated`: one log entry.
#[derive(Deserialize)]
struct Entry<'a> {
    /// message_updated's own seq.
    seq: Option<i64>,
    #[serde(borrow)]
    change: Option<Change<'a>>,
    #[serde(borrow)]
    message: Msg<'a>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    by: Cow<'a, str>,
    #[serde(borrow, default)]
    emoji: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    seq: i64,
    #[serde(borrow)]
    sender_id: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(borrow, default)]
    reactions: Vec<Reaction<'a>>,
}

#[derive(Deserialize)]
struct Reaction<'a> {
    #[serde(borrow)]
    emoji: Cow<'a, str>,
    #[serde(borrow)]
    user_ids: Vec<Cow<'a, str>>,
}

/// When to act, and when to stop.
#[derive(Clone, Copy)]
struct Schedule {
    /// The first operation (staggered per member).
    first: tokio::time::Instant,
    /// Between one member's operations.
    period: Duration,
    stop_at: Instant,
}

/// Runs one member: acts on its schedule while reading everything, then,
/// once every member of its conversation has its answers, reads until it
/// has reached the conversation's last seq (or the socket went quiet).
async fn run_member(mut m: Member, schedule: Schedule) -> Tally {
    let mut tick = tokio::time::interval_at(schedule.first, schedule.period);
    // One timer for the socket's life, as in the fan-out's receivers.
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let (mut sending, mut settled) = (true, false);
    let (mut heard, mut quiet) = (false, Duration::ZERO);
    loop {
        tokio::select! {
            _ = tick.tick(), if sending => {
                if Instant::now() >= schedule.stop_at {
                    sending = false;
                } else {
                    m.act().await;
                }
            }
            next = m.ws.next() => match next {
                Some(Ok(Message::Text(text))) => {
                    heard = true;
                    m.read(&text);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = check.tick() => {
                quiet = if heard { Duration::ZERO } else { quiet + check.period() };
                heard = false;
                if !sending && quiet >= QUIET {
                    break;
                }
            }
        }
        if !sending && !settled && m.pending.is_empty() {
            settled = true;
            m.conv.settled.fetch_add(1, Ordering::AcqRel);
        }
        if m.conv.final_seq().is_some_and(|last| m.next_seq > last) {
            break;
        }
    }
    m.tally
}

/// Seqs missing or repeated among one conversation's acks: they must be
/// 1..=N, each once.
fn ack_seq_faults(mut seqs: Vec<i64>) -> u64 {
    seqs.sort_unstable();
    let mut faults = 0u64;
    let mut expected = 1;
    for s in seqs {
        if s < expected {
            faults += 1;
        } else {
            faults += (s - expected) as u64;
            expected = s + 1;
        }
    }
    faults
}

/// Creates the conversations: member 0 of each owns it, the others are
/// participants. They are fresh, so every socket's first seq is 1.
async fn create(cli: &Cli, tokens: &Tokens, s: &Settings) -> Vec<String> {
    let mut convs = Vec::with_capacity(s.conversations);
    for c in 0..s.conversations {
        let members: Vec<String> = (1..s.members).map(|m| user(c, m)).collect();
        let owner = tokens.mint(&user(c, 0));
        let base = &cli.nodes[c % cli.nodes.len()];
        convs.push(client::create_chat(base, &owner, &members).await);
    }
    convs
}

fn user(conv: usize, member: usize) -> String {
    format!("log{conv}-m{member}")
}

pub async fn log(cli: &Cli, tokens: &Arc<Tokens>, sources: &Arc<Sources>, s: Settings) -> Report {
    let k = s.members.max(1);
    let ids = create(cli, tokens, &s).await;
    let nodes = cli.nodes.len();
    let n = s.conversations * k;
    // Member m of conversation c is socket c * k + m, on node (c * k + m)
    // % nodes: every conversation spans the nodes.
    let (socks, _, _) = open_many(
        cli,
        tokens,
        sources,
        n,
        |i| user(i / k, i % k),
        |i| ids[i / k].clone(),
        |i| i % nodes,
    )
    .await;
    if socks.len() < n {
        eprintln!(
            "confab-bench: log: only {} of {n} sockets opened",
            socks.len()
        );
        std::process::exit(1);
    }
    let convs: Vec<Arc<Conv>> = ids
        .into_iter()
        .map(|id| {
            Arc::new(Conv {
                id,
                members: k,
                settled: AtomicUsize::new(0),
                last: AtomicI64::new(0),
            })
        })
        .collect();
    let times = Arc::new(ReactionTimes::default());
    let (nodes_cpu, others_cpu) = (
        CpuWatch::start(&cli.pids),
        CpuWatch::start(&cli.server_pids),
    );
    let generator0 = own_cpu_secs();
    let start = Instant::now();
    let period = Duration::from_micros(n as u64 * 1_000_000 / s.rate.max(1));
    let mut tasks = Vec::with_capacity(n);
    for (i, (_, ws)) in socks.into_iter().enumerate() {
        let member = Member {
            me: user(i / k, i % k),
            ws,
            conv: convs[i / k].clone(),
            times: times.clone(),
            mix: s.mix,
            offset: i as u64 * 11,
            rng: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
            ops: 0,
            pending: HashMap::new(),
            own: VecDeque::new(),
            editing: HashSet::new(),
            others: VecDeque::new(),
            reacted: HashSet::new(),
            held: Vec::new(),
            remove_next: false,
            next_seq: 1,
            tally: Tally::default(),
        };
        // Staggered, so the operations spread over each period.
        let stagger = period.mul_f64(i as f64 / n as f64);
        let schedule = Schedule {
            first: tokio::time::Instant::from_std(start) + stagger,
            period,
            stop_at: start + Duration::from_secs(s.seconds),
        };
        tasks.push((i / k, tokio::spawn(run_member(member, schedule))));
    }
    let mut tallies = Vec::with_capacity(n);
    for (c, task) in tasks {
        if let Ok(t) = task.await {
            tallies.push((c, t));
        }
    }
    let took = start.elapsed();
    let figures = Figures {
        node_cpu: nodes_cpu.used(),
        others_cpu: others_cpu.used(),
        generator_cpu: own_cpu_secs() - generator0,
        took,
        start,
    };
    report(cli, &s, &convs, tallies, figures)
}

/// What the run cost and took.
struct Figures {
    node_cpu: f64,
    others_cpu: f64,
    generator_cpu: f64,
    took: Duration,
    start: Instant,
}

fn report(
    cli: &Cli,
    s: &Settings,
    convs: &[Arc<Conv>],
    tallies: Vec<(usize, Tally)>,
    f: Figures,
) -> Report {
    let mut r = Report::new("log");
    r.add("conversations", s.conversations);
    r.add("members each (one socket each)", s.members);
    r.add("sockets running", tallies.len());
    r.add("operations offered/s (all kinds)", s.rate as f64);
    // The rates' window: until the last ack, the nodes' pace, whatever
    // was offered.
    let acked_within = tallies
        .iter()
        .filter_map(|(_, t)| t.last_ack)
        .max()
        .map_or(f.took, |at| at - f.start);
    for kind in Kind::ALL {
        let k = kind as usize;
        let name = kind.name();
        let acked: u64 = tallies.iter().map(|(_, t)| t.acked[k]).sum();
        let issued: u64 = tallies.iter().map(|(_, t)| t.issued[k]).sum();
        r.add(
            &format!("{name} offered/s"),
            (s.rate * s.mix.percent(kind)) as f64 / 100.0,
        );
        r.add(&format!("{name} issued"), issued);
        r.add(&format!("{name} acked/s"), per_sec(acked, acked_within));
    }
    r.add(
        "changes sent as messages (no target yet)",
        tallies.iter().map(|(_, t)| t.substituted).sum::<u64>(),
    );
    for kind in Kind::ALL {
        let mut lat = Latencies::default();
        for (_, t) in &tallies {
            lat.extend(t.ack_us[kind as usize].clone());
        }
        let [p50, p99, _, max] = lat.summary();
        let name = kind.name();
        r.add(&format!("{name} ack p50 (ms)"), p50);
        r.add(&format!("{name} ack p99 (ms)"), p99);
        r.add(&format!("{name} ack max (ms)"), max);
    }
    add_deliveries(&mut r, &tallies, f.took);
    add_correctness(&mut r, convs, &tallies);
    if !cli.pids.is_empty() {
        let server = f.node_cpu + f.others_cpu;
        let ops: u64 = tallies
            .iter()
            .map(|(_, t)| t.acked.iter().sum::<u64>())
            .sum();
        let entries: u64 = tallies.iter().map(|(_, t)| t.entries).sum();
        r.add("node CPU (s, all nodes)", f.node_cpu);
        r.add("server CPU (s, nodes + others)", server);
        r.add(
            "server CPU per operation (µs)",
            server * 1e6 / ops.max(1) as f64,
        );
        r.add(
            "server CPU per delivery (µs)",
            server * 1e6 / entries.max(1) as f64,
        );
    }
    r.add(
        "generator CPU (% of a core)",
        f.generator_cpu * 100.0 / f.took.as_secs_f64().max(1e-9),
    );
    r.add("run time (s)", f.took.as_secs_f64());
    r
}

/// Delivery latencies to the other members, by frame and change.
fn add_deliveries(r: &mut Report, tallies: &[(usize, Tally)], took: Duration) {
    let entries: u64 = tallies.iter().map(|(_, t)| t.entries).sum();
    r.add("log entries delivered/s", per_sec(entries, took));
    let (mut received, mut edited, mut reacted) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    let mut updated = Latencies::default();
    for (_, t) in tallies {
        received.extend(t.received_us.clone());
        edited.extend(t.edited_us.clone());
        reacted.extend(t.reacted_us.clone());
        updated.extend(t.edited_us.clone());
        updated.extend(t.reacted_us.clone());
    }
    for (name, lat) in [
        ("message_received", &mut received),
        ("message_updated", &mut updated),
        ("message_updated, edits", &mut edited),
        ("message_updated, reactions", &mut reacted),
    ] {
        let [p50, p99, _, max] = lat.summary();
        r.add(&format!("{name} p50 (ms)"), p50);
        r.add(&format!("{name} p99 (ms)"), p99);
        r.add(&format!("{name} max (ms)"), max);
    }
}

/// The correctness figures: each must be 0.
fn add_correctness(r: &mut Report, convs: &[Arc<Conv>], tallies: &[(usize, Tally)]) {
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(|(_, t)| f(t)).sum::<u64>();
    let skipped = sum(|t| t.skipped);
    let disordered = sum(|t| t.disordered);
    // Entries a socket never got: from its last seq to its conversation's.
    let missing: u64 = tallies
        .iter()
        .map(|(c, t)| (convs[*c].last.load(Ordering::Acquire) - t.last_seen).max(0) as u64)
        .sum();
    let mut acked: Vec<Vec<i64>> = vec![Vec::new(); convs.len()];
    for (c, t) in tallies {
        acked[*c].extend(&t.acked_seqs);
    }
    let ack_faults: u64 = acked.into_iter().map(ack_seq_faults).sum();
    r.add("seqs skipped (gaps, all sockets)", skipped);
    r.add("seqs out of order or repeated", disordered);
    r.add("entries missing at the end", missing);
    r.add("SEQ VIOLATIONS (must be 0)", skipped + disordered + missing);
    r.add("acked seqs missing or repeated", ack_faults);
    r.add("acks of changes without seq", sum(|t| t.no_seq));
    r.add("acks naming another message", sum(|t| t.wrong_message));
    r.add("reaction updates not showing it", sum(|t| t.stale));
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (_, t) in tallies {
        for (code, n) in &t.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    let shown: Vec<String> = errors.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    r.add(
        "errors",
        if shown.is_empty() {
            "none".to_owned()
        } else {
            shown.join(", ")
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_gives_its_shares_over_every_hundred_operations() {
        let mix = Mix {
            edits: 30,
            reactions: 20,
        };
        for offset in [0, 11, 99] {
            let kinds: Vec<Kind> = (0..100).map(|n| mix.kind(n, offset)).collect();
            let count = |k| kinds.iter().filter(|x| **x == k).count();
            assert_eq!(
                (count(Kind::Send), count(Kind::Edit), count(Kind::React)),
                (50, 30, 20)
            );
        }
    }

    #[test]
    fn ack_seqs_must_be_one_to_n_once_each() {
        assert_eq!(ack_seq_faults(vec![3, 1, 2]), 0);
        assert_eq!(ack_seq_faults(vec![1, 3]), 1);
        assert_eq!(ack_seq_faults(vec![1, 2, 2]), 1);
        assert_eq!(ack_seq_faults(vec![2]), 1);
    }

    #[test]
    fn entries_parse_with_their_change() {
        let text = r#"{"type":"message_updated","data":{"conversation_id":"c","seq":42,"change":{"kind":"reaction_added","by":"bob","emoji":"👍"},"message":{"id":"m","seq":17,"sender_id":"ann","content":"t=5","reactions":[{"emoji":"👍","count":1,"user_ids":["bob"]}]}}}"#;
        let frame: Frame = serde_json::from_str(text).unwrap();
        assert_eq!(frame.kind, "message_updated");
        let entry: Entry = serde_json::from_str(frame.data.unwrap().get()).unwrap();
        assert_eq!(entry.seq, Some(42));
        assert_eq!(entry.message.seq, 17);
        let change = entry.change.unwrap();
        assert!(reflects(&entry.message, &change.by, &change.emoji));
        assert!(!reflects(&entry.message, "ann", "👍"));
        let error = r#"{"type":"error","data":{"code":"NOT_FOUND","message":"message not found","ref":"7"}}"#;
        let frame: Frame = serde_json::from_str(error).unwrap();
        let reply: Reply = serde_json::from_str(frame.data.unwrap().get()).unwrap();
        assert_eq!(
            (&*reply.to, &*reply.code, reply.seq),
            ("7", "NOT_FOUND", None)
        );
    }
}
