//! The APNs provider, after Apple's "Sending notification requests to APNs" and "Establishing a
//! token-based connection to APNs": HTTP/2 `POST /3/device/<token>` with a provider token (an
//! ES256 JWT signed with the team's .p8 key) in `authorization`.
//!
//! One HTTP/2 connection carries every request, as Apple asks. The provider token is minted once
//! and reused: Apple rejects tokens older than an hour and refuses new ones more often than every
//! 20 minutes (`TooManyProviderTokenUpdates`), so it is refreshed after 50 minutes.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::http::{HttpClient, HttpVersion};
use crate::jwt::{Es256Signer, KeyError};
use crate::provider::{
    Alert, BoxFuture, ConfigError, PushOutcome, PushProvider, outcome_for_status,
};
use crate::types::PushToken;

/// Apple's production endpoint, for apps from the App Store and TestFlight.
pub const APNS_PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Apple's development endpoint, for apps built with a development provisioning profile.
pub const APNS_SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// A provider token is replaced after this long (Apple accepts tokens up to an hour old).
pub const PROVIDER_TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);
/// A provider token is never replaced sooner than this (Apple refuses faster updates).
pub const PROVIDER_TOKEN_MIN_AGE: Duration = Duration::from_secs(20 * 60);

/// The longest `apns-collapse-id` Apple accepts, in bytes.
const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// What an operator sets to send through APNs (all from the Apple developer account).
#[derive(Clone, Debug)]
pub struct ApnsConfig {
    /// [`APNS_PRODUCTION_URL`], [`APNS_SANDBOX_URL`], or a local relay or mock (`http://` URLs
    /// speak HTTP/2 with prior knowledge).
    pub base_url: String,
    /// The 10-character Team ID (the JWT's `iss`).
    pub team_id: String,
    /// The 10-character Key ID of the .p8 key (the JWT's `kid`).
    pub key_id: String,
    /// Path of the `AuthKey_<key id>.p8` file downloaded from the developer account.
    pub key_path: PathBuf,
    /// The app's bundle id, sent as `apns-topic`.
    pub bundle_id: String,
    /// How long APNs keeps trying to reach a device that is off (`apns-expiration`). A chat
    /// alert older than this is no longer worth showing.
    pub expiration: Duration,
    /// How long one request may take, connect included.
    pub timeout: Duration,
}

impl ApnsConfig {
    /// Production endpoint, alerts kept for a day, 10 s per request.
    pub fn new(
        team_id: impl Into<String>,
        key_id: impl Into<String>,
        key_path: impl Into<PathBuf>,
        bundle_id: impl Into<String>,
    ) -> Self {
        ApnsConfig {
            base_url: APNS_PRODUCTION_URL.to_owned(),
            team_id: team_id.into(),
            key_id: key_id.into(),
            key_path: key_path.into(),
            bundle_id: bundle_id.into(),
            expiration: Duration::from_secs(24 * 60 * 60),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    iat: u64,
}

/// The provider token and when it was minted.
struct MintedToken {
    jwt: String,
    minted_at: Instant,
}

/// Mints provider tokens and keeps the current one. Time comes in as a value so the refresh
/// rules are tested with a paused clock.
struct ProviderTokens {
    signer: Es256Signer,
    team_id: String,
    key_id: String,
    current: Mutex<Option<MintedToken>>,
}

impl ProviderTokens {
    /// The token to send at `now`, minting one if there is none or it is due for refresh.
    fn current(&self, now: Instant) -> Result<String, KeyError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(token) = current.as_ref()
            && now.saturating_duration_since(token.minted_at) < PROVIDER_TOKEN_REFRESH
        {
            return Ok(token.jwt.clone());
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let jwt = self.signer.sign(
            &JwtHeader {
                alg: "ES256",
                kid: &self.key_id,
            },
            &JwtClaims {
                iss: &self.team_id,
                iat,
            },
        )?;
        *current = Some(MintedToken {
            jwt: jwt.clone(),
            minted_at: now,
        });
        Ok(jwt)
    }

    /// APNs said the token expired (the clock drifted, or the server slept): forget it so the
    /// next send mints a new one, unless it is younger than Apple allows replacing.
    fn expired(&self, now: Instant) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.as_ref().is_some_and(|token| {
            now.saturating_duration_since(token.minted_at) >= PROVIDER_TOKEN_MIN_AGE
        }) {
            *current = None;
        }
    }
}

/// APNs's error body: `{"reason": "BadDeviceToken"}`.
#[derive(Deserialize, Default)]
struct ApnsError {
    #[serde(default)]
    reason: String,
}

/// Sends alerts through Apple's push service.
pub struct ApnsProvider {
    client: HttpClient,
    tokens: ProviderTokens,
    bundle_id: String,
    expiration: Duration,
}

impl ApnsProvider {
    /// A provider for `config`; reads and checks the key now, so a bad key fails at start-up
    /// rather than at the first push.
    pub fn new(config: ApnsConfig) -> Result<Self, ConfigError> {
        for (field, value) in [
            ("team_id", &config.team_id),
            ("key_id", &config.key_id),
            ("bundle_id", &config.bundle_id),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("APNs {field} is empty")));
            }
        }
        let pem = std::fs::read_to_string(&config.key_path).map_err(|source| KeyError::Read {
            path: config.key_path.display().to_string(),
            source,
        })?;
        Ok(ApnsProvider {
            client: HttpClient::new(&config.base_url, HttpVersion::Http2, config.timeout)?,
            tokens: ProviderTokens {
                signer: Es256Signer::from_pem(&pem)?,
                team_id: config.team_id,
                key_id: config.key_id,
                current: Mutex::new(None),
            },
            bundle_id: config.bundle_id,
            expiration: config.expiration,
        })
    }

    async fn post(&self, alert: &Alert, token: &PushToken) -> PushOutcome {
        // Device tokens are hex; anything else would also be spliced into the path.
        if token.token.is_empty() || !token.token.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return PushOutcome::TokenInvalid("an APNs device token must be hex".into());
        }
        let jwt = match self.tokens.current(Instant::now()) {
            Ok(jwt) => jwt,
            Err(error) => return PushOutcome::Failed(error.to_string()),
        };
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + self.expiration;
        let headers = vec![
            ("authorization", format!("bearer {jwt}")),
            ("apns-topic", self.bundle_id.clone()),
            ("apns-push-type", "alert".to_owned()),
            ("apns-priority", "10".to_owned()),
            ("apns-expiration", expires.as_secs().to_string()),
            ("apns-collapse-id", collapse_id(&alert.conversation_id)),
            ("content-type", "application/json".to_owned()),
        ];
        let body = json!({
            "aps": {
                "alert": { "title": alert.title, "body": alert.body },
                "badge": alert.badge,
                "sound": "default",
                "thread-id": alert.conversation_id,
            },
            "conversation_id": alert.conversation_id,
            "server_msg_id": alert.server_msg_id,
            "conversation_seq": alert.conversation_seq,
        });
        let path = format!("/3/device/{}", token.token);
        let response = match self
            .client
            .send(Method::POST, &path, headers, Bytes::from(body.to_string()))
            .await
        {
            Ok(response) => response,
            Err(error) => return PushOutcome::Retryable(error.to_string()),
        };
        if response.status == StatusCode::OK {
            return PushOutcome::Delivered;
        }
        let reason = serde_json::from_slice::<ApnsError>(&response.body)
            .unwrap_or_default()
            .reason;
        match (response.status.as_u16(), reason.as_str()) {
            // The device unregistered the app, or the token expired.
            (410, _) => PushOutcome::TokenInvalid(format!("410 {reason}")),
            // Not a token this app and environment can use. (A sandbox token sent to the
            // production endpoint also reads as BadDeviceToken: keep apps and endpoints paired.)
            (400, "BadDeviceToken" | "Unregistered") => {
                PushOutcome::TokenInvalid(format!("400 {reason}"))
            }
            (403, "ExpiredProviderToken") => {
                self.tokens.expired(Instant::now());
                PushOutcome::Retryable("403 ExpiredProviderToken".into())
            }
            _ => outcome_for_status(response.status, &reason),
        }
    }
}

/// The `apns-collapse-id` for a conversation: the id itself when it fits in Apple's 64 bytes,
/// otherwise the hex SHA-256 of it (64 characters), so long ids never collide by truncation.
fn collapse_id(conversation_id: &str) -> String {
    if conversation_id.len() <= MAX_COLLAPSE_ID_BYTES {
        conversation_id.to_owned()
    } else {
        hex::encode(Sha256::digest(conversation_id.as_bytes()))
    }
}

impl std::fmt::Debug for ApnsProvider {
    // The key and the provider token stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("team_id", &self.tokens.team_id)
            .field("key_id", &self.tokens.key_id)
            .field("bundle_id", &self.bundle_id)
            .finish_non_exhaustive()
    }
}

impl PushProvider for ApnsProvider {
    fn name(&self) -> &'static str {
        "apns"
    }

    fn send<'a>(&'a self, alert: &'a Alert, token: &'a PushToken) -> BoxFuture<'a, PushOutcome> {
        Box::pin(self.post(alert, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    fn provider_tokens() -> ProviderTokens {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        ProviderTokens {
            signer: Es256Signer::from_pem(&pem).unwrap(),
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
            current: Mutex::new(None),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_provider_token_is_reused_for_fifty_minutes_then_replaced() {
        let tokens = provider_tokens();
        let first = tokens.current(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(49 * 60)).await;
        assert_eq!(tokens.current(Instant::now()).unwrap(), first);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_ne!(tokens.current(Instant::now()).unwrap(), first);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_answer_replaces_the_token_only_after_twenty_minutes() {
        let tokens = provider_tokens();
        let first = tokens.current(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(5 * 60)).await;
        tokens.expired(Instant::now());
        assert_eq!(
            tokens.current(Instant::now()).unwrap(),
            first,
            "replaced too soon"
        );
        tokio::time::advance(Duration::from_secs(15 * 60)).await;
        tokens.expired(Instant::now());
        assert_ne!(tokens.current(Instant::now()).unwrap(), first);
    }

    #[test]
    fn long_conversation_ids_collapse_by_hash_within_apples_limit() {
        assert_eq!(collapse_id("dm:alice:bob"), "dm:alice:bob");
        let long = "g".repeat(100);
        let id = collapse_id(&long);
        assert_eq!(id.len(), 64);
        assert_ne!(id, collapse_id(&"g".repeat(101)));
    }
}
