//! Where a call goes and what happens when it fails, as plain functions and a small state
//! machine with the time passed in, so that every rule is tested without sockets or clocks.
//!
//! - A call's node: rendezvous hashing of the caller's user id over the nodes, so one user's
//!   calls (and so one connection's sends, in order) go to one node while it is up, and a node
//!   that leaves moves only its own users.
//! - A failed attempt is either *not sent* (no connection, or a node shutting down that did
//!   not take the call: nothing happened, try the next node at once) or of *unknown outcome* (the request may have been written: it may have taken
//!   effect). An unknown outcome is retried on the next node only for calls that are safe to
//!   repeat ([`repeatable`]); the retry repeats the very same request, with its client msg ids
//!   and request ids. Other calls, and any call whose budget is spent, answer `UNAVAILABLE`
//!   (retryable): the client resends with the same ids, which is what the server relies on.
//! - A node that failed is skipped for a while ([`Health`]), so calls do not wait out a
//!   deadline on a node known to be down (paused, or dead).
//! - A node whose connection could not be opened is not dialled again before its backoff
//!   passes ([`Redial`]): calls meanwhile count as *not sent* there and move on at once,
//!   instead of each paying a connect timeout.

use std::time::{Duration, Instant};

use im_protocol::Body;

/// How long a node that failed is skipped, at first; doubled at each failure in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The longest a failing node is skipped between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long after a failed dial a node is first left alone; doubled at each failure in a row.
pub const FIRST_REDIAL: Duration = Duration::from_millis(100);

/// The longest a node is left alone between two dials: a restarted node is found again
/// within this.
pub const MAX_REDIAL: Duration = Duration::from_secs(2);

/// FNV-1a of the key and the node: stable across processes and releases.
fn score(key: &str, node: &str) -> u64 {
    key.bytes()
        .chain([0xff])
        .chain(node.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The nodes in the order a call for `key` tries them (rendezvous hashing).
pub fn node_order(key: &str, nodes: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((score(key, &nodes[i]), i)));
    order
}

/// Whether a request may be sent again after an attempt whose outcome is unknown: a repeat
/// must have the effect of one call.
///
/// - Sends: deduplicated by `(sender, client_msg_id)`; a repeat answers the original ack.
/// - Reads (sync, history, conversation list, group members) and the session open change
///   nothing.
/// - Delivery acks and read markers only move forward; a repeated marker is a no-op.
/// - Recall and delete-for-me: a second recall succeeds without a second event; a delete
///   hides only what is not hidden yet.
/// - Adding, removing members and joining are set operations: a repeat changes nothing.
/// - Creating a group with a `client_request_id` answers the group that id created; without
///   one a repeat would create a second group, so it is not repeated.
/// - Leaving is not repeated: a repeat after a leave that took effect is refused (`FORBIDDEN`,
///   no longer a member), which would report a success as a failure.
/// - Typing is best effort and not worth a retry.
pub fn repeatable(body: &Body) -> bool {
    match body {
        Body::GroupCreateReq(request) => !request.client_request_id.is_empty(),
        Body::GroupLeaveReq(_) | Body::Typing(_) => false,
        _ => true,
    }
}

/// Why an attempt failed. A *refusal* is not among them: a node that answers with a protocol
/// error (`Outcome::Refused`, or a refused send among a batch's replies) has answered, and
/// its answer goes to the client as it is, never retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The call did not run there: no connection to the node, or the node answered that it
    /// is shutting down and did not take it.
    NotSent,
    /// The request may have been written: the deadline passed or the connection was lost.
    OutcomeUnknown,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the same request to this node.
    Try(usize),
    /// Answer the client `UNAVAILABLE`; `outcome_unknown` says whether the call may have
    /// taken effect.
    GiveUp {
        /// Some attempt's outcome is unknown.
        outcome_unknown: bool,
    },
}

/// The attempts of one call: the nodes in order, and the time left.
#[derive(Debug)]
pub struct Attempts {
    order: Vec<usize>,
    position: usize,
    tries: usize,
    max_tries: usize,
    give_up_at: Instant,
    repeatable: bool,
    unknown: bool,
}

impl Attempts {
    /// A call that tries `order` (healthy nodes first) until `budget` from `now` is spent.
    pub fn new(order: Vec<usize>, now: Instant, budget: Duration, repeatable: bool) -> Attempts {
        let max_tries = order.len() * 2;
        Attempts {
            order,
            position: 0,
            tries: 0,
            max_tries,
            give_up_at: now + budget,
            repeatable,
            unknown: false,
        }
    }

    /// The first node to try, if there is any node.
    pub fn first(&mut self) -> Option<usize> {
        let node = *self.order.first()?;
        self.tries = 1;
        Some(node)
    }

    /// After a failed attempt at `now`.
    pub fn after(&mut self, failure: Failure, now: Instant) -> Next {
        if failure == Failure::OutcomeUnknown {
            self.unknown = true;
            if !self.repeatable {
                return Next::GiveUp {
                    outcome_unknown: true,
                };
            }
        }
        if now >= self.give_up_at || self.tries >= self.max_tries || self.order.is_empty() {
            return Next::GiveUp {
                outcome_unknown: self.unknown,
            };
        }
        self.position = (self.position + 1) % self.order.len();
        self.tries += 1;
        Next::Try(self.order[self.position])
    }
}

/// Which nodes failed lately, and until when they are skipped.
#[derive(Debug)]
pub struct Health {
    skip_until: Vec<Option<Instant>>,
    backoff: Vec<Duration>,
}

impl Health {
    /// `nodes` nodes, all healthy.
    pub fn new(nodes: usize) -> Health {
        Health {
            skip_until: vec![None; nodes],
            backoff: vec![FIRST_BACKOFF; nodes],
        }
    }

    /// A call to `node` failed at `now`: skip it for a while (longer at each failure in a row).
    pub fn failed(&mut self, node: usize, now: Instant) {
        let backoff = self.backoff[node];
        self.skip_until[node] = Some(now + backoff);
        self.backoff[node] = (backoff * 2).min(MAX_BACKOFF);
    }

    /// A call to `node` succeeded.
    pub fn succeeded(&mut self, node: usize) {
        self.skip_until[node] = None;
        self.backoff[node] = FIRST_BACKOFF;
    }

    /// `order` with the nodes being skipped at `now` moved to the end (still tried when all
    /// else fails).
    pub fn arrange(&self, order: Vec<usize>, now: Instant) -> Vec<usize> {
        let skipped = |node: &usize| self.skip_until[*node].is_some_and(|until| now < until);
        let (mut healthy, skipped): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|node| !skipped(node));
        healthy.extend(skipped);
        healthy
    }
}

/// When a node's connection may be dialled again (reconnect with backoff).
#[derive(Debug)]
pub struct Redial {
    not_before: Option<Instant>,
    backoff: Duration,
}

impl Default for Redial {
    fn default() -> Redial {
        Redial {
            not_before: None,
            backoff: FIRST_REDIAL,
        }
    }
}

impl Redial {
    /// Whether a dial may start at `now`.
    pub fn may_dial(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    /// A dial failed at `now` (refused, unreachable, timed out): the next waits a while,
    /// longer at each failure in a row.
    pub fn failed(&mut self, now: Instant) {
        self.not_before = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_REDIAL);
    }

    /// A dial succeeded: the next one after this connection breaks may start at once.
    pub fn connected(&mut self) {
        *self = Redial::default();
    }
}

#[cfg(test)]
mod tests {
    use im_protocol::pb;

    use super::*;

    fn nodes() -> Vec<String> {
        vec![
            "10.0.0.1:7000".into(),
            "10.0.0.2:7000".into(),
            "10.0.0.3:7000".into(),
        ]
    }

    #[test]
    fn one_user_always_goes_to_the_same_node_and_users_spread_over_all() {
        let nodes = nodes();
        let mut first_choice = [0usize; 3];
        for user in 0..300 {
            let key = format!("user{user}");
            let order = node_order(&key, &nodes);
            assert_eq!(order, node_order(&key, &nodes), "stable for {key}");
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2], "every node once");
            first_choice[order[0]] += 1;
        }
        assert!(
            first_choice.iter().all(|&n| n > 50),
            "spread: {first_choice:?}"
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_users() {
        let all = nodes();
        let fewer = vec![all[0].clone(), all[2].clone()];
        for user in 0..200 {
            let key = format!("user{user}");
            let before = &all[node_order(&key, &all)[0]];
            let after = &fewer[node_order(&key, &fewer)[0]];
            if before != &all[1] {
                assert_eq!(before, after, "{key} stays where it was");
            }
        }
    }

    #[test]
    fn a_call_not_sent_moves_to_the_next_node_at_once() {
        let now = Instant::now();
        let mut attempts = Attempts::new(vec![2, 0, 1], now, Duration::from_secs(5), false);
        assert_eq!(attempts.first(), Some(2));
        assert_eq!(attempts.after(Failure::NotSent, now), Next::Try(0));
        assert_eq!(attempts.after(Failure::NotSent, now), Next::Try(1));
    }

    #[test]
    fn an_unknown_outcome_is_retried_elsewhere_only_when_repeating_is_safe() {
        let now = Instant::now();
        let mut safe = Attempts::new(vec![0, 1], now, Duration::from_secs(5), true);
        safe.first();
        assert_eq!(safe.after(Failure::OutcomeUnknown, now), Next::Try(1));
        let mut unsafe_call = Attempts::new(vec![0, 1], now, Duration::from_secs(5), false);
        unsafe_call.first();
        assert_eq!(
            unsafe_call.after(Failure::OutcomeUnknown, now),
            Next::GiveUp {
                outcome_unknown: true
            }
        );
    }

    #[test]
    fn a_call_gives_up_when_its_budget_or_its_tries_are_spent() {
        let now = Instant::now();
        let mut late = Attempts::new(vec![0, 1], now, Duration::from_secs(1), true);
        late.first();
        assert_eq!(
            late.after(Failure::OutcomeUnknown, now + Duration::from_secs(2)),
            Next::GiveUp {
                outcome_unknown: true
            }
        );
        let mut busy = Attempts::new(vec![0, 1], now, Duration::from_secs(60), true);
        busy.first();
        assert_eq!(busy.after(Failure::NotSent, now), Next::Try(1));
        assert_eq!(busy.after(Failure::NotSent, now), Next::Try(0));
        assert_eq!(busy.after(Failure::NotSent, now), Next::Try(1));
        assert_eq!(
            busy.after(Failure::NotSent, now),
            Next::GiveUp {
                outcome_unknown: false
            }
        );
    }

    #[test]
    fn a_failed_node_is_tried_last_until_its_backoff_passes() {
        let now = Instant::now();
        let mut health = Health::new(3);
        health.failed(0, now);
        assert_eq!(health.arrange(vec![0, 1, 2], now), vec![1, 2, 0]);
        assert_eq!(
            health.arrange(vec![0, 1, 2], now + FIRST_BACKOFF),
            vec![0, 1, 2]
        );
        health.failed(0, now);
        assert_eq!(
            health.arrange(vec![0, 1, 2], now + FIRST_BACKOFF),
            vec![1, 2, 0],
            "the second failure in a row is skipped for longer"
        );
        health.succeeded(0);
        assert_eq!(health.arrange(vec![0, 1, 2], now), vec![0, 1, 2]);
    }

    #[test]
    fn a_node_whose_dial_failed_is_dialled_again_only_after_a_growing_backoff() {
        let now = Instant::now();
        let mut redial = Redial::default();
        assert!(redial.may_dial(now), "a new node is dialled at once");
        redial.failed(now);
        assert!(!redial.may_dial(now + FIRST_REDIAL / 2));
        assert!(redial.may_dial(now + FIRST_REDIAL));
        let later = now + FIRST_REDIAL;
        redial.failed(later);
        assert!(
            !redial.may_dial(later + FIRST_REDIAL),
            "the second failure in a row waits twice as long"
        );
        assert!(redial.may_dial(later + FIRST_REDIAL * 2));
        let mut at = later;
        for _ in 0..20 {
            redial.failed(at);
            at += MAX_REDIAL;
        }
        assert!(redial.may_dial(at), "the wait never exceeds {MAX_REDIAL:?}");
        redial.failed(at);
        redial.connected();
        assert!(redial.may_dial(at), "a connection resets the backoff");
    }

    #[test]
    fn which_calls_are_repeated() {
        let send_like = Body::SyncReq(pb::SyncReq::default());
        assert!(repeatable(&send_like));
        assert!(repeatable(&Body::RecallReq(pb::RecallReq::default())));
        assert!(!repeatable(&Body::GroupLeaveReq(
            pb::GroupLeaveReq::default()
        )));
        assert!(!repeatable(&Body::GroupCreateReq(
            pb::GroupCreateReq::default()
        )));
        assert!(repeatable(&Body::GroupCreateReq(pb::GroupCreateReq {
            client_request_id: "r1".into(),
            ..Default::default()
        })));
    }
}
