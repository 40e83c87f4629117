//! [`TimelineStore`] for [`EmbeddedStore`]: each method copies its arguments and runs as one
//! writer job (mutations) or one snapshot read.

use im_protocol::pb;
use timeline_store::{
    CommittedMessage, ConversationState, Delivery, GroupChange, HistoryPage, InboxPage,
    InboxRetention, NewGroup, NewMessage, SessionStart, StoreError, StoreResult, TimelineStore,
};

use crate::EmbeddedStore;
use crate::writer::Staged;

/// Builds the per-message failure of a whole `commit_messages` call.
fn all_failed(count: usize) -> impl Fn(StoreError) -> Vec<StoreResult<CommittedMessage>> {
    move |error: StoreError| {
        let text = error.to_string();
        (0..count)
            .map(|_| {
                Err(match &error {
                    StoreError::Closed => StoreError::Closed,
                    StoreError::Full => StoreError::Full,
                    StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
                    StoreError::InvalidArgument(why) => StoreError::InvalidArgument(why.clone()),
                    _ => StoreError::Backend(text.clone()),
                })
            })
            .collect()
    }
}

impl TimelineStore for EmbeddedStore {
    async fn commit_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let count = messages.len();
        let failed = all_failed(count);
        let staged = self
            .mutate(
                move |ctx| Ok(ctx.commit_messages(&messages)),
                move |error| Err(failed(error)),
            )
            .await;
        match staged {
            Ok(staged) => staged
                .into_iter()
                .map(|one| one.map(Staged::into_committed))
                .collect(),
            Err(failed) => failed,
        }
    }

    async fn mark_read(
        &self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(ConversationState, Vec<Delivery>)> {
        let (user, conversation_id) = (user.to_owned(), conversation_id.to_owned());
        let receipt_to = receipt_to.map(str::to_owned);
        self.mutate(
            move |ctx| {
                ctx.mark_read(
                    &user,
                    &conversation_id,
                    read_seq,
                    receipt_to.as_deref(),
                    now_ms,
                )
            },
            Err,
        )
        .await
    }

    async fn recall(
        &self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(pb::RecallEvent, Vec<Delivery>)> {
        let (conversation_id, by_user) = (conversation_id.to_owned(), by_user.to_owned());
        let recipients = recipients.to_vec();
        self.mutate(
            move |ctx| {
                ctx.recall(
                    &conversation_id,
                    seq,
                    &by_user,
                    &recipients,
                    window_ms,
                    now_ms,
                )
            },
            Err,
        )
        .await
    }

    async fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> StoreResult<InboxPage> {
        let user = user.to_owned();
        self.read(move |r| r.read_inbox(&user, from_seq, to_seq, limit))
            .await
    }

    async fn read_history(
        &self,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        let conversation_id = conversation_id.to_owned();
        self.read(move |r| r.read_history(None, &conversation_id, anchor_seq, direction, limit))
            .await
    }

    async fn read_history_as(
        &self,
        viewer: &str,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        let (viewer, conversation_id) = (viewer.to_owned(), conversation_id.to_owned());
        self.read(move |r| {
            r.read_history(
                Some(&viewer),
                &conversation_id,
                anchor_seq,
                direction,
                limit,
            )
        })
        .await
    }

    async fn delete_messages(
        &self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        let (user, conversation_id, seqs) =
            (user.to_owned(), conversation_id.to_owned(), seqs.to_vec());
        self.mutate(
            move |ctx| ctx.delete_messages(&user, &conversation_id, &seqs, now_ms),
            Err,
        )
        .await
    }

    async fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<ConversationState>, String)> {
        let (user, cursor) = (user.to_owned(), cursor.to_owned());
        self.read(move |r| r.conversations(&user, limit, &cursor))
            .await
    }

    async fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationState>> {
        let (user, conversation_id) = (user.to_owned(), conversation_id.to_owned());
        self.read(move |r| r.conversation(&user, &conversation_id))
            .await
    }

    fn inbox_epoch(&self) -> u64 {
        self.inbox_epoch_value()
    }

    async fn sweep_inbox_retention(&self, now_ms: u64) -> StoreResult<u64> {
        let retention = self.inner.options.inbox_retention;
        if retention == InboxRetention::UNLIMITED {
            return Ok(0);
        }
        // Finding what is due reads a snapshot on the blocking pool; only the removals go
        // through the writer, a few hundred inboxes per job so that sends keep flowing.
        let due = self
            .read(move |r| r.retention_due(retention, now_ms))
            .await?;
        let mut removed = 0;
        for chunk in due.chunks(256) {
            let chunk = chunk.to_vec();
            removed += self
                .mutate(
                    move |ctx| {
                        let mut removed = 0;
                        for (user, last) in &chunk {
                            removed += ctx.trim_inbox_through(user, *last)?;
                        }
                        Ok(removed)
                    },
                    Err,
                )
                .await?;
        }
        Ok(removed)
    }

    async fn inbox_head(&self, user: &str) -> StoreResult<u64> {
        let user = user.to_owned();
        self.read(move |r| r.inbox_head(&user)).await
    }

    async fn record_delivery(&self, user: &str, device: &str, seq: u64) -> StoreResult<()> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.mutate(move |ctx| ctx.record_delivery(&user, &device, seq), Err)
            .await
    }

    async fn delivery_cursor(&self, user: &str, device: &str) -> StoreResult<u64> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.read(move |r| r.delivery_cursor(&user, &device)).await
    }

    async fn put_user_setting(
        &self,
        user: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> StoreResult<()> {
        timeline_store::check_setting(key, value.as_deref())?;
        let (user, key) = (user.to_owned(), key.to_owned());
        self.mutate(
            move |ctx| {
                ctx.put_user_setting(&user, &key, value.clone());
                Ok(())
            },
            Err,
        )
        .await
    }

    async fn user_settings(&self, user: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let (user, prefix) = (user.to_owned(), prefix.to_owned());
        self.read(move |r| r.user_settings(&user, &prefix)).await
    }

    async fn create_group(&self, group: NewGroup) -> StoreResult<GroupChange> {
        self.mutate(move |ctx| ctx.create_group(group.clone()), Err)
            .await
    }

    async fn add_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let (group_id, actor, members) = (group_id.to_owned(), actor.to_owned(), members.to_vec());
        self.mutate(
            move |ctx| ctx.add_members(&group_id, &actor, &members, max_members, now_ms),
            Err,
        )
        .await
    }

    async fn remove_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let (group_id, actor, members) = (group_id.to_owned(), actor.to_owned(), members.to_vec());
        self.mutate(
            move |ctx| ctx.remove_members(&group_id, &actor, &members, now_ms),
            Err,
        )
        .await
    }

    async fn join_group(
        &self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let (group_id, user) = (group_id.to_owned(), user.to_owned());
        self.mutate(
            move |ctx| ctx.join_group(&group_id, &user, max_members, now_ms),
            Err,
        )
        .await
    }

    async fn leave_group(
        &self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let (group_id, user) = (group_id.to_owned(), user.to_owned());
        self.mutate(move |ctx| ctx.leave_group(&group_id, &user, now_ms), Err)
            .await
    }

    async fn group(&self, group_id: &str) -> StoreResult<pb::GroupInfo> {
        let group_id = group_id.to_owned();
        self.read(move |r| r.group(&group_id)).await
    }

    async fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<pb::GroupMember>, String)> {
        let (group_id, cursor) = (group_id.to_owned(), cursor.to_owned());
        self.read(move |r| r.group_members(&group_id, limit, &cursor))
            .await
    }

    async fn is_member(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        let (group_id, user) = (group_id.to_owned(), user.to_owned());
        self.read(move |r| r.is_member(&group_id, &user)).await
    }

    async fn member_ids(&self, group_id: &str) -> StoreResult<Vec<String>> {
        let group_id = group_id.to_owned();
        self.read(move |r| r.member_ids(&group_id)).await
    }

    async fn set_group_fanout(
        &self,
        group_id: &str,
        read_fanout: bool,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let group_id = group_id.to_owned();
        self.mutate(
            move |ctx| ctx.set_group_fanout(&group_id, read_fanout, now_ms),
            Err,
        )
        .await
    }

    async fn read_fanout_groups(&self, user: &str) -> StoreResult<Vec<String>> {
        let user = user.to_owned();
        self.read(move |r| r.read_fanout_groups(&user)).await
    }

    async fn session_start(&self, user: &str, read_fanout: bool) -> StoreResult<SessionStart> {
        let user = user.to_owned();
        // One trip to the blocking pool per login instead of two.
        self.read(move |r| {
            Ok(SessionStart {
                inbox_head: r.inbox_head(&user)?,
                read_groups: if read_fanout {
                    r.read_fanout_groups(&user)?
                } else {
                    Vec::new()
                },
            })
        })
        .await
    }
}
