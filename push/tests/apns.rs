//! The APNs provider against a local HTTP/2 (h2c) server that checks requests the way Apple
//! documents them, including the provider token's ES256 signature.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use hyper::StatusCode;
use im_push::render::render_alert;
use im_push::{ApnsConfig, ApnsProvider, Platform, PreviewPolicy, PushOutcome, PushProvider};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use support::{MockServer, Protocol, Recorded, split_jwt, text_message, token, unix_now};

const TEAM_ID: &str = "TEAM123456";
const KEY_ID: &str = "KEYID12345";
const BUNDLE_ID: &str = "com.example.chat";

/// A fresh P-256 key written as Apple's .p8 file, and its public key.
fn write_p8(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let base64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = base64
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let path = dir.join(format!("AuthKey_{KEY_ID}.p8"));
    std::fs::write(&path, pem).unwrap();
    (path, public)
}

/// Apple's answer to a request: 403 unless the provider token verifies, then by device token.
fn apple(public_key: &[u8], request: &Recorded) -> (StatusCode, String) {
    let Some(jwt) = request.header("authorization").strip_prefix("bearer ") else {
        return (
            StatusCode::FORBIDDEN,
            r#"{"reason":"MissingProviderToken"}"#.into(),
        );
    };
    let (input, header, claims, signature) = split_jwt(jwt);
    let verified = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(input.as_bytes(), &signature)
        .is_ok();
    if !verified || header["alg"] != "ES256" || header["kid"] != KEY_ID || claims["iss"] != TEAM_ID
    {
        return (
            StatusCode::FORBIDDEN,
            r#"{"reason":"InvalidProviderToken"}"#.into(),
        );
    }
    match request.path.strip_prefix("/3/device/") {
        Some("0badbad0") => (
            StatusCode::GONE,
            r#"{"reason":"Unregistered","timestamp":1700000000000}"#.into(),
        ),
        Some("0bad70ce") => (
            StatusCode::BAD_REQUEST,
            r#"{"reason":"BadDeviceToken"}"#.into(),
        ),
        Some("5e771e") => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"reason":"ServiceUnavailable"}"#.into(),
        ),
        Some(_) => (StatusCode::OK, String::new()),
        None => (StatusCode::NOT_FOUND, r#"{"reason":"BadPath"}"#.into()),
    }
}

#[tokio::test]
async fn alerts_reach_apple_with_a_verified_provider_token_reused_across_sends() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, public_key) = write_p8(dir.path());
    let server = MockServer::start(
        Protocol::H2c,
        Arc::new(move |request| apple(&public_key, request)),
    )
    .await;
    let mut config = ApnsConfig::new(TEAM_ID, KEY_ID, key_path, BUNDLE_ID);
    config.base_url = server.url();
    config.expiration = Duration::from_secs(3600);
    let apns = ApnsProvider::new(config).unwrap();

    let mut message = text_message("bob", 3, "see you at eight");
    message.unread = Some(4);
    let alert = render_alert(&message, 1, PreviewPolicy::Full);
    let iphone = token(Platform::Apns, "a1b2c3d4e5f6", "iphone");
    assert_eq!(apns.send(&alert, &iphone).await, PushOutcome::Delivered);
    assert_eq!(apns.send(&alert, &iphone).await, PushOutcome::Delivered);
    let uninstalled = apns
        .send(&alert, &token(Platform::Apns, "0badbad0", "old-iphone"))
        .await;
    assert!(
        matches!(uninstalled, PushOutcome::TokenInvalid(_)),
        "{uninstalled:?}"
    );
    let bad = apns
        .send(&alert, &token(Platform::Apns, "0bad70ce", "ipad"))
        .await;
    assert!(matches!(bad, PushOutcome::TokenInvalid(_)), "{bad:?}");
    let unavailable = apns
        .send(&alert, &token(Platform::Apns, "5e771e", "ipad"))
        .await;
    assert!(
        matches!(unavailable, PushOutcome::Retryable(_)),
        "{unavailable:?}"
    );
    // Not hex: refused without asking Apple, since it could never be valid.
    let garbage = apns
        .send(&alert, &token(Platform::Apns, "../../admin", "x"))
        .await;
    assert!(
        matches!(garbage, PushOutcome::TokenInvalid(_)),
        "{garbage:?}"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 5);
    // One HTTP/2 connection carried every request.
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    let first = &requests[0];
    assert_eq!(first.version, hyper::Version::HTTP_2);
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/3/device/a1b2c3d4e5f6")
    );
    assert_eq!(first.header("apns-topic"), BUNDLE_ID);
    assert_eq!(first.header("apns-push-type"), "alert");
    assert_eq!(first.header("apns-priority"), "10");
    assert_eq!(first.header("apns-collapse-id"), "dm:alice:bob");
    let expiration: u64 = first.header("apns-expiration").parse().unwrap();
    assert!(
        expiration.abs_diff(unix_now() + 3600) < 300,
        "expiration {expiration}"
    );

    // The same provider token on every request, with a current iat.
    let jwts: Vec<&str> = requests
        .iter()
        .map(|request| request.header("authorization"))
        .collect();
    assert!(
        jwts.iter().all(|jwt| *jwt == jwts[0]),
        "the provider token was minted more than once"
    );
    let (_, _, claims, _) = split_jwt(jwts[0].strip_prefix("bearer ").unwrap());
    assert!(claims["iat"].as_u64().unwrap().abs_diff(unix_now()) < 300);

    let body = first.json();
    assert_eq!(body["aps"]["alert"]["title"], "Alice");
    assert_eq!(body["aps"]["alert"]["body"], "see you at eight");
    assert_eq!(body["aps"]["badge"], 4);
    assert_eq!(body["aps"]["sound"], "default");
    assert_eq!(body["aps"]["thread-id"], "dm:alice:bob");
    assert_eq!(body["conversation_id"], "dm:alice:bob");
    assert_eq!(body["server_msg_id"], 1003);
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused_by_the_mock() {
    // Proves the mock's check is real: the provider signs with one key, the mock trusts another.
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, _) = write_p8(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_public_key) = write_p8(other_dir.path());
    let server = MockServer::start(
        Protocol::H2c,
        Arc::new(move |request| apple(&other_public_key, request)),
    )
    .await;
    let mut config = ApnsConfig::new(TEAM_ID, KEY_ID, key_path, BUNDLE_ID);
    config.base_url = server.url();
    let apns = ApnsProvider::new(config).unwrap();
    let alert = render_alert(&text_message("bob", 1, "hi"), 1, PreviewPolicy::None);
    let outcome = apns
        .send(&alert, &token(Platform::Apns, "a1b2", "iphone"))
        .await;
    assert!(
        matches!(outcome, PushOutcome::Failed(ref reason) if reason.contains("403")),
        "{outcome:?}"
    );
}

#[test]
fn a_missing_or_wrong_key_file_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ApnsConfig::new(TEAM_ID, KEY_ID, dir.path().join("nope.p8"), BUNDLE_ID);
    assert!(ApnsProvider::new(missing).is_err());
    let rsa = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/test-only-rsa-private-key.pem");
    let wrong_kind = ApnsConfig::new(TEAM_ID, KEY_ID, rsa, BUNDLE_ID);
    let error = ApnsProvider::new(wrong_kind).unwrap_err().to_string();
    assert!(error.contains("P-256"), "{error}");
}
