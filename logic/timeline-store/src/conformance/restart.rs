//! What a restart must keep: every record, the inbox epoch, and numbering without reuse.

use std::collections::{BTreeMap, HashSet};

use im_protocol::ids;
use im_protocol::pb;

use super::helpers::{
    all_conversations, all_members, direct, head, history, new_group, send, state, strings,
    to_group, whole_inbox,
};
use super::{StoreFactory, T0};
use crate::{ConversationState, TimelineStore};

/// Everything a client can observe, for comparing a store before and after a restart.
#[derive(Debug, PartialEq)]
struct Observed {
    inboxes: BTreeMap<String, (u64, Vec<pb::InboxEntry>)>,
    conversations: BTreeMap<String, Vec<ConversationState>>,
    timelines: BTreeMap<String, Vec<pb::Message>>,
    groups: BTreeMap<String, (pb::GroupInfo, Vec<pb::GroupMember>)>,
    cursors: BTreeMap<String, u64>,
}

async fn observe<S: TimelineStore>(
    store: &S,
    users: &[&str],
    conversations: &[String],
    groups: &[String],
) -> Observed {
    let mut observed = Observed {
        inboxes: BTreeMap::new(),
        conversations: BTreeMap::new(),
        timelines: BTreeMap::new(),
        groups: BTreeMap::new(),
        cursors: BTreeMap::new(),
    };
    for user in users {
        let entries = whole_inbox(store, user).await;
        observed
            .inboxes
            .insert((*user).to_owned(), (head(store, user).await, entries));
        observed
            .conversations
            .insert((*user).to_owned(), all_conversations(store, user).await);
        for device in ["phone", "laptop"] {
            let cursor = store
                .delivery_cursor(user, device)
                .await
                .expect("delivery_cursor");
            observed.cursors.insert(format!("{user}/{device}"), cursor);
        }
    }
    for c in conversations {
        observed
            .timelines
            .insert(c.clone(), history(store, c).await);
    }
    for g in groups {
        let info = store.group(g).await.expect("group");
        observed
            .groups
            .insert(g.clone(), (info, all_members(store, g).await));
    }
    observed
}

/// The inbox epoch is non-zero and below 2^53, survives a restart, and differs between two
/// stores created separately (a replaced store must be told apart from the original).
pub async fn the_inbox_epoch_is_kept_across_restarts_and_differs_per_store<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let epoch = store.inbox_epoch();
    assert!(epoch != 0 && epoch < 1 << 53, "epoch {epoch}");
    send(&store, direct("alice", "bob", "a1", "hi", T0)).await;
    let store = factory.reopen(store).await;
    assert_eq!(store.inbox_epoch(), epoch, "kept across a restart");
    let other = factory.open_fresh().await;
    assert_ne!(other.inbox_epoch(), epoch, "another store, another epoch");
}

/// After a restart every record is as it was, and new commits continue seqs and ids without
/// reusing any.
pub async fn everything_survives_a_restart_and_numbering_continues<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let users = ["alice", "bob", "carol"];
    let mut msg_ids = HashSet::new();
    for i in 0..6u64 {
        let m = send(
            &store,
            direct("alice", "bob", &format!("ab{i}"), "hello", T0 + i),
        )
        .await;
        msg_ids.insert(m.message.server_msg_id);
    }
    let m = send(&store, direct("carol", "alice", "ca0", "hey", T0 + 10)).await;
    msg_ids.insert(m.message.server_msg_id);
    let group = store
        .create_group(new_group("carol", &["alice", "bob"], true, "req-1", 10))
        .await
        .expect("create_group");
    let gid = group.group.group_id.clone();
    let members = strings(&["alice", "bob", "carol"]);
    let g = send(
        &store,
        to_group("bob", &gid, &members, "bg0", "to all", T0 + 20),
    )
    .await;
    msg_ids.insert(g.message.server_msg_id);
    store
        .leave_group(&gid, "carol", T0 + 21)
        .await
        .expect("leave");
    store
        .mark_read("bob", "d:alice:bob", 4, Some("alice"), T0 + 30)
        .await
        .expect("mark_read");
    store
        .recall(
            "d:alice:bob",
            6,
            "alice",
            &strings(&["alice", "bob"]),
            60_000,
            T0 + 31,
        )
        .await
        .expect("recall");
    store
        .record_delivery("bob", "phone", 7)
        .await
        .expect("record_delivery");
    store
        .record_delivery("alice", "laptop", 3)
        .await
        .expect("record_delivery");

    let conversations = vec![
        "d:alice:bob".to_owned(),
        "d:alice:carol".to_owned(),
        ids::group_conversation_id(&gid),
    ];
    let groups = vec![gid.clone()];
    let before = observe(&store, &users, &conversations, &groups).await;
    let store = factory.reopen(store).await;
    let after = observe(&store, &users, &conversations, &groups).await;
    assert!(
        before == after,
        "the store differs after a restart:\nbefore: {before:#?}\nafter: {after:#?}"
    );

    // Dedup records survived.
    let resend = send(&store, direct("alice", "bob", "ab2", "hello", T0 + 99)).await;
    assert!(
        resend.duplicate,
        "a resend after a restart is still a duplicate"
    );
    assert_eq!(resend.message.conversation_seq, 3);
    let again = store
        .create_group(new_group("carol", &["alice", "bob"], true, "req-1", 10))
        .await
        .expect("create_group");
    assert_eq!(
        again.group.group_id, gid,
        "a repeated group request after a restart returns the same group"
    );

    // Numbering continues without reuse.
    let bob_head = before.inboxes["bob"].0;
    let next = send(&store, direct("alice", "bob", "ab-new", "after", T0 + 100)).await;
    assert_eq!(
        next.message.conversation_seq, 7,
        "the conversation seq continues"
    );
    let bob_delivery = next
        .deliveries
        .iter()
        .find(|d| d.user == "bob")
        .expect("delivery to bob");
    assert_eq!(
        bob_delivery.entry.inbox_seq,
        bob_head + 1,
        "bob's inbox seq continues"
    );
    assert!(
        msg_ids.insert(next.message.server_msg_id),
        "server msg id {} reused after a restart",
        next.message.server_msg_id
    );
    let g2 = send(
        &store,
        to_group(
            "alice",
            &gid,
            &strings(&["alice", "bob"]),
            "ag1",
            "x",
            T0 + 101,
        ),
    )
    .await;
    assert_eq!(
        g2.message.conversation_seq, 2,
        "the group conversation seq continues"
    );
    assert!(
        msg_ids.insert(g2.message.server_msg_id),
        "server msg id reused after a restart"
    );
    let other = store
        .create_group(new_group("alice", &[], false, "", 10))
        .await
        .expect("create_group");
    assert_ne!(
        other.group.group_id, gid,
        "group ids are not reused after a restart"
    );

    // What was acknowledged just before a restart is there after it.
    let last = send(
        &store,
        direct("carol", "bob", "cb0", "last words", T0 + 200),
    )
    .await;
    store
        .record_delivery("bob", "phone", 9)
        .await
        .expect("record_delivery");
    let store = factory.reopen(store).await;
    assert_eq!(
        history(&store, "d:bob:carol").await,
        vec![last.message],
        "the last commit survived"
    );
    assert_eq!(
        store
            .delivery_cursor("bob", "phone")
            .await
            .expect("delivery_cursor"),
        9
    );
    let bob = whole_inbox(&store, "bob").await;
    assert_eq!(bob.len() as u64, head(&store, "bob").await);
    assert_eq!(
        state(&store, "bob", "d:alice:bob").await.read_seq,
        4,
        "read markers survive"
    );
}
