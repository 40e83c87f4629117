//! QUIC (quinn): one connection per session, one bidirectional stream on it carrying the
//! frames (SPEC §1.2). The connector keeps one UDP endpoint for all its connections, so TLS
//! sessions resume (one round trip) and [`QuicConnector::rebind_local`] can move every
//! connection to a new local address, which is what a phone switching networks looks like to
//! the server: QUIC migrates the connection and the session never notices. 0-RTT stays off
//! (early data can be replayed).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tls::{TlsTrust, TlsTrustError};
use super::{ByteStream, Connector, ServerAddress};

/// The ALPN protocol id of the session over QUIC.
pub const ALPN: &[u8] = b"im/1";

/// Opens QUIC connections, verifying the server's certificate like [`super::tls::TlsConnector`].
pub struct QuicConnector {
    config: quinn::ClientConfig,
    /// One endpoint per address family, made on first use.
    endpoints: Mutex<(Option<Endpoint>, Option<Endpoint>)>,
}

impl QuicConnector {
    /// A connector trusting `trust`.
    pub fn new(trust: &TlsTrust) -> Result<QuicConnector, TlsTrustError> {
        let tls = trust.client_config(&[ALPN])?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| TlsTrustError::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            // Keeps NAT bindings open between the session's own heartbeats; the session's
            // idle rules still decide when the link is dead.
            .keep_alive_interval(Some(Duration::from_secs(15)))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_secs(120)).expect("in range"),
            ));
        config.transport_config(Arc::new(transport));
        Ok(QuicConnector {
            config,
            endpoints: Mutex::new((None, None)),
        })
    }

    fn endpoint(&self, v6: bool) -> std::io::Result<Endpoint> {
        let mut endpoints = self.endpoints.lock().unwrap();
        let slot = if v6 {
            &mut endpoints.1
        } else {
            &mut endpoints.0
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let mut endpoint = Endpoint::client(unspecified(v6))?;
        endpoint.set_default_client_config(self.config.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Moves every connection to a new local UDP socket (a new port): the client's address
    /// changes as when a phone moves from Wi-Fi to cellular. The connections live on.
    pub fn rebind_local(&self) -> std::io::Result<()> {
        let endpoints = self.endpoints.lock().unwrap();
        for (endpoint, v6) in [(&endpoints.0, false), (&endpoints.1, true)] {
            if let Some(endpoint) = endpoint {
                endpoint.rebind(std::net::UdpSocket::bind(unspecified(v6))?)?;
            }
        }
        Ok(())
    }

    /// The local address of the IPv4 endpoint, once one connection was made.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let endpoints = self.endpoints.lock().unwrap();
        endpoints.0.as_ref().and_then(|e| e.local_addr().ok())
    }
}

fn unspecified(v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

impl Connector for QuicConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        let server = server.clone();
        let endpoints = (self.endpoint(false), self.endpoint(true));
        Box::pin(async move {
            let addr = tokio::net::lookup_host((server.host.as_str(), server.port))
                .await?
                .next()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{} resolves to no address", server.host),
                    )
                })?;
            let endpoint = if addr.is_ipv6() {
                endpoints.1?
            } else {
                endpoints.0?
            };
            let connecting = endpoint
                .connect(addr, &server.host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            // A certificate that does not verify fails here, with rustls's reason.
            let connection = connecting.await?;
            let (send, recv) = connection.open_bi().await?;
            Ok(Box::new(QuicStream {
                connection,
                send,
                recv,
            }) as Box<dyn ByteStream>)
        })
    }
}

/// The session's stream, holding its connection open.
struct QuicStream {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        // The driver is done with the session (it sent GOODBYE first when it could).
        self.connection.close(VarInt::from_u32(0), b"");
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.get_mut().recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}
