//! Conversation history pages and the conversation list.

use std::collections::HashMap;

use im_protocol::ids;
use im_protocol::pb;

use super::helpers::{direct, send, seqs, state};
use super::{StoreFactory, T0};
use crate::{ConversationState, TimelineStore};

/// History pages go older (newest first, below the anchor) and newer (oldest first, above it).
pub async fn history_pages_older_and_newer_around_anchors<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    for i in 1..=10u64 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "x", T0 + i),
        )
        .await;
    }
    use pb::HistoryDirection::{Newer, Older};
    let cases: [(u64, pb::HistoryDirection, u32, Vec<u64>); 9] = [
        (0, Older, 3, vec![10, 9, 8]),
        (8, Older, 3, vec![7, 6, 5]),
        (3, Older, 5, vec![2, 1]),
        (1, Older, 5, vec![]),
        (50, Older, 2, vec![10, 9]),
        (0, Newer, 4, vec![1, 2, 3, 4]),
        (8, Newer, 5, vec![9, 10]),
        (10, Newer, 5, vec![]),
        (0, Newer, 100, (1..=10).collect()),
    ];
    for (anchor, direction, limit, want) in cases {
        let page = store
            .read_history(c, anchor, direction, limit)
            .await
            .expect("read_history");
        assert_eq!(
            seqs(&page.messages),
            want,
            "{direction:?} from {anchor}, limit {limit}"
        );
        assert_eq!(
            page.last_seq, 10,
            "last_seq with {direction:?} from {anchor}"
        );
    }
    let empty = store
        .read_history("d:nobody:none", 0, Older, 10)
        .await
        .expect("history of an empty conversation");
    assert!(empty.messages.is_empty());
    assert_eq!(empty.last_seq, 0);
}

/// The conversation list is ordered by last update, newest first, and pages with cursors.
pub async fn conversations_are_listed_newest_first_with_cursor_paging<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let peers = ["p0", "p1", "p2", "p3", "p4"];
    let mut last = HashMap::new();
    for (i, peer) in peers.iter().enumerate() {
        let m = send(
            &store,
            direct("alice", peer, &format!("a{i}"), "x", T0 + i as u64),
        )
        .await;
        last.insert(ids::direct_conversation_id("alice", peer), m.message);
    }
    let m = send(&store, direct("p1", "alice", "late", "again", T0 + 10)).await;
    last.insert(ids::direct_conversation_id("alice", "p1"), m.message);

    let (page, cursor) = store
        .conversations("alice", 2, "")
        .await
        .expect("conversations");
    let peers_of =
        |states: &[ConversationState]| states.iter().map(|s| s.peer.clone()).collect::<Vec<_>>();
    assert_eq!(peers_of(&page), vec!["p1", "p4"], "first page");
    assert!(!cursor.is_empty(), "more pages follow");
    let (page, cursor) = store
        .conversations("alice", 2, &cursor)
        .await
        .expect("conversations");
    assert_eq!(peers_of(&page), vec!["p3", "p2"], "second page");
    assert!(!cursor.is_empty(), "more pages follow");
    let (page, cursor) = store
        .conversations("alice", 2, &cursor)
        .await
        .expect("conversations");
    assert_eq!(peers_of(&page), vec!["p0"], "last page");
    assert!(cursor.is_empty(), "no more pages");

    let (page, cursor) = store
        .conversations("alice", 5, "")
        .await
        .expect("conversations");
    assert_eq!(page.len(), 5);
    assert!(
        cursor.is_empty(),
        "a page that ends exactly at the last conversation has no cursor"
    );
    for s in &page {
        assert_eq!(
            s.last_message.as_ref(),
            last.get(&s.conversation_id),
            "last message of {}",
            s.conversation_id
        );
        assert_eq!(
            &state(&store, "alice", &s.conversation_id).await,
            s,
            "conversation() agrees with the list"
        );
    }
    for window in page.windows(2) {
        assert!(
            window[0].updated_ms >= window[1].updated_ms,
            "ordered by updated_ms, newest first"
        );
    }

    // A moved read marker is an update too.
    store
        .mark_read("alice", "d:alice:p0", 1, None, T0 + 20)
        .await
        .expect("mark_read");
    let (page, _) = store
        .conversations("alice", 1, "")
        .await
        .expect("conversations");
    assert_eq!(
        peers_of(&page),
        vec!["p0"],
        "the conversation just read comes first"
    );

    let (none, cursor) = store
        .conversations("nobody", 10, "")
        .await
        .expect("conversations");
    assert!(none.is_empty() && cursor.is_empty());
    assert_eq!(
        store
            .conversation("alice", "d:alice:zed")
            .await
            .expect("conversation"),
        None
    );
}

/// Conversations updated in the same millisecond are listed in conversation id order, and a
/// cursor between two of them resumes exactly after the first: paging over ties loses none and
/// repeats none.
pub async fn conversations_updated_in_the_same_millisecond_page_in_id_order<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    // One call, one time: all four states get the same updated_ms.
    let results = store
        .commit_messages(vec![
            direct("alice", "p2", "a2", "x", T0),
            direct("alice", "p0", "a0", "x", T0),
            direct("alice", "p3", "a3", "x", T0),
            direct("alice", "p1", "a1", "x", T0),
        ])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    send(&store, direct("p9", "alice", "late", "x", T0 + 1)).await;

    let mut listed = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (page, next) = store
            .conversations("alice", 1, &cursor)
            .await
            .expect("conversations");
        listed.extend(page.into_iter().map(|s| s.peer));
        if next.is_empty() {
            break;
        }
        cursor = next;
    }
    assert_eq!(
        listed,
        vec!["p9", "p0", "p1", "p2", "p3"],
        "newest first, then ties by conversation id, each once"
    );
}
