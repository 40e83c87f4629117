//! An in-memory [`TimelineStore`], with the embedded store's semantics and none of its
//! machinery: for deterministic simulations that run the real logic tier, and for tests that
//! run the server without a disk.
//!
//! # Determinism
//! The store starts no thread, reads no clock (every time is an argument) and draws no random
//! number (the inbox epoch is given to [`MemoryStore::new`]); its collections are ordered, so
//! nothing depends on a hash seed. Every method's future completes on its first poll: the
//! store's state sits behind one [`std::sync::Mutex`], taken inside each call and released
//! before it returns, never held across an `.await`. Two runs that make the same calls in the
//! same order get the same answers.
//!
//! # Same answers as the embedded store
//! Both stores pass the conformance suite of `timeline-store`. Beyond it, this one follows
//! the embedded store wherever a client could tell them apart: ids are numbered the same way
//! (server msg ids from 1, groups `grp-1`, `grp-2`...), conversation-list cursors have the same
//! format, and arguments the embedded store refuses for its key layout are refused here with
//! the same errors (see `limits`).
//!
//! # Durability
//! "Durable" means "in this process": everything a call changed is visible to every later
//! call, on this handle and its clones, and is gone when the last one is dropped. A simulated
//! restart keeps the same store (nothing acknowledged is ever lost, as on disk).

mod changes;
mod groups;
mod inbox;
mod messages;
mod reads;
mod state;

use std::sync::{Arc, Mutex, MutexGuard};

use im_protocol::pb;
use timeline_store::{
    CommittedMessage, ConversationState, Delivery, GroupChange, HistoryPage, InboxPage,
    InboxRetention, NewGroup, NewMessage, StoreError, StoreResult, TimelineStore,
};

use crate::state::State;

/// The argument checks every backend shares.
pub(crate) use timeline_store::limits;

/// Inbox epochs are below 2^53, so that JavaScript clients hold them exactly (see
/// [`TimelineStore::inbox_epoch`]).
const EPOCH_LIMIT: u64 = 1 << 53;

/// The in-memory store. Cheap to clone: clones share the data, as clones of the embedded store
/// share its database.
#[derive(Clone)]
pub struct MemoryStore {
    inbox_epoch: u64,
    retention: InboxRetention,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("inbox_epoch", &self.inbox_epoch)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store that keeps every inbox entry, with the given inbox epoch. A simulation
    /// that replaces its store (a restore from a backup, a store recreated empty) gives the new
    /// one another epoch, as the embedded store would pick one.
    ///
    /// # Panics
    /// If `inbox_epoch` is 0 or not below 2^53: no real store reports such an epoch, and
    /// clients treat 0 as "not reported".
    pub fn new(inbox_epoch: u64) -> MemoryStore {
        MemoryStore::with_retention(inbox_epoch, InboxRetention::UNLIMITED)
    }

    /// An empty store that enforces `retention` on its inboxes (on every append, and by
    /// [`TimelineStore::sweep_inbox_retention`]), as the embedded store does with
    /// `EmbeddedOptions::inbox_retention`.
    ///
    /// # Panics
    /// As [`MemoryStore::new`].
    pub fn with_retention(inbox_epoch: u64, retention: InboxRetention) -> MemoryStore {
        assert!(
            inbox_epoch != 0 && inbox_epoch < EPOCH_LIMIT,
            "an inbox epoch is non-zero and below 2^53, not {inbox_epoch}"
        );
        MemoryStore {
            inbox_epoch,
            retention,
            state: Arc::new(Mutex::new(State::new(retention))),
        }
    }

    /// The inbox retention the store enforces.
    pub fn inbox_retention(&self) -> InboxRetention {
        self.retention
    }

    /// The state, for the length of one call.
    fn lock(&self) -> StoreResult<MutexGuard<'_, State>> {
        // A call panicked while changing the state (a bug): it may be half-changed, so every
        // later call fails rather than build on it.
        self.state.lock().map_err(|_| poisoned())
    }

    /// Runs `f` on the state, holding the lock only while it runs.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> StoreResult<T>) -> StoreResult<T> {
        f(&mut *self.lock()?)
    }
}

/// The answer of every call after one panicked inside the store.
fn poisoned() -> StoreError {
    StoreError::Backend("an earlier call panicked inside the memory store".into())
}

impl TimelineStore for MemoryStore {
    async fn commit_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        match self.lock() {
            Ok(mut state) => state.commit_messages(messages),
            Err(_) => messages.iter().map(|_| Err(poisoned())).collect(),
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
        self.with(|state| state.mark_read(user, conversation_id, read_seq, receipt_to, now_ms))
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
        self.with(|state| {
            state.recall(conversation_id, seq, by_user, recipients, window_ms, now_ms)
        })
    }

    async fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> StoreResult<InboxPage> {
        self.with(|state| state.read_inbox(user, from_seq, to_seq, limit))
    }

    async fn read_history(
        &self,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.with(|state| state.read_history(None, conversation_id, anchor_seq, direction, limit))
    }

    async fn read_history_as(
        &self,
        viewer: &str,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.with(|state| {
            state.read_history(Some(viewer), conversation_id, anchor_seq, direction, limit)
        })
    }

    async fn delete_messages(
        &self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        self.with(|state| state.delete_messages(user, conversation_id, seqs, now_ms))
    }

    async fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<ConversationState>, String)> {
        self.with(|state| state.conversations(user, limit, cursor))
    }

    async fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationState>> {
        self.with(|state| state.conversation(user, conversation_id))
    }

    async fn sweep_inbox_retention(&self, now_ms: u64) -> StoreResult<u64> {
        self.with(|state| Ok(state.sweep_inbox_retention(now_ms)))
    }

    async fn inbox_head(&self, user: &str) -> StoreResult<u64> {
        self.with(|state| state.inbox_head(user))
    }

    fn inbox_epoch(&self) -> u64 {
        self.inbox_epoch
    }

    async fn record_delivery(&self, user: &str, device: &str, seq: u64) -> StoreResult<()> {
        self.with(|state| state.record_delivery(user, device, seq))
    }

    async fn delivery_cursor(&self, user: &str, device: &str) -> StoreResult<u64> {
        self.with(|state| state.delivery_cursor(user, device))
    }

    async fn put_user_setting(
        &self,
        user: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> StoreResult<()> {
        timeline_store::check_setting(key, value.as_deref())?;
        self.with(|state| {
            let name = (user.to_owned(), key.to_owned());
            match value {
                Some(value) => state.settings.insert(name, value),
                None => state.settings.remove(&name),
            };
            Ok(())
        })
    }

    async fn user_settings(&self, user: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.with(|state| {
            Ok(state
                .settings
                .range((user.to_owned(), prefix.to_owned())..)
                .take_while(|((u, k), _)| u == user && k.starts_with(prefix))
                .take(timeline_store::MAX_SETTINGS_LISTED)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect())
        })
    }

    async fn create_group(&self, group: NewGroup) -> StoreResult<GroupChange> {
        self.with(|state| state.create_group(group))
    }

    async fn add_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.with(|state| state.add_members(group_id, actor, members, max_members, now_ms))
    }

    async fn remove_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.with(|state| state.remove_members(group_id, actor, members, now_ms))
    }

    async fn join_group(
        &self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.with(|state| state.join_group(group_id, user, max_members, now_ms))
    }

    async fn leave_group(
        &self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.with(|state| state.leave_group(group_id, user, now_ms))
    }

    async fn group(&self, group_id: &str) -> StoreResult<pb::GroupInfo> {
        self.with(|state| state.group(group_id))
    }

    async fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<pb::GroupMember>, String)> {
        self.with(|state| state.group_members(group_id, limit, cursor))
    }

    async fn is_member(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        self.with(|state| state.is_member(group_id, user))
    }

    async fn member_ids(&self, group_id: &str) -> StoreResult<Vec<String>> {
        self.with(|state| state.member_ids(group_id))
    }

    async fn set_group_fanout(
        &self,
        group_id: &str,
        read_fanout: bool,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.with(|state| state.set_group_fanout(group_id, read_fanout, now_ms))
    }

    async fn read_fanout_groups(&self, user: &str) -> StoreResult<Vec<String>> {
        self.with(|state| state.read_fanout_groups(user))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Polls `future` once, as a simulation's executor would, and returns its output.
    fn ready<F: Future>(future: F) -> F::Output {
        let mut context = Context::from_waker(Waker::noop());
        match pin!(future).poll(&mut context) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("a memory store call did not complete on its first poll"),
        }
    }

    fn message(sender: &str, peer: &str, id: &str, now_ms: u64) -> NewMessage {
        let mut recipients = vec![sender.to_owned(), peer.to_owned()];
        recipients.sort();
        NewMessage {
            conversation_id: im_protocol::ids::direct_conversation_id(sender, peer),
            kind: pb::ConversationKind::Direct,
            sender_user: sender.into(),
            sender_device: "phone".into(),
            client_msg_id: id.into(),
            content_type: 0,
            content: id.as_bytes().to_vec(),
            recipients,
            now_ms,
        }
    }

    /// A script of calls of every kind, with the time given as an argument; returns everything
    /// they answered, printed.
    fn run_script(store: &MemoryStore) -> String {
        let mut log = Vec::new();
        for i in 0..20u64 {
            let sent = ready(store.commit_messages(vec![
                message(
                    "alice",
                    &format!("peer{}", i % 3),
                    &format!("a{i}"),
                    1_000 + i,
                ),
                message(
                    &format!("peer{}", i % 4),
                    "alice",
                    &format!("p{i}"),
                    1_000 + i,
                ),
            ]));
            log.push(format!("{sent:?}"));
        }
        let group = ready(store.create_group(NewGroup {
            name: "g".into(),
            owner: "alice".into(),
            members: vec!["peer2".into(), "peer0".into(), "peer1".into()],
            open: true,
            client_request_id: "r".into(),
            max_members: 10,
            read_fanout: false,
            broadcast: false,
            now_ms: 2_000,
        }));
        log.push(format!("{group:?}"));
        log.push(format!(
            "{:?}",
            ready(store.mark_read("peer1", "d:alice:peer1", 3, Some("alice"), 2_001))
        ));
        log.push(format!(
            "{:?}",
            ready(store.recall(
                "d:alice:peer0",
                2,
                "alice",
                &["alice".into(), "peer0".into()],
                60_000,
                2_002
            ))
        ));
        log.push(format!(
            "{:?}",
            ready(store.delete_messages("alice", "d:alice:peer2", &[1, 3], 2_003))
        ));
        log.push(format!(
            "{:?}",
            ready(store.leave_group("grp-1", "alice", 2_004))
        ));
        log.push(format!("{:?}", ready(store.sweep_inbox_retention(3_000))));
        for user in ["alice", "peer0", "peer1", "peer2", "peer3"] {
            log.push(format!("{:?}", ready(store.read_inbox(user, 0, 0, 1_000))));
            log.push(format!("{:?}", ready(store.conversations(user, 100, ""))));
        }
        log.join("\n")
    }

    #[test]
    fn the_same_calls_on_two_fresh_stores_give_the_same_answers() {
        let retention = InboxRetention {
            max_entries: 15,
            max_age_ms: 500,
        };
        let first = run_script(&MemoryStore::with_retention(7, retention));
        let second = run_script(&MemoryStore::with_retention(7, retention));
        assert!(first.contains("grp-1"), "the script ran: {first}");
        assert_eq!(first, second);
    }

    #[test]
    fn clones_share_the_data() {
        let store = MemoryStore::new(1);
        let clone = store.clone();
        ready(store.commit_messages(vec![message("alice", "bob", "m1", 1)]))
            .pop()
            .expect("one result")
            .expect("stored");
        assert_eq!(ready(clone.inbox_head("bob")).expect("head"), 1);
    }

    #[test]
    fn the_epoch_and_retention_are_the_ones_given() {
        let retention = InboxRetention {
            max_entries: 3,
            max_age_ms: 0,
        };
        let store = MemoryStore::with_retention((1 << 53) - 1, retention);
        assert_eq!(store.inbox_epoch(), (1 << 53) - 1);
        assert_eq!(store.inbox_retention(), retention);
        assert_eq!(
            MemoryStore::new(5).inbox_retention(),
            InboxRetention::UNLIMITED
        );
    }

    #[test]
    #[should_panic(expected = "non-zero")]
    fn an_epoch_of_zero_is_refused() {
        MemoryStore::new(0);
    }

    #[test]
    #[should_panic(expected = "below 2^53")]
    fn an_epoch_of_2_pow_53_is_refused() {
        MemoryStore::new(1 << 53);
    }
}
