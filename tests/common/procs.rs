//! Real processes for cluster tests: `redis-server` on free ports (killable
//! and restartable on the same port), and `confab` node processes on ports
//! they pick and report.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP port on 127.0.0.1 that was free a moment ago, for servers that
/// must be told their port before they start (redis-server, nginx). Node
/// processes need none: they bind port 0 and report the port they got.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready` every 20 ms until it is true, failing after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True if a Redis answers PING on the port.
pub async fn redis_answers(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"+PONG\r\n"
}

/// A `redis-server` child process.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(free_port(), Vec::new()).await
    }

    pub async fn start_with(port: u16, extra: Vec<String>) -> Redis {
        let mut r = Redis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis to answer", Duration::from_secs(10), || {
            redis_answers(port)
        })
        .await;
    }

    /// SIGKILL: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `confab serve` child process, on a port the system picked for it.
///
/// Every node process of the tests starts here: the node listens on
/// `127.0.0.1:0` and writes the address it bound to a port file
/// (`confab serve --port-file`), which the test reads before it asks that
/// address for `/ready`. So no port is guessed free beforehand, and the
/// answer to `/ready` comes from this node, not from whatever else might
/// hold a guessed port.
pub struct NodeProcess {
    pub port: u16,
    pub node_id: String,
    child: Option<Child>,
    /// A command the node runs under (e.g. `prlimit --nofile=256:256`).
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    /// Holds the port file.
    run_dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node with `CONFAB_*` settings and waits for `/ready`.
    pub async fn start(node_id: &str, workdir: &Path, env: &[(String, String)]) -> NodeProcess {
        Self::start_under(&[], node_id, workdir, env).await
    }

    /// As `start`, with the node run by `wrapper`, a command that runs the
    /// rest of its arguments (e.g. `["prlimit", "--nofile=256:256"]`).
    pub async fn start_under(
        wrapper: &[&str],
        node_id: &str,
        workdir: &Path,
        env: &[(String, String)],
    ) -> NodeProcess {
        let mut n = NodeProcess {
            port: 0,
            node_id: node_id.to_owned(),
            child: None,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            env: env.to_vec(),
            workdir: workdir.to_owned(),
            run_dir: tempfile::tempdir().unwrap(),
        };
        n.port = n.spawn(0).await;
        n
    }

    /// Starts the node again, on the port it had: a balancer's upstream
    /// list names that address. The port was freed by the node's own exit
    /// moments ago; that another process takes it in between is the
    /// accepted residual case (the node then fails to bind, and this
    /// panics, rather than a stranger being taken for the node).
    pub async fn restart(&mut self) {
        let port = self.spawn(self.port).await;
        assert_eq!(port, self.port, "restarted on the port it had");
    }

    /// Runs the node listening on `port` (0: any), waits for its port file
    /// and then for `/ready` on the address it names; returns its port.
    async fn spawn(&mut self, port: u16) -> u16 {
        assert!(self.child.is_none(), "already running");
        let port_file = self.run_dir.path().join("port");
        // A file left by an earlier run names an address no one listens on.
        let _ = std::fs::remove_file(&port_file);
        let (program, wrapper_args) = match self.wrapper.split_first() {
            Some((program, args)) => (program.as_str(), args),
            None => (env!("CARGO_BIN_EXE_confab"), &[][..]),
        };
        let mut cmd = Command::new(program);
        if !self.wrapper.is_empty() {
            cmd.args(wrapper_args).arg(env!("CARGO_BIN_EXE_confab"));
        }
        let child = cmd
            .arg("serve")
            .arg("--port-file")
            .arg(&port_file)
            .current_dir(&self.workdir)
            .env("CONFAB_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("CONFAB_SERVER__NODE_ID", &self.node_id)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.child = Some(child);
        let child = self.child.as_mut().unwrap();
        wait_until("the node's port file", Duration::from_secs(30), || {
            // A node that exits (it could not bind, say) never writes it.
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the node exited before listening: {status}");
            }
            let written = port_file.exists();
            async move { written }
        })
        .await;
        let addr: std::net::SocketAddr = std::fs::read_to_string(&port_file)
            .unwrap()
            .trim()
            .parse()
            .expect("the port file holds IP:PORT");
        let url = format!("http://{addr}/ready");
        wait_until("node to be ready", Duration::from_secs(30), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
        })
        .await;
        addr.port()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/v1/chat/ws", self.addr())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (`KILL`, `TERM`) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -{sig} {pid}");
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "node did not exit in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A dev token for `user`, signed with the embedded development secret the
/// node processes run on.
pub fn token(user: &str) -> String {
    confab::auth::Authenticator::new(&confab::config::Settings::embedded().auth)
        .unwrap()
        .mint(user, None, Duration::from_secs(3600))
        .unwrap()
}

/// Node processes sharing one Redis and one SQLite file.
pub struct ProcCluster {
    pub redis: Redis,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProcess>,
}

impl ProcCluster {
    pub async fn start(n: usize, drain_secs: u64) -> ProcCluster {
        Self::start_with(n, drain_secs, &[]).await
    }

    /// As `start`, with more `CONFAB_*` settings for every node.
    pub async fn start_with(n: usize, drain_secs: u64, extra: &[(String, String)]) -> ProcCluster {
        let redis = Redis::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = [
            (
                "CONFAB_DATABASE__URL",
                format!("sqlite://{}/shared.db?mode=rwc", dir.path().display()),
            ),
            ("CONFAB_BUS__REDIS_URL", redis.url()),
            ("CONFAB_SERVER__DRAIN_SECS", drain_secs.to_string()),
            ("CONFAB_LIMITS__SEND_BURST", "100000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(extra.iter().cloned());
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(NodeProcess::start(&format!("n{i}"), dir.path(), &env).await);
        }
        ProcCluster { redis, dir, nodes }
    }
}

/// Creates a conversation over REST at `base` (a node or the balancer).
pub async fn create_chat(base: &str, owner: &str, others: &[&str]) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/chat/chats"))
        .bearer_auth(token(owner))
        .json(&serde_json::json!({"participant_ids": others}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// nginx in front of the given node ports, rendered from tests/lb/nginx.conf
/// (or another template with its placeholders).
pub struct Nginx {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(upstreams: &[u16]) -> Nginx {
        Self::start_with(include_str!("../lb/nginx.conf"), upstreams).await
    }

    /// nginx from `template`: `{{DIR}}`, `{{PORT}}` and `{{UPSTREAMS}}`
    /// filled in.
    pub async fn start_with(template: &str, upstreams: &[u16]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        let conf = template
            .replace("{{DIR}}", &dir.path().display().to_string())
            .replace("{{PORT}}", &port.to_string())
            .replace("{{UPSTREAMS}}", &servers);
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is installed (apt-get install nginx; .ci/run does it)");
        let url = format!("http://127.0.0.1:{port}/health");
        wait_until("nginx to proxy", Duration::from_secs(10), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
        })
        .await;
        Nginx {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/api/v1/chat/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its workers, which would
        // otherwise live on, holding the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
