//! Push registrations and mutes as the logic tier stores them: user settings
//! (`TimelineStore::put_user_setting`) named `push/<device>` and `mute/<conversation id>`.

use im_protocol::{ProstMessage as _, pb};

/// Settings naming a device's push registration start with this.
pub const REGISTRATION_PREFIX: &str = "push/";
/// Longest push token accepted (APNs tokens are 64 hex digits, FCM's about 160 characters).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The setting holding `device`'s registration.
pub fn registration_key(device: &str) -> String {
    format!("{REGISTRATION_PREFIX}{device}")
}

/// The setting that mutes `conversation_id`.
pub fn mute_key(conversation_id: &str) -> String {
    format!("mute/{conversation_id}")
}

/// Refuses tokens no push service issues: empty, over 4 KiB, or with anything but printable
/// ASCII (a token goes into URLs and headers).
pub fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(format!("token must be 1 to {MAX_TOKEN_BYTES} bytes"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// One device's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The device.
    pub device: String,
    /// Its push service.
    pub service: pb::PushService,
    /// Its token there.
    pub token: String,
    /// What its notifications show.
    pub preview: pb::PushPreview,
}

impl Registration {
    /// The registration stored under `key`, if it is one and decodes.
    pub fn decode(key: &str, value: &[u8]) -> Option<Registration> {
        let device = key.strip_prefix(REGISTRATION_PREFIX)?;
        let stored = pb::PushTokenReq::decode(value).ok()?;
        Some(Registration {
            device: device.to_owned(),
            service: pb::PushService::try_from(stored.service).ok()?,
            token: stored.token,
            preview: pb::PushPreview::try_from(stored.preview).unwrap_or(pb::PushPreview::None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_printable_ascii_of_bounded_length() {
        assert!(check_token("a1b2c3").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token("has space").is_err());
        assert!(check_token("line\nbreak").is_err());
        assert!(check_token(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }
}
