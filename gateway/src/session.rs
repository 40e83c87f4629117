//! The per-connection protocol state, sans IO: it is told about frames and the time, and says
//! what a frame is allowed to be and when the connection must close. The connection task only
//! moves bytes and sleeps until [`Session::deadline`].

use std::time::{Duration, Instant};

use im_protocol::pb::{ErrorCode, Op};
use im_protocol::{Direction, Flags, Frame, OpInfo};

/// Connection-level timing and limits.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// How long a new connection may take to authenticate.
    pub handshake_timeout: Duration,
    /// Announced heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Close a connection that sent nothing for this long.
    pub idle_timeout: Duration,
    /// Sustained frames per second a connection may send (0 = unlimited).
    pub rate_per_sec: u32,
    /// Burst above the sustained rate.
    pub rate_burst: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            rate_per_sec: 200,
            rate_burst: 400,
        }
    }
}

/// Where the connection is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; only a handshake is allowed, until the deadline.
    AwaitingHandshake,
    /// Authenticated as this user and device.
    Active {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// Closing: nothing more is processed.
    Closed,
}

/// What the connection task should do with an incoming frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verify the handshake.
    Handshake,
    /// Answer with PONG.
    Ping,
    /// The client is leaving.
    Goodbye,
    /// Hand the request to the logic tier.
    Request(Op),
    /// Answer with an error; close the connection after it when `close` is set.
    Reject {
        /// The error code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
        /// Retry hint (rate limiting).
        retry_after_ms: u32,
        /// Close the connection after sending the error.
        close: bool,
    },
}

fn reject(code: ErrorCode, message: impl Into<String>, close: bool) -> Verdict {
    Verdict::Reject {
        code,
        message: message.into(),
        retry_after_ms: 0,
        close,
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Clone, Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(rate).max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The state of one connection.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    config: SessionConfig,
    connected_at: Instant,
    last_received: Instant,
    bucket: TokenBucket,
}

impl Session {
    /// A session for a connection accepted at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        let bucket = TokenBucket::new(config.rate_per_sec, config.rate_burst, now);
        Session {
            phase: Phase::AwaitingHandshake,
            config,
            connected_at: now,
            last_received: now,
            bucket,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The handshake verified: the connection now belongs to `user` on `device`.
    pub fn authenticated(&mut self, user: String, device: String) {
        self.phase = Phase::Active { user, device };
    }

    /// Nothing more is processed.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }

    /// Classifies a frame received at `now`.
    pub fn on_frame(&mut self, frame: &Frame, now: Instant) -> Verdict {
        self.last_received = now;
        if frame.flags.contains(Flags::PUSH) || frame.request_id == 0 {
            return reject(
                ErrorCode::BadFrame,
                "client frames carry a non-zero request id and no PUSH flag",
                true,
            );
        }
        let Some(op) = frame.known_op() else {
            return reject(
                ErrorCode::UnknownOp,
                format!("unknown op {}", frame.op),
                false,
            );
        };
        if OpInfo::of(frame.op).map(|info| info.direction) == Some(Direction::ServerToClient) {
            return reject(
                ErrorCode::WrongDirection,
                format!("{} is sent by servers only", op.as_str_name()),
                true,
            );
        }
        match (&self.phase, op) {
            (Phase::Closed, _) => reject(ErrorCode::ShuttingDown, "connection is closing", true),
            (Phase::AwaitingHandshake, Op::HandshakeReq) => Verdict::Handshake,
            (Phase::AwaitingHandshake, _) => reject(
                ErrorCode::NotAuthenticated,
                "only HANDSHAKE_REQ is accepted before authentication",
                true,
            ),
            (Phase::Active { .. }, Op::HandshakeReq) => reject(
                ErrorCode::AlreadyAuthenticated,
                "the connection is already authenticated",
                false,
            ),
            // Heartbeats and goodbyes are never rate limited: limiting them would kill the link.
            (Phase::Active { .. }, Op::Ping) => Verdict::Ping,
            (Phase::Active { .. }, Op::Goodbye) => Verdict::Goodbye,
            (Phase::Active { .. }, op) => match self.bucket.take(now) {
                Ok(()) => Verdict::Request(op),
                Err(wait) => Verdict::Reject {
                    code: ErrorCode::RateLimited,
                    message: format!("more than {} frames per second", self.config.rate_per_sec),
                    retry_after_ms: wait.as_millis().max(1) as u32,
                    close: false,
                },
            },
        }
    }

    /// When the connection must be checked next: the handshake deadline or the idle deadline.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::AwaitingHandshake => self.connected_at + self.config.handshake_timeout,
            _ => self.last_received + self.config.idle_timeout,
        }
    }

    /// Called when `deadline` passed: the error to close with, if the deadline really expired.
    pub fn on_timer(&mut self, now: Instant) -> Option<(ErrorCode, &'static str)> {
        if now < self.deadline() {
            return None;
        }
        let reason = match self.phase {
            Phase::AwaitingHandshake => (
                ErrorCode::HandshakeTimeout,
                "no handshake within the deadline",
            ),
            Phase::Active { .. } => (ErrorCode::ShuttingDown, "idle timeout: nothing received"),
            Phase::Closed => return None,
        };
        self.phase = Phase::Closed;
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::pb;

    fn frame(body: impl Into<im_protocol::Body>) -> Frame {
        Frame::new(1, body)
    }

    fn active(now: Instant) -> Session {
        let mut s = Session::new(SessionConfig::default(), now);
        s.authenticated("alice".into(), "phone".into());
        s
    }

    #[test]
    fn only_the_handshake_is_accepted_before_authentication() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        assert_eq!(
            s.on_frame(&frame(pb::HandshakeReq::default()), t0),
            Verdict::Handshake
        );
        match s.on_frame(&frame(pb::SyncReq::default()), t0) {
            Verdict::Reject { code, close, .. } => {
                assert_eq!(code, ErrorCode::NotAuthenticated);
                assert!(close);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_new_connection_times_out_after_the_handshake_deadline() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(4)), None);
        assert_eq!(
            s.on_timer(t0 + Duration::from_secs(5)).map(|r| r.0),
            Some(ErrorCode::HandshakeTimeout)
        );
    }

    #[test]
    fn any_frame_resets_the_idle_deadline() {
        let t0 = Instant::now();
        let mut s = active(t0);
        let t1 = t0 + Duration::from_secs(80);
        assert_eq!(s.on_frame(&frame(pb::Ping::default()), t1), Verdict::Ping);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(95)), None);
        assert!(s.on_timer(t1 + Duration::from_secs(90)).is_some());
    }

    #[test]
    fn requests_above_the_rate_are_refused_with_a_retry_hint_but_pings_are_not() {
        let t0 = Instant::now();
        let mut s = active(t0);
        for _ in 0..400 {
            assert_eq!(
                s.on_frame(&frame(pb::SyncReq::default()), t0),
                Verdict::Request(Op::SyncReq)
            );
        }
        match s.on_frame(&frame(pb::SyncReq::default()), t0) {
            Verdict::Reject {
                code,
                retry_after_ms,
                close,
                ..
            } => {
                assert_eq!(code, ErrorCode::RateLimited);
                assert!(retry_after_ms >= 1);
                assert!(!close);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.on_frame(&frame(pb::Ping::default()), t0), Verdict::Ping);
        // Tokens come back with time.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(
            s.on_frame(&frame(pb::SyncReq::default()), later),
            Verdict::Request(Op::SyncReq)
        );
    }

    #[test]
    fn server_ops_push_flags_and_zero_request_ids_from_clients_close_the_connection() {
        let t0 = Instant::now();
        let mut s = active(t0);
        let cases = [
            frame(pb::Push::default()),
            Frame::push(pb::SyncReq::default()),
            Frame::new(0, pb::SyncReq::default()),
        ];
        for f in cases {
            match s.on_frame(&f, t0) {
                Verdict::Reject { close, .. } => assert!(close),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unknown_ops_are_refused_without_closing() {
        let t0 = Instant::now();
        let mut s = active(t0);
        let f = Frame {
            op: 999,
            flags: Flags::empty(),
            request_id: 3,
            body: Default::default(),
        };
        assert!(matches!(
            s.on_frame(&f, t0),
            Verdict::Reject {
                code: ErrorCode::UnknownOp,
                close: false,
                ..
            }
        ));
    }
}
