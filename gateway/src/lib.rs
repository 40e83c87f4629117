//! The access layer: holds client connections, runs the handshake and heartbeats, keeps the map
//! of online devices and pushes to them, and hands business frames to the logic tier through
//! [`logic_api::LogicApi`]. It holds no business rules and knows nothing of storage.
//!
//! - [`session`]: the per-connection protocol rules, sans IO (what a frame may be, the
//!   handshake's checks, rate limit, deadlines).
//! - [`server`]: the tokio tasks that run a connection over any [`transport::ByteStream`].
//! - [`transport`]: one acceptor per transport (TCP; in-memory for tests).
//! - [`hub`] and [`router`]: online devices, and getting pushes to them.
//! - [`outbox`]: each connection's bounded outbound queue.
//! - [`metrics`]: what the gateway counts (connections, logins, requests, send latency, pushes).

pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod router;
pub mod server;
pub mod session;
pub mod transport;
mod writer;

/// Tokens live in their own crate, shared with the load tester and the tests; re-exported here
/// so `gateway::auth` keeps naming them.
pub use im_auth as auth;
