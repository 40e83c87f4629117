//! Reads: inboxes, histories, conversation states and lists, delivery cursors.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use futures::{StreamExt as _, TryStreamExt as _};
use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::limits::{check_pair_key, check_part};
use timeline_store::{ConversationState, HistoryPage, InboxPage, StoreError, StoreResult};

use crate::entry::{StoredEntry, decode, decode_message};
use crate::schema::BUCKET;
use crate::{Inner, backend, big, bucket, unbig};

/// Conversations whose summaries a list reads at once.
const LIST_CONCURRENCY: usize = 32;

/// A user's state of one conversation as stored: everything else is derived when read (the
/// last seq and the last message time from the conversation, the unread count from the
/// user's own messages above the read marker).
#[derive(Clone, Debug)]
pub(crate) struct StateRow {
    pub conversation_id: String,
    pub kind: pb::ConversationKind,
    pub peer: String,
    pub read_seq: u64,
    /// The stored read marker as it is (`None` until one is set): what a compare-and-set of
    /// the marker compares with.
    pub read_seq_stored: Option<i64>,
    pub read_ms: u64,
    pub joined_ms: u64,
    pub peer_read_seq: u64,
    /// The stored peer marker as it is.
    pub peer_read_seq_stored: Option<i64>,
}

type StateColumns = (
    String,
    Option<i32>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn state_row(columns: StateColumns) -> StateRow {
    let (conversation_id, kind, peer, read_seq, read_ms, joined_ms, peer_read_seq) = columns;
    StateRow {
        conversation_id,
        kind: kind
            .and_then(|kind| pb::ConversationKind::try_from(kind).ok())
            .unwrap_or_default(),
        peer: peer.unwrap_or_default(),
        read_seq: unbig(read_seq),
        read_seq_stored: read_seq,
        read_ms: unbig(read_ms),
        joined_ms: unbig(joined_ms),
        peer_read_seq: unbig(peer_read_seq),
        peer_read_seq_stored: peer_read_seq,
    }
}

/// When a conversation last changed for a user: a message, their read marker or their join.
fn updated_ms(row: &StateRow, head: u64, last_ms: u64) -> u64 {
    let message_ms = if head > 0 { last_ms } else { 0 };
    row.read_ms.max(row.joined_ms).max(message_ms)
}

impl Inner {
    /// `user`'s stored state of a conversation.
    pub(crate) async fn state_row(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<StateRow>> {
        let row = self
            .session
            .execute_unpaged(&self.st.state_get, (user, conversation_id))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<StateColumns>()
            .map_err(backend)?;
        Ok(row.map(state_row))
    }

    /// The seqs of a conversation `user` deleted for themself.
    pub(crate) async fn hidden(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<BTreeSet<u64>> {
        let pager = self
            .session
            .execute_iter(self.st.hidden_of.clone(), (user, conversation_id))
            .await
            .map_err(backend)?;
        let seqs: Vec<(i64,)> = pager
            .rows_stream::<(i64,)>()
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        Ok(seqs.into_iter().map(|(seq,)| unbig(Some(seq))).collect())
    }

    /// Messages of a conversation with seqs in `lo..=hi`, in `direction`'s order (`Older`:
    /// newest first), at most `limit`, leaving out the seqs in `hidden`.
    pub(crate) async fn visible_messages(
        &self,
        conversation_id: &str,
        (lo, hi): (u64, u64),
        direction: pb::HistoryDirection,
        limit: usize,
        hidden: &BTreeSet<u64>,
    ) -> StoreResult<Vec<pb::Message>> {
        let lo = lo.max(1);
        let mut messages = Vec::new();
        if lo > hi || limit == 0 {
            return Ok(messages);
        }
        let buckets: Vec<u64> = match direction {
            pb::HistoryDirection::Older => (lo / BUCKET..=hi / BUCKET).rev().collect(),
            pb::HistoryDirection::Newer => (lo / BUCKET..=hi / BUCKET).collect(),
        };
        let statement = match direction {
            pb::HistoryDirection::Older => &self.st.messages_desc,
            pb::HistoryDirection::Newer => &self.st.messages_asc,
        };
        for b in buckets {
            let (first, last) = (lo.max(b * BUCKET), hi.min(b * BUCKET + BUCKET - 1));
            let skipped = hidden.range(first..=last).count();
            let wanted = (limit - messages.len() + skipped).min(BUCKET as usize) as i32;
            let rows = self
                .session
                .execute_unpaged(
                    statement,
                    (conversation_id, big(b), big(first), big(last), wanted),
                )
                .await
                .map_err(backend)?
                .into_rows_result()
                .map_err(backend)?;
            for row in rows.rows::<(i64, Option<Vec<u8>>)>().map_err(backend)? {
                let (seq, blob) = row.map_err(backend)?;
                if hidden.contains(&unbig(Some(seq))) {
                    continue;
                }
                if let Some(blob) = blob {
                    messages.push(decode_message(&blob)?);
                }
                if messages.len() == limit {
                    return Ok(messages);
                }
            }
        }
        Ok(messages)
    }

    /// See [`timeline_store::TimelineStore::read_history_as`].
    pub(crate) async fn read_history(
        &self,
        viewer: Option<&str>,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        check_part("id", conversation_id)?;
        if let Some(viewer) = viewer {
            check_pair_key(viewer, conversation_id)?;
        }
        let (last_seq, _) = self.settle_conversation(conversation_id).await?;
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
        let hidden = match viewer {
            Some(viewer) => self.hidden(viewer, conversation_id).await?,
            None => BTreeSet::new(),
        };
        let messages = self
            .visible_messages(
                conversation_id,
                (lo, hi),
                direction,
                limit as usize,
                &hidden,
            )
            .await?;
        Ok(HistoryPage { messages, last_seq })
    }

    /// The lowest seq retention left in `user`'s inbox.
    pub(crate) async fn oldest(&self, user: &str) -> StoreResult<u64> {
        let row = self
            .session
            .execute_unpaged(&self.st.oldest_get, (user,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(backend)?;
        Ok(unbig(row.and_then(|(oldest,)| oldest)).max(1))
    }

    /// Stored entries of `user`'s inbox with seqs in `from..=to`, ascending.
    pub(crate) async fn inbox_rows(
        &self,
        user: &str,
        from: u64,
        to: u64,
    ) -> StoreResult<Vec<(u64, StoredEntry)>> {
        let mut out = Vec::new();
        for b in from / BUCKET..=to / BUCKET {
            let (first, last) = (from.max(b * BUCKET), to.min(b * BUCKET + BUCKET - 1));
            let rows = self
                .session
                .execute_unpaged(
                    &self.st.inbox_range,
                    (user, big(b), big(first), big(last), BUCKET as i32),
                )
                .await
                .map_err(backend)?
                .into_rows_result()
                .map_err(backend)?;
            for row in rows
                .rows::<(i64, Option<Vec<u8>>, Option<i64>)>()
                .map_err(backend)?
            {
                let (seq, blob, _) = row.map_err(backend)?;
                let stored: StoredEntry = decode(&blob.unwrap_or_default(), "inbox entry")?;
                out.push((unbig(Some(seq)), stored));
            }
        }
        Ok(out)
    }

    /// See [`timeline_store::TimelineStore::read_inbox`].
    pub(crate) async fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> StoreResult<InboxPage> {
        check_part("id", user)?;
        let head = self.settle_inbox(user).await?;
        if head == 0 {
            return Ok(InboxPage {
                entries: Vec::new(),
                head_seq: 0,
                oldest_seq: 1,
            });
        }
        let mut oldest = self.oldest(user).await?;
        let to = if to_seq == 0 { head } else { to_seq.min(head) };
        let mut rows = Vec::new();
        for _ in 0..3 {
            let from = from_seq.max(1).max(oldest);
            if from > to || limit == 0 {
                rows.clear();
                break;
            }
            let last = to.min(from + u64::from(limit) - 1);
            rows = self.inbox_rows(user, from, last).await?;
            let contiguous = rows.len() as u64 == last - from + 1
                && rows.first().is_none_or(|(seq, _)| *seq == from);
            if contiguous {
                break;
            }
            // Retention removed entries meanwhile: read again above the new oldest.
            let now_oldest = self.oldest(user).await?;
            if now_oldest == oldest {
                return Err(StoreError::Backend(format!(
                    "the inbox of {user} is missing entries between {from} and {last}"
                )));
            }
            oldest = now_oldest;
        }

        // Messages are stored by reference: read them as they are now.
        let mut wanted: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for (_, stored) in &rows {
            if stored.event.is_none() {
                wanted
                    .entry(stored.conversation_id.as_str())
                    .or_default()
                    .insert(stored.conversation_seq);
            }
        }
        let mut messages: BTreeMap<(String, u64), pb::Message> = BTreeMap::new();
        let mut hidden: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (conversation_id, seqs) in wanted {
            self.settle_conversation(conversation_id).await?;
            hidden.insert(
                conversation_id.to_owned(),
                self.hidden(user, conversation_id).await?,
            );
            let mut by_bucket: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            for seq in seqs {
                by_bucket.entry(bucket(seq)).or_default().push(big(seq));
            }
            for (b, seqs) in by_bucket {
                let result = self
                    .session
                    .execute_unpaged(&self.st.messages_in, (conversation_id, b, seqs))
                    .await
                    .map_err(backend)?
                    .into_rows_result()
                    .map_err(backend)?;
                for row in result.rows::<(i64, Option<Vec<u8>>)>().map_err(backend)? {
                    let (seq, blob) = row.map_err(backend)?;
                    if let Some(blob) = blob {
                        messages.insert(
                            (conversation_id.to_owned(), unbig(Some(seq))),
                            decode_message(&blob)?,
                        );
                    }
                }
            }
        }
        let mut entries = Vec::with_capacity(rows.len());
        for (inbox_seq, stored) in rows {
            let body = match stored.event {
                Some(event) => event.body,
                None if hidden
                    .get(&stored.conversation_id)
                    .is_some_and(|seqs| seqs.contains(&stored.conversation_seq)) =>
                {
                    // Deleted for this user: the seq stays, with no body (SPEC §13.7).
                    None
                }
                None => {
                    let message = messages
                        .get(&(stored.conversation_id.clone(), stored.conversation_seq))
                        .ok_or_else(|| {
                            StoreError::Backend("an inbox entry names no message".into())
                        })?;
                    Some(Body::Message(message.clone()))
                }
            };
            entries.push(pb::InboxEntry { inbox_seq, body });
        }
        Ok(InboxPage {
            entries,
            head_seq: head,
            oldest_seq: oldest,
        })
    }

    /// The public view of a user's state: the last message (the newest the user has not
    /// deleted), the unread count (messages from others above the read marker).
    pub(crate) async fn public_state(
        &self,
        user: &str,
        row: &StateRow,
    ) -> StoreResult<ConversationState> {
        let (head, last_ms) = self.settle_conversation(&row.conversation_id).await?;
        let hidden = self.hidden(user, &row.conversation_id).await?;
        let last_message = self
            .visible_messages(
                &row.conversation_id,
                (1, head),
                pb::HistoryDirection::Older,
                1,
                &hidden,
            )
            .await?
            .pop();
        let read_seq = row.read_seq.min(head);
        let own = if head > read_seq {
            let count = self
                .session
                .execute_unpaged(
                    &self.st.own_count,
                    (user, &row.conversation_id, big(read_seq), big(head)),
                )
                .await
                .map_err(backend)?
                .into_rows_result()
                .map_err(backend)?
                .maybe_first_row::<(i64,)>()
                .map_err(backend)?;
            unbig(count.map(|(count,)| count))
        } else {
            0
        };
        Ok(ConversationState {
            conversation_id: row.conversation_id.clone(),
            kind: row.kind,
            peer: row.peer.clone(),
            last_message,
            last_seq: head,
            read_seq: row.read_seq,
            unread_count: (head - read_seq).saturating_sub(own),
            peer_read_seq: row.peer_read_seq,
            updated_ms: updated_ms(row, head, last_ms),
        })
    }

    /// See [`timeline_store::TimelineStore::conversation`].
    pub(crate) async fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationState>> {
        check_pair_key(user, conversation_id)?;
        match self.state_row(user, conversation_id).await? {
            Some(row) => Ok(Some(self.public_state(user, &row).await?)),
            None => Ok(None),
        }
    }

    /// See [`timeline_store::TimelineStore::conversations`]. Reads every state of the user and
    /// the summary of each conversation, then sorts: a cost linear in the number of the
    /// user's conversations (DESIGN.md).
    pub(crate) async fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<ConversationState>, String)> {
        check_part("user id", user)?;
        check_part("conversation cursor", cursor)?;
        let after = if cursor.is_empty() {
            None
        } else {
            Some(parse_cursor(cursor).ok_or_else(|| {
                StoreError::InvalidArgument("malformed conversation cursor".into())
            })?)
        };
        let pager = self
            .session
            .execute_iter(self.st.states_of.clone(), (user,))
            .await
            .map_err(backend)?;
        let rows: Vec<StateColumns> = pager
            .rows_stream::<StateColumns>()
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        let summaries = futures::stream::iter(rows.into_iter().map(state_row))
            .map(|row| async move {
                let (head, last_ms) = self.conversation_summary(&row.conversation_id).await?;
                Ok::<_, StoreError>((updated_ms(&row, head, last_ms), row))
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let mut listed: Vec<((u64, String), StateRow)> = summaries
            .into_iter()
            .map(|(updated, row)| ((!updated, row.conversation_id.clone()), row))
            .filter(|(order, _)| after.as_ref().is_none_or(|after| order > after))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let more = listed.len() > limit as usize;
        listed.truncate(limit as usize);
        let states = join_all(listed.iter().map(|(_, row)| self.public_state(user, row)))
            .await
            .into_iter()
            .collect::<StoreResult<Vec<_>>>()?;
        let next = match (more, listed.last()) {
            (true, Some(((inverted, id), _))) => format!("{inverted:016x}{id}"),
            _ => String::new(),
        };
        Ok((states, next))
    }

    /// See [`timeline_store::TimelineStore::record_delivery`]: the cursor is written with its
    /// own value as the write timestamp, so the highest value wins whatever the order.
    pub(crate) async fn record_delivery(
        &self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> StoreResult<()> {
        check_pair_key(user, device)?;
        if seq > 0 {
            self.session
                .execute_unpaged(&self.st.cursor_put, (big(seq), big(seq), user, device))
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// See [`timeline_store::TimelineStore::put_user_setting`].
    pub(crate) async fn put_user_setting(
        &self,
        user: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> StoreResult<()> {
        timeline_store::check_setting(key, value.as_deref())?;
        match value {
            Some(value) => self
                .session
                .execute_unpaged(&self.st.setting_put, (user, key, value))
                .await
                .map_err(backend)?,
            None => self
                .session
                .execute_unpaged(&self.st.setting_drop, (user, key))
                .await
                .map_err(backend)?,
        };
        Ok(())
    }

    /// See [`timeline_store::TimelineStore::user_settings`].
    pub(crate) async fn user_settings(
        &self,
        user: &str,
        prefix: &str,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let limit = timeline_store::MAX_SETTINGS_LISTED as i32;
        let rows = self
            .session
            .execute_unpaged(&self.st.settings_from, (user, prefix, limit))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?;
        let mut settings = Vec::new();
        for row in rows.rows::<(String, Vec<u8>)>().map_err(backend)? {
            let (name, value) = row.map_err(backend)?;
            // Names sort as strings: the first one without the prefix ends the run.
            if !name.starts_with(prefix) {
                break;
            }
            settings.push((name, value));
        }
        Ok(settings)
    }

    /// See [`timeline_store::TimelineStore::delivery_cursor`].
    pub(crate) async fn delivery_cursor(&self, user: &str, device: &str) -> StoreResult<u64> {
        check_pair_key(user, device)?;
        let row = self
            .session
            .execute_unpaged(&self.st.cursor_get, (user, device))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(backend)?;
        Ok(unbig(row.and_then(|(seq,)| seq)))
    }
}

/// A conversation-list cursor: the inverted `updated_ms` in 16 hex digits, then the id (the
/// other stores' format).
fn parse_cursor(cursor: &str) -> Option<(u64, String)> {
    let hex = cursor.get(..16)?;
    let conversation_id = cursor.get(16..)?;
    let inverted = u64::from_str_radix(hex, 16).ok()?;
    Some((inverted, conversation_id.to_owned()))
}
