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
//! up to `max_batch` queued operations, runs them against a snapshot plus the drain's own
//! pending writes, and commits those as one fjall batch with a single fsync before answering
//! any of them. A full queue makes callers wait (backpressure) instead of growing memory.
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
//!
//! # Code map
//! `engine` opens the database and runs the writer and health threads; `calls` carries a
//! mutation to the writer or a read to a snapshot; `timeline` implements [`TimelineStore`] over
//! them; `writer` and `read` do the work; `epoch` keeps the inbox epoch.
//!
//! [`TimelineStore`]: timeline_store::TimelineStore

mod calls;
mod engine;
mod epoch;
mod keys;
pub mod metrics;
mod read;
mod records;
mod timeline;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use timeline_store::InboxRetention;

use crate::engine::{Inner, start_engine, watch_health};
use crate::epoch::load_or_create_epoch;
pub use crate::epoch::renew_inbox_epoch;

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

    pub(crate) fn inbox_epoch_value(&self) -> u64 {
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

    /// Whether the store takes writes: open, and its last group commit did not fail (a failed
    /// one is retried by reopening the engine, see `engine`).
    pub fn is_healthy(&self) -> bool {
        !self.inner.broken.load(Ordering::Acquire) && !self.inner.closed.load(Ordering::Acquire)
    }

    /// Free bytes on the data directory's filesystem, as last measured (every few seconds).
    pub fn free_bytes(&self) -> u64 {
        self.inner.free_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the store's files take on disk (journals and tables), summed now.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(kind) if kind.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.inner.dir)
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
}

#[cfg(test)]
mod tests;
