//! What is sent to the app's server, and what it may answer, with their JSON shapes.
//!
//! Binary content travels base64-encoded (standard alphabet, padded) in `content_base64`.

use serde::{Deserialize, Serialize};

/// A message about to be stored, for the app's server to allow, reject or rewrite.
///
/// Posted as `{"event":"before_send","delivery_id":"…","sender_user":"…","sender_device":"…",
/// "conversation_id":"…","to_user":"…"|null,"to_group":"…"|null,"client_msg_id":"…",
/// "content_type":0,"content_base64":"…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeSend {
    /// Who sends it.
    pub sender_user: String,
    /// From which of the sender's devices.
    pub sender_device: String,
    /// The conversation it goes to.
    pub conversation_id: String,
    /// The recipient of a direct message.
    pub to_user: Option<String>,
    /// The group of a group message.
    pub to_group: Option<String>,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// App-defined (0 = UTF-8 text).
    pub content_type: u32,
    /// The content, opaque to the server.
    #[serde(rename = "content_base64", with = "base64_bytes")]
    pub content: Vec<u8>,
}

/// What the server does with a message, from the app's answer to a [`BeforeSend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeforeSendDecision {
    /// Store and deliver it as sent. Also the answer under [`crate::FailurePolicy::Open`] when
    /// the app's server cannot be consulted.
    Allow,
    /// Refuse it (not retryable).
    Reject {
        /// The app's own reason code, passed to the client (0 = none given).
        reason: u32,
        /// The app's explanation (may be empty). Its length is bounded only by the answer size
        /// limit, 1 MiB: the caller decides how much of it to forward.
        message: String,
    },
    /// Store and deliver this content instead.
    Rewrite {
        /// The replacement content.
        content: Vec<u8>,
        /// The replacement content type; `None` keeps the original one.
        content_type: Option<u32>,
    },
    /// The app's server could not be consulted and the policy is
    /// [`crate::FailurePolicy::Closed`]: refuse the message as retryable.
    Unavailable,
}

/// The app server's answer to a before-send request, as JSON: `{"action":"allow"}`,
/// `{"action":"reject","reason":7,"message":"…"}` or
/// `{"action":"rewrite","content_base64":"…","content_type":1}` (`content_type` optional).
/// Unknown fields are ignored, so the app may add its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BeforeSendAnswer {
    /// Let it through.
    Allow,
    /// Refuse it.
    Reject {
        /// App-defined reason code; absent means 0.
        #[serde(default)]
        reason: u32,
        /// Explanation; absent means empty.
        #[serde(default)]
        message: String,
    },
    /// Replace the content.
    Rewrite {
        /// The new content.
        #[serde(rename = "content_base64", with = "base64_bytes")]
        content: Vec<u8>,
        /// The new content type; absent keeps the original.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<u32>,
    },
}

impl From<BeforeSendAnswer> for BeforeSendDecision {
    fn from(answer: BeforeSendAnswer) -> BeforeSendDecision {
        match answer {
            BeforeSendAnswer::Allow => BeforeSendDecision::Allow,
            BeforeSendAnswer::Reject { reason, message } => {
                BeforeSendDecision::Reject { reason, message }
            }
            BeforeSendAnswer::Rewrite {
                content,
                content_type,
            } => BeforeSendDecision::Rewrite {
                content,
                content_type,
            },
        }
    }
}

/// What happened to a group, in a [`AfterEvent::GroupChanged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupChange {
    /// The group was created; `members` are its first members.
    Created,
    /// `actor` added `members`.
    MembersAdded,
    /// `actor` removed `members`.
    MembersRemoved,
    /// `actor` joined by themself.
    MemberJoined,
    /// `actor` left.
    MemberLeft,
    /// The group's attributes (name, settings) changed.
    Updated,
}

/// Something that already happened, reported to the app's server after the fact.
///
/// Serialised with an `"event"` field naming the variant, plus the `"delivery_id"` it was
/// given, for example `{"event":"user_online","delivery_id":"…","user":"alice","device":"d1"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AfterEvent {
    /// A message was stored.
    MessageSent {
        /// Its conversation.
        conversation_id: String,
        /// Its id, unique per deployment.
        server_msg_id: u64,
        /// Its position in the conversation.
        conversation_seq: u64,
        /// Who sent it.
        sender_user: String,
        /// From which device.
        sender_device: String,
        /// The sender's idempotency key.
        client_msg_id: String,
        /// App-defined content type.
        content_type: u32,
        /// The content as stored (after any rewrite).
        #[serde(rename = "content_base64", with = "base64_bytes")]
        content: Vec<u8>,
        /// When the server stored it, in Unix milliseconds.
        server_time_ms: u64,
    },
    /// A group's membership or attributes changed.
    GroupChanged {
        /// The group.
        group_id: String,
        /// What changed.
        change: GroupChange,
        /// Who changed it.
        actor: String,
        /// The members concerned (added, removed, or the first members).
        members: Vec<String>,
    },
    /// A device connected (the user's first or another device).
    UserOnline {
        /// The user.
        user: String,
        /// The device that connected.
        device: String,
    },
    /// A device disconnected.
    UserOffline {
        /// The user.
        user: String,
        /// The device that disconnected.
        device: String,
    },
}

/// The kinds of [`AfterEvent`], for configuration, metric labels and the `X-IM-Event` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AfterEventKind {
    /// [`AfterEvent::MessageSent`].
    MessageSent,
    /// [`AfterEvent::GroupChanged`].
    GroupChanged,
    /// [`AfterEvent::UserOnline`].
    UserOnline,
    /// [`AfterEvent::UserOffline`].
    UserOffline,
}

impl AfterEventKind {
    /// The name used in JSON, headers and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            AfterEventKind::MessageSent => "message_sent",
            AfterEventKind::GroupChanged => "group_changed",
            AfterEventKind::UserOnline => "user_online",
            AfterEventKind::UserOffline => "user_offline",
        }
    }
}

impl AfterEvent {
    /// Which kind of event this is.
    pub fn kind(&self) -> AfterEventKind {
        match self {
            AfterEvent::MessageSent { .. } => AfterEventKind::MessageSent,
            AfterEvent::GroupChanged { .. } => AfterEventKind::GroupChanged,
            AfterEvent::UserOnline { .. } => AfterEventKind::UserOnline,
            AfterEvent::UserOffline { .. } => AfterEventKind::UserOffline,
        }
    }
}

/// The event name of before-send requests (header and JSON).
pub const BEFORE_SEND_EVENT: &str = "before_send";

/// An after-event as posted: the event's fields, its `"event"` name and its delivery id.
/// Receivers written in Rust can deserialize request bodies into this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterEventDelivery {
    /// Unique per event, the same on every attempt.
    pub delivery_id: String,
    /// The event.
    #[serde(flatten)]
    pub event: AfterEvent,
}

/// A before-send request as posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeSendRequest {
    /// Always `"before_send"`.
    pub event: String,
    /// Unique per request.
    pub delivery_id: String,
    /// The message.
    #[serde(flatten)]
    pub message: BeforeSend,
}

/// `Vec<u8>` as a base64 string (standard alphabet, padded).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_sent_is_posted_with_its_event_name_and_base64_content() {
        let delivery = AfterEventDelivery {
            delivery_id: "d-1".into(),
            event: AfterEvent::MessageSent {
                conversation_id: "c:alice:bob".into(),
                server_msg_id: 42,
                conversation_seq: 7,
                sender_user: "alice".into(),
                sender_device: "phone".into(),
                client_msg_id: "m-1".into(),
                content_type: 0,
                content: b"hi".to_vec(),
                server_time_ms: 1_700_000_000_123,
            },
        };
        let value = serde_json::to_value(&delivery).unwrap();
        assert_eq!(
            value,
            json!({
                "event": "message_sent",
                "delivery_id": "d-1",
                "conversation_id": "c:alice:bob",
                "server_msg_id": 42,
                "conversation_seq": 7,
                "sender_user": "alice",
                "sender_device": "phone",
                "client_msg_id": "m-1",
                "content_type": 0,
                "content_base64": "aGk=",
                "server_time_ms": 1_700_000_000_123u64,
            })
        );
        let back: AfterEventDelivery = serde_json::from_value(value).unwrap();
        assert_eq!(back, delivery);
    }

    #[test]
    fn group_changed_names_the_change_in_snake_case() {
        let event = AfterEvent::GroupChanged {
            group_id: "g1".into(),
            change: GroupChange::MembersAdded,
            actor: "alice".into(),
            members: vec!["bob".into(), "carol".into()],
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({"event": "group_changed", "group_id": "g1", "change": "members_added",
                   "actor": "alice", "members": ["bob", "carol"]})
        );
        assert_eq!(event.kind().name(), "group_changed");
    }

    #[test]
    fn before_send_answers_parse() {
        let parse = |text: &str| serde_json::from_str::<BeforeSendAnswer>(text);
        assert_eq!(
            parse(r#"{"action":"allow"}"#).unwrap(),
            BeforeSendAnswer::Allow
        );
        assert_eq!(
            parse(r#"{"action":"reject","reason":7,"message":"spam","extra":1}"#).unwrap(),
            BeforeSendAnswer::Reject {
                reason: 7,
                message: "spam".into()
            }
        );
        assert_eq!(
            parse(r#"{"action":"reject"}"#).unwrap(),
            BeforeSendAnswer::Reject {
                reason: 0,
                message: String::new()
            }
        );
        assert_eq!(
            parse(r#"{"action":"rewrite","content_base64":"aGk="}"#).unwrap(),
            BeforeSendAnswer::Rewrite {
                content: b"hi".to_vec(),
                content_type: None
            }
        );
        assert!(parse(r#"{"action":"rewrite","content_base64":"***"}"#).is_err());
        assert!(parse(r#"{"action":"maybe"}"#).is_err());
        assert!(parse(r#"{"action":"reject","reason":-1}"#).is_err());
        assert!(parse("").is_err());
    }
}
