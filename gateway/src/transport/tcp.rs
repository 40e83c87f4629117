//! Plain TCP.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{Acceptor, ByteStream, Establishing};

impl ByteStream for TcpStream {
    type ReadHalf = OwnedReadHalf;
    type WriteHalf = OwnedWriteHalf;

    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }

    fn abandon(writer: &mut OwnedWriteHalf) {
        // Reset instead of a graceful close: the unsent bytes are dropped at once rather than
        // kept in the kernel for a peer that does not read.
        #[allow(deprecated)]
        let _ = writer.as_ref().set_linger(Some(Duration::ZERO));
    }
}

/// Accepts plain-TCP clients.
#[derive(Debug)]
pub struct TcpAcceptor {
    listener: TcpListener,
}

impl TcpAcceptor {
    /// Listens on `addr`. Accepted sockets get a kernel send buffer of `send_buffer` bytes
    /// (0 = the kernel's autotuning).
    pub fn bind(addr: SocketAddr, send_buffer: u32) -> std::io::Result<TcpAcceptor> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        // Accepted sockets inherit the listener's send buffer size.
        if send_buffer > 0 {
            socket.set_send_buffer_size(send_buffer)?;
        }
        socket.bind(addr)?;
        Ok(TcpAcceptor {
            listener: socket.listen(1024)?,
        })
    }

    /// Serves an already bound listener.
    pub fn from_listener(listener: TcpListener) -> TcpAcceptor {
        TcpAcceptor { listener }
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Acceptor for TcpAcceptor {
    const TRANSPORT: &'static str = "tcp";
    type Incoming = TcpStream;
    type Stream = TcpStream;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, String)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((stream, peer.to_string()))
    }

    fn establish(&self, stream: TcpStream) -> Establishing<TcpStream> {
        Box::pin(async move {
            // Frames are small and latency matters more than packet count; the writer
            // coalesces what is queued into one write anyway.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        })
    }
}
