//! The metric names this crate records, in one place so dashboards and code agree. The server
//! installs the recorder; without one the macros cost next to nothing.

/// Counter, labels `provider` (`apns`, `fcm`, `webhook`) and `result` (`delivered`,
/// `token_invalid`, `retryable`, `failed`): one per attempt to deliver an alert to a token.
pub const SENT: &str = "im_push_sent_total";

/// Counter, label `reason`: notifications or deliveries given up without an attempt
/// (`queue_full`, `closed`, `shutdown`, `no_provider`, `too_many_users`, `retries_exhausted`,
/// `invalid_token_channel_full`).
pub const DROPPED: &str = "im_push_dropped_total";

/// Counter: notifications merged into an alert already waiting for the same user, so no alert
/// of their own was sent.
pub const COALESCED: &str = "im_push_coalesced_total";

/// Counter: alerts held back by the per-user rate limit (they go out later, merged with
/// whatever arrives meanwhile).
pub const RATE_LIMITED: &str = "im_push_rate_limited_total";

/// Gauge: notifications waiting in the dispatcher's input queue.
pub const QUEUE_DEPTH: &str = "im_push_queue_depth";

/// Histogram, label `provider`: seconds one delivery attempt took.
pub const LATENCY: &str = "im_push_latency_seconds";
