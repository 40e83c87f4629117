//! The access layer: holds client connections, runs the handshake and heartbeats, keeps the map
//! of online devices and pushes to them, and hands business frames to the logic tier. It holds
//! no business rules.

pub mod app;
pub mod auth;
pub mod hub;
pub mod outbox;
pub mod server;
pub mod session;
