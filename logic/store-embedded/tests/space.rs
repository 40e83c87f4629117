//! The free-space reserve: below it, writes that grow the store are refused with the
//! retryable `StorageFull` before they reach the engine, and reads go on.

use store_embedded::{EmbeddedOptions, EmbeddedStore};
use timeline_store::{NewMessage, StoreError, TimelineStore};

fn message(id: &str) -> NewMessage {
    NewMessage {
        conversation_id: im_protocol::ids::direct_conversation_id("alice", "bob"),
        kind: im_protocol::pb::ConversationKind::Direct,
        sender_user: "alice".into(),
        sender_device: "phone".into(),
        client_msg_id: id.into(),
        content_type: 0,
        content: b"hello".to_vec(),
        recipients: vec!["alice".into(), "bob".into()],
        now_ms: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn below_the_reserve_sends_are_refused_as_storage_full_and_reads_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = EmbeddedOptions {
        cache_bytes: 8 << 20,
        worker_threads: 1,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), small.clone()).expect("open");

    let stored = store.commit_messages(vec![message("m1")]).await;
    assert!(stored[0].is_ok(), "{stored:?}");
    store.close().await.expect("close");

    // No filesystem has this much free space: always below the reserve.
    let store = EmbeddedStore::open(
        dir.path(),
        EmbeddedOptions {
            min_free_bytes: u64::MAX,
            ..small
        },
    )
    .expect("reopen");

    let refused = store.commit_messages(vec![message("m2")]).await;
    assert!(
        matches!(refused[..], [Err(StoreError::Full)]),
        "{refused:?}"
    );
    assert_eq!(
        StoreError::Full.code(),
        im_protocol::pb::ErrorCode::Unavailable
    );
    // Reads still work, and nothing of the refused send was written.
    let page = store.read_inbox("bob", 1, 0, 10).await.expect("read inbox");
    assert_eq!(page.entries.len(), 1);
    assert_eq!(store.inbox_head("bob").await.expect("head"), 1);
}
