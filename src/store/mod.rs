//! History through sea-orm: conversations, participants and messages, on
//! SQLite or Postgres alike. Knows nothing of sockets, frames or HTTP.

mod appender;
mod chats;
mod log;
mod messages;
mod sqlite;
mod usage;
mod users;

use std::time::Duration;

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use prometheus::{HistogramTimer, HistogramVec};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr};

pub use appender::Submitted;
pub use chats::{ChatsPage, ListCursor};
pub use log::{ChangeOrder, Changed};
pub use messages::{Appended, NewMessage, MESSAGE_COLUMNS};
pub use users::Sighting;

use crate::model::UserId;
use crate::tasks::Tasks;

/// The node's handle on the database: a pooled connection, cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    appender: appender::Appender,
    /// Where call latencies go, by operation, when the node exports them.
    latency: Option<HistogramVec>,
}

/// At most this many pooled SQLite connections. Appends have their own
/// connection; the pool serves reads, which are short and local, and the
/// few other writes, which SQLite runs one at a time anyway. Each
/// connection costs its own schema, statements, caches and thread: 16 of
/// them held several MiB more than 4 for nothing (bench/run.sh, idle).
const SQLITE_MAX_READERS: u32 = 4;

/// The page cache of each SQLite connection, in KiB (negative: SQLite's
/// way of saying KiB rather than pages).
const SQLITE_CACHE_KIB: &str = "-256";

impl Store {
    /// Connects to `url` (sqlite://... or postgres://...). A SQLite file and
    /// its folder are created if missing; SQLite runs in WAL mode. The
    /// message writers run on `tasks` and commit what is queued when they stop.
    pub async fn connect(url: &str, max_connections: u32, tasks: &Tasks) -> Result<Self, DbErr> {
        if let Some(path) = sqlite_path(url) {
            if let Some(dir) = std::path::Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        DbErr::Custom(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
            }
        }
        let max_connections = if sqlite_path(url).is_some() {
            max_connections.min(SQLITE_MAX_READERS)
        } else {
            max_connections
        };
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Each connection keeps its own page cache, 2 MiB by
                    // default: 32 MiB for a pool of 16, most of a node's
                    // memory next to its sockets. The kernel's page cache
                    // holds the file as well.
                    .pragma("cache_size", SQLITE_CACHE_KIB)
            });
        // Nodes starting together on one SQLite file race to switch it to
        // WAL, which needs a moment of exclusive access: retry briefly.
        let mut attempt = 0;
        loop {
            match Database::connect(opts.clone()).await {
                Ok(db) => return Self::from_connection(db, tasks),
                Err(e) if attempt < 20 && is_busy(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wraps an existing connection (tests use this to pick a Postgres schema).
    /// Starts the message writers: on Postgres, tasks on `tasks`, which lock
    /// per conversation, so writers for different conversations commit in
    /// parallel; on SQLite, which has one writer at a time, one thread with
    /// a connection of its own to the same file (see `sqlite`).
    pub fn from_connection(db: DatabaseConnection, tasks: &Tasks) -> Result<Self, DbErr> {
        let appender = match db.get_database_backend() {
            sea_orm::DbBackend::Sqlite => {
                let options = db.get_sqlite_connection_pool().connect_options();
                let path = options.get_filename();
                if path.as_os_str().is_empty() || path.starts_with(":memory:") {
                    return Err(DbErr::Custom(
                        "SQLite needs a database file (sqlite://PATH), not an in-memory database"
                            .into(),
                    ));
                }
                appender::Appender::start_sqlite(path)?
            }
            _ => appender::Appender::start(&db, 4, tasks),
        };
        Ok(Self {
            db,
            appender,
            latency: None,
        })
    }

    /// Records the latency of the main calls into `histogram`, labelled
    /// by operation.
    pub fn with_latency(mut self, histogram: HistogramVec) -> Self {
        self.latency = Some(histogram);
        self
    }

    /// Observes the time until it is dropped, under `op`.
    fn timer(&self, op: &'static str) -> Option<HistogramTimer> {
        self.latency
            .as_ref()
            .map(|h| h.with_label_values(&[op]).start_timer())
    }

    /// Applies every pending migration. Nodes starting together may race to
    /// apply the same one: the loser's attempt fails, and its retry finds
    /// the migration applied.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        let mut attempt = 0;
        loop {
            match Migrator::up(&self.db, None).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::info!(error = %e, attempt, "migration raced another node; retrying");
                    tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A round trip to the database, for readiness.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.db.ping().await
    }

    /// The raw connection, for tests and tools.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Sqlite => "sqlite",
            sea_orm::DbBackend::Postgres => "postgres",
            _ => "other",
        }
    }
}

/// The file path of a `sqlite://` URL, if it names a file.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(":memory:")).then_some(path)
}

/// SQLite's "database is busy" or "locked" (result codes 5 and 6, or
/// their extended codes), which a moment's wait resolves.
fn is_busy(e: &DbErr) -> bool {
    let (DbErr::Conn(RuntimeErr::SqlxError(err))
    | DbErr::Exec(RuntimeErr::SqlxError(err))
    | DbErr::Query(RuntimeErr::SqlxError(err))) = e
    else {
        return false;
    };
    let code = err
        .as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<u32>().ok());
    // The primary result code is the extended code's low byte.
    matches!(code.map(|c| c & 0xff), Some(5 | 6))
}

/// A user id read back from the database, where only valid ones are written.
fn stored_user(id: String) -> Result<UserId, DbErr> {
    UserId::parse(id).map_err(|e| DbErr::Type(e.to_string()))
}

/// Now, at the millisecond precision every backend stores exactly, so a
/// message built in memory equals the same message read back.
pub fn now() -> DateTime<Utc> {
    let ms = Utc::now().timestamp_millis();
    // A millisecond timestamp taken from the clock is always representable.
    DateTime::from_timestamp_millis(ms).expect("current time is representable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://data/confab.db?mode=rwc"),
            Some("data/confab.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x/y"), None);
    }
}
