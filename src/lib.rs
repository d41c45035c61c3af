//! confab: a realtime chat hub. Stateless nodes hold WebSockets, history
//! lives in SQL, events cross nodes on a bus. See docs/protocol.md for the
//! wire contract and README.md for the layout.

pub mod assistant;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod search;
pub mod server;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod transport;
