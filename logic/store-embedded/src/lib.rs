//! The embedded timeline store: [`TimelineStore`] on a local fjall (LSM) database, for
//! single-process deployments and tests.
//!
//! # Layout
//! One fjall keyspace per kind of record (see [`keys`] for the key shapes):
//! `timelines` (conversation + seq -> `pb::Message`), `inboxes` (user + seq -> a reference to a
//! timeline message, or a whole non-message `pb::InboxEntry`), `dedup` (sender + client msg id),
//! `states` (user + conversation -> read marker, unread count...; the conversation list is
//! sorted by update time when read), `groups`, `members`
//! (group + user), `group_requests` (owner + client request id -> group id), `delivery`
//! (user + device -> cursor), `counters` (next server msg id, next group number) and `hidden`
//! (user + conversation + seq: the messages a user deleted for themself).
//!
//! # Writes
//! All mutations go through one writer thread over a bounded queue (see [`writer`]): it drains
//! up to `max_batch` queued operations, applies them in one transaction and commits that with a
//! single fsync before answering any of them. A full queue makes callers wait (backpressure)
//! instead of growing memory.
//!
//! # Reads
//! Reads run on tokio's blocking pool, each against one snapshot; they only ever see committed,
//! fsynced batches (see [`read`] for why).
//!
//! # Crash safety
//! A drain is one atomic fjall batch: after `kill -9` either all of it is in the journal or none
//! of it. Seqs are derived from the stored keys on first use (a reverse seek), and the id
//! counters are written in the same batch as the records that use them, so nothing a client
//! saw is ever handed out again.

mod keys;
mod read;
mod records;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use fjall::{KeyspaceCreateOptions, PersistMode, SingleWriterTxDatabase, SingleWriterTxKeyspace};
use im_protocol::pb;
use timeline_store::{
    CommittedMessage, ConversationState, Delivery, GroupChange, HistoryPage, InboxPage,
    InboxRetention, NewGroup, NewMessage, StoreError, StoreResult, TimelineStore,
};
use tokio::sync::{mpsc, oneshot};

use crate::read::Reader;
use crate::writer::{DrainFailure, Finish, Job, WriteCtx};

/// How hard each group commit pushes its journal to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync`: the data and the metadata needed to read it back. Enough for an append-only
    /// journal, and cheaper.
    #[default]
    Data,
    /// `fsync`: all file metadata too.
    All,
}

/// Default of [`EmbeddedOptions::min_free_bytes`]: room for fjall to flush its memtables and
/// finish a compaction after writes stop.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

/// Free space a failed store waits for before it reopens, even with no reserve configured.
const REOPEN_MIN_FREE_BYTES: u64 = 1 << 20;

/// How often free space is measured, and a failed store is tried again.
const HEALTH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Mutations that may wait for the writer; when full, callers wait (backpressure).
    pub queue_capacity: usize,
    /// Most operations per group commit.
    pub max_batch: usize,
    /// The fsync flavour of each group commit.
    pub sync: SyncMode,
    /// fjall's block cache, bytes.
    pub cache_bytes: u64,
    /// fjall's background threads (flushes, compactions).
    pub worker_threads: usize,
    /// The writer forgets its cached heads when it holds more than this many (each is reloaded
    /// by one seek when next needed).
    pub head_cache_entries: usize,
    /// Mutations are refused (`StoreError::Full`) while the data directory's filesystem has
    /// less free space than this, so the engine never runs into a full disk in the middle of a
    /// commit. 0 = no threshold.
    pub min_free_bytes: u64,
    /// How long inbox entries are kept (default: forever; the server sets its own).
    pub inbox_retention: InboxRetention,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            queue_capacity: 8192,
            max_batch: 1024,
            sync: SyncMode::Data,
            cache_bytes: 64 << 20,
            worker_threads: 2,
            head_cache_entries: 1_000_000,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            inbox_retention: InboxRetention::UNLIMITED,
        }
    }
}

/// Why the embedded store could not be opened or closed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// fjall could not open or recover the database (including: another process has it open).
    #[error("cannot open the database at {path}: {source}")]
    Open {
        /// The database directory.
        path: String,
        /// fjall's error.
        #[source]
        source: fjall::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
    /// There is no store in the directory.
    #[error("no store in {0}")]
    NoStore(String),
    /// The writer thread panicked; the last batch it was working on was not committed.
    #[error("the store writer thread panicked")]
    WriterPanicked,
}

/// Handles of every keyspace.
#[derive(Clone)]
pub(crate) struct Keyspaces {
    timelines: SingleWriterTxKeyspace,
    inboxes: SingleWriterTxKeyspace,
    dedup: SingleWriterTxKeyspace,
    states: SingleWriterTxKeyspace,
    groups: SingleWriterTxKeyspace,
    members: SingleWriterTxKeyspace,
    group_requests: SingleWriterTxKeyspace,
    delivery: SingleWriterTxKeyspace,
    counters: SingleWriterTxKeyspace,
    /// User + conversation + seq -> nothing: the messages a user deleted for themself.
    hidden: SingleWriterTxKeyspace,
}

impl Keyspaces {
    fn open(db: &SingleWriterTxDatabase) -> fjall::Result<Keyspaces> {
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Keyspaces {
            timelines: open("timelines")?,
            inboxes: open("inboxes")?,
            dedup: open("dedup")?,
            states: open("states")?,
            groups: open("groups")?,
            members: open("members")?,
            group_requests: open("group_requests")?,
            delivery: open("delivery")?,
            counters: open("counters")?,
            hidden: open("hidden")?,
        })
    }
}

/// The open database. Replaced as a whole when the store reopens after a failed commit.
struct Engine {
    db: SingleWriterTxDatabase,
    ks: Keyspaces,
}

struct Inner {
    /// See [`TimelineStore::inbox_epoch`].
    inbox_epoch: u64,
    dir: std::path::PathBuf,
    options: EmbeddedOptions,
    /// Group commits made durable since open (see [`EmbeddedStore::group_commits`]).
    commits: Arc<AtomicU64>,
    /// The database reads use; `None` only while it is being reopened.
    engine: RwLock<Option<Arc<Engine>>>,
    /// The writer's queue; `None` once closed, and while reopening.
    queue: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// A commit failed (a full disk, an I/O error): fjall accepts no further writes on this
    /// database. The health thread reopens it once there is room again.
    broken: Arc<AtomicBool>,
    /// Free bytes on the data directory's filesystem, as last measured.
    free_bytes: AtomicU64,
    closed: AtomicBool,
}

impl Inner {
    /// Stops taking mutations and waits until the writer has committed what was queued.
    fn stop_writer(&self) -> Result<(), EmbeddedError> {
        if let Ok(mut queue) = self.queue.write() {
            queue.take();
        }
        let handle = match self.writer.lock() {
            Ok(mut writer) => writer.take(),
            Err(_) => None,
        };
        match handle {
            Some(handle) => handle.join().map_err(|_| EmbeddedError::WriterPanicked),
            None => Ok(()),
        }
    }

    /// Measures the free space of the data directory's filesystem (unknown = plenty).
    fn measure_free_space(&self) -> u64 {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(_) => u64::MAX,
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        free
    }

    fn low_on_space(&self) -> bool {
        self.free_bytes.load(Ordering::Relaxed) < self.options.min_free_bytes
    }

    /// Replaces a database that refuses writes by a freshly opened one (fjall recovers it
    /// from its journal, so everything committed is kept). Readers wait out the swap.
    fn reopen(&self) -> Result<(), EmbeddedError> {
        self.stop_writer()?;
        let old = self
            .engine
            .write()
            .ok()
            .and_then(|mut engine| engine.take());
        if let Some(old) = old {
            // Reads in flight hold the old database for a moment; fjall's lock is released
            // only when the last handle goes.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        }
        let (engine, queue, writer) =
            start_engine(&self.dir, &self.options, &self.commits, &self.broken)?;
        if let Ok(mut slot) = self.writer.lock() {
            *slot = Some(writer);
        }
        if let Ok(mut slot) = self.queue.write() {
            *slot = Some(queue);
        }
        if let Ok(mut slot) = self.engine.write() {
            *slot = Some(Arc::new(engine));
        }
        self.broken.store(false, Ordering::Release);
        Ok(())
    }
}

/// Opens the database in `dir` and starts its writer thread.
fn start_engine(
    dir: &Path,
    options: &EmbeddedOptions,
    commits: &Arc<AtomicU64>,
    broken: &Arc<AtomicBool>,
) -> Result<(Engine, mpsc::Sender<Job>, JoinHandle<()>), EmbeddedError> {
    let open_error = |source| EmbeddedError::Open {
        path: dir.display().to_string(),
        source,
    };
    let db = SingleWriterTxDatabase::builder(dir)
        .cache_size(options.cache_bytes)
        .worker_threads(options.worker_threads.max(1))
        // Each group commit persists its own batch; nothing else should sync.
        .manual_journal_persist(true)
        .open()
        .map_err(open_error)?;
    let ks = Keyspaces::open(&db).map_err(open_error)?;
    let (queue, rx) = mpsc::channel(options.queue_capacity.max(1));
    let config = writer::WriterConfig {
        max_batch: options.max_batch.max(1),
        persist: match options.sync {
            SyncMode::Data => PersistMode::SyncData,
            SyncMode::All => PersistMode::SyncAll,
        },
        head_cache_entries: options.head_cache_entries,
        retention: options.inbox_retention,
        commits: Arc::clone(commits),
        broken: Arc::clone(broken),
    };
    let writer_db = db.clone();
    let writer_ks = ks.clone();
    let writer = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer::run(writer_db, writer_ks, rx, config))
        .map_err(EmbeddedError::SpawnWriter)?;
    Ok((Engine { db, ks }, queue, writer))
}

/// Measures free space and reopens a failed database once there is room again, until the
/// store is closed or dropped.
fn watch_health(inner: std::sync::Weak<Inner>) {
    loop {
        std::thread::sleep(HEALTH_CHECK_INTERVAL);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let was_low = inner.low_on_space();
        let free = inner.measure_free_space();
        match (was_low, inner.low_on_space()) {
            (false, true) => tracing::error!(
                free,
                min_free = inner.options.min_free_bytes,
                "the data disk is nearly full: refusing writes until space is freed"
            ),
            (true, false) => tracing::warn!(free, "the data disk has room again: writes resume"),
            _ => {}
        }
        // Reopening on a disk that is still full would fail again, and readers would lose the
        // old database meanwhile: wait for some room (and the reserve) first.
        if inner.broken.load(Ordering::Acquire)
            && free >= inner.options.min_free_bytes.max(REOPEN_MIN_FREE_BYTES)
        {
            match inner.reopen() {
                Ok(()) => {
                    tracing::warn!(free, "store reopened after a failed commit: writes resume")
                }
                Err(e) => tracing::error!(error = %e, "reopening the store failed; trying again"),
            }
        }
    }
}

impl Drop for Inner {
    /// Lets the writer finish the queued work (which may block for one group commit), so the
    /// database files are released when the last handle goes.
    fn drop(&mut self) {
        if let Err(e) = self.stop_writer() {
            tracing::error!(error = %e, "store writer did not stop cleanly");
        }
    }
}

/// The embedded store. Cheap to clone: clones share the database and the writer.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread. Blocks while
    /// fjall recovers its journal; call it before serving or from `spawn_blocking`.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, EmbeddedError> {
        let commits = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (engine, queue, writer) = start_engine(dir, &options, &commits, &broken)?;
        let inbox_epoch =
            load_or_create_epoch(&engine.db, &engine.ks).map_err(|source| EmbeddedError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), inbox_epoch, "embedded store open");
        let inner = Arc::new(Inner {
            inbox_epoch,
            dir: dir.to_owned(),
            options,
            commits,
            engine: RwLock::new(Some(Arc::new(engine))),
            queue: RwLock::new(Some(queue)),
            writer: Mutex::new(Some(writer)),
            broken,
            free_bytes: AtomicU64::new(u64::MAX),
            closed: AtomicBool::new(false),
        });
        inner.measure_free_space();
        let watched = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("store-health".into())
            .spawn(move || watch_health(watched))
            .map_err(EmbeddedError::SpawnWriter)?;
        Ok(EmbeddedStore { inner })
    }

    fn inbox_epoch_value(&self) -> u64 {
        self.inner.inbox_epoch
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The inbox retention the store was opened with.
    pub fn inbox_retention(&self) -> InboxRetention {
        self.inner.options.inbox_retention
    }

    /// How many group commits (each one fsync) have been made durable since open: with many
    /// concurrent writers this stays far below the number of mutations.
    pub fn group_commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Stops accepting mutations (they fail with `Closed`, on this handle and its clones), waits
    /// until everything queued is committed, and drops this handle. The files are released
    /// once every clone is dropped.
    pub async fn close(self) -> Result<(), EmbeddedError> {
        let inner = Arc::clone(&self.inner);
        inner.closed.store(true, Ordering::Release);
        drop(self);
        tokio::task::spawn_blocking(move || inner.stop_writer())
            .await
            .unwrap_or(Err(EmbeddedError::WriterPanicked))
    }

    /// Queues a mutation and waits for its durable result. `failed` builds the answer when the
    /// store is closed or the group commit the mutation belongs to did not commit. `run` may
    /// run more than once (see [`Job`]), so it takes its inputs by reference or clones them.
    async fn mutate<T: Send + 'static>(
        &self,
        run: impl Fn(&mut WriteCtx<'_, '_>) -> T + Send + 'static,
        failed: impl Fn(StoreError) -> T + Send + Sync + 'static,
    ) -> T {
        if let Some(refusal) = self.write_refusal() {
            return failed(refusal);
        }
        let queue = match self.inner.queue.read() {
            Ok(queue) => queue.clone(),
            Err(_) => None,
        };
        let Some(queue) = queue else {
            return failed(if self.inner.closed.load(Ordering::Acquire) {
                StoreError::Closed
            } else {
                StoreError::Unavailable("the store is reopening".into())
            });
        };
        let (reply, answer) = oneshot::channel();
        // Shared with every run of the job: an answer dropped unused (its drain was run again)
        // must not drop the channel.
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        // The writer thread runs the job inside the request's span, so the request's trail
        // continues into the store.
        let span = tracing::Span::current();
        let job: Job = Box::new(move |ctx: &mut WriteCtx<'_, '_>| {
            let _entered = span.enter();
            let result = run(ctx);
            tracing::trace!("store operation staged in the group commit");
            let reply = Arc::clone(&reply);
            let span = span.clone();
            let finish: Finish = Box::new(move |outcome: Result<(), DrainFailure>| {
                let _entered = span.enter();
                match &outcome {
                    Ok(()) => tracing::debug!("stored durably"),
                    Err(failure) => tracing::debug!(reason = %failure.reason, "not stored"),
                }
                let sender = reply.lock().ok().and_then(|mut slot| slot.take());
                if let Some(sender) = sender {
                    let _ = sender.send(outcome.map(|()| result));
                }
            });
            finish
        });
        if queue.send(job).await.is_err() {
            return failed(StoreError::Closed);
        }
        match answer.await {
            Ok(Ok(result)) => result,
            Ok(Err(failure)) if failure.invalid_argument => {
                failed(StoreError::InvalidArgument(failure.reason))
            }
            Ok(Err(failure)) => {
                // A failed commit may mean a full disk: measure now rather than at the next tick.
                self.inner.measure_free_space();
                if self.inner.low_on_space() {
                    failed(StoreError::Full)
                } else {
                    failed(StoreError::Backend(failure.reason))
                }
            }
            // The job panicked inside the writer and was dropped with its answer channel; the
            // group commit it was part of ran again without it.
            Err(_) => failed(StoreError::Backend(
                "the store writer failed while running this operation".to_owned(),
            )),
        }
    }

    /// Why a mutation cannot be tried now, if it cannot: the disk is (nearly) full, or the
    /// database refuses writes until it is reopened.
    fn write_refusal(&self) -> Option<StoreError> {
        if self.inner.low_on_space() {
            return Some(StoreError::Full);
        }
        if self.inner.broken.load(Ordering::Acquire) {
            return Some(StoreError::Unavailable(
                "the store is recovering from a failed write".into(),
            ));
        }
        None
    }

    /// Runs a read on the blocking pool against a fresh snapshot.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let engine = self.inner.engine.read().ok().and_then(|e| e.clone());
        let Some(engine) = engine else {
            return Err(StoreError::Unavailable("the store is reopening".into()));
        };
        tokio::task::spawn_blocking(move || {
            let reader = Reader {
                snapshot: engine.db.read_tx(),
                ks: &engine.ks,
            };
            f(&reader)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

/// Where the inbox epoch is kept, in the `counters` keyspace.
const INBOX_EPOCH_KEY: &[u8] = b"inbox_epoch";

/// Reads the store's inbox epoch, choosing and durably storing one when the store is new (or
/// was written by a version that had none).
fn load_or_create_epoch(db: &SingleWriterTxDatabase, ks: &Keyspaces) -> fjall::Result<u64> {
    use fjall::Readable as _;
    let stored = db.read_tx().get(&ks.counters, INBOX_EPOCH_KEY)?;
    if let Some(epoch) = stored
        .and_then(|raw| keys::decode_u64(&raw[..]))
        .filter(|e| *e != 0)
    {
        return Ok(epoch);
    }
    // Below 2^53 so that JavaScript clients hold it exactly; never 0 ("not reported").
    let epoch = (rand::random::<u64>() >> 11) | 1;
    let mut tx = db.write_tx().durability(Some(PersistMode::SyncAll));
    tx.insert(&ks.counters, INBOX_EPOCH_KEY, epoch.to_be_bytes());
    tx.commit()?;
    Ok(epoch)
}

/// Gives the store in `dir` a new inbox epoch, for operators who restored it from a backup:
/// the restored inboxes reuse seqs that clients already saw with other entries, and the new
/// epoch makes every client start over from the restored state (SPEC §10.8). The server must
/// not be running. Returns the new epoch.
pub fn renew_inbox_epoch(dir: &Path) -> Result<u64, EmbeddedError> {
    let open_error = |source| EmbeddedError::Open {
        path: dir.display().to_string(),
        source,
    };
    if !dir.join("version").exists() {
        return Err(EmbeddedError::NoStore(dir.display().to_string()));
    }
    let db = SingleWriterTxDatabase::builder(dir)
        .open()
        .map_err(open_error)?;
    let ks = Keyspaces::open(&db).map_err(open_error)?;
    let mut tx = db.write_tx().durability(Some(PersistMode::SyncAll));
    tx.remove(&ks.counters, INBOX_EPOCH_KEY);
    tx.commit().map_err(open_error)?;
    load_or_create_epoch(&db, &ks).map_err(open_error)
}

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
        self.mutate(
            move |ctx| ctx.commit_messages(messages.clone()),
            all_failed(count),
        )
        .await
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::pb::ConversationKind;

    fn message(sender: &str, n: usize) -> NewMessage {
        let peer = "bystander-peer";
        let mut recipients = vec![sender.to_owned(), peer.to_owned()];
        recipients.sort();
        NewMessage {
            conversation_id: im_protocol::ids::direct_conversation_id(sender, peer),
            kind: ConversationKind::Direct,
            sender_user: sender.into(),
            sender_device: "phone".into(),
            client_msg_id: format!("m{n}"),
            content_type: 0,
            content: b"hello".to_vec(),
            recipients,
            now_ms: 1_700_000_000_000,
        }
    }

    /// Bad operations (one that writes a key the engine refuses, one that panics) share group
    /// commits with a bystander's sends: they fail alone, and every send is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failing_operation_never_fails_the_others_in_its_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for n in 0..300 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                match n % 3 {
                    0 => {
                        let oversized: StoreResult<()> = store
                            .mutate(
                                |ctx| {
                                    ctx.put_oversized_key();
                                    Ok(())
                                },
                                Err,
                            )
                            .await;
                        assert!(
                            matches!(oversized, Err(StoreError::InvalidArgument(_))),
                            "{oversized:?}"
                        );
                    }
                    1 => {
                        let panicked: StoreResult<()> = store
                            .mutate(|_ctx| panic!("a bug in one operation"), Err)
                            .await;
                        assert!(panicked.is_err());
                    }
                    _ => {
                        let result = store.commit_messages(vec![message("bystander", n)]).await;
                        assert!(result[0].is_ok(), "bystander send {n} failed: {result:?}");
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.inbox_head("bystander").await.unwrap(), 100);
    }

    #[tokio::test]
    async fn oversized_ids_and_cursors_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let huge = "x".repeat(70_000);
        let created = store
            .create_group(NewGroup {
                name: "g".into(),
                owner: "alice".into(),
                members: vec![],
                open: false,
                client_request_id: huge.clone(),
                max_members: 10,
                now_ms: 1,
            })
            .await;
        assert!(
            matches!(created, Err(StoreError::InvalidArgument(_))),
            "{created:?}"
        );
        let group = store
            .create_group(NewGroup {
                name: "g".into(),
                owner: "alice".into(),
                members: vec![],
                open: false,
                client_request_id: String::new(),
                max_members: 10,
                now_ms: 1,
            })
            .await
            .unwrap()
            .group;
        let members = store
            .group_members(&group.group_id, 10, &"c".repeat(900_000))
            .await;
        assert!(
            matches!(members, Err(StoreError::InvalidArgument(_))),
            "{members:?}"
        );
        let listed = store.conversations("alice", 10, &huge).await;
        assert!(
            matches!(listed, Err(StoreError::InvalidArgument(_))),
            "{listed:?}"
        );
        let mut long_id = message("alice", 1);
        long_id.client_msg_id = huge.clone();
        let results = store
            .commit_messages(vec![long_id, message("alice", 2)])
            .await;
        assert!(matches!(results[0], Err(StoreError::InvalidArgument(_))));
        assert!(results[1].is_ok());
        assert!(matches!(
            store.inbox_head(&huge).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
}
