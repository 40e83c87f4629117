//! Arguments the store refuses: ids and cursors far beyond any protocol limit, and malformed
//! ids. The logic tier validates what it can, but a store must never panic or fail as a
//! backend error on what it is handed: it answers `InvalidArgument`, stores nothing for the
//! refused call, and a refused message does not fail the others of its call.

use std::fmt::Debug;

use im_protocol::pb;

use super::helpers::{direct, head, new_group, send, strings};
use super::{StoreFactory, T0};
use crate::{NewGroup, StoreError, TimelineStore};

/// Asserts that `result` is an `InvalidArgument` refusal.
fn refused<T: Debug>(what: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::InvalidArgument(_))),
        "{what}: expected InvalidArgument, got {result:?}"
    );
}

/// Ids, cursors and idempotency keys of 70,000 bytes (beyond any engine's key limit) are
/// refused as invalid arguments by every call that takes them, and change nothing.
pub async fn far_too_long_ids_and_cursors_are_refused_as_invalid_arguments<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let huge = "x".repeat(70_000);
    let huge_conversation = format!("d:a:{huge}");
    send(&store, direct("alice", "bob", "a1", "hi", T0)).await;
    let gid = store
        .create_group(new_group("alice", &["bob"], true, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    let heads = (head(&store, "alice").await, head(&store, "bob").await);

    let mut long_id = direct("alice", "bob", &huge, "hi", T0 + 1);
    long_id.client_msg_id = huge.clone();
    let mut long_recipient = direct("alice", "bob", "a2", "hi", T0 + 1);
    long_recipient.recipients.push(huge.clone());
    let results = store
        .commit_messages(vec![
            long_id,
            long_recipient,
            direct("alice", "bob", "a3", "fine", T0 + 1),
        ])
        .await;
    assert_eq!(results.len(), 3, "one result per message");
    let [long_id, long_recipient, fine] = <[_; 3]>::try_from(results).expect("three results");
    refused("a 70,000-byte client msg id", long_id);
    refused("a 70,000-byte recipient", long_recipient);
    let fine = fine.expect("a good message of the same call is stored");
    assert_eq!(
        fine.message.conversation_seq, 2,
        "the refused ones took no seq"
    );

    refused("inbox_head", store.inbox_head(&huge).await);
    refused("read_inbox", store.read_inbox(&huge, 0, 0, 10).await);
    refused(
        "read_history",
        store
            .read_history(&huge_conversation, 0, pb::HistoryDirection::Older, 10)
            .await,
    );
    refused(
        "conversations of a long user",
        store.conversations(&huge, 10, "").await,
    );
    refused(
        "a long conversation cursor",
        store.conversations("alice", 10, &huge).await,
    );
    refused(
        "conversation",
        store.conversation(&huge, "d:alice:bob").await,
    );
    refused(
        "mark_read",
        store.mark_read(&huge, "d:alice:bob", 1, None, T0 + 2).await,
    );
    refused(
        "recall in a long conversation id",
        store
            .recall(
                &huge_conversation,
                1,
                "alice",
                &strings(&["alice"]),
                60_000,
                T0 + 2,
            )
            .await,
    );
    refused(
        "delete_messages",
        store
            .delete_messages(&huge, "d:alice:bob", &[1], T0 + 2)
            .await,
    );
    refused(
        "record_delivery",
        store.record_delivery("alice", &huge, 1).await,
    );
    refused(
        "delivery_cursor",
        store.delivery_cursor("alice", &huge).await,
    );

    let group = |owner: &str, request: &str| NewGroup {
        client_request_id: request.to_owned(),
        ..new_group(owner, &["bob"], false, "", 10)
    };
    refused(
        "a long client request id",
        store.create_group(group("alice", &huge)).await,
    );
    refused("a long owner", store.create_group(group(&huge, "r1")).await);
    refused("group", store.group(&huge).await);
    refused("member_ids", store.member_ids(&huge).await);
    refused(
        "group_members of a long group id",
        store.group_members(&huge, 10, "").await,
    );
    refused(
        "a long member cursor",
        store.group_members(&gid, 10, &huge).await,
    );
    refused("is_member", store.is_member(&gid, &huge).await);
    refused(
        "add_members to a long group id",
        store
            .add_members(&huge, "alice", &strings(&["carol"]), 10, T0 + 2)
            .await,
    );
    refused(
        "add_members of a long user",
        store
            .add_members(&gid, "alice", std::slice::from_ref(&huge), 10, T0 + 2)
            .await,
    );
    refused(
        "join_group",
        store.join_group(&gid, &huge, 10, T0 + 2).await,
    );
    refused("leave_group", store.leave_group(&gid, &huge, T0 + 2).await);

    // A group created, a member added or a marker moved would have appended to these inboxes.
    assert_eq!(
        (head(&store, "alice").await, head(&store, "bob").await),
        (heads.0 + 1, heads.1 + 1),
        "only the good message was appended"
    );
    assert_eq!(
        store.member_ids(&gid).await.expect("member_ids"),
        strings(&["alice", "bob"]),
        "the group is unchanged"
    );
}

/// Malformed conversation ids, user ids outside the id charset and cursors the store never
/// handed out are refused as invalid arguments; a refused message fails alone, and a refused
/// recall recalls nothing.
pub async fn malformed_ids_and_cursors_are_refused_as_invalid_arguments<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let original = send(&store, direct("alice", "bob", "a1", "hi", T0)).await;
    let bob_head = head(&store, "bob").await;

    let mut reversed = direct("alice", "bob", "a2", "hi", T0 + 1);
    reversed.conversation_id = "d:bob:alice".into();
    let mut unknown_kind = direct("alice", "bob", "a3", "hi", T0 + 1);
    unknown_kind.conversation_id = "x:alice".into();
    let mut no_sender = direct("alice", "bob", "a4", "hi", T0 + 1);
    no_sender.sender_user = String::new();
    let mut bad_recipient = direct("alice", "bob", "a5", "hi", T0 + 1);
    bad_recipient.recipients.push("not a user".into());
    let results = store
        .commit_messages(vec![
            reversed,
            unknown_kind,
            no_sender,
            bad_recipient,
            direct("alice", "bob", "a6", "fine", T0 + 1),
        ])
        .await;
    assert_eq!(results.len(), 5, "one result per message");
    let mut results = results.into_iter();
    for what in [
        "a direct id out of canonical order",
        "an unknown conversation kind",
        "an empty sender",
        "a recipient outside the id charset",
    ] {
        refused(what, results.next().expect("a result"));
    }
    let fine = results
        .next()
        .expect("a result")
        .expect("a good message of the same call is stored");
    assert_eq!(fine.message.conversation_seq, 2);
    assert_eq!(
        head(&store, "bob").await,
        bob_head + 1,
        "only a6 reached bob"
    );

    refused(
        "delete in a malformed conversation",
        store
            .delete_messages("bob", "d:bob:alice", &[1], T0 + 2)
            .await,
    );
    refused(
        "delete by an invalid user",
        store.delete_messages("", "d:alice:bob", &[1], T0 + 2).await,
    );
    refused(
        "a conversation cursor the store never handed out",
        store.conversations("alice", 10, "zz").await,
    );
    refused(
        "a recall to an invalid recipient",
        store
            .recall(
                "d:alice:bob",
                1,
                "alice",
                &strings(&["alice", "bob", "no:colons"]),
                60_000,
                T0 + 2,
            )
            .await,
    );
    let page = store
        .read_history("d:alice:bob", 0, pb::HistoryDirection::Newer, 10)
        .await
        .expect("read_history");
    assert_eq!(
        page.messages[0], original.message,
        "a refused recall recalls nothing"
    );
    refused(
        "a group created by an invalid owner",
        store
            .create_group(new_group("", &["bob"], false, "", 10))
            .await,
    );
    refused(
        "a group created with an invalid member",
        store
            .create_group(new_group("alice", &["b o b"], false, "", 10))
            .await,
    );
    let gid = store
        .create_group(new_group("alice", &[], true, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    refused(
        "an invalid user joining",
        store.join_group(&gid, "", 10, T0 + 3).await,
    );
    assert_eq!(
        store.member_ids(&gid).await.expect("member_ids"),
        strings(&["alice"])
    );
}
