//! The HTTP tunnel, client side (SPEC §18): the session's byte stream in ordinary HTTP/1.1
//! requests, for networks that pass nothing else. The driver gets a plain byte stream; a task
//! behind it uploads what the driver writes in `POST`s and long-polls for what the server
//! writes, each on its own keep-alive connection, repeating a request lost with its connection
//! (the byte offsets make repeats harmless) until the tunnel's retry budget runs out.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use super::{ByteStream, Connector, ServerAddress, TcpConnector};

/// The path every tunnel request starts with.
pub const TUNNEL_PATH: &str = "/im/v1/tunnel";

/// Bytes buffered between the driver and the tunnel task, each way.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest upload.
const MAX_UPLOAD: usize = 256 * 1024;

/// Timing of the tunnel client.
#[derive(Clone, Debug)]
pub struct TunnelOptions {
    /// How long an upload (or the open) may take.
    pub request_timeout: Duration,
    /// How long a poll may take: the server answers one within 30 s (SPEC §18).
    pub poll_timeout: Duration,
    /// A tunnel whose requests keep failing for this long is given up (the driver then
    /// reconnects, with a new tunnel).
    pub give_up_after: Duration,
}

impl Default for TunnelOptions {
    fn default() -> TunnelOptions {
        TunnelOptions {
            request_timeout: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(40),
            give_up_after: Duration::from_secs(20),
        }
    }
}

/// Opens tunnels: over plain HTTP or HTTPS directly (the connector it is given opens TCP or
/// TLS streams; a TLS connector over [`super::proxy::HttpProxyConnector`] goes through a
/// proxy's CONNECT), or as plain requests to an HTTP proxy ([`HttpTunnelConnector::via_proxy`]).
pub struct HttpTunnelConnector {
    /// Opens the connections requests travel on.
    opener: Arc<dyn Connector>,
    /// Requests go to this proxy in absolute form (`POST http://host:port/...`).
    proxy: Option<ServerAddress>,
    options: TunnelOptions,
}

impl HttpTunnelConnector {
    /// Requests on connections `opener` opens to the server: a [`TcpConnector`] for `http`, a
    /// TLS connector for `https`.
    pub fn direct(opener: Arc<dyn Connector>) -> HttpTunnelConnector {
        HttpTunnelConnector {
            opener,
            proxy: None,
            options: TunnelOptions::default(),
        }
    }

    /// Plain-HTTP requests through the proxy at `proxy`, for proxies that do not allow
    /// `CONNECT`. The proxy sees the bytes: the session's token among them.
    pub fn via_proxy(proxy: ServerAddress) -> HttpTunnelConnector {
        HttpTunnelConnector {
            opener: Arc::new(TcpConnector),
            proxy: Some(proxy),
            options: TunnelOptions::default(),
        }
    }

    /// Other timing.
    pub fn with_options(mut self, options: TunnelOptions) -> HttpTunnelConnector {
        self.options = options;
        self
    }
}

impl Connector for HttpTunnelConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        let http = Arc::new(Http {
            opener: self.opener.clone(),
            server: server.clone(),
            proxy: self.proxy.clone(),
            timeout: self.options.request_timeout,
            poll_timeout: self.options.poll_timeout,
        });
        let options = self.options.clone();
        Box::pin(async move {
            let mut conn = http.open_connection().await?;
            let (status, _, body) = http
                .request(&mut conn, Method::POST, TUNNEL_PATH.into(), Bytes::new())
                .await?;
            if status != StatusCode::OK {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("tunnel open refused: {status}"),
                ));
            }
            let id = String::from_utf8_lossy(&body).trim().to_owned();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "tunnel open answered without a usable id",
                ));
            }
            let (driver_end, tunnel_end) = tokio::io::duplex(PIPE_BYTES);
            let (reader, writer) = tokio::io::split(tunnel_end);
            let stop = CancellationToken::new();
            let tunnel = Arc::new(TunnelPaths { http, id, options });
            tokio::spawn(upload(tunnel.clone(), reader, conn, stop.clone()));
            tokio::spawn(download(tunnel, writer, stop));
            Ok(Box::new(driver_end) as Box<dyn ByteStream>)
        })
    }
}

/// How to send one request to the server.
struct Http {
    opener: Arc<dyn Connector>,
    server: ServerAddress,
    proxy: Option<ServerAddress>,
    timeout: Duration,
    poll_timeout: Duration,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Http {
    async fn open_connection(&self) -> std::io::Result<Sender> {
        let target = self.proxy.as_ref().unwrap_or(&self.server);
        let stream = tokio::time::timeout(self.timeout, self.opener.connect(target))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// One request; an error means the connection is unusable (open a new one).
    async fn request(
        &self,
        conn: &mut Sender,
        method: Method,
        path: String,
        body: Bytes,
    ) -> std::io::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let uri = match &self.proxy {
            Some(_) => format!("http://{}{path}", self.server),
            None => path,
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(hyper::header::HOST, self.server.to_string())
            .header(hyper::header::CACHE_CONTROL, "no-store")
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let exchange = async {
            conn.ready().await.map_err(std::io::Error::other)?;
            let response = conn
                .send_request(request)
                .await
                .map_err(std::io::Error::other)?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        let timeout = if method == Method::GET {
            self.poll_timeout
        } else {
            self.timeout
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

struct TunnelPaths {
    http: Arc<Http>,
    id: String,
    options: TunnelOptions,
}

impl TunnelPaths {
    fn path(&self, what: &str, offset: u64) -> String {
        format!("{TUNNEL_PATH}/{}/{what}?offset={offset}", self.id)
    }
}

fn offset_header(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get("x-im-offset")?.to_str().ok()?.parse().ok()
}

/// Sends one request, repeating it on fresh connections after failures, up to the give-up
/// budget (`None`: give up).
async fn with_retries(
    tunnel: &TunnelPaths,
    conn: &mut Option<Sender>,
    stop: &CancellationToken,
    method: Method,
    path: String,
    body: Bytes,
) -> Option<(StatusCode, hyper::HeaderMap, Bytes)> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        if conn.is_none() {
            match tunnel.http.open_connection().await {
                Ok(opened) => *conn = Some(opened),
                Err(e) => tracing::debug!(error = %e, "tunnel connection failed"),
            }
        }
        if let Some(sender) = conn.as_mut() {
            let attempt = tunnel
                .http
                .request(sender, method.clone(), path.clone(), body.clone());
            match attempt.await {
                Ok(result) => return Some(result),
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel request failed; repeating it");
                    *conn = None;
                }
            }
        }
        if started.elapsed() >= tunnel.options.give_up_after {
            return None;
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Uploads what the driver writes, in order; bytes stay in `pending` until the server counts
/// them. Ends the tunnel (DELETE) when the driver closes its stream.
async fn upload(
    tunnel: Arc<TunnelPaths>,
    mut from_driver: tokio::io::ReadHalf<tokio::io::DuplexStream>,
    conn: Sender,
    stop: CancellationToken,
) {
    let mut conn = Some(conn);
    let mut pending = BytesMut::new();
    let mut sent: u64 = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if pending.is_empty() {
            let read = tokio::select! {
                _ = stop.cancelled() => break,
                read = from_driver.read(&mut chunk) => read,
            };
            match read {
                Ok(0) | Err(_) => {
                    // The driver is done with the session: close the tunnel, best effort.
                    if let Some(conn) = conn.as_mut() {
                        let _ = tunnel
                            .http
                            .request(
                                conn,
                                Method::DELETE,
                                format!("{TUNNEL_PATH}/{}", tunnel.id),
                                Bytes::new(),
                            )
                            .await;
                    }
                    break;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        // Take whatever else is already waiting, so bursts go in one request.
        while pending.len() < MAX_UPLOAD {
            match futures::FutureExt::now_or_never(from_driver.read(&mut chunk)) {
                Some(Ok(n)) if n > 0 => pending.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let body = pending.clone().freeze();
        let path = tunnel.path("up", sent);
        let answer = with_retries(&tunnel, &mut conn, &stop, Method::POST, path, body).await;
        let Some((status, headers, _)) = answer else {
            break;
        };
        match (status, offset_header(&headers)) {
            // The server took bytes up to `taken`; 409 says where it stands after a gap.
            (StatusCode::OK | StatusCode::CONFLICT, Some(taken))
                if taken >= sent && taken <= sent + pending.len() as u64 =>
            {
                let _ = pending.split_to((taken - sent) as usize);
                sent = taken;
            }
            (status, _) => {
                tracing::debug!(%status, "tunnel upload refused; the tunnel is over");
                break;
            }
        }
    }
    stop.cancel();
}

/// Long-polls for what the server writes and hands it to the driver; ends the driver's stream
/// when the server says the session ended or the tunnel cannot be reached.
async fn download(
    tunnel: Arc<TunnelPaths>,
    mut to_driver: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    stop: CancellationToken,
) {
    let mut conn = None;
    let mut received: u64 = 0;
    loop {
        let path = tunnel.path("down", received);
        let answer = with_retries(&tunnel, &mut conn, &stop, Method::GET, path, Bytes::new());
        let answer = tokio::select! {
            _ = stop.cancelled() => None,
            answer = answer => answer,
        };
        let Some((status, headers, body)) = answer else {
            break;
        };
        if status != StatusCode::OK || offset_header(&headers) != Some(received) {
            tracing::debug!(%status, "tunnel poll ended the tunnel");
            break;
        }
        if body.is_empty() {
            continue;
        }
        if to_driver.write_all(&body).await.is_err() {
            break;
        }
        received += body.len() as u64;
    }
    stop.cancel();
    let _ = to_driver.shutdown().await;
}
