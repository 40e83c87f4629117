//! The access layer: holds client connections, runs the handshake and heartbeats, keeps the map
//! of online devices and pushes to them, and hands business frames to the logic tier. It holds
//! no business rules.

pub mod app;
pub mod hub;
pub mod outbox;
pub mod server;
pub mod session;

/// Tokens live in their own crate, shared with the load tester and the tests; re-exported here
/// so `gateway::auth` keeps naming them.
pub use im_auth as auth;
