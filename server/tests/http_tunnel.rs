//! The HTTP tunnel (SPEC §18): clients that can reach the gateway only with HTTP requests,
//! directly or through a proxy, chat like everyone else; the tunnel's requests keep to their
//! byte offsets; a tunnel nobody polls goes away.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sdk_core::transport::fallback::{FallbackConnector, FallbackOptions, Route};
use sdk_core::{
    Connector, HttpProxyConnector, HttpTunnelConnector, ServerAddress, TcpConnector, TlsConnector,
    TlsTrust,
};
use support::http_proxy::HttpProxy;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn start_with_tls(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--tls-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start_process(dir, &args)
}

fn dev_trust(server: &Server) -> TlsTrust {
    let pem = std::fs::read(server.data_dir.join("tls/cert.pem")).expect("the dev certificate");
    TlsTrust::pinned_ca_pem(&pem).expect("a certificate")
}

/// A port on which nothing listens: what a firewall that rejects the connection looks like.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn two_clients_chat_over_the_http_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &[]);
    let plain_http: Arc<dyn Connector> =
        Arc::new(HttpTunnelConnector::direct(Arc::new(TcpConnector)));
    let address = ServerAddress::from(server.addr);
    let (alice, mut alice_events) = start_client_over(
        &server,
        address.clone(),
        plain_http.clone(),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) = start_client_over(&server, address, plain_http, "bob", "phone");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "hello over HTTP",
    )
    .await;
}

#[tokio::test]
async fn a_client_tunnelling_over_https_and_a_tls_client_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path(), &[]);
    let tls = server.tls_addr.expect("TLS is on");
    let address = ServerAddress::new("localhost", tls.port());
    let tls_streams: Arc<dyn Connector> = Arc::new(TlsConnector::new(&dev_trust(&server)).unwrap());
    let https: Arc<dyn Connector> = Arc::new(HttpTunnelConnector::direct(tls_streams.clone()));
    // Alice over HTTPS-tunnelled requests, Bob over TLS, then the other way round.
    let (alice, mut alice_events) =
        start_client_over(&server, address.clone(), https.clone(), "alice", "phone");
    let (bob, mut bob_events) = start_client_over(
        &server,
        address.clone(),
        tls_streams.clone(),
        "bob",
        "phone",
    );
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "from the tunnel",
    )
    .await;
    drop((alice, bob));
    let (alice, mut alice_events) =
        start_client_over(&server, address.clone(), tls_streams, "alice", "laptop");
    let (_bob, mut bob_events) = start_client_over(&server, address, https, "bob", "laptop");
    // Bob's laptop first syncs what his phone got.
    wait_for(&mut bob_events, "the synced message", |e| match e {
        sdk_core::Event::MessageReceived(_) => Some(()),
        _ => None,
    })
    .await;
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "into the tunnel",
    )
    .await;
}

/// Only an HTTP proxy that refuses CONNECT reaches the gateway: direct connections are
/// refused, so the client falls back along its routes to plain requests through the proxy.
#[tokio::test]
async fn behind_a_proxy_that_passes_only_http_the_client_falls_back_to_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path(), &[]);
    let tls = server.tls_addr.expect("TLS is on");
    let proxy = HttpProxy::start(false).await;
    let trust = dev_trust(&server);
    let routes = |trust: &TlsTrust| {
        vec![
            Route::new("tls", Arc::new(TlsConnector::new(trust).unwrap()))
                .at(ServerAddress::new("localhost", refused_port())),
            Route::new(
                "tls via proxy",
                Arc::new(
                    TlsConnector::over(trust, Arc::new(HttpProxyConnector::new(proxy.addr.into())))
                        .unwrap(),
                ),
            )
            .at(ServerAddress::new("localhost", tls.port())),
            Route::new(
                "tunnel via proxy",
                Arc::new(HttpTunnelConnector::via_proxy(proxy.addr.into())),
            )
            .at(ServerAddress::from(server.addr)),
        ]
    };
    let alice_routes = Arc::new(FallbackConnector::new(
        routes(&trust),
        FallbackOptions::default(),
    ));
    let address = ServerAddress::new("localhost", tls.port());
    let (alice, mut alice_events) = start_client_over(
        &server,
        address.clone(),
        alice_routes.clone(),
        "alice",
        "laptop",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "through the proxy",
    )
    .await;
    assert_eq!(
        alice_routes.current_route().as_deref(),
        Some("tunnel via proxy")
    );
    assert!(proxy.plain_connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(proxy.connects.load(Ordering::SeqCst), 0);
}

/// The proxy cuts every connection mid-request, twice: the tunnel repeats what was lost on new
/// connections by offset, and the session never notices (no reconnect, nothing twice).
#[tokio::test]
async fn a_tunnel_survives_its_http_connections_being_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &[]);
    let proxy = HttpProxy::start(false).await;
    let (alice, mut alice_events) = start_client_over(
        &server,
        ServerAddress::from(server.addr),
        Arc::new(HttpTunnelConnector::via_proxy(proxy.addr.into())),
        "alice",
        "laptop",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    chat_once(&alice, &mut alice_events, &mut bob_events, "before the cut").await;
    for round in 0..2 {
        proxy.cut_all();
        let text = format!("after cut {round}");
        let sent = alice
            .send_text(sdk_core::Recipient::User("bob".into()), &text)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, alice_events.recv())
                .await
                .expect("the ack in time")
                .expect("the client runs");
            match event {
                sdk_core::Event::State(state) => {
                    assert_eq!(
                        state,
                        sdk_core::ConnectionState::Online,
                        "the session was lost"
                    );
                }
                sdk_core::Event::MessageUpdated(m)
                    if m.local_id == sent.local_id && m.state == sdk_core::SendState::Sent =>
                {
                    break;
                }
                _ => {}
            }
        }
        let received = wait_for(&mut bob_events, "the message", |e| match e {
            sdk_core::Event::MessageReceived(m) => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(String::from_utf8_lossy(&received.content), text);
    }
    assert!(proxy.plain_connections.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn a_proxy_that_allows_connect_carries_tls_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path(), &[]);
    let tls = server.tls_addr.expect("TLS is on");
    let proxy = HttpProxy::start(true).await;
    let through_proxy: Arc<dyn Connector> = Arc::new(
        TlsConnector::over(
            &dev_trust(&server),
            Arc::new(HttpProxyConnector::new(proxy.addr.into())),
        )
        .unwrap(),
    );
    let (alice, mut alice_events) = start_client_over(
        &server,
        ServerAddress::new("localhost", tls.port()),
        through_proxy,
        "alice",
        "laptop",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "tls through CONNECT",
    )
    .await;
    assert_eq!(proxy.connects.load(Ordering::SeqCst), 1);
}

/// One HTTP/1.1 request on its own connection: (status, head, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        answer[split + 4..].to_vec(),
    )
}

async fn open_tunnel(addr: std::net::SocketAddr) -> String {
    let (status, head, body) = http(addr, "POST", "/im/v1/tunnel", b"").await;
    assert_eq!(status, 200, "{head}");
    let id = String::from_utf8(body).unwrap();
    assert!(head.contains(&format!("x-im-tunnel: {id}")), "{head}");
    id
}

#[tokio::test]
async fn uploads_keep_to_their_offsets_and_unknown_tunnels_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &[]);
    let id = open_tunnel(server.addr).await;
    let up = |offset: u64| format!("/im/v1/tunnel/{id}/up?offset={offset}");
    // Five bytes of a frame header, then a repeat of them with three more: only the three new
    // ones are taken.
    let (status, head, _) = http(server.addr, "POST", &up(0), &[0, 0, 0, 0, 1]).await;
    assert_eq!(status, 200);
    assert!(head.contains("x-im-offset: 5"), "{head}");
    let (status, head, _) = http(server.addr, "POST", &up(0), &[0, 0, 0, 0, 1, 0, 0, 7]).await;
    assert_eq!(status, 200);
    assert!(head.contains("x-im-offset: 8"), "{head}");
    // A gap is refused, naming where to continue.
    let (status, head, _) = http(server.addr, "POST", &up(9), b"x").await;
    assert_eq!(status, 409);
    assert!(head.contains("x-im-offset: 8"), "{head}");
    // Polling past what was sent is a conflict too; a missing offset a bad request.
    let (status, _, _) = http(
        server.addr,
        "GET",
        &format!("/im/v1/tunnel/{id}/down?offset=99"),
        b"",
    )
    .await;
    assert_eq!(status, 409);
    let (status, _, _) = http(server.addr, "GET", &format!("/im/v1/tunnel/{id}/down"), b"").await;
    assert_eq!(status, 400);
    let (status, _, _) = http(server.addr, "GET", "/im/v1/tunnel/00ff/down?offset=0", b"").await;
    assert_eq!(status, 404);
    let (status, head, _) = http(server.addr, "GET", "/im/v1/tunnel", b"").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"), "{head}");
    let (status, _, _) = http(server.addr, "GET", "/index.html", b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_tunnel_whose_session_never_authenticates_ends_like_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &["--handshake-timeout-secs", "1"]);
    let id = open_tunnel(server.addr).await;
    // No handshake frame: the gateway gives up after its handshake timeout, and the poll
    // reports the session's end once the client has every byte of it.
    let mut offset = 0u64;
    let ended = loop {
        let (status, head, body) = http(
            server.addr,
            "GET",
            &format!("/im/v1/tunnel/{id}/down?offset={offset}"),
            b"",
        )
        .await;
        match status {
            200 => {
                assert!(head.contains(&format!("x-im-offset: {offset}")), "{head}");
                offset += body.len() as u64;
            }
            other => break other,
        }
    };
    assert!(ended == 410 || ended == 404, "ended with {ended}");
}

#[tokio::test]
async fn a_tunnel_nobody_polls_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &["--tunnel-idle-secs", "1"]);
    let id = open_tunnel(server.addr).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _, _) = http(
        server.addr,
        "POST",
        &format!("/im/v1/tunnel/{id}/up?offset=0"),
        b"",
    )
    .await;
    assert_eq!(status, 404);
}

/// Slow or half-open HTTP requests hold nothing for long: a head that never ends is cut off,
/// a body that never arrives is answered 408.
#[tokio::test]
async fn slow_requests_are_cut_off_at_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &["--tunnel-request-timeout-secs", "1"]);
    let mut slow_head = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow_head
        .write_all(b"POST /im/v1/tunnel HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow_head.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection")
        .ok();
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

    let id = open_tunnel(server.addr).await;
    let mut slow_body = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /im/v1/tunnel/{id}/up?offset=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), slow_body.read_exact(&mut answer))
        .await
        .expect("an answer before the body came")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
}

#[tokio::test]
async fn with_the_tunnel_off_http_is_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &["--no-http-tunnel"]);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /im/v1/tunnel HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    // Served as frames: "POST" is no frame header, and the connection is closed without an
    // HTTP answer.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}
