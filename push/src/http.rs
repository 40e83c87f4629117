//! A small HTTP client for one origin, on hyper's connection-level API.
//!
//! Each provider talks to one or two fixed origins, so a general client with a pool per host is
//! more than we need. APNs wants one long-lived HTTP/2 connection that carries every request
//! (Apple asks providers to keep connections open rather than reconnect per push); the webhook
//! and Google's endpoints get a few reused HTTP/1.1 keep-alive connections. `https://` origins
//! use rustls with webpki roots and ALPN; `http://` origins are for tests and local relays and
//! speak HTTP/2 with prior knowledge (h2c) or HTTP/1.1 as the provider asks.

use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

/// The largest response body read; push services answer with a few hundred bytes, and a
/// misbehaving endpoint must not make us buffer without limit.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Idle HTTP/1.1 connections kept for reuse per origin.
const MAX_IDLE_HTTP1: usize = 8;

/// Which HTTP version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpVersion {
    /// HTTP/1.1 with keep-alive (ALPN `http/1.1` over TLS).
    Http1,
    /// HTTP/2 (ALPN `h2` over TLS, prior knowledge over cleartext).
    Http2,
}

/// Why a URL cannot be used as an origin.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("invalid URL {url:?}: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// Only `http` and `https` are spoken.
    #[error("URL {0:?} must start with http:// or https://")]
    Scheme(String),
    /// The URL has no host.
    #[error("URL {0:?} has no host")]
    NoHost(String),
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// TCP connect or TLS handshake failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP handshake or the exchange itself failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a header value from configuration is invalid).
    #[error("request: {0}")]
    Build(#[from] hyper::http::Error),
    /// The answer did not come within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The response body was larger than [`MAX_RESPONSE_BYTES`] or broke off.
    #[error("response body: {0}")]
    Body(String),
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    /// The status code.
    pub status: StatusCode,
    /// The body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
}

/// The parts of a base URL a connection needs.
#[derive(Clone, Debug)]
struct Origin {
    https: bool,
    /// Host for DNS and SNI, without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` as it appears in the URL, for `Host` and `:authority`.
    authority: String,
    /// Path prefix from the URL, without a trailing slash ("" for none).
    base_path: String,
}

impl Origin {
    fn parse(url: &str) -> Result<Self, UrlError> {
        let uri: Uri =
            url.parse()
                .map_err(|error: hyper::http::uri::InvalidUri| UrlError::Invalid {
                    url: url.to_owned(),
                    reason: error.to_string(),
                })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UrlError::Scheme(url.to_owned())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| UrlError::NoHost(url.to_owned()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Origin {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// An HTTP client for one origin. Cheap to share: connections are cached inside.
pub(crate) struct HttpClient {
    origin: Origin,
    version: HttpVersion,
    tls: Option<TlsConnector>,
    timeout: Duration,
    /// The shared HTTP/2 connection, replaced when it closes. An async mutex so concurrent
    /// first requests open one connection, not one each.
    http2: tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    /// Idle HTTP/1.1 connections.
    idle_http1: SyncMutex<Vec<http1::SendRequest<Full<Bytes>>>>,
}

/// A stream a connection can run over: plain TCP or TLS.
trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

impl HttpClient {
    /// A client for the origin of `url`; the URL's path becomes a prefix of every request path.
    pub(crate) fn new(
        url: &str,
        version: HttpVersion,
        timeout: Duration,
    ) -> Result<Self, UrlError> {
        let origin = Origin::parse(url)?;
        let tls = origin.https.then(|| tls_connector(version));
        Ok(HttpClient {
            origin,
            version,
            tls,
            timeout,
            http2: tokio::sync::Mutex::new(None),
            idle_http1: SyncMutex::new(Vec::new()),
        })
    }

    /// Sends one request to `path` (appended to the base URL's path) and reads the answer, all
    /// within the client's timeout.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<HttpResponse, HttpError> {
        let exchange = async {
            match self.version {
                HttpVersion::Http1 => self.send_http1(method, path, headers, body).await,
                HttpVersion::Http2 => self.send_http2(method, path, headers, body).await,
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    fn full_path(&self, path: &str) -> String {
        let joined = format!("{}{}", self.origin.base_path, path);
        if joined.is_empty() {
            "/".to_owned()
        } else {
            joined
        }
    }

    fn build(
        &self,
        method: Method,
        uri: String,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(
                name,
                HeaderValue::try_from(value).map_err(hyper::http::Error::from)?,
            );
        }
        Ok(builder.body(Full::new(body))?)
    }

    async fn send_http2(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<HttpResponse, HttpError> {
        // HTTP/2 takes the scheme and authority from an absolute URI.
        let scheme = if self.origin.https { "https" } else { "http" };
        let uri = format!(
            "{scheme}://{}{}",
            self.origin.authority,
            self.full_path(path)
        );
        let request = self.build(method, uri, headers, body)?;
        let mut sender = self.http2_sender().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        read_response(response).await
    }

    /// The cached HTTP/2 connection, or a new one when there is none or it has closed (the
    /// server sent GOAWAY, the network dropped it).
    async fn http2_sender(&self) -> Result<http2::SendRequest<Full<Bytes>>, HttpError> {
        let mut cached = self.http2.lock().await;
        if let Some(sender) = cached.as_ref().filter(|sender| !sender.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.connect().await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        let authority = self.origin.authority.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%authority, %error, "push HTTP/2 connection ended");
            }
        });
        *cached = Some(sender.clone());
        Ok(sender)
    }

    async fn send_http1(
        &self,
        method: Method,
        path: &str,
        mut headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<HttpResponse, HttpError> {
        headers.push((HOST.as_str(), self.origin.authority.clone()));
        let request = self.build(method, self.full_path(path), headers, body)?;
        let mut sender = match self.take_idle_http1() {
            Some(sender) => sender,
            None => {
                let io = self.connect().await?;
                let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
                let authority = self.origin.authority.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%authority, %error, "push HTTP/1.1 connection ended");
                    }
                });
                sender
            }
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let response = read_response(response).await?;
        // The body was read to its end, so the connection is free for the next request.
        if sender.is_ready()
            && let Ok(mut idle) = self.idle_http1.lock()
            && idle.len() < MAX_IDLE_HTTP1
        {
            idle.push(sender);
        }
        Ok(response)
    }

    fn take_idle_http1(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle_http1.lock().ok()?;
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Box<dyn Transport>, HttpError> {
        let tcp = TcpStream::connect((self.origin.host.as_str(), self.origin.port))
            .await
            .map_err(HttpError::Connect)?;
        // Requests are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let server_name = ServerName::try_from(self.origin.host.clone()).map_err(|error| {
            HttpError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, error))
        })?;
        let stream = tls
            .connect(server_name, tcp)
            .await
            .map_err(HttpError::Connect)?;
        Ok(Box::new(stream))
    }
}

async fn read_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<HttpResponse, HttpError> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|error| HttpError::Body(error.to_string()))?
        .to_bytes();
    Ok(HttpResponse {
        status: parts.status,
        body,
    })
}

/// TLS with the public web roots and ring, the provider the whole workspace uses. Built with an
/// explicit provider so it does not depend on a process-wide default being installed.
fn tls_connector(version: HttpVersion) -> TlsConnector {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match version {
        HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
        HttpVersion::Http2 => vec![b"h2".to_vec()],
    };
    TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_their_path_prefix_and_default_ports() {
        let origin = Origin::parse("https://api.push.apple.com").unwrap();
        assert_eq!(
            (origin.host.as_str(), origin.port, origin.base_path.as_str()),
            ("api.push.apple.com", 443, "")
        );
        let origin = Origin::parse("http://127.0.0.1:8080/hooks/push/").unwrap();
        assert_eq!(
            (origin.port, origin.base_path.as_str()),
            (8080, "/hooks/push")
        );
        assert_eq!(origin.authority, "127.0.0.1:8080");
        let origin = Origin::parse("http://[::1]:9/").unwrap();
        assert_eq!(origin.host, "::1");
        assert!(matches!(
            Origin::parse("ftp://example.com"),
            Err(UrlError::Scheme(_))
        ));
        assert!(Origin::parse("not a url").is_err());
    }
}
