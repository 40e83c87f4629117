//! Sends: the idempotency record, the conversation seq, the fan-out to inboxes.
//!
//! A send runs as a sequence of steps, each repeatable (DESIGN.md): claim `(sender,
//! client_msg_id)` in `sends` with a fresh server msg id; claim the conversation's next seq for
//! that server msg id; record the sender's own message (for unread counts); append the message
//! to every recipient's inbox under key `m:<server msg id>`; mark the send done. A resend of a
//! send that is done is a duplicate; a resend of one that is not (its first attempt died, or
//! is paused somewhere) runs the remaining steps with the first attempt's ids and answers as
//! the first attempt would have.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use futures::{StreamExt as _, TryStreamExt as _};
use im_protocol::ids::ConversationRef;
use im_protocol::pb;
use scylla::value::CqlValue;
use timeline_store::limits::{check_id, check_part, content_digest, parse_conversation};
use timeline_store::{CommittedMessage, Delivery, NewMessage, StoreError, StoreResult};

use crate::entry::StoredEntry;

/// What a send's idempotency record says to do.
enum SendClaim {
    /// Store the message under this server msg id (new, or a first attempt that did not
    /// finish).
    Store(u64),
    /// It was stored and acknowledged before: the original.
    Done(Box<CommittedMessage>),
}

/// A copy of a store error for each message of a run that failed together.
fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::ClientMsgIdConflict(id) => StoreError::ClientMsgIdConflict(id.clone()),
        StoreError::NotFound(what) => StoreError::NotFound(what.clone()),
        StoreError::Forbidden(why) => StoreError::Forbidden(why.clone()),
        StoreError::NotSender => StoreError::NotSender,
        StoreError::RecallWindowExpired => StoreError::RecallWindowExpired,
        StoreError::GroupFull(limit) => StoreError::GroupFull(*limit),
        StoreError::NotOpen => StoreError::NotOpen,
        StoreError::Backend(why) => StoreError::Backend(why.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Full => StoreError::Full,
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::InvalidArgument(why) => StoreError::InvalidArgument(why.clone()),
    }
}
use crate::{Inner, as_i64, backend, big, lwt, unbig};

/// The inbox key of a message.
pub(crate) fn message_key(server_msg_id: u64) -> String {
    format!("m:{server_msg_id}")
}

/// The peer of `user` in a conversation: the other user (direct) or the group id.
pub(crate) fn peer_of(conversation: &ConversationRef<'_>, user: &str) -> String {
    match conversation {
        ConversationRef::Direct { .. } => conversation.peer_of(user).unwrap_or_default().to_owned(),
        ConversationRef::Group { group_id } => (*group_id).to_owned(),
    }
}

impl Inner {
    /// See [`timeline_store::TimelineStore::commit_messages`]. Messages of different
    /// conversations are committed concurrently; those of one conversation in order.
    pub(crate) async fn commit_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        let count = messages.len();
        let mut by_conversation: BTreeMap<String, Vec<(usize, NewMessage)>> = BTreeMap::new();
        for (index, message) in messages.into_iter().enumerate() {
            by_conversation
                .entry(message.conversation_id.clone())
                .or_default()
                .push((index, message));
        }
        let runs = by_conversation
            .into_values()
            .map(|run| async move { self.commit_run(run).await });
        let mut results: Vec<Option<StoreResult<CommittedMessage>>> =
            (0..count).map(|_| None).collect();
        for (index, result) in join_all(runs).await.into_iter().flatten() {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(StoreError::Backend("a send was not run".into())))
            })
            .collect()
    }

    /// Commits consecutive messages of one conversation with one transaction per sequence
    /// they touch (the conversation, each recipient's inbox) rather than one per message: the
    /// store's group commit. Runs that repeat a `(sender, client_msg_id)` among themselves go
    /// one message at a time.
    async fn commit_run(
        &self,
        run: Vec<(usize, NewMessage)>,
    ) -> Vec<(usize, StoreResult<CommittedMessage>)> {
        let keys: BTreeSet<(&str, &str)> = run
            .iter()
            .map(|(_, m)| (m.sender_user.as_str(), m.client_msg_id.as_str()))
            .collect();
        if run.len() == 1 || keys.len() != run.len() {
            let mut out = Vec::with_capacity(run.len());
            for (index, message) in run {
                out.push((index, self.commit_one(message).await));
            }
            return out;
        }
        // 1. Every message's idempotency record, at once (each is its own partition).
        let claims = join_all(run.iter().map(|(_, m)| self.claim_send(m))).await;
        let mut results: Vec<Option<StoreResult<CommittedMessage>>> = Vec::new();
        let mut to_store: Vec<(usize, u64)> = Vec::new(); // (position in run, server msg id)
        for (position, claim) in claims.into_iter().enumerate() {
            match claim {
                Ok(SendClaim::Store(server_msg_id)) => {
                    results.push(None);
                    to_store.push((position, server_msg_id));
                }
                Ok(SendClaim::Done(committed)) => results.push(Some(Ok(*committed))),
                Err(error) => results.push(Some(Err(error))),
            }
        }
        if !to_store.is_empty() {
            let stored = self.store_run(&run, &to_store).await;
            match stored {
                Ok(committed) => {
                    for ((position, _), committed) in to_store.iter().zip(committed) {
                        results[*position] = Some(Ok(committed));
                    }
                }
                Err(error) => {
                    for (position, _) in &to_store {
                        results[*position] = Some(Err(clone_error(&error)));
                    }
                }
            }
        }
        run.iter()
            .zip(results)
            .map(|((index, _), result)| {
                let result =
                    result.unwrap_or_else(|| Err(StoreError::Backend("a send was not run".into())));
                (*index, result)
            })
            .collect()
    }

    /// Steps 2 to 5 of a send for the messages of `run` at the positions of `to_store`, with
    /// their server msg ids.
    async fn store_run(
        &self,
        run: &[(usize, NewMessage)],
        to_store: &[(usize, u64)],
    ) -> StoreResult<Vec<CommittedMessage>> {
        let first = &run[to_store[0].0].1;
        let conversation_id = first.conversation_id.clone();
        let conversation = parse_conversation(&conversation_id)?;
        let templates: Vec<pb::Message> = to_store
            .iter()
            .map(|(position, server_msg_id)| {
                let m = &run[*position].1;
                pb::Message {
                    conversation_id: m.conversation_id.clone(),
                    kind: m.kind as i32,
                    sender_user: m.sender_user.clone(),
                    sender_device: m.sender_device.clone(),
                    server_msg_id: *server_msg_id,
                    conversation_seq: 0,
                    server_time_ms: m.now_ms,
                    client_msg_id: m.client_msg_id.clone(),
                    content_type: m.content_type,
                    content: m.content.clone(),
                    recalled: false,
                    recalled_ms: 0,
                }
            })
            .collect();
        let now_ms = to_store
            .iter()
            .map(|(position, _)| run[*position].1.now_ms)
            .max()
            .unwrap_or(0);
        let messages = self
            .claim_messages(&conversation_id, templates, now_ms)
            .await?;
        #[cfg(feature = "testing")]
        {
            let pause = self.pause.lock().ok().and_then(|mut slot| slot.take());
            if let Some(pause) = pause {
                pause.wait().await;
            }
        }
        join_all(messages.iter().map(|message| {
            self.session.execute_unpaged(
                &self.st.own_put,
                (
                    &message.sender_user,
                    &message.conversation_id,
                    big(message.conversation_seq),
                ),
            )
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;

        // Each recipient's entries, in message order, in one append.
        let mut per_user: BTreeMap<&str, Vec<(usize, String, StoredEntry)>> = BTreeMap::new();
        for (i, ((position, _), message)) in to_store.iter().zip(&messages).enumerate() {
            let m = &run[*position].1;
            let recipients: BTreeSet<&str> = m.recipients.iter().map(String::as_str).collect();
            for user in recipients {
                per_user.entry(user).or_default().push((
                    i,
                    message_key(message.server_msg_id),
                    StoredEntry {
                        appended_ms: m.now_ms,
                        conversation_id: conversation_id.clone(),
                        conversation_seq: message.conversation_seq,
                        event: None,
                    },
                ));
            }
        }
        let kind = conversation.kind() as i32;
        let appends: Vec<_> = per_user
            .iter()
            .map(|(user, entries)| {
                let conversation = &conversation;
                let conversation_id = &conversation_id;
                async move {
                    self.session
                        .execute_unpaged(
                            &self.st.state_touch,
                            (kind, peer_of(conversation, user), *user, conversation_id),
                        )
                        .await
                        .map_err(backend)?;
                    let items: Vec<(String, StoredEntry)> = entries
                        .iter()
                        .map(|(_, key, stored)| (key.clone(), stored.clone()))
                        .collect();
                    let seqs = self.append_many(user, &items).await?;
                    Ok::<_, StoreError>((*user, entries, seqs))
                }
            })
            .collect();
        // Bounded: a large group's fan-out must not put thousands of transactions in flight
        // at once on the cluster. In order: deliveries follow the recipients' order.
        let appended: Vec<_> = futures::stream::iter(appends)
            .buffered(crate::FANOUT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut deliveries: Vec<Vec<Delivery>> = vec![Vec::new(); messages.len()];
        for (user, entries, seqs) in appended {
            for ((i, _, _), (inbox_seq, _)) in entries.iter().zip(seqs) {
                deliveries[*i].push(Delivery {
                    user: user.to_owned(),
                    entry: pb::InboxEntry {
                        inbox_seq,
                        body: Some(pb::inbox_entry::Body::Message(messages[*i].clone())),
                    },
                });
            }
        }
        let committed: Vec<CommittedMessage> = messages
            .into_iter()
            .zip(deliveries)
            .zip(to_store)
            .map(|((message, deliveries), (position, _))| {
                let sender = &run[*position].1.sender_user;
                let sender_inbox_seq = deliveries
                    .iter()
                    .find(|d| &d.user == sender)
                    .map_or(0, |d| d.entry.inbox_seq);
                CommittedMessage {
                    message,
                    sender_inbox_seq,
                    deliveries,
                    duplicate: false,
                    read_fanout: false,
                }
            })
            .collect();
        join_all(committed.iter().map(|c| {
            self.session.execute_unpaged(
                &self.st.send_done,
                (
                    big(c.message.conversation_seq),
                    big(c.sender_inbox_seq),
                    &c.message.sender_user,
                    &c.message.client_msg_id,
                ),
            )
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
        Ok(committed)
    }

    /// Step 1 of a send: checks the message and claims its idempotency record.
    async fn claim_send(&self, m: &NewMessage) -> StoreResult<SendClaim> {
        check_part("client message id", &m.client_msg_id)?;
        parse_conversation(&m.conversation_id)?;
        check_id(&m.sender_user, "sender user id")?;
        for user in &m.recipients {
            check_id(user, "recipient user id")?;
        }
        let digest = content_digest(&m.content);
        let fresh_id = self.next_server_msg_id().await?;
        let claim = lwt(self
            .session
            .execute_unpaged(
                &self.st.send_claim,
                (
                    &m.sender_user,
                    &m.client_msg_id,
                    &m.conversation_id,
                    big(fresh_id),
                    i64::from(m.content_type),
                    big(m.content.len() as u64),
                    digest as i64,
                ),
            )
            .await
            .map_err(backend)?)?;
        if claim.applied {
            return Ok(SendClaim::Store(fresh_id));
        }
        let text = |column: &str| match claim.value(column) {
            Some(CqlValue::Text(text)) => text.clone(),
            _ => String::new(),
        };
        let number = |column: &str| claim.value(column).and_then(as_i64);
        let same = text("conversation_id") == m.conversation_id
            && number("content_type") == Some(i64::from(m.content_type))
            && number("content_len") == Some(big(m.content.len() as u64))
            && number("content_digest") == Some(digest as i64);
        if !same {
            return Err(StoreError::ClientMsgIdConflict(m.client_msg_id.clone()));
        }
        if !matches!(claim.value("done"), Some(CqlValue::Boolean(true))) {
            // The first attempt did not finish: finish it, with its ids.
            return Ok(SendClaim::Store(unbig(number("server_msg_id"))));
        }
        let seq = unbig(number("conversation_seq"));
        self.settle_conversation(&m.conversation_id).await?;
        let message = self
            .message(&m.conversation_id, seq)
            .await?
            .ok_or_else(|| StoreError::Backend("a finished send names no message".into()))?;
        Ok(SendClaim::Done(Box::new(CommittedMessage {
            message,
            sender_inbox_seq: unbig(number("sender_inbox_seq")),
            deliveries: Vec::new(),
            duplicate: true,
            read_fanout: false,
        })))
    }

    /// One message on its own (the path of runs that repeat a client msg id).
    async fn commit_one(&self, m: NewMessage) -> StoreResult<CommittedMessage> {
        match self.claim_send(&m).await? {
            SendClaim::Done(committed) => Ok(*committed),
            SendClaim::Store(server_msg_id) => self
                .store_run(&[(0, m)], &[(0, server_msg_id)])
                .await?
                .pop()
                .ok_or_else(|| StoreError::Backend("a stored send returned nothing".into())),
        }
    }
}
