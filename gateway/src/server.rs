//! The accept loops and the connection tasks, over any transport.
//!
//! Each connection is two tasks: this one reads frames, asks the [`Session`] what they may be,
//! and calls the logic tier; a writer task drains a bounded outbound queue, coalescing whatever
//! is queued into one write. Consecutive `SEND_REQ`s that arrived together go to the logic tier
//! as one batch, which keeps their order and lets the store group-commit them. What a request
//! changed for other connections goes to the [`PushRouter`].

use im_protocol::unix_time_ms as now_ms;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use im_protocol::pb::{self, ErrorCode};
use im_protocol::{Body, ErrorCodeExt as _, Frame, FrameCodec};
use logic_api::{Caller, Effects, LogicApi};
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::auth::TokenKey;
use crate::hub::{ConnHandle, Hub, Registration};
use crate::metrics::{self as gauges, HotMetrics, code_label, op_label};
use crate::outbox::{Outbound, Outbox};
use crate::router::{Origin, PushRouter, route_effects};
use crate::session::{Announced, Refusal, Session, SessionConfig, Verdict};
use crate::transport::{Acceptor, ByteStream};
use crate::writer::{WriterEnd, writer};

/// Body limit before authentication: a handshake is small, and unauthenticated peers must not
/// make us buffer much.
const PRE_AUTH_MAX_BODY: usize = 4 * 1024;
/// Outbound frames queued per connection before it counts as too slow (the byte bound,
/// [`GatewayConfig::outbound_queue_bytes`], is usually reached first).
const OUTBOUND_QUEUE_ITEMS: usize = 1024;
/// Pushes may fill a connection's outbound queue to this many times its bound for answers: a
/// burst of large messages to one user (a batch of sends is pushed at once) must not close a
/// reader that keeps up.
const PUSH_QUEUE_FACTOR: usize = 4;
/// Most `SEND_REQ`s taken into one store batch from one connection.
const MAX_SEND_BATCH: usize = 256;
/// How long a closing connection waits for its writer to flush the last frames.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection that closed gracefully keeps reading (and dropping) the peer's input
/// before it closes the socket, so the peer can read our last frames first.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Server settings the gateway owns.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Connection timing and rate limits.
    pub session: SessionConfig,
    /// Largest body after authentication.
    pub max_frame_bytes: usize,
    /// Compress outgoing bodies at least this large for clients that accept zstd.
    pub compression_threshold: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Most live connections of one user (each of another device).
    pub max_connections_per_user: usize,
    /// Bytes of frames queued for one connection before its own answers wait for room (and
    /// its requests are not read meanwhile). Pushes may fill the queue to four times this; a
    /// push that finds even that full closes the connection. A frame larger than the bound
    /// still goes into an empty queue.
    pub outbound_queue_bytes: usize,
    /// How long a connection may leave its outbound data unread (a socket write that makes no
    /// progress, or an answer that finds no room in the queue) before it is closed for good.
    pub slow_client_timeout: Duration,
}

/// Default of [`GatewayConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default of [`GatewayConfig::outbound_queue_bytes`].
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = im_protocol::DEFAULT_MAX_BODY;
/// Default of [`GatewayConfig::slow_client_timeout`], in seconds.
pub const DEFAULT_SLOW_CLIENT_TIMEOUT_SECS: u64 = 15;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            session: SessionConfig::default(),
            max_frame_bytes: im_protocol::DEFAULT_MAX_BODY,
            compression_threshold: 8 * 1024,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_user: crate::hub::DEFAULT_MAX_CONNECTIONS_PER_USER,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            slow_client_timeout: Duration::from_secs(DEFAULT_SLOW_CLIENT_TIMEOUT_SECS),
        }
    }
}

/// Everything a connection task needs.
pub struct Shared<L> {
    /// The business tier.
    pub logic: L,
    /// This gateway's online connections.
    pub hub: Arc<Hub>,
    /// Gets pushes to users wherever they are connected (in one process: `hub` itself).
    pub router: Arc<dyn PushRouter>,
    /// Verifies tokens.
    pub tokens: TokenKey,
    /// Limits.
    pub config: GatewayConfig,
}

/// How a gateway sends its clients away when it stops (SPEC §5 "Draining").
#[derive(Clone, Debug)]
pub struct DrainPlan {
    /// `host:port` the clients are told to reconnect to (`Kick.redirect_addr`); empty: the
    /// same address (another process will be listening there, or this one again).
    pub redirect_addr: String,
    /// Kicks per second: the clients' reconnects land elsewhere at about this rate instead of
    /// all at once. 0: every client at once.
    pub kicks_per_sec: u32,
    /// The longest the kicks may take: with more clients than the rate sends away in this
    /// time, the rate rises so the last one is kicked when it ends.
    pub window: Duration,
    /// `Kick.retry_after_ms`: the least a client waits before reconnecting (it adds jitter).
    pub retry_after_ms: u32,
    /// How long connections may take to close after their kick (finishing the request they
    /// were handling, flushing the kick) before the gateway stops anyway.
    pub close_timeout: Duration,
}

impl Default for DrainPlan {
    /// Everyone at once, back in about a second: what a test server or a stopping single
    /// process wants.
    fn default() -> Self {
        DrainPlan {
            redirect_addr: String::new(),
            kicks_per_sec: 0,
            window: Duration::ZERO,
            retry_after_ms: 1000,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// What the gateway's connection tasks share besides [`Shared`].
struct Runtime {
    /// Set when the gateway starts draining: handshakes are refused with `SHUTTING_DOWN`.
    draining: std::sync::atomic::AtomicBool,
    hot: HotMetrics,
}

/// A gateway: serves connections from any number of transports, one [`Gateway::serve`] per
/// acceptor, and closes them all on [`Gateway::drain`].
pub struct Gateway<L> {
    shared: Arc<Shared<L>>,
    runtime: Arc<Runtime>,
    tracker: TaskTracker,
    /// Connections stop on their own token, cancelled only after they were sent the shutdown
    /// kick: stopping them on the accept loops' token raced the kick and lost it.
    connections_stop: CancellationToken,
    permits: Arc<Semaphore>,
}

impl<L: LogicApi> Gateway<L> {
    /// A gateway with no transport yet.
    pub fn new(shared: Shared<L>) -> Arc<Gateway<L>> {
        let permits = Arc::new(Semaphore::new(shared.config.max_connections));
        Arc::new(Gateway {
            shared: Arc::new(shared),
            runtime: Arc::new(Runtime {
                draining: std::sync::atomic::AtomicBool::new(false),
                hot: HotMetrics::new(),
            }),
            tracker: TaskTracker::new(),
            connections_stop: CancellationToken::new(),
            permits,
        })
    }

    /// This gateway's online connections.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.shared.hub
    }

    /// Accepts connections from `acceptor` until `shutdown` is cancelled. The connection limit
    /// is shared by every transport.
    pub async fn serve<A: Acceptor>(&self, mut acceptor: A, shutdown: CancellationToken) {
        let mut accept_backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = self.permits.clone().acquire_owned() => {
                    permit.expect("semaphore is never closed")
                }
            };
            let (incoming, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = acceptor.accept() => match accepted {
                    Ok(pair) => {
                        accept_backoff = Duration::from_millis(5);
                        pair
                    }
                    Err(e) => {
                        // Usually EMFILE: wait instead of spinning, then try again.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(accept_backoff).await;
                        accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            // The handshake deadline counts from here, transport setup included.
            let accepted = Instant::now();
            let establishing = acceptor.establish(incoming);
            let shared = self.shared.clone();
            let runtime = self.runtime.clone();
            let stop = self.connections_stop.clone();
            // user and device are recorded once the handshake names them.
            let span = tracing::debug_span!(
                "conn",
                %peer,
                user = tracing::field::Empty,
                device = tracing::field::Empty
            );
            let fut = async move {
                let _permit = permit;
                let deadline = shared.config.session.handshake_timeout;
                match tokio::time::timeout(deadline, establishing).await {
                    Ok(Ok(stream)) => {
                        let transport = stream.transport().unwrap_or(A::TRANSPORT);
                        connection(stream, shared, runtime, stop, accepted, transport).await
                    }
                    Ok(Err(e)) if crate::transport::is_handed_off(&e) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "transport setup failed"),
                    Err(_elapsed) => tracing::debug!("transport setup timed out"),
                }
            }
            .instrument(span);
            self.tracker.spawn(fut);
        }
    }

    /// Serves one already established stream (a transport that is not an acceptor: a test's
    /// in-memory pipe, a stream handed over by another component).
    pub fn serve_stream<S: ByteStream>(&self, stream: S, peer: &str) {
        let span = tracing::debug_span!(
            "conn",
            %peer,
            user = tracing::field::Empty,
            device = tracing::field::Empty
        );
        let transport = stream.transport().unwrap_or("memory");
        let fut = connection(
            stream,
            self.shared.clone(),
            self.runtime.clone(),
            self.connections_stop.clone(),
            Instant::now(),
            transport,
        );
        self.tracker.spawn(fut.instrument(span));
    }

    /// Serves one established stream if the connection limit allows (false when it does not):
    /// for transports whose sessions are born outside an accept loop (the HTTP tunnel's).
    pub fn try_serve_stream<S: ByteStream>(&self, stream: S, peer: &str) -> bool {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return false;
        };
        let span = tracing::debug_span!(
            "conn",
            %peer,
            user = tracing::field::Empty,
            device = tracing::field::Empty
        );
        let fut = connection(
            stream,
            self.shared.clone(),
            self.runtime.clone(),
            self.connections_stop.clone(),
            Instant::now(),
            "http_tunnel",
        );
        self.tracker.spawn(
            async move {
                let _permit = permit;
                fut.await
            }
            .instrument(span),
        );
        true
    }

    /// Tells every client at once to reconnect (here, later) and waits, at most five seconds,
    /// for the connection tasks to finish. Stop the accept loops first.
    pub async fn drain(&self) {
        self.drain_with(&DrainPlan::default()).await
    }

    /// Whether the gateway is draining (or drained).
    pub fn is_draining(&self) -> bool {
        self.runtime
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends every client away as `plan` says, spreading the kicks over time, and waits
    /// (bounded) for the connection tasks to finish. From its start, handshakes are refused
    /// with `SHUTTING_DOWN`. Stop the accept loops first.
    ///
    /// A kicked connection stops reading at its next frame; a request it is handling runs to
    /// its end (a send is stored, and its ack may not reach the client, which resends it with
    /// the same id after reconnecting: SPEC §11).
    pub async fn drain_with(&self, plan: &DrainPlan) {
        self.runtime
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let conns = self.shared.hub.all();
        let total = conns.len();
        let per_sec = match (plan.kicks_per_sec, plan.window.as_secs_f64()) {
            (0, _) => f64::INFINITY,
            (rate, window) if window > 0.0 => f64::from(rate).max(total as f64 / window),
            (rate, _) => f64::from(rate),
        };
        tracing::info!(
            connections = total,
            kicks_per_sec = per_sec,
            redirect = %plan.redirect_addr,
            "draining"
        );
        let kick = Frame::push(pb::Kick {
            reason: pb::KickReason::ServerShutdown as i32,
            message: "server is shutting down".into(),
            redirect_addr: plan.redirect_addr.clone(),
            retry_after_ms: plan.retry_after_ms,
        });
        let started = tokio::time::Instant::now();
        let mut kicked = 0;
        let mut conns = conns.into_iter();
        while kicked < total {
            // Kicks due by now, so a rate above the timer's resolution sends several per tick.
            let due = if per_sec.is_finite() {
                ((started.elapsed().as_secs_f64() * per_sec) as usize)
                    .saturating_add(1)
                    .min(total)
            } else {
                total
            };
            for conn in conns.by_ref().take(due - kicked) {
                let _ = conn.tx.try_push(Outbound::Frame(kick.clone()));
                conn.close.cancel();
            }
            metrics::counter!(gauges::DRAIN_KICKS).increment((due - kicked) as u64);
            kicked = due;
            if kicked < total {
                let next = started + Duration::from_secs_f64(kicked as f64 / per_sec);
                tokio::time::sleep_until(
                    next.max(tokio::time::Instant::now() + Duration::from_millis(1)),
                )
                .await;
            }
        }
        // Connections that registered while the first ones were kicked.
        for conn in self.shared.hub.all() {
            let _ = conn.tx.try_push(Outbound::Frame(kick.clone()));
            conn.close.cancel();
        }
        self.connections_stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(plan.close_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open {:?} after their kick; stopping anyway",
                plan.close_timeout
            );
        }
        tracing::info!(
            connections = total,
            secs = started.elapsed().as_secs_f64(),
            "drained"
        );
    }

    /// Sends a message as `caller` (the server API's sends): the same path, idempotency and
    /// fan-out as a client's `SEND_REQ`. Every online device of every recipient is pushed the
    /// entry, the caller's own devices included.
    pub async fn send_as(&self, caller: &Caller, request: pb::SendReq) -> logic_api::SendReply {
        let (mut replies, effects) = self.shared.logic.send_batch(caller, vec![request]).await;
        self.shared.router.follow(&effects.rooms);
        // The sender's inbox has a read-fan-out message: its devices get that entry.
        self.shared
            .router
            .deliver_group(effects.group_messages, Some(&caller.user));
        self.shared.router.deliver(effects.deliveries, None);
        replies
            .pop()
            .unwrap_or_else(|| Err(ErrorCode::Internal.to_error("no answer to the send")))
    }

    /// Handles any other request as `caller` (the server API's group changes and history
    /// reads), pushing what it changed like a client's request would.
    pub async fn call_as(&self, caller: &Caller, body: Body) -> logic_api::Reply {
        let (reply, effects) = self.shared.logic.handle(caller, body).await;
        route_effects(&*self.shared.router, effects, None);
        reply
    }
}

struct Conn<L> {
    shared: Arc<Shared<L>>,
    runtime: Arc<Runtime>,
    transport: &'static str,
    session: Session,
    tx: Arc<Outbox>,
    close: CancellationToken,
    conn_id: u64,
    caller: Option<Caller>,
}

impl<L: LogicApi> Conn<L> {
    /// Queues an answer, waiting (bounded) for room: while it waits, the connection reads no
    /// further requests. A connection whose queue stays full for the slow-client timeout, or
    /// that is closed meanwhile, is given up on (false).
    async fn send(&self, frame: Frame) -> bool {
        let wait = self.shared.config.slow_client_timeout;
        tokio::select! {
            biased;
            _ = self.close.cancelled() => false,
            pushed = tokio::time::timeout(wait, self.tx.push(Outbound::Frame(frame))) => match pushed {
                Ok(result) => result.is_ok(),
                Err(_elapsed) => {
                    tracing::info!(
                        queued = self.tx.queued_bytes(),
                        "answers unread for {wait:?}: closing the slow connection"
                    );
                    self.close.cancel();
                    false
                }
            },
        }
    }

    async fn send_error(
        &self,
        request_id: u32,
        code: ErrorCode,
        message: impl Into<String>,
        retry_after_ms: u32,
    ) {
        let mut error = code.to_error(message);
        error.retry_after_ms = retry_after_ms;
        self.send(Frame::new(request_id, error)).await;
    }

    async fn refuse(&self, request_id: u32, refusal: Refusal) {
        self.send_error(request_id, refusal.code, refusal.message, 0)
            .await;
    }

    fn apply(&self, effects: Effects) {
        route_effects(&*self.shared.router, effects, None);
    }

    /// Verifies the handshake; on success registers the connection, kicking an older one of the
    /// same device, and answers. Returns false when the connection must close.
    async fn handshake(&mut self, frame: &Frame, framed_codec: &mut FrameCodec) -> bool {
        let handshake =
            match self
                .session
                .check_handshake(frame, &self.shared.tokens, now_ms() / 1000)
            {
                Ok(handshake) => handshake,
                Err(refusal) => {
                    let close = refusal.close;
                    let code = code_label(refusal.code as i32);
                    gauges::login(code);
                    tracing::info!(
                        conn = self.conn_id,
                        transport = self.transport,
                        code,
                        "handshake refused"
                    );
                    self.refuse(frame.request_id, refusal).await;
                    return !close;
                }
            };
        let (user, device) = (handshake.user.clone(), handshake.device.clone());
        if self
            .runtime
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            gauges::login("SHUTTING_DOWN");
            tracing::info!(conn = self.conn_id, %user, %device, "handshake refused: draining");
            self.send_error(
                frame.request_id,
                ErrorCode::ShuttingDown,
                "server is draining",
                1000,
            )
            .await;
            return false;
        }
        // Register for pushes before the session opens (and reads the inbox head): an entry
        // committed in between is then either pushed or below the head the client syncs to,
        // never neither. Such pushes wait until the handshake is answered.
        self.tx.hold();
        let registration = self.shared.hub.register(
            &user,
            ConnHandle {
                id: self.conn_id,
                device: device.clone(),
                tx: self.tx.clone(),
                close: self.close.clone(),
                revision: handshake.protocol_version,
            },
        );
        let kick = || {
            Frame::push(pb::Kick {
                reason: pb::KickReason::LoggedInElsewhere as i32,
                message: format!("device {device} connected again"),
                redirect_addr: String::new(),
                retry_after_ms: 0,
            })
        };
        match registration {
            Registration::Registered { replaced } => {
                for old in replaced {
                    let _ = old.tx.try_push(Outbound::Frame(kick()));
                    old.close.cancel();
                }
                // Other gateways learn that the device is here (and drop an older connection
                // of it) before the session reads the inbox head.
                self.shared.router.connected(&user, &device).await;
            }
            Registration::Superseded => {
                self.send(kick()).await;
                return false;
            }
            Registration::TooManyConnections { limit } => {
                gauges::login("TOO_MANY_CONNECTIONS");
                tracing::info!(%user, %device, limit, "refused: too many connections of the user");
                self.send_error(
                    frame.request_id,
                    ErrorCode::TooManyConnections,
                    format!("at most {limit} connections per user"),
                    5_000,
                )
                .await;
                return false;
            }
        }
        let caller = Caller {
            user: user.clone(),
            device: device.clone(),
        };
        let mut info = match self.shared.logic.open_session(&caller).await {
            Ok(info) => info,
            Err(error) => {
                gauges::login(code_label(error.code));
                tracing::info!(conn = self.conn_id, %user, %device, code = code_label(error.code), "handshake refused");
                if let Some(device) = self.shared.hub.unregister(&user, self.conn_id) {
                    self.shared.router.disconnected(&user, &device);
                }
                self.send(Frame::new(frame.request_id, error)).await;
                return false;
            }
        };
        self.shared.hub.note_inbox(&user, info.inbox);
        // Registered before `open_session` read them: a follow change committed meanwhile
        // reaches the hub as an effect, so the two together leave the connection following the
        // right groups.
        for group in std::mem::take(&mut info.read_groups) {
            self.shared.hub.follow(&user, &group, true);
        }
        let config = &self.shared.config;
        framed_codec.set_max_body(config.max_frame_bytes);
        framed_codec.accept_compressed(handshake.zstd);
        if handshake.zstd {
            let _ = self
                .tx
                .push(Outbound::Compress(config.compression_threshold))
                .await;
        }
        let response = self.session.accept_handshake(
            &handshake,
            info,
            Announced {
                max_frame_bytes: config.max_frame_bytes,
                compression_threshold: config.compression_threshold,
            },
            format!("c{}", self.conn_id),
            now_ms(),
        );
        let span = tracing::Span::current();
        span.record("user", user.as_str());
        span.record("device", device.as_str());
        gauges::login("ok");
        tracing::info!(conn = self.conn_id, %user, %device, transport = self.transport, "session opened");
        self.caller = Some(caller);
        let answered = self.send(Frame::new(frame.request_id, response)).await;
        self.tx.release_held();
        answered
    }

    /// Runs a batch of consecutive sends and answers each.
    /// `read_at`: when the batch's first frame was read, where its latency counts from.
    async fn send_batch(&self, batch: Vec<(u32, pb::SendReq)>, read_at: Instant) {
        let span = tracing::debug_span!("send_batch", sends = batch.len());
        self.send_batch_in_span(batch, read_at)
            .instrument(span)
            .await
    }

    async fn send_batch_in_span(&self, batch: Vec<(u32, pb::SendReq)>, read_at: Instant) {
        let Some(caller) = &self.caller else { return };
        let (ids, requests): (Vec<u32>, Vec<pb::SendReq>) = batch.into_iter().unzip();
        let (replies, effects) = self.shared.logic.send_batch(caller, requests).await;
        // Ack the senders first, then push: the ack is what the sender is waiting on.
        for (request_id, reply) in ids.into_iter().zip(replies) {
            match &reply {
                Ok(ack) => tracing::debug!(
                    request_id,
                    client_msg_id = %ack.client_msg_id,
                    conversation_id = %ack.conversation_id,
                    seq = ack.conversation_seq,
                    duplicate = ack.duplicate,
                    "send acked"
                ),
                Err(error) => {
                    let code = code_label(error.code);
                    gauges::request("SEND_REQ", code);
                    tracing::info!(conn = self.conn_id, user = %caller.user, request_id, code, "send refused");
                }
            }
            let frame = match reply {
                Ok(ack) => {
                    self.runtime.hot.sends_ok.increment(1);
                    self.runtime
                        .hot
                        .send_latency
                        .record(read_at.elapsed().as_secs_f64());
                    Frame::new(request_id, ack)
                }
                Err(error) => Frame::new(request_id, error),
            };
            if !self.send(frame).await {
                break;
            }
        }
        // Every delivery of a send batch is a message entry; the sender's own entries reach
        // this connection through the acks above.
        route_effects(
            &*self.shared.router,
            effects,
            Some(Origin {
                user: &caller.user,
                conn_id: self.conn_id,
            }),
        );
    }

    async fn request(&self, frame: &Frame) {
        let op = frame.known_op().map_or("unknown", |op| op.as_str_name());
        let span = tracing::debug_span!("request", op, request_id = frame.request_id);
        self.request_in_span(frame).instrument(span).await
    }

    async fn request_in_span(&self, frame: &Frame) {
        let Some(caller) = &self.caller else { return };
        let op = op_label(frame.known_op());
        let body = match frame.decode_body() {
            Ok(body) => body,
            Err(e) => {
                let code = code_label(e.code() as i32);
                gauges::request(op, code);
                tracing::info!(conn = self.conn_id, user = %caller.user, op, code, "request refused");
                self.send_error(frame.request_id, e.code(), e.to_string(), 0)
                    .await;
                return;
            }
        };
        let (reply, effects) = self.shared.logic.handle(caller, body).await;
        match reply {
            Ok(Some(body)) => {
                gauges::request(op, "ok");
                self.send(Frame::new(frame.request_id, body)).await;
            }
            Ok(None) => gauges::request(op, "ok"),
            Err(error) => {
                let code = code_label(error.code);
                gauges::request(op, code);
                tracing::info!(conn = self.conn_id, user = %caller.user, op, code, "request refused");
                self.send(Frame::new(frame.request_id, error)).await;
            }
        }
        tracing::debug!(deliveries = effects.deliveries.len(), "answered");
        self.apply(effects);
    }
}

/// Serves one connection until it closes.
async fn connection<L: LogicApi, S: ByteStream>(
    stream: S,
    shared: Arc<Shared<L>>,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
    accepted: Instant,
    transport: &'static str,
) {
    gauges::connection(transport, 1.0);
    let (read_half, write_half) = stream.split();
    let tx = Arc::new(Outbox::new(
        OUTBOUND_QUEUE_ITEMS,
        shared.config.outbound_queue_bytes,
        shared
            .config
            .outbound_queue_bytes
            .saturating_mul(PUSH_QUEUE_FACTOR),
    ));
    let close = CancellationToken::new();
    let kill_writer = CancellationToken::new();
    let writer_task = tokio::spawn(writer::<S>(
        write_half,
        tx.clone(),
        shared.config.max_frame_bytes,
        shared.config.slow_client_timeout,
        close.clone(),
        kill_writer.clone(),
    ));
    let mut framed = FramedRead::with_capacity(read_half, FrameCodec::new(PRE_AUTH_MAX_BODY), 256);
    let conn_id = shared.hub.next_conn_id();
    let mut conn = Conn {
        session: Session::new(shared.config.session.clone(), accepted),
        shared,
        runtime,
        transport,
        tx,
        close,
        conn_id,
        caller: None,
    };

    // The heavy request paths are boxed at their await points so the future an idle connection
    // keeps alive stays small (it was 3 KB with them inline).
    // Why the connection ended, for its closing log line.
    let mut end = "closed by the client";
    'conn: loop {
        let deadline = tokio::time::Instant::from_std(conn.session.deadline());
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                end = "server stopping";
                break
            }
            _ = conn.close.cancelled() => {
                end = "closed by the server (kicked, drained or too slow)";
                break
            }
            _ = tokio::time::sleep_until(deadline) => {
                if let Some((code, message)) = conn.session.on_timer(Instant::now()) {
                    // A silent client is gone or half-dead: an idle close sends nothing (SPEC
                    // §8.2); a missed handshake deadline is explained.
                    end = "idle";
                    if code == ErrorCode::HandshakeTimeout {
                        end = "handshake timeout";
                        Box::pin(conn.send_error(0, code, message, 0)).await;
                    }
                    break;
                }
                continue;
            }
            next = framed.next() => next,
        };
        let read_at = Instant::now();
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                end = "undecodable stream";
                tracing::debug!(error = %e, "undecodable stream");
                Box::pin(conn.send_error(0, e.code(), e.to_string(), 0)).await;
                break;
            }
        };
        let mut pending = Some(frame);
        let mut sends: Vec<(u32, pb::SendReq)> = Vec::new();
        let mut stream_error = None;
        while let Some(frame) = pending.take() {
            let verdict = conn.session.on_frame(&frame, Instant::now());
            // Consecutive sends are batched; anything else flushes the batch first, so the
            // connection's frames are answered in the order they came.
            if verdict == Verdict::Request(pb::Op::SendReq) {
                match frame.decode_body() {
                    Ok(Body::SendReq(request)) => sends.push((frame.request_id, request)),
                    _ => {
                        Box::pin(conn.send_error(
                            frame.request_id,
                            ErrorCode::BadBody,
                            "SEND_REQ body does not decode",
                            0,
                        ))
                        .await
                    }
                }
                if sends.len() < MAX_SEND_BATCH {
                    match framed.next().now_or_never() {
                        Some(Some(Ok(more))) => pending = Some(more),
                        // The stream broke right behind the sends: they are answered first,
                        // then the error, like any other frame order.
                        Some(Some(Err(e))) => stream_error = Some(e),
                        Some(None) | None => {}
                    }
                }
                continue;
            }
            if !sends.is_empty() {
                Box::pin(conn.send_batch(std::mem::take(&mut sends), read_at)).await;
            }
            match verdict {
                Verdict::Handshake => {
                    if !Box::pin(conn.handshake(&frame, framed.decoder_mut())).await {
                        end = "handshake refused";
                        break 'conn;
                    }
                }
                Verdict::Ping => {
                    // Known without a store read: the hub follows the head of every user
                    // connected to it.
                    let inbox = match &conn.caller {
                        Some(caller) => conn.shared.hub.inbox_position(&caller.user),
                        None => logic_api::InboxPosition::UNKNOWN,
                    };
                    let answer = match conn.session.pong(&frame, inbox, now_ms()) {
                        Ok(pong) => Frame::new(frame.request_id, pong),
                        Err(refusal) => {
                            Frame::new(frame.request_id, refusal.code.to_error(refusal.message))
                        }
                    };
                    Box::pin(conn.send(answer)).await;
                }
                Verdict::Goodbye => {
                    end = "goodbye";
                    break 'conn;
                }
                Verdict::Request(_) => Box::pin(conn.request(&frame)).await,
                Verdict::Reject {
                    code,
                    message,
                    retry_after_ms,
                    close,
                    connection_level,
                } => {
                    let request_id = if connection_level {
                        0
                    } else {
                        frame.request_id
                    };
                    tracing::info!(
                        conn = conn.conn_id,
                        code = code_label(code as i32),
                        "frame refused"
                    );
                    Box::pin(conn.send_error(request_id, code, message, retry_after_ms)).await;
                    if close {
                        end = "frame refused";
                        break 'conn;
                    }
                }
            }
        }
        if !sends.is_empty() {
            Box::pin(conn.send_batch(sends, read_at)).await;
        }
        if let Some(e) = stream_error {
            end = "undecodable stream";
            tracing::debug!(error = %e, "undecodable stream");
            Box::pin(conn.send_error(0, e.code(), e.to_string(), 0)).await;
            break;
        }
        // Kicked, too slow, or the writer gave up while this frame was handled.
        if conn.close.is_cancelled() {
            end = "closed by the server (kicked, drained or too slow)";
            break;
        }
    }

    conn.session.close();
    if let Some(caller) = &conn.caller
        && let Some(device) = conn.shared.hub.unregister(&caller.user, conn.conn_id)
    {
        conn.shared.router.disconnected(&caller.user, &device);
    }
    if let Some(caller) = &conn.caller {
        tracing::info!(
            conn = conn.conn_id,
            user = %caller.user,
            device = %caller.device,
            reason = end,
            secs = accepted.elapsed().as_secs(),
            "session closed"
        );
    } else {
        tracing::debug!(reason = end, "connection closed before its handshake");
    }
    gauges::connection(conn.transport, -1.0);
    // Let the writer flush what is queued (the closing error, a kick), then end; a writer
    // that cannot flush within the bound is killed, which resets the socket and frees its
    // buffers, so a peer that does not read holds nothing after its connection ended.
    conn.tx.close();
    drop(conn);
    // The read half stays open while the writer flushes: closing a socket with unread input
    // makes the kernel send a reset, and a reset can destroy the closing error before the
    // client reads it (a valid frame and a broken one in the same write, for instance).
    let read_half = framed.into_inner();
    // Boxed: this runs once, at the end, and its timers would otherwise be part of every idle
    // connection's state.
    Box::pin(finish(read_half, writer_task, kill_writer)).await;
}

/// The end of a connection: waits (bounded) for the writer to flush, then lingers reading.
async fn finish(
    mut read_half: impl AsyncRead + Unpin,
    mut writer_task: tokio::task::JoinHandle<WriterEnd>,
    kill_writer: CancellationToken,
) {
    match tokio::time::timeout(WRITER_FLUSH_TIMEOUT, &mut writer_task).await {
        Ok(Ok(WriterEnd::Drained)) => {
            // The writer sent FIN. Discard what the peer still sends until it closes too, for
            // a bounded time, so our close does not reset what it has not read yet.
            let _ = tokio::time::timeout(LINGER_TIMEOUT, discard_until_eof(&mut read_half)).await;
        }
        Ok(_) => {}
        Err(_elapsed) => {
            kill_writer.cancel();
            let _ = writer_task.await;
        }
    }
}

/// Reads and drops input until the peer closes its side (or the socket fails).
async fn discard_until_eof(read_half: &mut (impl AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt as _;
    let mut scrap = [0u8; 1024];
    while let Ok(1..) = read_half.read(&mut scrap).await {}
}

/// The HTTP tunnel's sessions are served by the gateway like any other connection, counted
/// against the same connection limit.
impl<L: LogicApi> crate::transport::http_tunnel::SessionHost for Gateway<L> {
    fn try_serve(&self, stream: tokio::io::DuplexStream, peer: String) -> bool {
        self.try_serve_stream(crate::transport::AnyStream(stream), &peer)
    }
}

#[cfg(test)]
mod idle_state {
    use super::*;
    use logic_api::{Reply, SendReply, SessionInfo};
    use tokio::net::{TcpListener, TcpStream};

    /// A logic tier whose futures are large: if any of its calls were awaited inline in the
    /// connection future instead of boxed, every idle connection would carry its state.
    struct HeavyLogic;

    async fn heavy<T>(value: T) -> T {
        let scratch = [7u8; 8192];
        tokio::task::yield_now().await;
        std::hint::black_box(&scratch);
        value
    }

    impl LogicApi for HeavyLogic {
        async fn open_session(&self, _: &Caller) -> Result<SessionInfo, pb::Error> {
            heavy(Err(pb::Error::default())).await
        }
        async fn send_batch(&self, _: &Caller, _: Vec<pb::SendReq>) -> (Vec<SendReply>, Effects) {
            heavy((Vec::new(), Effects::default())).await
        }
        async fn handle(&self, _: &Caller, _: Body) -> (Reply, Effects) {
            heavy((Ok(None), Effects::default())).await
        }
    }

    /// Every idle connection holds its connection and writer futures at their largest state:
    /// paths taken rarely (closing, pings, errors, writes, every call into the logic tier) are
    /// boxed so they do not make every connection pay for them. W2 measures the result; this
    /// keeps it from creeping back.
    #[tokio::test]
    async fn an_idle_connection_keeps_its_futures_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        let hub = Hub::with_limits(1 << 20, 16);
        let shared = Arc::new(Shared {
            logic: HeavyLogic,
            router: hub.clone(),
            hub,
            tokens: TokenKey::new(vec![7u8; 40]),
            config: GatewayConfig::default(),
        });
        let runtime = Arc::new(Runtime {
            draining: std::sync::atomic::AtomicBool::new(false),
            hot: HotMetrics::new(),
        });
        let conn = connection(
            server_side,
            shared,
            runtime,
            CancellationToken::new(),
            Instant::now(),
            "tcp",
        );
        let (_read, write) = client.into_split();
        let outbox = Arc::new(Outbox::new(1024, 1 << 20, 4 << 20));
        let kill = CancellationToken::new();
        let writer = writer::<TcpStream>(
            write,
            outbox,
            1 << 20,
            Duration::from_secs(1),
            kill.clone(),
            kill,
        );
        let (conn_bytes, writer_bytes) = (size_of_val(&conn), size_of_val(&writer));
        assert!(conn_bytes <= 1_200, "connection future: {conn_bytes} bytes");
        assert!(writer_bytes <= 480, "writer future: {writer_bytes} bytes");
    }
}
