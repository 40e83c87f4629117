//! One listening port for every kind of client: the first byte a client sends tells what it
//! speaks. A native connection starts with a frame's length, whose first byte is 0x00 (bodies
//! are under 16 MiB); a TLS client starts with a handshake record (0x16); an HTTP client with
//! a method name in capitals. Inside TLS the same look tells native frames from HTTP. HTTP
//! connections go to the tunnel ([`super::http_tunnel`]); the others are served as sessions.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::server::TlsStream;

use super::http_tunnel::TunnelServer;
use super::tcp::TcpAcceptor;
use super::tls::{TlsError, TlsIdentity};
use super::{Acceptor, ByteStream, Establishing, handed_off};

/// What the first byte of a connection says it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// Native frames.
    Frames,
    /// A TLS handshake.
    Tls,
    /// HTTP/1.x (a request line starts with an upper-case method name).
    Http,
}

impl Speaks {
    /// Classifies a connection by its first byte.
    pub fn from_first_byte(byte: u8) -> Speaks {
        match byte {
            0x16 => Speaks::Tls,
            b'A'..=b'Z' => Speaks::Http,
            _ => Speaks::Frames,
        }
    }
}

/// Accepts clients on one TCP port and serves whatever they speak that this port offers.
pub struct FrontDoor {
    tcp: TcpAcceptor,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Only TLS is accepted on the outside (a 443 port: nothing crosses it in clear).
    tls_only: bool,
    tunnel: Option<Arc<TunnelServer>>,
    /// How long to wait for a plain connection's first byte before serving it as frames
    /// anyway, so a silent client still gets the session's HANDSHAKE_TIMEOUT (its deadline
    /// counts from the accept) instead of being dropped by the setup deadline.
    sniff_timeout: Duration,
}

/// Default of the wait for a first byte: under the default handshake deadline (5 s).
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_secs(4);

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .field("tls_only", &self.tls_only)
            .field("tunnel", &self.tunnel.is_some())
            .finish()
    }
}

impl FrontDoor {
    /// Plain native frames, plus TLS when `identity` is given and the HTTP tunnel when
    /// `tunnel` is. Accepted sockets get a kernel send buffer of `send_buffer` bytes (0 = the
    /// kernel's autotuning).
    pub fn bind(
        addr: SocketAddr,
        send_buffer: u32,
        identity: Option<&TlsIdentity>,
        tunnel: Option<Arc<TunnelServer>>,
    ) -> Result<FrontDoor, FrontDoorError> {
        Ok(FrontDoor {
            tcp: TcpAcceptor::bind(addr, send_buffer)?,
            tls: identity.map(tls_acceptor).transpose()?,
            tls_only: false,
            tunnel,
            sniff_timeout: DEFAULT_SNIFF_TIMEOUT,
        })
    }

    /// TLS only on the outside; native frames, and HTTP when `tunnel` is given, inside.
    pub fn bind_tls_only(
        addr: SocketAddr,
        send_buffer: u32,
        identity: &TlsIdentity,
        tunnel: Option<Arc<TunnelServer>>,
    ) -> Result<FrontDoor, FrontDoorError> {
        Ok(FrontDoor {
            tcp: TcpAcceptor::bind(addr, send_buffer)?,
            tls: Some(tls_acceptor(identity)?),
            tls_only: true,
            tunnel,
            sniff_timeout: DEFAULT_SNIFF_TIMEOUT,
        })
    }

    /// Waits at most `timeout` for a first byte (keep it under the handshake deadline).
    pub fn with_sniff_timeout(mut self, timeout: Duration) -> FrontDoor {
        self.sniff_timeout = timeout;
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Why a front door could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// The port could not be bound.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS identity is unusable.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

fn tls_acceptor(identity: &TlsIdentity) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    Ok(tokio_rustls::TlsAcceptor::from(
        identity.server_config(&[])?,
    ))
}

impl Acceptor for FrontDoor {
    const TRANSPORT: &'static str = "tcp";
    type Incoming = TcpStream;
    type Stream = FrontStream;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, String)> {
        self.tcp.accept().await
    }

    fn establish(&self, stream: TcpStream) -> Establishing<FrontStream> {
        let tls = self.tls.clone();
        let tls_only = self.tls_only;
        let tunnel = self.tunnel.clone();
        let sniff_timeout = self.sniff_timeout;
        Box::pin(async move {
            let _ = stream.set_nodelay(true);
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let mut first = [0u8; 1];
            let speaks = match tokio::time::timeout(sniff_timeout, stream.peek(&mut first)).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => Speaks::from_first_byte(first[0]),
                Ok(Err(e)) => return Err(e),
                // Silent: the session's deadline deals with it (a TLS-only port just closes).
                Err(_) => Speaks::Frames,
            };
            match (speaks, &tls) {
                (Speaks::Tls, Some(tls)) => {
                    let mut inner = Rewind::new(tls.accept(stream).await?);
                    let inside = match tokio::time::timeout(sniff_timeout, inner.peek_byte()).await
                    {
                        Ok(first) => Speaks::from_first_byte(first?),
                        Err(_) => Speaks::Frames,
                    };
                    match (inside, tunnel) {
                        (Speaks::Http, Some(tunnel)) => {
                            tunnel.serve_http(inner, peer);
                            Err(handed_off())
                        }
                        _ => Ok(FrontStream::Tls(Box::new(inner))),
                    }
                }
                _ if tls_only => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a TLS client on a TLS-only port",
                )),
                (Speaks::Http, _) if tunnel.is_some() => {
                    tunnel.expect("checked").serve_http(stream, peer);
                    Err(handed_off())
                }
                _ => Ok(FrontStream::Plain(stream)),
            }
        })
    }
}

/// A session's stream from the front door.
pub enum FrontStream {
    /// Native frames over plain TCP.
    Plain(TcpStream),
    /// Native frames inside TLS.
    Tls(Box<Rewind<TlsStream<TcpStream>>>),
}

impl ByteStream for FrontStream {
    type ReadHalf = FrontReadHalf;
    type WriteHalf = FrontWriteHalf;

    fn split(self) -> (FrontReadHalf, FrontWriteHalf) {
        match self {
            FrontStream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (FrontReadHalf::Plain(read), FrontWriteHalf::Plain(write))
            }
            FrontStream::Tls(tls) => {
                let (read, write) = tokio::io::split(*tls);
                (FrontReadHalf::Tls(read), FrontWriteHalf::Tls(write))
            }
        }
    }

    fn transport(&self) -> Option<&'static str> {
        Some(match self {
            FrontStream::Plain(_) => "tcp",
            FrontStream::Tls(_) => "tls",
        })
    }

    fn abandon(writer: &mut FrontWriteHalf) {
        if let FrontWriteHalf::Plain(write) = writer {
            TcpStream::abandon(write);
        }
    }
}

/// The read half of a [`FrontStream`].
pub enum FrontReadHalf {
    /// TCP's own (lock-free) half.
    Plain(OwnedReadHalf),
    /// A TLS stream's half.
    Tls(tokio::io::ReadHalf<Rewind<TlsStream<TcpStream>>>),
}

/// The write half of a [`FrontStream`].
pub enum FrontWriteHalf {
    /// TCP's own (lock-free) half.
    Plain(OwnedWriteHalf),
    /// A TLS stream's half.
    Tls(tokio::io::WriteHalf<Rewind<TlsStream<TcpStream>>>),
}

impl AsyncRead for FrontReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            FrontReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            FrontReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for FrontWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            FrontWriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            FrontWriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            FrontWriteHalf::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            FrontWriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            FrontWriteHalf::Plain(w) => w.is_write_vectored(),
            FrontWriteHalf::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            FrontWriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            FrontWriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            FrontWriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            FrontWriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A stream whose first bytes were read to look at them and are handed out again.
#[derive(Debug)]
pub struct Rewind<S> {
    seen: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> Rewind<S> {
    /// Wraps `inner`, nothing seen yet.
    pub fn new(inner: S) -> Rewind<S> {
        Rewind {
            seen: Bytes::new(),
            inner,
        }
    }

    /// Reads the first byte and keeps it for the reader.
    pub async fn peek_byte(&mut self) -> std::io::Result<u8> {
        if let Some(&b) = self.seen.first() {
            return Ok(b);
        }
        let b = self.inner.read_u8().await?;
        self.seen = Bytes::copy_from_slice(&[b]);
        Ok(b)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.seen.is_empty() {
            let n = this.seen.len().min(buf.remaining());
            buf.put_slice(&this.seen[..n]);
            this.seen.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_byte_tells_frames_tls_and_http_apart() {
        // A frame's length starts with 0x00 (bodies are under 16 MiB).
        assert_eq!(Speaks::from_first_byte(0x00), Speaks::Frames);
        assert_eq!(Speaks::from_first_byte(0x16), Speaks::Tls);
        for method in ["GET", "POST", "DELETE", "CONNECT", "OPTIONS", "HEAD", "PUT"] {
            assert_eq!(
                Speaks::from_first_byte(method.as_bytes()[0]),
                Speaks::Http,
                "{method}"
            );
        }
        // Anything else is served as frames and refused by the frame rules.
        assert_eq!(Speaks::from_first_byte(b'g'), Speaks::Frames);
    }
}
