//! In-process byte streams: a client "dials" a [`MemoryDialer`] and the gateway serves the
//! other end through a [`MemoryAcceptor`]. For tests and simulations that want the gateway's
//! real connection handling without sockets.

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::{Acceptor, AnyStream, Establishing};

/// Bytes buffered in each direction of a dialed pipe: like a socket buffer, a peer that stops
/// reading stalls the writer once this is full.
pub const PIPE_BUFFER_BYTES: usize = 256 * 1024;

/// Connections waiting to be accepted.
const BACKLOG: usize = 1024;

/// A listener for in-process connections, and the dialer its clients use.
pub fn listener() -> (MemoryAcceptor, MemoryDialer) {
    let (tx, rx) = mpsc::channel(BACKLOG);
    (
        MemoryAcceptor { incoming: rx },
        MemoryDialer {
            listener: tx,
            next: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        },
    )
}

/// Opens in-process connections to a [`MemoryAcceptor`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemoryDialer {
    listener: mpsc::Sender<(DuplexStream, String)>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl MemoryDialer {
    /// Opens one connection; `None` when the acceptor is gone (the gateway stopped).
    pub async fn dial(&self) -> Option<DuplexStream> {
        let (client, server) = tokio::io::duplex(PIPE_BUFFER_BYTES);
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.listener
            .send((server, format!("memory-{n}")))
            .await
            .ok()?;
        Some(client)
    }
}

/// Accepts the connections of a [`MemoryDialer`].
#[derive(Debug)]
pub struct MemoryAcceptor {
    incoming: mpsc::Receiver<(DuplexStream, String)>,
}

impl Acceptor for MemoryAcceptor {
    const TRANSPORT: &'static str = "memory";
    type Incoming = DuplexStream;
    type Stream = AnyStream<DuplexStream>;

    async fn accept(&mut self) -> std::io::Result<(DuplexStream, String)> {
        match self.incoming.recv().await {
            Some(accepted) => Ok(accepted),
            // Every dialer is gone: no connection will ever come; wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn establish(&self, stream: DuplexStream) -> Establishing<AnyStream<DuplexStream>> {
        Box::pin(async move { Ok(AnyStream(stream)) })
    }
}
