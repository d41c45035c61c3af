//! The TypeScript client SDK (`clients/js`, `@confab/client`) against real
//! node processes: builds it (`npm run build`), checks that the copy the
//! demo page loads (`web/sdk/*.js`, embedded in the binary) is exactly the
//! build and that the API reference (`clients/js/docs/api`) is what typedoc
//! makes of the sources now, then runs its tests (`clients/js/test/*.test.mjs`,
//! Node's test runner, one file at a time): the unit tests and the
//! integration tests,
//! which start Redis, confab nodes (this binary, as `CONFAB_BIN`) and a TCP
//! balancer of their own and check reconnects after a SIGKILL and a drain,
//! the outbox's exactly-once delivery across network cuts and client
//! restarts, token renewal, the HTTP fallback, RATE_LIMITED, failing sends,
//! edits, reactions, typing, presence, read marks, assistant streams and
//! history paging.
//!
//! Needs `node` (18 or newer), `npm ci --prefix clients/js` and
//! `redis-server`; without them it fails and says how to install them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The whole run: the build and every test file (normally about a minute).
const RUN_LIMIT: Duration = Duration::from_secs(300);

const INSTALL: &str = "install them with: apt-get install -y nodejs npm redis-server && \
                       npm ci --prefix clients/js (.ci/run does both)";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

fn web_sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web/sdk")
}

/// `node --version` as (major, minor).
fn node_version() -> Option<(u32, u32)> {
    let out = Command::new("node").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Fails, saying what to install, when a prerequisite is missing; returns
/// node's version.
fn check_prerequisites() -> (u32, u32) {
    let Some(version) = node_version() else {
        panic!("`node` is not installed; {INSTALL}");
    };
    assert!(
        version.0 >= 18,
        "node {}.{} is too old: the SDK needs node 18 or newer; {INSTALL}",
        version.0,
        version.1
    );
    for module in ["typescript", "ws"] {
        assert!(
            sdk_dir().join("node_modules").join(module).is_dir(),
            "clients/js/node_modules/{module} is missing: run npm ci --prefix clients/js; {INSTALL}"
        );
    }
    let redis = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        matches!(redis, Ok(s) if s.success()),
        "`redis-server` is not installed; {INSTALL}"
    );
    version
}

/// Runs `cmd` with its output inherited (a human sees it move), killing it
/// if it is still running at `deadline`; panics unless it succeeds.
fn run(what: &str, mut cmd: Command, deadline: Instant) {
    let started = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within the run limit of {RUN_LIMIT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("{what} took {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        status.success(),
        "{what} failed ({status}); its output is above"
    );
}

/// The `.js` files directly in `dir`, by name.
fn js_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".js"))
        .collect();
    names.sort();
    names
}

/// Every `dist/*.js` is in `web/sdk/` byte for byte, and `web/sdk/` holds
/// no other `.js`: the page serves a committed copy of the build.
fn check_web_copy() {
    let dist = sdk_dir().join("dist");
    let web = web_sdk_dir();
    let built = js_files(&dist);
    assert!(
        !built.is_empty(),
        "npm run build wrote no clients/js/dist/*.js"
    );
    let fix = "run npm run build:web in clients/js (and commit web/sdk)";
    let mut problems = Vec::new();
    for name in &built {
        let ours = std::fs::read(dist.join(name)).unwrap();
        match std::fs::read(web.join(name)) {
            Ok(copy) if copy == ours => {}
            Ok(_) => problems.push(format!(
                "web/sdk/{name} differs from clients/js/dist/{name}"
            )),
            Err(_) => problems.push(format!("web/sdk/{name} is missing")),
        }
    }
    for name in js_files(&web) {
        if !built.contains(&name) {
            problems.push(format!(
                "web/sdk/{name} is not in the build (clients/js/dist)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the demo page's copy of the SDK is not the build: {}; {fix}",
        problems.join("; ")
    );
}

/// Every file under `dir`, as (path relative to `dir`, bytes), sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The committed API reference (`clients/js/docs/api`) is what typedoc
/// generates from the sources now: the reference cannot drift from the types.
fn check_api_reference(deadline: Instant) {
    let fresh = tempfile::tempdir().unwrap();
    let mut docs = Command::new("npx");
    docs.args(["typedoc", "--logLevel", "Warn", "--out"])
        .arg(fresh.path())
        .current_dir(sdk_dir());
    run("typedoc (clients/js)", docs, deadline);
    let committed = tree(&sdk_dir().join("docs/api"));
    let generated = tree(fresh.path());
    let names =
        |t: &[(PathBuf, Vec<u8>)]| -> Vec<PathBuf> { t.iter().map(|(p, _)| p.clone()).collect() };
    assert_eq!(
        names(&committed),
        names(&generated),
        "clients/js/docs/api lists other files than typedoc generates: run npm run docs in clients/js"
    );
    for ((path, ours), (_, theirs)) in committed.iter().zip(&generated) {
        assert!(
            ours == theirs,
            "clients/js/docs/api/{} is not what typedoc generates from the sources: run npm run docs in clients/js",
            path.display()
        );
    }
}

/// The test files, by name.
fn test_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sdk_dir().join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_typescript_sdk_builds_matches_the_web_copy_and_passes_its_tests_against_real_nodes() {
    let version = check_prerequisites();
    let deadline = Instant::now() + RUN_LIMIT;

    let mut build = Command::new("npm");
    build.args(["run", "build"]).current_dir(sdk_dir());
    run("npm run build (clients/js)", build, deadline);
    check_web_copy();
    check_api_reference(deadline);

    let files = test_files();
    assert!(!files.is_empty(), "no clients/js/test/*.test.mjs");
    let node_test = |files: &[String]| {
        let mut cmd = Command::new("node");
        cmd.arg("--test");
        // One file at a time: each starts its own cluster.
        if version >= (20, 10) {
            cmd.arg("--test-concurrency=1");
        }
        cmd.args(files.iter().map(|f| format!("test/{f}")))
            .current_dir(sdk_dir())
            .env("CONFAB_BIN", env!("CARGO_BIN_EXE_confab"));
        cmd
    };
    if version >= (20, 10) {
        run("node --test (clients/js)", node_test(&files), deadline);
    } else {
        // Node before 20.10 has no --test-concurrency: a file per run.
        for f in &files {
            run(
                &format!("node --test test/{f}"),
                node_test(std::slice::from_ref(f)),
                deadline,
            );
        }
    }
}
