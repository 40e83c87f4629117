//! The backend-independent conformance suite, run against the embedded store (one fresh
//! temporary directory per check), plus the embedded store's own restart and batching tests.

use std::path::PathBuf;

use store_embedded::{EmbeddedOptions, EmbeddedStore};
use tempfile::TempDir;
use timeline_store::conformance::{self, StoreFactory};
use timeline_store::{InboxRetention, NewMessage, TimelineStore};

/// Shows the store's logs when a test fails (`RUST_LOG=debug cargo test ...`).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        cache_bytes: 8 << 20,
        worker_threads: 1,
        ..EmbeddedOptions::default()
    }
}

/// Opens stores in temporary directories that live as long as the factory.
struct TempDirs {
    dirs: Vec<TempDir>,
}

impl TempDirs {
    fn new() -> TempDirs {
        init_tracing();
        TempDirs { dirs: Vec::new() }
    }
}

impl StoreFactory for TempDirs {
    type Store = EmbeddedStore;

    fn open_fresh(&mut self) -> impl Future<Output = EmbeddedStore> + Send {
        self.open_with_retention(InboxRetention::UNLIMITED)
    }

    fn open_with_retention(
        &mut self,
        retention: InboxRetention,
    ) -> impl Future<Output = EmbeddedStore> + Send {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let path = dir.path().to_owned();
        self.dirs.push(dir);
        let options = EmbeddedOptions {
            inbox_retention: retention,
            ..options()
        };
        async move { EmbeddedStore::open(&path, options).expect("cannot open a fresh store") }
    }

    async fn reopen(&mut self, store: EmbeddedStore) -> EmbeddedStore {
        let path: PathBuf = store.dir().to_owned();
        let options = EmbeddedOptions {
            inbox_retention: store.inbox_retention(),
            ..options()
        };
        store
            .close()
            .await
            .expect("the store did not close cleanly");
        EmbeddedStore::open(&path, options).expect("cannot reopen the store")
    }
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            conformance::$check(&mut TempDirs::new()).await;
        }
    )*};
}

timeline_store::for_each_check!(conformance_tests);

fn message(sender: &str, peer: &str, id: &str) -> NewMessage {
    let mut recipients = vec![sender.to_owned(), peer.to_owned()];
    recipients.sort();
    NewMessage {
        conversation_id: im_protocol::ids::direct_conversation_id(sender, peer),
        kind: im_protocol::pb::ConversationKind::Direct,
        sender_user: sender.into(),
        sender_device: "phone".into(),
        client_msg_id: id.into(),
        content_type: 0,
        content: b"hello".to_vec(),
        recipients,
        now_ms: 1_700_000_000_000,
    }
}

/// Dropping the last handle (no `close`) flushes the writer and releases the files, and a new
/// open of the same directory sees everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_and_opening_the_directory_again_keeps_the_data() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let first = store
        .commit_messages(vec![message("alice", "bob", "m1")])
        .await;
    let first = first
        .into_iter()
        .next()
        .expect("one result")
        .expect("commit");
    store
        .record_delivery("bob", "phone", 1)
        .await
        .expect("record_delivery");
    drop(store);

    let store = EmbeddedStore::open(dir.path(), options()).expect("reopen after drop");
    let page = store.read_inbox("bob", 1, 0, 10).await.expect("read_inbox");
    assert_eq!(page.head_seq, 1);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(
        store.delivery_cursor("bob", "phone").await.expect("cursor"),
        1
    );
    let again = store
        .commit_messages(vec![message("alice", "bob", "m1")])
        .await;
    let again = again
        .into_iter()
        .next()
        .expect("one result")
        .expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
}

/// Concurrent mutations share fsyncs: far fewer group commits than messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_group_commits() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let m = message(&format!("u{t}"), "hub", &format!("m{i}"));
                let result = store.commit_messages(vec![m]).await;
                assert!(result.into_iter().all(|r| r.is_ok()), "commit failed");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    let commits = store.group_commits();
    assert_eq!(store.inbox_head("hub").await.expect("head"), 640);
    assert!(
        commits < 640 / 2,
        "{commits} group commits for 640 messages: batching is not working"
    );
}

/// Another open of a directory that is in use is refused, not silently shared.
#[tokio::test]
async fn a_directory_in_use_cannot_be_opened_twice() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = EmbeddedStore::open(dir.path(), options()).expect("open");
    assert!(EmbeddedStore::open(dir.path(), options()).is_err());
}

/// After `close`, mutations fail with `Closed` instead of hanging.
#[tokio::test]
async fn mutations_after_close_fail_with_closed() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), options()).expect("open");
    let other = store.clone();
    store.close().await.expect("close");
    let result = other.record_delivery("a", "b", 1).await;
    assert!(
        matches!(result, Err(timeline_store::StoreError::Closed)),
        "{result:?}"
    );
}
