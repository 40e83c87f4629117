//! Unread counts and read markers: what a send does to each recipient's state, and how
//! `mark_read` moves the marker, recomputes the count, syncs it and sends receipts.

use im_protocol::ids;
use im_protocol::pb::{self, inbox_entry::Body};

use super::helpers::{direct, head, new_group, send, state, strings, to_group};
use super::{StoreFactory, T0};
use crate::{StoreError, TimelineStore};

/// Unread counts rise for every recipient but the sender; states carry the last message.
pub async fn unread_counts_rise_for_recipients_but_not_the_sender<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    for i in 0..3 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "hi", T0 + i),
        )
        .await;
    }
    let last = send(&store, direct("bob", "alice", "b0", "yo", T0 + 10)).await;
    let bob = state(&store, "bob", "d:alice:bob").await;
    let alice = state(&store, "alice", "d:alice:bob").await;
    assert_eq!(
        (bob.unread_count, alice.unread_count),
        (3, 1),
        "unread counts of bob and alice"
    );
    for (who, s) in [("bob", &bob), ("alice", &alice)] {
        assert_eq!(s.conversation_id, "d:alice:bob");
        assert_eq!(s.kind, pb::ConversationKind::Direct, "{who}'s kind");
        assert_eq!(s.last_seq, 4, "{who}'s last seq");
        assert_eq!(
            s.read_seq, 0,
            "{who}'s read marker does not move by sending"
        );
        assert_eq!(
            s.last_message.as_ref(),
            Some(&last.message),
            "{who}'s last message"
        );
        assert_eq!(s.updated_ms, T0 + 10, "{who}'s updated_ms");
    }
    assert_eq!((bob.peer.as_str(), alice.peer.as_str()), ("alice", "bob"));

    let group = store
        .create_group(new_group("olga", &["amy", "ben"], false, "", 10))
        .await
        .expect("create_group failed");
    let gid = group.group.group_id;
    let members = strings(&["amy", "ben", "olga"]);
    for i in 0..2 {
        send(
            &store,
            to_group("olga", &gid, &members, &format!("g{i}"), "hey", T0 + 20 + i),
        )
        .await;
    }
    let conversation_id = ids::group_conversation_id(&gid);
    for (user, unread) in [("olga", 0), ("amy", 2), ("ben", 2)] {
        let s = state(&store, user, &conversation_id).await;
        assert_eq!(s.unread_count, unread, "{user}'s unread count in the group");
        assert_eq!(
            s.peer, gid,
            "{user}'s peer of a group conversation is the group id"
        );
        assert_eq!(s.kind, pb::ConversationKind::Group);
    }
}

/// `mark_read` moves the marker only forward, clamps it to the last seq, and recomputes the
/// unread count exactly.
pub async fn mark_read_recomputes_unread_and_only_moves_forward<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    // seqs 1, 2 from alice; 3 from bob; 4, 5 from alice.
    send(&store, direct("alice", "bob", "a1", "1", T0)).await;
    send(&store, direct("alice", "bob", "a2", "2", T0 + 1)).await;
    send(&store, direct("bob", "alice", "b3", "3", T0 + 2)).await;
    send(&store, direct("alice", "bob", "a4", "4", T0 + 3)).await;
    send(&store, direct("alice", "bob", "a5", "5", T0 + 4)).await;
    assert_eq!(state(&store, "bob", c).await.unread_count, 4);

    let (s, deliveries) = store
        .mark_read("bob", c, 2, None, T0 + 100)
        .await
        .expect("mark_read");
    assert_eq!(
        (s.read_seq, s.unread_count),
        (2, 2),
        "bob read to 2: seqs 4 and 5 are unread, 3 is his own"
    );
    assert_eq!(
        deliveries.len(),
        1,
        "a moved marker is synced to the reader's devices"
    );

    let bob_head = head(&store, "bob").await;
    let (s, deliveries) = store
        .mark_read("bob", c, 1, None, T0 + 101)
        .await
        .expect("mark_read");
    assert_eq!(
        (s.read_seq, s.unread_count),
        (2, 2),
        "a lower read seq leaves the marker"
    );
    assert!(deliveries.is_empty(), "an unmoved marker delivers nothing");
    assert_eq!(
        head(&store, "bob").await,
        bob_head,
        "an unmoved marker appends nothing"
    );

    let (s, _) = store
        .mark_read("bob", c, 1_000, None, T0 + 102)
        .await
        .expect("mark_read");
    assert_eq!(
        (s.read_seq, s.unread_count),
        (5, 0),
        "the marker is clamped to the last seq"
    );
    let (s, deliveries) = store
        .mark_read("bob", c, 5, None, T0 + 103)
        .await
        .expect("mark_read");
    assert_eq!(s.read_seq, 5);
    assert!(
        deliveries.is_empty(),
        "marking the same seq again changes nothing"
    );
    assert_eq!(
        state(&store, "bob", c).await.read_seq,
        5,
        "the marker is stored"
    );

    let (s, _) = store
        .mark_read("alice", c, 2, None, T0 + 104)
        .await
        .expect("mark_read");
    assert_eq!(
        (s.read_seq, s.unread_count),
        (2, 1),
        "alice has bob's seq 3 unread"
    );
    send(&store, direct("bob", "alice", "b6", "6", T0 + 200)).await;
    assert_eq!(
        state(&store, "alice", c).await.unread_count,
        2,
        "new messages add to the recomputed count"
    );
    assert_eq!(
        state(&store, "bob", c).await.unread_count,
        0,
        "the sender's count stays"
    );

    let missing = store.mark_read("carol", c, 1, None, T0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "no state: {missing:?}"
    );
}

/// A moved marker is synced to the reader's inbox, sent as a receipt to `receipt_to`, and
/// recorded as the peer's `peer_read_seq`.
pub async fn mark_read_syncs_the_marker_and_sends_a_receipt<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    for i in 0..4 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "x", T0 + i),
        )
        .await;
    }
    let (bob_head, alice_head) = (head(&store, "bob").await, head(&store, "alice").await);
    let (s, deliveries) = store
        .mark_read("bob", c, 3, Some("alice"), T0 + 50)
        .await
        .expect("mark_read");
    assert_eq!((s.read_seq, s.unread_count), (3, 1));
    assert_eq!(
        deliveries.len(),
        2,
        "marker sync to bob and receipt to alice: {deliveries:?}"
    );
    let sync = deliveries
        .iter()
        .find(|d| d.user == "bob")
        .expect("a delivery to bob");
    assert_eq!(sync.entry.inbox_seq, bob_head + 1);
    assert_eq!(
        sync.entry.body,
        Some(Body::ReadMarker(pb::ReadMarkerSync {
            conversation_id: c.into(),
            read_seq: 3,
            unread_count: 1
        }))
    );
    let receipt = deliveries
        .iter()
        .find(|d| d.user == "alice")
        .expect("a delivery to alice");
    assert_eq!(receipt.entry.inbox_seq, alice_head + 1);
    assert_eq!(
        receipt.entry.body,
        Some(Body::ReadReceipt(pb::ReadReceipt {
            conversation_id: c.into(),
            reader_user: "bob".into(),
            read_seq: 3,
            server_time_ms: T0 + 50
        }))
    );
    for delivery in &deliveries {
        let page = store
            .read_inbox(&delivery.user, delivery.entry.inbox_seq, 0, 10)
            .await
            .expect("read_inbox");
        assert_eq!(
            page.entries,
            vec![delivery.entry.clone()],
            "{}'s stored entry",
            delivery.user
        );
    }
    assert_eq!(
        state(&store, "alice", c).await.peer_read_seq,
        3,
        "alice sees bob's marker"
    );
    assert_eq!(
        state(&store, "bob", c).await.updated_ms,
        T0 + 50,
        "a moved marker updates the state's time"
    );

    let (_, deliveries) = store
        .mark_read("bob", c, 4, None, T0 + 60)
        .await
        .expect("mark_read");
    assert_eq!(
        deliveries.len(),
        1,
        "without receipt_to only the marker sync: {deliveries:?}"
    );
    assert_eq!(deliveries[0].user, "bob");
    assert_eq!(
        state(&store, "alice", c).await.peer_read_seq,
        3,
        "no receipt, no peer marker change"
    );
}

/// Unread counts follow the seqs: a recalled message, and one the reader deleted for
/// themself, still count as unread until the read marker passes them (recomputing the count
/// on `mark_read` included).
pub async fn recalled_and_deleted_messages_count_as_unread_until_read<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    for i in 1..=4u64 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "x", T0 + i),
        )
        .await;
    }
    store
        .recall(c, 3, "alice", &strings(&["alice", "bob"]), 60_000, T0 + 10)
        .await
        .expect("recall");
    store
        .delete_messages("bob", c, &[4], T0 + 11)
        .await
        .expect("delete");
    assert_eq!(
        state(&store, "bob", c).await.unread_count,
        4,
        "neither the recall nor the delete changed the count"
    );
    let (s, deliveries) = store
        .mark_read("bob", c, 1, None, T0 + 12)
        .await
        .expect("mark_read");
    assert_eq!(
        (s.read_seq, s.unread_count),
        (1, 3),
        "2, the recalled 3 and the deleted 4 are unread"
    );
    assert_eq!(
        deliveries[0].entry.body,
        Some(Body::ReadMarker(pb::ReadMarkerSync {
            conversation_id: c.into(),
            read_seq: 1,
            unread_count: 3,
        })),
        "the synced count is the recomputed one"
    );
    assert_eq!(
        s.last_message.map(|m| m.conversation_seq),
        Some(3),
        "the state mark_read returns shows the newest message bob did not delete"
    );
    let (s, _) = store
        .mark_read("bob", c, 4, None, T0 + 13)
        .await
        .expect("mark_read");
    assert_eq!((s.read_seq, s.unread_count), (4, 0));
}
