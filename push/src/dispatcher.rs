//! The dispatcher: the tokio part. A bounded queue takes notifications from the server without
//! ever blocking it; one worker task feeds them to the batcher and runs its timer; each alert
//! for each token is delivered by its own task, with retries, under a cap on concurrent
//! deliveries.
//!
//! What happens when something is full, and is counted in `im_push_dropped_total{reason}`:
//! - the input queue: `notify` drops the notification (`queue_full`);
//! - the batcher's user table: the notification is dropped (`too_many_users`);
//! - the delivery cap: the worker waits for a free slot, so the queue fills and the above applies;
//! - the invalid-token channel (the server is not reading it): the report is dropped
//!   (`invalid_token_channel_full`); the token fails again next time and is reported again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::batcher::{Added, BatchLimits, Batcher, ReadyAlert};
use crate::metrics::{COALESCED, DROPPED, LATENCY, QUEUE_DEPTH, RATE_LIMITED, SENT};
use crate::provider::{Alert, Providers, PushOutcome, PushProvider};
use crate::types::{Notification, PreviewPolicy, PushToken};

/// How often users with nothing pending are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The dispatcher's limits and timings.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Notifications waiting for the worker; past this `notify` drops them.
    pub queue_capacity: usize,
    /// How long a user's first notification waits for more to coalesce with.
    pub batch_window: Duration,
    /// Alerts per minute per user once the burst is used; 0 turns the rate limit off.
    pub alerts_per_minute: u32,
    /// Alerts a user may get back to back.
    pub alert_burst: u32,
    /// Users with an open batch or a partly used rate limit tracked at once.
    pub max_tracked_users: usize,
    /// Attempts per alert and token, the first included, when the service says try again.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// The longest wait between retries.
    pub max_retry_backoff: Duration,
    /// Deliveries in flight at once (each holds a request or waits to retry one).
    pub max_concurrent_deliveries: usize,
    /// How long one provider call may take before it counts as a retryable failure.
    pub send_timeout: Duration,
    /// Invalid-token reports waiting for the server to read them.
    pub invalid_token_capacity: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            queue_capacity: 10_000,
            batch_window: Duration::from_secs(1),
            alerts_per_minute: 10,
            alert_burst: 3,
            max_tracked_users: 100_000,
            max_attempts: 4,
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(30),
            max_concurrent_deliveries: 64,
            send_timeout: Duration::from_secs(15),
            invalid_token_capacity: 1_024,
        }
    }
}

/// A token a push service rejected for good; the server should delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidToken {
    /// Whose token it was.
    pub user: String,
    /// The token, with its platform and device.
    pub token: PushToken,
    /// What the service said.
    pub reason: String,
}

/// Counts since start, for tests and the admin API; the same events feed the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Notifications taken into the queue.
    pub accepted: u64,
    /// Notifications or deliveries given up (every `im_push_dropped_total` reason).
    pub dropped: u64,
    /// Notifications merged into an alert already waiting.
    pub coalesced: u64,
    /// Alerts held back by the rate limit.
    pub rate_limited: u64,
    /// Alerts produced (each goes to every token of its user).
    pub alerts: u64,
    /// Provider calls made, retries included.
    pub attempts: u64,
    /// Calls answered `Delivered`.
    pub delivered: u64,
    /// Calls answered `TokenInvalid`.
    pub token_invalid: u64,
    /// Calls answered `Retryable` (or timed out).
    pub retryable: u64,
    /// Calls answered `Failed`.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    dropped: AtomicU64,
    coalesced: AtomicU64,
    rate_limited: AtomicU64,
    alerts: AtomicU64,
    attempts: AtomicU64,
    delivered: AtomicU64,
    token_invalid: AtomicU64,
    retryable: AtomicU64,
    failed: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// State shared by the handle, the worker and the delivery tasks.
struct Shared {
    config: DispatcherConfig,
    providers: Providers,
    counters: Counters,
    invalid_tokens: mpsc::Sender<InvalidToken>,
    /// Cancelled to stop taking notifications and drain (by `close` or the server's token).
    closing: CancellationToken,
    /// Cancelled when the drain deadline passes: in-flight calls and retries are abandoned.
    abort: CancellationToken,
    tracker: TaskTracker,
    deliveries: Arc<Semaphore>,
}

impl Shared {
    fn dropped(&self, reason: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        bump(&self.counters.dropped, count);
        metrics::counter!(DROPPED, "reason" => reason).increment(count);
    }
}

/// One notification on its way to the batcher.
struct Job {
    notification: Notification,
    tokens: Vec<PushToken>,
    policy: PreviewPolicy,
}

/// The handle the server keeps: cheap to clone, and `notify` never waits.
#[derive(Clone)]
pub struct PushDispatcher {
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PushDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushDispatcher")
            .field("providers", &self.shared.providers)
            .field("stats", &self.stats())
            .finish()
    }
}

impl PushDispatcher {
    /// Starts the worker on the current tokio runtime. Cancelling `shutdown` starts the same
    /// drain as [`close`](Self::close) without a deadline; call `close` to bound it.
    ///
    /// Returns the handle and the channel on which tokens the services rejected for good are
    /// reported; the server should read it and delete those tokens.
    pub fn start(
        config: DispatcherConfig,
        providers: Providers,
        shutdown: CancellationToken,
    ) -> (PushDispatcher, mpsc::Receiver<InvalidToken>) {
        let (queue, jobs) = mpsc::channel(config.queue_capacity.max(1));
        let (invalid_tokens, invalid_rx) = mpsc::channel(config.invalid_token_capacity.max(1));
        let shared = Arc::new(Shared {
            deliveries: Arc::new(Semaphore::new(config.max_concurrent_deliveries.max(1))),
            config,
            providers,
            counters: Counters::default(),
            invalid_tokens,
            closing: shutdown.child_token(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        shared
            .tracker
            .spawn(run_worker(shared.clone(), jobs).instrument(info_span!("push_dispatcher")));
        (PushDispatcher { queue, shared }, invalid_rx)
    }

    /// Queues a notification for the user's devices. Never waits: when the queue is full or
    /// the dispatcher is closing the notification is dropped and counted.
    pub fn notify(
        &self,
        notification: Notification,
        tokens: Vec<PushToken>,
        policy: PreviewPolicy,
    ) {
        if tokens.is_empty() {
            return; // no device to wake
        }
        if self.shared.closing.is_cancelled() {
            self.shared.dropped("closed", 1);
            return;
        }
        let job = Job {
            notification,
            tokens,
            policy,
        };
        match self.queue.try_send(job) {
            Ok(()) => {
                bump(&self.shared.counters.accepted, 1);
                metrics::gauge!(QUEUE_DEPTH).set(self.queue_depth() as f64);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.shared.dropped("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.shared.dropped("closed", 1),
        }
    }

    fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Counts since start.
    pub fn stats(&self) -> PushStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PushStats {
            accepted: get(&c.accepted),
            dropped: get(&c.dropped),
            coalesced: get(&c.coalesced),
            rate_limited: get(&c.rate_limited),
            alerts: get(&c.alerts),
            attempts: get(&c.attempts),
            delivered: get(&c.delivered),
            token_invalid: get(&c.token_invalid),
            retryable: get(&c.retryable),
            failed: get(&c.failed),
        }
    }

    /// Stops taking notifications, sends every open batch at once (windows and rate limits
    /// aside) and waits up to `deadline` for deliveries and their retries to finish. Past the
    /// deadline what is still in flight is abandoned and counted (`shutdown`). Returns whether
    /// everything finished in time. Safe to call more than once and from several clones.
    pub async fn close(&self, deadline: Duration) -> bool {
        self.shared.closing.cancel();
        self.shared.tracker.close();
        let finished = tokio::time::timeout(deadline, self.shared.tracker.wait())
            .await
            .is_ok();
        if !finished {
            warn!(
                ?deadline,
                "push deliveries still in flight at the deadline; abandoning them"
            );
            self.shared.abort.cancel();
            self.shared.tracker.wait().await;
        }
        finished
    }
}

/// The worker: queue in, batcher, timer, deliveries out. Runs until the dispatcher closes and
/// the queue is drained.
async fn run_worker(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let config = &shared.config;
    let mut batcher = Batcher::new(BatchLimits {
        window: config.batch_window,
        alerts_per_minute: config.alerts_per_minute,
        burst: config.alert_burst,
        max_users: config.max_tracked_users,
    });
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    let mut draining = false;
    loop {
        let next_batch = batcher.next_deadline();
        let wake_at = next_batch.map_or(next_prune, |at| at.min(next_prune));
        tokio::select! {
            biased;
            _ = shared.abort.cancelled() => break,
            _ = shared.closing.cancelled(), if !draining => {
                // Take what is already queued, then recv answers None.
                draining = true;
                jobs.close();
            }
            job = jobs.recv() => {
                metrics::gauge!(QUEUE_DEPTH).set(jobs.len() as f64);
                let Some(job) = job else {
                    let ready = batcher.flush();
                    debug!(alerts = ready.len(), "push dispatcher closing: flushing open batches");
                    dispatch(&shared, ready).await;
                    break;
                };
                match batcher.add(Instant::now(), job.notification, job.tokens, job.policy) {
                    Added::Opened => {}
                    Added::Coalesced => {
                        bump(&shared.counters.coalesced, 1);
                        metrics::counter!(COALESCED).increment(1);
                    }
                    Added::TooManyUsers => shared.dropped("too_many_users", 1),
                }
            }
            _ = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if now >= next_prune {
                    batcher.prune(now);
                    next_prune = now + PRUNE_EVERY;
                }
                let polled = batcher.poll(now);
                if polled.rate_limited > 0 {
                    bump(&shared.counters.rate_limited, polled.rate_limited);
                    metrics::counter!(RATE_LIMITED).increment(polled.rate_limited);
                }
                dispatch(&shared, polled.ready).await;
            }
        }
    }
    // Only an abort gets here with batches open.
    shared.dropped("shutdown", batcher.pending_messages());
    debug!("push dispatcher worker stopped");
}

/// Starts a delivery task for each alert and token, waiting for a free delivery slot first.
async fn dispatch(shared: &Arc<Shared>, ready: Vec<ReadyAlert>) {
    for ReadyAlert { alert, tokens } in ready {
        bump(&shared.counters.alerts, 1);
        let alert = Arc::new(alert);
        for token in tokens {
            let Some(provider) = shared.providers.get(token.platform).cloned() else {
                debug!(
                    platform = token.platform.as_str(),
                    "no push provider for this platform"
                );
                shared.dropped("no_provider", 1);
                continue;
            };
            let permit = tokio::select! {
                permit = shared.deliveries.clone().acquire_owned() => permit,
                _ = shared.abort.cancelled() => return,
            };
            let Ok(permit) = permit else { return }; // the semaphore is never closed
            let span = info_span!("push_delivery", user = %alert.user, device = %token.device, provider = provider.name());
            let task = deliver(shared.clone(), provider, alert.clone(), token);
            shared.tracker.spawn(
                async move {
                    task.await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

/// Delivers one alert to one token, retrying passing failures with exponential backoff.
async fn deliver(
    shared: Arc<Shared>,
    provider: Arc<dyn PushProvider>,
    alert: Arc<Alert>,
    token: PushToken,
) {
    let config = &shared.config;
    let counters = &shared.counters;
    let max_attempts = config.max_attempts.max(1);
    for attempt in 1..=max_attempts {
        let started = Instant::now();
        let call = tokio::time::timeout(config.send_timeout, provider.send(&alert, &token));
        let outcome = tokio::select! {
            outcome = call => outcome.unwrap_or_else(|_| PushOutcome::Retryable(format!("no answer within {:?}", config.send_timeout))),
            _ = shared.abort.cancelled() => {
                shared.dropped("shutdown", 1);
                return;
            }
        };
        bump(&counters.attempts, 1);
        metrics::counter!(SENT, "provider" => provider.name(), "result" => outcome.label())
            .increment(1);
        metrics::histogram!(LATENCY, "provider" => provider.name())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            PushOutcome::Delivered => {
                bump(&counters.delivered, 1);
                debug!(attempt, "push delivered");
                return;
            }
            PushOutcome::TokenInvalid(reason) => {
                bump(&counters.token_invalid, 1);
                info!(%reason, "push token rejected for good; reporting it for deletion");
                let report = InvalidToken {
                    user: alert.user.clone(),
                    token,
                    reason,
                };
                if shared.invalid_tokens.try_send(report).is_err() {
                    shared.dropped("invalid_token_channel_full", 1);
                }
                return;
            }
            PushOutcome::Failed(reason) => {
                bump(&counters.failed, 1);
                warn!(%reason, "push failed");
                return;
            }
            PushOutcome::Retryable(reason) => {
                bump(&counters.retryable, 1);
                if attempt == max_attempts {
                    warn!(%reason, attempt, "push failed after the last retry");
                    shared.dropped("retries_exhausted", 1);
                    return;
                }
                let backoff = backoff(config, attempt);
                debug!(%reason, attempt, ?backoff, "push will be retried");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.abort.cancelled() => {
                        shared.dropped("shutdown", 1);
                        return;
                    }
                }
            }
        }
    }
}

/// The wait after failed attempt number `attempt` (1-based): the base doubled per attempt,
/// capped, minus up to half at random so retries after an outage do not all land at once.
fn backoff(config: &DispatcherConfig, attempt: u32) -> Duration {
    let doubled = config
        .retry_backoff
        .saturating_mul(1 << (attempt - 1).min(16));
    let capped = doubled.min(config.max_retry_backoff);
    capped.mul_f64(1.0 - rand::random::<f64>() / 2.0)
}
