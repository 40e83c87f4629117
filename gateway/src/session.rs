//! The per-connection protocol state, sans IO: it is told about frames and the time, and says
//! what a frame is allowed to be and when the connection must close. The connection task only
//! moves bytes and sleeps until [`Session::deadline`].

use std::time::{Duration, Instant};

use im_auth::TokenKey;
use im_protocol::pb::{self, ErrorCode, Op};
use im_protocol::{Body, Direction, Flags, Frame, OpInfo};
use logic_api::{InboxPosition, SessionInfo};

/// Default heartbeat interval announced to clients, in seconds; the idle timeout is three.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
/// Default time a new connection has to authenticate, in seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 5;
/// Default sustained frames per second per connection; the burst is twice this.
pub const DEFAULT_RATE_PER_SEC: u32 = 200;

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
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            heartbeat_interval: Duration::from_secs(DEFAULT_HEARTBEAT_SECS),
            idle_timeout: Duration::from_secs(3 * DEFAULT_HEARTBEAT_SECS),
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            rate_burst: 2 * DEFAULT_RATE_PER_SEC,
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
        /// The error is about the connection, not a request: it carries request id 0.
        connection_level: bool,
    },
}

fn reject(code: ErrorCode, message: impl Into<String>, close: bool) -> Verdict {
    Verdict::Reject {
        code,
        message: message.into(),
        retry_after_ms: 0,
        close,
        connection_level: false,
    }
}

/// A frame refused by the connection-level rules: answered with an error under the frame's
/// request id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// Close the connection after sending the error.
    pub close: bool,
}

fn refusal(code: ErrorCode, message: impl Into<String>, close: bool) -> Refusal {
    Refusal {
        code,
        message: message.into(),
        close,
    }
}

/// A handshake that passed every check: who the connection belongs to and what it negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The user the token names.
    pub user: String,
    /// The device the handshake names (and the token, when it binds one).
    pub device: String,
    /// The protocol revision both sides speak.
    pub protocol_version: u32,
    /// The client accepts zstd-compressed bodies.
    pub zstd: bool,
}

/// Gateway-wide settings the handshake answer announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    /// Largest frame body after authentication.
    pub max_frame_bytes: usize,
    /// Bodies at least this large are compressed for clients that accept zstd.
    pub compression_threshold: usize,
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

    /// Classifies a frame received at `now`, in the order of SPEC §5: frame-level violations,
    /// direction, authentication, rate limit, unknown op. Every frame that gets this far costs a
    /// token, whatever its op and whether or not the connection is authenticated, so no frame
    /// class (pings, unknown ops, repeated handshakes) can be pipelined without limit.
    pub fn on_frame(&mut self, frame: &Frame, now: Instant) -> Verdict {
        self.last_received = now;
        if frame.flags.contains(Flags::PUSH) || frame.request_id == 0 {
            // A connection-level error: it answers no request, so it carries request id 0.
            return Verdict::Reject {
                code: ErrorCode::BadFrame,
                message: "client frames carry a non-zero request id and no PUSH flag".into(),
                retry_after_ms: 0,
                close: true,
                connection_level: true,
            };
        }
        let op = frame.known_op();
        if let Some(op) = op
            && OpInfo::of(frame.op).map(|info| info.direction) == Some(Direction::ServerToClient)
        {
            return reject(
                ErrorCode::WrongDirection,
                format!("{} is sent by servers only", op.as_str_name()),
                true,
            );
        }
        match (&self.phase, op) {
            (Phase::Closed, _) => {
                return reject(ErrorCode::ShuttingDown, "connection is closing", true);
            }
            (Phase::AwaitingHandshake, Some(Op::HandshakeReq)) | (Phase::Active { .. }, _) => {}
            // Unknown ops included: before authentication nothing but a handshake is accepted.
            (Phase::AwaitingHandshake, _) => {
                return reject(
                    ErrorCode::NotAuthenticated,
                    "only HANDSHAKE_REQ is accepted before authentication",
                    true,
                );
            }
        }
        if let Err(wait) = self.bucket.take(now) {
            return Verdict::Reject {
                code: ErrorCode::RateLimited,
                message: format!("more than {} frames per second", self.config.rate_per_sec),
                retry_after_ms: wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                close: false,
                connection_level: false,
            };
        }
        let Some(op) = op else {
            return reject(
                ErrorCode::UnknownOp,
                format!("unknown op {}", frame.op),
                false,
            );
        };
        match (&self.phase, op) {
            (Phase::AwaitingHandshake, _) => Verdict::Handshake,
            (_, Op::HandshakeReq) => reject(
                ErrorCode::AlreadyAuthenticated,
                "the connection is already authenticated",
                false,
            ),
            (_, Op::Ping) => Verdict::Ping,
            (_, Op::Goodbye) => Verdict::Goodbye,
            (_, op) => Verdict::Request(op),
        }
    }

    /// Checks a `HANDSHAKE_REQ` (SPEC §6) at `now_secs` (Unix seconds): the body decodes, the
    /// token verifies, the device id is valid and matches the token's, the revision is one.
    /// A body that does not decode or an invalid device id may be corrected on the same
    /// connection; any other refusal closes it.
    pub fn check_handshake(
        &self,
        frame: &Frame,
        tokens: &TokenKey,
        now_secs: u64,
    ) -> Result<Handshake, Refusal> {
        let request = match frame.decode_body() {
            Ok(Body::HandshakeReq(request)) => request,
            // Not a closing code (SPEC §5): the client may send a corrected handshake.
            Ok(_) | Err(_) => {
                return Err(refusal(
                    ErrorCode::BadBody,
                    "HANDSHAKE_REQ body does not decode",
                    false,
                ));
            }
        };
        let claims = tokens
            .verify(&request.token, now_secs)
            .map_err(|e| refusal(e.code(), e.to_string(), true))?;
        if let Err(e) = im_protocol::ids::validate_id(&request.device_id, "device_id") {
            return Err(refusal(ErrorCode::InvalidArgument, e.to_string(), false));
        }
        if claims
            .dev
            .as_deref()
            .is_some_and(|dev| dev != request.device_id)
        {
            return Err(refusal(
                ErrorCode::DeviceMismatch,
                "the handshake's device_id differs from the token's device",
                true,
            ));
        }
        if request.protocol_version == 0 {
            return Err(refusal(
                ErrorCode::UnsupportedVersion,
                "protocol_version 0 is not a revision",
                true,
            ));
        }
        Ok(Handshake {
            user: claims.sub,
            device: request.device_id,
            protocol_version: request.protocol_version.min(im_protocol::PROTOCOL_REVISION),
            zstd: request
                .accept_compression
                .contains(&(pb::Compression::Zstd as i32)),
        })
    }

    /// The handshake succeeded: the connection now belongs to the handshake's user and device,
    /// and this is its answer (SPEC §6). `info` is what the logic tier said about the session.
    pub fn accept_handshake(
        &mut self,
        handshake: &Handshake,
        info: SessionInfo,
        announced: Announced,
        session_id: String,
        now_ms: u64,
    ) -> pb::HandshakeResp {
        self.authenticated(handshake.user.clone(), handshake.device.clone());
        let (compression, threshold) = if handshake.zstd {
            (
                pb::Compression::Zstd,
                announced.compression_threshold as u32,
            )
        } else {
            (pb::Compression::None, 0)
        };
        pb::HandshakeResp {
            user_id: handshake.user.clone(),
            device_id: handshake.device.clone(),
            protocol_version: handshake.protocol_version,
            server_time_ms: now_ms,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            idle_timeout_ms: self.config.idle_timeout.as_millis() as u32,
            max_frame_bytes: announced.max_frame_bytes as u32,
            max_message_bytes: info.max_message_bytes,
            inbox_head_seq: info.inbox.head_seq,
            inbox_epoch: info.inbox.epoch,
            session_id,
            compression: compression as i32,
            compression_threshold_bytes: threshold,
        }
    }

    /// The answer to a `PING` (SPEC §8): the client's time echoed, the server's time, and the
    /// inbox head (which lets a client notice a push it never got; `UNKNOWN` when not known).
    pub fn pong(
        &self,
        frame: &Frame,
        inbox: InboxPosition,
        now_ms: u64,
    ) -> Result<pb::Pong, Refusal> {
        let Ok(Body::Ping(ping)) = frame.decode_body() else {
            return Err(refusal(
                ErrorCode::BadBody,
                "PING body does not decode",
                false,
            ));
        };
        Ok(pb::Pong {
            client_time_ms: ping.client_time_ms,
            server_time_ms: now_ms,
            inbox_head_seq: inbox.head_seq,
            inbox_epoch: inbox.epoch,
        })
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

    fn is_rate_limited(verdict: Verdict) -> bool {
        matches!(
            verdict,
            Verdict::Reject {
                code: ErrorCode::RateLimited,
                retry_after_ms: 1..,
                close: false,
                ..
            }
        )
    }

    #[test]
    fn requests_above_the_rate_are_refused_with_a_retry_hint() {
        let t0 = Instant::now();
        let mut s = active(t0);
        for _ in 0..400 {
            assert_eq!(
                s.on_frame(&frame(pb::SyncReq::default()), t0),
                Verdict::Request(Op::SyncReq)
            );
        }
        assert!(is_rate_limited(
            s.on_frame(&frame(pb::SyncReq::default()), t0)
        ));
        // Tokens come back with time.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(
            s.on_frame(&frame(pb::SyncReq::default()), later),
            Verdict::Request(Op::SyncReq)
        );
    }

    #[test]
    fn pings_unknown_ops_and_repeated_handshakes_cost_tokens_too() {
        let t0 = Instant::now();
        let unknown = Frame {
            op: 999,
            flags: Flags::empty(),
            request_id: 3,
            body: Default::default(),
        };
        let kinds = [
            frame(pb::Ping::default()),
            unknown,
            frame(pb::HandshakeReq::default()),
        ];
        for kind in kinds {
            let mut s = active(t0);
            for _ in 0..400 {
                assert!(!is_rate_limited(s.on_frame(&kind, t0)));
            }
            assert!(is_rate_limited(s.on_frame(&kind, t0)), "{kind:?}");
        }
    }

    #[test]
    fn handshakes_before_authentication_are_rate_limited() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        for _ in 0..400 {
            assert_eq!(
                s.on_frame(&frame(pb::HandshakeReq::default()), t0),
                Verdict::Handshake
            );
        }
        assert!(is_rate_limited(
            s.on_frame(&frame(pb::HandshakeReq::default()), t0)
        ));
    }

    #[test]
    fn an_unknown_op_before_authentication_closes_with_not_authenticated() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), t0);
        let f = Frame {
            op: 999,
            flags: Flags::empty(),
            request_id: 1,
            body: Default::default(),
        };
        assert!(matches!(
            s.on_frame(&f, t0),
            Verdict::Reject {
                code: ErrorCode::NotAuthenticated,
                close: true,
                ..
            }
        ));
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
                Verdict::Reject {
                    code,
                    close,
                    connection_level,
                    ..
                } => {
                    assert!(close);
                    // A frame-level violation answers no request: request id 0 (SPEC §2.1),
                    // except a server-only op, which is answered under its own id (SPEC §5).
                    assert_eq!(connection_level, code == ErrorCode::BadFrame);
                }
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

    mod handshake {
        use super::*;
        use im_auth::Claims;

        const NOW: u64 = 1_800_000_000;

        fn key() -> TokenKey {
            TokenKey::new("session-test-secret-0123456789abcdef")
        }

        fn token(device: Option<&str>, exp: u64) -> String {
            key().sign(&Claims {
                sub: "alice".into(),
                dev: device.map(Into::into),
                plt: None,
                exp,
                iat: None,
            })
        }

        fn hello(token: String, device: &str, version: u32) -> Frame {
            frame(pb::HandshakeReq {
                token,
                device_id: device.into(),
                protocol_version: version,
                accept_compression: vec![pb::Compression::Zstd as i32],
                ..Default::default()
            })
        }

        fn refused(result: Result<Handshake, Refusal>) -> (ErrorCode, bool) {
            let refusal = result.expect_err("refused");
            (refusal.code, refusal.close)
        }

        #[test]
        fn a_valid_handshake_names_the_user_and_negotiates_revision_and_compression() {
            let s = Session::new(SessionConfig::default(), Instant::now());
            let ok = s
                .check_handshake(
                    &hello(token(Some("phone"), NOW + 60), "phone", 9),
                    &key(),
                    NOW,
                )
                .expect("accepted");
            assert_eq!(
                ok,
                Handshake {
                    user: "alice".into(),
                    device: "phone".into(),
                    protocol_version: im_protocol::PROTOCOL_REVISION,
                    zstd: true,
                }
            );
        }

        #[test]
        fn a_body_that_does_not_decode_or_a_bad_device_id_may_be_corrected() {
            let s = Session::new(SessionConfig::default(), Instant::now());
            let garbage = Frame {
                body: vec![0xff; 8].into(),
                ..hello(String::new(), "phone", 1)
            };
            assert_eq!(
                refused(s.check_handshake(&garbage, &key(), NOW)),
                (ErrorCode::BadBody, false)
            );
            let bad_device = hello(token(None, NOW + 60), "no spaces allowed", 1);
            assert_eq!(
                refused(s.check_handshake(&bad_device, &key(), NOW)),
                (ErrorCode::InvalidArgument, false)
            );
        }

        #[test]
        fn expired_tokens_other_devices_and_revision_0_close_the_connection() {
            let s = Session::new(SessionConfig::default(), Instant::now());
            let expired = hello(token(Some("phone"), NOW - 1), "phone", 1);
            assert_eq!(
                refused(s.check_handshake(&expired, &key(), NOW)),
                (ErrorCode::TokenExpired, true)
            );
            let elsewhere = hello(token(Some("laptop"), NOW + 60), "phone", 1);
            assert_eq!(
                refused(s.check_handshake(&elsewhere, &key(), NOW)),
                (ErrorCode::DeviceMismatch, true)
            );
            let revision_0 = hello(token(None, NOW + 60), "phone", 0);
            assert_eq!(
                refused(s.check_handshake(&revision_0, &key(), NOW)),
                (ErrorCode::UnsupportedVersion, true)
            );
        }

        #[test]
        fn the_answer_carries_the_session_info_and_the_connection_is_then_active() {
            let t0 = Instant::now();
            let mut s = Session::new(SessionConfig::default(), t0);
            let ok = s
                .check_handshake(&hello(token(None, NOW + 60), "phone", 1), &key(), NOW)
                .unwrap();
            let info = SessionInfo {
                inbox: InboxPosition {
                    head_seq: 12,
                    epoch: 5,
                },
                max_message_bytes: 1000,
                read_groups: Vec::new(),
            };
            let announced = Announced {
                max_frame_bytes: 1 << 20,
                compression_threshold: 8192,
            };
            let answer = s.accept_handshake(&ok, info, announced, "c1".into(), 99);
            assert_eq!((answer.inbox_head_seq, answer.inbox_epoch), (12, 5));
            assert_eq!(answer.compression_threshold_bytes, 8192);
            assert_eq!(answer.heartbeat_interval_ms, 30_000);
            assert_eq!(answer.idle_timeout_ms, 90_000);
            assert!(matches!(s.phase(), Phase::Active { user, .. } if user == "alice"));
            assert_eq!(
                s.on_frame(&frame(pb::SyncReq::default()), t0),
                Verdict::Request(Op::SyncReq)
            );
        }

        #[test]
        fn a_ping_is_answered_with_the_head_given_and_a_broken_one_is_refused() {
            let s = active(Instant::now());
            let head = InboxPosition {
                head_seq: 3,
                epoch: 8,
            };
            let pong = s
                .pong(&frame(pb::Ping { client_time_ms: 11 }), head, 20)
                .unwrap();
            assert_eq!(
                (
                    pong.client_time_ms,
                    pong.server_time_ms,
                    pong.inbox_head_seq,
                    pong.inbox_epoch
                ),
                (11, 20, 3, 8)
            );
            let broken = Frame {
                body: vec![0xff; 4].into(),
                ..frame(pb::Ping::default())
            };
            assert_eq!(
                s.pong(&broken, head, 20).map_err(|r| (r.code, r.close)),
                Err((ErrorCode::BadBody, false))
            );
        }
    }
}
