//! The shared client core: the delivery logic every app links (iOS and Android through
//! `sdk-bindings`, desktop directly).
//!
//! - [`machine`]: the sans-IO state machine (outbox, acks, inbox cursor, gap fill, heartbeats,
//!   reconnect backoff). No sockets, no clock.
//! - [`store`]: the local store interface; [`sqlite`] (default) and [`memory`] implement it.
//! - [`driver`]: a thin tokio driver running the machine over a TCP connection, with an async
//!   API and an event stream.

pub mod driver;
pub mod machine;
pub mod memory;
pub mod sqlite;
pub mod store;

pub use machine::{Action, Client, ClientConfig, ConnectionState, Event, RequestError, StopReason};
pub use store::{LocalConversation, LocalMessage, LocalStore, Recipient, SendState};
