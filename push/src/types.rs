//! What the server hands the dispatcher: the message that arrived, the tokens of the user's
//! sleeping devices, and how much of the message the user allows on a lock screen.

use serde::{Deserialize, Serialize};

/// The push service a token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple Push Notification service (iOS, iPadOS, macOS apps).
    Apns,
    /// Firebase Cloud Messaging (Android, and web clients that use it).
    Fcm,
    /// The deployment's own HTTP endpoint, for push services this crate does not speak.
    Webhook,
}

impl Platform {
    /// The lowercase name used in metrics labels, logs and the webhook body.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::Webhook => "webhook",
        }
    }
}

/// One device's registration with a push service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PushToken {
    /// Which service issued the token.
    pub platform: Platform,
    /// The token itself: the hex device token for APNs, the registration token for FCM, any
    /// opaque string for the webhook.
    pub token: String,
    /// The device id the token was registered from (for logs and for the server to delete it).
    pub device: String,
}

/// How much of a message the user lets appear in a notification, which a lock screen shows to
/// anyone holding the phone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewPolicy {
    /// Only that something arrived: "You have a new message".
    #[default]
    None,
    /// Who sent it, not what it says.
    SenderOnly,
    /// Who sent it and the start of the text (see [`crate::render::PREVIEW_MAX_BYTES`]).
    Full,
}

/// A message the user did not receive live because none of their devices was online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The recipient's user id.
    pub user: String,
    /// The conversation the message belongs to; it also groups notifications on the phone.
    pub conversation_id: String,
    /// The sender's user id.
    pub sender_user: String,
    /// The sender's display name, when the server knows it; the user id is shown otherwise.
    pub sender_name: Option<String>,
    /// App-defined content type; 0 means the content is UTF-8 text.
    pub content_type: u32,
    /// The message body; only read as text when `content_type == 0` and the policy is `Full`.
    pub content: Vec<u8>,
    /// The message's server id, passed to the app so it can fetch the message on wake-up.
    pub server_msg_id: u64,
    /// The message's position in its conversation.
    pub conversation_seq: u64,
    /// The user's total unread count, when the server knows it. iOS shows the badge as an
    /// absolute number, so this is the better badge; without it the badge is the number of
    /// messages the alert stands for.
    pub unread: Option<u32>,
}
