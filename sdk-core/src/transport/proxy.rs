//! Through an HTTP proxy with `CONNECT` (RFC 9110 §9.3.6): the proxy opens a TCP connection to
//! the server and relays bytes both ways; TLS then runs end to end through it
//! (`TlsConnector::over(.., HttpProxyConnector)`), so the proxy sees neither the token nor the
//! messages.

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{ByteStream, Connector, ServerAddress, TcpConnector};

/// Longest proxy answer head accepted.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Opens streams to the server through an HTTP proxy's `CONNECT`.
#[derive(Clone, Debug)]
pub struct HttpProxyConnector {
    proxy: ServerAddress,
}

impl HttpProxyConnector {
    /// Through the proxy at `proxy`.
    pub fn new(proxy: ServerAddress) -> HttpProxyConnector {
        HttpProxyConnector { proxy }
    }
}

impl Connector for HttpProxyConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        let to_proxy = TcpConnector.connect(&self.proxy);
        let proxy = self.proxy.clone();
        let target = server.to_string();
        Box::pin(async move {
            let mut stream = to_proxy.await?;
            let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            // Byte by byte up to the blank line: nothing after it may be consumed, since it
            // belongs to the server (the client speaks first in TLS, so little is read).
            let mut head = Vec::with_capacity(128);
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= MAX_ANSWER_HEAD {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("proxy {proxy}: answer head too long"),
                    ));
                }
                head.push(stream.read_u8().await?);
            }
            let status_line = String::from_utf8_lossy(&head);
            let status_line = status_line.lines().next().unwrap_or("");
            let status = status_line.split_whitespace().nth(1).unwrap_or("");
            if !status.starts_with('2') {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("proxy {proxy} refused CONNECT {target}: {status_line}"),
                ));
            }
            Ok(stream)
        })
    }
}
