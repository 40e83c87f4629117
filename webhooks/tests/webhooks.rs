//! The webhooks against a real HTTP server on 127.0.0.1, scripted per test.

mod receiver;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_webhooks::signature::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use im_webhooks::{
    AfterEvent, AfterEventDelivery, BeforeSend, BeforeSendDecision, BeforeSendRequest,
    FailurePolicy, GroupChange, WebhookConfig, Webhooks, verify, verify_headers,
};
use receiver::{Receiver, Reply, eventually, init_tracing};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"test-secret-0123456789abcdef";
const TOLERANCE: Duration = Duration::from_secs(300);

/// A configuration for `receiver` with backoffs short enough for tests.
fn config_for(receiver: &Receiver) -> WebhookConfig {
    let mut config = WebhookConfig::new(&receiver.url, SECRET).unwrap();
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    // Generous: a loaded test machine must not turn a prompt answer into a timeout.
    config.timeout = Duration::from_secs(10);
    config
}

fn start(config: WebhookConfig) -> Webhooks {
    Webhooks::start(config, CancellationToken::new()).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hello_from_alice() -> BeforeSend {
    BeforeSend {
        sender_user: "alice".into(),
        sender_device: "alice-phone".into(),
        conversation_id: "d:alice:bob".into(),
        to_user: Some("bob".into()),
        to_group: None,
        client_msg_id: "m-1".into(),
        content_type: 0,
        content: b"hello bob".to_vec(),
    }
}

fn alice_online() -> AfterEvent {
    AfterEvent::UserOnline {
        user: "alice".into(),
        device: "alice-phone".into(),
    }
}

fn message_number(n: u64) -> AfterEvent {
    AfterEvent::MessageSent {
        conversation_id: "d:alice:bob".into(),
        server_msg_id: 1000 + n,
        conversation_seq: n,
        sender_user: "alice".into(),
        sender_device: "alice-phone".into(),
        client_msg_id: format!("m-{n}"),
        content_type: 0,
        content: format!("message {n}").into_bytes(),
        server_time_ms: 1_700_000_000_000 + n,
    }
}

/// A receiver whose every answer waits for a permit from the returned gate, answering 200.
async fn gated_receiver() -> (Receiver, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let waiting = gate.clone();
    let receiver = Receiver::scripted(move |_, _| {
        let gate = waiting.clone();
        Box::pin(async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            Reply::status(200)
        })
    })
    .await;
    (receiver, gate)
}

// ---------------------------------------------------------------------------------------------
// Signing

#[tokio::test]
async fn every_request_is_signed_and_a_tampered_body_fails_verification() {
    init_tracing();
    let receiver = Receiver::answering(|_| Reply::json(json!({"action": "allow"}))).await;
    let hooks = start(config_for(&receiver));

    assert_eq!(
        hooks.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Allow
    );
    hooks.after(alice_online());
    eventually("the after-event is delivered", || {
        hooks.stats().delivered == 1
    })
    .await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert!(
            verify_headers(
                SECRET,
                &request.headers,
                &request.body,
                unix_now(),
                TOLERANCE
            ),
            "signature of {:?}",
            request.headers
        );
        assert!(request.header(SIGNATURE_HEADER).starts_with("v1="));
        let delivery_id = request.header(DELIVERY_HEADER);
        assert_eq!(delivery_id.len(), 32);
        assert_eq!(request.json()["delivery_id"], delivery_id);
        assert_eq!(request.json()["event"], request.header(EVENT_HEADER));

        let mut tampered = request.body.to_vec();
        tampered.extend_from_slice(b" ");
        assert!(!verify(
            SECRET,
            request.header(TIMESTAMP_HEADER),
            request.header(SIGNATURE_HEADER),
            &tampered,
            unix_now(),
            TOLERANCE
        ));
        assert!(!verify_headers(
            b"some-other-secret-0123456789",
            &request.headers,
            &request.body,
            unix_now(),
            TOLERANCE
        ));
    }
    assert_eq!(requests[0].header(EVENT_HEADER), "before_send");
    assert_eq!(requests[1].header(EVENT_HEADER), "user_online");
    assert_ne!(
        requests[0].header(DELIVERY_HEADER),
        requests[1].header(DELIVERY_HEADER)
    );
}

// ---------------------------------------------------------------------------------------------
// Before-send

#[tokio::test]
async fn before_send_posts_the_message_and_an_allow_lets_it_through() {
    init_tracing();
    let receiver = Receiver::answering(|_| Reply::json(json!({"action": "allow"}))).await;
    let hooks = start(config_for(&receiver));

    let decision = hooks.before_send(&hello_from_alice()).await;

    assert_eq!(decision, BeforeSendDecision::Allow);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let posted: BeforeSendRequest = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(posted.event, "before_send");
    assert_eq!(posted.message, hello_from_alice());
    let body = requests[0].json();
    assert_eq!(body["content_base64"], "aGVsbG8gYm9i");
    assert_eq!(body["to_user"], "bob");
    assert_eq!(body["to_group"], serde_json::Value::Null);
    assert_eq!(
        requests[0].headers.get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(hooks.stats().before_send_failures, 0);
}

#[tokio::test]
async fn before_send_reject_carries_the_apps_reason_and_message() {
    init_tracing();
    let receiver = Receiver::answering(|_| {
        Reply::json(json!({"action": "reject", "reason": 4012, "message": "links are not allowed"}))
    })
    .await;
    let hooks = start(config_for(&receiver));

    assert_eq!(
        hooks.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Reject {
            reason: 4012,
            message: "links are not allowed".into()
        }
    );
}

#[tokio::test]
async fn before_send_rewrite_gives_the_decoded_content() {
    init_tracing();
    let receiver = Receiver::answering(|index| match index {
        // "hello ***" in base64, with a new content type.
        0 => Reply::json(
            json!({"action": "rewrite", "content_base64": "aGVsbG8gKioq", "content_type": 7}),
        ),
        _ => Reply::json(json!({"action": "rewrite", "content_base64": ""})),
    })
    .await;
    let hooks = start(config_for(&receiver));

    assert_eq!(
        hooks.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Rewrite {
            content: b"hello ***".to_vec(),
            content_type: Some(7)
        }
    );
    assert_eq!(
        hooks.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Rewrite {
            content: Vec::new(),
            content_type: None
        }
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_allowed_under_the_open_policy() {
    init_tracing();
    let (receiver, _never_opened) = gated_receiver().await;
    let mut config = config_for(&receiver);
    config.timeout = Duration::from_millis(300);
    config.before_send_failure = FailurePolicy::Open;
    let hooks = start(config);

    let started = Instant::now();
    let decision = hooks.before_send(&hello_from_alice()).await;

    assert_eq!(decision, BeforeSendDecision::Allow);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(hooks.stats().before_send_failures, 1);
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_unavailable_under_the_closed_policy() {
    init_tracing();
    let (receiver, _never_opened) = gated_receiver().await;
    let mut config = config_for(&receiver);
    config.timeout = Duration::from_millis(300);
    config.before_send_failure = FailurePolicy::Closed;
    let hooks = start(config);

    let decision = hooks.before_send(&hello_from_alice()).await;

    assert_eq!(decision, BeforeSendDecision::Unavailable);
    assert_eq!(receiver.requests().len(), 1, "before-send is never retried");
    assert_eq!(hooks.stats().before_send_failures, 1);
}

#[tokio::test]
async fn error_statuses_and_unusable_answers_are_unavailable_under_the_closed_policy() {
    init_tracing();
    let too_big = format!(
        r#"{{"action":"reject","message":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let receiver = Receiver::answering(move |index| match index {
        0 => Reply::status(500),
        1 => Reply::status(403),
        2 => Reply::raw(200, "not json"),
        3 => Reply::json(json!({"action": "shrug"})),
        4 => Reply::json(json!({"action": "rewrite", "content_base64": "%%%"})),
        5 => Reply::raw(200, too_big.clone()),
        _ => Reply::json(json!({"action": "allow"})),
    })
    .await;
    let mut config = config_for(&receiver);
    config.before_send_failure = FailurePolicy::Closed;
    let hooks = start(config);

    for attempt in 0..6 {
        assert_eq!(
            hooks.before_send(&hello_from_alice()).await,
            BeforeSendDecision::Unavailable,
            "answer {attempt}"
        );
    }
    // The hook recovers as soon as the app's server answers properly again.
    assert_eq!(
        hooks.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Allow
    );
    assert_eq!(hooks.stats().before_send_failures, 6);
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_allowed_or_unavailable_by_policy() {
    init_tracing();
    // A port that was just free: nothing listens there.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed_port}/hooks");
    let open = start(WebhookConfig::new(&url, SECRET).unwrap());
    let mut closed_config = WebhookConfig::new(&url, SECRET).unwrap();
    closed_config.before_send_failure = FailurePolicy::Closed;
    let closed = start(closed_config);

    assert_eq!(
        open.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Allow
    );
    assert_eq!(
        closed.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Unavailable
    );
}

#[tokio::test]
async fn a_disabled_before_send_hook_allows_without_asking() {
    init_tracing();
    let receiver = Receiver::answering(|_| Reply::json(json!({"action": "reject"}))).await;
    let mut config = config_for(&receiver);
    config.events.before_send = false;
    let hooks = start(config);

    assert_eq!(
        hooks.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Allow
    );
    assert!(receiver.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// After-events

#[tokio::test]
async fn an_after_event_answered_500_twice_is_retried_with_the_same_delivery_id() {
    init_tracing();
    let receiver = Receiver::answering(|index| match index {
        0 | 1 => Reply::status(500),
        _ => Reply::status(200),
    })
    .await;
    let hooks = start(config_for(&receiver));
    let event = AfterEvent::GroupChanged {
        group_id: "g-climbers".into(),
        change: GroupChange::MembersAdded,
        actor: "alice".into(),
        members: vec!["bob".into(), "carol".into()],
    };

    hooks.after(event.clone());
    eventually("the event is delivered", || hooks.stats().delivered == 1).await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    let first: AfterEventDelivery = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(first.event, event);
    for request in &requests {
        assert_eq!(request.header(DELIVERY_HEADER), first.delivery_id);
        assert_eq!(request.header(EVENT_HEADER), "group_changed");
        assert_eq!(request.json()["change"], "members_added");
        assert!(verify_headers(
            SECRET,
            &request.headers,
            &request.body,
            unix_now(),
            TOLERANCE
        ));
    }
    let stats = hooks.stats();
    assert_eq!(stats.failed_attempts, 2);
    assert_eq!(stats.dropped(), 0);
}

#[tokio::test]
async fn a_429_is_retried() {
    init_tracing();
    let receiver = Receiver::answering(|index| match index {
        0 => Reply::status(429),
        _ => Reply::status(204),
    })
    .await;
    let hooks = start(config_for(&receiver));

    hooks.after(alice_online());
    eventually("the event is delivered", || hooks.stats().delivered == 1).await;

    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test]
async fn an_after_event_refused_with_400_is_not_retried() {
    init_tracing();
    let receiver = Receiver::answering(|_| Reply::status(400)).await;
    let hooks = start(config_for(&receiver));

    hooks.after(alice_online());
    eventually("the event is given up", || {
        hooks.stats().dropped_gave_up == 1
    })
    .await;

    // Giving up is decided on the 400 itself, so no later request can follow.
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(hooks.stats().delivered, 0);
    assert_eq!(hooks.stats().failed_attempts, 1);
}

#[tokio::test]
async fn an_after_event_is_given_up_after_max_attempts() {
    init_tracing();
    let receiver = Receiver::answering(|_| Reply::status(503)).await;
    let mut config = config_for(&receiver);
    config.max_attempts = 3;
    let hooks = start(config);

    hooks.after(alice_online());
    eventually("the event is given up", || {
        hooks.stats().dropped_gave_up == 1
    })
    .await;

    assert_eq!(receiver.requests().len(), 3);
    assert_eq!(hooks.stats().failed_attempts, 3);
    assert_eq!(hooks.stats().delivered, 0);
}

#[tokio::test]
async fn a_full_queue_drops_new_events_and_counts_them() {
    init_tracing();
    let (receiver, gate) = gated_receiver().await;
    let mut config = config_for(&receiver);
    config.queue_capacity = 2;
    config.max_in_flight = 1;
    let hooks = start(config);

    // The only worker takes the first event and waits on the receiver: the queue is empty.
    hooks.after(message_number(1));
    eventually("the first event is in flight", || {
        receiver.requests().len() == 1
    })
    .await;
    // Two fit in the queue, three more do not.
    for n in 2..=6 {
        hooks.after(message_number(n));
    }
    assert_eq!(hooks.stats().dropped_queue_full, 3);
    assert_eq!(hooks.stats().queued, 2);

    gate.add_permits(100);
    eventually("the queued events are delivered", || {
        hooks.stats().delivered == 3
    })
    .await;
    let seqs: Vec<u64> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["conversation_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(hooks.stats().dropped(), 3);
    assert_eq!(hooks.stats().queued, 0);
}

#[tokio::test]
async fn disabled_after_event_kinds_are_not_sent() {
    init_tracing();
    let receiver = Receiver::answering(|_| Reply::status(200)).await;
    let mut config = config_for(&receiver);
    config.events.user_online = false;
    let hooks = start(config);

    hooks.after(alice_online());
    hooks.after(AfterEvent::UserOffline {
        user: "alice".into(),
        device: "alice-phone".into(),
    });
    hooks.close(Duration::from_secs(30)).await;

    let events: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header(EVENT_HEADER).to_owned())
        .collect();
    assert_eq!(events, vec!["user_offline"]);
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test]
async fn close_delivers_what_was_queued() {
    init_tracing();
    let (receiver, gate) = gated_receiver().await;
    let mut config = config_for(&receiver);
    config.max_in_flight = 1;
    let hooks = start(config);
    for n in 1..=5 {
        hooks.after(message_number(n));
    }
    eventually("the first event is in flight", || {
        receiver.requests().len() == 1
    })
    .await;

    let closing = tokio::spawn({
        let hooks = hooks.clone();
        async move { hooks.close(Duration::from_secs(30)).await }
    });
    // Let close begin (this runtime has one thread) before the receiver starts answering.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    closing.await.unwrap();

    let stats = hooks.stats();
    assert_eq!(stats.delivered, 5, "{stats:?}");
    let delivered_ids: HashSet<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header(DELIVERY_HEADER).to_owned())
        .collect();
    assert_eq!(delivered_ids.len(), 5);

    // Events after close are refused and counted, not queued.
    hooks.after(alice_online());
    assert_eq!(hooks.stats().dropped_shutdown, 1);
    assert_eq!(receiver.requests().len(), 5);
}

#[tokio::test]
async fn close_gives_up_at_its_deadline_and_counts_what_was_left() {
    init_tracing();
    let (receiver, _never_opened) = gated_receiver().await;
    let mut config = config_for(&receiver);
    config.max_in_flight = 1;
    let hooks = start(config);
    for n in 1..=4 {
        hooks.after(message_number(n));
    }
    eventually("the first event is in flight", || {
        receiver.requests().len() == 1
    })
    .await;

    let started = Instant::now();
    hooks.close(Duration::from_millis(200)).await;

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let stats = hooks.stats();
    assert_eq!(stats.delivered, 0);
    // One in flight and three queued.
    assert_eq!(stats.dropped_shutdown, 4, "{stats:?}");
}

#[tokio::test]
async fn the_shutdown_token_stops_delivery_and_counts_the_queue() {
    init_tracing();
    let (receiver, _never_opened) = gated_receiver().await;
    let mut config = config_for(&receiver);
    config.max_in_flight = 1;
    let shutdown = CancellationToken::new();
    let hooks = Webhooks::start(config, shutdown.clone()).unwrap();
    for n in 1..=3 {
        hooks.after(message_number(n));
    }
    eventually("the first event is in flight", || {
        receiver.requests().len() == 1
    })
    .await;

    shutdown.cancel();
    eventually("every event is counted as dropped", || {
        hooks.stats().dropped_shutdown == 3
    })
    .await;

    hooks.after(alice_online());
    assert_eq!(hooks.stats().dropped_shutdown, 4);
    assert_eq!(hooks.stats().delivered, 0);
}

#[tokio::test]
async fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let config = WebhookConfig::new("http://127.0.0.1:9/hooks", SECRET).unwrap();
    assert!(Webhooks::start(config, CancellationToken::new()).is_ok());
    let config = WebhookConfig::new("http://127.0.0.1:9/hooks", SECRET).unwrap();
    let outside =
        std::thread::spawn(move || Webhooks::start(config, CancellationToken::new()).err())
            .join()
            .unwrap();
    assert!(matches!(
        outside,
        Some(im_webhooks::WebhookError::NoRuntime)
    ));
}

// ---------------------------------------------------------------------------------------------
// HTTPS

#[tokio::test]
async fn https_urls_are_called_over_tls_trusting_a_configured_ca() {
    init_tracing();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.key_pair.serialize_der(),
    ));
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let receiver = Receiver::serve(Some(acceptor), |_, _| {
        Box::pin(async { Reply::json(json!({"action": "reject", "reason": 9})) })
    })
    .await;
    assert!(receiver.url.starts_with("https://localhost:"));

    // Without the CA the certificate is refused, so the failure policy applies.
    let mut untrusting = config_for(&receiver);
    untrusting.before_send_failure = FailurePolicy::Closed;
    let untrusting = start(untrusting);
    assert_eq!(
        untrusting.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Unavailable
    );

    let mut trusting = config_for(&receiver);
    trusting.extra_root_certificates = vec![cert.to_vec()];
    let trusting = start(trusting);
    assert_eq!(
        trusting.before_send(&hello_from_alice()).await,
        BeforeSendDecision::Reject {
            reason: 9,
            message: String::new()
        }
    );
    trusting.after(alice_online());
    eventually("the event is delivered over TLS", || {
        trusting.stats().delivered == 1
    })
    .await;
    assert_eq!(receiver.requests().len(), 2);
}
