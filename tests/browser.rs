//! The demo page in a real browser: Redis, two node processes and nginx in
//! front, driven by `tests/browser/e2e.mjs` (Playwright with the system
//! Chromium). Two tabs of Alice and one of Bob chat, type, stream an
//! assistant answer, clear unread badges across tabs, edit, react, reply,
//! rename and delete (the conversation log: every other tab follows),
//! render Markdown with HTML kept as text, and survive a SIGKILL of the
//! node behind one tab, catching up on messages and an edit made meanwhile.
//! Screenshots land in `target/browser-shots/`.
//!
//! Needs `node` (18 or newer, as in Debian 12), `npm ci --prefix tests/browser` and Chromium at
//! /usr/bin/chromium (or `CONFAB_E2E_CHROMIUM`); without them it fails and
//! says how to install them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::procs::{Nginx, ProcCluster};

/// The whole browser run, start to finish (it normally takes about a minute;
/// e2e.mjs gives up after 120 s by itself).
const RUN_LIMIT: Duration = Duration::from_secs(180);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_works_in_a_browser_across_tabs_nodes_and_a_node_kill() {
    check_prerequisites();
    let echo_fast = [(
        "CONFAB_ASSISTANTS__DEFAULT__ECHO_DELAY_MS".to_owned(),
        "20".to_owned(),
    )];
    let cluster = ProcCluster::start_with(2, 1, &echo_fast).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let lb = Nginx::start(&ports).await;
    let pids: BTreeMap<&str, u32> = cluster
        .nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.pid().expect("node running")))
        .collect();
    let shots = shots_dir();
    std::fs::create_dir_all(&shots).unwrap();

    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg("e2e.mjs")
        .current_dir(browser_dir())
        .env("CONFAB_E2E_URL", lb.url())
        .env("CONFAB_E2E_SHOTS", &shots)
        .env("CONFAB_E2E_NODES", serde_json::to_string(&pids).unwrap())
        .env("CONFAB_E2E_CHROMIUM", chromium_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("e2e.mjs did not finish within {RUN_LIMIT:?}"))
        .expect("node e2e.mjs runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "e2e.mjs took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert!(
        out.status.success(),
        "the browser scenario failed ({}); its output is above, screenshots in {}",
        out.status,
        shots.display()
    );
}
