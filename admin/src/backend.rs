//! What the admin listener asks of the server it runs in. The server implements [`Backend`]
//! over its gateway (which forwards to the logic tier, local or remote), so the API's sends
//! and group changes take the same path as a client's requests.

use std::future::Future;
use std::pin::Pin;

use im_protocol::{Body, pb};
use logic_api::{Caller, Reply, SendReply};

/// A boxed future, so [`Backend`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A token minted by the server API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token, as a client puts it in `HandshakeReq.token`.
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
}

/// Whether the server takes traffic, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// The store answers (or, on a gateway of a cluster, a logic node was reachable lately).
    pub store_ok: bool,
    /// The server is draining: it accepts no new connections.
    pub draining: bool,
}

impl Readiness {
    /// Whether a load balancer should send new clients here.
    pub fn ready(&self) -> bool {
        self.store_ok && !self.draining
    }
}

/// The server, as the admin listener drives it.
pub trait Backend: Send + Sync + 'static {
    /// Mints a token for `user` (bound to `device` when given) valid for `ttl_secs`.
    fn issue_token(&self, user: &str, device: Option<&str>, ttl_secs: u64) -> IssuedToken;

    /// Sends a message as `caller`: the same path, idempotency and fan-out as a client's
    /// `SEND_REQ`.
    fn send(&self, caller: Caller, request: pb::SendReq) -> BoxFuture<'_, SendReply>;

    /// Runs any other request as `caller` (group changes, member lists, history).
    fn call(&self, caller: Caller, body: Body) -> BoxFuture<'_, Reply>;

    /// Closes the connections of `user` (one device, or all) wherever they are connected (in
    /// a cluster, through the other gateways), each told `reason` first. Returns how many
    /// devices were told to go; an error when the cluster's registry cannot be reached.
    fn kick(
        &self,
        user: String,
        device: Option<String>,
        reason: pb::KickReason,
    ) -> BoxFuture<'_, Result<usize, String>>;

    /// The devices of `user` connected anywhere (in a cluster, to any gateway), sorted.
    fn online_devices(&self, user: String) -> BoxFuture<'_, Result<Vec<String>, String>>;

    /// Starts draining (as SIGTERM does): stop accepting, send clients away, then exit.
    fn start_drain(&self);

    /// Whether the server takes traffic.
    fn readiness(&self) -> Readiness;

    /// Sets the gauges that are read off the server's state rather than counted as things
    /// happen (push queue bytes, store size); called before each scrape.
    fn refresh_gauges(&self) {}
}
