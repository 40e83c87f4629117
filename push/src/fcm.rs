//! The FCM provider, after the Firebase Cloud Messaging HTTP v1 API: `POST
//! /v1/projects/<project>/messages:send` with an OAuth2 access token.
//!
//! The access token comes from the project's service-account key by the JWT-bearer grant (RFC
//! 7523, as Google's "Using OAuth 2.0 for Server to Server Applications" describes it): an RS256
//! JWT signed with the account's key is exchanged at the key file's `token_uri` for a token that
//! lives about an hour. It is cached and fetched again shortly before it expires, or at once
//! when FCM answers 401.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::http::{HttpClient, HttpVersion};
use crate::jwt::{KeyError, Rs256Signer};
use crate::provider::{
    Alert, BoxFuture, ConfigError, PushOutcome, PushProvider, outcome_for_status,
};
use crate::types::PushToken;

/// Google's FCM endpoint.
pub const FCM_URL: &str = "https://fcm.googleapis.com";

/// The OAuth2 scope that allows sending messages.
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The JWT-bearer grant type, form-encoded.
const JWT_BEARER_GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// How long before its expiry an access token is replaced, so a request never carries a token
/// that expires on the way.
const ACCESS_TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// What an operator sets to send through FCM.
#[derive(Clone, Debug)]
pub struct FcmConfig {
    /// [`FCM_URL`], or a local mock.
    pub base_url: String,
    /// Path of the service-account JSON key file downloaded from the Firebase console (Project
    /// settings, Service accounts). Its `project_id`, `client_email`, `private_key` and
    /// `token_uri` are used.
    pub service_account_path: PathBuf,
    /// Sends to this project instead of the key file's `project_id`, when they differ.
    pub project_id: Option<String>,
    /// How long one request may take, connect included (token requests too).
    pub timeout: Duration,
}

impl FcmConfig {
    /// Google's endpoint, the key file's project, 10 s per request.
    pub fn new(service_account_path: impl Into<PathBuf>) -> Self {
        FcmConfig {
            base_url: FCM_URL.to_owned(),
            service_account_path: service_account_path.into(),
            project_id: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The fields of a service-account key file this provider reads.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

#[derive(Serialize)]
struct AssertionHeader {
    alg: &'static str,
    typ: &'static str,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An access token and when to stop using it.
struct AccessToken {
    token: String,
    replace_at: Instant,
}

/// FCM's error body: `{"error": {"status": "...", "message": "...", "details": [{"errorCode":
/// "UNREGISTERED"}]}}`.
#[derive(Deserialize, Default)]
struct FcmErrorBody {
    #[serde(default)]
    error: FcmError,
}

#[derive(Deserialize, Default)]
struct FcmError {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<FcmErrorDetail>,
}

#[derive(Deserialize, Default)]
struct FcmErrorDetail {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
}

impl FcmError {
    /// The FCM-specific error code when there is one (`UNREGISTERED`), else the generic status.
    fn code(&self) -> &str {
        self.details
            .iter()
            .find_map(|detail| detail.error_code.as_deref())
            .unwrap_or(&self.status)
    }
}

/// Sends alerts through Firebase Cloud Messaging.
pub struct FcmProvider {
    fcm: HttpClient,
    oauth: HttpClient,
    signer: Rs256Signer,
    client_email: String,
    token_uri: String,
    send_path: String,
    /// The cached access token. An async mutex: concurrent sends wait for one token request
    /// instead of each making their own.
    access_token: tokio::sync::Mutex<Option<AccessToken>>,
}

/// Why no access token could be had.
enum TokenFailure {
    /// Worth trying again later (network, 5xx, 429).
    Retryable(String),
    /// Will not work until the configuration changes (the key was revoked, the clock is off).
    Failed(String),
}

impl FcmProvider {
    /// A provider for `config`; reads and checks the key file now, so a bad key fails at
    /// start-up rather than at the first push.
    pub fn new(config: FcmConfig) -> Result<Self, ConfigError> {
        let path = config.service_account_path.display().to_string();
        let json =
            std::fs::read(&config.service_account_path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
        let account: ServiceAccount = serde_json::from_slice(&json)
            .map_err(|error| KeyError::ServiceAccount(format!("{path}: {error}")))?;
        let project_id = config.project_id.unwrap_or(account.project_id);
        if project_id.is_empty()
            || !project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "FCM project id {project_id:?} is not a project id"
            )));
        }
        Ok(FcmProvider {
            fcm: HttpClient::new(&config.base_url, HttpVersion::Http1, config.timeout)?,
            oauth: HttpClient::new(&account.token_uri, HttpVersion::Http1, config.timeout)?,
            signer: Rs256Signer::from_pem(&account.private_key)?,
            client_email: account.client_email,
            token_uri: account.token_uri,
            send_path: format!("/v1/projects/{project_id}/messages:send"),
            access_token: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, TokenFailure> {
        let mut cached = self.access_token.lock().await;
        if let Some(token) = cached
            .as_ref()
            .filter(|token| Instant::now() < token.replace_at)
        {
            return Ok(token.token.clone());
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let assertion = self
            .signer
            .sign(
                &AssertionHeader {
                    alg: "RS256",
                    typ: "JWT",
                },
                &AssertionClaims {
                    iss: &self.client_email,
                    scope: FCM_SCOPE,
                    aud: &self.token_uri,
                    iat,
                    exp: iat + 3600,
                },
            )
            .map_err(|error| TokenFailure::Failed(error.to_string()))?;
        let form = format!("grant_type={JWT_BEARER_GRANT}&assertion={assertion}");
        let headers = vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )];
        let asked_at = Instant::now();
        let response = self
            .oauth
            .send(Method::POST, "", headers, Bytes::from(form))
            .await
            .map_err(|error| TokenFailure::Retryable(format!("token endpoint: {error}")))?;
        if !response.status.is_success() {
            let detail = String::from_utf8_lossy(&response.body);
            return Err(match outcome_for_status(response.status, &detail) {
                PushOutcome::Retryable(reason) => {
                    TokenFailure::Retryable(format!("token endpoint: {reason}"))
                }
                other => TokenFailure::Failed(format!("token endpoint: {other:?}")),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&response.body)
            .map_err(|error| TokenFailure::Retryable(format!("token endpoint answer: {error}")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        // Short-lived tokens (a test, an odd proxy) are used for half their life instead.
        let usable = lifetime
            .checked_sub(ACCESS_TOKEN_MARGIN)
            .unwrap_or(lifetime / 2);
        *cached = Some(AccessToken {
            token: answer.access_token.clone(),
            replace_at: asked_at + usable,
        });
        Ok(answer.access_token)
    }

    async fn post(&self, alert: &Alert, token: &PushToken) -> PushOutcome {
        let access_token = match self.access_token().await {
            Ok(access_token) => access_token,
            Err(TokenFailure::Retryable(reason)) => return PushOutcome::Retryable(reason),
            Err(TokenFailure::Failed(reason)) => return PushOutcome::Failed(reason),
        };
        let body = json!({
            "message": {
                "token": token.token,
                "notification": { "title": alert.title, "body": alert.body },
                "android": {
                    "collapse_key": alert.conversation_id,
                    "priority": "high",
                    "notification": { "notification_count": alert.badge, "tag": alert.conversation_id },
                },
                // FCM data values must be strings.
                "data": {
                    "conversation_id": alert.conversation_id,
                    "server_msg_id": alert.server_msg_id.to_string(),
                    "conversation_seq": alert.conversation_seq.to_string(),
                },
            }
        });
        let headers = vec![
            ("authorization", format!("Bearer {access_token}")),
            ("content-type", "application/json".to_owned()),
        ];
        let response = match self
            .fcm
            .send(
                Method::POST,
                &self.send_path,
                headers,
                Bytes::from(body.to_string()),
            )
            .await
        {
            Ok(response) => response,
            Err(error) => return PushOutcome::Retryable(error.to_string()),
        };
        if response.status.is_success() {
            return PushOutcome::Delivered;
        }
        let error = serde_json::from_slice::<FcmErrorBody>(&response.body)
            .unwrap_or_default()
            .error;
        match (response.status, error.code()) {
            (StatusCode::NOT_FOUND, "UNREGISTERED" | "NOT_FOUND") => {
                PushOutcome::TokenInvalid(format!("404 {}", error.code()))
            }
            // INVALID_ARGUMENT covers any bad field; only the token's own fault unregisters it.
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
                if error
                    .message
                    .to_ascii_lowercase()
                    .contains("registration token") =>
            {
                PushOutcome::TokenInvalid(format!("400 INVALID_ARGUMENT: {}", error.message))
            }
            (StatusCode::UNAUTHORIZED, _) => {
                // The token was revoked or expired early: fetch a new one for the retry.
                *self.access_token.lock().await = None;
                PushOutcome::Retryable("401: access token refused".into())
            }
            (status, code) => outcome_for_status(status, &format!("{code} {}", error.message)),
        }
    }
}

impl std::fmt::Debug for FcmProvider {
    // The key and the access token stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmProvider")
            .field("client_email", &self.client_email)
            .field("send_path", &self.send_path)
            .finish_non_exhaustive()
    }
}

impl PushProvider for FcmProvider {
    fn name(&self) -> &'static str {
        "fcm"
    }

    fn send<'a>(&'a self, alert: &'a Alert, token: &'a PushToken) -> BoxFuture<'a, PushOutcome> {
        Box::pin(self.post(alert, token))
    }
}
