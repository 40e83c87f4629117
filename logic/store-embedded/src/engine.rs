//! The engine's lifecycle: the fjall database and its keyspaces, the writer thread, and the
//! health thread that watches free space and reopens a database whose commit failed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use fjall::{KeyspaceCreateOptions, PersistMode, SingleWriterTxDatabase, SingleWriterTxKeyspace};
use tokio::sync::mpsc;

use crate::writer::{self, Job};
use crate::{EmbeddedError, EmbeddedOptions, SyncMode};

/// Free space a failed store waits for before it reopens, even with no reserve configured.
const REOPEN_MIN_FREE_BYTES: u64 = 1 << 20;

/// How often free space is measured, and a failed store is tried again.
const HEALTH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// Handles of every keyspace.
#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub(crate) timelines: SingleWriterTxKeyspace,
    pub(crate) inboxes: SingleWriterTxKeyspace,
    pub(crate) dedup: SingleWriterTxKeyspace,
    pub(crate) states: SingleWriterTxKeyspace,
    pub(crate) groups: SingleWriterTxKeyspace,
    pub(crate) members: SingleWriterTxKeyspace,
    pub(crate) group_requests: SingleWriterTxKeyspace,
    pub(crate) delivery: SingleWriterTxKeyspace,
    pub(crate) counters: SingleWriterTxKeyspace,
    /// User + conversation + seq -> nothing: the messages a user deleted for themself.
    pub(crate) hidden: SingleWriterTxKeyspace,
    /// User + setting name -> value: push registrations, muted conversations.
    pub(crate) settings: SingleWriterTxKeyspace,
    /// User + group id -> nothing: the read-fan-out groups a user is a member of.
    pub(crate) read_groups: SingleWriterTxKeyspace,
}

impl Keyspaces {
    pub(crate) fn open(db: &SingleWriterTxDatabase) -> fjall::Result<Keyspaces> {
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
            settings: open("settings")?,
            read_groups: open("read_groups")?,
        })
    }

    /// Every keyspace, in a fixed order: a keyspace's index here is its slot in the writer's
    /// pending writes.
    fn all(&self) -> [&SingleWriterTxKeyspace; Keyspaces::COUNT] {
        [
            &self.timelines,
            &self.inboxes,
            &self.dedup,
            &self.states,
            &self.groups,
            &self.members,
            &self.group_requests,
            &self.delivery,
            &self.counters,
            &self.hidden,
            &self.settings,
            &self.read_groups,
        ]
    }

    /// How many keyspaces there are.
    pub(crate) const COUNT: usize = 12;

    /// The slot of `keyspace`, which must be one of these fields (compared by address: the
    /// writer only ever passes `&self.<field>`).
    pub(crate) fn slot_of(&self, keyspace: &SingleWriterTxKeyspace) -> usize {
        self.all()
            .iter()
            .position(|k| std::ptr::eq(*k, keyspace))
            .expect("a keyspace of this database")
    }

    /// The keyspace at `slot`.
    pub(crate) fn by_slot(&self, slot: usize) -> &SingleWriterTxKeyspace {
        self.all()[slot]
    }
}

/// The open database. Replaced as a whole when the store reopens after a failed commit.
pub(crate) struct Engine {
    pub(crate) db: SingleWriterTxDatabase,
    pub(crate) ks: Keyspaces,
}

pub(crate) struct Inner {
    /// See [`timeline_store::TimelineStore::inbox_epoch`].
    pub(crate) inbox_epoch: u64,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) options: EmbeddedOptions,
    /// Group commits made durable since open (see [`crate::EmbeddedStore::group_commits`]).
    pub(crate) commits: Arc<AtomicU64>,
    /// The database reads use; `None` only while it is being reopened.
    pub(crate) engine: RwLock<Option<Arc<Engine>>>,
    /// The writer's queue; `None` once closed, and while reopening.
    pub(crate) queue: RwLock<Option<mpsc::Sender<Job>>>,
    pub(crate) writer: Mutex<Option<JoinHandle<()>>>,
    /// A commit failed (a full disk, an I/O error): fjall accepts no further writes on this
    /// database. The health thread reopens it once there is room again.
    pub(crate) broken: Arc<AtomicBool>,
    /// Free bytes on the data directory's filesystem, as last measured.
    pub(crate) free_bytes: AtomicU64,
    pub(crate) closed: AtomicBool,
}

impl Inner {
    /// Stops taking mutations and waits until the writer has committed what was queued.
    pub(crate) fn stop_writer(&self) -> Result<(), EmbeddedError> {
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
    pub(crate) fn measure_free_space(&self) -> u64 {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(_) => u64::MAX,
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        free
    }

    pub(crate) fn low_on_space(&self) -> bool {
        self.free_bytes.load(Ordering::Relaxed) < self.options.min_free_bytes
    }

    /// Replaces a database that refuses writes by a freshly opened one (fjall recovers it
    /// from its journal, so everything committed is kept). Readers wait out the swap.
    pub(crate) fn reopen(&self) -> Result<(), EmbeddedError> {
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
pub(crate) fn start_engine(
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
pub(crate) fn watch_health(inner: std::sync::Weak<Inner>) {
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
