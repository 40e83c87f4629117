//! Signing the two JWTs the push services want, with ring: ES256 for APNs provider tokens and
//! RS256 for the OAuth2 assertion Google exchanges for an FCM access token. Only signing lives
//! here; the services verify.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde::Serialize;

/// Why a signing key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No `-----BEGIN PRIVATE KEY-----` block, or its base64 is broken.
    #[error("not a PEM private key: {0}")]
    Pem(&'static str),
    /// The PEM block holds something ring refuses as a key of the expected kind (a key of the
    /// other algorithm, an encrypted key, a PKCS#1 key where PKCS#8 is needed, an RSA key
    /// shorter than 2048 bits).
    #[error("the key is not a usable {expected} PKCS#8 key: {reason}")]
    Rejected {
        /// What kind of key was expected.
        expected: &'static str,
        /// What ring said.
        reason: String,
    },
    /// A service-account key file is not the JSON Google issues.
    #[error("invalid service-account key file: {0}")]
    ServiceAccount(String),
    /// Signing failed (ring reports no detail).
    #[error("signing failed")]
    Sign,
}

/// The DER bytes of the first `PRIVATE KEY` block in `pem` (Apple's .p8 files and Google's
/// `private_key` field are both PKCS#8 in this form).
pub(crate) fn pkcs8_from_pem(pem: &str) -> Result<Vec<u8>, KeyError> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem
        .find(BEGIN)
        .ok_or(KeyError::Pem("no BEGIN PRIVATE KEY line"))?
        + BEGIN.len();
    let len = pem[start..]
        .find(END)
        .ok_or(KeyError::Pem("no END PRIVATE KEY line"))?;
    let base64: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(base64)
        .map_err(|_| KeyError::Pem("the key's base64 is invalid"))
}

/// `base64url(json(header)).base64url(json(claims))`, the part of a JWT that is signed.
fn signing_input(header: &impl Serialize, claims: &impl Serialize) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    let header = serde_json::to_vec(header).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// An ES256 signer over a P-256 key (Apple's .p8 "Auth Key").
pub(crate) struct Es256Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Es256Signer {
    /// Loads the key from a PKCS#8 PEM (the content of the .p8 file).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pkcs8_from_pem(pem)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(
            |error| KeyError::Rejected {
                expected: "P-256 ECDSA",
                reason: error.to_string(),
            },
        )?;
        Ok(Es256Signer { key, rng })
    }

    /// A signed JWT. JWS wants the signature as the fixed 64-byte `r || s`, which is what the
    /// `_FIXED` algorithm produces (not DER).
    pub(crate) fn sign(
        &self,
        header: &impl Serialize,
        claims: &impl Serialize,
    ) -> Result<String, KeyError> {
        let input = signing_input(header, claims);
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| KeyError::Sign)?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// An RS256 signer over an RSA key (a Google service account's `private_key`).
pub(crate) struct Rs256Signer {
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl Rs256Signer {
    /// Loads the key from a PKCS#8 PEM.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pkcs8_from_pem(pem)?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|error| KeyError::Rejected {
            expected: "RSA",
            reason: error.to_string(),
        })?;
        Ok(Rs256Signer {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// A signed JWT (RSASSA-PKCS1-v1_5 with SHA-256).
    pub(crate) fn sign(
        &self,
        header: &impl Serialize,
        claims: &impl Serialize,
    ) -> Result<String, KeyError> {
        let input = signing_input(header, claims);
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};

    #[test]
    fn an_es256_token_verifies_with_the_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let signer = Es256Signer::from_pem(&pem).unwrap();
        let token = signer
            .sign(
                &serde_json::json!({"alg": "ES256"}),
                &serde_json::json!({"iss": "T"}),
            )
            .unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let public = signer.key.public_key().as_ref().to_vec();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(
                input.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .expect("signature verifies");
    }

    #[test]
    fn garbage_keys_are_refused_with_a_reason() {
        assert!(matches!(
            Es256Signer::from_pem("hello"),
            Err(KeyError::Pem(_))
        ));
        let not_base64 = "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----";
        assert!(matches!(
            Es256Signer::from_pem(not_base64),
            Err(KeyError::Pem(_))
        ));
        let not_a_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----";
        assert!(matches!(
            Rs256Signer::from_pem(not_a_key),
            Err(KeyError::Rejected { .. })
        ));
    }
}
