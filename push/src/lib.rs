//! Offline push notifications: when a user has no online connection, the server hands each new
//! message to a [`PushDispatcher`] together with the user's registered [`PushToken`]s, and the
//! dispatcher wakes the phones through Apple's push service ([`ApnsProvider`]), Firebase Cloud
//! Messaging ([`FcmProvider`]) or the deployment's own HTTP endpoint ([`WebhookProvider`]).
//!
//! The crate is split the way the rest of the workspace is:
//! - [`render`] and the batcher inside the dispatcher are plain state and functions with time
//!   passed in, so coalescing and rate limiting are tested without clocks or sockets;
//! - the providers are the only code that speaks HTTP; each maps its service's answers to a
//!   [`PushOutcome`] in one place;
//! - [`PushDispatcher`] is the tokio part: a bounded queue in, a timer, and delivery tasks with
//!   retries, drained by [`PushDispatcher::close`].
//!
//! The server decides *when* a user is offline and which tokens they have; this crate never
//! stores tokens. A token a push service rejects for good comes back on the dispatcher's
//! invalid-token channel so the server can delete it.

mod apns;
mod batcher;
mod dispatcher;
mod fcm;
mod http;
mod jwt;
pub mod metrics;
mod provider;
pub mod render;
mod types;
mod webhook;

pub use apns::{APNS_PRODUCTION_URL, APNS_SANDBOX_URL, ApnsConfig, ApnsProvider};
pub use dispatcher::{DispatcherConfig, InvalidToken, PushDispatcher, PushStats};
pub use fcm::{FCM_URL, FcmConfig, FcmProvider};
pub use http::UrlError;
pub use jwt::KeyError;
pub use provider::{Alert, BoxFuture, ConfigError, Providers, PushOutcome, PushProvider};
pub use types::{Notification, Platform, PreviewPolicy, PushToken};
pub use webhook::{
    WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER, WebhookConfig, WebhookProvider,
    webhook_signature,
};
