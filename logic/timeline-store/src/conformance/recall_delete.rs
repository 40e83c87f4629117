//! Changes to messages already sent: recall (for everyone) and delete for me.

use im_protocol::pb::{self, inbox_entry::Body};

use super::helpers::{
    all_conversations, direct, head, history, history_as, message_of, send, state, strings,
    whole_inbox,
};
use super::{ALL, StoreFactory, T0};
use crate::{Delivery, StoreError, TimelineStore};

/// Recall is refused for unknown messages, other senders and expired windows, and then
/// appends nothing.
pub async fn recall_refuses_unknown_messages_other_senders_and_expired_windows<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    let both = strings(&["alice", "bob"]);
    send(&store, direct("alice", "bob", "a1", "oops", T0)).await;
    let heads = (head(&store, "alice").await, head(&store, "bob").await);

    let unknown = store.recall(c, 99, "alice", &both, 60_000, T0 + 1).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "unknown seq: {unknown:?}"
    );
    let unknown = store
        .recall("d:alice:zed", 1, "alice", &both, 60_000, T0 + 1)
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "unknown conversation: {unknown:?}"
    );
    let other = store.recall(c, 1, "bob", &both, 60_000, T0 + 1).await;
    assert!(
        matches!(other, Err(StoreError::NotSender)),
        "other sender: {other:?}"
    );
    let late = store
        .recall(c, 1, "alice", &both, 60_000, T0 + 60_001)
        .await;
    assert!(
        matches!(late, Err(StoreError::RecallWindowExpired)),
        "late: {late:?}"
    );
    assert_eq!(
        (head(&store, "alice").await, head(&store, "bob").await),
        heads,
        "refusals append nothing"
    );
    assert!(
        !history(&store, c).await[0].recalled,
        "refusals change nothing"
    );

    let (_, deliveries) = store
        .recall(c, 1, "alice", &both, 60_000, T0 + 60_000)
        .await
        .expect("a recall exactly at the window's end is allowed");
    assert_eq!(deliveries.len(), 2);
}

/// Recall marks the message recalled and empty wherever it is read, tells every recipient
/// once, and a second recall appends nothing.
pub async fn recall_erases_the_content_and_tells_every_recipient_once<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    let both = strings(&["alice", "bob"]);
    let first = send(&store, direct("alice", "bob", "a1", "secret", T0)).await;
    let second = send(&store, direct("alice", "bob", "a2", "fine", T0 + 1)).await;
    let heads = (head(&store, "alice").await, head(&store, "bob").await);

    let (event, deliveries) = store
        .recall(c, 1, "alice", &both, 60_000, T0 + 10)
        .await
        .expect("recall");
    assert_eq!(
        event,
        pb::RecallEvent {
            conversation_id: c.into(),
            conversation_seq: 1,
            server_msg_id: first.message.server_msg_id,
            by_user: "alice".into(),
            server_time_ms: T0 + 10,
        }
    );
    let mut users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, vec!["alice", "bob"], "one RecallEvent per recipient");
    for delivery in &deliveries {
        assert_eq!(delivery.entry.body, Some(Body::Recall(event.clone())));
        let expected_seq = if delivery.user == "alice" {
            heads.0 + 1
        } else {
            heads.1 + 1
        };
        assert_eq!(
            delivery.entry.inbox_seq, expected_seq,
            "{}'s event seq",
            delivery.user
        );
    }

    let timeline = history(&store, c).await;
    let recalled = &timeline[0];
    assert!(recalled.recalled, "history shows the message recalled");
    assert!(
        recalled.content.is_empty(),
        "history no longer has the content"
    );
    assert_eq!(
        pb::Message {
            recalled: false,
            recalled_ms: 0,
            content: first.message.content.clone(),
            ..recalled.clone()
        },
        first.message,
        "recall changes nothing but `recalled`, its time and the content"
    );
    assert_eq!(timeline[1], second.message, "other messages are untouched");
    let bob = whole_inbox(&store, "bob").await;
    let copy = bob
        .iter()
        .filter_map(message_of)
        .find(|m| m.conversation_seq == 1)
        .expect("bob's inbox still has the message entry");
    assert!(
        copy.recalled && copy.content.is_empty(),
        "sync shows the message recalled: {copy:?}"
    );

    let heads = (head(&store, "alice").await, head(&store, "bob").await);
    assert_eq!(
        recalled.recalled_ms,
        T0 + 10,
        "history says when it was recalled"
    );
    let (repeated, again) = store
        .recall(c, 1, "alice", &both, 60_000, T0 + 20)
        .await
        .expect("recalling twice succeeds");
    assert_eq!(
        repeated, event,
        "a second recall returns the original event"
    );
    assert!(again.is_empty(), "a second recall delivers nothing");
    assert_eq!(
        (head(&store, "alice").await, head(&store, "bob").await),
        heads,
        "and appends nothing"
    );

    store
        .recall(c, 2, "alice", &both, 60_000, T0 + 30)
        .await
        .expect("recall of the last message");
    let last = state(&store, "bob", c)
        .await
        .last_message
        .expect("a last message");
    assert!(
        last.recalled && last.content.is_empty(),
        "the conversation list shows the recall"
    );
}

/// Delete for me (SPEC §13.7): the deleter's history, inbox and conversation list stop showing
/// the messages, one `DeleteEvent` names exactly the newly hidden seqs, repeats and seqs that
/// do not exist count for nothing, the peer and unread counts are untouched, and all of it
/// survives a restart.
pub async fn delete_hides_messages_for_the_deleter_only<F: StoreFactory>(factory: &mut F) {
    use pb::HistoryDirection::{Newer, Older};
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    for i in 1..=4u64 {
        send(
            &store,
            direct("alice", "bob", &format!("a{i}"), "hi", T0 + i),
        )
        .await;
    }
    let unread_before = state(&store, "bob", c).await.unread_count;
    let alice_head = head(&store, "alice").await;
    let bob_head = head(&store, "bob").await;

    let (deleted, deliveries) = store
        .delete_messages("bob", c, &[4, 2, 4, 0, 99], T0 + 10)
        .await
        .expect("delete");
    assert_eq!(
        deleted, 2,
        "seqs 2 and 4 exist; 0 and 99 do not; 4 twice counts once"
    );
    assert_eq!(
        deliveries,
        vec![Delivery {
            user: "bob".into(),
            entry: pb::InboxEntry {
                inbox_seq: bob_head + 1,
                body: Some(Body::Delete(pb::DeleteEvent {
                    conversation_id: c.into(),
                    conversation_seqs: vec![2, 4],
                })),
            },
        }],
        "one DeleteEvent, to the deleter's own inbox only, listing exactly the hidden seqs"
    );
    assert_eq!(
        head(&store, "alice").await,
        alice_head,
        "alice's inbox is untouched"
    );

    let (again, none) = store
        .delete_messages("bob", c, &[2, 4], T0 + 11)
        .await
        .expect("repeat delete");
    assert_eq!(
        (again, none.len()),
        (0, 0),
        "already hidden seqs are ignored"
    );
    assert_eq!(
        head(&store, "bob").await,
        bob_head + 1,
        "and nothing is appended"
    );

    let check = |store: F::Store| async move {
        assert_eq!(
            history_as(&store, "bob", c, 0, Newer, ALL).await,
            vec![1, 3]
        );
        assert_eq!(
            history_as(&store, "bob", c, 0, Older, ALL).await,
            vec![3, 1]
        );
        assert_eq!(
            history_as(&store, "bob", c, 0, Older, 1).await,
            vec![3],
            "a page of one skips the deleted newest message"
        );
        assert_eq!(
            history_as(&store, "bob", c, 1, Newer, 1).await,
            vec![3],
            "a page of one skips the deleted message after the anchor"
        );
        assert_eq!(
            history_as(&store, "alice", c, 0, Newer, ALL).await,
            vec![1, 2, 3, 4],
            "the peer keeps every message"
        );
        let bob_state = state(&store, "bob", c).await;
        assert_eq!(
            bob_state.last_message.map(|m| m.conversation_seq),
            Some(3),
            "the conversation list shows the newest message bob did not delete"
        );
        assert_eq!(bob_state.last_seq, 4, "numbering is unchanged");
        assert_eq!(
            bob_state.unread_count, unread_before,
            "unread counts are unchanged"
        );
        assert_eq!(
            state(&store, "alice", c)
                .await
                .last_message
                .map(|m| m.conversation_seq),
            Some(4)
        );
        let bob_inbox = whole_inbox(&store, "bob").await;
        assert_eq!(
            bob_inbox.len() as u64,
            head(&store, "bob").await,
            "seqs stay contiguous"
        );
        let shown: Vec<u64> = bob_inbox
            .iter()
            .filter_map(message_of)
            .map(|m| m.conversation_seq)
            .collect();
        assert_eq!(
            shown,
            vec![1, 3],
            "sync no longer carries the deleted messages"
        );
        assert_eq!(
            bob_inbox.iter().filter(|e| e.body.is_none()).count(),
            2,
            "their entries keep their seqs, without a body"
        );
        let alice_inbox = whole_inbox(&store, "alice").await;
        assert_eq!(alice_inbox.iter().filter_map(message_of).count(), 4);
        store
    };
    let store = check(store).await;
    let store = factory.reopen(store).await;
    let store = check(store).await;

    let (rest, _) = store
        .delete_messages("bob", c, &[1, 3], T0 + 12)
        .await
        .expect("delete the rest");
    assert_eq!(rest, 2);
    let bob_state = state(&store, "bob", c).await;
    assert_eq!(
        bob_state.last_message, None,
        "with every message deleted there is no last message"
    );
    assert!(
        all_conversations(&store, "bob")
            .await
            .iter()
            .any(|s| s.conversation_id == c),
        "the conversation itself stays listed"
    );
    let next = send(&store, direct("alice", "bob", "a5", "new", T0 + 20)).await;
    assert_eq!(
        state(&store, "bob", c).await.last_message,
        Some(next.message),
        "a new message shows up again"
    );
}

/// A resend after a recall is still recognised: the same content is a duplicate (answered with
/// the message as it is now, recalled and empty), other content is still a conflict, even
/// though the stored content is gone.
pub async fn a_resend_after_a_recall_is_still_a_duplicate_or_a_conflict<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let c = "d:alice:bob";
    let original = send(&store, direct("alice", "bob", "a1", "secret", T0)).await;
    store
        .recall(c, 1, "alice", &strings(&["alice", "bob"]), 60_000, T0 + 10)
        .await
        .expect("recall");
    let heads = (head(&store, "alice").await, head(&store, "bob").await);

    let again = send(&store, direct("alice", "bob", "a1", "secret", T0 + 20)).await;
    assert!(again.duplicate, "the same content is a resend");
    assert!(again.deliveries.is_empty(), "a resend delivers nothing");
    assert_eq!(again.sender_inbox_seq, original.sender_inbox_seq);
    assert_eq!(
        again.message,
        pb::Message {
            recalled: true,
            recalled_ms: T0 + 10,
            content: Vec::new(),
            ..original.message
        },
        "the answer is the message as stored now: recalled"
    );
    let conflict = store
        .commit_messages(vec![direct("alice", "bob", "a1", "sEcret", T0 + 21)])
        .await;
    assert!(
        matches!(
            conflict.as_slice(),
            [Err(StoreError::ClientMsgIdConflict(_))]
        ),
        "other content under the same id: {conflict:?}"
    );
    let mut other_type = direct("alice", "bob", "a1", "secret", T0 + 22);
    other_type.content_type = 7;
    let conflict = store.commit_messages(vec![other_type]).await;
    assert!(
        matches!(
            conflict.as_slice(),
            [Err(StoreError::ClientMsgIdConflict(_))]
        ),
        "another content type under the same id: {conflict:?}"
    );
    assert_eq!(
        (head(&store, "alice").await, head(&store, "bob").await),
        heads,
        "neither appended anything"
    );
    assert_eq!(history(&store, c).await.len(), 1);
}
