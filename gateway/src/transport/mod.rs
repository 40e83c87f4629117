//! Transports: where connections come from. The gateway serves any ordered, reliable byte
//! stream; each transport is one [`Acceptor`] that yields such streams. Plain TCP is
//! [`tcp::TcpAcceptor`]; [`memory`] serves in-process streams (tests, simulations). TLS
//! ([`tls`]), QUIC streams and the HTTP tunnel ([`http_tunnel`]) plug in here; [`front_door`]
//! serves native frames, TLS and HTTP on one port by the first byte each client sends.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub mod front_door;
pub mod http_tunnel;
pub mod memory;
pub mod quic;
pub mod tcp;
pub mod tls;

/// An ordered, reliable byte stream to one client, split into the halves the connection's
/// reader and writer tasks own.
pub trait ByteStream: Send + 'static {
    /// The half the connection task reads frames from.
    type ReadHalf: AsyncRead + Send + Unpin + 'static;
    /// The half the writer task writes frames to.
    type WriteHalf: AsyncWrite + Send + Unpin + 'static;

    /// Splits the stream so reading and writing proceed independently.
    fn split(self) -> (Self::ReadHalf, Self::WriteHalf);

    /// The peer stopped reading and the connection gives up on it: drop whatever is still
    /// buffered for it instead of trying to deliver it (TCP resets the connection). The
    /// default does nothing more than the close that follows.
    fn abandon(_writer: &mut Self::WriteHalf) {}

    /// The transport's name in metrics and logs, when the stream knows it (a front door's
    /// stream is TCP or TLS); otherwise its acceptor's [`Acceptor::TRANSPORT`] names it.
    fn transport(&self) -> Option<&'static str> {
        None
    }
}

/// Any `AsyncRead + AsyncWrite` stream, split with [`tokio::io::split`]: how a transport
/// whose stream has no split of its own (TLS, an in-memory pipe) is served.
#[derive(Debug)]
pub struct AnyStream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for AnyStream<S> {
    type ReadHalf = tokio::io::ReadHalf<S>;
    type WriteHalf = tokio::io::WriteHalf<S>;

    fn split(self) -> (Self::ReadHalf, Self::WriteHalf) {
        tokio::io::split(self.0)
    }
}

/// Finishes setting up an accepted connection (a TLS handshake, say); see
/// [`Acceptor::establish`].
pub type Establishing<S> = Pin<Box<dyn Future<Output = std::io::Result<S>> + Send>>;

/// What [`Acceptor::establish`] fails with when the connection was handed to something other
/// than a session (an HTTP connection, to the tunnel): not an error, nothing to log.
pub fn handed_off() -> std::io::Error {
    std::io::Error::other(HandedOff)
}

/// Whether `error` is [`handed_off`].
pub fn is_handed_off(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<HandedOff>())
}

#[derive(Debug)]
struct HandedOff;

impl std::fmt::Display for HandedOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("handed to another server")
    }
}

impl std::error::Error for HandedOff {}

/// One transport's source of client connections.
pub trait Acceptor: Send + 'static {
    /// The transport's name in metrics and logs (`tcp`, `tls`, `quic`, `memory`), unless the
    /// stream says otherwise ([`ByteStream::transport`]).
    const TRANSPORT: &'static str = "other";
    /// What [`Acceptor::accept`] yields: a connection before its transport-level setup.
    type Incoming: Send + 'static;
    /// The stream the connection is served over once set up.
    type Stream: ByteStream;

    /// Waits for the next connection; returns it with a description of the peer for the logs.
    /// An error is retried after a short pause (usually it is EMFILE); it does not stop the
    /// gateway.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Incoming, String)>> + Send;

    /// Sets the connection up. Runs in the connection's own task and within its handshake
    /// deadline, so a slow or silent peer (a TLS handshake that never finishes) holds up only
    /// itself, never the accept loop.
    fn establish(&self, incoming: Self::Incoming) -> Establishing<Self::Stream>;
}
