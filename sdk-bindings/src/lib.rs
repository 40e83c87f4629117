//! The client core (`sdk-core`) for Kotlin (Android and the JVM), Swift (iOS, macOS) and
//! Python, through uniffi: an adapter with no logic of its own.
//!
//! - [`ImClient`]: one user on one device. Created from [`ClientOptions`] (server, token, user,
//!   device, the directory for its database, transport), it connects at once and reconnects by
//!   itself. Every command is an async method (a `suspend fun` in Kotlin, `async` in Swift and
//!   Python) answered in plain records, or failing with [`ImError`], a typed exception.
//! - [`ClientListener`]: the app's implementation receives every [`ClientEvent`] in order, on a
//!   thread of the client's, from [`ImClient::subscribe`] until the returned
//!   [`EventSubscription`] is cancelled.
//! - [`TokenProvider`]: the app's implementation is asked for a fresh token when the current
//!   one expires.
//!
//! `scripts/bindings.sh` generates the sources and builds the native library; the README shows
//! each language.

mod client;
mod error;
mod events;
mod types;

pub use client::{
    ClientOptions, ClientStatus, ImClient, TokenProvider, Transport, direct_conversation_id,
    group_conversation_id,
};
pub use error::ImError;
pub use events::{ClientListener, EventSubscription};
pub use types::*;

uniffi::setup_scaffolding!("imsdk");
