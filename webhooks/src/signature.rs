//! Request signing: how the app's server knows a request came from us and was not replayed.
//!
//! Every request carries [`TIMESTAMP_HEADER`] (Unix seconds) and [`SIGNATURE_HEADER`]:
//! `v1=` followed by the lowercase hex HMAC-SHA256, keyed with the shared secret, of
//! `"<timestamp>.<raw body bytes>"`. Putting the timestamp under the MAC lets the receiver
//! refuse old requests replayed by someone who captured them.
//!
//! A receiver checks a request before trusting its body:
//!
//! ```
//! use std::time::Duration;
//! use im_webhooks::signature::{sign, verify};
//!
//! let secret = b"a-secret-of-at-least-16-bytes";
//! let body = br#"{"event":"user_online","delivery_id":"5f0c","user":"alice","device":"d1"}"#;
//! // What the server sends in X-IM-Signature for a request signed at 1_700_000_000.
//! let header = sign(secret, 1_700_000_000, body);
//! // The receiver, 30 s later, accepting requests up to 5 minutes old.
//! let now = 1_700_000_030;
//! assert!(verify(secret, "1700000000", &header, body, now, Duration::from_secs(300)));
//! assert!(!verify(secret, "1700000000", &header, b"{}", now, Duration::from_secs(300)));
//! ```

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The event name: `before_send`, `message_sent`, `group_changed`, `user_online`,
/// `user_offline`.
pub const EVENT_HEADER: &str = "x-im-event";
/// The delivery id, unique per event and kept across retries, for de-duplication.
pub const DELIVERY_HEADER: &str = "x-im-delivery";
/// When the request was signed, in Unix seconds (each attempt is signed afresh).
pub const TIMESTAMP_HEADER: &str = "x-im-timestamp";
/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-im-signature";

/// The prefix naming the signature scheme, so a later scheme can be sent beside this one.
const SCHEME_V1: &str = "v1=";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (Unix seconds): `v1=<hex>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("{SCHEME_V1}{}", hex::encode(tag))
}

/// Checks a request as a receiver would: `timestamp_header` and `signature_header` are the
/// values of [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`], `now` is the receiver's clock in
/// Unix seconds, and a timestamp further than `tolerance` from `now` (either way) is refused.
///
/// The signature header may hold several comma-separated signatures (as during a secret
/// rotation); one valid `v1=` signature is enough. Tags are compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> bool {
    let Ok(timestamp) = timestamp_header.trim().parse::<u64>() else {
        return false;
    };
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return false;
    }
    let expected = mac(secret, timestamp, body);
    signature_header
        .split(',')
        .filter_map(|one| one.trim().strip_prefix(SCHEME_V1))
        .filter_map(|tag| hex::decode(tag).ok())
        // `verify_slice` compares in constant time.
        .any(|tag| expected.clone().verify_slice(&tag).is_ok())
}

/// [`verify`] reading the two headers from a request's header map; a missing or non-ASCII
/// header fails.
pub fn verify_headers(
    secret: &[u8],
    headers: &hyper::HeaderMap,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (text(TIMESTAMP_HEADER), text(SIGNATURE_HEADER)) {
        (Some(timestamp), Some(signature)) => {
            verify(secret, timestamp, signature, body, now, tolerance)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-0123456789abcdef";
    const BODY: &[u8] = br#"{"event":"user_online","user":"alice","device":"phone"}"#;
    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    #[test]
    fn signature_matches_an_independent_hmac_sha256() {
        // Computed with: printf '%s' '1700000000.{"event":...}' |
        //   openssl dgst -sha256 -hmac 'whsec-0123456789abcdef'
        assert_eq!(
            sign(SECRET, 1_700_000_000, BODY),
            "v1=fc8b7f824e7755d8f796a85e7174bf5d1e14fa6c85ad86a66ab4b0b1e77316b2"
        );
    }

    #[test]
    fn a_signed_body_verifies_within_the_tolerance() {
        let signature = sign(SECRET, 1_700_000_000, BODY);
        assert!(verify(
            SECRET,
            "1700000000",
            &signature,
            BODY,
            1_700_000_100,
            FIVE_MINUTES
        ));
        assert!(verify(
            SECRET,
            "1700000000",
            &signature,
            BODY,
            1_699_999_900,
            FIVE_MINUTES
        ));
    }

    #[test]
    fn a_tampered_body_fails() {
        let signature = sign(SECRET, 1_700_000_000, BODY);
        let tampered = BODY
            .to_vec()
            .iter()
            .map(|b| if *b == b'a' { b'b' } else { *b })
            .collect::<Vec<_>>();
        assert!(!verify(
            SECRET,
            "1700000000",
            &signature,
            &tampered,
            1_700_000_000,
            FIVE_MINUTES
        ));
    }

    #[test]
    fn a_changed_timestamp_or_another_secret_fails() {
        let signature = sign(SECRET, 1_700_000_000, BODY);
        assert!(!verify(
            SECRET,
            "1700000001",
            &signature,
            BODY,
            1_700_000_000,
            FIVE_MINUTES
        ));
        assert!(!verify(
            b"another-secret-0123456789",
            "1700000000",
            &signature,
            BODY,
            1_700_000_000,
            FIVE_MINUTES
        ));
    }

    #[test]
    fn an_old_request_is_refused_as_a_replay() {
        let signature = sign(SECRET, 1_700_000_000, BODY);
        assert!(!verify(
            SECRET,
            "1700000000",
            &signature,
            BODY,
            1_700_000_301,
            FIVE_MINUTES
        ));
    }

    #[test]
    fn malformed_headers_fail_without_panicking() {
        for (timestamp, signature) in [
            ("", "v1=00"),
            ("soon", "v1=00"),
            ("1700000000", ""),
            ("1700000000", "v1=not-hex"),
            ("1700000000", "v2=abcd"),
            ("1700000000", "v1="),
        ] {
            assert!(!verify(
                SECRET,
                timestamp,
                signature,
                BODY,
                1_700_000_000,
                FIVE_MINUTES
            ));
        }
    }

    #[test]
    fn one_valid_signature_among_several_is_enough() {
        let good = sign(SECRET, 1_700_000_000, BODY);
        let old = sign(b"the-previous-secret-0000", 1_700_000_000, BODY);
        let both = format!("{old}, {good}");
        assert!(verify(
            SECRET,
            "1700000000",
            &both,
            BODY,
            1_700_000_000,
            FIVE_MINUTES
        ));
    }
}
