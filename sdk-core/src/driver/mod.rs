//! The tokio driver: runs a [`Client`] state machine over a byte stream from a [`Connector`].
//! It only moves bytes, sleeps until the machine's next timeout and carries commands in and
//! events out; every decision is the machine's.
//!
//! The app talks to it through a [`ClientHandle`] (typed methods, each answered in the client
//! core's own types) and reads what happens from an [`EventStream`]. It runs on a tokio
//! runtime the app passes ([`start`]) or on a small one of its own ([`start_with_own_runtime`],
//! for apps without tokio: the handle's futures only wait on channels, so any executor, e.g.
//! `futures::executor::block_on`, can drive them, and [`EventStream::blocking_recv`] reads
//! events from a plain thread).
//!
//! # Backpressure
//!
//! Events go to a bounded queue ([`DriverOptions::event_capacity`]). When the app falls behind
//! and the queue is full, the driver keeps the machine's further events in order and stops
//! reading frames from the server, so the server is held back by TCP instead of the client
//! buffering without bound. Everything else keeps running: timers, heartbeats, acks, the app's
//! commands. The machine is told ([`Client::pause_receiving`]), so the unread pongs do not make
//! it declare the link dead. Once the app has taken events again the driver hands over the held
//! ones, in order, and reads on. Nothing is dropped. (A server closes a connection whose data
//! stays unread for long, 15 s by default; then the client reconnects and syncs, and still
//! nothing is lost.)
//!
//! One exception: the answer to a request comes in the same stream, behind the frames held
//! back. While the app awaits one, the driver reads on (keeping the events in memory), so an
//! app that awaits a request from its event loop cannot deadlock itself; what that holds is
//! bounded by what the server had queued ahead of the answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use im_protocol::FrameCodec;
use im_protocol::unix_time_ms as now_ms;
use tokio::io::{AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder as _, FramedRead};

use crate::machine::{Action, Client, ClientConfig, ConnectionState, Event, StopReason};
use crate::store::{LocalConversation, LocalMessage, LocalResult, LocalStore, Recipient};
use crate::transport::{ByteStream, Connector, ServerAddress, TcpConnector};
mod handle;

pub use handle::ClientHandle;

use crate::types::{Request, RequestError, RequestHandle, Response};

/// Asked for a fresh token when the server says the current one expired.
///
/// Synchronous on purpose (what uniffi callback interfaces want): the driver calls it on a
/// blocking thread, so a slow refresh (a network call to the app's own server) never stalls
/// the client.
pub trait TokenRefresher: Send + Sync {
    /// A fresh token, or `None` to give up (the client then stays stopped until
    /// [`ClientHandle::set_token`]).
    fn refresh(&self) -> Option<String>;
}

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the driver (the machine's are in [`ClientConfig`]).
#[derive(Clone)]
pub struct DriverOptions {
    /// Opens the byte streams to the server (default: [`TcpConnector`]).
    pub connector: Arc<dyn Connector>,
    /// Asked for a fresh token when the current one expired (default: none; the client stops
    /// with [`StopReason::TokenExpired`] until the app calls [`ClientHandle::set_token`]).
    pub token_refresher: Option<Arc<dyn TokenRefresher>>,
    /// Events the app may leave unread before the driver stops reading from the server (see
    /// the module's "Backpressure").
    pub event_capacity: usize,
}

impl Default for DriverOptions {
    fn default() -> DriverOptions {
        DriverOptions {
            connector: Arc::new(TcpConnector),
            token_refresher: None,
            event_capacity: 4096,
        }
    }
}

enum Command {
    Send {
        recipient: Recipient,
        content_type: u32,
        content: Vec<u8>,
        reply: oneshot::Sender<LocalResult<LocalMessage>>,
    },
    Retry {
        local_id: u64,
        reply: oneshot::Sender<LocalResult<bool>>,
    },
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Typing {
        conversation_id: String,
        typing: bool,
    },
    History {
        conversation_id: String,
        before_seq: u64,
        limit: u32,
        reply: oneshot::Sender<LocalResult<Vec<LocalMessage>>>,
    },
    Conversations {
        reply: oneshot::Sender<LocalResult<Vec<LocalConversation>>>,
    },
    State {
        reply: oneshot::Sender<(ConnectionState, u64)>,
    },
    SetToken(String),
    NetworkChanged,
    Background(bool),
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Why a call on the [`ClientHandle`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The client task has stopped.
    #[error("the client has shut down")]
    Closed,
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] crate::store::LocalStoreError),
    /// The request failed (the server refused it, or there was no connection to carry it).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The client's own runtime could not be started ([`start_with_own_runtime`]).
    #[error("cannot start the client's runtime: {0}")]
    Runtime(String),
}

/// The events of a running client, in the order they happened. Read them steadily: while the
/// queue is full the client stops reading from the server (see the module's "Backpressure").
pub struct EventStream {
    events: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the client has stopped and every event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event, waiting on the calling thread (for apps without an async runtime). Must
    /// not be called from inside an async task.
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// The next event if one is waiting (`None` also once the client has stopped).
    pub fn try_recv(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl futures::Stream for EventStream {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// Starts a client for `server` with `token` on `runtime` (the app's tokio runtime); returns
/// its handle and its event stream.
pub fn start<S: LocalStore>(
    server: ServerAddress,
    token: String,
    config: ClientConfig,
    store: S,
    options: DriverOptions,
    runtime: &tokio::runtime::Handle,
) -> Result<(ClientHandle, EventStream), DriverError> {
    let (task, handle, events) = prepare(server, token, config, store, options)?;
    runtime.spawn(task);
    Ok((handle, events))
}

/// Like [`start`], on a small runtime of the client's own (one thread), for apps that do not
/// run tokio. The runtime stops with the client: on [`ClientHandle::shutdown`], or when the
/// last handle is dropped.
pub fn start_with_own_runtime<S: LocalStore>(
    server: ServerAddress,
    token: String,
    config: ClientConfig,
    store: S,
    options: DriverOptions,
) -> Result<(ClientHandle, EventStream), DriverError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sdk-core-client")
        .build()
        .map_err(|e| DriverError::Runtime(e.to_string()))?;
    let (task, handle, events) = prepare(server, token, config, store, options)?;
    std::thread::Builder::new()
        .name("sdk-core-client".into())
        .spawn(move || {
            runtime.block_on(task);
            // A token refresh may still be running on a blocking thread; do not wait for the
            // app's callback to return.
            runtime.shutdown_background();
        })
        .map_err(|e| DriverError::Runtime(e.to_string()))?;
    Ok((handle, events))
}

/// The client task, ready to be spawned, and the app's ends of its channels.
fn prepare<S: LocalStore>(
    server: ServerAddress,
    token: String,
    config: ClientConfig,
    store: S,
    options: DriverOptions,
) -> Result<(BoxFuture<'static, ()>, ClientHandle, EventStream), DriverError> {
    let mut client = Client::new(config, store, Instant::now())?;
    client.set_token(token, Instant::now());
    client.connect(Instant::now());
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
    let task = Box::pin(run(client, server, options, commands_rx, events_tx));
    Ok((
        task,
        ClientHandle {
            commands: commands_tx,
        },
        EventStream { events: events_rx },
    ))
}

struct Link {
    reader: FramedRead<ReadHalf<Box<dyn ByteStream>>, FrameCodec>,
    writer: WriteHalf<Box<dyn ByteStream>>,
}

type Connecting = BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>>;

/// Events for the app, on their way into its bounded queue.
struct AppEvents {
    queue: mpsc::Sender<Event>,
    /// Events the queue had no room for, oldest first. While any wait here, the driver reads
    /// no frames (backpressure).
    held: VecDeque<Event>,
}

impl AppEvents {
    /// Queues `event` behind any held ones (order is kept).
    fn push(&mut self, event: Event) {
        self.held.push_back(event);
    }

    /// Moves held events into the app's queue while it has room.
    fn flush(&mut self) {
        while let Some(event) = self.held.pop_front() {
            match self.queue.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.held.push_front(event);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    // Nobody listens any more: keep running for the handle's callers.
                    self.held.clear();
                    return;
                }
            }
        }
    }

    fn blocked(&self) -> bool {
        !self.held.is_empty()
    }
}

async fn run<S: LocalStore>(
    mut client: Client<S>,
    mut server: ServerAddress,
    options: DriverOptions,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    let DriverOptions {
        connector,
        token_refresher,
        ..
    } = options;
    let mut events = AppEvents {
        queue: events,
        held: VecDeque::new(),
    };
    let mut link: Option<Link> = None;
    let mut connecting: Option<Connecting> = None;
    // Resolves when the connector knows a better route than the current connection's; then
    // the session moves as soon as the machine allows it (`move_wanted`).
    let mut better_route: Option<BoxFuture<'static, ()>> = None;
    let mut move_wanted = false;
    let mut refreshing: Option<JoinHandle<Option<String>>> = None;
    let mut waiting: HashMap<RequestHandle, oneshot::Sender<Result<Response, RequestError>>> =
        HashMap::new();
    let mut codec = FrameCodec::default();
    let mut out = BytesMut::new();
    let mut shutdown_reply: Option<oneshot::Sender<()>> = None;
    let mut stopping = false;

    loop {
        // Carry out the machine's wishes.
        while let Some(action) = client.poll_action() {
            match action {
                Action::Connect => {
                    link = None;
                    better_route = None;
                    move_wanted = false;
                    if let Some(to) = client.take_redirect() {
                        tracing::info!(from = %server, to = %to, "the server sent this client to another address");
                        server = to;
                    }
                    let attempt = connector.connect(&server);
                    connecting = Some(Box::pin(async move {
                        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
                            .await
                            .unwrap_or_else(|_| {
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "connect timed out",
                                ))
                            })
                    }));
                }
                Action::Disconnect => {
                    if let Some(mut l) = link.take() {
                        // Flush what is queued (a goodbye) before closing.
                        while let Some(frame) = client.poll_transmit() {
                            let _ = codec.encode(&frame, &mut out);
                        }
                        let _ = l.writer.write_all(&out).await;
                        let _ = l.writer.shutdown().await;
                    }
                    out.clear();
                    connecting = None;
                }
            }
        }
        if let Some(l) = link.as_mut() {
            while let Some(frame) = client.poll_transmit() {
                if let Err(e) = codec.encode(&frame, &mut out) {
                    tracing::warn!(error = %e, "dropping an unencodable frame");
                }
            }
            if !out.is_empty() {
                let written = l.writer.write_all(&out).await;
                out.clear();
                if written.is_err() {
                    link = None;
                    client.on_disconnected(Instant::now());
                    continue;
                }
            }
        } else {
            // Frames for a connection that no longer exists are void.
            while client.poll_transmit().is_some() {}
        }
        // Answers go to their callers whatever the app's event queue holds.
        while let Some((handle, result)) = client.poll_response() {
            if let Some(reply) = waiting.remove(&handle) {
                let _ = reply.send(result);
            }
        }
        while let Some(event) = client.poll_event() {
            if let Event::State(ConnectionState::Stopped(StopReason::TokenExpired)) = &event
                && let Some(refresher) = &token_refresher
                && refreshing.is_none()
            {
                let refresher = refresher.clone();
                refreshing = Some(tokio::task::spawn_blocking(move || refresher.refresh()));
            }
            events.push(event);
        }
        events.flush();
        if let Some(reply) = shutdown_reply.take() {
            let _ = reply.send(());
            return;
        }
        if stopping {
            return;
        }
        // Hold the server back while the app is behind on events, unless the app awaits an
        // answer: it comes behind the frames held back, and an app that awaits it before
        // reading on would otherwise wait forever.
        // (A caller that gave up waiting no longer counts.)
        waiting.retain(|_, reply| !reply.is_closed());
        let hold_back = events.blocked() && waiting.is_empty();
        let now = Instant::now();
        if hold_back {
            client.pause_receiving(now);
        } else {
            client.resume_receiving(now);
        }
        if move_wanted && link.is_some() && client.move_connection(now) {
            move_wanted = false;
            continue;
        }

        let deadline = client.next_timeout().map(tokio::time::Instant::from_std);
        let reading = link.is_some() && !hold_back;
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else {
                    // Every handle is gone: nobody can use the client any more. Say goodbye
                    // (the next turn of the loop writes it) and stop.
                    client.disconnect();
                    stopping = true;
                    continue;
                };
                let now = Instant::now();
                match command {
                    Command::Send { recipient, content_type, content, reply } => {
                        let _ = reply.send(client.send(recipient, content_type, content, now, now_ms()));
                    }
                    Command::Retry { local_id, reply } => {
                        let _ = reply.send(client.retry(local_id, now));
                    }
                    Command::Request { request, reply } => {
                        let handle = client.request(request, now);
                        waiting.insert(handle, reply);
                    }
                    Command::Typing { conversation_id, typing } => client.typing(&conversation_id, typing, now),
                    Command::History { conversation_id, before_seq, limit, reply } => {
                        let _ = reply.send(client.local_history(&conversation_id, before_seq, limit));
                    }
                    Command::Conversations { reply } => {
                        let _ = reply.send(client.local_conversations());
                    }
                    Command::State { reply } => {
                        let _ = reply.send((client.state(), client.cursor()));
                    }
                    Command::SetToken(token) => client.set_token(token, now),
                    Command::NetworkChanged => client.network_changed(now),
                    Command::Background(background) => client.set_background(background, now),
                    Command::Shutdown { reply } => {
                        client.disconnect();
                        shutdown_reply = Some(reply);
                    }
                }
            }
            connected = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                let now = Instant::now();
                match connected {
                    Ok(stream) => {
                        let (r, w) = tokio::io::split(stream);
                        let mut read_codec = FrameCodec::default();
                        read_codec.accept_compressed(true);
                        link = Some(Link { reader: FramedRead::new(r, read_codec), writer: w });
                        better_route = Some(connector.better_route());
                        client.on_connected(now);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %server, "connect failed");
                        client.on_disconnected(now);
                    }
                }
            }
            frame = async { link.as_mut().expect("guarded").reader.next().await }, if reading => {
                let now = Instant::now();
                match frame {
                    Some(Ok(frame)) => client.on_frame(frame, now),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "bad stream from the server");
                        link = None;
                        client.on_disconnected(now);
                    }
                    None => {
                        link = None;
                        client.on_disconnected(now);
                    }
                }
            }
            () = async { better_route.as_mut().expect("guarded").await }, if better_route.is_some() => {
                better_route = None;
                move_wanted = link.is_some();
            }
            permit = events.queue.reserve(), if events.blocked() => {
                // The app took an event: hand over the oldest held one (the next turn of the
                // loop moves the rest that fit, and reads again once none are held).
                match permit {
                    Ok(permit) => {
                        if let Some(event) = events.held.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => events.held.clear(),
                }
            }
            token = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => {
                refreshing = None;
                // A refresher that panicked gave no token: the client stays stopped.
                if let Ok(Some(token)) = token {
                    client.set_token(token, Instant::now());
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                client.on_timeout(Instant::now());
            }
        }
    }
}
