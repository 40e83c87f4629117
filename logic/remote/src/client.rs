//! The gateway's side: [`RemoteLogic`], the logic API of remote nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt as _};
use im_protocol::{Body, ErrorCodeExt as _, pb};
use logic_api::{Caller, Effects, LogicApi, Reply, SendReply as ApiSendReply, SessionInfo};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::policy::{self, Attempts, Failure, Health, Next, Redial};
use crate::server::codec;
use crate::wire::{
    Call, ClientBody, Empty, Outcome, RpcRequest, RpcResponse, SendBatch, SendOutcome,
};

/// How to reach the logic tier.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// The logic nodes, `host:port`.
    pub nodes: Vec<String>,
    /// The deadline of one attempt (one node); past it the outcome is unknown.
    pub attempt_timeout: Duration,
    /// How long opening a connection to a node may take; a node that does not accept within
    /// it counts as down (the call is *not sent* there) and is dialled again only after a
    /// backoff ([`policy::Redial`]).
    pub connect_timeout: Duration,
    /// The time one call may take over all its attempts before the client is told to retry.
    pub call_budget: Duration,
    /// Calls in flight per node connection; more wait for a slot (backpressure).
    pub max_in_flight: usize,
    /// How often an idle or busy connection is pinged.
    pub ping_every: Duration,
    /// A connection whose ping is unanswered this long is dead: its calls in flight end with
    /// an unknown outcome at once (and are repeated elsewhere), without waiting out their
    /// deadlines. This, not the call deadline, is what detects a frozen or vanished node.
    pub ping_timeout: Duration,
}

impl RemoteOptions {
    /// Defaults for `nodes`: 10 s per attempt, 30 s per call, 2 s to connect, 1024 in flight
    /// per node, a ping every 500 ms that must be answered within 1.5 s.
    pub fn new(nodes: Vec<String>) -> RemoteOptions {
        RemoteOptions {
            nodes,
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            call_budget: Duration::from_secs(30),
            max_in_flight: 1024,
            ping_every: Duration::from_millis(500),
            ping_timeout: Duration::from_millis(1500),
        }
    }
}

/// One multiplexed connection to a node.
struct Connection {
    to_send: mpsc::Sender<RpcRequest>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<RpcResponse>>>>,
    slots: Arc<Semaphore>,
    closed: CancellationToken,
}

impl Connection {
    async fn open(address: &str, options: &RemoteOptions) -> std::io::Result<Connection> {
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (to_send, mut queued) = mpsc::channel::<RpcRequest>(options.max_in_flight);
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<RpcResponse>>>> = Arc::default();
        let closed = CancellationToken::new();
        let mut sink = FramedWrite::new(write, codec());
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    () = writer_closed.cancelled() => break,
                    request = queued.recv() => request,
                };
                let Some(request) = request else { break };
                if sink
                    .feed(bytes::Bytes::from(request.encode_to_vec()))
                    .await
                    .is_err()
                {
                    break;
                }
                while let Ok(request) = queued.try_recv() {
                    if sink
                        .feed(bytes::Bytes::from(request.encode_to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if SinkExt::<bytes::Bytes>::flush(&mut sink).await.is_err() {
                    break;
                }
            }
            writer_closed.cancel();
        });
        let mut frames = FramedRead::new(read, codec());
        let (reader_waiting, reader_closed) = (waiting.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    () = reader_closed.cancelled() => break,
                    frame = frames.next() => frame,
                };
                let Some(Ok(bytes)) = frame else { break };
                let Ok(response) = RpcResponse::decode(bytes.freeze()) else {
                    tracing::warn!("a logic node sent a frame that is not a response; closing");
                    break;
                };
                let waiter = reader_waiting
                    .lock()
                    .ok()
                    .and_then(|mut waiting| waiting.remove(&response.id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            reader_closed.cancel();
            // Every call still waiting learns that its outcome is unknown.
            if let Ok(mut waiting) = reader_waiting.lock() {
                waiting.clear();
            }
        });
        let connection = Connection {
            to_send,
            waiting,
            slots: Arc::new(Semaphore::new(options.max_in_flight)),
            closed,
        };
        tokio::spawn(keep_alive(
            connection.to_send.clone(),
            connection.waiting.clone(),
            connection.closed.clone(),
            options.ping_every,
            options.ping_timeout,
        ));
        Ok(connection)
    }

    async fn call(&self, request: RpcRequest, timeout: Duration) -> Result<RpcResponse, Failure> {
        let Ok(_slot) = self.slots.acquire().await else {
            return Err(Failure::NotSent);
        };
        let id = request.id;
        let (answer, answered) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(id, answer);
        }
        if self.closed.is_cancelled() || self.to_send.send(request).await.is_err() {
            self.forget(id);
            return Err(Failure::NotSent);
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(Failure::OutcomeUnknown),
            Err(_) => {
                self.forget(id);
                Err(Failure::OutcomeUnknown)
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(&id);
        }
    }
}

/// Pings a connection until it closes; declares it dead (closed, every waiting call told its
/// outcome is unknown) when a ping goes unanswered for `timeout`.
async fn keep_alive(
    to_send: mpsc::Sender<RpcRequest>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<RpcResponse>>>>,
    closed: CancellationToken,
    every: Duration,
    timeout: Duration,
) {
    // Ping ids count down from the top, far from the calls' ids.
    let mut next_id = u64::MAX;
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let id = next_id;
        next_id -= 1;
        let (answer, answered) = oneshot::channel();
        if let Ok(mut waiting) = waiting.lock() {
            waiting.insert(id, answer);
        }
        let ping = RpcRequest {
            id,
            call: Some(Call::Ping(Empty {})),
            ..RpcRequest::default()
        };
        // A full send queue is not a dead node: the ping waits its turn within the timeout.
        let sent = tokio::time::timeout(timeout, to_send.send(ping)).await;
        let alive = match sent {
            Ok(Ok(())) => matches!(tokio::time::timeout(timeout, answered).await, Ok(Ok(_))),
            _ => false,
        };
        if !alive {
            if !closed.is_cancelled() {
                tracing::warn!("a logic node stopped answering pings; its calls move elsewhere");
            }
            closed.cancel();
            if let Ok(mut waiting) = waiting.lock() {
                waiting.clear();
            }
            return;
        }
    }
}

/// A node and its connection, opened on first use and again after it breaks.
struct Node {
    address: String,
    slot: tokio::sync::Mutex<Slot>,
}

/// A node's connection, and when it may be dialled again.
#[derive(Default)]
struct Slot {
    connection: Option<Arc<Connection>>,
    redial: Redial,
}

impl Node {
    /// The node's live connection, dialled now if there is none and the backoff allows;
    /// `None`: no connection (a call counts as not sent).
    async fn connection(&self, options: &RemoteOptions) -> Option<Arc<Connection>> {
        let mut slot = self.slot.lock().await;
        if let Some(connection) = slot.connection.as_ref()
            && !connection.closed.is_cancelled()
        {
            return Some(connection.clone());
        }
        slot.connection = None;
        if !slot.redial.may_dial(Instant::now()) {
            return None;
        }
        match Connection::open(&self.address, options).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                slot.redial.connected();
                slot.connection = Some(connection.clone());
                Some(connection)
            }
            Err(error) => {
                tracing::debug!(node = %self.address, %error, "cannot connect to a logic node");
                slot.redial.failed(Instant::now());
                None
            }
        }
    }
}

/// The logic API of remote logic nodes (see the crate docs and [`policy`]).
pub struct RemoteLogic {
    nodes: Vec<Node>,
    names: Vec<String>,
    options: RemoteOptions,
    health: Mutex<Health>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for RemoteLogic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLogic")
            .field("nodes", &self.names)
            .finish_non_exhaustive()
    }
}

impl RemoteLogic {
    /// A client of the nodes in `options`; connects on first use.
    pub fn new(options: RemoteOptions) -> RemoteLogic {
        RemoteLogic {
            nodes: options
                .nodes
                .iter()
                .map(|address| Node {
                    address: address.clone(),
                    slot: tokio::sync::Mutex::default(),
                })
                .collect(),
            names: options.nodes.clone(),
            health: Mutex::new(Health::new(options.nodes.len())),
            options,
            next_id: AtomicU64::new(1),
        }
    }

    /// Runs one call: the first healthy node in the caller's order, then the others as the
    /// policy says. `Err` is the protocol error to answer the client with.
    async fn invoke(
        &self,
        caller: &Caller,
        call: Call,
        repeatable: bool,
    ) -> Result<RpcResponse, pb::Error> {
        let now = Instant::now();
        let order = policy::node_order(&caller.user, &self.names);
        let order = match self.health.lock() {
            Ok(health) => health.arrange(order, now),
            Err(_) => order,
        };
        let mut attempts = Attempts::new(order, now, self.options.call_budget, repeatable);
        let Some(mut node) = attempts.first() else {
            return Err(unavailable("no logic node is configured", false));
        };
        let request = RpcRequest {
            id: 0,
            deadline_ms: u32::try_from(self.options.attempt_timeout.as_millis())
                .unwrap_or(u32::MAX),
            user: caller.user.clone(),
            device: caller.device.clone(),
            call: Some(call),
        };
        loop {
            let mut attempt = request.clone();
            attempt.id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let result = match self.nodes[node].connection(&self.options).await {
                None => Err(Failure::NotSent),
                Some(connection) => {
                    match connection.call(attempt, self.options.attempt_timeout).await {
                        // A node shutting down did not run it: as good as not sent.
                        Ok(RpcResponse {
                            outcome: Some(Outcome::NotTaken(_)),
                            ..
                        }) => Err(Failure::NotSent),
                        result => result,
                    }
                }
            };
            match result {
                Ok(response) => {
                    if let Ok(mut health) = self.health.lock() {
                        health.succeeded(node);
                    }
                    return Ok(response);
                }
                Err(failure) => {
                    tracing::debug!(node = %self.names[node], ?failure, "logic call failed");
                    if let Ok(mut health) = self.health.lock() {
                        health.failed(node, Instant::now());
                    }
                    match attempts.after(failure, Instant::now()) {
                        Next::Try(next) => node = next,
                        Next::GiveUp { outcome_unknown } => {
                            return Err(unavailable(
                                "the logic tier did not answer",
                                outcome_unknown,
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// The retryable answer when no node answered; the client resends with the same ids.
fn unavailable(why: &str, outcome_unknown: bool) -> pb::Error {
    let message = if outcome_unknown {
        format!("{why}; the request may or may not have taken effect: resend it unchanged")
    } else {
        why.to_owned()
    };
    let mut error = pb::ErrorCode::Unavailable.to_error(message);
    error.retry_after_ms = 500;
    error
}

fn unexpected(what: &str) -> pb::Error {
    pb::ErrorCode::Internal.to_error(format!("a logic node answered {what} with something else"))
}

impl LogicApi for RemoteLogic {
    async fn open_session(&self, caller: &Caller) -> Result<SessionInfo, pb::Error> {
        let response = self
            .invoke(caller, Call::OpenSession(Empty {}), true)
            .await?;
        match response.outcome {
            Some(Outcome::Session(session)) => Ok(session.into()),
            Some(Outcome::Refused(error)) => Err(error),
            _ => Err(unexpected("a session open")),
        }
    }

    async fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<ApiSendReply>, Effects) {
        let count = requests.len();
        let all = |error: pb::Error| (0..count).map(|_| Err(error.clone())).collect::<Vec<_>>();
        let response = match self
            .invoke(caller, Call::SendBatch(SendBatch { requests }), true)
            .await
        {
            Ok(response) => response,
            Err(error) => return (all(error), Effects::default()),
        };
        let effects = response.effects.map(Effects::from).unwrap_or_default();
        match response.outcome {
            Some(Outcome::Sends(replies)) if replies.replies.len() == count => {
                let replies = replies
                    .replies
                    .into_iter()
                    .map(|reply| match reply.outcome {
                        Some(SendOutcome::Ack(ack)) => Ok(ack),
                        Some(SendOutcome::Error(error)) => Err(error),
                        None => Err(unexpected("a send")),
                    })
                    .collect();
                (replies, effects)
            }
            Some(Outcome::Refused(error)) => (all(error), effects),
            _ => (all(unexpected("a send batch")), effects),
        }
    }

    async fn handle(&self, caller: &Caller, body: Body) -> (Reply, Effects) {
        let repeatable = policy::repeatable(&body);
        let response = match self
            .invoke(caller, Call::Handle(ClientBody::of(&body)), repeatable)
            .await
        {
            Ok(response) => response,
            Err(error) => return (Err(error), Effects::default()),
        };
        let effects = response.effects.map(Effects::from).unwrap_or_default();
        let reply = match response.outcome {
            Some(Outcome::Body(body)) => body.decode().map(Some),
            Some(Outcome::None(_)) => Ok(None),
            Some(Outcome::Refused(error)) => Err(error),
            _ => Err(unexpected("a request")),
        };
        (reply, effects)
    }
}
