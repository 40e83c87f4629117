//! The argument checks of the embedded store, reproduced so that both backends refuse the same
//! inputs with the same errors.
//!
//! The embedded store turns ids, cursors and idempotency keys into engine keys and refuses
//! (as `InvalidArgument`) any that would make a key too long; some operations validate ids
//! first, others only hit the key-length bound. Nothing here is needed to store data in memory:
//! it exists so that a test or a simulation run on this store sees the answers a server on disk
//! would give.

use im_protocol::ids::{self, ConversationRef};
use timeline_store::{StoreError, StoreResult};

/// Longest id, cursor or idempotency key that may become part of a key (the embedded store's
/// `MAX_KEY_PART_BYTES`).
const MAX_KEY_PART_BYTES: usize = 1024;

/// Longest key (the embedded store's `MAX_KEY_BYTES`).
const MAX_KEY_BYTES: usize = 2 * MAX_KEY_PART_BYTES + 16;

/// Refuses a string too long to become part of a key.
pub(crate) fn check_part(what: &'static str, value: &str) -> StoreResult<()> {
    if value.len() > MAX_KEY_PART_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is above {MAX_KEY_PART_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Refuses a lookup whose key would be `len` bytes long.
fn check_key_len(len: usize) -> StoreResult<()> {
    if len > MAX_KEY_BYTES {
        return Err(StoreError::InvalidArgument("a key is too long".into()));
    }
    Ok(())
}

/// A record named by `a` and `b` (a state, member, delivery cursor): key `a 0x00 b`.
pub(crate) fn check_pair_key(a: &str, b: &str) -> StoreResult<()> {
    check_key_len(a.len() + 1 + b.len())
}

/// A seq-keyed record of `id` (a timeline message): key `id 0x00 seq(8 bytes)`.
pub(crate) fn check_seq_key(id: &str) -> StoreResult<()> {
    check_key_len(id.len() + 1 + 8)
}

/// A record keyed by `id` alone (a group).
pub(crate) fn check_key(id: &str) -> StoreResult<()> {
    check_key_len(id.len())
}

/// Refuses an id outside `im_protocol::ids`.
pub(crate) fn check_id(id: &str, what: &'static str) -> StoreResult<()> {
    ids::validate_id(id, what).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// Parses a conversation id, refusing a malformed one.
pub(crate) fn parse_conversation(id: &str) -> StoreResult<ConversationRef<'_>> {
    ConversationRef::parse(id).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}
