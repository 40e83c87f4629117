//! The drain's own writes, kept by the writer instead of in a fjall write transaction.
//!
//! Why: a fjall transaction keeps its write set in a skiplist memtable, so every record of a
//! drain was inserted into a skiplist twice (write set, then the real memtable at commit), and
//! every read in the drain searched the write set's skiplist first. Profiles of W1 put a sixth
//! of the writer thread in the write set alone. Here the drain's writes live in one ordered map
//! per keyspace (a B-tree: a few comparisons per node, cache-friendly), reads look there first
//! and then in a snapshot taken when the drain began, and the commit is one plain
//! [`fjall::WriteBatch`] holding each key once: the same journal record, the same atomicity and
//! the same fsync as the transaction's commit (which builds exactly such a batch).
//!
//! The writer thread is the only writer of the database (the inbox epoch is written before it
//! starts or while the server is stopped), so a snapshot taken at the start of a drain plus
//! the drain's own writes is the whole truth, as the transaction was.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use fjall::{Readable as _, SingleWriterTxKeyspace, Slice, Snapshot};

use crate::engine::Keyspaces;

/// A key's pending value: `None` is a removal.
type Entry = Option<Vec<u8>>;

/// The writes of one drain, per keyspace.
#[derive(Default)]
pub(crate) struct Pending {
    maps: Vec<BTreeMap<Vec<u8>, Entry>>,
}

impl Pending {
    pub(crate) fn new(keyspaces: usize) -> Pending {
        Pending {
            maps: (0..keyspaces).map(|_| BTreeMap::new()).collect(),
        }
    }

    /// Whether any keyspace has a pending write.
    pub(crate) fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty)
    }

    pub(crate) fn clear(&mut self) {
        for map in &mut self.maps {
            map.clear();
        }
    }

    pub(crate) fn put(&mut self, slot: usize, key: Vec<u8>, value: Vec<u8>) {
        self.maps[slot].insert(key, Some(value));
    }

    pub(crate) fn remove(&mut self, slot: usize, key: Vec<u8>) {
        self.maps[slot].insert(key, None);
    }

    /// `Some(entry)` when the drain wrote `key` (`Some(None)`: removed it), `None` when the
    /// snapshot decides.
    pub(crate) fn get(&self, slot: usize, key: &[u8]) -> Option<&Entry> {
        self.maps[slot].get(key)
    }

    fn range(
        &self,
        slot: usize,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> std::collections::btree_map::Range<'_, Vec<u8>, Entry> {
        self.maps[slot].range::<[u8], _>((lower, upper))
    }

    /// Moves every pending write into `batch`, keyspace by keyspace, each key once.
    pub(crate) fn drain_into(&mut self, keyspaces: &Keyspaces, batch: &mut fjall::OwnedWriteBatch) {
        for (slot, map) in self.maps.iter_mut().enumerate() {
            let keyspace = keyspaces.by_slot(slot).inner();
            for (key, value) in std::mem::take(map) {
                match value {
                    Some(value) => batch.insert(keyspace, key, value),
                    None => batch.remove(keyspace, key),
                }
            }
        }
    }
}

/// A key and value read through the drain.
pub(crate) type Item = (Slice, Slice);

type StoredIter<'a> = Box<dyn Iterator<Item = fjall::Result<Item>> + 'a>;
type PendingIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Entry)> + 'a>;

/// The snapshot's records in a key range merged with the drain's writes in it, in key order
/// (or reversed): a key the drain wrote shows its new value, a key it removed is skipped.
pub(crate) struct Merged<'a> {
    stored: Peekable<StoredIter<'a>>,
    pending: Peekable<PendingIter<'a>>,
    reverse: bool,
}

impl<'a> Merged<'a> {
    /// The records with keys in `lower..upper` (as bounds), `reverse` for descending order.
    pub(crate) fn new(
        snapshot: &'a Snapshot,
        keyspace: &'a SingleWriterTxKeyspace,
        pending: &'a Pending,
        slot: usize,
        (lower, upper): (Bound<Vec<u8>>, Bound<Vec<u8>>),
        reverse: bool,
    ) -> Merged<'a> {
        fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match b {
                Bound::Included(k) => Bound::Included(k.as_slice()),
                Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        // Neither range borrows its bounds beyond the call.
        let written = pending.range(slot, as_slice(&lower), as_slice(&upper));
        let stored = snapshot.range(keyspace, (lower, upper));
        let stored: StoredIter<'a> = if reverse {
            Box::new(stored.rev().map(|guard| guard.into_inner()))
        } else {
            Box::new(stored.map(|guard| guard.into_inner()))
        };
        let written: PendingIter<'a> = if reverse {
            Box::new(written.rev())
        } else {
            Box::new(written)
        };
        Merged {
            stored: stored.peekable(),
            pending: written.peekable(),
            reverse,
        }
    }
}

impl Iterator for Merged<'_> {
    type Item = fjall::Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let stored_key = match self.stored.peek() {
                Some(Ok((key, _))) => Some(key.as_ref()),
                Some(Err(_)) => return self.stored.next(),
                None => None,
            };
            let pending_key = self.pending.peek().map(|(key, _)| key.as_slice());
            let take_pending = match (stored_key, pending_key) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(p)) => {
                    if s == p {
                        // The drain's write replaces the stored record.
                        self.stored.next();
                        true
                    } else {
                        (p < s) != self.reverse
                    }
                }
            };
            if !take_pending {
                return self.stored.next();
            }
            let (key, entry) = self.pending.next()?;
            if let Some(value) = entry {
                return Some(Ok((
                    Slice::from(key.as_slice()),
                    Slice::from(value.as_slice()),
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::primitives::prefix_bounds;
    use fjall::SingleWriterTxDatabase;

    fn keys_of(merged: Merged<'_>) -> Vec<String> {
        merged
            .map(|item| {
                let (key, value) = item.expect("readable");
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&key),
                    String::from_utf8_lossy(&value)
                )
            })
            .collect()
    }

    #[test]
    fn a_drain_sees_stored_records_with_its_own_writes_laid_over_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = SingleWriterTxDatabase::builder(dir.path())
            .open()
            .expect("open");
        let ks = Keyspaces::open(&db).expect("keyspaces");
        let mut tx = db.write_tx();
        for (key, value) in [
            ("a/1", "s1"),
            ("a/3", "s3"),
            ("a/5", "s5"),
            ("b/1", "other"),
        ] {
            tx.insert(&ks.timelines, key, value);
        }
        tx.commit().expect("commit");

        let snapshot = db.read_tx();
        let slot = ks.slot_of(&ks.timelines);
        let mut pending = Pending::new(Keyspaces::COUNT);
        pending.put(slot, b"a/2".to_vec(), b"p2".to_vec()); // new, between stored keys
        pending.put(slot, b"a/3".to_vec(), b"p3".to_vec()); // replaces a stored record
        pending.remove(slot, b"a/5".to_vec()); // removes the last stored record
        pending.put(slot, b"a/6".to_vec(), b"p6".to_vec()); // after every stored key
        pending.remove(slot, b"a/9".to_vec()); // removes what was never stored
        // Another keyspace's writes stay out of this one.
        pending.put(ks.slot_of(&ks.inboxes), b"a/4".to_vec(), b"x".to_vec());

        let prefix = || prefix_bounds(b"a/".to_vec());
        let read = |snapshot: &Snapshot, pending: &Pending, bounds, reverse| {
            keys_of(Merged::new(
                snapshot,
                &ks.timelines,
                pending,
                slot,
                bounds,
                reverse,
            ))
        };
        assert_eq!(
            read(&snapshot, &pending, prefix(), false),
            ["a/1=s1", "a/2=p2", "a/3=p3", "a/6=p6"]
        );
        assert_eq!(
            read(&snapshot, &pending, prefix(), true),
            ["a/6=p6", "a/3=p3", "a/2=p2", "a/1=s1"]
        );
        let inner = (
            Bound::Included(b"a/2".to_vec()),
            Bound::Included(b"a/5".to_vec()),
        );
        assert_eq!(read(&snapshot, &pending, inner, true), ["a/3=p3", "a/2=p2"]);
        assert_eq!(pending.get(slot, b"a/5"), Some(&None));
        assert_eq!(pending.get(slot, b"a/1"), None);

        // The commit holds each pending key once; afterwards the store is what the drain saw.
        drop(snapshot);
        let mut batch = db.inner().batch();
        pending.drain_into(&ks, &mut batch);
        assert_eq!(batch.len(), 6);
        batch.commit().expect("commit");
        assert!(pending.is_empty());
        let snapshot = db.read_tx();
        assert_eq!(
            read(&snapshot, &pending, prefix(), false),
            ["a/1=s1", "a/2=p2", "a/3=p3", "a/6=p6"]
        );
    }

    #[test]
    fn a_prefix_range_ends_before_the_next_prefix_even_after_0xff_bytes() {
        assert_eq!(
            prefix_bounds(vec![b'a', 0xff]),
            (
                Bound::Included(vec![b'a', 0xff]),
                Bound::Excluded(vec![b'b'])
            )
        );
        assert_eq!(
            prefix_bounds(vec![0xff, 0xff]),
            (Bound::Included(vec![0xff, 0xff]), Bound::Unbounded)
        );
        assert_eq!(
            prefix_bounds(b"u1\0".to_vec()),
            (
                Bound::Included(b"u1\0".to_vec()),
                Bound::Excluded(b"u1\x01".to_vec())
            )
        );
    }
}
