//! The webhook provider against a real HTTP/1.1 server: signed bodies, previews per policy,
//! and what each answer means.

mod support;

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use im_push::render::{PREVIEW_MAX_BYTES, render_alert};
use im_push::{
    Platform, PreviewPolicy, PushOutcome, PushProvider, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER, WebhookConfig, WebhookProvider, webhook_signature,
};
use support::{MockServer, Protocol, text_message, token, unix_now};

const SECRET: &[u8] = b"webhook-test-secret";

fn provider(url: String) -> WebhookProvider {
    WebhookProvider::new(WebhookConfig {
        url,
        secret: SECRET.to_vec(),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

/// The signature as a receiver computes it, written out from the documented contract rather
/// than with the crate's helper: `v1=` and the hex HMAC-SHA256 of "<timestamp>.<body>".
fn receiver_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac as _};
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(&signed);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn each_post_is_signed_and_shows_only_what_the_policy_allows() {
    support::init_tracing();
    let server = MockServer::start(
        Protocol::Http1,
        Arc::new(|_| (StatusCode::OK, String::new())),
    )
    .await;
    let webhook = provider(format!("{}/hooks/push", server.url()));
    let phone = token(Platform::Webhook, "tok-1", "phone-1");
    // 150 two-byte characters: 300 bytes, past the preview limit.
    let long_text = "é".repeat(150);
    let message = text_message("bob", 7, &long_text);

    for policy in [
        PreviewPolicy::None,
        PreviewPolicy::SenderOnly,
        PreviewPolicy::Full,
    ] {
        let alert = render_alert(&message, 1, policy);
        assert_eq!(webhook.send(&alert, &phone).await, PushOutcome::Delivered);
    }

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/hooks/push")
        );
        // The receiver's check: recompute the HMAC over "<timestamp>.<body>".
        let timestamp: u64 = request
            .header(WEBHOOK_TIMESTAMP_HEADER)
            .parse()
            .expect("a Unix timestamp");
        assert!(timestamp.abs_diff(unix_now()) < 300);
        let expected = receiver_signature(SECRET, timestamp, &request.body);
        assert_eq!(request.header(WEBHOOK_SIGNATURE_HEADER), expected);
        assert_ne!(
            request.header(WEBHOOK_SIGNATURE_HEADER),
            receiver_signature(b"other", timestamp, &request.body)
        );
        // The helper receivers can use agrees.
        assert_eq!(
            webhook_signature(SECRET, timestamp, &request.body),
            expected
        );
        let body = request.json();
        assert_eq!(body["user"], "bob");
        assert_eq!(body["device"], "phone-1");
        assert_eq!(body["platform"], "webhook");
        assert_eq!(body["token"], "tok-1");
        assert_eq!(body["conversation_id"], "dm:alice:bob");
        assert_eq!(body["server_msg_id"], 1007);
        assert_eq!(body["badge"], 1);
    }

    let (none, sender_only, full) = (requests[0].json(), requests[1].json(), requests[2].json());
    assert_eq!(
        (none["title"].as_str(), none["body"].as_str()),
        (Some("New message"), Some("You have a new message"))
    );
    assert_eq!(sender_only["title"], "Alice");
    assert_eq!(sender_only["body"], "New message");
    assert_eq!(full["title"], "Alice");
    let preview = full["body"].as_str().unwrap();
    assert!(
        preview.len() <= PREVIEW_MAX_BYTES,
        "{} bytes",
        preview.len()
    );
    // Cut between characters: 98 whole "é" (196 bytes) and the 3-byte ellipsis.
    assert_eq!(preview, format!("{}…", "é".repeat(98)));
}

#[tokio::test]
async fn answers_map_to_outcomes() {
    support::init_tracing();
    let server = MockServer::start(
        Protocol::Http1,
        Arc::new(|request| {
            let status = match request.json()["token"].as_str() {
                Some("gone") => StatusCode::GONE,
                Some("busy") => StatusCode::SERVICE_UNAVAILABLE,
                Some("slow-down") => StatusCode::TOO_MANY_REQUESTS,
                Some("malformed") => StatusCode::BAD_REQUEST,
                _ => StatusCode::NO_CONTENT,
            };
            (status, "detail".into())
        }),
    )
    .await;
    let webhook = provider(server.url());
    let alert = render_alert(&text_message("bob", 1, "hi"), 1, PreviewPolicy::None);
    let send = |name: &'static str| {
        let (webhook, alert) = (&webhook, &alert);
        async move {
            webhook
                .send(alert, &token(Platform::Webhook, name, "d"))
                .await
        }
    };
    assert_eq!(send("ok").await, PushOutcome::Delivered);
    assert!(matches!(send("gone").await, PushOutcome::TokenInvalid(_)));
    assert!(matches!(send("busy").await, PushOutcome::Retryable(_)));
    assert!(matches!(send("slow-down").await, PushOutcome::Retryable(_)));
    assert!(matches!(send("malformed").await, PushOutcome::Failed(_)));
    // Keep-alive: all five went over one connection.
    assert_eq!(server.requests().len(), 5);
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // Nobody listening is a network failure: worth retrying.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let listener_gone = provider(format!("http://{closed_port}"));
    assert!(matches!(
        listener_gone
            .send(&alert, &token(Platform::Webhook, "ok", "d"))
            .await,
        PushOutcome::Retryable(_)
    ));
}

#[test]
fn an_empty_secret_or_a_bad_url_is_refused_at_start() {
    let config = |url: &str, secret: &[u8]| WebhookConfig {
        url: url.into(),
        secret: secret.to_vec(),
        timeout: Duration::from_secs(1),
    };
    assert!(WebhookProvider::new(config("http://127.0.0.1:1/", b"")).is_err());
    assert!(WebhookProvider::new(config("ftp://example.com/", b"s")).is_err());
    assert!(WebhookProvider::new(config("http://127.0.0.1:1/", b"s")).is_ok());
}
