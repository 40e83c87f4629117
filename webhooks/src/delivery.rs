//! The after-event queue and the workers that deliver from it, with retries.
//!
//! Memory is bounded by the queue's capacity plus one event per worker: a worker keeps its event
//! through all of its retries, so while the app's server is down the workers stay busy, the
//! queue fills, and further events are dropped (and counted) instead of piling up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::WebhookConfig;
use crate::event::{AfterEventDelivery, AfterEventKind};
use crate::metrics_names::{DROPPED_TOTAL, LATENCY_SECONDS, QUEUE_DEPTH, REQUESTS_TOTAL};
use crate::transport::{Answer, PostError, Poster};

/// The most of an after-event answer read. Its content is ignored; reading it lets the
/// connection go back to the pool.
const AFTER_EVENT_READ_LIMIT: usize = 64 * 1024;

/// Why an after-event was not delivered, as the `reason` label of the dropped counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full when the event arrived.
    QueueFull,
    /// Every attempt failed, or the app's server refused it with a 4xx.
    GaveUp,
    /// The webhooks were closing or stopped.
    Shutdown,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::GaveUp => "gave_up",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Counters for [`crate::Webhooks::stats`], readable without a metrics recorder.
#[derive(Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_gave_up: AtomicU64,
    pub dropped_shutdown: AtomicU64,
    pub before_send_failures: AtomicU64,
}

/// What the handle and the workers share. The workers do not hold the queue's sender, so when
/// every handle is gone they finish what is queued and exit.
pub(crate) struct Shared {
    pub config: WebhookConfig,
    pub poster: Poster,
    pub queue: Mutex<mpsc::Receiver<AfterEventDelivery>>,
    /// Events in the queue, for the depth gauge.
    pub depth: AtomicUsize,
    pub counters: Counters,
    /// Cancelled by `close`: take no more events, deliver what is queued, then exit.
    pub draining: CancellationToken,
    /// Cancelled by the server's shutdown token or at `close`'s deadline: abandon everything.
    pub stop: CancellationToken,
    /// Set once a full queue has been logged, cleared when an event fits again, so an overload
    /// logs one warning rather than one per event.
    pub queue_full_logged: AtomicBool,
    /// Likewise for before-send requests failing.
    pub before_send_failing: AtomicBool,
}

impl Shared {
    pub fn count_drop(&self, kind: AfterEventKind, reason: DropReason) {
        let counter = match reason {
            DropReason::QueueFull => &self.counters.dropped_queue_full,
            DropReason::GaveUp => &self.counters.dropped_gave_up,
            DropReason::Shutdown => &self.counters.dropped_shutdown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DROPPED_TOTAL, "event" => kind.name(), "reason" => reason.label())
            .increment(1);
    }

    /// Called before an event is offered to the queue (and undone with [`Shared::queue_shrank`]
    /// if it does not fit), so that a worker taking it at once never counts below zero.
    pub fn queue_grew(&self) {
        let depth = self.depth.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    }

    pub fn queue_shrank(&self) {
        let depth = self.depth.fetch_sub(1, Ordering::Relaxed).wrapping_sub(1);
        metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    }

    /// Refuses further events and counts whatever is still queued as dropped at shutdown.
    pub async fn abandon_queue(&self) {
        let mut queue = self.queue.lock().await;
        queue.close();
        while let Ok(delivery) = queue.try_recv() {
            self.queue_shrank();
            self.count_drop(delivery.event.kind(), DropReason::Shutdown);
        }
    }

    /// One worker: takes events from the queue one at a time and delivers each, retries
    /// included, until the queue is drained after `close`, every handle is gone, or `stop`.
    pub async fn run_worker(&self) {
        loop {
            let next = {
                let mut queue = self.queue.lock().await;
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => None,
                    () = self.draining.cancelled() => queue.try_recv().ok(),
                    next = queue.recv() => next,
                }
            };
            let Some(delivery) = next else { break };
            self.queue_shrank();
            let kind = delivery.event.kind();
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    self.count_drop(kind, DropReason::Shutdown);
                    break;
                }
                () = self.deliver(delivery) => {}
            }
        }
        if self.stop.is_cancelled() {
            self.abandon_queue().await;
        }
    }

    /// Posts one event until it is accepted, refused for good, or out of attempts.
    async fn deliver(&self, delivery: AfterEventDelivery) {
        let kind = delivery.event.kind();
        let name = kind.name();
        let span =
            tracing::debug_span!("webhook", event = name, delivery_id = %delivery.delivery_id);
        async {
            let body = match serde_json::to_vec(&delivery) {
                Ok(body) => Bytes::from(body),
                Err(error) => {
                    // Cannot happen with these types; never worth a panic.
                    tracing::error!(%error, "after-event does not serialise");
                    self.count_drop(kind, DropReason::GaveUp);
                    return;
                }
            };
            let max_attempts = self.config.max_attempts.max(1);
            for attempt in 1..=max_attempts {
                let started = Instant::now();
                let outcome = self
                    .poster
                    .post(
                        name,
                        &delivery.delivery_id,
                        body.clone(),
                        AFTER_EVENT_READ_LIMIT,
                    )
                    .await;
                metrics::histogram!(LATENCY_SECONDS, "hook" => name)
                    .record(started.elapsed().as_secs_f64());
                let (verdict, result) = judge(&outcome);
                metrics::counter!(REQUESTS_TOTAL, "hook" => name, "result" => result).increment(1);
                match verdict {
                    Verdict::Delivered => {
                        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(attempt, "delivered");
                        return;
                    }
                    Verdict::Refused(status) => {
                        self.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        self.count_drop(kind, DropReason::GaveUp);
                        tracing::warn!(attempt, %status, "the app's server refused the event; not retried");
                        return;
                    }
                    Verdict::Retry { retry_after } => {
                        self.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        let problem = describe(&outcome);
                        if attempt == max_attempts {
                            self.count_drop(kind, DropReason::GaveUp);
                            tracing::warn!(attempt, problem, "giving up after the last attempt");
                            return;
                        }
                        let mut delay = retry_delay(
                            attempt,
                            self.config.initial_backoff,
                            self.config.max_backoff,
                            rand::random::<f64>(),
                        );
                        if let Some(asked) = retry_after {
                            delay = delay.max(asked).min(self.config.max_backoff);
                        }
                        tracing::debug!(attempt, problem, ?delay, "will retry");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}

enum Verdict {
    Delivered,
    /// A status that retrying will not change (4xx other than 429, 3xx).
    Refused(hyper::StatusCode),
    Retry {
        retry_after: Option<Duration>,
    },
}

/// What one attempt's outcome means, and its `result` label.
fn judge(outcome: &Result<Answer, PostError>) -> (Verdict, &'static str) {
    match outcome {
        Ok(answer) if answer.status.is_success() => (Verdict::Delivered, "ok"),
        Ok(answer)
            if answer.status.is_server_error()
                || answer.status == hyper::StatusCode::TOO_MANY_REQUESTS =>
        {
            (
                Verdict::Retry {
                    retry_after: answer.retry_after,
                },
                "rejected_status",
            )
        }
        Ok(answer) => (Verdict::Refused(answer.status), "rejected_status"),
        Err(PostError::Timeout) => (Verdict::Retry { retry_after: None }, "timeout"),
        Err(_) => (Verdict::Retry { retry_after: None }, "error"),
    }
}

fn describe(outcome: &Result<Answer, PostError>) -> String {
    match outcome {
        Ok(answer) => format!("status {}", answer.status),
        Err(error) => error.to_string(),
    }
}

/// The wait after failed attempt number `attempt` (1-based): `initial` doubled per attempt,
/// capped at `max`, then jittered down by up to half (`jitter` in 0..1) so that events that
/// failed together do not retry together, and kept within `initial..=max`.
pub(crate) fn retry_delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1u32 << doublings).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    let delay = base.mul_f64(0.5 + 0.5 * jitter);
    delay.clamp(initial, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_per_attempt_and_stays_within_bounds() {
        let initial = 500 * MS;
        let max = Duration::from_secs(60);
        // Without jitter (the top of the range) the waits double.
        assert_eq!(retry_delay(1, initial, max, 1.0), 500 * MS);
        assert_eq!(retry_delay(2, initial, max, 1.0), 1000 * MS);
        assert_eq!(retry_delay(3, initial, max, 1.0), 2000 * MS);
        assert_eq!(retry_delay(8, initial, max, 1.0), 60_000 * MS);
        assert_eq!(retry_delay(1000, initial, max, 1.0), max);
        // With the most jitter the wait halves, but never below the initial backoff.
        assert_eq!(retry_delay(1, initial, max, 0.0), 500 * MS);
        assert_eq!(retry_delay(3, initial, max, 0.0), 1000 * MS);
        assert_eq!(retry_delay(20, initial, max, 0.0), 30_000 * MS);
        for attempt in 1..=40 {
            for jitter in [0.0, 0.3, 0.99, 1.0] {
                let delay = retry_delay(attempt, initial, max, jitter);
                assert!(
                    delay >= initial && delay <= max,
                    "{attempt} {jitter} {delay:?}"
                );
            }
        }
    }
}
