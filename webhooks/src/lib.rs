//! Signed HTTP callbacks from the IM server to an app's own backend.
//!
//! Two kinds of hook, both posted as JSON to one configured URL:
//!
//! - **before-send** ([`Webhooks::before_send`]): on the send path, before a message is stored.
//!   The app's server allows, rejects (with its own reason code) or rewrites the message. One
//!   request, no retries, bounded by the configured timeout; when the app's server cannot be
//!   consulted the [`FailurePolicy`] decides.
//! - **after-events** ([`Webhooks::after`]): notifications of what already happened (a message
//!   stored, a group changed, a device online or offline). They are queued without blocking and
//!   delivered in the background by a few concurrent workers, with retries and exponential
//!   backoff. **Order across events is not guaranteed**: retries and concurrent requests
//!   reorder them; receivers order messages by `conversation_seq`. Delivery is at least once:
//!   every event carries a `delivery_id`, the same on every attempt, to de-duplicate on.
//!
//! Every request is signed (see [`signature`]): headers `X-IM-Event`, `X-IM-Delivery`,
//! `X-IM-Timestamp` and `X-IM-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! [`verify`] checks one as a receiver would.
//!
//! Metrics (through the `metrics` facade; the server installs the recorder):
//! `im_webhook_requests_total{hook,result}`, `im_webhook_dropped_total{event,reason}`,
//! `im_webhook_queue_depth`, `im_webhook_latency_seconds{hook}` and
//! `im_webhook_before_send_decisions_total{decision}`; see [`metrics_names`].

mod config;
mod delivery;
mod event;
pub mod signature;
mod transport;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use config::{ConfigError, EnabledHooks, FailurePolicy, MIN_SECRET_LEN, WebhookConfig};
pub use event::{
    AfterEvent, AfterEventDelivery, AfterEventKind, BEFORE_SEND_EVENT, BeforeSend,
    BeforeSendAnswer, BeforeSendDecision, BeforeSendRequest, GroupChange,
};
pub use signature::{sign, verify, verify_headers};

use delivery::{Counters, DropReason, Shared};
use metrics_names::{BEFORE_SEND_DECISIONS_TOTAL, LATENCY_SECONDS, REQUESTS_TOTAL};
use transport::{MAX_ANSWER_BYTES, PostError};

/// The names of the metrics this crate records, for dashboards and tests.
pub mod metrics_names {
    /// Counter, labels `hook` (`before_send` or an after-event name) and `result` (`ok`,
    /// `rejected_status` for a status that is not 2xx, `timeout`, `error` for connection
    /// failures and unparseable before-send answers). One per request, retries included.
    pub const REQUESTS_TOTAL: &str = "im_webhook_requests_total";
    /// Counter, labels `event` and `reason` (`queue_full`, `gave_up`, `shutdown`): after-events
    /// never delivered.
    pub const DROPPED_TOTAL: &str = "im_webhook_dropped_total";
    /// Gauge: after-events waiting in the queue.
    pub const QUEUE_DEPTH: &str = "im_webhook_queue_depth";
    /// Histogram, label `hook`: seconds per request, answer read included.
    pub const LATENCY_SECONDS: &str = "im_webhook_latency_seconds";
    /// Counter, label `decision` (`allow`, `reject`, `rewrite`, `failed_open`, `unavailable`):
    /// what before-send answered.
    pub const BEFORE_SEND_DECISIONS_TOTAL: &str = "im_webhook_before_send_decisions_total";
}

/// Why the webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// [`Webhooks::start`] was called outside a tokio runtime, so there is nowhere to run the
    /// delivery workers.
    #[error("webhooks must be started inside a tokio runtime")]
    NoRuntime,
}

/// Plain counters since start, for tests and diagnostics without a metrics recorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// After-events the app's server accepted (2xx).
    pub delivered: u64,
    /// After-event attempts that failed (retried or not).
    pub failed_attempts: u64,
    /// After-events dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// After-events given up: a 4xx other than 429, or every attempt failed.
    pub dropped_gave_up: u64,
    /// After-events dropped because the webhooks were closing or stopped.
    pub dropped_shutdown: u64,
    /// Before-send requests that got no usable answer (the failure policy applied).
    pub before_send_failures: u64,
    /// After-events waiting in the queue now (not counting those being delivered).
    pub queued: u64,
}

impl WebhookStats {
    /// Every after-event dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_gave_up + self.dropped_shutdown
    }
}

/// The webhooks of one server: cheap to clone, and every clone feeds the same queue.
///
/// The delivery workers run until [`Webhooks::close`], until the shutdown token given to
/// [`Webhooks::start`] is cancelled (queued events are then dropped and counted), or, when
/// every clone is gone, until what is queued has been delivered.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<AfterEventDelivery>,
    shared: Arc<Shared>,
    workers: TaskTracker,
}

impl Webhooks {
    /// Checks `config` and starts the after-event workers. Cancelling `shutdown` stops them at
    /// once (use [`Webhooks::close`] first to deliver what is queued).
    pub fn start(
        config: WebhookConfig,
        shutdown: CancellationToken,
    ) -> Result<Webhooks, WebhookError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let poster = transport::Poster::new(&config)?;
        let (sender, receiver) = mpsc::channel(config.queue_capacity);
        let workers_wanted = config.max_in_flight;
        let shared = Arc::new(Shared {
            config,
            poster,
            queue: Mutex::new(receiver),
            depth: Default::default(),
            counters: Counters::default(),
            draining: CancellationToken::new(),
            stop: shutdown.child_token(),
            queue_full_logged: Default::default(),
            before_send_failing: Default::default(),
        });
        let workers = TaskTracker::new();
        for _ in 0..workers_wanted {
            let shared = shared.clone();
            workers.spawn_on(async move { shared.run_worker().await }, &runtime);
        }
        tracing::info!(url = %shared.config.url_for_logs(), workers = workers_wanted, "webhooks started");
        Ok(Webhooks {
            inner: Arc::new(Inner {
                queue: sender,
                shared,
                workers,
            }),
        })
    }

    /// Asks the app's server about a message before it is stored. Takes at most the
    /// configured timeout; never retries.
    pub async fn before_send(&self, message: &BeforeSend) -> BeforeSendDecision {
        let shared = &self.inner.shared;
        if !shared.config.events.before_send {
            return BeforeSendDecision::Allow;
        }
        let delivery_id = new_delivery_id();
        let span = tracing::debug_span!(
            "before_send",
            delivery_id = %delivery_id,
            conversation_id = %message.conversation_id,
            client_msg_id = %message.client_msg_id,
        );
        async {
            let started = Instant::now();
            let outcome = self.ask_before_send(&delivery_id, message).await;
            metrics::histogram!(LATENCY_SECONDS, "hook" => BEFORE_SEND_EVENT)
                .record(started.elapsed().as_secs_f64());
            let result = match &outcome {
                Ok(_) => "ok",
                Err(BeforeSendFailure::Status(_)) => "rejected_status",
                Err(BeforeSendFailure::Post(PostError::Timeout)) => "timeout",
                Err(_) => "error",
            };
            metrics::counter!(REQUESTS_TOTAL, "hook" => BEFORE_SEND_EVENT, "result" => result)
                .increment(1);
            let (decision, label) = match outcome {
                Ok(decision) => {
                    if shared.before_send_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("before-send hook answers again");
                    }
                    let label = match decision {
                        BeforeSendDecision::Allow => "allow",
                        BeforeSendDecision::Reject { .. } => "reject",
                        BeforeSendDecision::Rewrite { .. } => "rewrite",
                        BeforeSendDecision::Unavailable => "unavailable",
                    };
                    (decision, label)
                }
                Err(failure) => {
                    shared
                        .counters
                        .before_send_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let policy = shared.config.before_send_failure;
                    // One warning per outage, not one per message.
                    if !shared.before_send_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%failure, ?policy, "before-send hook failed; applying the failure policy");
                    } else {
                        tracing::debug!(%failure, ?policy, "before-send hook failed");
                    }
                    match policy {
                        FailurePolicy::Open => (BeforeSendDecision::Allow, "failed_open"),
                        FailurePolicy::Closed => (BeforeSendDecision::Unavailable, "unavailable"),
                    }
                }
            };
            metrics::counter!(BEFORE_SEND_DECISIONS_TOTAL, "decision" => label).increment(1);
            decision
        }
        .instrument(span)
        .await
    }

    async fn ask_before_send(
        &self,
        delivery_id: &str,
        message: &BeforeSend,
    ) -> Result<BeforeSendDecision, BeforeSendFailure> {
        /// The request body, borrowing the message rather than copying its content.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            event: &'static str,
            delivery_id: &'a str,
            #[serde(flatten)]
            message: &'a BeforeSend,
        }
        let body = serde_json::to_vec(&Body {
            event: BEFORE_SEND_EVENT,
            delivery_id,
            message,
        })
        .map_err(|e| BeforeSendFailure::Encode(e.to_string()))?;
        let answer = self
            .inner
            .shared
            .poster
            .post(
                BEFORE_SEND_EVENT,
                delivery_id,
                Bytes::from(body),
                MAX_ANSWER_BYTES,
            )
            .await?;
        if !answer.status.is_success() {
            return Err(BeforeSendFailure::Status(answer.status));
        }
        let body = answer.body?;
        let parsed: BeforeSendAnswer =
            serde_json::from_slice(&body).map_err(|e| BeforeSendFailure::Answer(e.to_string()))?;
        Ok(parsed.into())
    }

    /// Queues an after-event for delivery. Never blocks: when the queue is full, or the
    /// webhooks are closing, the event is dropped and counted. Events of a kind turned off in
    /// [`WebhookConfig::events`] are ignored.
    pub fn after(&self, event: AfterEvent) {
        let shared = &self.inner.shared;
        let kind = event.kind();
        if !shared.config.events.after_event(kind) {
            return;
        }
        if shared.draining.is_cancelled() || shared.stop.is_cancelled() {
            shared.count_drop(kind, DropReason::Shutdown);
            return;
        }
        let delivery = AfterEventDelivery {
            delivery_id: new_delivery_id(),
            event,
        };
        shared.queue_grew();
        let refused = match self.inner.queue.try_send(delivery) {
            Ok(()) => {
                shared.queue_full_logged.store(false, Ordering::Relaxed);
                return;
            }
            Err(refused) => refused,
        };
        shared.queue_shrank();
        match refused {
            mpsc::error::TrySendError::Full(_) => {
                shared.count_drop(kind, DropReason::QueueFull);
                if !shared.queue_full_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        capacity = shared.config.queue_capacity,
                        "webhook queue full; dropping after-events until it drains"
                    );
                }
            }
            mpsc::error::TrySendError::Closed(_) => {
                shared.count_drop(kind, DropReason::Shutdown);
            }
        }
    }

    /// Stops taking after-events and delivers what is queued, retries included, for at most
    /// `deadline`. What is still undelivered then is dropped and counted (`shutdown`). Safe to
    /// call more than once; `before_send` keeps working afterwards.
    pub async fn close(&self, deadline: Duration) {
        let give_up_at = Instant::now() + deadline;
        let shared = &self.inner.shared;
        shared.draining.cancel();
        // Workers waiting for an event woke up on `draining` and let go of the queue.
        shared.queue.lock().await.close();
        self.inner.workers.close();
        if tokio::time::timeout_at(give_up_at, self.inner.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?deadline,
                "webhook queue not drained by the deadline; dropping the rest"
            );
            shared.stop.cancel();
            self.inner.workers.wait().await;
        }
        shared.abandon_queue().await;
        let stats = self.stats();
        tracing::info!(
            delivered = stats.delivered,
            dropped = stats.dropped(),
            "webhooks closed"
        );
    }

    /// Counters since start.
    pub fn stats(&self) -> WebhookStats {
        let counters = &self.inner.shared.counters;
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        WebhookStats {
            delivered: read(&counters.delivered),
            failed_attempts: read(&counters.failed_attempts),
            dropped_queue_full: read(&counters.dropped_queue_full),
            dropped_gave_up: read(&counters.dropped_gave_up),
            dropped_shutdown: read(&counters.dropped_shutdown),
            before_send_failures: read(&counters.before_send_failures),
            queued: self.inner.shared.depth.load(Ordering::Relaxed) as u64,
        }
    }
}

/// Why a before-send request got no usable answer.
#[derive(Debug, thiserror::Error)]
enum BeforeSendFailure {
    /// No answer, or its body could not be read.
    #[error(transparent)]
    Post(#[from] PostError),
    /// An answer, but not 2xx.
    #[error("status {0}")]
    Status(hyper::StatusCode),
    /// The request could not be encoded (cannot happen with these types).
    #[error("request not encodable: {0}")]
    Encode(String),
    /// A 2xx answer whose body is not a valid decision.
    #[error("unusable answer: {0}")]
    Answer(String),
}

/// 128 random bits in hex: unique without coordination between server nodes.
fn new_delivery_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
