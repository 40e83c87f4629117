//! Tests of what only this store can get wrong: drain isolation and key lengths.

use im_protocol::pb::ConversationKind;
use timeline_store::{NewGroup, NewMessage, StoreError, StoreResult, TimelineStore};

use crate::{EmbeddedOptions, EmbeddedStore};

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
            read_fanout: false,
            broadcast: false,
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
            read_fanout: false,
            broadcast: false,
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
