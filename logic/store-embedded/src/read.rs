//! Reads, each from one snapshot so that a page is consistent (an inbox head and the entries
//! below it, a state and its last message).
//!
//! Why a reader never sees an effect that is not durable: the writer commits each drain as one
//! fjall batch with a `PersistMode` set, and fjall applies a batch to the memtables (where
//! readers find it) and publishes its seqno only after the journal write and its fsync have
//! returned (`fjall::batch::WriteBatch::commit`). Whatever a snapshot shows is therefore already
//! on disk, so a seq shown to a client can never be handed out again after a crash. A batch
//! whose fsync fails poisons the database and is never published.

use std::ops::Bound;

use fjall::{Readable, Snapshot};
use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::{
    ConversationState, HistoryPage, InboxPage, InboxRetention, StoreError, StoreResult,
};

use crate::engine::Keyspaces;
use crate::keys;
use crate::records::{GroupRecord, InboxRecord, MemberRecord, StateRecord};

fn io(e: fjall::Error) -> StoreError {
    StoreError::Backend(format!("storage engine: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt {what} record: {e}"))
}

fn decode<T: prost::Message + Default>(raw: &[u8], what: &str) -> StoreResult<T> {
    T::decode(raw).map_err(|e| corrupt(what, e))
}

/// The public view of a stored state.
pub(crate) fn public_state(
    state: StateRecord,
    last_message: Option<pb::Message>,
) -> ConversationState {
    ConversationState {
        kind: pb::ConversationKind::try_from(state.kind).unwrap_or_default(),
        conversation_id: state.conversation_id,
        peer: state.peer,
        last_message,
        last_seq: state.last_seq,
        read_seq: state.read_seq,
        unread_count: state.unread_count,
        peer_read_seq: state.peer_read_seq,
        updated_ms: state.updated_ms,
    }
}

/// Messages of `conversation_id` with seqs in `lo..=hi`, in `direction`'s order (`Older`:
/// newest first), at most `limit`, leaving out those `viewer` deleted for themself. The
/// timeline and the viewer's deleted seqs are walked side by side, so a page costs the same
/// however many messages the viewer deleted elsewhere in the conversation.
pub(crate) fn visible_messages<R: Readable>(
    reader: &R,
    ks: &Keyspaces,
    viewer: Option<&str>,
    conversation_id: &str,
    (lo, hi): (u64, u64),
    direction: pb::HistoryDirection,
    limit: usize,
) -> StoreResult<Vec<pb::Message>> {
    if lo > hi || limit == 0 {
        return Ok(Vec::new());
    }
    let older = direction == pb::HistoryDirection::Older;
    let range = keys::seq_key(conversation_id, lo)..=keys::seq_key(conversation_id, hi);
    let timeline = reader.range(&ks.timelines, range);
    let timeline: Box<dyn Iterator<Item = fjall::Guard>> = if older {
        Box::new(timeline.rev())
    } else {
        Box::new(timeline)
    };
    let hidden: Box<dyn Iterator<Item = fjall::Guard>> = match viewer {
        None => Box::new(std::iter::empty()),
        Some(viewer) => {
            let range = keys::hidden_key(viewer, conversation_id, lo)
                ..=keys::hidden_key(viewer, conversation_id, hi);
            let iter = reader.range(&ks.hidden, range);
            if older {
                Box::new(iter.rev())
            } else {
                Box::new(iter)
            }
        }
    };
    pick_visible(
        timeline.map(|guard| guard.into_inner()),
        hidden.map(|guard| guard.key()),
        conversation_id,
        older,
        limit,
    )
}

/// Walks a conversation's timeline records and the viewer's deleted-message keys side by side
/// (both in the same direction: `older` is descending), keeping at most `limit` messages the
/// viewer did not delete. Shared by the readers (over a snapshot) and the writer (over a
/// snapshot merged with its pending writes).
pub(crate) fn pick_visible(
    timeline: impl Iterator<Item = fjall::Result<(fjall::Slice, fjall::Slice)>>,
    mut hidden: impl Iterator<Item = fjall::Result<fjall::Slice>>,
    conversation_id: &str,
    older: bool,
    limit: usize,
) -> StoreResult<Vec<pb::Message>> {
    let mut messages = Vec::new();
    let mut next_hidden = || {
        hidden
            .next()
            .map(|key| {
                let key = key.map_err(io)?;
                keys::seq_of(&key).ok_or_else(|| corrupt("deleted message key", conversation_id))
            })
            .transpose()
    };
    let mut hidden_seq = next_hidden()?;
    for item in timeline {
        let (key, value) = item.map_err(io)?;
        let seq = keys::seq_of(&key).ok_or_else(|| corrupt("timeline key", conversation_id))?;
        // Move the deleted-seq cursor to this seq or past it, in the walk's direction.
        while let Some(h) = hidden_seq
            && (if older { h > seq } else { h < seq })
        {
            hidden_seq = next_hidden()?;
        }
        if hidden_seq == Some(seq) {
            continue;
        }
        messages.push(decode(&value, "message")?);
        if messages.len() == limit {
            break;
        }
    }
    Ok(messages)
}

/// The newest message at or below `last_seq` that `user` has not deleted for themself.
pub(crate) fn newest_visible<R: Readable>(
    reader: &R,
    ks: &Keyspaces,
    user: &str,
    conversation_id: &str,
    last_seq: u64,
) -> StoreResult<Option<pb::Message>> {
    Ok(visible_messages(
        reader,
        ks,
        Some(user),
        conversation_id,
        (1, last_seq),
        pb::HistoryDirection::Older,
        1,
    )?
    .pop())
}

/// Readers over one snapshot.
pub(crate) struct Reader<'a> {
    pub snapshot: Snapshot,
    pub ks: &'a Keyspaces,
}

impl Reader<'_> {
    fn get(
        &self,
        ks: &fjall::SingleWriterTxKeyspace,
        key: &[u8],
    ) -> StoreResult<Option<fjall::Slice>> {
        if key.len() > keys::MAX_KEY_BYTES {
            return Err(StoreError::InvalidArgument("a key is too long".into()));
        }
        self.snapshot.get(ks, key).map_err(io)
    }

    /// The lowest and highest seq stored under `id`, or `None` when there is none.
    fn seq_bounds(
        &self,
        ks: &fjall::SingleWriterTxKeyspace,
        id: &str,
    ) -> StoreResult<Option<(u64, u64)>> {
        keys::check_part("id", id)?;
        let mut iter = self.snapshot.prefix(ks, keys::prefix(id));
        let Some(first) = iter.next() else {
            return Ok(None);
        };
        let first = first.key().map_err(io)?;
        let last = match iter.next_back() {
            Some(guard) => guard.key().map_err(io)?,
            None => first.clone(),
        };
        match (keys::seq_of(&first), keys::seq_of(&last)) {
            (Some(lo), Some(hi)) => Ok(Some((lo, hi))),
            _ => Err(corrupt("seq key", id)),
        }
    }

    fn last_seq(&self, ks: &fjall::SingleWriterTxKeyspace, id: &str) -> StoreResult<u64> {
        keys::check_part("id", id)?;
        match self.snapshot.prefix(ks, keys::prefix(id)).next_back() {
            None => Ok(0),
            Some(guard) => {
                let key = guard.key().map_err(io)?;
                keys::seq_of(&key).ok_or_else(|| corrupt("seq key", id))
            }
        }
    }

    fn message(&self, conversation_id: &str, seq: u64) -> StoreResult<Option<pb::Message>> {
        self.get(&self.ks.timelines, &keys::seq_key(conversation_id, seq))?
            .map(|raw| decode(&raw, "message"))
            .transpose()
    }

    pub(crate) fn inbox_head(&self, user: &str) -> StoreResult<u64> {
        self.last_seq(&self.ks.inboxes, user)
    }

    pub(crate) fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> StoreResult<InboxPage> {
        let Some((oldest, head)) = self.seq_bounds(&self.ks.inboxes, user)? else {
            return Ok(InboxPage {
                entries: Vec::new(),
                head_seq: 0,
                oldest_seq: 1,
            });
        };
        let from = from_seq.max(1);
        let to = if to_seq == 0 { head } else { to_seq.min(head) };
        let mut entries = Vec::new();
        // Most users never delete a message: one seek spares them a lookup per entry.
        let deletes_some = self
            .snapshot
            .prefix(&self.ks.hidden, keys::prefix(user))
            .next()
            .is_some();
        if from <= to && limit > 0 {
            let range = keys::seq_key(user, from)..=keys::seq_key(user, to);
            for guard in self
                .snapshot
                .range(&self.ks.inboxes, range)
                .take(limit as usize)
            {
                let (key, value) = guard.into_inner().map_err(io)?;
                let inbox_seq = keys::seq_of(&key).ok_or_else(|| corrupt("inbox key", user))?;
                let record: InboxRecord = decode(&value, "inbox")?;
                let body = match record.entry {
                    Some(entry) => entry.body,
                    // A message the user deleted for themself keeps its seq but shows nothing
                    // (SPEC §13.7): the client skips an entry without a body.
                    None if deletes_some
                        && self
                            .snapshot
                            .contains_key(
                                &self.ks.hidden,
                                keys::hidden_key(
                                    user,
                                    &record.message_conversation_id,
                                    record.message_seq,
                                ),
                            )
                            .map_err(io)? =>
                    {
                        None
                    }
                    None => {
                        let message = self
                            .message(&record.message_conversation_id, record.message_seq)?
                            .ok_or_else(|| {
                                corrupt("inbox", "it names a message that does not exist")
                            })?;
                        Some(Body::Message(message))
                    }
                };
                entries.push(pb::InboxEntry { inbox_seq, body });
            }
        }
        Ok(InboxPage {
            entries,
            head_seq: head,
            oldest_seq: oldest,
        })
    }

    pub(crate) fn read_history(
        &self,
        viewer: Option<&str>,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        let last_seq = self.last_seq(&self.ks.timelines, conversation_id)?;
        let (lo, hi) = match direction {
            pb::HistoryDirection::Older => {
                let hi = if anchor_seq == 0 {
                    last_seq
                } else {
                    (anchor_seq - 1).min(last_seq)
                };
                (1, hi)
            }
            pb::HistoryDirection::Newer => (anchor_seq.saturating_add(1), last_seq),
        };
        let messages = visible_messages(
            &self.snapshot,
            self.ks,
            viewer,
            conversation_id,
            (lo, hi),
            direction,
            limit as usize,
        )?;
        Ok(HistoryPage { messages, last_seq })
    }

    fn state_of(&self, user: &str, conversation_id: &str) -> StoreResult<Option<StateRecord>> {
        self.get(&self.ks.states, &keys::pair_key(user, conversation_id))?
            .map(|raw| decode(&raw, "conversation state"))
            .transpose()
    }

    fn public(&self, user: &str, state: StateRecord) -> StoreResult<ConversationState> {
        let last_message = newest_visible(
            &self.snapshot,
            self.ks,
            user,
            &state.conversation_id,
            state.last_seq,
        )?;
        Ok(public_state(state, last_message))
    }

    pub(crate) fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationState>> {
        self.state_of(user, conversation_id)?
            .map(|state| self.public(user, state))
            .transpose()
    }

    pub(crate) fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<ConversationState>, String)> {
        // Ordered here rather than by an index: keeping a recency index cost four writes per
        // 1:1 message, while a user's conversations are few enough to sort on each list.
        keys::check_part("user id", user)?;
        keys::check_part("conversation cursor", cursor)?;
        let after = if cursor.is_empty() {
            None
        } else {
            Some(keys::recency_key_of_cursor(user, cursor).ok_or_else(|| {
                StoreError::InvalidArgument("malformed conversation cursor".into())
            })?)
        };
        let user_prefix = keys::prefix(user);
        let mut all = Vec::new();
        for guard in self.snapshot.prefix(&self.ks.states, &user_prefix) {
            let (_, value) = guard.into_inner().map_err(io)?;
            let state: StateRecord = decode(&value, "conversation state")?;
            // Groups the user left stay out even where an older version kept their state.
            if state.kind == pb::ConversationKind::Group as i32
                && self
                    .get(&self.ks.members, &keys::pair_key(&state.peer, user))?
                    .is_none()
            {
                continue;
            }
            let order = keys::recency_key(user, state.updated_ms, &state.conversation_id);
            if after.as_ref().is_none_or(|after| order > *after) {
                all.push((order, state));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let more = all.len() > limit as usize;
        let mut states = Vec::with_capacity(all.len().min(limit as usize));
        for (_, state) in all.into_iter().take(limit as usize) {
            states.push(self.public(user, state)?);
        }
        let next = match (more, states.last()) {
            (true, Some(last)) => keys::recency_cursor(last.updated_ms, &last.conversation_id),
            _ => String::new(),
        };
        Ok((states, next))
    }

    /// Retention: for each inbox with entries due for removal, its user and the last seq due
    /// (see [`timeline_store::TimelineStore::sweep_inbox_retention`]). One seek per inbox, plus
    /// a walk over its due entries (at most [`crate::writer::TRIM_STEP`] of them per sweep).
    pub(crate) fn retention_due(
        &self,
        retention: InboxRetention,
        now_ms: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        let mut due = Vec::new();
        let mut start: Vec<u8> = Vec::new();
        loop {
            let first = self
                .snapshot
                .range(&self.ks.inboxes, (Bound::Included(start), Bound::Unbounded))
                .next();
            let Some(first) = first else {
                return Ok(due);
            };
            let key = first.key().map_err(io)?;
            let user = key
                .iter()
                .position(|b| *b == 0)
                .and_then(|end| std::str::from_utf8(&key[..end]).ok())
                .ok_or_else(|| corrupt("inbox key", "no user id"))?
                .to_owned();
            let oldest = keys::seq_of(&key).ok_or_else(|| corrupt("inbox key", &user))?;
            let head = self.last_seq(&self.ks.inboxes, &user)?;
            let mut last = 0;
            if retention.max_entries > 0 && head - oldest + 1 > retention.max_entries {
                last = head - retention.max_entries;
            }
            if retention.max_age_ms > 0 && now_ms > retention.max_age_ms {
                let cutoff = now_ms - retention.max_age_ms;
                // Entries are appended in time order, so the due ones are a prefix; the newest
                // entry is never due. Records without a time (written before retention
                // existed) go only with a later entry that is due.
                let range = keys::seq_key(&user, oldest)..keys::seq_key(&user, head);
                for guard in self
                    .snapshot
                    .range(&self.ks.inboxes, range)
                    .take(crate::writer::TRIM_STEP as usize)
                {
                    let (key, value) = guard.into_inner().map_err(io)?;
                    let record: InboxRecord = decode(&value, "inbox")?;
                    if record.appended_ms == 0 {
                        continue;
                    }
                    if record.appended_ms >= cutoff {
                        break;
                    }
                    last = last.max(keys::seq_of(&key).ok_or_else(|| corrupt("inbox key", &user))?);
                }
            }
            if last >= oldest {
                due.push((user.clone(), last));
            }
            start = keys::prefix_end(&user);
        }
    }

    pub(crate) fn user_settings(
        &self,
        user: &str,
        prefix: &str,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let user_prefix = keys::prefix(user);
        let mut settings = Vec::new();
        for guard in self
            .snapshot
            .prefix(&self.ks.settings, keys::pair_key(user, prefix))
            .take(timeline_store::MAX_SETTINGS_LISTED)
        {
            let (key, value) = guard.into_inner().map_err(io)?;
            let name = keys::suffix(&key, &user_prefix)
                .and_then(|name| std::str::from_utf8(name).ok())
                .ok_or_else(|| corrupt("setting key", user))?;
            settings.push((name.to_owned(), value.to_vec()));
        }
        Ok(settings)
    }

    pub(crate) fn delivery_cursor(&self, user: &str, device: &str) -> StoreResult<u64> {
        match self.get(&self.ks.delivery, &keys::pair_key(user, device))? {
            None => Ok(0),
            Some(raw) => keys::decode_u64(&raw).ok_or_else(|| corrupt("delivery cursor", user)),
        }
    }

    pub(crate) fn group(&self, group_id: &str) -> StoreResult<pb::GroupInfo> {
        self.get(&self.ks.groups, group_id.as_bytes())?
            .map(|raw| decode::<GroupRecord>(&raw, "group"))
            .transpose()?
            .and_then(|record| record.info)
            .ok_or_else(|| StoreError::NotFound(format!("group {group_id}")))
    }

    pub(crate) fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<pb::GroupMember>, String)> {
        keys::check_part("group id", group_id)?;
        keys::check_part("member cursor", cursor)?;
        self.group(group_id)?;
        let start = if cursor.is_empty() {
            Bound::Included(keys::prefix(group_id))
        } else {
            Bound::Excluded(keys::pair_key(group_id, cursor))
        };
        let end = Bound::Excluded(keys::prefix_end(group_id));
        let mut members = Vec::new();
        let mut more = false;
        for guard in self.snapshot.range(&self.ks.members, (start, end)) {
            if members.len() == limit as usize {
                more = true;
                break;
            }
            let value = guard.value().map_err(io)?;
            if let Some(member) = decode::<MemberRecord>(&value, "member")?.member {
                members.push(member);
            }
        }
        let next = match (more, members.last()) {
            (true, Some(last)) => last.user_id.clone(),
            _ => String::new(),
        };
        Ok((members, next))
    }

    pub(crate) fn is_member(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        self.group(group_id)?;
        Ok(self
            .get(&self.ks.members, &keys::pair_key(group_id, user))?
            .is_some())
    }

    pub(crate) fn read_fanout_groups(&self, user: &str) -> StoreResult<Vec<String>> {
        crate::writer::check_id(user, "user id")?;
        let prefix = keys::prefix(user);
        let mut groups = Vec::new();
        for guard in self
            .snapshot
            .prefix(&self.ks.read_groups, &prefix)
            .take(timeline_store::MAX_READ_FANOUT_GROUPS_LISTED)
        {
            let key = guard.key().map_err(io)?;
            let group = keys::suffix(&key, &prefix)
                .and_then(|id| std::str::from_utf8(id).ok())
                .ok_or_else(|| corrupt("read group key", user))?;
            groups.push(group.to_owned());
        }
        Ok(groups)
    }

    pub(crate) fn member_ids(&self, group_id: &str) -> StoreResult<Vec<String>> {
        self.group(group_id)?;
        let prefix = keys::prefix(group_id);
        let mut ids = Vec::new();
        for guard in self.snapshot.prefix(&self.ks.members, &prefix) {
            let key = guard.key().map_err(io)?;
            let user = keys::suffix(&key, &prefix)
                .and_then(|id| std::str::from_utf8(id).ok())
                .ok_or_else(|| corrupt("member key", group_id))?;
            ids.push(user.to_owned());
        }
        Ok(ids)
    }
}
