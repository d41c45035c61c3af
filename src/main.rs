//! The confab command line: `serve` (the default), `migrate`, `token`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confab::{
    auth::Authenticator, config::Settings, node, server, store::Store, tasks::Tasks, telemetry,
};

/// jemalloc rather than the system allocator: after a connect storm glibc
/// kept what the storm's buffers had freed, and an idle socket measured
/// 5.3 KiB of node RSS against 3.0 with jemalloc (bench/run.sh idle, 10k
/// sockets, one user each; docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: a background thread hands freed pages back to the
/// system after a second, off the request path.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "confab", version, about = "A realtime chat hub")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Print a JWT for a user, signed with the configured secret (for development).
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
        /// How long the token is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Once listening, write the address the node bound (`IP:PORT`) to
    /// PATH.
    ///
    /// With `listen = 127.0.0.1:0` the system picks the port, and this file
    /// is how tests and scripts learn it. Picking a free port beforehand and
    /// passing it in is a race: another process may take the port before
    /// the node binds it, and whoever then answers on it looks like the
    /// node. The file is written whole (PATH.tmp, then renamed to PATH), so
    /// a reader that sees PATH never reads half an address.
    #[arg(long, value_name = "PATH")]
    port_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(settings, args).await,
        Command::Migrate => migrate(settings).await,
        Command::Token { user, name, ttl } => Authenticator::new(&settings.auth)
            .map_err(|e| e.to_string())
            .and_then(|a| a.mint(&user, name.as_deref(), ttl))
            .map(|t| println!("{t}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut settings: Settings, args: ServeArgs) -> Result<(), String> {
    if settings.server.node_id.is_empty() {
        // Named here rather than by the node, so its traces carry the same name.
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        settings.server.node_id = format!("node-{}", &suffix[20..]);
    }
    let telemetry = telemetry::init(&settings.telemetry, &settings.server.node_id);
    let result = run(settings, args.port_file.as_deref()).await;
    telemetry.shutdown().await;
    result
}

/// Runs a node until a shutdown signal, then drains it.
async fn run(settings: Settings, port_file: Option<&Path>) -> Result<(), String> {
    if settings.uses_dev_secret() {
        tracing::warn!("USING THE DEVELOPMENT JWT SECRET: anyone can mint tokens. Set CONFAB_AUTH__JWT_SECRET for any real use.");
    }
    let listen = settings.server.listen;
    let node = node::Node::start(settings)
        .await
        .map_err(|e| e.to_string())?;
    let (listener, addr) = server::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    if let Some(path) = port_file {
        write_port_file(path, addr).map_err(|e| format!("port file {}: {e}", path.display()))?;
    }
    tracing::info!(%addr, node = %node.node_id, db = node.store.backend_name(), "confab listening");
    node::serve(node, listener, shutdown_signal()).await;
    Ok(())
}

/// Writes `addr` to `path` atomically: to `PATH.tmp`, then renamed over
/// `path`, so a reader polling for the file sees all of it or nothing.
fn write_port_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

async fn migrate(settings: Settings) -> Result<(), String> {
    let store = Store::connect(&settings.database.url, 2, &Tasks::new())
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    println!("migrations applied to {}", store.backend_name());
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
