//! What a deployment configures: where to call, the shared secret, and how patient to be.

use std::fmt;
use std::time::Duration;

use hyper::Uri;
use hyper::http::uri::Scheme;

use crate::event::AfterEventKind;

/// The shortest secret accepted. HMAC-SHA256 takes any key length, but a short secret can be
/// guessed offline from one signed request.
pub const MIN_SECRET_LEN: usize = 16;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL does not parse as an absolute URL.
    #[error("webhook URL {url:?} does not parse: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The URL's scheme is neither `http` nor `https`.
    #[error("webhook URL {0:?} must start with http:// or https://")]
    UnsupportedScheme(String),
    /// The URL names no host.
    #[error("webhook URL {0:?} names no host")]
    MissingHost(String),
    /// The URL carries a user name or password, which would be sent in the clear to every
    /// proxy and log; the signature authenticates the server instead.
    #[error(
        "webhook URL {0:?} must not carry credentials (user@host); the signature authenticates requests"
    )]
    CredentialsInUrl(String),
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("webhook secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    SecretTooShort {
        /// The length given.
        len: usize,
    },
    /// A number in the configuration is out of range.
    #[error("webhook configuration: {0}")]
    OutOfRange(&'static str),
    /// An extra root certificate (for `https://` URLs) is not usable.
    #[error("webhook TLS root certificate refused: {0}")]
    BadRootCertificate(String),
}

/// What `before_send` answers when the app's server cannot be consulted (timeout, connection
/// error, a status other than 2xx, or an answer that does not parse).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let the message through: availability of messaging matters more than the policy.
    #[default]
    Open,
    /// Refuse the message as retryable ([`crate::BeforeSendDecision::Unavailable`]): the
    /// policy must never be bypassed, and clients resend later.
    Closed,
}

/// Which hooks are called. Everything is on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnabledHooks {
    /// Off: [`crate::Webhooks::before_send`] answers `Allow` at once, without a request.
    pub before_send: bool,
    /// `message_sent` after-events.
    pub message_sent: bool,
    /// `group_changed` after-events.
    pub group_changed: bool,
    /// `user_online` after-events.
    pub user_online: bool,
    /// `user_offline` after-events.
    pub user_offline: bool,
}

impl Default for EnabledHooks {
    fn default() -> EnabledHooks {
        EnabledHooks::all()
    }
}

impl EnabledHooks {
    /// Every hook.
    pub const fn all() -> EnabledHooks {
        EnabledHooks {
            before_send: true,
            message_sent: true,
            group_changed: true,
            user_online: true,
            user_offline: true,
        }
    }

    /// No hook at all (turn on the ones wanted field by field).
    pub const fn none() -> EnabledHooks {
        EnabledHooks {
            before_send: false,
            message_sent: false,
            group_changed: false,
            user_online: false,
            user_offline: false,
        }
    }

    /// Whether after-events of this kind are sent.
    pub fn after_event(&self, kind: AfterEventKind) -> bool {
        match kind {
            AfterEventKind::MessageSent => self.message_sent,
            AfterEventKind::GroupChanged => self.group_changed,
            AfterEventKind::UserOnline => self.user_online,
            AfterEventKind::UserOffline => self.user_offline,
        }
    }
}

/// Where and how to call the app's server.
///
/// Build it with [`WebhookConfig::new`], which checks the URL and the secret, then adjust the
/// public fields; [`crate::Webhooks::start`] checks the numbers.
#[derive(Clone)]
pub struct WebhookConfig {
    url: Uri,
    secret: Vec<u8>,
    /// The longest one request may take, connecting and reading the answer included.
    /// Default 2 s. Before-send waits this long at most on the send path.
    pub timeout: Duration,
    /// What `before_send` answers when the app's server cannot be consulted. Default
    /// [`FailurePolicy::Open`].
    pub before_send_failure: FailurePolicy,
    /// How many after-events may wait for delivery; more are dropped and counted. Default
    /// 10 000.
    pub queue_capacity: usize,
    /// How many requests an after-event gets, the first included, before it is given up.
    /// Default 8.
    pub max_attempts: u32,
    /// The wait before the first retry; each later wait doubles, with jitter. Default 500 ms.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts. Default 60 s.
    pub max_backoff: Duration,
    /// How many after-event requests may be in flight at once. Default 4.
    pub max_in_flight: usize,
    /// Which hooks are called. Default all.
    pub events: EnabledHooks,
    /// DER certificates trusted for `https://` URLs besides the public Web PKI roots (a
    /// private CA). Default none.
    pub extra_root_certificates: Vec<Vec<u8>>,
}

impl fmt::Debug for WebhookConfig {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url_for_logs())
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("before_send_failure", &self.before_send_failure)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_in_flight", &self.max_in_flight)
            .field("events", &self.events)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates.len(),
            )
            .finish()
    }
}

impl WebhookConfig {
    /// A configuration with the defaults, calling `url` (`http://` or `https://`) and signing
    /// with `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(url: &str, secret: impl Into<Vec<u8>>) -> Result<WebhookConfig, ConfigError> {
        let url = parse_url(url)?;
        let secret = secret.into();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort { len: secret.len() });
        }
        Ok(WebhookConfig {
            url,
            secret,
            timeout: Duration::from_secs(2),
            before_send_failure: FailurePolicy::Open,
            queue_capacity: 10_000,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_in_flight: 4,
            events: EnabledHooks::all(),
            extra_root_certificates: Vec::new(),
        })
    }

    /// The URL every request is posted to.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The URL without its query, which some apps use for an access token: safe to log.
    pub fn url_for_logs(&self) -> String {
        let scheme = self.url.scheme_str().unwrap_or("http");
        let authority = self.url.authority().map(|a| a.as_str()).unwrap_or("");
        let query = if self.url.query().is_some() {
            "?…"
        } else {
            ""
        };
        format!("{scheme}://{authority}{}{query}", self.url.path())
    }

    /// The signing secret.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Checks the numbers a caller may have changed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::OutOfRange("timeout must be above zero"));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::OutOfRange("queue_capacity must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::OutOfRange("max_attempts must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::OutOfRange("max_in_flight must be at least 1"));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(ConfigError::OutOfRange(
                "initial_backoff must not exceed max_backoff",
            ));
        }
        Ok(())
    }
}

fn parse_url(text: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ConfigError::BadUrl {
            url: text.to_owned(),
            reason: e.to_string(),
        })?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        _ => return Err(ConfigError::UnsupportedScheme(text.to_owned())),
    }
    let Some(authority) = uri.authority() else {
        return Err(ConfigError::MissingHost(text.to_owned()));
    };
    if authority.as_str().contains('@') {
        return Err(ConfigError::CredentialsInUrl(text.to_owned()));
    }
    if authority.host().is_empty() {
        return Err(ConfigError::MissingHost(text.to_owned()));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef";

    #[test]
    fn defaults_match_the_documentation() {
        let config = WebhookConfig::new("http://app.internal:8080/im-hooks", SECRET).unwrap();
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.before_send_failure, FailurePolicy::Open);
        assert_eq!(config.queue_capacity, 10_000);
        assert_eq!(config.max_attempts, 8);
        assert_eq!(config.initial_backoff, Duration::from_millis(500));
        assert_eq!(config.max_backoff, Duration::from_secs(60));
        assert_eq!(config.events, EnabledHooks::all());
        assert_eq!(config.url().path(), "/im-hooks");
        config.validate().unwrap();
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(matches!(
            WebhookConfig::new("not a url", SECRET),
            Err(ConfigError::BadUrl { .. })
        ));
        assert!(matches!(
            WebhookConfig::new("ftp://app.internal/hooks", SECRET),
            Err(ConfigError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            WebhookConfig::new("/hooks", SECRET),
            Err(ConfigError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            WebhookConfig::new("http://user:pw@app.internal/hooks", SECRET),
            Err(ConfigError::CredentialsInUrl(_))
        ));
        WebhookConfig::new("https://hooks.example.com/im", SECRET).unwrap();
    }

    #[test]
    fn short_or_empty_secrets_are_refused() {
        assert!(matches!(
            WebhookConfig::new("http://127.0.0.1:9/", b"".to_vec()),
            Err(ConfigError::SecretTooShort { len: 0 })
        ));
        assert!(matches!(
            WebhookConfig::new("http://127.0.0.1:9/", b"fifteen bytes!!".to_vec()),
            Err(ConfigError::SecretTooShort { len: 15 })
        ));
    }

    #[test]
    fn debug_output_hides_the_secret_and_the_query() {
        let config = WebhookConfig::new("http://127.0.0.1:9/hooks?token=t0p", SECRET).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!shown.contains("t0p"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(config.url_for_logs(), "http://127.0.0.1:9/hooks?…");
        assert_eq!(config.url().query(), Some("token=t0p"));
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        let mut config = WebhookConfig::new("http://127.0.0.1:9/", SECRET).unwrap();
        config.queue_capacity = 0;
        assert!(config.validate().is_err());
        config.queue_capacity = 1;
        config.initial_backoff = Duration::from_secs(120);
        assert!(config.validate().is_err());
    }
}
