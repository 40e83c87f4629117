//! The recommended list of routes (SPEC §8.5), best first, for a [`super::fallback::FallbackConnector`]:
//! what an app that only knows its server's host name, ports and (maybe) an HTTP proxy should
//! race.

use std::sync::Arc;

use super::fallback::Route;
use super::http_tunnel::HttpTunnelConnector;
use super::proxy::HttpProxyConnector;
use super::quic::QuicConnector;
use super::tls::{TlsConnector, TlsTrust, TlsTrustError};
use super::{ServerAddress, TcpConnector};

/// Where the server listens, and how the app's network reaches it.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// The server's host name (what its certificate names).
    pub host: String,
    /// The TLS port, also QUIC's (UDP) port: 443 in production.
    pub tls_port: u16,
    /// The plain port (8080), for the plain-HTTP tunnel through a proxy that allows no
    /// `CONNECT`, and for plain TCP when `allow_plain` is set.
    pub plain_port: Option<u16>,
    /// The HTTP proxy the app is configured with, if any.
    pub proxy: Option<ServerAddress>,
    /// Whom to trust for TLS and QUIC.
    pub trust: TlsTrust,
    /// Also try plain TCP and the plain-HTTP tunnel without a proxy: only on trusted networks,
    /// since the token crosses them in clear.
    pub allow_plain: bool,
}

/// The routes of SPEC §8.5 for `endpoints`, best first: QUIC, TLS, TLS through the proxy's
/// CONNECT, the tunnel over HTTPS (directly, then through CONNECT), then the clear ones the
/// configuration allows (the tunnel as plain requests to the proxy, plain TCP, the plain-HTTP
/// tunnel).
pub fn standard_routes(endpoints: &Endpoints) -> Result<Vec<Route>, TlsTrustError> {
    let tls_address = ServerAddress::new(endpoints.host.clone(), endpoints.tls_port);
    let trust = &endpoints.trust;
    let mut routes = vec![
        Route::new("quic", Arc::new(QuicConnector::new(trust)?)).at(tls_address.clone()),
        Route::new("tls", Arc::new(TlsConnector::new(trust)?)).at(tls_address.clone()),
    ];
    let through_proxy = endpoints
        .proxy
        .as_ref()
        .map(|proxy| -> Result<Arc<TlsConnector>, TlsTrustError> {
            Ok(Arc::new(TlsConnector::over(
                trust,
                Arc::new(HttpProxyConnector::new(proxy.clone())),
            )?))
        })
        .transpose()?;
    if let Some(through_proxy) = &through_proxy {
        routes.push(Route::new("tls via proxy", through_proxy.clone()).at(tls_address.clone()));
    }
    routes.push(
        Route::new(
            "https tunnel",
            Arc::new(HttpTunnelConnector::direct(Arc::new(TlsConnector::new(
                trust,
            )?))),
        )
        .at(tls_address.clone()),
    );
    if let Some(through_proxy) = through_proxy {
        routes.push(
            Route::new(
                "https tunnel via proxy",
                Arc::new(HttpTunnelConnector::direct(through_proxy)),
            )
            .at(tls_address.clone()),
        );
    }
    if let Some(plain_port) = endpoints.plain_port {
        let plain_address = ServerAddress::new(endpoints.host.clone(), plain_port);
        if let Some(proxy) = &endpoints.proxy {
            routes.push(
                Route::new(
                    "http tunnel via proxy",
                    Arc::new(HttpTunnelConnector::via_proxy(proxy.clone())),
                )
                .at(plain_address.clone()),
            );
        }
        if endpoints.allow_plain {
            routes.push(Route::new("tcp", Arc::new(TcpConnector)).at(plain_address.clone()));
            routes.push(
                Route::new(
                    "http tunnel",
                    Arc::new(HttpTunnelConnector::direct(Arc::new(TcpConnector))),
                )
                .at(plain_address),
            );
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(routes: &[Route]) -> Vec<&str> {
        routes.iter().map(Route::name).collect()
    }

    fn endpoints() -> Endpoints {
        Endpoints {
            host: "chat.example.org".into(),
            tls_port: 443,
            plain_port: Some(8080),
            proxy: None,
            trust: TlsTrust::default(),
            allow_plain: false,
        }
    }

    #[test]
    fn without_a_proxy_only_encrypted_direct_routes_are_raced() {
        let routes = standard_routes(&endpoints()).unwrap();
        assert_eq!(names(&routes), ["quic", "tls", "https tunnel"]);
    }

    #[test]
    fn a_proxy_adds_connect_and_plain_requests_after_the_direct_routes() {
        let routes = standard_routes(&Endpoints {
            proxy: Some(ServerAddress::new("proxy.corp", 3128)),
            ..endpoints()
        })
        .unwrap();
        assert_eq!(
            names(&routes),
            [
                "quic",
                "tls",
                "tls via proxy",
                "https tunnel",
                "https tunnel via proxy",
                "http tunnel via proxy"
            ]
        );
    }

    #[test]
    fn clear_routes_come_last_and_only_when_allowed() {
        let routes = standard_routes(&Endpoints {
            allow_plain: true,
            ..endpoints()
        })
        .unwrap();
        assert_eq!(
            names(&routes),
            ["quic", "tls", "https tunnel", "tcp", "http tunnel"]
        );
    }
}
