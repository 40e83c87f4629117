//! The single writer: every mutation runs here, on one thread, in group commits.
//!
//! The thread takes the first queued job, drains whatever else is queued (up to
//! `max_batch`), runs them one after the other, commits everything they wrote as ONE fjall
//! batch with one fsync, and only then answers the callers. Running the jobs serially on one
//! thread is what makes seq assignment trivially race-free; one batch per drain is what keeps
//! the fsync count per second independent of the message rate.
//!
//! A drain's writes wait in the writer's own ordered maps ([`pending`]: cheaper than a fjall
//! write transaction's skiplist) and jobs read through them over a snapshot taken when the
//! drain began (read-your-own-writes), so a job sees what earlier jobs of the same drain
//! wrote: two messages to one conversation in one drain get seqs 1 and 2, a resend in the same
//! drain is a duplicate. Heads (last seq of a conversation and of an inbox,
//! the id counters) are cached in memory after their first load, because every message needs
//! them; the caches are dropped whenever a drain does not commit, so they never run ahead of
//! the disk.
//!
//! The operations are methods of [`WriteCtx`], one file per family; the storage primitives
//! and cached heads they share are in `primitives` and `heads`.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use fjall::{PersistMode, SingleWriterTxDatabase};
use im_protocol::ids::{self, ConversationRef};
use timeline_store::{InboxRetention, StoreError, StoreResult};
use tokio::sync::mpsc;

use crate::engine::Keyspaces;
use crate::records::StateRecord;

mod delete;
mod delivery;
mod groups;
mod heads;
mod messages;
pub(crate) use messages::Staged;
mod pending;
mod primitives;
mod read_markers;
mod recall;
mod settings;
mod state;

/// Runs after the drain: `Ok` when the drain's batch is durable, else why it is not.
pub(crate) type Finish = Box<dyn FnOnce(Result<(), DrainFailure>) + Send>;

/// A mutation: runs against the drain's view (snapshot and pending writes) and returns how to answer its caller. It
/// may run more than once: when another job fails the drain, the drain is rolled back and the
/// other jobs run again without it (their earlier answers are dropped unused).
pub(crate) type Job = Box<dyn FnMut(&mut WriteCtx<'_>) -> Finish + Send>;

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
    /// and reading it back through the drain cost more than the write.
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
    /// Groups messages went to: their fan-out mode and members (sorted). Every change of a
    /// group goes through `put_group`, which drops its entry.
    groups: HashMap<String, GroupAudience>,
}

/// Whether a group is in read fan-out, and its members (sorted; empty in read fan-out).
pub(crate) type GroupAudience = std::sync::Arc<(bool, Vec<String>)>;

impl Caches {
    fn clear(&mut self) {
        *self = Caches::default();
    }
}

/// What one job sees: the database as the drain began, the drain's own writes so far, the
/// keyspaces and the caches.
pub(crate) struct WriteCtx<'t> {
    snapshot: &'t fjall::Snapshot,
    pending: &'t mut pending::Pending,
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
    let mut pending = pending::Pending::new(Keyspaces::COUNT);
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
        // alone and taken out; the rest run again in a fresh drain, so one bad request
        // never fails the others it was batched with. Each round removes one job.
        while !jobs.is_empty() {
            match run_drain(&db, &ks, &mut jobs, &mut caches, &mut pending, &config) {
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
    pending: &mut pending::Pending,
    config: &WriterConfig,
) -> DrainEnd {
    let count = jobs.len();
    // Everything committed so far: this thread is the only writer, so the snapshot and the
    // drain's own writes are the whole state the jobs see.
    let snapshot = db.read_tx();
    pending.clear();
    let mut finishes: Vec<Finish> = Vec::with_capacity(count);
    let mut culprit: Option<(usize, Option<Finish>, DrainFailure)> = None;
    {
        let mut ctx = WriteCtx {
            snapshot: &snapshot,
            pending: &mut *pending,
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
        pending.clear();
        tracing::warn!(jobs = count, reason = %failure.reason, "one store operation failed its group commit; running the others again without it");
        if let Some(finish) = finish {
            finish(Err(failure));
        }
        return DrainEnd::Culprit(index);
    }
    drop(snapshot);
    let outcome = if pending.is_empty() {
        Ok(())
    } else {
        let mut batch = db.inner().batch().durability(Some(config.persist));
        pending.drain_into(ks, &mut batch);
        let started = std::time::Instant::now();
        let committed = batch.commit().map_err(|e| DrainFailure {
            reason: e.to_string(),
            invalid_argument: false,
        });
        // The write and its fsync: what every caller of the drain waited for.
        metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::COMMIT_JOBS).record(count as f64);
        committed
    };
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
                caches.groups.clear();
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

/// Refuses ids that could break the key layout (see [`crate::keys`]).
pub(crate) fn check_id(id: &str, what: &'static str) -> StoreResult<()> {
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
