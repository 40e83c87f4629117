//! The state machine's side of the driver's backpressure, frame by frame with simulated time:
//! while the driver does not read (the app is behind on events), the machine keeps the server
//! hearing from it and does not blame the link for a silence of its own making; once reading
//! resumes, a link that really is silent is caught again.

use std::time::{Duration, Instant};

use im_protocol::{Body, Frame, pb};
use sdk_core::memory::MemoryStore;
use sdk_core::{Action, Client, ClientConfig, ConnectionState};

const HEARTBEAT: Duration = Duration::from_secs(1);

/// A client that completed its handshake and sync, online with a 1 s heartbeat, a 3 s idle
/// timeout and a 2 s pong timeout.
fn online_client(base: Instant) -> Client<MemoryStore> {
    let mut config = ClientConfig::new("bob", "phone");
    config.pong_timeout = Duration::from_secs(2);
    config.seed = 1;
    let mut client = Client::new(config, MemoryStore::new(), base).expect("memory store");
    client.set_token("token", base);
    client.connect(base);
    assert_eq!(client.poll_action(), Some(Action::Connect));
    client.on_connected(base);
    let hello = client.poll_transmit().expect("a handshake");
    let welcome = pb::HandshakeResp {
        user_id: "bob".into(),
        device_id: "phone".into(),
        protocol_version: 1,
        heartbeat_interval_ms: HEARTBEAT.as_millis() as u32,
        idle_timeout_ms: 3000,
        ..Default::default()
    };
    client.on_frame(Frame::new(hello.request_id, welcome), base);
    let sync = client.poll_transmit().expect("a sync request");
    client.on_frame(Frame::new(sync.request_id, pb::SyncResp::default()), base);
    assert_eq!(client.state(), ConnectionState::Online);
    while client.poll_transmit().is_some() {}
    client
}

/// Runs the machine's timers from `from` for `span`, as the driver would; returns the request
/// ids of the pings it wrote and the transport actions it asked for.
fn run_timers(
    client: &mut Client<MemoryStore>,
    from: Instant,
    span: Duration,
) -> (Vec<u32>, Vec<Action>) {
    let (mut pings, mut actions) = (Vec::new(), Vec::new());
    let end = from + span;
    while let Some(at) = client.next_timeout().filter(|&at| at <= end) {
        client.on_timeout(at.max(from));
        while let Some(frame) = client.poll_transmit() {
            if matches!(frame.decode_body(), Ok(Body::Ping(_))) {
                pings.push(frame.request_id);
            }
        }
        actions.extend(std::iter::from_fn(|| client.poll_action()));
        if !actions.is_empty() {
            break;
        }
    }
    (pings, actions)
}

#[test]
fn a_client_that_stops_reading_keeps_pinging_and_does_not_drop_the_link_for_its_own_silence() {
    let base = Instant::now();
    let mut client = online_client(base);

    client.pause_receiving(base);
    let (pings, actions) = run_timers(&mut client, base, Duration::from_secs(10));
    assert_eq!(
        actions,
        [],
        "no disconnect while the driver holds the server back"
    );
    assert_eq!(client.state(), ConnectionState::Online);
    assert!(
        pings.len() >= 9,
        "a ping every heartbeat even though no pong was read: {pings:?}"
    );

    // Reading resumes: the pongs waiting in the stream are read, and the link is healthy.
    let resumed = base + Duration::from_secs(10);
    client.resume_receiving(resumed);
    for id in pings {
        client.on_frame(Frame::new(id, pb::Pong::default()), resumed);
    }
    let (_, actions) = run_timers(&mut client, resumed, Duration::from_millis(1500));
    assert_eq!(actions, []);
    assert_eq!(client.state(), ConnectionState::Online);
}

#[test]
fn once_reading_resumes_a_silent_link_is_detected_again() {
    let base = Instant::now();
    let mut client = online_client(base);
    client.pause_receiving(base);
    let (_, actions) = run_timers(&mut client, base, Duration::from_secs(10));
    assert_eq!(actions, []);

    // Nothing arrives after the pause: the pong and idle timeouts count from the resume.
    let resumed = base + Duration::from_secs(10);
    client.resume_receiving(resumed);
    let (_, actions) = run_timers(&mut client, resumed, Duration::from_secs(1));
    assert_eq!(actions, [], "the pause itself is not held against the link");
    let (_, actions) = run_timers(
        &mut client,
        resumed + Duration::from_secs(1),
        Duration::from_secs(5),
    );
    assert_eq!(actions, [Action::Disconnect]);
    assert_eq!(client.state(), ConnectionState::WaitingToReconnect);
}
