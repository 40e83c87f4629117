//! Changes other than sends and groups: read markers and receipts, recalls, deletes for
//! oneself, inbox retention.

use std::collections::BTreeSet;

use futures::TryStreamExt as _;
use futures::future::join_all;
use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::limits::{
    check_id, check_pair_key, check_seq_key, content_digest, parse_conversation,
};
use timeline_store::{ConversationState, Delivery, InboxRetention, StoreError, StoreResult};

use crate::entry::encode;
use crate::schema::BUCKET;
use crate::{Inner, backend, big, bucket, lwt, unbig};

/// Most inbox entries one retention step removes from one inbox (the other stores' step).
const TRIM_STEP: u64 = 10_000;

/// Attempts at a compare-and-set of a read marker before giving up.
const CAS_ATTEMPTS: usize = 32;

impl Inner {
    /// Appends an event under `key` unless an entry with that key is there already.
    async fn append_event_once(
        &self,
        user: &str,
        key: &str,
        body: Body,
        now_ms: u64,
    ) -> StoreResult<Option<Delivery>> {
        if self.has_entry(user, key).await? {
            return Ok(None);
        }
        self.append_event(user, key, body, now_ms).await
    }

    /// See [`timeline_store::TimelineStore::mark_read`]. The marker moves by compare-and-set on
    /// the user's state; the marker event (key `r:<conversation>:<seq>`) and the receipt (key
    /// `c:<conversation>:<reader>:<seq>`) follow. A repeat of a call whose node died after the
    /// move and before the marker event appends both.
    pub(crate) async fn mark_read(
        &self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(ConversationState, Vec<Delivery>)> {
        check_pair_key(user, conversation_id)?;
        if let Some(peer) = receipt_to {
            check_id(peer, "receipt user id")?;
        }
        for _ in 0..CAS_ATTEMPTS {
            let Some(row) = self.state_row(user, conversation_id).await? else {
                return Err(StoreError::NotFound(format!(
                    "conversation {conversation_id} of {user}"
                )));
            };
            let (head, _) = self.conversation_summary(conversation_id).await?;
            let target = read_seq.min(head);
            let marker_key = format!("r:{conversation_id}:{target}");
            if target < row.read_seq
                || (target == row.read_seq
                    && (target == 0 || self.has_entry(user, &marker_key).await?))
            {
                return Ok((self.public_state(user, &row).await?, Vec::new()));
            }
            if target > row.read_seq {
                let outcome = lwt(self
                    .session
                    .execute_unpaged(
                        &self.st.state_read_cas,
                        (
                            big(target),
                            big(row.read_ms.max(now_ms)),
                            user,
                            conversation_id,
                            row.read_seq_stored,
                        ),
                    )
                    .await
                    .map_err(backend)?)?;
                if !outcome.applied {
                    continue;
                }
            }
            let row = self
                .state_row(user, conversation_id)
                .await?
                .ok_or_else(|| {
                    StoreError::NotFound(format!("conversation {conversation_id} of {user}"))
                })?;
            let state = self.public_state(user, &row).await?;
            let mut deliveries = Vec::new();
            deliveries.extend(
                self.append_event(
                    user,
                    &marker_key,
                    Body::ReadMarker(pb::ReadMarkerSync {
                        conversation_id: conversation_id.to_owned(),
                        read_seq: target,
                        unread_count: state.unread_count,
                    }),
                    now_ms,
                )
                .await?,
            );
            if let Some(peer) = receipt_to {
                self.raise_peer_marker(peer, conversation_id, target)
                    .await?;
                deliveries.extend(
                    self.append_event(
                        peer,
                        &format!("c:{conversation_id}:{user}:{target}"),
                        Body::ReadReceipt(pb::ReadReceipt {
                            conversation_id: conversation_id.to_owned(),
                            reader_user: user.to_owned(),
                            read_seq: target,
                            server_time_ms: now_ms,
                        }),
                        now_ms,
                    )
                    .await?,
                );
            }
            return Ok((state, deliveries));
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on the read marker of {user} in {conversation_id}"
        )))
    }

    /// Raises `peer`'s copy of the other side's read marker to `seq`, if `peer` has a state.
    async fn raise_peer_marker(
        &self,
        peer: &str,
        conversation_id: &str,
        seq: u64,
    ) -> StoreResult<()> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(row) = self.state_row(peer, conversation_id).await? else {
                return Ok(());
            };
            if seq <= row.peer_read_seq {
                return Ok(());
            }
            let outcome = lwt(self
                .session
                .execute_unpaged(
                    &self.st.state_peer_read_cas,
                    (big(seq), peer, conversation_id, row.peer_read_seq_stored),
                )
                .await
                .map_err(backend)?)?;
            if outcome.applied {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on the peer marker of {peer} in {conversation_id}"
        )))
    }

    /// See [`timeline_store::TimelineStore::recall`]. The message is recalled by
    /// compare-and-set; the events (key `x:<server msg id>`) follow, and a repeat appends
    /// whichever are missing.
    pub(crate) async fn recall(
        &self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(pb::RecallEvent, Vec<Delivery>)> {
        check_seq_key(conversation_id)?;
        self.settle_conversation(conversation_id).await?;
        let Some(mut message) = self.message(conversation_id, seq).await? else {
            return Err(StoreError::NotFound(format!(
                "message {seq} of {conversation_id}"
            )));
        };
        if message.sender_user != by_user {
            return Err(StoreError::NotSender);
        }
        let mut event = pb::RecallEvent {
            conversation_id: conversation_id.to_owned(),
            conversation_seq: seq,
            server_msg_id: message.server_msg_id,
            by_user: by_user.to_owned(),
            server_time_ms: now_ms,
        };
        if !message.recalled {
            if now_ms.saturating_sub(message.server_time_ms) > window_ms {
                return Err(StoreError::RecallWindowExpired);
            }
            for user in recipients {
                check_id(user, "recipient user id")?;
            }
            message.recalled = true;
            message.recalled_ms = now_ms;
            message.content = Vec::new();
            let outcome = lwt(self
                .session
                .execute_unpaged(
                    &self.st.message_recall,
                    (encode(&message), conversation_id, bucket(seq), big(seq)),
                )
                .await
                .map_err(backend)?)?;
            if !outcome.applied {
                // Recalled meanwhile by another call: answer as a repeat.
                message = self
                    .message(conversation_id, seq)
                    .await?
                    .ok_or_else(|| StoreError::Backend("a recalled message vanished".into()))?;
            }
        } else {
            for user in recipients {
                check_id(user, "recipient user id")?;
            }
        }
        event.server_time_ms = message.recalled_ms;
        let key = format!("x:{}", message.server_msg_id);
        let recipients: BTreeSet<&str> = recipients.iter().map(String::as_str).collect();
        let deliveries =
            join_all(recipients.into_iter().map(|user| {
                self.append_event_once(user, &key, Body::Recall(event.clone()), now_ms)
            }))
            .await
            .into_iter()
            .collect::<StoreResult<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        Ok((event, deliveries))
    }

    /// See [`timeline_store::TimelineStore::delete_messages`].
    pub(crate) async fn delete_messages(
        &self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        check_id(user, "user id")?;
        parse_conversation(conversation_id)?;
        let (head, _) = self.conversation_summary(conversation_id).await?;
        let wanted: BTreeSet<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| (1..=head).contains(seq))
            .collect();
        if wanted.is_empty() {
            return Ok((0, Vec::new()));
        }
        let hidden = self.hidden(user, conversation_id).await?;
        let newly_hidden: Vec<u64> = wanted.difference(&hidden).copied().collect();
        if newly_hidden.is_empty() {
            return Ok((0, Vec::new()));
        }
        join_all(newly_hidden.iter().map(|seq| {
            self.session
                .execute_unpaged(&self.st.hidden_put, (user, conversation_id, big(*seq)))
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
        let listed: Vec<u8> = newly_hidden
            .iter()
            .flat_map(|seq| seq.to_be_bytes())
            .collect();
        let key = format!(
            "d:{conversation_id}:{}:{:016x}",
            newly_hidden.len(),
            content_digest(&listed)
        );
        let count = newly_hidden.len() as u64;
        let delivery = self
            .append_event(
                user,
                &key,
                Body::Delete(pb::DeleteEvent {
                    conversation_id: conversation_id.to_owned(),
                    conversation_seqs: newly_hidden,
                }),
                now_ms,
            )
            .await?;
        Ok((count, delivery.into_iter().collect()))
    }

    // ----- retention -----

    /// After an append at `seq` (the newest entry): removes what the count limit no longer
    /// keeps.
    pub(crate) async fn enforce_count_limit(&self, user: &str, seq: u64) -> StoreResult<()> {
        let max = self.retention.max_entries;
        if max > 0 && seq > max {
            self.trim_through(user, seq - max, seq).await?;
        }
        Ok(())
    }

    /// Removes `user`'s oldest entries up to and including `last`, never the newest (`head`),
    /// at most [`TRIM_STEP`] of them. The lowest retained seq is written with itself as the
    /// write timestamp, so it only ever moves up.
    async fn trim_through(&self, user: &str, last: u64, head: u64) -> StoreResult<u64> {
        let last = last.min(head.saturating_sub(1));
        let oldest = self.oldest(user).await?;
        if oldest > last {
            return Ok(0);
        }
        let end = last.min(oldest + TRIM_STEP - 1);
        for b in oldest / BUCKET..=end / BUCKET {
            let (first, to) = (oldest.max(b * BUCKET), end.min(b * BUCKET + BUCKET - 1));
            self.session
                .execute_unpaged(&self.st.inbox_trim, (user, big(b), big(first), big(to)))
                .await
                .map_err(backend)?;
        }
        self.session
            .execute_unpaged(&self.st.oldest_put, (big(end + 1), big(end + 1), user))
            .await
            .map_err(backend)?;
        Ok(end - oldest + 1)
    }

    /// See [`timeline_store::TimelineStore::sweep_inbox_retention`]: walks every inbox (a
    /// token-ordered scan of the gates, paged by the driver).
    pub(crate) async fn sweep_inbox_retention(&self, now_ms: u64) -> StoreResult<u64> {
        let retention = self.retention;
        if retention == InboxRetention::UNLIMITED {
            return Ok(0);
        }
        let pager = self
            .session
            .execute_iter(self.st.inbox_heads.clone(), ())
            .await
            .map_err(backend)?;
        let mut heads = pager
            .rows_stream::<(String, Option<i64>)>()
            .map_err(backend)?;
        let mut removed = 0;
        while let Some((user, head)) = heads.try_next().await.map_err(backend)? {
            let head = unbig(head);
            if head == 0 {
                continue;
            }
            let oldest = self.oldest(&user).await?;
            let mut last = 0;
            if retention.max_entries > 0 && head - oldest + 1 > retention.max_entries {
                last = head - retention.max_entries;
            }
            if retention.max_age_ms > 0 && now_ms > retention.max_age_ms && head > oldest {
                let cutoff = now_ms - retention.max_age_ms;
                let upto = (head - 1).min(oldest + TRIM_STEP - 1);
                for (seq, stored) in self.inbox_rows(&user, oldest, upto).await? {
                    if stored.appended_ms == 0 {
                        continue;
                    }
                    if stored.appended_ms >= cutoff {
                        break;
                    }
                    last = last.max(seq);
                }
            }
            if last >= oldest {
                removed += self.trim_through(&user, last, head).await?;
            }
        }
        Ok(removed)
    }
}
