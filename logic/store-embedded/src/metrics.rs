//! What the store counts, through the `metrics` facade (a no-op unless the process installed a
//! recorder; the server's admin listener does).

/// Seconds one group commit took to write and fsync.
pub const COMMIT_SECONDS: &str = "im_store_commit_seconds";
/// Operations (sends, read markers, group changes, …) in one group commit.
pub const COMMIT_JOBS: &str = "im_store_commit_size";
