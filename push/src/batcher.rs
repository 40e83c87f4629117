//! Coalescing and rate limiting, per user, as plain state with time passed in.
//!
//! A user's first notification opens a batch that closes one window later; notifications that
//! arrive meanwhile join it. When the batch closes it becomes one alert if the user's token
//! bucket allows; otherwise it stays open until the bucket refills, so what arrives in between
//! joins the same alert instead of being lost or sent as a burst.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::provider::Alert;
use crate::render::render_alert;
use crate::types::{Notification, PreviewPolicy, PushToken};

/// The batcher's limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    /// How long a batch stays open for more notifications.
    pub window: Duration,
    /// Alerts per minute a user's bucket refills with; 0 turns the rate limit off.
    pub alerts_per_minute: u32,
    /// Alerts a user may get back to back before the refill rate applies.
    pub burst: u32,
    /// Users tracked at once (open batches and partly drained buckets).
    pub max_users: usize,
}

/// An alert ready to go to each of the user's tokens.
#[derive(Debug)]
pub(crate) struct ReadyAlert {
    /// What the phones show.
    pub alert: Alert,
    /// The tokens of the newest notification: the server's latest view of the user's devices.
    pub tokens: Vec<PushToken>,
}

/// What happened to a notification handed to [`Batcher::add`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// It opened a new batch.
    Opened,
    /// It joined a batch already open for the user.
    Coalesced,
    /// The batcher tracks `max_users` users already; the notification was dropped.
    TooManyUsers,
}

/// What [`Batcher::poll`] produced.
#[derive(Debug, Default)]
pub(crate) struct Polled {
    /// Alerts whose batch closed and whose user had an alert left in the bucket.
    pub ready: Vec<ReadyAlert>,
    /// Batches that closed but were held back by the rate limit.
    pub rate_limited: u64,
}

/// A token bucket: `burst` alerts at once, refilled at a steady rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The notifications coalesced so far for one user.
#[derive(Debug)]
struct Batch {
    closes_at: Instant,
    messages: u32,
    latest: Notification,
    tokens: Vec<PushToken>,
    policy: PreviewPolicy,
}

#[derive(Debug)]
struct UserState {
    bucket: Bucket,
    batch: Option<Batch>,
}

/// Per-user batches and buckets, and a timer queue of when each batch closes.
#[derive(Debug)]
pub(crate) struct Batcher {
    limits: BatchLimits,
    users: HashMap<String, UserState>,
    /// (closes_at, user) for every open batch. An entry whose time no longer matches the
    /// user's batch is stale and skipped.
    closing: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Batcher {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits: BatchLimits {
                burst: limits.burst.max(1),
                ..limits
            },
            users: HashMap::new(),
            closing: BinaryHeap::new(),
        }
    }

    /// Alerts refilled per second; `None` when unlimited.
    fn refill_per_second(&self) -> Option<f64> {
        (self.limits.alerts_per_minute > 0).then(|| f64::from(self.limits.alerts_per_minute) / 60.0)
    }

    /// Adds a notification for its user at `now`.
    pub(crate) fn add(
        &mut self,
        now: Instant,
        notification: Notification,
        tokens: Vec<PushToken>,
        policy: PreviewPolicy,
    ) -> Added {
        if !self.users.contains_key(&notification.user) && self.users.len() >= self.limits.max_users
        {
            self.prune(now);
            if self.users.len() >= self.limits.max_users {
                return Added::TooManyUsers;
            }
        }
        let burst = f64::from(self.limits.burst);
        let user = self
            .users
            .entry(notification.user.clone())
            .or_insert_with(|| UserState {
                bucket: Bucket {
                    tokens: burst,
                    updated: now,
                },
                batch: None,
            });
        match &mut user.batch {
            Some(batch) => {
                batch.messages = batch.messages.saturating_add(1);
                batch.latest = notification;
                batch.tokens = tokens;
                batch.policy = policy;
                Added::Coalesced
            }
            None => {
                let closes_at = now + self.limits.window;
                self.closing
                    .push(Reverse((closes_at, notification.user.clone())));
                user.batch = Some(Batch {
                    closes_at,
                    messages: 1,
                    latest: notification,
                    tokens,
                    policy,
                });
                Added::Opened
            }
        }
    }

    /// When the next batch closes, for the caller's timer.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.closing.peek().map(|Reverse((at, _))| *at)
    }

    /// Closes every batch due by `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Polled {
        let mut polled = Polled::default();
        let refill = self.refill_per_second();
        let burst = f64::from(self.limits.burst);
        while let Some(Reverse((at, _))) = self.closing.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, user_id))) = self.closing.pop() else {
                break;
            };
            let Some(user) = self.users.get_mut(&user_id) else {
                continue;
            };
            if user
                .batch
                .as_ref()
                .is_none_or(|batch| batch.closes_at != at)
            {
                continue; // stale entry
            }
            match take_alert(&mut user.bucket, now, refill, burst) {
                Ok(()) => {
                    if let Some(batch) = user.batch.take() {
                        polled.ready.push(ready(batch));
                    }
                }
                Err(next_alert_at) => {
                    // Held back: stays open, and closes when the bucket has an alert again.
                    polled.rate_limited += 1;
                    if let Some(batch) = user.batch.as_mut() {
                        batch.closes_at = next_alert_at;
                    }
                    self.closing.push(Reverse((next_alert_at, user_id)));
                }
            }
        }
        polled
    }

    /// Closes every open batch now, windows and rate limits aside: the dispatcher is shutting
    /// down and this is the last chance to tell the users.
    pub(crate) fn flush(&mut self) -> Vec<ReadyAlert> {
        self.closing.clear();
        self.users
            .drain()
            .filter_map(|(_, user)| user.batch)
            .map(ready)
            .collect()
    }

    /// The number of notifications in open batches (for counting what a hard stop loses).
    pub(crate) fn pending_messages(&self) -> u64 {
        self.users
            .values()
            .filter_map(|user| user.batch.as_ref())
            .map(|batch| u64::from(batch.messages))
            .sum()
    }

    /// Forgets users with no open batch and a full bucket: they are indistinguishable from
    /// users never seen, and keeping them would grow memory with every user ever notified.
    pub(crate) fn prune(&mut self, now: Instant) {
        let refill = self.refill_per_second();
        let burst = f64::from(self.limits.burst);
        self.users.retain(|_, user| {
            refill_bucket(&mut user.bucket, now, refill, burst);
            user.batch.is_some() || user.bucket.tokens < burst
        });
    }

    /// Users tracked (for tests).
    #[cfg(test)]
    fn tracked_users(&self) -> usize {
        self.users.len()
    }
}

fn ready(batch: Batch) -> ReadyAlert {
    ReadyAlert {
        alert: render_alert(&batch.latest, batch.messages, batch.policy),
        tokens: batch.tokens,
    }
}

fn refill_bucket(bucket: &mut Bucket, now: Instant, refill: Option<f64>, burst: f64) {
    let Some(per_second) = refill else {
        bucket.tokens = burst;
        return;
    };
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
    bucket.updated = now;
}

/// Takes one alert from the bucket, or says when one will be there.
fn take_alert(
    bucket: &mut Bucket,
    now: Instant,
    refill: Option<f64>,
    burst: f64,
) -> Result<(), Instant> {
    refill_bucket(bucket, now, refill, burst);
    // The refill is computed in floating point: a bucket polled at the instant it was
    // predicted to hold one alert may hold 0.999999.
    if bucket.tokens >= 1.0 - 1e-6 {
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        return Ok(());
    }
    let per_second = refill.unwrap_or(f64::INFINITY);
    let wait = Duration::from_secs_f64(((1.0 - bucket.tokens) / per_second).max(0.001));
    Err(now + wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Platform;

    const WINDOW: Duration = Duration::from_secs(1);

    fn limits() -> BatchLimits {
        BatchLimits {
            window: WINDOW,
            alerts_per_minute: 10,
            burst: 3,
            max_users: 100,
        }
    }

    fn message(user: &str, seq: u64) -> Notification {
        Notification {
            user: user.into(),
            conversation_id: "c1".into(),
            sender_user: "alice".into(),
            sender_name: None,
            content_type: 0,
            content: format!("message {seq}").into_bytes(),
            server_msg_id: 100 + seq,
            conversation_seq: seq,
            unread: None,
        }
    }

    fn phone() -> Vec<PushToken> {
        vec![PushToken {
            platform: Platform::Apns,
            token: "ab".into(),
            device: "phone".into(),
        }]
    }

    #[test]
    fn notifications_within_the_window_become_one_alert_for_the_latest_message() {
        let start = Instant::now();
        let mut batcher = Batcher::new(limits());
        assert_eq!(
            batcher.add(start, message("bob", 1), phone(), PreviewPolicy::Full),
            Added::Opened
        );
        for seq in 2..=5 {
            let at = start + Duration::from_millis(100 * seq);
            assert_eq!(
                batcher.add(at, message("bob", seq), phone(), PreviewPolicy::Full),
                Added::Coalesced
            );
        }
        assert!(
            batcher
                .poll(start + Duration::from_millis(999))
                .ready
                .is_empty()
        );
        let polled = batcher.poll(start + WINDOW);
        assert_eq!(polled.ready.len(), 1);
        let alert = &polled.ready[0].alert;
        assert_eq!(
            (alert.messages, alert.badge, alert.server_msg_id),
            (5, 5, 105)
        );
        assert_eq!(alert.body, "message 5");
        assert_eq!(batcher.next_deadline(), None);
    }

    #[test]
    fn users_are_batched_separately() {
        let start = Instant::now();
        let mut batcher = Batcher::new(limits());
        batcher.add(start, message("bob", 1), phone(), PreviewPolicy::None);
        batcher.add(start, message("carol", 1), phone(), PreviewPolicy::None);
        let users: Vec<_> = batcher
            .poll(start + WINDOW)
            .ready
            .into_iter()
            .map(|r| r.alert.user)
            .collect();
        assert_eq!(users.len(), 2);
        assert!(users.contains(&"bob".to_owned()) && users.contains(&"carol".to_owned()));
    }

    #[test]
    fn past_the_burst_alerts_wait_for_the_bucket_and_absorb_what_arrives_meanwhile() {
        let start = Instant::now();
        let mut batcher = Batcher::new(limits());
        let mut now = start;
        // Three alerts in a row use up the burst of 3.
        for seq in 1..=3 {
            batcher.add(now, message("bob", seq), phone(), PreviewPolicy::None);
            now += WINDOW;
            assert_eq!(
                batcher.poll(now).ready.len(),
                1,
                "alert {seq} is within the burst"
            );
        }
        // The fourth batch closes with an empty bucket: held back, not sent, not lost.
        batcher.add(now, message("bob", 4), phone(), PreviewPolicy::None);
        now += WINDOW;
        let polled = batcher.poll(now);
        assert!(polled.ready.is_empty());
        assert_eq!(polled.rate_limited, 1);
        // What arrives while it waits joins it.
        assert_eq!(
            batcher.add(now, message("bob", 5), phone(), PreviewPolicy::None),
            Added::Coalesced
        );
        // 10 per minute is one every 6 s. The bucket has refilled for the 3 s since the first
        // alert (half an alert), so the next one is due 3 s from now.
        let next = batcher
            .next_deadline()
            .expect("the held batch is scheduled");
        let wait = (next - now).as_secs_f64();
        assert!((wait - 3.0).abs() < 0.01, "waits {wait} s");
        assert!(
            batcher
                .poll(next - Duration::from_millis(20))
                .ready
                .is_empty()
        );
        let polled = batcher.poll(next);
        assert_eq!(polled.ready.len(), 1);
        assert_eq!(polled.ready[0].alert.messages, 2);
        assert_eq!(polled.ready[0].alert.body, "You have 2 new messages");
    }

    #[test]
    fn idle_users_are_forgotten_and_the_user_limit_holds() {
        let start = Instant::now();
        let mut batcher = Batcher::new(BatchLimits {
            max_users: 2,
            ..limits()
        });
        batcher.add(start, message("a", 1), phone(), PreviewPolicy::None);
        batcher.add(start, message("b", 1), phone(), PreviewPolicy::None);
        assert_eq!(
            batcher.add(start, message("c", 1), phone(), PreviewPolicy::None),
            Added::TooManyUsers
        );
        assert_eq!(batcher.poll(start + WINDOW).ready.len(), 2);
        // One alert each took a token; after 6 s the buckets are full again.
        batcher.prune(start + WINDOW + Duration::from_secs(6));
        assert_eq!(batcher.tracked_users(), 0);
        assert_eq!(
            batcher.add(
                start + Duration::from_secs(8),
                message("c", 1),
                phone(),
                PreviewPolicy::None
            ),
            Added::Opened
        );
    }

    #[test]
    fn flush_sends_every_open_batch_at_once() {
        let start = Instant::now();
        let mut batcher = Batcher::new(limits());
        batcher.add(start, message("bob", 1), phone(), PreviewPolicy::None);
        batcher.add(start, message("bob", 2), phone(), PreviewPolicy::None);
        batcher.add(start, message("carol", 1), phone(), PreviewPolicy::None);
        assert_eq!(batcher.pending_messages(), 3);
        assert_eq!(batcher.flush().len(), 2);
        assert_eq!(batcher.pending_messages(), 0);
        assert_eq!(batcher.next_deadline(), None);
    }
}
