//! Cached heads: the last seq of each conversation and inbox, the id counters, and inbox
//! appends and trimming, which move them.

use im_protocol::pb::{self, inbox_entry::Body};
use prost::Message as _;
use timeline_store::{Delivery, StoreResult};

use super::primitives::prefix_bounds;
use super::{NEXT_GROUP_ID, NEXT_MSG_ID, TRIM_STEP, WriteCtx, corrupt};
use crate::keys;
use crate::records::InboxRecord;

impl WriteCtx<'_> {
    pub(super) fn conversation_head(&mut self, conversation_id: &str) -> StoreResult<u64> {
        if let Some(head) = self.caches.conversation_heads.get(conversation_id) {
            return Ok(*head);
        }
        let ks = self.ks;
        let head = self.last_seq_in(&ks.timelines, conversation_id)?;
        self.caches
            .conversation_heads
            .insert(conversation_id.to_owned(), head);
        Ok(head)
    }

    fn inbox_head(&mut self, user: &str) -> StoreResult<u64> {
        if let Some(head) = self.caches.inbox_heads.get(user) {
            return Ok(*head);
        }
        let ks = self.ks;
        let head = self.last_seq_in(&ks.inboxes, user)?;
        self.caches.inbox_heads.insert(user.to_owned(), head);
        Ok(head)
    }

    pub(super) fn next_server_msg_id(&mut self) -> StoreResult<u64> {
        let next = match self.caches.next_msg_id {
            Some(next) => next,
            None => self.read_counter(NEXT_MSG_ID)?,
        };
        self.caches.next_msg_id = Some(next + 1);
        self.caches.counters_dirty = true;
        Ok(next)
    }

    pub(super) fn next_group_number(&mut self) -> StoreResult<u64> {
        let next = match self.caches.next_group_id {
            Some(next) => next,
            None => self.read_counter(NEXT_GROUP_ID)?,
        };
        self.caches.next_group_id = Some(next + 1);
        self.caches.counters_dirty = true;
        Ok(next)
    }

    /// Appends an inbox record for `user` and returns its seq.
    pub(super) fn append_inbox(&mut self, user: &str, record: &InboxRecord) -> StoreResult<u64> {
        let seq = self.inbox_head(user)? + 1;
        let ks = self.ks;
        self.put(
            &ks.inboxes,
            keys::seq_key(user, seq),
            record.encode_to_vec(),
        );
        self.caches.inbox_heads.insert(user.to_owned(), seq);
        let max = self.retention.max_entries;
        if max > 0 && seq > max {
            self.trim_inbox_through(user, seq - max)?;
        }
        Ok(seq)
    }

    /// The lowest seq still stored in `user`'s inbox (head + 1 when it is empty).
    fn inbox_oldest(&mut self, user: &str) -> StoreResult<u64> {
        if let Some(oldest) = self.caches.inbox_oldest.get(user) {
            return Ok(*oldest);
        }
        let ks = self.ks;
        let first = self
            .merged(&ks.inboxes, prefix_bounds(keys::prefix(user)), false)
            .next();
        let oldest = match first {
            None => self.inbox_head(user)? + 1,
            Some(Ok((key, _))) => {
                keys::seq_of(&key).ok_or_else(|| self.fail_with(corrupt("seq key", user)))?
            }
            Some(Err(e)) => return Err(self.io(e)),
        };
        self.caches.inbox_oldest.insert(user.to_owned(), oldest);
        Ok(oldest)
    }

    /// Retention: removes `user`'s oldest inbox entries up to and including seq `last`, but
    /// never the newest entry (the head must stay derivable from the stored keys, or seqs would
    /// be handed out again), and at most [`TRIM_STEP`] per call so that one call never holds
    /// the writer for long; a longer backlog goes with later appends or sweeps. Returns how many
    /// entries were removed.
    pub(crate) fn trim_inbox_through(&mut self, user: &str, last: u64) -> StoreResult<u64> {
        let head = self.inbox_head(user)?;
        let last = last.min(head.saturating_sub(1));
        let oldest = self.inbox_oldest(user)?;
        if oldest > last {
            return Ok(0);
        }
        let end = last.min(oldest + TRIM_STEP - 1);
        let ks = self.ks;
        for seq in oldest..=end {
            self.delete(&ks.inboxes, keys::seq_key(user, seq));
        }
        self.caches.inbox_oldest.insert(user.to_owned(), end + 1);
        Ok(end - oldest + 1)
    }

    /// Appends a non-message entry to `user`'s inbox and returns the delivery to push.
    pub(super) fn append_event(
        &mut self,
        user: &str,
        body: Body,
        now_ms: u64,
    ) -> StoreResult<Delivery> {
        let mut entry = pb::InboxEntry {
            inbox_seq: 0,
            body: Some(body),
        };
        let record = InboxRecord {
            entry: Some(entry.clone()),
            appended_ms: now_ms,
            ..InboxRecord::default()
        };
        entry.inbox_seq = self.append_inbox(user, &record)?;
        Ok(Delivery {
            user: user.to_owned(),
            entry,
        })
    }
}
