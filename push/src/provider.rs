//! The contract between the dispatcher and a push service: deliver one alert to one token and
//! say what happened, in the four outcomes the dispatcher acts on.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::types::{Platform, PushToken};

/// A boxed future that can move between threads, so providers can live behind `Arc<dyn _>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one phone is shown: the rendered form of one or more coalesced messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The recipient's user id.
    pub user: String,
    /// The notification's first line.
    pub title: String,
    /// The notification's second line.
    pub body: String,
    /// The number on the app icon.
    pub badge: u32,
    /// The conversation of the newest message; groups and collapses notifications.
    pub conversation_id: String,
    /// The newest message's server id, so the app knows what to fetch when it wakes up.
    pub server_msg_id: u64,
    /// The newest message's position in its conversation.
    pub conversation_seq: u64,
    /// How many messages this alert stands for (1 unless several were coalesced).
    pub messages: u32,
}

/// What a push service said about one alert for one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The service accepted the alert; it will deliver it when the device is reachable.
    Delivered,
    /// The service says the token is no longer valid (app uninstalled, token rotated, token for
    /// another app or environment); the server must delete it and never use it again.
    TokenInvalid(String),
    /// A passing failure (the service is overloaded or down, a rate limit, the network): the
    /// same alert may succeed if sent again later.
    Retryable(String),
    /// A failure that sending again will not fix (a malformed request, bad credentials, a
    /// payload too large).
    Failed(String),
}

impl PushOutcome {
    /// The `result` label of `im_push_sent_total`.
    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Delivered => "delivered",
            PushOutcome::TokenInvalid(_) => "token_invalid",
            PushOutcome::Retryable(_) => "retryable",
            PushOutcome::Failed(_) => "failed",
        }
    }
}

/// A push service client. Implementations keep their connections and credentials cached and
/// are shared by all delivery tasks, so `send` takes `&self` and may run concurrently.
pub trait PushProvider: Send + Sync {
    /// A short lowercase name for metrics labels and logs (`apns`, `fcm`, `webhook`).
    fn name(&self) -> &'static str;

    /// Delivers `alert` to the device behind `token`. Never panics on what the service
    /// answers; every failure is one of the outcomes. The dispatcher bounds the call with its
    /// own timeout, so implementations need not.
    fn send<'a>(&'a self, alert: &'a Alert, token: &'a PushToken) -> BoxFuture<'a, PushOutcome>;
}

/// The providers a dispatcher routes to, one per platform. A token whose platform has no
/// provider is dropped and counted (`im_push_dropped_total{reason="no_provider"}`).
#[derive(Clone, Default)]
pub struct Providers {
    by_platform: HashMap<Platform, Arc<dyn PushProvider>>,
}

impl Providers {
    /// No providers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes tokens of `platform` to `provider`, replacing any earlier one.
    pub fn with(mut self, platform: Platform, provider: Arc<dyn PushProvider>) -> Self {
        self.by_platform.insert(platform, provider);
        self
    }

    /// The provider for `platform`, if one was configured.
    pub fn get(&self, platform: Platform) -> Option<&Arc<dyn PushProvider>> {
        self.by_platform.get(&platform)
    }
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self
            .by_platform
            .iter()
            .map(|(platform, provider)| (platform.as_str(), provider.name()))
            .collect();
        names.sort();
        f.debug_struct("Providers")
            .field("by_platform", &names)
            .finish()
    }
}

/// Why a provider could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A base URL, webhook URL or token URI is unusable.
    #[error(transparent)]
    Url(#[from] crate::http::UrlError),
    /// A signing key could not be loaded.
    #[error(transparent)]
    Key(#[from] crate::jwt::KeyError),
    /// A required field is empty or out of range.
    #[error("invalid push configuration: {0}")]
    Invalid(String),
}

/// Maps the status codes every HTTP service shares: 429, 408 and 5xx are worth retrying, other
/// 4xx are not. Providers handle success and their token-specific answers before calling this.
pub(crate) fn outcome_for_status(status: hyper::StatusCode, detail: &str) -> PushOutcome {
    let reason = format!(
        "HTTP {}: {}",
        status.as_u16(),
        crate::render::truncate_utf8(detail, 200)
    );
    if status == hyper::StatusCode::TOO_MANY_REQUESTS
        || status == hyper::StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        PushOutcome::Retryable(reason)
    } else {
        PushOutcome::Failed(reason)
    }
}
