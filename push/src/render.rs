//! Turning messages into the words a phone shows: the preview policy decides how much of a
//! message appears, and a batch of several messages becomes one alert.
//!
//! Pure functions, so every wording and every truncation is tested without a push service.

use crate::provider::Alert;
use crate::types::{Notification, PreviewPolicy};

/// The longest text preview in bytes, the ellipsis included. APNs refuses payloads over 4 KiB
/// and lock screens show two lines anyway; the limit is in bytes because that is what the
/// services count.
pub const PREVIEW_MAX_BYTES: usize = 200;

/// The longest sender name in bytes: names are chosen by users, so they are bounded too.
pub const SENDER_MAX_BYTES: usize = 64;

/// What a truncated text ends with.
const ELLIPSIS: &str = "…";

/// The longest prefix of `text` that is at most `max_bytes` long and ends on a character
/// boundary, so a multi-byte character is never cut in half.
pub fn truncate_utf8(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` if it fits in `max_bytes`, otherwise its longest prefix that leaves room for an
/// ellipsis, followed by the ellipsis.
pub fn shorten(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let kept = truncate_utf8(text, max_bytes.saturating_sub(ELLIPSIS.len()));
    format!("{kept}{ELLIPSIS}")
}

/// The name shown for the sender of `notification`: the display name if the server gave one,
/// the user id otherwise.
fn sender_label(notification: &Notification) -> String {
    let name = notification
        .sender_name
        .as_deref()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or(&notification.sender_user);
    shorten(name, SENDER_MAX_BYTES)
}

/// The start of the message's text, or a neutral line when the message is not text (an image,
/// a file: the app renders those, the lock screen cannot).
fn text_preview(notification: &Notification) -> String {
    if notification.content_type != 0 {
        return "Sent an attachment".to_owned();
    }
    let text = String::from_utf8_lossy(&notification.content);
    let text = text.trim();
    if text.is_empty() {
        return "New message".to_owned();
    }
    shorten(text, PREVIEW_MAX_BYTES)
}

/// One alert standing for `messages` messages (at least 1) of which `latest` is the newest.
///
/// | policy      | one message                          | n messages                          |
/// |-------------|--------------------------------------|-------------------------------------|
/// | None        | "New message" / "You have a new message" | "New messages" / "You have n new messages" |
/// | SenderOnly  | sender / "New message"               | sender of the latest / "n new messages" |
/// | Full        | sender / text preview                | sender of the latest / its preview  |
///
/// The badge is the user's unread count when the server gave it, otherwise `messages`.
pub fn render_alert(latest: &Notification, messages: u32, policy: PreviewPolicy) -> Alert {
    let messages = messages.max(1);
    let (title, body) = match (policy, messages) {
        (PreviewPolicy::None, 1) => (
            "New message".to_owned(),
            "You have a new message".to_owned(),
        ),
        (PreviewPolicy::None, n) => (
            "New messages".to_owned(),
            format!("You have {n} new messages"),
        ),
        (PreviewPolicy::SenderOnly, 1) => (sender_label(latest), "New message".to_owned()),
        (PreviewPolicy::SenderOnly, n) => (sender_label(latest), format!("{n} new messages")),
        (PreviewPolicy::Full, _) => (sender_label(latest), text_preview(latest)),
    };
    Alert {
        user: latest.user.clone(),
        title,
        body,
        badge: latest.unread.unwrap_or(messages),
        conversation_id: latest.conversation_id.clone(),
        server_msg_id: latest.server_msg_id,
        conversation_seq: latest.conversation_seq,
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_message(text: &str) -> Notification {
        Notification {
            user: "bob".into(),
            conversation_id: "dm:alice:bob".into(),
            sender_user: "alice".into(),
            sender_name: Some("Alice".into()),
            content_type: 0,
            content: text.as_bytes().to_vec(),
            server_msg_id: 42,
            conversation_seq: 7,
            unread: None,
        }
    }

    #[test]
    fn truncation_never_splits_a_character() {
        // "é" is two bytes: a limit of 3 falls inside the second one.
        assert_eq!(truncate_utf8("éé", 3), "é");
        assert_eq!(truncate_utf8("éé", 4), "éé");
        assert_eq!(truncate_utf8("abc", 0), "");
        // A four-byte emoji is dropped whole.
        assert_eq!(truncate_utf8("a😀", 4), "a");
    }

    #[test]
    fn a_long_preview_is_cut_to_the_limit_with_an_ellipsis() {
        let long = "ü".repeat(300); // 600 bytes
        let alert = render_alert(&text_message(&long), 1, PreviewPolicy::Full);
        assert!(
            alert.body.len() <= PREVIEW_MAX_BYTES,
            "{} bytes",
            alert.body.len()
        );
        assert!(alert.body.ends_with('…'));
        let kept = alert.body.trim_end_matches('…');
        assert_eq!(kept, "ü".repeat(98)); // 196 bytes + 3 for the ellipsis
    }

    #[test]
    fn each_policy_shows_what_it_promises() {
        let message = text_message("lunch at noon?");
        let none = render_alert(&message, 1, PreviewPolicy::None);
        assert_eq!(
            (none.title.as_str(), none.body.as_str()),
            ("New message", "You have a new message")
        );
        let sender = render_alert(&message, 1, PreviewPolicy::SenderOnly);
        assert_eq!(
            (sender.title.as_str(), sender.body.as_str()),
            ("Alice", "New message")
        );
        let full = render_alert(&message, 1, PreviewPolicy::Full);
        assert_eq!(
            (full.title.as_str(), full.body.as_str()),
            ("Alice", "lunch at noon?")
        );
        for hidden in [&none, &sender] {
            assert!(!hidden.body.contains("lunch"), "{hidden:?} shows the text");
        }
        for alert in [none, sender, full] {
            assert_eq!(alert.badge, 1);
            assert_eq!(alert.server_msg_id, 42);
        }
    }

    #[test]
    fn several_messages_become_one_alert_with_the_count() {
        let message = text_message("the last one");
        let none = render_alert(&message, 3, PreviewPolicy::None);
        assert_eq!(none.body, "You have 3 new messages");
        assert_eq!(none.badge, 3);
        let sender = render_alert(&message, 3, PreviewPolicy::SenderOnly);
        assert_eq!(sender.body, "3 new messages");
        let full = render_alert(&message, 3, PreviewPolicy::Full);
        assert_eq!(full.body, "the last one");
        assert_eq!(full.messages, 3);
    }

    #[test]
    fn the_servers_unread_count_wins_over_the_batch_size() {
        let mut message = text_message("hi");
        message.unread = Some(12);
        assert_eq!(render_alert(&message, 2, PreviewPolicy::None).badge, 12);
    }

    #[test]
    fn attachments_and_missing_names_have_neutral_wording() {
        let mut message = text_message("");
        message.sender_name = None;
        let alert = render_alert(&message, 1, PreviewPolicy::Full);
        assert_eq!(
            (alert.title.as_str(), alert.body.as_str()),
            ("alice", "New message")
        );
        message.content_type = 3;
        message.content = vec![0xff, 0x00];
        assert_eq!(
            render_alert(&message, 1, PreviewPolicy::Full).body,
            "Sent an attachment"
        );
    }
}
