//! What the transport tells the machine: connected, disconnected, time passed, a frame arrived
//! (handshake, send answers, pushes, responses).

use std::time::{Duration, Instant};

use im_protocol::pb::{self, ErrorCode};
use im_protocol::{Body, ErrorCodeExt as _, Frame};
use rand::Rng as _;

use super::{Action, Client, Event, Pending, Phase, StopReason, Timing, convert};
use crate::store::LocalStore;
use crate::types::RequestError;

impl<S: LocalStore> Client<S> {
    /// The transport is open: authenticate.
    pub fn on_connected(&mut self, now: Instant) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.reset_connection();
        self.last_received = now;
        self.last_sent = now;
        self.set_phase(Phase::Authenticating);
        let hello = pb::HandshakeReq {
            token: self.token.clone().unwrap_or_default(),
            device_id: self.config.device_id.clone(),
            platform: convert::platform(self.config.platform) as i32,
            client_version: self.config.client_version.clone(),
            protocol_version: im_protocol::PROTOCOL_REVISION,
            last_inbox_seq: self.cursor,
            accept_compression: vec![pb::Compression::Zstd as i32],
            app_state: if self.background {
                pb::AppState::Background as i32
            } else {
                pb::AppState::Foreground as i32
            },
        };
        // The handshake is bounded by the idle timeout until the server announces its own.
        self.timing.idle_timeout = self.config.request_timeout;
        self.send_frame(hello, Some(Pending::Handshake), now);
    }

    /// The driver stops reading frames (the app is behind on events and the driver holds the
    /// server back through TCP instead of buffering without bound). Until
    /// [`Client::resume_receiving`], the server's silence is ours, not the link's: no timeout
    /// declares the link dead, and heartbeats keep going out so the server does not either.
    pub fn pause_receiving(&mut self, now: Instant) {
        self.receiving_paused_since.get_or_insert(now);
    }

    /// The driver reads frames again. The dead-link clocks (idle, pong and request timeouts)
    /// resume where they stood: the time spent paused does not count against the link.
    pub fn resume_receiving(&mut self, now: Instant) {
        let Some(since) = self.receiving_paused_since.take() else {
            return;
        };
        let paused = now.saturating_duration_since(since);
        let shift = |t: Instant| (t + paused).min(now);
        self.last_received = shift(self.last_received);
        self.ping_sent = self.ping_sent.map(shift);
        for pending in self.pending.values_mut() {
            pending.sent_at = shift(pending.sent_at);
        }
    }

    /// Whether the driver said it stopped reading frames ([`Client::pause_receiving`]).
    pub fn receiving_paused(&self) -> bool {
        self.receiving_paused_since.is_some()
    }

    /// A better transport than the current connection's is reachable (QUIC again after a
    /// fallback to the HTTP tunnel, say): close this connection with a goodbye and connect again
    /// at once. Only done while online with no app request awaiting an answer, so no caller sees
    /// a `ConnectionLost` for it; unacknowledged sends stay in the outbox and go out again on the
    /// new connection (the server drops duplicates by client message id). Returns whether the
    /// move started; if not, ask again later.
    pub fn move_connection(&mut self, now: Instant) -> bool {
        let awaited = self
            .pending
            .values()
            .any(|p| matches!(p.kind, Pending::Request { .. }));
        if self.phase != Phase::Online || awaited || self.receiving_paused() {
            return false;
        }
        self.reset_connection();
        let id = self.request_id();
        self.transmit
            .push_back(Frame::new(id, pb::Goodbye { logout: false }));
        self.actions.push_back(Action::Disconnect);
        self.attempt = 0;
        self.start_connect(now);
        true
    }

    /// The transport failed or closed (or could not be opened).
    pub fn on_disconnected(&mut self, now: Instant) {
        if matches!(
            self.phase,
            Phase::Offline | Phase::Stopped(_) | Phase::Waiting { .. }
        ) {
            return;
        }
        self.reset_connection();
        self.schedule_reconnect(now, Duration::ZERO);
    }

    /// Drops per-connection state; pending requests fail, unacked sends stay in the outbox.
    pub(super) fn reset_connection(&mut self) {
        for (_, pending) in self.pending.drain() {
            if let Pending::Request { handle } = pending.kind {
                self.responses
                    .push_back((handle, Err(RequestError::ConnectionLost)));
            }
        }
        self.transmitted.clear();
        self.transmit.clear();
        self.ping_sent = None;
        self.sync_in_flight = false;
        self.sync_to = 0;
        // Buffered pushes are dropped: the next connection syncs from the cursor anyway.
        self.buffered.clear();
        for group in self.read_groups.values_mut() {
            group.fetching = false;
        }
    }

    pub(super) fn schedule_reconnect(&mut self, now: Instant, at_least: Duration) {
        if let Some(since) = self.healthy_since.take()
            && now.saturating_duration_since(since) >= self.timing.heartbeat
        {
            self.attempt = 0;
        }
        // Full jitter: a uniformly random delay up to the exponential bound, so clients cut off
        // together by a server restart come back spread out instead of in one storm.
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1u32 << self.attempt.min(16));
        let bound = exp
            .min(self.config.backoff_cap)
            .max(Duration::from_millis(1));
        let delay = Duration::from_micros(self.rng.random_range(0..=bound.as_micros() as u64))
            .max(at_least);
        self.attempt = self.attempt.saturating_add(1);
        self.set_phase(Phase::Waiting { at: now + delay });
    }

    /// The link is dead or the server broke the protocol: close and reconnect later.
    pub(super) fn fail_connection(&mut self, now: Instant, at_least: Duration) {
        self.actions.push_back(Action::Disconnect);
        self.reset_connection();
        self.schedule_reconnect(now, at_least);
    }

    /// Time passed: heartbeats, dead-link detection, reconnects.
    pub fn on_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting { at } if now >= at => self.start_connect(now),
            Phase::Authenticating | Phase::Syncing | Phase::Online
                if self.receiving_paused_since.is_some() =>
            {
                self.heartbeat_while_paused(now)
            }
            Phase::Authenticating | Phase::Syncing | Phase::Online => {
                let dead = now >= self.last_received + self.timing.idle_timeout
                    || self
                        .ping_sent
                        .is_some_and(|t| now >= t + self.config.pong_timeout)
                    || self
                        .pending
                        .values()
                        .any(|p| now >= p.sent_at + self.config.request_timeout);
                if dead {
                    tracing::debug!("link considered dead");
                    self.fail_connection(now, Duration::ZERO);
                } else if self.connected() && now >= self.last_sent + self.heartbeat_interval() {
                    self.send_ping(now);
                }
            }
            _ => {}
        }
    }

    fn heartbeat_while_paused(&mut self, now: Instant) {
        if self.connected() && now >= self.last_sent + self.heartbeat_interval() {
            // The last pong may sit unread behind the frames the driver holds back, so do not
            // wait for it: the server must keep hearing from us, or its idle timeout closes a
            // link that is fine.
            self.send_frame(pb::Ping::default(), None, now);
            self.ping_sent.get_or_insert(now);
        }
    }

    pub(super) fn send_ping(&mut self, now: Instant) {
        if self.ping_sent.is_none() {
            self.send_frame(pb::Ping::default(), None, now);
            self.ping_sent = Some(now);
        }
    }

    /// A frame arrived.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) {
        if matches!(
            self.phase,
            Phase::Offline | Phase::Stopped(_) | Phase::Waiting { .. } | Phase::Connecting
        ) {
            return;
        }
        self.last_received = now;
        let body = match frame.decode_body() {
            Ok(body) => body,
            Err(e) => {
                // An op from a newer revision: ignore pushes we do not understand.
                tracing::debug!(error = %e, op = frame.op, "ignoring an undecodable frame");
                if !frame.is_push() {
                    self.pending.remove(&frame.request_id);
                }
                return;
            }
        };
        if frame.is_push() || frame.request_id == 0 {
            self.on_push(body, now);
            return;
        }
        let Some(pending) = self.pending.remove(&frame.request_id) else {
            if let Body::Pong(pong) = body {
                self.ping_sent = None;
                // A head above the cursor with no sync running means a push was lost on a
                // link that otherwise works: pull what is missing instead of waiting for the
                // next push or reconnect.
                if pong.inbox_epoch != 0 && pong.inbox_epoch != self.inbox_epoch {
                    // The server's store was replaced under this connection: start over on a
                    // new one, whose handshake resets the local state.
                    self.fail_connection(now, Duration::ZERO);
                    return;
                }
                if pong.inbox_head_seq > self.cursor && !self.sync_in_flight && self.connected() {
                    self.start_sync(0, now);
                } else if !self.read_groups.is_empty() && !self.sync_in_flight && self.connected() {
                    // A lost GROUP_PUSH shows in no inbox head: once per heartbeat, the last
                    // page of a sync lists the read-fan-out groups' heads (SPEC §13.12).
                    self.start_sync(0, now);
                }
            }
            return;
        };
        match pending.kind {
            Pending::Handshake => self.on_handshake(body, now),
            Pending::Send { local_id } => self.on_send_answer(local_id, body, now),
            Pending::Sync => self.on_sync_answer(body, now),
            Pending::Request { handle } => {
                self.absorb_response(&body);
                self.responses.push_back((handle, convert::response(body)));
            }
            Pending::CatchUp { conversation_id } => {
                self.on_catch_up_answer(conversation_id, body, now)
            }
        }
    }

    fn on_push(&mut self, body: Body, now: Instant) {
        match body {
            Body::Push(push) => self.on_entries(push.entries, now),
            Body::GroupPush(push) => self.on_group_push(push, now),
            Body::TypingEvent(event) => self
                .events
                .push_back(Event::Typing(convert::typing_event(event))),
            Body::Kick(kick) => {
                let reason =
                    pb::KickReason::try_from(kick.reason).unwrap_or(pb::KickReason::Unspecified);
                self.actions.push_back(Action::Disconnect);
                self.reset_connection();
                match reason {
                    pb::KickReason::LoggedInElsewhere => {
                        self.set_phase(Phase::Stopped(StopReason::LoggedInElsewhere))
                    }
                    pb::KickReason::TokenRevoked => {
                        self.set_phase(Phase::Stopped(StopReason::AuthFailed(kick.message)))
                    }
                    _ => {
                        // A draining server names where to go (SPEC §5 "Kick"): the same
                        // transport at another address, for this and later connections.
                        if !kick.redirect_addr.is_empty() {
                            match kick.redirect_addr.parse() {
                                Ok(address) => self.redirect = Some(address),
                                Err(e) => {
                                    tracing::warn!(error = %e, "ignoring the kick's redirect address")
                                }
                            }
                        }
                        self.schedule_reconnect(
                            now,
                            Duration::from_millis(u64::from(kick.retry_after_ms)),
                        )
                    }
                }
            }
            Body::Error(error) => {
                // A connection-level error: the server closes next.
                tracing::debug!(code = error.code, message = %error.message, "connection error from the server");
                self.fail_connection(now, Duration::from_millis(u64::from(error.retry_after_ms)));
            }
            _ => {}
        }
    }

    fn on_handshake(&mut self, body: Body, now: Instant) {
        match body {
            Body::HandshakeResp(hello) => {
                if hello.user_id != self.config.user_id {
                    tracing::warn!(token_user = %hello.user_id, configured = %self.config.user_id, "token is for another user");
                }
                if hello.max_message_bytes > 0 {
                    self.max_message_bytes = hello.max_message_bytes as usize;
                }
                self.timing = Timing {
                    heartbeat: Duration::from_millis(u64::from(
                        hello.heartbeat_interval_ms.max(1000),
                    )),
                    idle_timeout: Duration::from_millis(u64::from(hello.idle_timeout_ms.max(3000))),
                };
                self.healthy_since = Some(now);
                self.set_phase(Phase::Syncing);
                self.check_inbox(hello.inbox_epoch, hello.inbox_head_seq);
                self.start_sync(0, now);
                match self.store.outbox_pending() {
                    Ok(items) => {
                        for item in items {
                            self.transmit_item(item, now);
                        }
                    }
                    Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
                }
            }
            Body::Error(error) => {
                let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified);
                self.actions.push_back(Action::Disconnect);
                self.reset_connection();
                match code {
                    ErrorCode::TokenExpired => {
                        self.set_phase(Phase::Stopped(StopReason::TokenExpired))
                    }
                    ErrorCode::TokenInvalid
                    | ErrorCode::TokenMissing
                    | ErrorCode::DeviceMismatch => {
                        self.set_phase(Phase::Stopped(StopReason::AuthFailed(error.message)))
                    }
                    _ => self.schedule_reconnect(
                        now,
                        Duration::from_millis(u64::from(error.retry_after_ms)),
                    ),
                }
            }
            _ => self.fail_connection(now, Duration::ZERO),
        }
    }

    fn on_send_answer(&mut self, local_id: u64, body: Body, now: Instant) {
        match body {
            Body::SendAck(ack) => {
                self.transmitted.remove(&local_id);
                match self.store.outbox_acked(
                    &ack.client_msg_id,
                    ack.conversation_seq,
                    ack.server_msg_id,
                    ack.server_time_ms,
                ) {
                    Ok(acked) => {
                        if let Some(message) = acked {
                            self.events
                                .push_back(Event::MessageUpdated(message.clone()));
                            self.touch_conversation(&message, false);
                        }
                        // In a read-fan-out group the ack may continue the position (or show
                        // that messages before it were missed).
                        self.note_group_seq(&ack.conversation_id, ack.conversation_seq, now);
                        // The server does not push our own entry back to this connection: the
                        // ack stands for it (SPEC §10.1). The message is stored now, so the
                        // entry only has to take its place in the cursor's order.
                        if ack.sender_inbox_seq > self.cursor {
                            let placeholder = pb::InboxEntry {
                                inbox_seq: ack.sender_inbox_seq,
                                body: None,
                            };
                            self.on_entries(vec![placeholder], now);
                        }
                    }
                    Err(e) => self.events.push_back(Event::StoreError(e.to_string())),
                }
            }
            Body::Error(error) => {
                let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified);
                if code.retryable() {
                    // Leave it in the outbox: a reconnect retransmits it. Reconnect soon so a
                    // rate limit or a draining server does not hold the message for long.
                    self.fail_connection(
                        now,
                        Duration::from_millis(u64::from(error.retry_after_ms)),
                    );
                } else {
                    let attempts = self.transmitted.remove(&local_id).unwrap_or(1);
                    self.fail_message(local_id, attempts);
                }
            }
            _ => {}
        }
    }
}
