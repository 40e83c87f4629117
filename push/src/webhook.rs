//! The webhook provider: the alert as signed JSON to the deployment's own endpoint, for push
//! services this crate does not speak (a vendor relay, HMS, a test harness).
//!
//! The receiver checks `X-IM-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! with `X-IM-Timestamp` as the timestamp, and should refuse timestamps far from its clock so a
//! captured request cannot be replayed later. It answers 2xx when it accepted the alert, 410 when
//! the token is no longer valid, 429 or 5xx to have it retried; anything else fails the alert.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::http::{HttpClient, HttpVersion};
use crate::provider::{
    Alert, BoxFuture, ConfigError, PushOutcome, PushProvider, outcome_for_status,
};
use crate::types::PushToken;

/// The header carrying the signature.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "x-im-signature";
/// The header carrying the Unix time the signature covers.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "x-im-timestamp";

/// Where and how to post alerts.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The endpoint, `https://` (or `http://` on a trusted network).
    pub url: String,
    /// The shared secret the receiver verifies signatures with.
    pub secret: Vec<u8>,
    /// How long one request may take, connect included.
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The JSON posted for each alert and token.
#[derive(Serialize)]
struct WebhookBody<'a> {
    user: &'a str,
    device: &'a str,
    platform: &'static str,
    token: &'a str,
    title: &'a str,
    body: &'a str,
    conversation_id: &'a str,
    server_msg_id: u64,
    conversation_seq: u64,
    badge: u32,
    messages: u32,
}

/// Posts alerts to a webhook. See the module documentation for the contract.
pub struct WebhookProvider {
    client: HttpClient,
    secret: Vec<u8>,
}

impl WebhookProvider {
    /// A provider for `config`; fails on an unusable URL or an empty secret.
    pub fn new(config: WebhookConfig) -> Result<Self, ConfigError> {
        if config.secret.is_empty() {
            return Err(ConfigError::Invalid("the webhook secret is empty".into()));
        }
        Ok(WebhookProvider {
            client: HttpClient::new(&config.url, HttpVersion::Http1, config.timeout)?,
            secret: config.secret,
        })
    }

    async fn post(&self, alert: &Alert, token: &PushToken) -> PushOutcome {
        let body = WebhookBody {
            user: &alert.user,
            device: &token.device,
            platform: token.platform.as_str(),
            token: &token.token,
            title: &alert.title,
            body: &alert.body,
            conversation_id: &alert.conversation_id,
            server_msg_id: alert.server_msg_id,
            conversation_seq: alert.conversation_seq,
            badge: alert.badge,
            messages: alert.messages,
        };
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(error) => return PushOutcome::Failed(format!("encoding the body: {error}")),
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = webhook_signature(&self.secret, timestamp, &body);
        let headers = vec![
            ("content-type", "application/json".to_owned()),
            (WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string()),
            (WEBHOOK_SIGNATURE_HEADER, signature),
        ];
        match self
            .client
            .send(Method::POST, "", headers, Bytes::from(body))
            .await
        {
            Err(error) => PushOutcome::Retryable(error.to_string()),
            Ok(response) if response.status.is_success() => PushOutcome::Delivered,
            Ok(response) if response.status == StatusCode::GONE => {
                PushOutcome::TokenInvalid("the webhook answered 410 Gone".into())
            }
            Ok(response) => {
                outcome_for_status(response.status, &String::from_utf8_lossy(&response.body))
            }
        }
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the same signature as the server's
/// other webhooks (`im_webhooks::sign`), so one receiver-side check serves both.
pub fn webhook_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    im_webhooks::sign(secret, timestamp, body)
}

impl std::fmt::Debug for WebhookProvider {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookProvider").finish_non_exhaustive()
    }
}

impl PushProvider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, alert: &'a Alert, token: &'a PushToken) -> BoxFuture<'a, PushOutcome> {
        Box::pin(self.post(alert, token))
    }
}
