//! Tokens: JWTs (RFC 7519) signed with HS256 by the app's own server using a secret it shares
//! with this deployment. Verification is strict: only `alg: HS256` is accepted (no `none`, no
//! algorithm chosen by the token), the signature is compared in constant time, and `exp` is
//! required.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use im_protocol::pb::ErrorCode;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The claims our tokens carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id; when present the handshake's device id must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Platform name, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plt: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Why a token was refused; each maps to a protocol error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No token in the handshake.
    #[error("the handshake carries no token")]
    Missing,
    /// Not three base64url parts, wrong algorithm, bad JSON, bad ids or a bad signature.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// Signed correctly but past `exp`.
    #[error("token expired at {0} (Unix seconds)")]
    Expired(u64),
}

impl TokenError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Missing => ErrorCode::TokenMissing,
            TokenError::Invalid(_) => ErrorCode::TokenInvalid,
            TokenError::Expired(_) => ErrorCode::TokenExpired,
        }
    }
}

/// The shortest token secret a server accepts, in bytes. HS256 keys shorter than the hash
/// output (32 bytes) weaken it, and an empty key makes every token forgeable.
pub const MIN_SECRET_BYTES: usize = 32;
/// Fewest distinct byte values a secret must contain: refuses `aaaa…`-style secrets that are
/// long but carry next to no entropy.
const MIN_DISTINCT_SECRET_BYTES: usize = 8;

/// Why a secret is not good enough to sign tokens with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeakSecret {
    /// Shorter than [`MIN_SECRET_BYTES`] (an empty secret included).
    #[error(
        "the token secret is {0} bytes; at least {MIN_SECRET_BYTES} random bytes are required \
         (for example the output of `openssl rand -hex 32`)"
    )]
    TooShort(usize),
    /// Long enough but made of very few distinct bytes.
    #[error(
        "the token secret repeats too few distinct bytes to be random; use at least \
         {MIN_SECRET_BYTES} random bytes (for example the output of `openssl rand -hex 32`)"
    )]
    LowEntropy,
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

impl TokenKey {
    /// A key from the shared secret's bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> TokenKey {
        TokenKey {
            secret: secret.into(),
        }
    }

    /// A key for a server: refuses secrets too short or too uniform to be safe.
    pub fn strong(secret: impl Into<Vec<u8>>) -> Result<TokenKey, WeakSecret> {
        let key = TokenKey::new(secret);
        key.check_strength()?;
        Ok(key)
    }

    /// Whether the secret is long and varied enough to sign tokens a server trusts.
    pub fn check_strength(&self) -> Result<(), WeakSecret> {
        if self.secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret::TooShort(self.secret.len()));
        }
        let mut seen = [false; 256];
        for &b in &self.secret {
            seen[usize::from(b)] = true;
        }
        if seen.iter().filter(|&&s| s).count() < MIN_DISTINCT_SECRET_BYTES {
            return Err(WeakSecret::LowEntropy);
        }
        Ok(())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length")
    }

    /// Mints a token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER_JSON);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Verifies `token` at time `now_secs` and returns its claims.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > 4096 {
            return Err(TokenError::Invalid("longer than 4096 bytes"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid("not three dot-separated parts"));
        };
        let header_bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Invalid("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| TokenError::Invalid("header is not JSON"))?;
        if header.alg != "HS256" {
            return Err(TokenError::Invalid("only HS256 is accepted"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Invalid("signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..header_bytes_len(token)]);
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Invalid("signature does not verify"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|_| TokenError::Invalid("claims are not valid JSON"))?;
        im_protocol::ids::validate_id(&claims.sub, "sub")
            .map_err(|_| TokenError::Invalid("sub is not a valid user id"))?;
        if let Some(device) = &claims.dev {
            im_protocol::ids::validate_id(device, "dev")
                .map_err(|_| TokenError::Invalid("dev is not a valid device id"))?;
        }
        if claims.exp <= now_secs {
            return Err(TokenError::Expired(claims.exp));
        }
        Ok(claims)
    }
}

/// Length of `header.payload`, the signed part of a token.
fn header_bytes_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

/// Where the server and `gateway token` get the shared secret, in order: an explicit value
/// (flag or `IM_TOKEN_SECRET`), or a file, created with a random secret on first use so a dev
/// setup needs no configuration.
pub fn load_or_create_secret(explicit: Option<&str>, file: &Path) -> std::io::Result<Vec<u8>> {
    if let Some(secret) = explicit {
        return Ok(secret.as_bytes().to_vec());
    }
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text.trim().as_bytes().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let bytes: [u8; 32] = rand::random();
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(file, &secret)?;
            Ok(secret.into_bytes())
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// The default secret file inside a data directory.
pub fn default_secret_file(data_dir: &Path) -> PathBuf {
    data_dir.join("token.secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            dev: Some("phone".into()),
            plt: None,
            exp,
            iat: Some(1),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_returns_its_claims() {
        let key = TokenKey::new("s3cret");
        let token = key.sign(&claims(2_000));
        assert_eq!(key.verify(&token, 1_000), Ok(claims(2_000)));
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let key = TokenKey::new("s3cret");
        let token = key.sign(&claims(2_000));
        assert_eq!(key.verify(&token, 2_000), Err(TokenError::Expired(2_000)));
        let forged = TokenKey::new("other").sign(&claims(2_000));
        assert!(matches!(
            key.verify(&forged, 1_000),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(key.verify("", 1_000), Err(TokenError::Missing));
        for garbage in ["a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(
                matches!(key.verify(garbage, 1_000), Err(TokenError::Invalid(_))),
                "{garbage}"
            );
        }
        // A token whose payload was swapped keeps its old signature: refused.
        let other = key.sign(&Claims {
            sub: "mallory".into(),
            ..claims(2_000)
        });
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = other.split('.').nth(1).unwrap();
        assert!(matches!(
            key.verify(&parts.join("."), 1_000),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn empty_short_and_uniform_secrets_are_refused_for_servers() {
        assert_eq!(TokenKey::strong("").err(), Some(WeakSecret::TooShort(0)));
        assert_eq!(
            TokenKey::strong("integration-test-secret").err(),
            Some(WeakSecret::TooShort(23))
        );
        assert_eq!(
            TokenKey::strong("a".repeat(64)).err(),
            Some(WeakSecret::LowEntropy)
        );
        let generated: String = (0..32u8)
            .map(|b| format!("{:02x}", b.wrapping_mul(37)))
            .collect();
        assert!(TokenKey::strong(generated).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let key = TokenKey::new("s3cret");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","exp":9999999999}"#);
        assert!(matches!(
            key.verify(&format!("{header}.{payload}."), 1),
            Err(TokenError::Invalid(_))
        ));
    }
}
