//! The HTTP tunnel: a session's byte stream carried in ordinary HTTP/1.1 requests, for networks
//! that pass only HTTP (through a proxy, say). Upstream bytes travel in `POST` bodies and
//! downstream bytes in the answers to long-polling `GET`s; both name the tunnel by an id that
//! outlives any one request or connection, and a byte offset, so a request lost with its
//! connection is simply repeated (SPEC §18).
//!
//! Each tunnel is one in-process pipe whose far end the gateway serves like any other
//! connection: the session rules, limits and timeouts are the same as over TCP. What is
//! HTTP-specific stays here: request parsing and its deadlines, the offsets
//! ([`offsets`]), and reaping tunnels nobody polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod offsets;

use offsets::{DownBuffer, OffsetError, Poll, UpCursor};

/// The path every tunnel request starts with.
pub const TUNNEL_PATH: &str = "/im/v1/tunnel";
/// Response header: a byte offset (see SPEC §18).
pub const OFFSET_HEADER: &str = "x-im-offset";
/// Response header of the open request: the new tunnel's id.
pub const TUNNEL_HEADER: &str = "x-im-tunnel";

/// Limits and timeouts of the tunnel.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Longest a downstream poll waits for bytes before it is answered empty.
    pub poll_wait: Duration,
    /// A tunnel with no request for this long is closed (its session sees the connection end).
    pub idle_timeout: Duration,
    /// Time a client has to send a request's head, and then its body.
    pub request_timeout: Duration,
    /// An HTTP connection with no byte in either direction for this long is closed. Longer than
    /// `poll_wait`, so a waiting poll does not count as idle.
    pub connection_idle_timeout: Duration,
    /// Largest upstream body.
    pub max_upload_bytes: usize,
    /// Most downstream bytes in one poll answer.
    pub max_poll_bytes: usize,
    /// Downstream bytes kept until the client acknowledges them.
    pub unacked_bytes: usize,
    /// Most HTTP connections at once (each tunnel uses about two).
    pub max_http_connections: usize,
}

impl Default for TunnelConfig {
    fn default() -> TunnelConfig {
        TunnelConfig {
            poll_wait: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(45),
            max_upload_bytes: 1 << 20,
            max_poll_bytes: 256 * 1024,
            unacked_bytes: 512 * 1024,
            max_http_connections: 20_000,
        }
    }
}

/// Where a tunnel's session is served: the gateway.
pub trait SessionHost: Send + Sync + 'static {
    /// Serves `stream` as a client connection from `peer`, unless the connection limit is
    /// reached (false).
    fn try_serve(&self, stream: DuplexStream, peer: String) -> bool;
}

/// Bytes buffered in each direction of a tunnel's pipe to the gateway.
const PIPE_BYTES: usize = 64 * 1024;

/// Serves tunnel requests on HTTP connections handed to it ([`TunnelServer::serve_http`]).
pub struct TunnelServer {
    config: TunnelConfig,
    host: Arc<dyn SessionHost>,
    tunnels: Mutex<HashMap<String, Arc<Tunnel>>>,
    http_connections: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
    epoch: Instant,
}

impl std::fmt::Debug for TunnelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Tunnel {
    /// Upstream: the pipe's write half and how much of the client's stream it took. A lock
    /// held across the write, so uploads to one tunnel apply one at a time, in order.
    up: tokio::sync::Mutex<(Option<tokio::io::WriteHalf<DuplexStream>>, UpCursor)>,
    down: Mutex<DownState>,
    /// Bumped on every change of `down`: new bytes, an acknowledgement, the end, a new poll.
    changed: watch::Sender<u64>,
    /// Milliseconds since the server's epoch of the last request's end.
    last_seen_ms: AtomicU64,
    /// Requests in progress.
    active: AtomicUsize,
    /// Cancelled when the tunnel is removed: stops its pump.
    closed: CancellationToken,
}

struct DownState {
    buffer: DownBuffer,
    /// Which poll is the current one: a newer poll makes an older one answer at once.
    poll_generation: u64,
}

impl Tunnel {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Counts a request in progress on a tunnel, so it is not reaped meanwhile.
struct Active<'a> {
    server: &'a TunnelServer,
    tunnel: &'a Tunnel,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.tunnel
            .last_seen_ms
            .store(self.server.now_ms(), Ordering::Relaxed);
        self.tunnel.active.fetch_sub(1, Ordering::Relaxed);
    }
}

type HttpResponse = Response<Full<Bytes>>;

impl TunnelServer {
    /// A tunnel server whose sessions `host` serves. Starts the task that reaps idle tunnels;
    /// everything stops on [`TunnelServer::shutdown`].
    pub fn new(config: TunnelConfig, host: Arc<dyn SessionHost>) -> Arc<TunnelServer> {
        let server = Arc::new(TunnelServer {
            http_connections: Arc::new(Semaphore::new(config.max_http_connections.max(1))),
            config,
            host,
            tunnels: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            epoch: Instant::now(),
        });
        let weak = Arc::downgrade(&server);
        let stop = server.stop.clone();
        server.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match weak.upgrade() {
                    Some(server) => server.reap(),
                    None => return,
                }
            }
        });
        server
    }

    /// Closes every tunnel and HTTP connection and waits for their tasks. Call after the
    /// gateway drained, so the last frames (a shutdown kick) could still be polled.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tunnels: Vec<_> = self.tunnels.lock().unwrap().drain().collect();
        for (_, tunnel) in tunnels {
            tunnel.closed.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Tunnels open.
    pub fn tunnel_count(&self) -> usize {
        self.tunnels.lock().unwrap().len()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Serves HTTP/1.1 requests on one connection (already past TLS, if any) until the client
    /// closes it, it idles too long, or the server stops. Returns at once; the connection is
    /// dropped unanswered when too many are open.
    pub fn serve_http<S>(self: &Arc<Self>, io: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Ok(permit) = self.http_connections.clone().try_acquire_owned() else {
            tracing::info!(%peer, "too many HTTP connections: closing a new one");
            return;
        };
        let server = self.clone();
        let stop = self.stop.clone();
        let activity = Arc::new(AtomicU64::new(self.now_ms()));
        let io = Watched {
            inner: io,
            activity: activity.clone(),
            epoch: self.epoch,
        };
        self.tasks.spawn(async move {
            let _permit = permit;
            let service_server = server.clone();
            let service_peer = peer.clone();
            let service = hyper::service::service_fn(move |request| {
                let server = service_server.clone();
                let peer = service_peer.clone();
                async move { Ok::<_, std::convert::Infallible>(server.handle(request, &peer).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(server.config.request_timeout)
                .max_buf_size(64 * 1024);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let idle = server.config.connection_idle_timeout;
            loop {
                let last = activity.load(Ordering::Relaxed);
                let idle_for = Duration::from_millis(server.now_ms().saturating_sub(last));
                if idle_for >= idle {
                    tracing::debug!(%peer, "HTTP connection idle: closing it");
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    done = connection.as_mut() => {
                        if let Err(e) = done {
                            tracing::debug!(%peer, error = %e, "HTTP connection ended");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(idle - idle_for) => {}
                }
            }
        });
    }

    async fn handle(self: &Arc<Self>, request: Request<Incoming>, peer: &str) -> HttpResponse {
        let path = request.uri().path().to_owned();
        let Some(rest) = path.strip_prefix(TUNNEL_PATH) else {
            return plain(StatusCode::NOT_FOUND, "not a tunnel path");
        };
        let offset = query_offset(request.uri().query());
        match (
            rest.trim_end_matches('/')
                .split('/')
                .collect::<Vec<_>>()
                .as_slice(),
            request.method(),
        ) {
            ([""], &Method::POST) => self.open(peer),
            ([""], _) => not_allowed("POST"),
            (["", id], &Method::DELETE) => self.close(id),
            (["", _], _) => not_allowed("DELETE"),
            (["", id, "up"], &Method::POST) => match offset {
                Ok(offset) => self.upload(id, offset, request.into_body()).await,
                Err(response) => response,
            },
            (["", _, "up"], _) => not_allowed("POST"),
            (["", id, "down"], &Method::GET) => match offset {
                Ok(offset) => self.poll(id, offset).await,
                Err(response) => response,
            },
            (["", _, "down"], _) => not_allowed("GET"),
            _ => plain(StatusCode::NOT_FOUND, "not a tunnel path"),
        }
    }

    fn open(self: &Arc<Self>, peer: &str) -> HttpResponse {
        let id = new_tunnel_id();
        let (session_end, tunnel_end) = tokio::io::duplex(PIPE_BYTES);
        if !self.host.try_serve(session_end, format!("{peer} (tunnel)")) {
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
        let (reader, writer) = tokio::io::split(tunnel_end);
        let tunnel = Arc::new(Tunnel {
            up: tokio::sync::Mutex::new((Some(writer), UpCursor::default())),
            down: Mutex::new(DownState {
                buffer: DownBuffer::new(self.config.unacked_bytes),
                poll_generation: 0,
            }),
            changed: watch::channel(0).0,
            last_seen_ms: AtomicU64::new(self.now_ms()),
            active: AtomicUsize::new(0),
            closed: CancellationToken::new(),
        });
        self.tunnels
            .lock()
            .unwrap()
            .insert(id.clone(), tunnel.clone());
        self.tasks.spawn(pump_down(reader, tunnel));
        tracing::debug!(%peer, "tunnel opened");
        let mut response = plain(StatusCode::OK, &id);
        response
            .headers_mut()
            .insert(TUNNEL_HEADER, HeaderValue::from_str(&id).expect("hex id"));
        response
    }

    fn close(&self, id: &str) -> HttpResponse {
        match self.tunnels.lock().unwrap().remove(id) {
            Some(tunnel) => {
                tunnel.closed.cancel();
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(Full::new(Bytes::new()))
                    .expect("static response")
            }
            None => unknown_tunnel(),
        }
    }

    fn tunnel(&self, id: &str) -> Option<Arc<Tunnel>> {
        self.tunnels.lock().unwrap().get(id).cloned()
    }

    fn enter<'a>(&'a self, tunnel: &'a Tunnel) -> Active<'a> {
        tunnel.active.fetch_add(1, Ordering::Relaxed);
        Active {
            server: self,
            tunnel,
        }
    }

    async fn upload(&self, id: &str, offset: u64, body: Incoming) -> HttpResponse {
        let Some(tunnel) = self.tunnel(id) else {
            return unknown_tunnel();
        };
        let _active = self.enter(&tunnel);
        let body = Limited::new(body, self.config.max_upload_bytes);
        let bytes = match tokio::time::timeout(self.config.request_timeout, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("at most {} bytes per upload", self.config.max_upload_bytes),
                );
            }
            Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "the body was cut short"),
            Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "the body came too slowly"),
        };
        let mut up = tunnel.up.lock().await;
        let (writer, cursor) = &mut *up;
        let skip = match cursor.already_taken(offset, bytes.len()) {
            Ok(skip) => skip,
            Err(error) => return offset_conflict(error),
        };
        let Some(pipe) = writer.as_mut() else {
            return plain(StatusCode::GONE, "the session has ended");
        };
        // The session may not read for a while (its answers wait for the client to poll):
        // take what fits within the request timeout and report how far we got.
        let mut rest = &bytes[skip..];
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        while !rest.is_empty() {
            match tokio::time::timeout_at(deadline, pipe.write(rest)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    *writer = None;
                    return plain(StatusCode::GONE, "the session has ended");
                }
                Ok(Ok(n)) => {
                    cursor.advance(n);
                    rest = &rest[n..];
                }
                Err(_) => break,
            }
        }
        with_offset(plain(StatusCode::OK, ""), cursor.received())
    }

    async fn poll(&self, id: &str, offset: u64) -> HttpResponse {
        let Some(tunnel) = self.tunnel(id) else {
            return unknown_tunnel();
        };
        let _active = self.enter(&tunnel);
        let mut changes = tunnel.changed.subscribe();
        let generation = {
            let mut down = tunnel.down.lock().unwrap();
            down.poll_generation += 1;
            down.poll_generation
        };
        // An older poll still waiting (its connection died unnoticed, say) answers now.
        tunnel.bump();
        let deadline = tokio::time::Instant::now() + self.config.poll_wait;
        loop {
            // Noted before looking, so a change after the look still wakes the wait below.
            changes.mark_unchanged();
            let polled = {
                let mut down = tunnel.down.lock().unwrap();
                if down.poll_generation != generation {
                    return with_offset(plain(StatusCode::OK, ""), offset);
                }
                down.buffer.poll(offset, self.config.max_poll_bytes)
            };
            match polled {
                Err(error) => return offset_conflict(error),
                Ok(Poll::Data(bytes)) => {
                    // The acknowledgement made room for the pump.
                    tunnel.bump();
                    return with_offset(octets(bytes), offset);
                }
                Ok(Poll::Ended) => return plain(StatusCode::GONE, "the session has ended"),
                Ok(Poll::Wait) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return with_offset(plain(StatusCode::OK, ""), offset);
                }
                _ = tunnel.closed.cancelled() => {
                    return plain(StatusCode::GONE, "the tunnel was closed");
                }
                _ = changes.changed() => {}
            }
        }
    }

    /// Removes tunnels nobody polled for the idle timeout, and ended ones the client has read
    /// to the end (or abandoned).
    fn reap(&self) {
        let now = self.now_ms();
        let idle = self.config.idle_timeout.as_millis() as u64;
        let mut tunnels = self.tunnels.lock().unwrap();
        tunnels.retain(|_, tunnel| {
            let quiet = tunnel.active.load(Ordering::Relaxed) == 0
                && now.saturating_sub(tunnel.last_seen_ms.load(Ordering::Relaxed)) >= idle;
            let finished = tunnel.down.lock().unwrap().buffer.finished();
            let keep = !(quiet || (finished && tunnel.active.load(Ordering::Relaxed) == 0));
            if !keep {
                tunnel.closed.cancel();
            }
            keep
        });
    }
}

/// Moves what the session writes into the tunnel's downstream buffer, as room allows; marks
/// the end when the session closes. Dropping the tunnel's write half (on removal) is what ends
/// the session when the tunnel goes first.
async fn pump_down(mut reader: tokio::io::ReadHalf<DuplexStream>, tunnel: Arc<Tunnel>) {
    let mut changes = tunnel.changed.subscribe();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        changes.mark_unchanged();
        let room = tunnel.down.lock().unwrap().buffer.room();
        if room == 0 {
            tokio::select! {
                _ = tunnel.closed.cancelled() => break,
                _ = changes.changed() => continue,
            }
        }
        let want = room.min(chunk.len());
        let read = tokio::select! {
            _ = tunnel.closed.cancelled() => break,
            read = reader.read(&mut chunk[..want]) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                tunnel.down.lock().unwrap().buffer.end();
                tunnel.bump();
                break;
            }
            Ok(n) => {
                tunnel.down.lock().unwrap().buffer.push(&chunk[..n]);
                tunnel.bump();
            }
        }
    }
    // Removed (or the session ended): make sure the session sees the end too.
    if let Some(mut writer) = tunnel.up.lock().await.0.take() {
        let _ = writer.shutdown().await;
    }
}

/// 128 random bits in hex: the id is the tunnel's only credential until the session's own
/// handshake, so it must not be guessable.
fn new_tunnel_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[allow(clippy::result_large_err)]
fn query_offset(query: Option<&str>) -> Result<u64, HttpResponse> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("offset="));
    match value.map(str::parse::<u64>) {
        Some(Ok(offset)) => Ok(offset),
        Some(Err(_)) => Err(plain(
            StatusCode::BAD_REQUEST,
            "offset must be a decimal byte count",
        )),
        None => Err(plain(StatusCode::BAD_REQUEST, "missing ?offset=")),
    }
}

fn plain(status: StatusCode, text: &str) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::copy_from_slice(text.as_bytes())))
        .expect("static response")
}

fn octets(bytes: Bytes) -> HttpResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(bytes))
        .expect("static response")
}

fn with_offset(mut response: HttpResponse, offset: u64) -> HttpResponse {
    response
        .headers_mut()
        .insert(OFFSET_HEADER, HeaderValue::from(offset));
    response
}

fn offset_conflict(error: OffsetError) -> HttpResponse {
    let expected = match error {
        OffsetError::Ahead { expected } => expected,
        OffsetError::Behind { kept_from } => kept_from,
    };
    with_offset(plain(StatusCode::CONFLICT, &error.to_string()), expected)
}

fn unknown_tunnel() -> HttpResponse {
    plain(StatusCode::NOT_FOUND, "no such tunnel (closed or expired)")
}

fn not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// An HTTP connection's IO, noting the time of its last byte in either direction.
struct Watched<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
