//! QUIC carries the same conversation as every other transport; a client whose address changes
//! keeps its session (connection migration); where UDP does not get through, the client's
//! fallback settles on TLS within a stagger, not a QUIC timeout.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdk_core::transport::fallback::{FallbackConnector, FallbackOptions, Route};
use sdk_core::{
    ConnectionState, Connector, Event, HttpTunnelConnector, QuicConnector, SendState,
    ServerAddress, TcpConnector, TlsConnector, TlsTrust,
};
use support::udp_relay::UdpRelay;
use support::*;

fn start_with_quic(dir: &std::path::Path) -> Server {
    Server::start_process(dir, &["--tls-listen", "127.0.0.1:0"])
}

fn dev_trust(server: &Server) -> TlsTrust {
    let pem = std::fs::read(server.data_dir.join("tls/cert.pem")).expect("the dev certificate");
    TlsTrust::pinned_ca_pem(&pem).expect("a certificate")
}

/// QUIC listens on UDP at the TLS port's number.
fn quic_address(server: &Server) -> ServerAddress {
    ServerAddress::new("127.0.0.1", server.tls_addr.expect("TLS is on").port())
}

#[tokio::test]
async fn two_clients_chat_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_quic(dir.path());
    let quic: Arc<dyn Connector> = Arc::new(QuicConnector::new(&dev_trust(&server)).unwrap());
    let (alice, mut alice_events) = start_client_over(
        &server,
        quic_address(&server),
        quic.clone(),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) =
        start_client_over(&server, quic_address(&server), quic, "bob", "phone");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "hello over QUIC",
    )
    .await;
}

#[tokio::test]
async fn a_quic_client_and_a_tunnel_client_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_quic(dir.path());
    let quic: Arc<dyn Connector> = Arc::new(QuicConnector::new(&dev_trust(&server)).unwrap());
    let tunnel: Arc<dyn Connector> = Arc::new(HttpTunnelConnector::direct(Arc::new(TcpConnector)));
    let (alice, mut alice_events) =
        start_client_over(&server, quic_address(&server), quic, "alice", "phone");
    let (_bob, mut bob_events) = start_client_over(
        &server,
        ServerAddress::from(server.addr),
        tunnel,
        "bob",
        "laptop",
    );
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "from QUIC to HTTP",
    )
    .await;
}

#[tokio::test]
async fn a_quic_client_whose_address_changes_keeps_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_quic(dir.path());
    let quic = Arc::new(QuicConnector::new(&dev_trust(&server)).unwrap());
    let (alice, mut alice_events) = start_client_over(
        &server,
        quic_address(&server),
        quic.clone(),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "before the move",
    )
    .await;

    let before = quic.local_addr().expect("connected");
    quic.rebind_local().unwrap();
    let after = quic.local_addr().unwrap();
    assert_ne!(before.port(), after.port(), "the client has a new address");

    // The same session carries on: the send is acked without the client ever leaving Online.
    let sent = alice
        .send_text(sdk_core::Recipient::User("bob".into()), "after the move")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, alice_events.recv())
            .await
            .expect("the ack in time")
            .expect("the client runs");
        match event {
            Event::State(state) => {
                assert_eq!(state, ConnectionState::Online, "the session was lost");
            }
            Event::MessageUpdated(m)
                if m.local_id == sent.local_id && m.state == SendState::Sent =>
            {
                break;
            }
            _ => {}
        }
    }
    let received = wait_for(&mut bob_events, "the message after the move", |e| match e {
        Event::MessageReceived(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&received.content), "after the move");
}

#[tokio::test]
async fn where_udp_is_dropped_the_client_settles_on_tls_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_quic(dir.path());
    let tls = server.tls_addr.unwrap();
    // Every datagram to the QUIC route vanishes, as behind a firewall that drops UDP.
    let relay = UdpRelay::start(tls, true).await;
    let trust = dev_trust(&server);
    let routes = Arc::new(FallbackConnector::new(
        vec![
            Route::new("quic", Arc::new(QuicConnector::new(&trust).unwrap()))
                .at(ServerAddress::new("127.0.0.1", relay.addr.port())),
            Route::new("tls", Arc::new(TlsConnector::new(&trust).unwrap()))
                .at(ServerAddress::new("127.0.0.1", tls.port())),
        ],
        FallbackOptions::default(),
    ));
    let started = Instant::now();
    let (alice, mut alice_events) = start_client_over(
        &server,
        ServerAddress::new("127.0.0.1", tls.port()),
        routes.clone(),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "over TLS instead",
    )
    .await;
    assert_eq!(routes.current_route().as_deref(), Some("tls"));
    // The QUIC attempt (10 s before it counts as failed) did not hold the client up.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_quic_off_no_quic_listener_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &["--tls-listen", "127.0.0.1:0", "--no-quic"]);
    let quic = QuicConnector::new(&dev_trust(&server)).unwrap();
    let attempt =
        tokio::time::timeout(Duration::from_secs(3), quic.connect(&quic_address(&server))).await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "QUIC answered with --no-quic"
    );
}

/// UDP comes back (the user left the hotel Wi-Fi): the client, settled on TLS, finds QUIC
/// reachable on its next probe and moves the session there, and the conversation goes on.
#[tokio::test]
async fn when_udp_comes_back_the_session_moves_up_to_quic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_quic(dir.path());
    let tls = server.tls_addr.unwrap();
    let relay = UdpRelay::start(tls, true).await;
    let trust = dev_trust(&server);
    let routes = Arc::new(FallbackConnector::new(
        vec![
            Route::new("quic", Arc::new(QuicConnector::new(&trust).unwrap()))
                .at(ServerAddress::new("127.0.0.1", relay.addr.port())),
            Route::new("tls", Arc::new(TlsConnector::new(&trust).unwrap()))
                .at(ServerAddress::new("127.0.0.1", tls.port())),
        ],
        FallbackOptions {
            probe_interval: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(2),
            ..FallbackOptions::default()
        },
    ));
    let (alice, mut alice_events) = start_client_over(
        &server,
        ServerAddress::new("127.0.0.1", tls.port()),
        routes.clone(),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "phone");
    chat_once(&alice, &mut alice_events, &mut bob_events, "over TLS").await;
    assert_eq!(routes.current_route().as_deref(), Some("tls"));

    relay.set_blocked(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while routes.current_route().as_deref() != Some("quic") {
        assert!(Instant::now() < deadline, "the session never moved to QUIC");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    chat_once(&alice, &mut alice_events, &mut bob_events, "over QUIC").await;
}
