//! The tokio driver: runs a [`Client`] state machine over a TCP connection. It only moves bytes,
//! sleeps until the machine's next timeout and carries commands in and events out; every
//! decision is the machine's.

use im_protocol::unix_time_ms as now_ms;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt as _;
use im_protocol::{Body, FrameCodec, pb};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder as _, FramedRead};

use crate::machine::{
    Action, Client, ClientConfig, ConnectionState, Event, RequestError, RequestHandle, StopReason,
};
use crate::store::{LocalConversation, LocalMessage, LocalResult, LocalStore, Recipient};

/// Asked for a fresh token when the server says the current one expired; `None` = give up.
pub type TokenRefresher =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        body: Body,
        reply: oneshot::Sender<Result<Body, RequestError>>,
    },
    MarkRead {
        conversation_id: String,
        seq: u64,
        reply: oneshot::Sender<Result<Body, RequestError>>,
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

/// Why a command could not reach the client task.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The client task has stopped.
    #[error("the client has shut down")]
    Closed,
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] crate::store::LocalStoreError),
    /// The request failed.
    #[error("request failed: {0:?}")]
    Request(RequestError),
}

/// The app's handle on a running client. Cheap to clone.
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
}

impl ClientHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| DriverError::Closed)?;
        rx.await.map_err(|_| DriverError::Closed)
    }

    /// Queues a message; returns at once with the message in state `Sending`.
    pub async fn send(
        &self,
        recipient: Recipient,
        content_type: u32,
        content: Vec<u8>,
    ) -> Result<LocalMessage, DriverError> {
        Ok(self
            .call(|reply| Command::Send {
                recipient,
                content_type,
                content,
                reply,
            })
            .await??)
    }

    /// Sends a text message.
    pub async fn send_text(
        &self,
        recipient: Recipient,
        text: &str,
    ) -> Result<LocalMessage, DriverError> {
        self.send(recipient, 0, text.as_bytes().to_vec()).await
    }

    /// Puts a failed message back into the outbox.
    pub async fn retry(&self, local_id: u64) -> Result<bool, DriverError> {
        Ok(self
            .call(|reply| Command::Retry { local_id, reply })
            .await??)
    }

    /// Any request of the protocol (history, conversations, recall, groups...); its answer.
    pub async fn request(&self, body: impl Into<Body>) -> Result<Body, DriverError> {
        let body = body.into();
        self.call(|reply| Command::Request { body, reply })
            .await?
            .map_err(DriverError::Request)
    }

    /// Marks a conversation read up to `seq`.
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<Body, DriverError> {
        let conversation_id = conversation_id.to_owned();
        self.call(|reply| Command::MarkRead {
            conversation_id,
            seq,
            reply,
        })
        .await?
        .map_err(DriverError::Request)
    }

    /// Typing indicator (dropped when offline).
    pub async fn typing(&self, conversation_id: &str, typing: bool) -> Result<(), DriverError> {
        self.commands
            .send(Command::Typing {
                conversation_id: conversation_id.to_owned(),
                typing,
            })
            .await
            .map_err(|_| DriverError::Closed)
    }

    /// Locally stored messages, newest first.
    pub async fn local_history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<LocalMessage>, DriverError> {
        let conversation_id = conversation_id.to_owned();
        Ok(self
            .call(|reply| Command::History {
                conversation_id,
                before_seq,
                limit,
                reply,
            })
            .await??)
    }

    /// History: local first; when fewer than `limit` are stored locally, pages the server and
    /// stores what it returns.
    pub async fn history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<LocalMessage>, DriverError> {
        let local = self
            .local_history(conversation_id, before_seq, limit)
            .await?;
        let contiguous = local
            .windows(2)
            .all(|w| w[0].seq == 0 || w[0].seq == w[1].seq + 1);
        let reaches_start = local.last().is_some_and(|m| m.seq == 1);
        if (local.len() >= limit as usize || reaches_start) && contiguous {
            return Ok(local);
        }
        let request = pb::HistoryReq {
            conversation_id: conversation_id.to_owned(),
            anchor_seq: before_seq,
            direction: pb::HistoryDirection::Older as i32,
            limit,
        };
        match self.request(request).await {
            // The machine stored the page; read it back in the local shape.
            Ok(_) | Err(DriverError::Request(RequestError::NotConnected)) => {
                self.local_history(conversation_id, before_seq, limit).await
            }
            Err(e) => Err(e),
        }
    }

    /// Locally stored conversations, most recent first.
    pub async fn conversations(&self) -> Result<Vec<LocalConversation>, DriverError> {
        Ok(self
            .call(|reply| Command::Conversations { reply })
            .await??)
    }

    /// The connection state and the inbox cursor.
    pub async fn state(&self) -> Result<(ConnectionState, u64), DriverError> {
        self.call(|reply| Command::State { reply }).await
    }

    /// Replaces the token (e.g. after the app refreshed it).
    pub async fn set_token(&self, token: String) -> Result<(), DriverError> {
        self.commands
            .send(Command::SetToken(token))
            .await
            .map_err(|_| DriverError::Closed)
    }

    /// The device's network changed: reconnect now if waiting.
    pub async fn network_changed(&self) -> Result<(), DriverError> {
        self.commands
            .send(Command::NetworkChanged)
            .await
            .map_err(|_| DriverError::Closed)
    }

    /// The app moved to the background (true) or foreground (false).
    pub async fn set_background(&self, background: bool) -> Result<(), DriverError> {
        self.commands
            .send(Command::Background(background))
            .await
            .map_err(|_| DriverError::Closed)
    }

    /// Says goodbye to the server and stops the client task.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}

/// Starts a client for `server` with `token`; returns its handle and its event stream. The app
/// must keep reading events (the stream is bounded; an unread stream pauses the client).
pub fn start<S: LocalStore>(
    server: SocketAddr,
    token: String,
    config: ClientConfig,
    store: S,
    refresher: Option<TokenRefresher>,
) -> LocalResult<(ClientHandle, mpsc::Receiver<Event>)> {
    let mut client = Client::new(config, store, Instant::now())?;
    client.set_token(token, Instant::now());
    client.connect(Instant::now());
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(4096);
    tokio::spawn(run(client, server, commands_rx, events_tx, refresher));
    Ok((
        ClientHandle {
            commands: commands_tx,
        },
        events_rx,
    ))
}

struct Link {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: OwnedWriteHalf,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;
type Refreshing = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

async fn run<S: LocalStore>(
    mut client: Client<S>,
    server: SocketAddr,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    refresher: Option<TokenRefresher>,
) {
    let mut link: Option<Link> = None;
    let mut connecting: Option<Connecting> = None;
    let mut refreshing: Option<Refreshing> = None;
    let mut waiting: std::collections::HashMap<
        RequestHandle,
        oneshot::Sender<Result<Body, RequestError>>,
    > = std::collections::HashMap::new();
    let mut codec = FrameCodec::default();
    let mut out = BytesMut::new();
    let mut shutdown_reply: Option<oneshot::Sender<()>> = None;

    loop {
        // Carry out the machine's wishes.
        while let Some(action) = client.poll_action() {
            match action {
                Action::Connect => {
                    link = None;
                    connecting = Some(Box::pin(async move {
                        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
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
        while let Some(event) = client.poll_event() {
            match event {
                Event::Response { handle, result } => {
                    if let Some(reply) = waiting.remove(&handle) {
                        let _ = reply.send(result);
                    }
                }
                event => {
                    if let Event::State(ConnectionState::Stopped(StopReason::TokenExpired)) = &event
                        && let Some(refresher) = &refresher
                    {
                        refreshing = Some(refresher());
                    }
                    if events.send(event).await.is_err() {
                        // Nobody listens any more: keep running for the handle's callers.
                    }
                }
            }
        }
        if let Some(reply) = shutdown_reply.take() {
            let _ = reply.send(());
            return;
        }

        let deadline = client.next_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else {
                    client.disconnect();
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
                    Command::Request { body, reply } => {
                        let handle = client.request(body, now);
                        waiting.insert(handle, reply);
                    }
                    Command::MarkRead { conversation_id, seq, reply } => {
                        let handle = client.mark_read(&conversation_id, seq, now);
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
                        let _ = stream.set_nodelay(true);
                        let (r, w) = stream.into_split();
                        let mut read_codec = FrameCodec::default();
                        read_codec.accept_compressed(true);
                        link = Some(Link { reader: FramedRead::new(r, read_codec), writer: w });
                        client.on_connected(now);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %server, "connect failed");
                        client.on_disconnected(now);
                    }
                }
            }
            frame = async { link.as_mut().expect("guarded").reader.next().await }, if link.is_some() => {
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
            token = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => {
                refreshing = None;
                if let Some(token) = token {
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
