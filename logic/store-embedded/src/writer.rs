//! The single writer: every mutation runs here, on one thread, in group commits.
//!
//! The thread takes the first queued job, drains whatever else is queued (up to
//! `max_batch`), runs them one after the other inside ONE fjall write transaction, commits it
//! with one fsync, and only then answers the callers. Running the jobs serially on one thread
//! is what makes seq assignment trivially race-free; one transaction per drain is what keeps
//! the fsync count per second independent of the message rate.
//!
//! Jobs read through the transaction (read-your-own-writes), so a job sees what earlier jobs
//! of the same drain wrote: two messages to one conversation in one drain get seqs 1 and 2, a
//! resend in the same drain is a duplicate. Heads (last seq of a conversation and of an inbox,
//! the id counters) are cached in memory after their first load, because every message needs
//! them; the caches are dropped whenever a drain does not commit, so they never run ahead of
//! the disk.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};

use fjall::{PersistMode, Readable as _, SingleWriterTxDatabase, SingleWriterTxKeyspace};
use im_protocol::ids::{self, ConversationRef};
use im_protocol::pb::{self, inbox_entry::Body};
use prost::Message as _;
use timeline_store::{
    CommittedMessage, ConversationState, Delivery, GroupChange, InboxRetention, NewGroup,
    NewMessage, StoreError, StoreResult,
};
use tokio::sync::mpsc;

use crate::keys;
use crate::records::{
    DedupRecord, GroupRecord, InboxRecord, MemberRecord, StateRecord, content_digest,
};
use crate::{Keyspaces, read};

/// Runs after the drain: `Ok` when the drain's transaction is durable, else why it is not.
pub(crate) type Finish = Box<dyn FnOnce(Result<(), DrainFailure>) + Send>;

/// A mutation: runs against the drain's transaction and returns how to answer its caller. It
/// may run more than once: when another job fails the drain, the drain is rolled back and the
/// other jobs run again without it (their earlier answers are dropped unused).
pub(crate) type Job = Box<dyn FnMut(&mut WriteCtx<'_, '_>) -> Finish + Send>;

/// Why a job's drain did not commit.
#[derive(Clone, Debug)]
pub(crate) struct DrainFailure {
    /// What went wrong (for logs; engine details stay out of client-facing texts).
    pub reason: String,
    /// The failure was this job's own refused argument (an oversized key), not a storage fault.
    pub invalid_argument: bool,
}

/// Most inbox entries one retention step removes (see [`WriteCtx::trim_inbox_through`]).
pub(crate) const TRIM_STEP: u64 = 10_000;

/// Counter keys in the `counters` keyspace.
const NEXT_MSG_ID: &[u8] = b"next_server_msg_id";
const NEXT_GROUP_ID: &[u8] = b"next_group_id";

/// Heads the writer keeps in memory between drains. Values include every committed drain and
/// the current one; [`Caches::clear`] after a failed drain forgets the uncommitted part.
#[derive(Default)]
pub(crate) struct Caches {
    conversation_heads: HashMap<String, u64>,
    inbox_heads: HashMap<String, u64>,
    /// Conversation states by their key: every message updates the state of each recipient,
    /// and reading it back through the transaction cost more than the write.
    states: HashMap<Vec<u8>, StateRecord>,
    /// States changed in this drain, written once each when it commits: a busy conversation
    /// changes its states with every message, often dozens of times per drain.
    dirty_states: std::collections::HashSet<Vec<u8>>,
    /// The lowest retained seq of inboxes that retention trimmed or checked (see
    /// [`WriteCtx::trim_inbox_through`]).
    inbox_oldest: HashMap<String, u64>,
    next_msg_id: Option<u64>,
    next_group_id: Option<u64>,
    /// Counters changed in this drain and must be written before it commits.
    counters_dirty: bool,
}

impl Caches {
    fn clear(&mut self) {
        *self = Caches::default();
    }
}

/// What one job sees: the drain's transaction, the keyspaces and the caches.
pub(crate) struct WriteCtx<'t, 'db> {
    tx: &'t mut fjall::SingleWriterWriteTx<'db>,
    ks: &'t Keyspaces,
    caches: &'t mut Caches,
    /// The inbox retention enforced on every append.
    retention: InboxRetention,
    /// A storage error hit during this drain: the drain must not commit (a job may have
    /// written half of its records before the error). The flag marks a refused argument.
    failed: Option<(String, bool)>,
}

/// Settings of the writer thread.
pub(crate) struct WriterConfig {
    pub max_batch: usize,
    pub persist: PersistMode,
    pub head_cache_entries: usize,
    /// Inbox retention, enforced on every append.
    pub retention: InboxRetention,
    /// Counts durable group commits, for [`crate::EmbeddedStore::group_commits`].
    pub commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set when a commit fails: fjall then refuses every further write on this database.
    pub broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The writer thread's loop; returns when every sender is gone and the queue is empty.
pub(crate) fn run(
    db: SingleWriterTxDatabase,
    ks: Keyspaces,
    mut rx: mpsc::Receiver<Job>,
    config: WriterConfig,
) {
    let mut caches = Caches::default();
    let mut jobs: Vec<Job> = Vec::with_capacity(config.max_batch);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < config.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A job that fails the drain (a panic, a refused key, a corrupt record) is answered
        // alone and taken out; the rest run again in a fresh transaction, so one bad request
        // never fails the others it was batched with. Each round removes one job.
        while !jobs.is_empty() {
            match run_drain(&db, &ks, &mut jobs, &mut caches, &config) {
                DrainEnd::Done => break,
                DrainEnd::Culprit(index) => {
                    caches.clear();
                    // Dropping the job drops its answer channel if it still holds it (a
                    // panic); a job that failed by an error was answered by `run_drain`.
                    drop(jobs.remove(index));
                }
            }
        }
        jobs.clear();
    }
    tracing::debug!("store writer stopped");
}

/// How one attempt at a drain ended.
enum DrainEnd {
    /// Committed (or the commit itself failed): every job was answered.
    Done,
    /// The job at this index failed the drain, which was rolled back; it was answered (unless
    /// it panicked), the others were not.
    Culprit(usize),
}

fn run_drain(
    db: &SingleWriterTxDatabase,
    ks: &Keyspaces,
    jobs: &mut [Job],
    caches: &mut Caches,
    config: &WriterConfig,
) -> DrainEnd {
    let count = jobs.len();
    let mut tx = db.write_tx().durability(Some(config.persist));
    let mut finishes: Vec<Finish> = Vec::with_capacity(count);
    let mut culprit: Option<(usize, Option<Finish>, DrainFailure)> = None;
    {
        let mut ctx = WriteCtx {
            tx: &mut tx,
            ks,
            caches,
            retention: config.retention,
            failed: None,
        };
        for (index, job) in jobs.iter_mut().enumerate() {
            match catch_unwind(AssertUnwindSafe(|| job(&mut ctx))) {
                Ok(finish) => match ctx.failed.take() {
                    None => finishes.push(finish),
                    Some((reason, invalid_argument)) => {
                        culprit = Some((
                            index,
                            Some(finish),
                            DrainFailure {
                                reason,
                                invalid_argument,
                            },
                        ));
                        break;
                    }
                },
                Err(_) => {
                    let reason = "a store operation panicked".to_owned();
                    culprit = Some((
                        index,
                        None,
                        DrainFailure {
                            reason,
                            invalid_argument: false,
                        },
                    ));
                    break;
                }
            }
        }
        if culprit.is_none() {
            ctx.write_dirty_states();
            ctx.write_counters();
        }
    }
    if let Some((index, finish, failure)) = culprit {
        tx.rollback();
        tracing::warn!(jobs = count, reason = %failure.reason, "one store operation failed its group commit; running the others again without it");
        if let Some(finish) = finish {
            finish(Err(failure));
        }
        return DrainEnd::Culprit(index);
    }
    let outcome = tx.commit().map_err(|e| DrainFailure {
        reason: e.to_string(),
        invalid_argument: false,
    });
    match &outcome {
        Ok(()) => {
            tracing::trace!(jobs = count, "group commit durable");
            config
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if caches.conversation_heads.len() + caches.inbox_heads.len() + caches.states.len()
                > config.head_cache_entries
            {
                // Reloading a head is one reverse seek; a full cache is not worth an LRU.
                caches.conversation_heads.clear();
                caches.inbox_heads.clear();
                caches.inbox_oldest.clear();
                caches.states.clear();
            }
        }
        Err(failure) => {
            tracing::error!(jobs = count, reason = %failure.reason, "group commit failed; nothing of it was stored");
            caches.clear();
            config
                .broken
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
    for finish in finishes {
        finish(outcome.clone());
    }
    DrainEnd::Done
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt {what} record: {e}"))
}

/// Refuses ids that could break the key layout (see [`keys`]).
fn check_id(id: &str, what: &'static str) -> StoreResult<()> {
    ids::validate_id(id, what).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

/// The peer of `user` in a conversation: the other user (direct) or the group id.
fn peer_of(conversation: &ConversationRef<'_>, user: &str) -> String {
    match conversation {
        ConversationRef::Direct { .. } => conversation.peer_of(user).unwrap_or_default().to_owned(),
        ConversationRef::Group { group_id } => (*group_id).to_owned(),
    }
}

fn parse_conversation(id: &str) -> StoreResult<ConversationRef<'_>> {
    ConversationRef::parse(id).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}

impl WriteCtx<'_, '_> {
    // ----- storage primitives -----

    /// Records a storage error so the drain is not committed, and returns it as the job's error.
    fn io(&mut self, e: fjall::Error) -> StoreError {
        let reason = format!("storage engine: {e}");
        self.failed.get_or_insert_with(|| (reason.clone(), false));
        StoreError::Backend(reason)
    }

    fn get(
        &mut self,
        ks: &SingleWriterTxKeyspace,
        key: &[u8],
    ) -> StoreResult<Option<fjall::Slice>> {
        if key.len() > keys::MAX_KEY_BYTES {
            return Err(StoreError::InvalidArgument("a key is too long".into()));
        }
        match self.tx.get(ks, key) {
            Ok(value) => Ok(value),
            Err(e) => Err(self.io(e)),
        }
    }

    fn get_decoded<T: prost::Message + Default>(
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
    fn fail_with(&mut self, error: StoreError) -> StoreError {
        let invalid = matches!(error, StoreError::InvalidArgument(_));
        self.failed
            .get_or_insert_with(|| (error.to_string(), invalid));
        error
    }

    /// Writes a record. A key the engine would refuse (by panicking) fails the drain instead;
    /// the jobs of the drain that did nothing wrong are run again (see [`run`]).
    fn put(&mut self, ks: &SingleWriterTxKeyspace, key: Vec<u8>, value: Vec<u8>) {
        if key.len() > keys::MAX_KEY_BYTES {
            self.fail_with(StoreError::InvalidArgument("a key is too long".into()));
            return;
        }
        self.tx.insert(ks, key, value);
    }

    fn delete(&mut self, ks: &SingleWriterTxKeyspace, key: Vec<u8>) {
        if key.len() > keys::MAX_KEY_BYTES {
            self.fail_with(StoreError::InvalidArgument("a key is too long".into()));
            return;
        }
        self.tx.remove(ks, key);
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
    fn last_seq_in(&mut self, ks: &SingleWriterTxKeyspace, id: &str) -> StoreResult<u64> {
        let last = self.tx.prefix(ks, keys::prefix(id)).next_back();
        match last {
            None => Ok(0),
            Some(guard) => match guard.key() {
                Ok(key) => keys::seq_of(&key).ok_or_else(|| self.fail_with(corrupt("seq key", id))),
                Err(e) => Err(self.io(e)),
            },
        }
    }

    fn read_counter(&mut self, key: &[u8]) -> StoreResult<u64> {
        let ks = self.ks;
        match self.get(&ks.counters, key)? {
            None => Ok(1),
            Some(raw) => {
                keys::decode_u64(&raw).ok_or_else(|| self.fail_with(corrupt("counter", "length")))
            }
        }
    }

    /// Writes the id counters if this drain moved them. They are written in the same atomic
    /// batch as the records that use the ids, so on disk the counter never lags an id in use.
    /// Writes each state this drain changed, once.
    fn write_dirty_states(&mut self) {
        let ks = self.ks;
        let dirty = std::mem::take(&mut self.caches.dirty_states);
        for key in dirty {
            if let Some(state) = self.caches.states.get(&key) {
                let value = state.encode_to_vec();
                self.put(&ks.states, key, value);
            }
        }
    }

    fn write_counters(&mut self) {
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

    // ----- cached heads -----

    fn conversation_head(&mut self, conversation_id: &str) -> StoreResult<u64> {
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

    fn next_server_msg_id(&mut self) -> StoreResult<u64> {
        let next = match self.caches.next_msg_id {
            Some(next) => next,
            None => self.read_counter(NEXT_MSG_ID)?,
        };
        self.caches.next_msg_id = Some(next + 1);
        self.caches.counters_dirty = true;
        Ok(next)
    }

    fn next_group_number(&mut self) -> StoreResult<u64> {
        let next = match self.caches.next_group_id {
            Some(next) => next,
            None => self.read_counter(NEXT_GROUP_ID)?,
        };
        self.caches.next_group_id = Some(next + 1);
        self.caches.counters_dirty = true;
        Ok(next)
    }

    /// Appends an inbox record for `user` and returns its seq.
    fn append_inbox(&mut self, user: &str, record: &InboxRecord) -> StoreResult<u64> {
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
        let first = self.tx.prefix(&ks.inboxes, keys::prefix(user)).next();
        let oldest = match first {
            None => self.inbox_head(user)? + 1,
            Some(guard) => match guard.key() {
                Ok(key) => {
                    keys::seq_of(&key).ok_or_else(|| self.fail_with(corrupt("seq key", user)))?
                }
                Err(e) => return Err(self.io(e)),
            },
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
    fn append_event(&mut self, user: &str, body: Body, now_ms: u64) -> StoreResult<Delivery> {
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

    // ----- conversation state -----

    fn state(&mut self, user: &str, conversation_id: &str) -> StoreResult<Option<StateRecord>> {
        let key = keys::pair_key(user, conversation_id);
        if let Some(state) = self.caches.states.get(&key) {
            return Ok(Some(state.clone()));
        }
        let ks = self.ks;
        let state: Option<StateRecord> =
            self.get_decoded(&ks.states, &key, "conversation state")?;
        if let Some(state) = &state {
            self.caches.states.insert(key, state.clone());
        }
        Ok(state)
    }

    /// Stores `state`. The conversation list is ordered at read time (a user has few
    /// conversations), so no recency index is maintained here: that index cost four writes per
    /// 1:1 message.
    fn put_state(&mut self, user: &str, state: &StateRecord) {
        let key = keys::pair_key(user, &state.conversation_id);
        self.caches.dirty_states.insert(key.clone());
        self.caches.states.insert(key, state.clone());
    }

    /// Forgets a user's state of a conversation: a group they left or were removed from
    /// leaves their conversation list (SPEC §13.3).
    fn drop_state(&mut self, user: &str, conversation_id: &str) {
        let key = keys::pair_key(user, conversation_id);
        self.caches.states.remove(&key);
        self.caches.dirty_states.remove(&key);
        let ks = self.ks;
        self.delete(&ks.states, key);
    }

    /// The public view of `user`'s state, with its last message read from the timeline (the
    /// newest one `user` has not deleted for themself).
    fn public_state(&mut self, user: &str, state: StateRecord) -> StoreResult<ConversationState> {
        let ks = self.ks;
        let last_message =
            read::newest_visible(&*self.tx, ks, user, &state.conversation_id, state.last_seq)
                .map_err(|e| self.fail_with(e))?;
        Ok(read::public_state(state, last_message))
    }

    // ----- messages -----

    pub(crate) fn commit_messages(
        &mut self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        messages
            .into_iter()
            .map(|message| self.commit_one(message))
            .collect()
    }

    fn commit_one(&mut self, m: NewMessage) -> StoreResult<CommittedMessage> {
        keys::check_part("client message id", &m.client_msg_id)?;
        let conversation = parse_conversation(&m.conversation_id)?;
        check_id(&m.sender_user, "sender user id")?;
        let recipients: BTreeSet<&str> = m.recipients.iter().map(String::as_str).collect();
        for user in &recipients {
            check_id(user, "recipient user id")?;
        }
        let ks = self.ks;
        let dedup_key = keys::pair_key(&m.sender_user, &m.client_msg_id);
        if let Some(record) = self.get_decoded::<DedupRecord>(&ks.dedup, &dedup_key, "dedup")? {
            return self.resend(&m, record);
        }

        let seq = self.conversation_head(&m.conversation_id)? + 1;
        let message = pb::Message {
            conversation_id: m.conversation_id.clone(),
            kind: m.kind as i32,
            sender_user: m.sender_user.clone(),
            sender_device: m.sender_device.clone(),
            server_msg_id: self.next_server_msg_id()?,
            conversation_seq: seq,
            server_time_ms: m.now_ms,
            client_msg_id: m.client_msg_id.clone(),
            content_type: m.content_type,
            content: m.content,
            recalled: false,
            recalled_ms: 0,
        };
        let pointer = InboxRecord {
            message_conversation_id: m.conversation_id.clone(),
            message_seq: seq,
            entry: None,
            appended_ms: m.now_ms,
        };
        let mut deliveries = Vec::with_capacity(recipients.len());
        let mut sender_inbox_seq = 0;
        for user in recipients {
            let inbox_seq = self.append_inbox(user, &pointer)?;
            if user == m.sender_user {
                sender_inbox_seq = inbox_seq;
            }
            let previous = self.state(user, &m.conversation_id)?;
            let mut state = previous.unwrap_or_else(|| StateRecord {
                conversation_id: m.conversation_id.clone(),
                kind: conversation.kind() as i32,
                peer: peer_of(&conversation, user),
                ..StateRecord::default()
            });
            state.last_seq = seq;
            state.updated_ms = state.updated_ms.max(m.now_ms);
            if user != m.sender_user {
                state.unread_count += 1;
            }
            self.put_state(user, &state);
            deliveries.push(Delivery {
                user: user.to_owned(),
                entry: pb::InboxEntry {
                    inbox_seq,
                    body: Some(Body::Message(message.clone())),
                },
            });
        }
        let dedup = DedupRecord {
            conversation_id: m.conversation_id.clone(),
            conversation_seq: seq,
            sender_inbox_seq,
            content_type: message.content_type,
            content_len: message.content.len() as u64,
            content_digest: content_digest(&message.content),
        };
        self.put(&ks.dedup, dedup_key, dedup.encode_to_vec());
        self.put(
            &ks.timelines,
            keys::seq_key(&m.conversation_id, seq),
            message.encode_to_vec(),
        );
        self.caches
            .conversation_heads
            .insert(m.conversation_id, seq);
        Ok(CommittedMessage {
            message,
            sender_inbox_seq,
            deliveries,
            duplicate: false,
        })
    }

    /// A client msg id seen before: the original, or a conflict if this is another message.
    fn resend(&mut self, m: &NewMessage, record: DedupRecord) -> StoreResult<CommittedMessage> {
        let conflict = || StoreError::ClientMsgIdConflict(m.client_msg_id.clone());
        if record.conversation_id != m.conversation_id {
            return Err(conflict());
        }
        let ks = self.ks;
        let key = keys::seq_key(&record.conversation_id, record.conversation_seq);
        let original: pb::Message = self
            .get_decoded(&ks.timelines, &key, "message")?
            .ok_or_else(|| corrupt("dedup", "it names a message that does not exist"))?;
        let same = if original.recalled {
            record.content_type == m.content_type
                && record.content_len == m.content.len() as u64
                && record.content_digest == content_digest(&m.content)
        } else {
            original.content_type == m.content_type && original.content == m.content
        };
        if !same {
            return Err(conflict());
        }
        Ok(CommittedMessage {
            message: original,
            sender_inbox_seq: record.sender_inbox_seq,
            deliveries: Vec::new(),
            duplicate: true,
        })
    }

    // ----- read markers -----

    pub(crate) fn mark_read(
        &mut self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(ConversationState, Vec<Delivery>)> {
        let Some(mut state) = self.state(user, conversation_id)? else {
            return Err(StoreError::NotFound(format!(
                "conversation {conversation_id} of {user}"
            )));
        };
        let target = read_seq.min(state.last_seq);
        if target <= state.read_seq {
            return Ok((self.public_state(user, state)?, Vec::new()));
        }
        let unread = self.count_from_others(user, conversation_id, target, state.last_seq)?;
        state.read_seq = target;
        state.unread_count = unread;
        state.updated_ms = state.updated_ms.max(now_ms);
        self.put_state(user, &state);

        let mut deliveries = vec![self.append_event(
            user,
            Body::ReadMarker(pb::ReadMarkerSync {
                conversation_id: conversation_id.to_owned(),
                read_seq: target,
                unread_count: unread,
            }),
            now_ms,
        )?];
        if let Some(peer) = receipt_to {
            check_id(peer, "receipt user id")?;
            if let Some(mut peer_state) = self.state(peer, conversation_id)?
                && target > peer_state.peer_read_seq
            {
                peer_state.peer_read_seq = target;
                self.put_state(peer, &peer_state);
            }
            deliveries.push(self.append_event(
                peer,
                Body::ReadReceipt(pb::ReadReceipt {
                    conversation_id: conversation_id.to_owned(),
                    reader_user: user.to_owned(),
                    read_seq: target,
                    server_time_ms: now_ms,
                }),
                now_ms,
            )?);
        }
        Ok((self.public_state(user, state)?, deliveries))
    }

    /// Messages not sent by `user` with seq in `(above, up_to]`.
    fn count_from_others(
        &mut self,
        user: &str,
        conversation_id: &str,
        above: u64,
        up_to: u64,
    ) -> StoreResult<u64> {
        if above >= up_to {
            return Ok(0);
        }
        let ks = self.ks;
        let range =
            keys::seq_key(conversation_id, above + 1)..=keys::seq_key(conversation_id, up_to);
        let items: Vec<_> = self.tx.range(&ks.timelines, range).collect();
        let mut count = 0;
        for guard in items {
            let value = guard.value().map_err(|e| self.io(e))?;
            let message =
                pb::Message::decode(&*value).map_err(|e| self.fail_with(corrupt("message", e)))?;
            if message.sender_user != user {
                count += 1;
            }
        }
        Ok(count)
    }

    // ----- recall -----

    pub(crate) fn recall(
        &mut self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(pb::RecallEvent, Vec<Delivery>)> {
        let ks = self.ks;
        let key = keys::seq_key(conversation_id, seq);
        let Some(mut message) = self.get_decoded::<pb::Message>(&ks.timelines, &key, "message")?
        else {
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
        if message.recalled {
            // The original event: the same time as every inbox got (SPEC §13.6).
            event.server_time_ms = message.recalled_ms;
            return Ok((event, Vec::new()));
        }
        if now_ms.saturating_sub(message.server_time_ms) > window_ms {
            return Err(StoreError::RecallWindowExpired);
        }
        let recipients: BTreeSet<&str> = recipients.iter().map(String::as_str).collect();
        for user in &recipients {
            check_id(user, "recipient user id")?;
        }
        message.recalled = true;
        message.recalled_ms = now_ms;
        message.content = Vec::new();
        self.put(&ks.timelines, key, message.encode_to_vec());
        let mut deliveries = Vec::with_capacity(recipients.len());
        for user in recipients {
            deliveries.push(self.append_event(user, Body::Recall(event.clone()), now_ms)?);
        }
        Ok((event, deliveries))
    }

    // ----- delete for me -----

    pub(crate) fn delete_messages(
        &mut self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        check_id(user, "user id")?;
        parse_conversation(conversation_id)?;
        // A conversation's seqs have no holes, so 1..=head are exactly the messages that exist;
        // this spares a lookup per requested seq on the writer thread.
        let head = self.conversation_head(conversation_id)?;
        let wanted: BTreeSet<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| (1..=head).contains(seq))
            .collect();
        let ks = self.ks;
        let mut newly_hidden = Vec::new();
        for seq in wanted {
            let key = keys::hidden_key(user, conversation_id, seq);
            if self.get(&ks.hidden, &key)?.is_none() {
                self.put(&ks.hidden, key, Vec::new());
                newly_hidden.push(seq);
            }
        }
        if newly_hidden.is_empty() {
            return Ok((0, Vec::new()));
        }
        let count = newly_hidden.len() as u64;
        let delivery = self.append_event(
            user,
            Body::Delete(pb::DeleteEvent {
                conversation_id: conversation_id.to_owned(),
                conversation_seqs: newly_hidden,
            }),
            now_ms,
        )?;
        Ok((count, vec![delivery]))
    }

    // ----- delivery cursors -----

    pub(crate) fn record_delivery(
        &mut self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> StoreResult<()> {
        let ks = self.ks;
        let key = keys::pair_key(user, device);
        let current = match self.get(&ks.delivery, &key)? {
            Some(raw) => keys::decode_u64(&raw)
                .ok_or_else(|| self.fail_with(corrupt("delivery cursor", "length")))?,
            None => 0,
        };
        if seq > current {
            self.put(&ks.delivery, key, seq.to_be_bytes().to_vec());
        }
        Ok(())
    }

    // ----- groups -----

    fn group_record(&mut self, group_id: &str) -> StoreResult<GroupRecord> {
        let ks = self.ks;
        self.get_decoded::<GroupRecord>(&ks.groups, group_id.as_bytes(), "group")?
            .filter(|record| record.info.is_some())
            .ok_or_else(|| StoreError::NotFound(format!("group {group_id}")))
    }

    fn put_group(&mut self, record: &GroupRecord) {
        let ks = self.ks;
        let group_id = record
            .info
            .as_ref()
            .map(|info| info.group_id.clone())
            .unwrap_or_default();
        self.put(&ks.groups, group_id.into_bytes(), record.encode_to_vec());
    }

    fn member(&mut self, group_id: &str, user: &str) -> StoreResult<Option<MemberRecord>> {
        let ks = self.ks;
        self.get_decoded(&ks.members, &keys::pair_key(group_id, user), "member")
    }

    /// Every member record of a group, ordered by user id.
    fn members(&mut self, group_id: &str) -> StoreResult<Vec<MemberRecord>> {
        let ks = self.ks;
        let items: Vec<_> = self
            .tx
            .prefix(&ks.members, keys::prefix(group_id))
            .collect();
        let mut members = Vec::with_capacity(items.len());
        for guard in items {
            let value = guard.value().map_err(|e| self.io(e))?;
            members.push(
                MemberRecord::decode(&*value).map_err(|e| self.fail_with(corrupt("member", e)))?,
            );
        }
        Ok(members)
    }

    fn member_ids(&mut self, group_id: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .members(group_id)?
            .into_iter()
            .filter_map(|record| record.member.map(|m| m.user_id))
            .collect())
    }

    fn put_member(&mut self, group_id: &str, record: &MemberRecord) {
        let ks = self.ks;
        let user = record
            .member
            .as_ref()
            .map(|m| m.user_id.as_str())
            .unwrap_or_default();
        self.put(
            &ks.members,
            keys::pair_key(group_id, user),
            record.encode_to_vec(),
        );
    }

    /// Gives a new member their state of the group conversation: read up to the current last
    /// seq, since the messages before they joined never reached their inbox.
    /// Makes `user` a member (the caller checked they are not one and that there is room):
    /// next join order, member record, conversation state, member count.
    fn admit_member(
        &mut self,
        record: &mut GroupRecord,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<()> {
        let order = record.next_join_order;
        record.next_join_order += 1;
        self.put_member(
            group_id,
            &MemberRecord {
                member: Some(pb::GroupMember {
                    user_id: user.to_owned(),
                    role: pb::GroupRole::Member as i32,
                    joined_ms: now_ms,
                }),
                join_order: order,
            },
        );
        self.join_state(group_id, user, now_ms)?;
        record
            .info
            .get_or_insert_with(Default::default)
            .member_count += 1;
        Ok(())
    }

    fn join_state(&mut self, group_id: &str, user: &str, now_ms: u64) -> StoreResult<()> {
        let conversation_id = ids::group_conversation_id(group_id);
        let head = self.conversation_head(&conversation_id)?;
        let previous = self.state(user, &conversation_id)?;
        let mut state = previous.unwrap_or_else(|| StateRecord {
            conversation_id: conversation_id.clone(),
            kind: pb::ConversationKind::Group as i32,
            peer: group_id.to_owned(),
            ..StateRecord::default()
        });
        state.last_seq = head;
        state.read_seq = head;
        state.unread_count = 0;
        state.updated_ms = state.updated_ms.max(now_ms);
        self.put_state(user, &state);
        Ok(())
    }

    /// Appends `event` to the inbox of each of `users`.
    /// Writes the `GroupEvent` of a membership change to every inbox of `audience` and returns
    /// the change: the event names the changed users and the group as it is now.
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &mut self,
        audience: &[String],
        group_id: &str,
        kind: pb::GroupEventKind,
        actor: &str,
        changed: Vec<String>,
        group: pb::GroupInfo,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let event = pb::GroupEvent {
            group_id: group_id.to_owned(),
            kind: kind as i32,
            actor_user: actor.to_owned(),
            members: changed.clone(),
            group_name: group.name.clone(),
            server_time_ms: now_ms,
        };
        let mut deliveries = Vec::with_capacity(audience.len());
        for user in audience {
            deliveries.push(self.append_event(user, Body::GroupEvent(event.clone()), now_ms)?);
        }
        Ok(GroupChange {
            group,
            changed,
            deliveries,
        })
    }

    fn unchanged(record: GroupRecord) -> GroupChange {
        GroupChange {
            group: record.info.unwrap_or_default(),
            changed: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    pub(crate) fn create_group(&mut self, new: NewGroup) -> StoreResult<GroupChange> {
        keys::check_part("client request id", &new.client_request_id)?;
        check_id(&new.owner, "owner user id")?;
        for member in &new.members {
            check_id(member, "member user id")?;
        }
        let ks = self.ks;
        let request_key = (!new.client_request_id.is_empty())
            .then(|| keys::pair_key(&new.owner, &new.client_request_id));
        if let Some(key) = &request_key
            && let Some(group_id) = self.get(&ks.group_requests, key)?
        {
            let group_id = String::from_utf8(group_id.to_vec())
                .map_err(|e| self.fail_with(corrupt("group request", e)))?;
            let record = self.group_record(&group_id)?;
            return Ok(Self::unchanged(record));
        }
        let others: BTreeSet<&str> = new
            .members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != new.owner)
            .collect();
        let mut members = Vec::with_capacity(others.len() + 1);
        members.push(new.owner.clone());
        members.extend(others.into_iter().map(str::to_owned));
        if members.len() > new.max_members as usize {
            return Err(StoreError::GroupFull(new.max_members));
        }

        let group_id = format!("grp-{}", self.next_group_number()?);
        let info = pb::GroupInfo {
            group_id: group_id.clone(),
            name: new.name.clone(),
            owner: new.owner.clone(),
            member_count: members.len() as u32,
            open: new.open,
            created_ms: new.now_ms,
        };
        for (order, user) in members.iter().enumerate() {
            let role = if order == 0 {
                pb::GroupRole::Owner
            } else {
                pb::GroupRole::Member
            };
            self.put_member(
                &group_id,
                &MemberRecord {
                    member: Some(pb::GroupMember {
                        user_id: user.clone(),
                        role: role as i32,
                        joined_ms: new.now_ms,
                    }),
                    join_order: order as u64,
                },
            );
            self.join_state(&group_id, user, new.now_ms)?;
        }
        let record = GroupRecord {
            info: Some(info.clone()),
            next_join_order: members.len() as u64,
        };
        self.put_group(&record);
        if let Some(key) = request_key {
            self.put(&ks.group_requests, key, group_id.clone().into_bytes());
        }
        let audience = members.clone();
        self.announce(
            &audience,
            &group_id,
            pb::GroupEventKind::Created,
            &new.owner,
            members,
            info,
            new.now_ms,
        )
    }

    pub(crate) fn add_members(
        &mut self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        if self.member(group_id, actor)?.is_none() {
            return Err(StoreError::Forbidden(format!(
                "{actor} is not a member of group {group_id}"
            )));
        }
        let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let mut added = Vec::new();
        for user in candidates {
            check_id(user, "member user id")?;
            if self.member(group_id, user)?.is_none() {
                added.push(user.to_owned());
            }
        }
        if added.is_empty() {
            return Ok(Self::unchanged(record));
        }
        let count = record.info.as_ref().map_or(0, |i| i.member_count) as usize;
        if count + added.len() > max_members as usize {
            return Err(StoreError::GroupFull(max_members));
        }
        for user in &added {
            self.admit_member(&mut record, group_id, user, now_ms)?;
        }
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let everyone = self.member_ids(group_id)?;
        self.announce(
            &everyone,
            group_id,
            pb::GroupEventKind::MembersAdded,
            actor,
            added,
            info,
            now_ms,
        )
    }

    pub(crate) fn remove_members(
        &mut self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        let owner = record
            .info
            .as_ref()
            .map(|i| i.owner.clone())
            .unwrap_or_default();
        if owner != actor {
            return Err(StoreError::Forbidden(format!(
                "only the owner may remove members of group {group_id}"
            )));
        }
        if members.iter().any(|m| m == actor) {
            return Err(StoreError::Forbidden(
                "the owner cannot remove themself; leave the group instead".to_owned(),
            ));
        }
        let candidates: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for user in candidates {
            check_id(user, "member user id")?;
            if self.member(group_id, user)?.is_some() {
                removed.push(user.to_owned());
            }
        }
        if removed.is_empty() {
            return Ok(Self::unchanged(record));
        }
        let ks = self.ks;
        for user in &removed {
            self.delete(&ks.members, keys::pair_key(group_id, user));
            self.drop_state(user, &ids::group_conversation_id(group_id));
        }
        let info = record.info.get_or_insert_with(Default::default);
        info.member_count = info.member_count.saturating_sub(removed.len() as u32);
        let info = info.clone();
        self.put_group(&record);
        let mut audience: BTreeSet<String> = self.member_ids(group_id)?.into_iter().collect();
        audience.extend(removed.iter().cloned());
        let audience: Vec<String> = audience.into_iter().collect();
        self.announce(
            &audience,
            group_id,
            pb::GroupEventKind::MembersRemoved,
            actor,
            removed,
            info,
            now_ms,
        )
    }

    pub(crate) fn join_group(
        &mut self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        check_id(user, "user id")?;
        let mut record = self.group_record(group_id)?;
        if self.member(group_id, user)?.is_some() {
            return Ok(Self::unchanged(record));
        }
        let info = record.info.clone().unwrap_or_default();
        if !info.open {
            return Err(StoreError::NotOpen);
        }
        if info.member_count as usize + 1 > max_members as usize {
            return Err(StoreError::GroupFull(max_members));
        }
        self.admit_member(&mut record, group_id, user, now_ms)?;
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let everyone = self.member_ids(group_id)?;
        self.announce(
            &everyone,
            group_id,
            pb::GroupEventKind::MemberJoined,
            user,
            vec![user.to_owned()],
            info,
            now_ms,
        )
    }

    pub(crate) fn leave_group(
        &mut self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        let mut record = self.group_record(group_id)?;
        if self.member(group_id, user)?.is_none() {
            return Err(StoreError::Forbidden(format!(
                "{user} is not a member of group {group_id}"
            )));
        }
        let ks = self.ks;
        self.delete(&ks.members, keys::pair_key(group_id, user));
        self.drop_state(user, &ids::group_conversation_id(group_id));
        let remaining = self.members(group_id)?;
        let info = record.info.get_or_insert_with(Default::default);
        info.member_count = info.member_count.saturating_sub(1);
        if info.owner == user {
            // The longest-standing member: the lowest join order (user id breaks no tie, as
            // join orders are unique).
            let successor = remaining.iter().min_by_key(|r| r.join_order).cloned();
            info.owner = match successor {
                Some(mut successor) => {
                    let member = successor.member.get_or_insert_with(Default::default);
                    member.role = pb::GroupRole::Owner as i32;
                    let owner = member.user_id.clone();
                    self.put_member(group_id, &successor);
                    owner
                }
                None => String::new(),
            };
        }
        let info = record.info.clone().unwrap_or_default();
        self.put_group(&record);
        let mut audience: BTreeSet<String> = remaining
            .into_iter()
            .filter_map(|r| r.member.map(|m| m.user_id))
            .collect();
        audience.insert(user.to_owned());
        let audience: Vec<String> = audience.into_iter().collect();
        self.announce(
            &audience,
            group_id,
            pb::GroupEventKind::MemberLeft,
            user,
            vec![user.to_owned()],
            info,
            now_ms,
        )
    }
}
