//! Storage primitives: reads and writes through the drain (its snapshot and pending writes),
//! with the key-length checks that keep a bad argument from failing the engine, and the writes
//! made once per drain.

use std::ops::Bound;

use fjall::{Readable as _, SingleWriterTxKeyspace};
use prost::Message as _;
use timeline_store::{StoreError, StoreResult};

use super::pending::Merged;
use super::{NEXT_GROUP_ID, NEXT_MSG_ID, WriteCtx, corrupt};
use crate::keys;

/// The key range of every key starting with `prefix`.
pub(super) fn prefix_bounds(prefix: Vec<u8>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    // The least key above every key with this prefix: the prefix with its last byte below
    // 0xff incremented (and the 0xff bytes after it dropped); none if it is all 0xff.
    let mut upper = prefix.clone();
    while let Some(last) = upper.pop() {
        if last < 0xff {
            upper.push(last + 1);
            return (Bound::Included(prefix), Bound::Excluded(upper));
        }
    }
    (Bound::Included(prefix), Bound::Unbounded)
}

impl WriteCtx<'_> {
    /// Records a storage error so the drain is not committed, and returns it as the job's error.
    pub(super) fn io(&mut self, e: fjall::Error) -> StoreError {
        let reason = format!("storage engine: {e}");
        self.failed.get_or_insert_with(|| (reason.clone(), false));
        StoreError::Backend(reason)
    }

    pub(super) fn get(
        &mut self,
        ks: &SingleWriterTxKeyspace,
        key: &[u8],
    ) -> StoreResult<Option<fjall::Slice>> {
        if key.len() > keys::MAX_KEY_BYTES {
            return Err(StoreError::InvalidArgument("a key is too long".into()));
        }
        let slot = self.ks.slot_of(ks);
        if let Some(entry) = self.pending.get(slot, key) {
            return Ok(entry.as_deref().map(fjall::Slice::from));
        }
        match self.snapshot.get(ks, key) {
            Ok(value) => Ok(value),
            Err(e) => Err(self.io(e)),
        }
    }

    pub(super) fn get_decoded<T: prost::Message + Default>(
        &mut self,
        ks: &SingleWriterTxKeyspace,
        key: &[u8],
        what: &str,
    ) -> StoreResult<Option<T>> {
        match self.get(ks, key)? {
            Some(raw) => T::decode(&*raw)
                .map(Some)
                .map_err(|e| self.fail_with(corrupt(what, e))),
            None => Ok(None),
        }
    }

    /// Fails the drain with `error` (a half-applied job must not be committed).
    pub(super) fn fail_with(&mut self, error: StoreError) -> StoreError {
        let invalid = matches!(error, StoreError::InvalidArgument(_));
        self.failed
            .get_or_insert_with(|| (error.to_string(), invalid));
        error
    }

    /// Writes a record. A key the engine would refuse (by panicking) fails the drain instead;
    /// the jobs of the drain that did nothing wrong are run again (see [`super::run`]).
    pub(super) fn put(&mut self, ks: &SingleWriterTxKeyspace, key: Vec<u8>, value: Vec<u8>) {
        if key.len() > keys::MAX_KEY_BYTES {
            self.fail_with(StoreError::InvalidArgument("a key is too long".into()));
            return;
        }
        let slot = self.ks.slot_of(ks);
        self.pending.put(slot, key, value);
    }

    pub(super) fn delete(&mut self, ks: &SingleWriterTxKeyspace, key: Vec<u8>) {
        if key.len() > keys::MAX_KEY_BYTES {
            self.fail_with(StoreError::InvalidArgument("a key is too long".into()));
            return;
        }
        let slot = self.ks.slot_of(ks);
        self.pending.remove(slot, key);
    }

    /// Writes a record under a key the engine would refuse: for tests of drain isolation.
    #[cfg(test)]
    pub(crate) fn put_oversized_key(&mut self) {
        let ks = self.ks;
        self.put(
            &ks.counters,
            vec![b'k'; keys::MAX_KEY_BYTES + 1],
            Vec::new(),
        );
    }

    /// The highest seq stored under `id` in a seq-keyed keyspace (0 = none).
    pub(super) fn last_seq_in(
        &mut self,
        ks: &SingleWriterTxKeyspace,
        id: &str,
    ) -> StoreResult<u64> {
        let last = self
            .merged(ks, prefix_bounds(keys::prefix(id)), true)
            .next();
        match last {
            None => Ok(0),
            Some(Ok((key, _))) => {
                keys::seq_of(&key).ok_or_else(|| self.fail_with(corrupt("seq key", id)))
            }
            Some(Err(e)) => Err(self.io(e)),
        }
    }

    /// The records of `ks` within `bounds` as this drain sees them (stored ones merged with its
    /// own writes), ascending or, with `reverse`, descending.
    pub(super) fn merged<'a>(
        &'a self,
        ks: &'a SingleWriterTxKeyspace,
        bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        reverse: bool,
    ) -> Merged<'a> {
        let slot = self.ks.slot_of(ks);
        Merged::new(self.snapshot, ks, self.pending, slot, bounds, reverse)
    }

    pub(super) fn read_counter(&mut self, key: &[u8]) -> StoreResult<u64> {
        let ks = self.ks;
        match self.get(&ks.counters, key)? {
            None => Ok(1),
            Some(raw) => {
                keys::decode_u64(&raw).ok_or_else(|| self.fail_with(corrupt("counter", "length")))
            }
        }
    }

    /// Writes each state this drain changed, once.
    pub(super) fn write_dirty_states(&mut self) {
        let ks = self.ks;
        let dirty = std::mem::take(&mut self.caches.dirty_states);
        for key in dirty {
            if let Some(state) = self.caches.states.get(&key) {
                let value = state.encode_to_vec();
                self.put(&ks.states, key, value);
            }
        }
    }

    /// Writes the id counters if this drain moved them. They are written in the same atomic
    /// batch as the records that use the ids, so on disk the counter never lags an id in use.
    pub(super) fn write_counters(&mut self) {
        if !self.caches.counters_dirty {
            return;
        }
        let ks = self.ks;
        if let Some(next) = self.caches.next_msg_id {
            self.put(
                &ks.counters,
                NEXT_MSG_ID.to_vec(),
                next.to_be_bytes().to_vec(),
            );
        }
        if let Some(next) = self.caches.next_group_id {
            self.put(
                &ks.counters,
                NEXT_GROUP_ID.to_vec(),
                next.to_be_bytes().to_vec(),
            );
        }
        self.caches.counters_dirty = false;
    }
}
