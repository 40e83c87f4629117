//! Identifiers: user, device and group ids, and the canonical conversation ids built from them.
//!
//! A user, device or group id is 1 to 64 bytes of `[A-Za-z0-9_.@-]`. The restriction keeps ids
//! printable in logs and lets conversation ids use `:` as a separator without escaping.

use crate::pb::ConversationKind;

/// Longest user, device or group id in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Longest client message id in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than [`MAX_ID_LEN`].
    #[error("{what} must be 1 to {MAX_ID_LEN} bytes long")]
    Length {
        /// Which identifier.
        what: &'static str,
    },
    /// A character outside `[A-Za-z0-9_.@-]`.
    #[error("{what} may only contain A-Z a-z 0-9 _ . @ -")]
    Charset {
        /// Which identifier.
        what: &'static str,
    },
    /// Not of the form `d:<user>:<user>` or `g:<group>`.
    #[error("malformed conversation id {0:?}")]
    Conversation(String),
}

/// Checks a user, device or group id; `what` names it in the error.
pub fn validate_id(id: &str, what: &'static str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(IdError::Length { what });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
    {
        return Err(IdError::Charset { what });
    }
    Ok(())
}

/// The conversation id of two users: the same whichever of them asks.
pub fn direct_conversation_id(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("d:{lo}:{hi}")
}

/// The conversation id of a group.
pub fn group_conversation_id(group_id: &str) -> String {
    format!("g:{group_id}")
}

/// A parsed conversation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationRef<'a> {
    /// Between two users (in canonical order: `low <= high`).
    Direct {
        /// The smaller user id.
        low: &'a str,
        /// The larger user id.
        high: &'a str,
    },
    /// A group.
    Group {
        /// The group id.
        group_id: &'a str,
    },
}

impl<'a> ConversationRef<'a> {
    /// Parses and validates a conversation id.
    pub fn parse(id: &'a str) -> Result<ConversationRef<'a>, IdError> {
        let bad = || IdError::Conversation(id.chars().take(80).collect());
        if let Some(rest) = id.strip_prefix("d:") {
            let (low, high) = rest.split_once(':').ok_or_else(bad)?;
            validate_id(low, "user id").map_err(|_| bad())?;
            validate_id(high, "user id").map_err(|_| bad())?;
            if low > high {
                return Err(bad());
            }
            Ok(ConversationRef::Direct { low, high })
        } else if let Some(group_id) = id.strip_prefix("g:") {
            validate_id(group_id, "group id").map_err(|_| bad())?;
            Ok(ConversationRef::Group { group_id })
        } else {
            Err(bad())
        }
    }

    /// The kind of conversation.
    pub fn kind(&self) -> ConversationKind {
        match self {
            ConversationRef::Direct { .. } => ConversationKind::Direct,
            ConversationRef::Group { .. } => ConversationKind::Group,
        }
    }

    /// For a direct conversation that `user` is part of, the other user.
    pub fn peer_of(&self, user: &str) -> Option<&'a str> {
        match *self {
            ConversationRef::Direct { low, high } if low == user => Some(high),
            ConversationRef::Direct { low, high } if high == user => Some(low),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_and_parse_back() {
        let id = direct_conversation_id("bob", "alice");
        assert_eq!(id, direct_conversation_id("alice", "bob"));
        assert_eq!(
            ConversationRef::parse(&id).unwrap(),
            ConversationRef::Direct {
                low: "alice",
                high: "bob"
            }
        );
        assert_eq!(
            ConversationRef::parse(&id).unwrap().peer_of("alice"),
            Some("bob")
        );
    }

    #[test]
    fn malformed_conversation_ids_are_refused() {
        for id in [
            "",
            "x:a",
            "d:alice",
            "d:bob:alice",
            "d:a b:c",
            "g:",
            "g:a:b",
        ] {
            assert!(ConversationRef::parse(id).is_err(), "{id:?} accepted");
        }
    }

    #[test]
    fn ids_outside_the_charset_are_refused() {
        assert!(validate_id("alice.smith@x-1", "user id").is_ok());
        assert_eq!(
            validate_id("", "user id"),
            Err(IdError::Length { what: "user id" })
        );
        assert_eq!(
            validate_id("a:b", "user id"),
            Err(IdError::Charset { what: "user id" })
        );
        assert!(validate_id(&"a".repeat(65), "user id").is_err());
    }
}
