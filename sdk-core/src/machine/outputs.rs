//! What the machine asks of its driver: frames to write, transport actions, app events and
//! the next wake-up time.

use std::time::{Duration, Instant};

use im_protocol::Frame;

use super::{Action, Client, Event, Phase};
use crate::store::LocalStore;
use crate::types::{RequestError, RequestHandle, Response};

impl<S: LocalStore> Client<S> {
    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmit.pop_front()
    }

    /// The next transport action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The address a server's kick sent this client to (`Kick.redirect_addr`), once: the
    /// driver connects there from then on instead of the address it started with.
    pub fn take_redirect(&mut self) -> Option<crate::transport::ServerAddress> {
        self.redirect.take()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next answer to a [`Client::request`], with the handle it returned. Answers are kept
    /// apart from the events so a driver can hand each to its caller even while the app is
    /// behind on events.
    pub fn poll_response(&mut self) -> Option<(RequestHandle, Result<Response, RequestError>)> {
        self.responses.pop_front()
    }

    /// When [`Client::on_timeout`] should be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { at } => Some(at),
            Phase::Authenticating | Phase::Syncing | Phase::Online
                if self.receiving_paused_since.is_some() =>
            {
                // Silence is our own doing while the driver does not read: only heartbeats
                // are due (see `pause_receiving`).
                self.connected()
                    .then(|| self.last_sent + self.heartbeat_interval())
            }
            Phase::Authenticating | Phase::Syncing | Phase::Online => {
                let mut t = self.last_received + self.timing.idle_timeout;
                // With a ping unanswered, the pong timeout is what is due next: another ping
                // would not be sent (`send_ping`), so waking for one would only spin.
                if self.connected() && self.ping_sent.is_none() {
                    t = t.min(self.last_sent + self.heartbeat_interval());
                }
                if let Some(ping) = self.ping_sent {
                    t = t.min(ping + self.config.pong_timeout);
                }
                if let Some(oldest) = self.pending.values().map(|p| p.sent_at).min() {
                    t = t.min(oldest + self.config.request_timeout);
                }
                Some(t)
            }
            _ => None,
        }
    }

    pub(super) fn heartbeat_interval(&self) -> Duration {
        // In the background we ping half as often, still well inside the server's idle timeout
        // (three intervals), to save radio wake-ups.
        if self.background {
            self.timing.heartbeat * 2
        } else {
            self.timing.heartbeat
        }
    }
}
