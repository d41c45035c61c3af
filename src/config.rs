//! Settings: the embedded `config/default.toml`, then `config/$CONFAB_ENV.toml`
//! if present, then `CONFAB_<SECTION>__<KEY>` environment variables.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer};

/// The defaults compiled into the binary, so a node runs with no files at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The development JWT secret shipped in the defaults; refused in production.
pub const DEV_JWT_SECRET: &str = "confab-dev-secret-do-not-use-in-production";

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("refusing to start: {0}")]
    Refused(String),
}

/// Every setting of a node, grouped as in `config/default.toml`.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub presence: PresenceSettings,
    pub assistants: BTreeMap<String, AssistantSettings>,
    pub streaming: StreamingSettings,
    pub telemetry: TelemetrySettings,
}

/// Listening address, node identity, drain.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub node_id: String,
    pub drain_secs: u64,
    /// Seconds between the node's WebSocket pings.
    pub ping_interval_secs: f64,
    /// Seconds of silence after which a socket counts as dead.
    pub idle_timeout_secs: f64,
    /// Most TCP connections held at once; 0: what the descriptor limit allows.
    pub max_connections: usize,
    /// Seconds a client has to send a request's head, from the connection's
    /// start or the end of its previous response (the keep-alive idle limit).
    pub header_timeout_secs: f64,
    /// Seconds a client has to send a request's body.
    pub body_timeout_secs: f64,
    /// Seconds a write may wait for the client to take bytes.
    pub write_timeout_secs: f64,
}

impl ServerSettings {
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout_secs)
    }

    pub fn body_timeout(&self) -> Duration {
        secs(self.body_timeout_secs)
    }

    pub fn write_timeout(&self) -> Duration {
        secs(self.write_timeout_secs)
    }
}

/// A positive number of seconds as a duration (at least a millisecond, so a
/// zero or negative setting cannot turn a timeout into a busy loop).
fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

/// Where history lives.
#[derive(Clone, Debug, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

/// How events cross nodes.
#[derive(Clone, Debug, Deserialize)]
pub struct BusSettings {
    pub redis_url: String,
    pub cluster: bool,
    pub prefix: String,
    pub gap_fill_ms: u64,
}

/// How tokens are verified.
#[derive(Clone, Debug, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: String,
    #[serde(deserialize_with = "algorithm_name")]
    pub algorithm: Algorithm,
    pub public_key_pem: String,
    pub timeout_secs: f64,
    pub leeway_secs: u64,
    /// Serve `POST /api/v1/dev/token` (anyone may sign in as anyone).
    pub dev_tokens: bool,
}

/// Who is here: how long a node's entries live without renewal, how long
/// a departure waits before it is announced, and where announcements stop.
#[derive(Clone, Debug, Deserialize)]
pub struct PresenceSettings {
    pub ttl_secs: u64,
    pub grace_secs: u64,
    pub max_members_for_events: usize,
}

impl PresenceSettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.max(3))
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

/// What one user or socket may do; every bound on memory and abuse.
#[derive(Clone, Debug, Deserialize)]
pub struct LimitSettings {
    pub max_message_chars: usize,
    pub max_reactions_per_message: usize,
    pub max_frame_bytes: usize,
    pub max_connections_per_user: usize,
    pub send_rate_per_sec: f64,
    pub send_burst: u32,
    pub frame_rate_per_sec: f64,
    pub frame_burst: u32,
    pub outbound_queue: usize,
    pub recent_messages_per_room: usize,
    pub typing_ttl_secs: f64,
    pub history_page_max: u64,
    /// A history page stops growing past this many bytes of messages.
    pub history_page_max_bytes: usize,
    /// Bytes queued for one socket (replies and broadcasts) before it is
    /// closed as too slow (4009).
    pub max_outbound_bytes_per_socket: usize,
    /// Bytes queued for all of a node's sockets together; past it, a socket
    /// that is behind is closed as too slow.
    pub max_outbound_bytes_per_node: usize,
    /// Connections not yet authenticated, node-wide (plain HTTP ones count
    /// for their whole life).
    pub max_pending_connections: usize,
    /// Connections not yet authenticated from one source address; 0: no limit.
    pub max_pending_connections_per_ip: usize,
}

/// One configured assistant (`[assistants.<id>]`). Unset keys take the
/// defaults below, so an assistant can be defined from the environment alone.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AssistantSettings {
    pub provider: ProviderKind,
    pub model: String,
    pub base_url: String,
    pub api_key_env: String,
    pub system_prompt: String,
    pub max_history_messages: u64,
    pub timeout_secs: f64,
    pub echo_delay_ms: u64,
    /// Answers running at once across the cluster; 0: no limit.
    pub max_concurrent: usize,
    /// Answers started in any minute across the cluster; 0: no limit.
    pub requests_per_minute: usize,
    /// Longest wait in the queue before `stream_error UNAVAILABLE`; 0: none.
    pub queue_timeout_secs: f64,
    /// Most requests waiting in the queue (`RATE_LIMITED` beyond); 0: no limit.
    pub max_queue: usize,
}

impl Default for AssistantSettings {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Echo,
            model: "echo-1".into(),
            base_url: String::new(),
            api_key_env: String::new(),
            system_prompt: String::new(),
            max_history_messages: 20,
            timeout_secs: 60.0,
            echo_delay_ms: 60,
            max_concurrent: 0,
            requests_per_minute: 0,
            queue_timeout_secs: 120.0,
            max_queue: 100,
        }
    }
}

/// How assistant answers travel: coalescing, liveness, limits, retries.
/// Which provider answers for an assistant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Built in: repeats the question, token by token (no network).
    Echo,
    /// Any OpenAI-compatible chat completions API.
    #[serde(rename = "openai")]
    OpenAi,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Echo => "echo",
            ProviderKind::OpenAi => "openai",
        }
    }
}

/// A JWT algorithm by its name, in any case (`HS256`, `hs256`).
fn algorithm_name<'de, D: Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
    let name = String::deserialize(d)?;
    name.to_ascii_uppercase()
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("unknown JWT algorithm `{name}`")))
}

#[derive(Clone, Debug, Deserialize)]
pub struct StreamingSettings {
    pub coalesce_ms: u64,
    pub heartbeat_secs: f64,
    pub stream_timeout_secs: f64,
    pub max_streams_per_user: usize,
    pub retry_budget: u32,
    pub max_retry_wait_secs: f64,
    /// Longest answer, in characters: generation stops there (`length`).
    pub max_answer_chars: usize,
}

/// Logs and traces.
#[derive(Clone, Debug, Deserialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    /// OTLP/HTTP collector base URL (e.g. http://otel-collector:4318);
    /// empty: no traces are exported.
    pub otlp_endpoint: String,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For humans.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Settings {
    /// Loads the layered settings for the environment named by `CONFAB_ENV`.
    pub fn load() -> Result<Self, ConfigError> {
        let env = std::env::var("CONFAB_ENV").unwrap_or_default();
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if !env.is_empty() {
            figment = figment.merge(Toml::file(format!("config/{env}.toml")));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("CONFAB_").split("__"))
            .extract()
            .map_err(Box::new)?;
        settings.check(&env)?;
        Ok(settings)
    }

    /// The embedded defaults alone, ignoring files and environment (tests, tools).
    pub fn embedded() -> Self {
        // The embedded file is part of the binary and covered by tests: it parses.
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("embedded config/default.toml is valid")
    }

    /// Refuses settings that are unsafe for the named environment.
    pub fn check(&self, env: &str) -> Result<(), ConfigError> {
        let hs = matches!(
            self.auth.algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        if env == "production" && hs && self.auth.jwt_secret == DEV_JWT_SECRET {
            return Err(ConfigError::Refused(
                "CONFAB_ENV=production with the development JWT secret; \
                 set CONFAB_AUTH__JWT_SECRET to a secret of your own (32+ random bytes)"
                    .into(),
            ));
        }
        if env == "production" && self.auth.dev_tokens {
            return Err(ConfigError::Refused(
                "CONFAB_ENV=production with auth.dev_tokens = true: anyone could sign in \
                 as anyone; set CONFAB_AUTH__DEV_TOKENS=false"
                    .into(),
            ));
        }
        if hs && self.auth.jwt_secret.len() < 16 {
            return Err(ConfigError::Refused(
                "auth.jwt_secret is shorter than 16 bytes".into(),
            ));
        }
        Ok(())
    }

    /// True when the node runs on the development secret (worth a loud warning).
    pub fn uses_dev_secret(&self) -> bool {
        self.auth.jwt_secret == DEV_JWT_SECRET
    }
}

impl AuthSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs.max(0.0))
    }
}

impl LimitSettings {
    pub fn typing_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.typing_ttl_secs.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let s = Settings::embedded();
        assert!(s.bus.redis_url.is_empty());
        assert_eq!(s.auth.algorithm, Algorithm::HS256);
        assert!(s.uses_dev_secret());
    }

    fn with_auth_algorithm(name: &str) -> Result<Settings, Box<figment::Error>> {
        Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(&format!("[auth]\nalgorithm = \"{name}\"")))
            .extract()
            .map_err(Box::new)
    }

    #[test]
    fn jwt_algorithms_are_named_in_any_case_and_none_is_refused() {
        assert_eq!(
            with_auth_algorithm("hs512").unwrap().auth.algorithm,
            Algorithm::HS512
        );
        let err = with_auth_algorithm("none").unwrap_err();
        assert!(err.to_string().contains("unknown JWT algorithm"), "{err}");
    }

    #[test]
    fn production_refuses_the_dev_secret() {
        let s = Settings::embedded();
        let err = s.check("production").unwrap_err();
        assert!(err.to_string().contains("CONFAB_AUTH__JWT_SECRET"), "{err}");
        assert!(s.check("").is_ok());
    }

    #[test]
    fn production_accepts_a_real_secret() {
        let mut s = Settings::embedded();
        s.auth.jwt_secret = "a-long-and-random-production-secret".into();
        s.auth.dev_tokens = false;
        assert!(s.check("production").is_ok());
    }

    #[test]
    fn production_refuses_dev_tokens() {
        let mut s = Settings::embedded();
        s.auth.jwt_secret = "a-long-and-random-production-secret".into();
        let err = s.check("production").unwrap_err();
        assert!(err.to_string().contains("dev_tokens"), "{err}");
    }
}
