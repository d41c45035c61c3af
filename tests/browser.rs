//! The demo page in a real browser: Redis, two node processes and nginx in
//! front, driven by `tests/browser/e2e.mjs` (Playwright with the system
//! Chromium). Over WebSockets, two tabs of Alice and one of Bob chat, type,
//! see each other present, stream an assistant answer, clear unread badges
//! across tabs, edit, react, reply, rename and delete (the conversation log:
//! every other tab follows), render Markdown with HTML kept as text, and
//! survive a SIGKILL of the node behind one tab, catching up on messages and
//! an edit made meanwhile. Before the kill, the assistants' queue: answers of
//! a slow assistant limited to one at a time wait with their place shown
//! ("Queued (next)", "Queued (2nd)"), one is cancelled while it waits (its
//! bubble goes, nothing is stored), a tab reloaded mid-answer shows the text
//! so far at once and then the whole stored answer, and an answer with URL
//! citations lists its sources as links. Then what a new user meets: Zoë Q
//! (a non-ASCII name, shown by name) on a 390x844 phone, where a chat with a
//! long title and preview fits the screen, Sign out stays in view and the
//! chat's header is one compact line; invites by name (an id derived as the
//! server derives it; someone who never signed in is refused, saying so);
//! the character counter blocking an over-long message and keeping its
//! text; "jump to latest" counting the messages below; day separators and
//! times; dark mode following the system; the unread count in the tab's
//! title; the status pill's plain words; the outbox across a cut (a tab
//! offline keeps two messages waiting, then sends each once); sign-in kept
//! across tabs, and signing out in one tab signing out the other. Behind an
//! nginx that refuses WebSocket upgrades, Alice and Bob end up on the HTTP
//! transport ("Limited connection") and still chat in real time: messages,
//! typing, presence and a streamed answer. The page runs on the
//! `@confab/client` SDK (`web/sdk/`). Screenshots, at desktop and phone
//! widths, land in `target/browser-shots/`.
//!
//! Needs `node` (18 or newer, as in Debian 12), `npm ci --prefix tests/browser` and Chromium at
//! /usr/bin/chromium (or `CONFAB_E2E_CHROMIUM`); without them it fails and
//! says how to install them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fake_llm::FakeLlm;
use common::procs::{Nginx, ProcCluster};

/// One browser run, start to finish (the WebSocket one normally takes about
/// a minute; e2e.mjs gives up after 200 s by itself).
const RUN_LIMIT: Duration = Duration::from_secs(260);

/// The runs take turns: each drives its own cluster and Chromium, and two
/// at once would slow each other down past their waits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const INSTALL: &str = "install them with: apt-get install -y chromium nodejs npm && \
                       npm ci --prefix tests/browser (.ci/run does both)";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `target/browser-shots`, next to the build output.
fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("browser-shots")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CONFAB_E2E_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails, saying what to install, when a prerequisite is missing.
fn check_prerequisites() {
    let version = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        panic!("`node` is not installed; {INSTALL}");
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "node {version} is too old: playwright-core needs node 18 or newer"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules/playwright-core is missing; {INSTALL}"
    );
    assert!(
        chromium_path().is_file(),
        "Chromium is not at {} (set CONFAB_E2E_CHROMIUM to use another); {INSTALL}",
        chromium_path().display()
    );
}

/// The echo assistant answering quickly, for every node.
fn echo_fast() -> [(String, String); 1] {
    [(
        "CONFAB_ASSISTANTS__DEFAULT__ECHO_DELAY_MS".to_owned(),
        "20".to_owned(),
    )]
}

/// The assistants of the queue scenario (e2e.mjs knows their ids): `slow`
/// repeats the user's message a word every 250 ms and answers one request
/// at a time across the cluster, so others wait in its queue; `cited` is
/// the fake OpenAI-compatible server's `cited` model, an answer with two URL
/// citations. Alice asks three answers at once there, above the default
/// per-user limit of two.
fn queue_assistants(llm: &FakeLlm) -> Vec<(String, String)> {
    [
        ("CONFAB_ASSISTANTS__SLOW__PROVIDER", "echo"),
        ("CONFAB_ASSISTANTS__SLOW__ECHO_DELAY_MS", "250"),
        ("CONFAB_ASSISTANTS__SLOW__MAX_CONCURRENT", "1"),
        ("CONFAB_ASSISTANTS__CITED__PROVIDER", "openai"),
        ("CONFAB_ASSISTANTS__CITED__MODEL", "cited"),
        ("CONFAB_ASSISTANTS__CITED__BASE_URL", llm.base_url.as_str()),
        ("CONFAB_STREAMING__MAX_STREAMS_PER_USER", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// node id -> pid of each node, for e2e.mjs to kill the one behind a tab.
fn node_pids(cluster: &ProcCluster) -> BTreeMap<&str, u32> {
    cluster
        .nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.pid().expect("node running")))
        .collect()
}

/// Runs one scenario of e2e.mjs against the balancer at `url`; fails with
/// its output when it fails.
async fn run_e2e(scenario: &str, url: &str, pids: &BTreeMap<&str, u32>, shots: &Path) {
    std::fs::create_dir_all(shots).unwrap();
    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg("e2e.mjs")
        .current_dir(browser_dir())
        .env("CONFAB_E2E_URL", url)
        .env("CONFAB_E2E_SHOTS", shots)
        .env("CONFAB_E2E_NODES", serde_json::to_string(pids).unwrap())
        .env("CONFAB_E2E_SCENARIO", scenario)
        .env("CONFAB_E2E_CHROMIUM", chromium_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("e2e.mjs ({scenario}) did not finish within {RUN_LIMIT:?}"))
        .expect("node e2e.mjs runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "e2e.mjs ({scenario}) took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert!(
        out.status.success(),
        "the browser scenario {scenario} failed ({}); its output is above, screenshots in {}",
        out.status,
        shots.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_works_in_a_browser_across_tabs_nodes_and_a_node_kill() {
    check_prerequisites();
    let _turn = ONE_AT_A_TIME.lock().await;
    let llm = FakeLlm::start().await;
    let mut env = echo_fast().to_vec();
    env.extend(queue_assistants(&llm));
    let cluster = ProcCluster::start_with(2, 1, &env).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let lb = Nginx::start(&ports).await;
    run_e2e("websocket", &lb.url(), &node_pids(&cluster), &shots_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_falls_back_to_the_http_transport_behind_a_proxy_refusing_websockets() {
    check_prerequisites();
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = ProcCluster::start_with(2, 1, &echo_fast()).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    // As tests/lb/nginx.conf, but every WebSocket upgrade gets 403.
    let proxy = Nginx::start_with(include_str!("lb/nginx-no-websocket.conf"), &ports).await;
    // The proxy does refuse sockets, so the page cannot be on one.
    let ws = format!("ws://127.0.0.1:{}/api/v1/chat/ws", proxy.port);
    match tokio_tungstenite::connect_async(&ws).await {
        Ok(_) => panic!("the proxy let a WebSocket through"),
        Err(e) => assert!(e.to_string().contains("403"), "not refused with 403: {e}"),
    }
    let shots = shots_dir().join("http-transport");
    run_e2e("http", &proxy.url(), &node_pids(&cluster), &shots).await;
}
