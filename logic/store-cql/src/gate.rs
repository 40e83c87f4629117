//! Claiming seqs: appends to user inboxes and to conversation timelines.
//!
//! A seq is claimed by one lightweight transaction on the owner's gate partition that, at once,
//! moves the head from `h` to `h + 1` (only if it is still `h`), records what the new seq holds
//! (static map `pending`) and records the entry's key (only if that key was never appended).
//! So a seq is never handed out twice (the head condition), never holds two things (the entry
//! is written with the claim), and an entry is never appended twice (the key condition) — even
//! when two nodes run the same operation at once, or a node wakes from a pause and goes on
//! where it stopped. What follows the claim (the copy of the entry to its bucketed table, the
//! removal from `pending`) is repeatable, and readers repeat it for any entry still pending.

use std::collections::BTreeMap;

use im_protocol::pb;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use timeline_store::{Delivery, StoreError, StoreResult};

use futures::future::join_all;

use crate::entry::{StoredEntry, decode, decode_message, encode};
use crate::{Inner, Lwt, as_i64, backend, big, bucket, lwt, unbig};

/// Attempts at one claim before giving up as `Unavailable` (each failed attempt means another
/// writer claimed the seq first, so this bounds contention, not progress).
const CLAIM_ATTEMPTS: usize = 64;

/// Entries in the head caches before they are cleared.
const HEAD_CACHE_LIMIT: usize = 100_000;

impl Inner {
    // ----- inboxes -----

    /// A user's inbox head and the entries claimed but not yet copied.
    pub(crate) async fn inbox_statics(
        &self,
        user: &str,
    ) -> StoreResult<(u64, BTreeMap<u64, Vec<u8>>)> {
        let row = self
            .session
            .execute_unpaged(&self.st.inbox_gate_statics, (user,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>, Option<BTreeMap<i64, Vec<u8>>>)>()
            .map_err(backend)?;
        let Some((head, pending)) = row else {
            return Ok((0, BTreeMap::new()));
        };
        let pending = pending
            .unwrap_or_default()
            .into_iter()
            .map(|(seq, blob)| (unbig(Some(seq)), blob))
            .collect();
        Ok((unbig(head), pending))
    }

    /// Copies the user's pending entries to `inbox` and returns the head: after this, every
    /// seq up to the head is in `inbox` (or was removed by retention).
    pub(crate) async fn settle_inbox(&self, user: &str) -> StoreResult<u64> {
        let (head, pending) = self.inbox_statics(user).await?;
        for (seq, blob) in pending {
            self.copy_inbox_entry(user, seq, &blob).await?;
        }
        Ok(head)
    }

    async fn copy_inbox_entry(&self, user: &str, seq: u64, blob: &[u8]) -> StoreResult<()> {
        let stored: StoredEntry = decode(blob, "inbox entry")?;
        self.session
            .execute_unpaged(
                &self.st.inbox_put,
                (user, bucket(seq), big(seq), blob, big(stored.appended_ms)),
            )
            .await
            .map_err(backend)?;
        self.session
            .execute_unpaged(&self.st.inbox_pending_done, (big(seq), user))
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn cached_head(&self, key: &str) -> Option<u64> {
        self.heads.lock().ok()?.get(key).copied()
    }

    fn cache_head(&self, key: &str, head: u64) {
        if let Ok(mut heads) = self.heads.lock() {
            if heads.len() >= HEAD_CACHE_LIMIT {
                heads.clear();
            }
            heads.insert(key.to_owned(), head);
        }
    }

    /// Appends `stored` to `user`'s inbox under `key` (the idempotency key of the entry: the
    /// same key is appended at most once). Returns the entry's seq and whether this call
    /// appended it (false: it was there already).
    pub(crate) async fn append(
        &self,
        user: &str,
        key: &str,
        stored: &StoredEntry,
    ) -> StoreResult<(u64, bool)> {
        let blob = encode(stored);
        let mut head = match self.cached_head(user) {
            Some(head) => head,
            None => self.inbox_statics(user).await?.0,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let seq = head + 1;
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.append_statement(self.st.inbox_claim_head.clone());
            batch.append_statement(self.st.inbox_claim_key.clone());
            let expected = (head > 0).then(|| big(head));
            let result = self
                .session
                .batch(
                    &batch,
                    (
                        (big(seq), big(seq), &blob, user, expected),
                        (user, key, big(seq)),
                    ),
                )
                .await;
            let outcome = match result {
                Ok(result) => lwt(result)?,
                Err(error) => {
                    // The outcome is unknown (a timeout, a lost connection): a serial read
                    // finishes any transaction in flight and tells whether the key landed.
                    tracing::debug!(user, key, %error, "inbox claim outcome unknown");
                    if let Some(seq) = self.appended_seq(user, key).await? {
                        self.settle_inbox(user).await?;
                        return Ok((seq, true));
                    }
                    head = self.inbox_statics(user).await?.0;
                    continue;
                }
            };
            if outcome.applied {
                self.cache_head(user, seq);
                if let Err(error) = self.copy_inbox_entry(user, seq, &blob).await {
                    // The entry is durable in the gate; the next reader copies it.
                    tracing::warn!(user, seq, %error, "inbox copy left to readers");
                }
                self.enforce_count_limit(user, seq).await?;
                return Ok((seq, true));
            }
            if let Some(seq) = key_seq(&outcome, "key", &CqlValue::Text(key.to_owned())) {
                self.settle_inbox(user).await?;
                return Ok((seq, false));
            }
            head = unbig(outcome.value("head").and_then(as_i64));
            self.cache_head(user, head);
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on the inbox of {user}"
        )))
    }

    /// The seq an entry key was appended at, read at serial consistency.
    async fn appended_seq(&self, user: &str, key: &str) -> StoreResult<Option<u64>> {
        let mut statement = self.st.inbox_gate_key.clone();
        statement.set_consistency(Consistency::Serial);
        let row = self
            .session
            .execute_unpaged(&statement, (user, key))
            .await
            .map_err(|e| StoreError::Unavailable(format!("CQL: {e}")))?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(backend)?;
        Ok(row.and_then(|(seq,)| seq).map(|seq| unbig(Some(seq))))
    }

    /// Whether `user`'s inbox holds an entry under `key`.
    pub(crate) async fn has_entry(&self, user: &str, key: &str) -> StoreResult<bool> {
        let row = self
            .session
            .execute_unpaged(&self.st.inbox_gate_key, (user, key))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(backend)?;
        Ok(row.is_some_and(|(seq,)| seq.is_some()))
    }

    /// Appends an event under `key`; the delivery to push if this call appended it.
    pub(crate) async fn append_event(
        &self,
        user: &str,
        key: &str,
        body: pb::inbox_entry::Body,
        now_ms: u64,
    ) -> StoreResult<Option<Delivery>> {
        let stored = StoredEntry {
            appended_ms: now_ms,
            conversation_id: String::new(),
            conversation_seq: 0,
            event: Some(pb::InboxEntry {
                inbox_seq: 0,
                body: Some(body.clone()),
            }),
        };
        let (inbox_seq, fresh) = self.append(user, key, &stored).await?;
        Ok(fresh.then(|| Delivery {
            user: user.to_owned(),
            entry: pb::InboxEntry {
                inbox_seq,
                body: Some(body),
            },
        }))
    }

    // ----- conversations -----

    /// A conversation's head, its last message's time, and the messages claimed but not yet
    /// copied.
    async fn conversation_statics(
        &self,
        conversation_id: &str,
    ) -> StoreResult<(u64, u64, BTreeMap<u64, Vec<u8>>)> {
        let row = self
            .session
            .execute_unpaged(&self.st.conv_gate_statics, (conversation_id,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>, Option<i64>, Option<BTreeMap<i64, Vec<u8>>>)>()
            .map_err(backend)?;
        let Some((head, last_ms, pending)) = row else {
            return Ok((0, 0, BTreeMap::new()));
        };
        let pending = pending
            .unwrap_or_default()
            .into_iter()
            .map(|(seq, blob)| (unbig(Some(seq)), blob))
            .collect();
        Ok((unbig(head), unbig(last_ms), pending))
    }

    /// A conversation's head and last message time, without settling it.
    pub(crate) async fn conversation_summary(
        &self,
        conversation_id: &str,
    ) -> StoreResult<(u64, u64)> {
        let row = self
            .session
            .execute_unpaged(&self.st.conv_gate_summary, (conversation_id,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>, Option<i64>)>()
            .map_err(backend)?;
        Ok(row.map_or((0, 0), |(head, last_ms)| (unbig(head), unbig(last_ms))))
    }

    /// Copies a conversation's pending messages to `messages`; returns its head and last
    /// message time.
    pub(crate) async fn settle_conversation(
        &self,
        conversation_id: &str,
    ) -> StoreResult<(u64, u64)> {
        let (head, last_ms, pending) = self.conversation_statics(conversation_id).await?;
        for (seq, blob) in pending {
            self.copy_message(conversation_id, seq, &blob).await?;
        }
        Ok((head, last_ms))
    }

    async fn copy_message(&self, conversation_id: &str, seq: u64, blob: &[u8]) -> StoreResult<()> {
        // Written at timestamp 1: a recall (written at the present time) always wins over a
        // copy, however late the copy comes.
        self.session
            .execute_unpaged(
                &self.st.message_put,
                (conversation_id, bucket(seq), big(seq), blob),
            )
            .await
            .map_err(backend)?;
        self.session
            .execute_unpaged(&self.st.conv_pending_done, (big(seq), conversation_id))
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Gives message `server_msg_id` the conversation's next seq (or finds the seq it was given
    /// before). `build` makes the message for a seq. Returns the stored message and whether
    /// this call claimed it.
    pub(crate) async fn claim_message(
        &self,
        conversation_id: &str,
        server_msg_id: u64,
        now_ms: u64,
        build: impl Fn(u64) -> pb::Message,
    ) -> StoreResult<(pb::Message, bool)> {
        let (mut head, mut last_ms) = match self.conv_cached(conversation_id) {
            Some(known) => known,
            None => self.conversation_summary(conversation_id).await?,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let seq = head + 1;
            let message = build(seq);
            let blob = encode(&message);
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.append_statement(self.st.conv_claim_head.clone());
            batch.append_statement(self.st.conv_claim_key.clone());
            let expected = (head > 0).then(|| big(head));
            let result = self
                .session
                .batch(
                    &batch,
                    (
                        (
                            big(seq),
                            big(last_ms.max(now_ms)),
                            big(seq),
                            &blob,
                            conversation_id,
                            expected,
                        ),
                        (conversation_id, big(server_msg_id), big(seq)),
                    ),
                )
                .await;
            let outcome = match result {
                Ok(result) => lwt(result)?,
                Err(error) => {
                    tracing::debug!(conversation_id, %error, "message claim outcome unknown");
                    let mut statement = self.st.conv_gate_statics.clone();
                    statement.set_consistency(Consistency::Serial);
                    // A serial read of the partition completes a transaction in flight; the
                    // retry then either finds the key or claims anew.
                    self.session
                        .execute_unpaged(&statement, (conversation_id,))
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("CQL: {e}")))?;
                    (head, last_ms) = self.conversation_summary(conversation_id).await?;
                    continue;
                }
            };
            if outcome.applied {
                self.conv_cache(conversation_id, seq, last_ms.max(now_ms));
                if let Err(error) = self.copy_message(conversation_id, seq, &blob).await {
                    tracing::warn!(conversation_id, seq, %error, "message copy left to readers");
                }
                return Ok((message, true));
            }
            if let Some(seq) = key_seq(
                &outcome,
                "server_msg_id",
                &CqlValue::BigInt(big(server_msg_id)),
            ) {
                self.settle_conversation(conversation_id).await?;
                let message = self
                    .message(conversation_id, seq)
                    .await?
                    .ok_or_else(|| StoreError::Backend("a claimed message is missing".into()))?;
                return Ok((message, false));
            }
            head = unbig(outcome.value("head").and_then(as_i64));
            last_ms = unbig(outcome.value("last_ms").and_then(as_i64));
            self.conv_cache(conversation_id, head, last_ms);
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on conversation {conversation_id}"
        )))
    }

    fn conv_cached(&self, conversation_id: &str) -> Option<(u64, u64)> {
        self.conv_heads.lock().ok()?.get(conversation_id).copied()
    }

    fn conv_cache(&self, conversation_id: &str, head: u64, last_ms: u64) {
        if let Ok(mut heads) = self.conv_heads.lock() {
            if heads.len() >= HEAD_CACHE_LIMIT {
                heads.clear();
            }
            heads.insert(conversation_id.to_owned(), (head, last_ms));
        }
    }

    /// Message `seq` of a conversation as stored now (settle the conversation first when the
    /// message may be pending).
    pub(crate) async fn message(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> StoreResult<Option<pb::Message>> {
        let row = self
            .session
            .execute_unpaged(
                &self.st.message_get,
                (conversation_id, bucket(seq), big(seq)),
            )
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(backend)?;
        match row.and_then(|(blob,)| blob) {
            Some(blob) => Ok(Some(decode_message(&blob)?)),
            None => Ok(None),
        }
    }
}

impl Inner {
    /// Appends several entries to `user`'s inbox, in order, with one transaction (the batch
    /// form of [`Inner::append`]: the head moves by their number, every key must be new).
    /// When some key was appended before (a repeated operation), falls back to appending
    /// one by one, which finds the seqs those keys have.
    pub(crate) async fn append_many(
        &self,
        user: &str,
        items: &[(String, StoredEntry)],
    ) -> StoreResult<Vec<(u64, bool)>> {
        if items.len() <= 1 {
            let mut out = Vec::new();
            for (key, stored) in items {
                out.push(self.append(user, key, stored).await?);
            }
            return Ok(out);
        }
        let blobs: Vec<Vec<u8>> = items.iter().map(|(_, stored)| encode(stored)).collect();
        let count = items.len() as u64;
        let mut head = match self.cached_head(user) {
            Some(head) => head,
            None => self.inbox_statics(user).await?.0,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let pending: Vec<(CqlValue, CqlValue)> = blobs
                .iter()
                .enumerate()
                .map(|(i, blob)| {
                    (
                        CqlValue::BigInt(big(head + 1 + i as u64)),
                        CqlValue::Blob(blob.clone()),
                    )
                })
                .collect();
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
            batch.append_statement(self.st.inbox_claim_head_many.clone());
            values.push(vec![
                Some(CqlValue::BigInt(big(head + count))),
                Some(CqlValue::Map(pending)),
                Some(CqlValue::Text(user.to_owned())),
                (head > 0).then(|| CqlValue::BigInt(big(head))),
            ]);
            for (i, (key, _)) in items.iter().enumerate() {
                batch.append_statement(self.st.inbox_claim_key.clone());
                values.push(vec![
                    Some(CqlValue::Text(user.to_owned())),
                    Some(CqlValue::Text(key.clone())),
                    Some(CqlValue::BigInt(big(head + 1 + i as u64))),
                ]);
            }
            let outcome = match self.session.batch(&batch, values).await {
                Ok(result) => lwt(result)?,
                // Outcome unknown: one by one finds whatever landed.
                Err(_) => return self.append_each(user, items).await,
            };
            if outcome.applied {
                let last = head + count;
                self.cache_head(user, last);
                let copies = blobs.iter().enumerate().map(|(i, blob)| {
                    let seq = head + 1 + i as u64;
                    let stored = &items[i].1;
                    self.session.execute_unpaged(
                        &self.st.inbox_put,
                        (user, bucket(seq), big(seq), blob, big(stored.appended_ms)),
                    )
                });
                let copied = join_all(copies).await.into_iter().all(|r| r.is_ok());
                if copied {
                    let seqs: Vec<i64> = (head + 1..=last).map(big).collect();
                    if let Err(error) = self
                        .session
                        .execute_unpaged(&self.st.inbox_pending_done_many, (seqs, user))
                        .await
                    {
                        tracing::warn!(user, %error, "inbox pending entries left to readers");
                    }
                }
                self.enforce_count_limit(user, last).await?;
                return Ok((head + 1..=last).map(|seq| (seq, true)).collect());
            }
            let ours: Vec<CqlValue> = items
                .iter()
                .map(|(key, _)| CqlValue::Text(key.clone()))
                .collect();
            if outcome
                .rows
                .iter()
                .any(|row| row.get("key").is_some_and(|key| ours.contains(key)))
            {
                return self.append_each(user, items).await;
            }
            head = unbig(outcome.value("head").and_then(as_i64));
            self.cache_head(user, head);
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on the inbox of {user}"
        )))
    }

    async fn append_each(
        &self,
        user: &str,
        items: &[(String, StoredEntry)],
    ) -> StoreResult<Vec<(u64, bool)>> {
        let mut out = Vec::with_capacity(items.len());
        for (key, stored) in items {
            out.push(self.append(user, key, stored).await?);
        }
        Ok(out)
    }

    /// Gives several messages of one conversation its next seqs, in order, with one
    /// transaction (the batch form of [`Inner::claim_message`]; `templates` carry everything
    /// but the seq, and distinct server msg ids). Falls back to one by one when some message
    /// was claimed before.
    pub(crate) async fn claim_messages(
        &self,
        conversation_id: &str,
        templates: Vec<pb::Message>,
        now_ms: u64,
    ) -> StoreResult<Vec<pb::Message>> {
        if templates.len() <= 1 {
            return self.claim_each(conversation_id, templates, now_ms).await;
        }
        let count = templates.len() as u64;
        let (mut head, mut last_ms) = match self.conv_cached(conversation_id) {
            Some(known) => known,
            None => self.conversation_summary(conversation_id).await?,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let messages: Vec<pb::Message> = templates
                .iter()
                .enumerate()
                .map(|(i, template)| {
                    let mut message = template.clone();
                    message.conversation_seq = head + 1 + i as u64;
                    message
                })
                .collect();
            let blobs: Vec<Vec<u8>> = messages.iter().map(encode).collect();
            let pending: Vec<(CqlValue, CqlValue)> = messages
                .iter()
                .zip(&blobs)
                .map(|(m, blob)| {
                    (
                        CqlValue::BigInt(big(m.conversation_seq)),
                        CqlValue::Blob(blob.clone()),
                    )
                })
                .collect();
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
            batch.append_statement(self.st.conv_claim_head_many.clone());
            values.push(vec![
                Some(CqlValue::BigInt(big(head + count))),
                Some(CqlValue::BigInt(big(last_ms.max(now_ms)))),
                Some(CqlValue::Map(pending)),
                Some(CqlValue::Text(conversation_id.to_owned())),
                (head > 0).then(|| CqlValue::BigInt(big(head))),
            ]);
            for message in &messages {
                batch.append_statement(self.st.conv_claim_key.clone());
                values.push(vec![
                    Some(CqlValue::Text(conversation_id.to_owned())),
                    Some(CqlValue::BigInt(big(message.server_msg_id))),
                    Some(CqlValue::BigInt(big(message.conversation_seq))),
                ]);
            }
            let outcome = match self.session.batch(&batch, values).await {
                Ok(result) => lwt(result)?,
                Err(_) => return self.claim_each(conversation_id, templates, now_ms).await,
            };
            if outcome.applied {
                let last = head + count;
                self.conv_cache(conversation_id, last, last_ms.max(now_ms));
                let copies = messages.iter().zip(&blobs).map(|(m, blob)| {
                    let seq = m.conversation_seq;
                    self.session.execute_unpaged(
                        &self.st.message_put,
                        (conversation_id, bucket(seq), big(seq), blob),
                    )
                });
                if join_all(copies).await.into_iter().all(|r| r.is_ok()) {
                    let seqs: Vec<i64> = (head + 1..=last).map(big).collect();
                    if let Err(error) = self
                        .session
                        .execute_unpaged(&self.st.conv_pending_done_many, (seqs, conversation_id))
                        .await
                    {
                        tracing::warn!(conversation_id, %error, "pending messages left to readers");
                    }
                }
                return Ok(messages);
            }
            let ours: Vec<CqlValue> = templates
                .iter()
                .map(|m| CqlValue::BigInt(big(m.server_msg_id)))
                .collect();
            if outcome
                .rows
                .iter()
                .any(|row| row.get("server_msg_id").is_some_and(|id| ours.contains(id)))
            {
                return self.claim_each(conversation_id, templates, now_ms).await;
            }
            head = unbig(outcome.value("head").and_then(as_i64));
            last_ms = unbig(outcome.value("last_ms").and_then(as_i64));
            self.conv_cache(conversation_id, head, last_ms);
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on conversation {conversation_id}"
        )))
    }

    async fn claim_each(
        &self,
        conversation_id: &str,
        templates: Vec<pb::Message>,
        now_ms: u64,
    ) -> StoreResult<Vec<pb::Message>> {
        let mut out = Vec::with_capacity(templates.len());
        for template in templates {
            let (message, _) = self
                .claim_message(conversation_id, template.server_msg_id, now_ms, |seq| {
                    let mut message = template.clone();
                    message.conversation_seq = seq;
                    message
                })
                .await?;
            out.push(message);
        }
        Ok(out)
    }
}

/// The seq of the key row in a failed claim's answer, if the key was appended before.
fn key_seq(outcome: &Lwt, key_column: &str, key: &CqlValue) -> Option<u64> {
    outcome
        .rows
        .iter()
        .find(|row| row.get(key_column) == Some(key))
        .and_then(|row| row.get("seq"))
        .and_then(as_i64)
        .map(|seq| unbig(Some(seq)))
}
