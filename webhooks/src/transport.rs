//! One signed POST to the app's server, over hyper's pooled HTTP/1.1 client, with `https://`
//! through rustls (ring, Web PKI roots plus any configured ones).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::http::uri::Scheme;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{ConfigError, WebhookConfig};
use crate::signature::{self, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The most of an answer body read: the app's server is trusted to sign nothing, so its
/// answers are bounded like any other input from the network.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

const USER_AGENT: &str = concat!("im-webhooks/", env!("CARGO_PKG_VERSION"));

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The request or the answer took longer than the configured timeout.
    #[error("timed out")]
    Timeout,
    /// Connecting, TLS, or the HTTP exchange failed.
    #[error("request failed: {0}")]
    Request(String),
    /// The answer body failed or was larger than allowed.
    #[error("answer body: {0}")]
    Body(String),
}

/// An answer's status, and its body when one was asked for.
pub(crate) struct Answer {
    pub status: StatusCode,
    /// From a `Retry-After: <seconds>` header (429 and 503 answers).
    pub retry_after: Option<Duration>,
    /// The body, at most `read_limit` bytes, or why it could not be read.
    pub body: Result<Bytes, PostError>,
}

/// Posts signed JSON bodies to the configured URL.
pub(crate) struct Poster {
    client: Client<Connector, Full<Bytes>>,
    url: Uri,
    secret: Vec<u8>,
    timeout: Duration,
}

impl Poster {
    pub fn new(config: &WebhookConfig) -> Result<Poster, ConfigError> {
        let mut http = HttpConnector::new();
        // The connector below handles `https://` itself, on top of this TCP connector.
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        let tls = if config.url().scheme() == Some(&Scheme::HTTPS) {
            Some(tls_connector(&config.extra_root_certificates)?)
        } else {
            None
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.max_in_flight.max(1) + 1)
            .build(Connector { http, tls });
        Ok(Poster {
            client,
            url: config.url().clone(),
            secret: config.secret().to_vec(),
            timeout: config.timeout,
        })
    }

    /// Posts `body`, signed now, and reads at most `read_limit` bytes of the answer, all within
    /// the configured timeout.
    pub async fn post(
        &self,
        event: &str,
        delivery_id: &str,
        body: Bytes,
        read_limit: usize,
    ) -> Result<Answer, PostError> {
        let deadline = Instant::now() + self.timeout;
        let timestamp = unix_seconds_now();
        let signature = signature::sign(&self.secret, timestamp, &body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .header(EVENT_HEADER, event)
            .header(DELIVERY_HEADER, delivery_id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body))
            .map_err(|e| PostError::Request(e.to_string()))?;
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| PostError::Timeout)?
            .map_err(|e| PostError::Request(error_chain(&e)))?;
        let (parts, incoming) = response.into_parts();
        let retry_after = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let read = async {
            Limited::new(incoming, read_limit)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|e| PostError::Body(e.to_string()))
        };
        let body = tokio::time::timeout_at(deadline, read)
            .await
            .unwrap_or(Err(PostError::Timeout));
        Ok(Answer {
            status: parts.status,
            retry_after,
            body,
        })
    }
}

/// The current time in Unix seconds (0 if the clock is before 1970).
pub(crate) fn unix_seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The error and its causes, one line: hyper's top-level message alone ("client error
/// (Connect)") does not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn tls_connector(extra_roots: &[Vec<u8>]) -> Result<tokio_rustls::TlsConnector, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| ConfigError::BadRootCertificate(e.to_string()))?;
    }
    // ring, the provider the rest of the workspace uses, chosen explicitly so no process-wide
    // default has to be installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::BadRootCertificate(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// TCP from hyper-util's connector, then TLS for `https://` URLs.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => match &self.tls {
                Some(tls) => Some(tls.clone()),
                None => {
                    return Box::pin(async { Err("https URL without a TLS configuration".into()) });
                }
            },
            _ => None,
        };
        // An IPv6 literal comes bracketed; the TLS name is the bare address.
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            match tls {
                None => Ok(Stream::Plain(tcp)),
                Some(tls) => {
                    let name = ServerName::try_from(host)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let stream = tls.connect(name, tcp.into_inner()).await?;
                    Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
                }
            }
        })
    }
}

/// A connection to the app's server, plain or TLS.
enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(tcp) => tcp.connected(),
            Stream::Tls(tls) => tls.inner().get_ref().0.connected(),
        }
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
