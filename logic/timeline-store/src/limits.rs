//! The embedded store's argument checks, shared so that every backend refuses the same inputs
//! with the same errors.
//!
//! The embedded store turns ids, cursors and idempotency keys into engine keys and refuses
//! (as `InvalidArgument`) any that would make a key too long; some operations validate ids
//! first, others only hit the key-length bound. The other backends need none of this to store
//! their data: they apply the same checks so that a client sees the same answers whichever
//! backend the server runs on.

use crate::{StoreError, StoreResult};
use im_protocol::ids::{self, ConversationRef};

/// Longest id, cursor or idempotency key that may become part of a key (the embedded store's
/// `MAX_KEY_PART_BYTES`).
const MAX_KEY_PART_BYTES: usize = 1024;

/// Longest key (the embedded store's `MAX_KEY_BYTES`).
const MAX_KEY_BYTES: usize = 2 * MAX_KEY_PART_BYTES + 16;

/// Refuses a string too long to become part of a key.
pub fn check_part(what: &'static str, value: &str) -> StoreResult<()> {
    if value.len() > MAX_KEY_PART_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is above {MAX_KEY_PART_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Refuses a lookup whose key would be `len` bytes long.
pub fn check_key_len(len: usize) -> StoreResult<()> {
    if len > MAX_KEY_BYTES {
        return Err(StoreError::InvalidArgument("a key is too long".into()));
    }
    Ok(())
}

/// A record named by `a` and `b` (a state, member, delivery cursor): key `a 0x00 b`.
pub fn check_pair_key(a: &str, b: &str) -> StoreResult<()> {
    check_key_len(a.len() + 1 + b.len())
}

/// A seq-keyed record of `id` (a timeline message): key `id 0x00 seq(8 bytes)`.
pub fn check_seq_key(id: &str) -> StoreResult<()> {
    check_key_len(id.len() + 1 + 8)
}

/// A record keyed by `id` alone (a group).
pub fn check_key(id: &str) -> StoreResult<()> {
    check_key_len(id.len())
}

/// Refuses an id outside `im_protocol::ids`.
pub fn check_id(id: &str, what: &'static str) -> StoreResult<()> {
    ids::validate_id(id, what).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// Parses a conversation id, refusing a malformed one.
pub fn parse_conversation(id: &str) -> StoreResult<ConversationRef<'_>> {
    ConversationRef::parse(id).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// FNV-1a, 64 bits, of a message's content: the embedded store's digest, which every backend
/// keeps with a send's idempotency record so that a resend after a recall (which erased the
/// content) is still told from a conflicting reuse of its client msg id the same way.
pub fn content_digest(content: &[u8]) -> u64 {
    content
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}
