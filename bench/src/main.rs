//! confab-bench: load for one or more confab nodes, with the figures that
//! matter (rates, latency percentiles, loss, node CPU and memory), printed
//! as a table or JSON. Scenarios: idle, fanout (receivers on sockets or on
//! the HTTP transport's event streams), rooms, storm, stream,
//! stream-catchup (tabs joining mid-answer), stream-queue (a burst of
//! requests through an assistant's queue), log (sends
//! with edits and reactions mixed in, and a check that every socket gets
//! the conversation log's seqs gap-free and in order), presence (a
//! reconnect storm that must announce nothing), floor (the kernel's cost
//! of a write on this machine, without a node) and hostile (what abusive
//! clients cost the first node).

mod assistant_streams;
mod client;
mod conversation_log;
mod events;
mod floor;
mod hostile;
mod presence;
mod proto;
mod scenarios;
mod socketio;
mod stats;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

/// Options shared by every scenario.
#[derive(Parser, Clone)]
#[command(name = "confab-bench", about = "Load generator for confab nodes")]
pub struct Cli {
    /// Node base URLs (http://IP:PORT), sockets are spread over them.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// PIDs of the node processes, in the same order (for CPU and RSS).
    #[arg(long = "node-pid")]
    pids: Vec<u32>,
    /// PIDs of other processes whose CPU counts as the server's, not
    /// nodes: Redis, and the database's processes when it has its own.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// The protocol to speak: confab's, or Socket.IO's against the peer in
    /// bench/peer (idle and fanout only).
    #[arg(long, value_enum, default_value_t = proto::Proto::Confab)]
    proto: proto::Proto,
    /// The nodes' JWT secret (HS256); by default confab's embedded
    /// development secret.
    #[arg(long)]
    secret: Option<String>,
    /// Loopback source addresses to spread sockets over (127.0.0.1..).
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
pub enum Scenario {
    /// Open N sockets (auth + join), one user each, hold them, report
    /// memory per socket. confab: conversations of 100 participants;
    /// Socket.IO: one room.
    Idle {
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Helper processes to hold the sockets (one process can hold only
        /// as many as its file-descriptor limit allows); 0: this one.
        #[arg(long, default_value_t = 0)]
        procs: usize,
    },
    /// An idle helper: opens sockets FIRST.. FIRST+N-1 of an idle run (user
    /// `idle{i}` in room i / PER_ROOM of ROOMS), prints what it opened as
    /// one JSON line, and holds them until its stdin closes.
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        sockets: usize,
        /// The run's rooms, comma-separated.
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        #[arg(long)]
        per_room: usize,
    },
    /// C receivers in one conversation, one sender at R messages/s.
    Fanout {
        #[arg(long, default_value_t = 200)]
        receivers: usize,
        /// Messages per second (0: as fast as acks allow).
        #[arg(long, default_value_t = 250)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// How the receivers connect: WebSockets, or the HTTP transport
        /// (an event stream each, the join POSTed). The sender is on a
        /// socket either way. confab only.
        #[arg(long, value_enum, default_value_t = events::Transport::Websocket)]
        transport: events::Transport,
    },
    /// Many small conversations, every member sending.
    Rooms {
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 4)]
        members: usize,
        /// Sends per second per member.
        #[arg(long, default_value_t = 2)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// N sockets on the first node, which is then drained (or killed);
    /// they resume on the others with since_seq.
    Storm {
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// A presence storm: N users (one connection each) in conversations of
    /// M, all joined on the first node and present; then every connection
    /// is dropped at once and reconnects (and rejoins) on the second node.
    /// Counts the presence_changed frames the clients get and the
    /// announcements the nodes make (both should be about 0: a move within
    /// the grace announces nothing), the time until the nodes hold all of
    /// them again, and the Redis commands it took.
    Presence {
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// Participants per conversation (more than the nodes'
        /// presence.max_members_for_events, 200 by default, turns events off).
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// The Redis the nodes share, on 127.0.0.1: its command counts
        /// (`INFO stats`, `INFO commandstats`) are read around the storm.
        #[arg(long)]
        redis_port: Option<u16>,
        /// How long to keep listening after the storm settled, for
        /// departures wrongly announced once the grace (5 s) ran out.
        #[arg(long, default_value_t = 8)]
        watch_secs: u64,
        /// How long to count Redis's commands at rest before the storm: a
        /// renewal period of the nodes (a third of presence.ttl_secs) by
        /// default, so the renewals' cost is in it once.
        #[arg(long, default_value_t = 10)]
        rest_secs: u64,
        /// How the clients connect, before and after the storm.
        #[arg(long, value_enum, default_value_t = events::Transport::Websocket)]
        transport: events::Transport,
    },
    /// W watchers of one assistant stream (run the node with a fast echo).
    Stream {
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, default_value_t = 1000)]
        tokens: usize,
    },
    /// T tabs (sockets of one user, spread over the nodes) join a
    /// conversation at once while an answer is being written, then as many
    /// again once it is over: the bytes, time and node CPU until each got
    /// its `stream_snapshot` (or `joined`), and a check that snapshot +
    /// later pieces equal the stored answer. Needs an echo assistant slow
    /// enough to last seconds (`echo_delay_ms`).
    StreamCatchup {
        #[arg(long, default_value_t = 100)]
        tabs: usize,
        /// Words of the answer (the echo repeats the question).
        #[arg(long, default_value_t = 1000)]
        words: usize,
        /// The assistant that answers.
        #[arg(long, default_value = "catchup")]
        assistant: String,
        /// How long after `stream_start` the tabs join.
        #[arg(long, default_value_t = 2500)]
        join_after_ms: u64,
        /// How long the CPU is read before each wave of joins (its rate is
        /// taken off the wave's).
        #[arg(long, default_value_t = 1000)]
        baseline_ms: u64,
    },
    /// U users (one socket each, spread over the nodes) each send R
    /// requests in each of their C conversations at once, to one
    /// assistant: answers per second, queue waits, the most running at
    /// once as the clients see it, and that every request got
    /// `stream_start` then `stream_complete`. The nodes need
    /// `streaming.max_streams_per_user` of at least C x R.
    StreamQueue {
        #[arg(long, default_value_t = 20)]
        users: usize,
        #[arg(long, default_value_t = 2)]
        conversations: usize,
        /// Requests per conversation.
        #[arg(long, default_value_t = 3)]
        requests: usize,
        /// Words of each answer.
        #[arg(long, default_value_t = 20)]
        words: usize,
        /// The assistant asked.
        #[arg(long, default_value = "limited")]
        assistant: String,
        /// Its max_concurrent on the nodes (0: none), for the check.
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Conversations of M members (one socket each, spread over the
    /// nodes) sending at R operations/s in all, a share of them changes:
    /// edits of the member's own recent messages, reactions added to and
    /// removed from the others'. Checks every socket gets the log's seqs
    /// gap-free and in order.
    Log {
        #[arg(long, default_value_t = 20)]
        conversations: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Operations per second, all members together (sends and changes).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Percent of operations that edit one of the member's own recent
        /// messages.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=100))]
        edits: u64,
        /// Percent that add or remove a reaction on a recent message of
        /// another member (alternately); the rest are sends.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=100))]
        reactions: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Hostile clients against the first node (see bench/hostile.sh).
    Hostile {
        #[arg(long, value_enum)]
        attack: hostile::Attack,
        /// Sockets or connections.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// How long to watch.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// No node: one thread writes a frame to each of C loopback sockets,
    /// R times a second, K frames per write; its CPU per frame is the
    /// kernel's floor under any hub on this machine. The nodes are ignored.
    Floor {
        #[arg(long, default_value_t = 100)]
        sockets: usize,
        /// Frames per second to each socket.
        #[arg(long, default_value_t = 250)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Bytes per frame, header included (a message_received is about 330).
        #[arg(long, default_value_t = 330)]
        bytes: usize,
        /// Frames written at once.
        #[arg(long, default_value_t = 1)]
        per_write: usize,
    },
}

/// One scenario's figures, in order.
pub struct Report {
    pub scenario: &'static str,
    pub rows: Vec<(String, Value)>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, name: &str, value: impl Into<Value>) {
        self.rows.push((name.to_owned(), value.into()));
    }
}

fn main() {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(1 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
        )
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // A helper (`hold`) has no report: it prints its own line.
    let Some(report) = runtime.block_on(scenarios::run(&cli)) else {
        return;
    };
    if cli.json {
        let mut map = Map::new();
        map.insert("scenario".into(), report.scenario.into());
        for (k, v) in report.rows {
            map.insert(k, v);
        }
        println!("{}", Value::Object(map));
    } else {
        println!("== {}", report.scenario);
        for (k, v) in report.rows {
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
                other => other.to_string(),
            };
            println!("  {k:<36} {shown}");
        }
    }
}
