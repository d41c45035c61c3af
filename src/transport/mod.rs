//! How clients reach a node: a WebSocket (`ws`), or where WebSockets are
//! blocked, the HTTP transport (`sse`: an event stream down, frame POSTs
//! up). Both feed the hub's transport-neutral connections and hand every
//! client frame to the same `session`, so a frame means the same on both.

mod session;
pub mod sse;
pub mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::chat::{Chat, UserRateLimiter, Users};
use crate::config::Settings;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;

/// What a connection's session uses of its node: the use cases, the hub it
/// registers with, the authenticator, the shared presence (tickets, the
/// connection directory), the users directory, and the settings.
pub struct Context {
    pub chat: Arc<Chat>,
    /// Where an authenticated connection's user is recorded.
    pub users: Arc<Users>,
    pub hub: Arc<Hub>,
    /// For frames POSTed here for a connection another node holds.
    pub bus: Arc<dyn Bus>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<dyn Presence>,
    pub settings: Settings,
    /// This node's id, told to clients in `auth_success`.
    pub node_id: String,
    /// Set once the node drains: new connections are refused.
    pub draining: Arc<AtomicBool>,
    /// Every connection's tasks (a socket's reader and writer, an event
    /// stream's session), so a drain can wait for them to end.
    pub sessions: TaskTracker,
    /// Frame POSTs per user taken by this node, at the frame and send
    /// rates together (what a socket may send): a POST this node hands on
    /// over the bus costs the cluster before the connection's own limits
    /// see it.
    pub posts: UserRateLimiter,
}

impl Context {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
