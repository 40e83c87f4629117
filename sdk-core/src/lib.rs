//! The shared client core: the delivery logic every app links (iOS and Android through
//! `sdk-bindings`, desktop directly).
//!
//! - [`machine`]: the sans-IO state machine (outbox, acks, inbox cursor, gap fill, heartbeats,
//!   reconnect backoff). No sockets, no clock. Its protocol seam takes and produces
//!   `im_protocol` frames; everything it hands the app is in the core's own types.
//! - [`store`]: the local store interface; [`sqlite`] (default) and [`memory`] implement it.
//! - [`driver`]: a thin tokio driver running the machine over a [`transport`] stream, with an
//!   async handle and an event stream.
//! - [`types`]: the core's own request, answer, error and event types.
//!
//! # The app's API
//!
//! Everything an app touches is plain records and enums of strings, integers, vectors and
//! options (no protobuf or SQLite types), so it can be bound with uniffi as it is.
//!
//! - Start: [`driver::start`]`(server, token, config, store, options, &runtime_handle)` on the
//!   app's tokio runtime, or [`driver::start_with_own_runtime`]`(server, token, config, store,
//!   options)` on a one-thread runtime the client owns (for apps without tokio). Both return a
//!   [`ClientHandle`] and an [`EventStream`]. `server` is a [`ServerAddress`] (host name or IP
//!   and port; `"host:port".parse()` or from a `SocketAddr`); [`DriverOptions`] holds the
//!   [`Connector`] (default [`TcpConnector`]), an optional [`TokenRefresher`] and the event
//!   queue's capacity.
//! - [`ClientHandle`]: `send`, `send_text`, `retry`; local reads `local_history`, `history`
//!   (local first, then the server), `conversations`; server requests `fetch_history`,
//!   `fetch_conversations`, `mark_read`, `recall`, `delete_for_me`, `typing`, `create_group`,
//!   `create_channel`, `add_group_members`, `remove_group_members`, `join_group`, `leave_group`,
//!   `group_members`, `group_info`; connection `state`, `set_token`, `network_changed`,
//!   `set_background`, `shutdown`. Failures are [`DriverError`]; a refused request carries a
//!   [`ServerError`] (stable numeric code, message, `retry_after_ms`).
//! - [`Event`]s: `State`, `Synced`, `MessageAdded`, `MessageUpdated`, `MessageReceived`,
//!   `MessageRecalled`, `MessagesDeleted`, `ConversationUpdated`, `ReadReceipt`,
//!   `GroupChanged(`[`GroupEvent`]`)`, `Typing(`[`TypingEvent`]`)`, `StoreError`,
//!   `InboxReset`. A slow reader holds the server back instead of losing events (see
//!   [`driver`]'s "Backpressure").

pub mod driver;
pub mod machine;
pub mod memory;
pub mod sqlite;
pub mod store;
pub mod transport;
pub mod types;

pub use driver::{ClientHandle, DriverError, DriverOptions, EventStream, TokenRefresher};
pub use machine::{Action, Client, ClientConfig, ConnectionState, Event, StopReason};
pub use store::{
    LocalConversation, LocalMessage, LocalStore, LocalStoreError, Recipient, SendState,
};
pub use transport::http_tunnel::{HttpTunnelConnector, TunnelOptions};
pub use transport::proxy::HttpProxyConnector;
pub use transport::quic::QuicConnector;
pub use transport::tls::{TlsConnector, TlsTrust, TlsTrustError};
pub use transport::{ByteStream, Connector, ServerAddress, TcpConnector};
pub use types::{
    ConversationPage, GroupEvent, GroupEventKind, GroupInfo, GroupMember, GroupMembersChange,
    GroupMembersPage, GroupRole, HistoryDirection, HistoryPage, Platform, PushPreview, PushService,
    ReadMarker, Recall, Request, RequestError, RequestHandle, Response, ServerError, TypingEvent,
    error_code,
};
