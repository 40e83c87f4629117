//! A byte budget per sender on what their sends write to storage, so one sender cannot fill the
//! disk: a message to a group of a thousand writes a thousand inbox entries, and the frame rate
//! limit alone let one user write hundreds of megabytes a minute.

use std::collections::HashMap;
use std::sync::Mutex;

/// Storage a send is charged per recipient (its inbox entry, keys and index overhead), on top
/// of the content, which is stored once.
pub const BYTES_PER_RECIPIENT: u64 = 128;

/// Senders tracked before idle (full) buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// Token buckets of storage bytes, one per sender. Time is passed in.
#[derive(Debug)]
pub struct FanoutBudget {
    bytes_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl FanoutBudget {
    /// `bytes_per_sec` sustained, `burst` at most at once; a rate of 0 disables the budget.
    pub fn new(bytes_per_sec: u64, burst: u64) -> FanoutBudget {
        FanoutBudget {
            bytes_per_sec: bytes_per_sec as f64,
            burst: burst.max(bytes_per_sec) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// What a send of `content_bytes` to `recipients` users costs.
    pub fn cost(content_bytes: usize, recipients: usize) -> u64 {
        content_bytes as u64 + BYTES_PER_RECIPIENT * recipients as u64
    }

    /// Charges `cost` to `sender` at `now_ms`, or says how many ms until it could be paid. A
    /// cost above the burst is allowed from a full bucket (it leaves it in debt), so no single
    /// message is refused forever.
    pub fn charge(&self, sender: &str, cost: u64, now_ms: u64) -> Result<(), u32> {
        if self.bytes_per_sec <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.bytes_per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now_ms.saturating_sub(b.last_ms) as f64 / 1000.0 * rate < burst
            });
        }
        let bucket = buckets.entry(sender.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.last_ms) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * self.bytes_per_sec).min(self.burst);
        bucket.last_ms = now_ms.max(bucket.last_ms);
        let cost = cost as f64;
        if bucket.tokens >= cost.min(self.burst) {
            bucket.tokens -= cost;
            Ok(())
        } else {
            let missing = cost.min(self.burst) - bucket.tokens;
            let wait_ms = (missing / self.bytes_per_sec * 1000.0).ceil();
            Err(wait_ms.clamp(1.0, f64::from(u32::MAX)) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_gets_the_burst_then_the_rate_and_others_are_unaffected() {
        let budget = FanoutBudget::new(1_000, 4_000);
        for _ in 0..4 {
            assert_eq!(budget.charge("mallory", 1_000, 0), Ok(()));
        }
        let wait = budget.charge("mallory", 1_000, 0).unwrap_err();
        assert_eq!(wait, 1_000);
        assert_eq!(budget.charge("alice", 1_000, 0), Ok(()), "another sender");
        assert_eq!(budget.charge("mallory", 1_000, 1_000), Ok(()), "refilled");
    }

    #[test]
    fn a_message_above_the_burst_passes_from_a_full_bucket() {
        let budget = FanoutBudget::new(1_000, 2_000);
        assert_eq!(budget.charge("big", 10_000, 0), Ok(()));
        assert!(
            budget.charge("big", 1, 0).is_err(),
            "and leaves the bucket in debt"
        );
    }

    #[test]
    fn a_rate_of_zero_disables_the_budget() {
        let budget = FanoutBudget::new(0, 0);
        for _ in 0..100 {
            assert_eq!(budget.charge("x", u64::MAX / 2, 0), Ok(()));
        }
    }
}
