//! The inbox epoch (SPEC §10.8): chosen when the store's data is created, kept for its
//! lifetime, and renewed by operators after a restore.

use std::path::Path;

use fjall::{PersistMode, SingleWriterTxDatabase};

use crate::engine::Keyspaces;
use crate::{EmbeddedError, keys};

/// Where the inbox epoch is kept, in the `counters` keyspace.
const INBOX_EPOCH_KEY: &[u8] = b"inbox_epoch";

/// Reads the store's inbox epoch, choosing and durably storing one when the store is new (or
/// was written by a version that had none).
pub(crate) fn load_or_create_epoch(
    db: &SingleWriterTxDatabase,
    ks: &Keyspaces,
) -> fjall::Result<u64> {
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
