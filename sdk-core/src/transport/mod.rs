//! How the driver reaches the server: a [`Connector`] opens [`ByteStream`]s to a
//! [`ServerAddress`]. The driver only needs an ordered, reliable byte stream, so TLS (which needs
//! the host name for SNI), QUIC streams or an in-memory pipe in tests plug in here without the
//! driver or the state machine changing. [`TcpConnector`] is the default; [`tls::TlsConnector`]
//! verifies the server's certificate for the host name dialled.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use futures::future::BoxFuture;

pub mod fallback;
pub mod http_tunnel;
pub mod proxy;
pub mod quic;
pub mod routes;
pub mod tls;

/// An ordered, reliable byte stream to the server (TCP today; TLS, QUIC streams later).
pub trait ByteStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// Opens byte streams to a server named by host name and port.
pub trait Connector: Send + Sync + 'static {
    /// Opens one stream to `server`. The driver applies its own connect timeout.
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>>;

    /// Resolves when a better way to the server than the last stream's has become reachable
    /// (the connector found QUIC working again while the session runs over the HTTP tunnel,
    /// say). The driver asks after each connect and, when this resolves, moves the session to a
    /// new connection as soon as nothing awaits an answer. The default never resolves.
    fn better_route(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

/// Where the server is: a host name (or IP literal) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddress {
    /// A host name, or an IP literal (an IPv6 one without brackets).
    pub host: String,
    /// The TCP (or UDP) port.
    pub port: u16,
}

impl ServerAddress {
    /// `host` and `port`.
    pub fn new(host: impl Into<String>, port: u16) -> ServerAddress {
        ServerAddress {
            host: host.into(),
            port,
        }
    }
}

impl From<SocketAddr> for ServerAddress {
    fn from(addr: SocketAddr) -> ServerAddress {
        ServerAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An IPv6 literal needs brackets, or its colons would run into the port's.
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A server address that is not `host:port` or `[v6]:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid server address {input:?}: {reason} (expected host:port or [v6]:port)")]
pub struct AddressParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for ServerAddress {
    type Err = AddressParseError;

    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    fn from_str(input: &str) -> Result<ServerAddress, AddressParseError> {
        let bad = |reason| AddressParseError {
            input: input.to_owned(),
            reason,
        };
        let (host, port) = if let Some(rest) = input.strip_prefix('[') {
            let (host, rest) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| bad("no port after ']'"))?;
            (host, port)
        } else {
            let (host, port) = input.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            if host.contains(':') {
                return Err(bad("an IPv6 address needs brackets"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = port
            .parse()
            .map_err(|_| bad("the port is not a number 0-65535"))?;
        Ok(ServerAddress::new(host, port))
    }
}

/// Plain TCP: resolves the host name, tries each address, sets TCP_NODELAY.
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        let server = server.clone();
        Box::pin(async move {
            let mut last_error = None;
            for addr in tokio::net::lookup_host((server.host.as_str(), server.port)).await? {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        // Frames are small and latency matters more than packet count.
                        let _ = stream.set_nodelay(true);
                        return Ok(Box::new(stream) as Box<dyn ByteStream>);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %addr, "connect failed; trying the next address");
                        last_error = Some(e);
                    }
                }
            }
            Err(last_error.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} resolves to no address", server.host),
                )
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_ip_literals_and_bracketed_v6_parse() {
        assert_eq!(
            "localhost:8080".parse(),
            Ok(ServerAddress::new("localhost", 8080))
        );
        assert_eq!(
            "10.0.0.7:443".parse(),
            Ok(ServerAddress::new("10.0.0.7", 443))
        );
        assert_eq!("[::1]:9000".parse(), Ok(ServerAddress::new("::1", 9000)));
    }

    #[test]
    fn addresses_without_a_usable_port_or_host_are_refused() {
        for bad in [
            "localhost",
            "localhost:",
            ":8080",
            "::1:8080",
            "[::1]8080",
            "[::1:8080",
            "host:99999",
        ] {
            assert!(bad.parse::<ServerAddress>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn display_round_trips_and_socket_addresses_convert() {
        for text in ["example.org:1", "127.0.0.1:8080", "[2001:db8::1]:443"] {
            let addr: ServerAddress = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
        let v6: SocketAddr = "[::1]:7".parse().unwrap();
        assert_eq!(ServerAddress::from(v6), ServerAddress::new("::1", 7));
    }
}
