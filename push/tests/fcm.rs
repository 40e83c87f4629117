//! The FCM provider against a local server playing both Google's OAuth2 token endpoint (which
//! verifies the RS256 assertion with the service account's public key) and FCM's
//! `messages:send` (which checks the access token).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use hyper::StatusCode;
use im_push::render::render_alert;
use im_push::{FcmConfig, FcmProvider, Platform, PreviewPolicy, PushOutcome, PushProvider};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use support::{MockServer, Protocol, Recorded, split_jwt, text_message, token, unix_now};

/// A key pair made once with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` for
/// these tests only; it signs nothing anywhere else.
const TEST_ONLY_PRIVATE_KEY: &str = include_str!("fixtures/test-only-rsa-private-key.pem");
const TEST_ONLY_PUBLIC_KEY: &str = include_str!("fixtures/test-only-rsa-public-key.pem");

const CLIENT_EMAIL: &str = "push-sender@test-project.iam.gserviceaccount.com";
const PROJECT: &str = "test-project";

/// The DER `RSAPublicKey` inside the fixture's PEM.
fn public_key_der() -> Vec<u8> {
    let base64: String = TEST_ONLY_PUBLIC_KEY
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap()
}

fn form_field<'a>(form: &'a str, name: &str) -> Option<&'a str> {
    form.split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Google, as far as these tests need it.
struct FakeGoogle {
    token_uri: String,
    tokens_issued: AtomicUsize,
}

impl FakeGoogle {
    fn answer(&self, request: &Recorded) -> (StatusCode, String) {
        match request.path.as_str() {
            "/token" => self.token_endpoint(request),
            path if path == format!("/v1/projects/{PROJECT}/messages:send") => self.send(request),
            _ => (StatusCode::NOT_FOUND, "{}".into()),
        }
    }

    fn token_endpoint(&self, request: &Recorded) -> (StatusCode, String) {
        let refuse = |why: &str| {
            (
                StatusCode::BAD_REQUEST,
                format!(r#"{{"error":"invalid_grant","error_description":"{why}"}}"#),
            )
        };
        let form = String::from_utf8_lossy(&request.body).into_owned();
        let grant = form_field(&form, "grant_type")
            .unwrap_or("")
            .replace("%3A", ":");
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            return refuse("grant_type");
        }
        let Some(assertion) = form_field(&form, "assertion") else {
            return refuse("no assertion");
        };
        let (input, header, claims, signature) = split_jwt(assertion);
        let verified = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key_der())
            .verify(input.as_bytes(), &signature)
            .is_ok();
        if !verified || header["alg"] != "RS256" {
            return refuse("bad signature");
        }
        let iat = claims["iat"].as_u64().unwrap_or(0);
        if claims["iss"] != CLIENT_EMAIL
            || claims["aud"] != self.token_uri.as_str()
            || claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging"
            || iat.abs_diff(unix_now()) > 300
            || claims["exp"].as_u64() != Some(iat + 3600)
        {
            return refuse("bad claims");
        }
        let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        (
            StatusCode::OK,
            format!(
                r#"{{"access_token":"ya29.test-{n}","expires_in":3599,"token_type":"Bearer"}}"#
            ),
        )
    }

    fn send(&self, request: &Recorded) -> (StatusCode, String) {
        let issued = self.tokens_issued.load(Ordering::SeqCst);
        if issued == 0 || request.header("authorization") != format!("Bearer ya29.test-{issued}") {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#.into(),
            );
        }
        match request.json()["message"]["token"].as_str() {
            Some("uninstalled") => (
                StatusCode::NOT_FOUND,
                r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
                    "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#
                    .into(),
            ),
            Some("garbled") => (
                StatusCode::BAD_REQUEST,
                r#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT"}}"#
                    .into(),
            ),
            Some("overloaded") => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#.into(),
            ),
            Some(_) => (StatusCode::OK, format!(r#"{{"name":"projects/{PROJECT}/messages/0:1"}}"#)),
            None => (StatusCode::BAD_REQUEST, r#"{"error":{"status":"INVALID_ARGUMENT","message":"no token"}}"#.into()),
        }
    }
}

/// The mock, and a provider configured with a key file whose `token_uri` points at it.
async fn start(dir: &std::path::Path) -> (MockServer, Arc<FakeGoogle>, FcmProvider) {
    // The key file's token_uri must name the mock's port, so the fake is filled in after the
    // server is listening (and before any request can reach it).
    let fake_slot = Arc::new(std::sync::OnceLock::<Arc<FakeGoogle>>::new());
    let handler_slot = fake_slot.clone();
    let server = MockServer::start(
        Protocol::Http1,
        Arc::new(move |request| {
            handler_slot
                .get()
                .expect("the fake is set before any request")
                .answer(request)
        }),
    )
    .await;
    let fake = Arc::new(FakeGoogle {
        token_uri: format!("{}/token", server.url()),
        tokens_issued: AtomicUsize::new(0),
    });
    let _ = fake_slot.set(fake.clone());
    let key_file = dir.join("service-account.json");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": TEST_ONLY_PRIVATE_KEY,
        "client_email": CLIENT_EMAIL,
        "token_uri": fake.token_uri,
    });
    std::fs::write(&key_file, key.to_string()).unwrap();
    let mut config = FcmConfig::new(key_file);
    config.base_url = server.url();
    config.timeout = Duration::from_secs(10);
    (server, fake, FcmProvider::new(config).unwrap())
}

#[tokio::test]
async fn one_access_token_serves_several_sends_and_errors_map_to_outcomes() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (server, fake, fcm) = start(dir.path()).await;
    let mut message = text_message("bob", 9, "are you there?");
    message.unread = Some(2);
    let alert = render_alert(&message, 1, PreviewPolicy::SenderOnly);
    let send = |name: &'static str| {
        let (fcm, alert) = (&fcm, &alert);
        async move { fcm.send(alert, &token(Platform::Fcm, name, "pixel")).await }
    };

    assert_eq!(send("pixel-token-1").await, PushOutcome::Delivered);
    assert_eq!(send("pixel-token-1").await, PushOutcome::Delivered);
    assert_eq!(send("pixel-token-2").await, PushOutcome::Delivered);
    let uninstalled = send("uninstalled").await;
    assert!(
        matches!(uninstalled, PushOutcome::TokenInvalid(_)),
        "{uninstalled:?}"
    );
    let garbled = send("garbled").await;
    assert!(
        matches!(garbled, PushOutcome::TokenInvalid(_)),
        "{garbled:?}"
    );
    let overloaded = send("overloaded").await;
    assert!(
        matches!(overloaded, PushOutcome::Retryable(_)),
        "{overloaded:?}"
    );

    assert_eq!(
        fake.tokens_issued.load(Ordering::SeqCst),
        1,
        "the access token was fetched more than once"
    );
    let requests = server.requests();
    let token_requests: Vec<_> = requests
        .iter()
        .filter(|request| request.path == "/token")
        .collect();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].header("content-type"),
        "application/x-www-form-urlencoded"
    );

    let sends: Vec<_> = requests
        .iter()
        .filter(|request| request.path != "/token")
        .collect();
    assert_eq!(sends.len(), 6);
    let message = sends[0].json()["message"].clone();
    assert_eq!(message["token"], "pixel-token-1");
    assert_eq!(message["notification"]["title"], "Alice");
    assert_eq!(message["notification"]["body"], "New message");
    assert_eq!(message["android"]["collapse_key"], "dm:alice:bob");
    assert_eq!(message["android"]["priority"], "high");
    assert_eq!(message["data"]["conversation_id"], "dm:alice:bob");
    assert_eq!(message["data"]["server_msg_id"], "1009");
}

#[tokio::test]
async fn a_refused_access_token_is_replaced_for_the_retry() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_server, fake, fcm) = start(dir.path()).await;
    let alert = render_alert(&text_message("bob", 1, "hi"), 1, PreviewPolicy::None);
    let phone = token(Platform::Fcm, "pixel", "pixel");
    assert_eq!(fcm.send(&alert, &phone).await, PushOutcome::Delivered);
    // Google revokes the token: the fake only accepts the newest one it issued.
    fake.tokens_issued.fetch_add(1, Ordering::SeqCst);
    assert!(matches!(
        fcm.send(&alert, &phone).await,
        PushOutcome::Retryable(_)
    ));
    assert_eq!(fcm.send(&alert, &phone).await, PushOutcome::Delivered);
    assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 3);
}

#[test]
fn a_key_file_that_is_not_a_service_account_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    std::fs::write(&path, r#"{"project_id":"p"}"#).unwrap();
    let error = FcmProvider::new(FcmConfig::new(&path))
        .unwrap_err()
        .to_string();
    assert!(error.contains("service-account"), "{error}");
}
