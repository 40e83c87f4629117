//! Key layouts. Every key starts with an id (user, conversation or group) followed by a `0x00`
//! separator: ids never contain `0x00` (they are checked against `im_protocol::ids`), so a
//! prefix scan over `id 0x00` sees exactly that id's records, and `id 0x01` bounds it above.
//! Numbers are big-endian so that byte order is numeric order.

use timeline_store::{StoreError, StoreResult};

/// Longest id, cursor or idempotency key the store turns into (part of) a key. The logic tier
/// allows far less; this bound keeps every key well under the engine's 64 KiB key limit, which
/// it enforces by panicking.
pub(crate) const MAX_KEY_PART_BYTES: usize = 1024;

/// Longest key handed to the engine.
pub(crate) const MAX_KEY_BYTES: usize = 2 * MAX_KEY_PART_BYTES + 16;

/// Refuses a string too long to become part of a key.
pub(crate) fn check_part(what: &'static str, value: &str) -> StoreResult<()> {
    if value.len() > MAX_KEY_PART_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is above {MAX_KEY_PART_BYTES} bytes"
        )));
    }
    Ok(())
}

/// `id 0x00`: the prefix of every record of `id`.
pub(crate) fn prefix(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 1);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key
}

/// `id 0x01`: the first key after every record of `id`, the exclusive end of its range.
pub(crate) fn prefix_end(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 1);
    key.extend_from_slice(id.as_bytes());
    key.push(1);
    key
}

/// `id 0x00 seq(BE)`: a timeline or inbox entry.
pub(crate) fn seq_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `a 0x00 b`: a record of `a` named by `b` (dedup, state, member, delivery cursor).
pub(crate) fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = prefix(a);
    key.extend_from_slice(b.as_bytes());
    key
}

/// `user 0x00 !updated_ms(BE) conversation_id`: the recency index, newest first in key order.
pub(crate) fn recency_key(user: &str, updated_ms: u64, conversation_id: &str) -> Vec<u8> {
    let mut key = prefix(user);
    key.extend_from_slice(&(!updated_ms).to_be_bytes());
    key.extend_from_slice(conversation_id.as_bytes());
    key
}

/// `user 0x00 conversation_id 0x00`: the prefix of the seqs `user` deleted in a conversation.
/// The second `0x00` keeps `d:a:b` from prefixing `d:a:bc`.
pub(crate) fn hidden_prefix(user: &str, conversation_id: &str) -> Vec<u8> {
    let mut key = pair_key(user, conversation_id);
    key.push(0);
    key
}

/// `user 0x00 conversation_id 0x00 seq(BE)`: message `seq` is deleted for `user`.
pub(crate) fn hidden_key(user: &str, conversation_id: &str, seq: u64) -> Vec<u8> {
    let mut key = hidden_prefix(user, conversation_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The seq at the end of a [`seq_key`], or `None` for a key of another shape.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let tail = key
        .len()
        .checked_sub(8)
        .and_then(|start| key.get(start..))?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The part of a key after `prefix`, or `None` when the key does not start with it.
pub(crate) fn suffix<'k>(key: &'k [u8], prefix: &[u8]) -> Option<&'k [u8]> {
    key.strip_prefix(prefix)
}

/// A page cursor of the conversation list: the recency key's tail, printable.
pub(crate) fn recency_cursor(updated_ms: u64, conversation_id: &str) -> String {
    format!("{:016x}{conversation_id}", !updated_ms)
}

/// Turns a cursor from [`recency_cursor`] back into the recency key it names.
pub(crate) fn recency_key_of_cursor(user: &str, cursor: &str) -> Option<Vec<u8>> {
    let hex = cursor.get(..16)?;
    let conversation_id = cursor.get(16..)?;
    let inverted = u64::from_str_radix(hex, 16).ok()?;
    Some(recency_key(user, !inverted, conversation_id))
}

/// An 8-byte big-endian number, as stored for counters and delivery cursors.
pub(crate) fn decode_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_keys_sort_numerically_and_stay_inside_their_prefix() {
        assert!(seq_key("a", 255) < seq_key("a", 256));
        assert!(seq_key("a", u64::MAX) < prefix_end("a"));
        assert!(
            seq_key("a", 1) < seq_key("a.", 0),
            "a longer id never interleaves"
        );
        assert_eq!(seq_of(&seq_key("conv", 42)), Some(42));
    }

    #[test]
    fn newer_conversations_sort_first_and_cursors_round_trip() {
        assert!(recency_key("u", 20, "d:a:b") < recency_key("u", 10, "d:a:b"));
        let cursor = recency_cursor(77, "g:grp-1");
        assert_eq!(
            recency_key_of_cursor("u", &cursor),
            Some(recency_key("u", 77, "g:grp-1"))
        );
        assert_eq!(recency_key_of_cursor("u", "zz"), None);
    }
}
