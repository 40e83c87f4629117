//! Inboxes: reading ranges, retention by count and by age, and delivery cursors.

use super::helpers::{direct, head, history, message_of, send};
use super::{ALL, StoreFactory, T0};
use crate::{InboxRetention, TimelineStore};

/// Inbox retention by count (SPEC §10.4): each append beyond the limit removes the oldest
/// entry, reads report the lowest retained seq, seqs keep counting, and a restart changes none
/// of it.
pub async fn inbox_retention_by_count_keeps_the_newest_entries<F: StoreFactory>(factory: &mut F) {
    let store = factory
        .open_with_retention(InboxRetention {
            max_entries: 5,
            max_age_ms: 0,
        })
        .await;
    for i in 1..=8u64 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "hi", T0 + i),
        )
        .await;
    }
    let page = store
        .read_inbox("bob", 1, 0, ALL)
        .await
        .expect("read_inbox");
    assert_eq!(page.head_seq, 8);
    assert_eq!(page.oldest_seq, 4, "the 5 newest of 8 entries are kept");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.inbox_seq).collect();
    assert_eq!(
        seqs,
        vec![4, 5, 6, 7, 8],
        "a read from seq 1 starts at the oldest kept"
    );
    assert_eq!(
        history(&store, "d:alice:bob").await.len(),
        8,
        "retention trims inboxes, not conversation history"
    );

    let store = factory.reopen(store).await;
    assert_eq!(
        head(&store, "bob").await,
        8,
        "the head survives trimming and a restart"
    );
    let next = send(&store, direct("alice", "bob", "a9", "hi", T0 + 9)).await;
    let bob_seq = next
        .deliveries
        .iter()
        .find(|d| d.user == "bob")
        .map(|d| d.entry.inbox_seq);
    assert_eq!(bob_seq, Some(9), "seqs continue; none is handed out again");
    let page = store
        .read_inbox("bob", 0, 0, ALL)
        .await
        .expect("read_inbox");
    assert_eq!((page.oldest_seq, page.entries.len()), (5, 5));
    assert_eq!(
        store.sweep_inbox_retention(T0 + 100).await.expect("sweep"),
        0,
        "appends already keep the count; a sweep finds nothing"
    );
}

/// Inbox retention by age (SPEC §10.4): a sweep removes the entries appended longer ago than
/// the limit, never an inbox's newest entry, and leaves younger entries and other inboxes.
pub async fn inbox_retention_by_age_trims_old_entries_on_a_sweep<F: StoreFactory>(factory: &mut F) {
    let store = factory
        .open_with_retention(InboxRetention {
            max_entries: 0,
            max_age_ms: 1_000,
        })
        .await;
    send(&store, direct("alice", "bob", "a1", "old", T0)).await;
    send(&store, direct("alice", "bob", "a2", "old", T0 + 10)).await;
    store
        .mark_read("bob", "d:alice:bob", 2, Some("alice"), T0 + 20)
        .await
        .expect("mark_read");
    send(&store, direct("alice", "bob", "a3", "young", T0 + 2_000)).await;
    send(&store, direct("carol", "dave", "c1", "old", T0)).await;
    // bob: 1 (T0), 2 (T0+10), 3 marker (T0+20), 4 (T0+2000); alice: 1, 2, 3 receipt, 4.
    assert_eq!(
        store.sweep_inbox_retention(T0 + 500).await.expect("sweep"),
        0,
        "nothing is older than 1 s yet"
    );
    let removed = store
        .sweep_inbox_retention(T0 + 1_500)
        .await
        .expect("sweep");
    let bob = store
        .read_inbox("bob", 1, 0, ALL)
        .await
        .expect("read_inbox");
    assert_eq!(
        bob.oldest_seq, 4,
        "entries appended before T0 + 500 are gone"
    );
    assert_eq!(bob.entries.len(), 1);
    assert_eq!(
        message_of(&bob.entries[0]).map(|m| m.conversation_seq),
        Some(3),
        "the young message stays"
    );
    let carol = store
        .read_inbox("carol", 1, 0, ALL)
        .await
        .expect("read_inbox");
    assert_eq!(
        (carol.oldest_seq, carol.head_seq, carol.entries.len()),
        (1, 1, 1),
        "an inbox's newest entry is never removed, however old"
    );
    assert_eq!(removed, 6, "3 of bob's and 3 of alice's entries");

    let store = factory.reopen(store).await;
    store
        .sweep_inbox_retention(T0 + 1_000_000)
        .await
        .expect("sweep");
    let bob = store
        .read_inbox("bob", 1, 0, ALL)
        .await
        .expect("read_inbox");
    assert_eq!(
        (bob.oldest_seq, bob.head_seq),
        (4, 4),
        "the head entry stays"
    );
    let next = send(&store, direct("alice", "bob", "a4", "new", T0 + 1_000_001)).await;
    assert!(
        next.deliveries
            .iter()
            .any(|d| d.user == "bob" && d.entry.inbox_seq == 5),
        "seqs continue after a sweep and a restart"
    );
}

/// `read_inbox` returns the durable entries within `[from, to]`, at most `limit`, and the head.
pub async fn read_inbox_honours_from_to_and_limit<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    for i in 1..=10u64 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "x", T0 + i),
        )
        .await;
    }
    let cases: [(u64, u64, u32, Vec<u64>); 7] = [
        (0, 0, 100, (1..=10).collect()),
        (1, 0, 3, vec![1, 2, 3]),
        (4, 0, 3, vec![4, 5, 6]),
        (4, 5, 10, vec![4, 5]),
        (8, 20, 10, vec![8, 9, 10]),
        (11, 0, 10, vec![]),
        (7, 7, 10, vec![7]),
    ];
    for (from, to, limit, want) in cases {
        let page = store
            .read_inbox("bob", from, to, limit)
            .await
            .expect("read_inbox");
        let got: Vec<u64> = page.entries.iter().map(|e| e.inbox_seq).collect();
        assert_eq!(got, want, "read_inbox(from {from}, to {to}, limit {limit})");
        assert_eq!(page.head_seq, 10, "head with from {from}");
        assert_eq!(page.oldest_seq, 1, "nothing is trimmed");
        for entry in &page.entries {
            let message = message_of(entry).expect("bob's inbox holds messages");
            assert_eq!(
                message.conversation_seq, entry.inbox_seq,
                "entry {} is message {}",
                entry.inbox_seq, entry.inbox_seq
            );
        }
    }
    let empty = store
        .read_inbox("nobody", 0, 0, 10)
        .await
        .expect("read_inbox");
    assert_eq!(
        (empty.entries.len(), empty.head_seq, empty.oldest_seq),
        (0, 0, 1)
    );
    assert_eq!(head(&store, "nobody").await, 0);
    assert_eq!(head(&store, "bob").await, 10);
}

/// A device's delivery cursor only moves up.
pub async fn delivery_cursor_keeps_the_maximum<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let cursor = |device: &'static str| store.delivery_cursor("alice", device);
    assert_eq!(
        cursor("phone").await.expect("delivery_cursor"),
        0,
        "no cursor yet"
    );
    for (seq, want) in [(5, 5), (3, 5), (9, 9), (9, 9)] {
        store
            .record_delivery("alice", "phone", seq)
            .await
            .expect("record_delivery");
        assert_eq!(
            cursor("phone").await.expect("delivery_cursor"),
            want,
            "after recording {seq}"
        );
    }
    assert_eq!(
        cursor("laptop").await.expect("delivery_cursor"),
        0,
        "devices are independent"
    );
    assert_eq!(
        store
            .delivery_cursor("bob", "phone")
            .await
            .expect("delivery_cursor"),
        0,
        "users are independent"
    );
}

/// A user's settings are set, replaced, listed by prefix in key order, removed, kept per user
/// and kept across a restart; a bad name is refused.
pub async fn user_settings_are_listed_by_prefix_and_survive_a_restart<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let put = |user: &'static str, key: &'static str, value: Option<&'static [u8]>| {
        store.put_user_setting(user, key, value.map(<[u8]>::to_vec))
    };
    put("alice", "push/phone", Some(b"apns-1"))
        .await
        .expect("put");
    put("alice", "push/laptop", Some(b"fcm-1"))
        .await
        .expect("put");
    put("alice", "mute/g:grp-1", Some(b"")).await.expect("put");
    put("alice", "push/phone", Some(b"apns-2"))
        .await
        .expect("replace");
    put("bob", "push/tablet", Some(b"fcm-9"))
        .await
        .expect("put");
    put("alice", "push/gone", None)
        .await
        .expect("removing nothing is fine");
    let listed = |user: &'static str, prefix: &'static str| store.user_settings(user, prefix);
    let pushes = listed("alice", "push/").await.expect("list");
    assert_eq!(
        pushes,
        vec![
            ("push/laptop".to_owned(), b"fcm-1".to_vec()),
            ("push/phone".to_owned(), b"apns-2".to_vec()),
        ],
        "in key order, the replaced value, only this prefix and this user"
    );
    assert_eq!(listed("alice", "").await.expect("list").len(), 3);
    assert_eq!(listed("carol", "push/").await.expect("list"), vec![]);
    put("alice", "push/laptop", None).await.expect("remove");
    let store = factory.reopen(store).await;
    assert_eq!(
        store.user_settings("alice", "push/").await.expect("list"),
        vec![("push/phone".to_owned(), b"apns-2".to_vec())],
        "kept across a restart, the removal too"
    );
    for bad in ["", "a\0b"] {
        assert!(
            matches!(
                store.put_user_setting("alice", bad, Some(vec![1])).await,
                Err(crate::StoreError::InvalidArgument(_))
            ),
            "{bad:?} is refused"
        );
    }
    let long = "k".repeat(crate::MAX_SETTING_KEY_BYTES + 1);
    assert!(store.put_user_setting("alice", &long, None).await.is_err());
}
