//! QUIC (quinn): the client opens one bidirectional stream right after the handshake and the
//! session's frames travel on it exactly as over TCP (SPEC §1.2). What QUIC adds for a mobile
//! client comes from quinn: the connection survives a change of the client's address
//! (migration, on by default), and a returning client resumes its TLS session in one round
//! trip. 0-RTT stays off: early data can be replayed by anyone on the path, and a replayed
//! handshake frame must never open a session.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::io::AsyncWrite;

use super::tls::{TlsError, TlsIdentity};
use super::{Acceptor, ByteStream, Establishing};

/// The ALPN protocol id of the session over QUIC.
pub const ALPN: &[u8] = b"im/1";

/// QUIC application error code when the server closes a connection (the session already told
/// the client why, in a frame, when it could).
pub const CLOSE_CODE: u32 = 0;

/// Why a QUIC endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The identity is unusable.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The TLS configuration is unusable for QUIC (no TLS 1.3 suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Config(String),
    /// The UDP port could not be bound.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Accepts QUIC clients on a UDP port.
#[derive(Debug)]
pub struct QuicAcceptor {
    endpoint: Endpoint,
}

impl QuicAcceptor {
    /// Listens on UDP `addr`, presenting `identity`. `idle_timeout` is QUIC's own: keep it
    /// above the session's idle timeout so that the session's heartbeat rules decide, and QUIC
    /// only cleans up after a client that vanished.
    pub fn bind(
        addr: SocketAddr,
        identity: &TlsIdentity,
        idle_timeout: Duration,
    ) -> Result<QuicAcceptor, QuicError> {
        let tls = identity.server_config(&[ALPN])?;
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // One stream per connection, and nothing else: a client cannot make the server keep
        // state for more.
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            // Windows sized like the TCP path's buffers: enough for a full frame in flight
            // without holding megabytes per idle connection.
            .stream_receive_window(VarInt::from_u32(256 * 1024))
            .receive_window(VarInt::from_u32(512 * 1024))
            .send_window(1024 * 1024)
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(idle_timeout)
                    .map_err(|e| QuicError::Config(e.to_string()))?,
            ));
        config.transport_config(Arc::new(transport));
        config.migration(true);
        Ok(QuicAcceptor {
            endpoint: Endpoint::server(config, addr)?,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The endpoint, to close it on shutdown.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
}

impl Acceptor for QuicAcceptor {
    const TRANSPORT: &'static str = "quic";
    type Incoming = Incoming;
    type Stream = QuicStream;

    async fn accept(&mut self) -> std::io::Result<(Incoming, String)> {
        match self.endpoint.accept().await {
            Some(incoming) => {
                let peer = incoming.remote_address().to_string();
                Ok((incoming, peer))
            }
            // The endpoint was closed: nothing more will come. Wait for the shutdown that
            // closed it to stop the accept loop.
            None => std::future::pending().await,
        }
    }

    fn establish(&self, incoming: Incoming) -> Establishing<QuicStream> {
        Box::pin(async move {
            let connection = incoming.await?;
            let (send, recv) = connection.accept_bi().await?;
            Ok(QuicStream {
                connection,
                send,
                recv,
            })
        })
    }
}

/// The session's stream on a QUIC connection.
#[derive(Debug)]
pub struct QuicStream {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
}

impl ByteStream for QuicStream {
    type ReadHalf = RecvStream;
    type WriteHalf = QuicWriteHalf;

    fn split(self) -> (RecvStream, QuicWriteHalf) {
        (
            self.recv,
            QuicWriteHalf {
                connection: self.connection,
                send: Some(self.send),
            },
        )
    }

    fn abandon(writer: &mut QuicWriteHalf) {
        // The peer does not read: drop what is queued for it at once.
        writer
            .connection
            .close(VarInt::from_u32(CLOSE_CODE), b"not reading");
    }
}

/// The write half: the stream, and the connection kept alive as long as it is.
#[derive(Debug)]
pub struct QuicWriteHalf {
    connection: Connection,
    send: Option<SendStream>,
}

impl Drop for QuicWriteHalf {
    fn drop(&mut self) {
        // Closing the connection at once would discard the last frames still in flight (a
        // closing error, a kick): finish the stream and close once the client has them, or
        // after a few seconds.
        let Some(mut send) = self.send.take() else {
            return;
        };
        let connection = self.connection.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(3), send.stopped()).await;
                connection.close(VarInt::from_u32(CLOSE_CODE), b"");
            });
        }
    }
}

impl AsyncWrite for QuicWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().send.as_mut() {
            Some(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().send.as_mut() {
            Some(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().send.as_mut() {
            Some(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
