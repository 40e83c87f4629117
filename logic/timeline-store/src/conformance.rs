//! The conformance suite: the behaviour every [`TimelineStore`] backend must show, written
//! once against the trait so that the embedded store and the distributed one are held to the
//! same contract.
//!
//! A backend provides a [`StoreFactory`] and either calls [`run_all`] or, better, calls each
//! check from its own `#[tokio::test]` so that a failure names the behaviour that broke:
//!
//! ```ignore
//! #[tokio::test]
//! async fn resend_returns_the_original_as_a_duplicate_and_writes_nothing() {
//!     conformance::resend_returns_the_original_as_a_duplicate_and_writes_nothing(&mut MyFactory::new()).await;
//! }
//! ```
//!
//! Every check opens its own fresh store, uses only the trait, passes explicit clocks (no
//! sleeps) and panics with a message that says what was expected.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt as _;
use im_protocol::ids;
use im_protocol::pb::{self, inbox_entry::Body};

use crate::{
    CommittedMessage, ConversationState, Delivery, GroupChange, InboxRetention, NewGroup,
    NewMessage, StoreError, TimelineStore,
};

/// Opens stores for the suite.
pub trait StoreFactory {
    /// The backend under test.
    type Store: TimelineStore;

    /// A store with no data in it.
    fn open_fresh(&mut self) -> impl Future<Output = Self::Store> + Send;

    /// A store with no data in it that enforces `retention`; [`StoreFactory::reopen`] keeps it.
    fn open_with_retention(
        &mut self,
        retention: InboxRetention,
    ) -> impl Future<Output = Self::Store> + Send;

    /// Closes (drops) `store` and opens the same data again, as a process restart would.
    fn reopen(&mut self, store: Self::Store) -> impl Future<Output = Self::Store> + Send;
}

/// A fixed clock for the checks: Unix ms in late 2023.
const T0: u64 = 1_700_000_000_000;

/// Generous limit for "read everything" pages.
const ALL: u32 = 10_000;

// ----- helpers -----

fn direct(sender: &str, peer: &str, client_msg_id: &str, content: &str, now_ms: u64) -> NewMessage {
    let mut recipients = vec![sender.to_owned(), peer.to_owned()];
    recipients.sort();
    recipients.dedup();
    NewMessage {
        conversation_id: ids::direct_conversation_id(sender, peer),
        kind: pb::ConversationKind::Direct,
        sender_user: sender.to_owned(),
        sender_device: format!("{sender}-phone"),
        client_msg_id: client_msg_id.to_owned(),
        content_type: 0,
        content: content.as_bytes().to_vec(),
        recipients,
        now_ms,
    }
}

fn to_group(
    sender: &str,
    group_id: &str,
    members: &[String],
    client_msg_id: &str,
    content: &str,
    now_ms: u64,
) -> NewMessage {
    NewMessage {
        conversation_id: ids::group_conversation_id(group_id),
        kind: pb::ConversationKind::Group,
        sender_user: sender.to_owned(),
        sender_device: format!("{sender}-phone"),
        client_msg_id: client_msg_id.to_owned(),
        content_type: 0,
        content: content.as_bytes().to_vec(),
        recipients: members.to_vec(),
        now_ms,
    }
}

fn new_group(owner: &str, members: &[&str], open: bool, request: &str, max: u32) -> NewGroup {
    NewGroup {
        name: format!("{owner}'s group"),
        owner: owner.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        open,
        client_request_id: request.to_owned(),
        max_members: max,
        now_ms: T0,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Commits one message and expects success.
async fn send<S: TimelineStore>(store: &S, message: NewMessage) -> CommittedMessage {
    let what = format!(
        "commit of {} by {} in {}",
        message.client_msg_id, message.sender_user, message.conversation_id
    );
    let mut results = store.commit_messages(vec![message]).await;
    assert_eq!(results.len(), 1, "{what}: one result per message");
    match results.pop() {
        Some(Ok(committed)) => committed,
        other => panic!("{what} failed: {other:?}"),
    }
}

async fn head<S: TimelineStore>(store: &S, user: &str) -> u64 {
    store
        .inbox_head(user)
        .await
        .unwrap_or_else(|e| panic!("inbox_head({user}) failed: {e}"))
}

/// A user's whole inbox, read in pages of 7 to exercise paging.
async fn whole_inbox<S: TimelineStore>(store: &S, user: &str) -> Vec<pb::InboxEntry> {
    let mut entries: Vec<pb::InboxEntry> = Vec::new();
    loop {
        let from = entries.last().map_or(1, |e| e.inbox_seq + 1);
        let page = store
            .read_inbox(user, from, 0, 7)
            .await
            .unwrap_or_else(|e| panic!("read_inbox({user}, {from}) failed: {e}"));
        let done = page.entries.is_empty()
            || page.entries.last().map(|e| e.inbox_seq) == Some(page.head_seq);
        entries.extend(page.entries);
        if done {
            return entries;
        }
    }
}

async fn state<S: TimelineStore>(
    store: &S,
    user: &str,
    conversation_id: &str,
) -> ConversationState {
    store
        .conversation(user, conversation_id)
        .await
        .unwrap_or_else(|e| panic!("conversation({user}, {conversation_id}) failed: {e}"))
        .unwrap_or_else(|| panic!("{user} has no state for {conversation_id}"))
}

async fn history<S: TimelineStore>(store: &S, conversation_id: &str) -> Vec<pb::Message> {
    store
        .read_history(conversation_id, 0, pb::HistoryDirection::Newer, ALL)
        .await
        .unwrap_or_else(|e| panic!("read_history({conversation_id}) failed: {e}"))
        .messages
}

/// Every conversation of a user, following cursors with pages of 2.
async fn all_conversations<S: TimelineStore>(store: &S, user: &str) -> Vec<ConversationState> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let (page, next) = store
            .conversations(user, 2, &cursor)
            .await
            .unwrap_or_else(|e| panic!("conversations({user}) failed: {e}"));
        all.extend(page);
        if next.is_empty() {
            return all;
        }
        cursor = next;
    }
    panic!("conversations({user}) never returned an empty cursor");
}

async fn all_members<S: TimelineStore>(store: &S, group_id: &str) -> Vec<pb::GroupMember> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let (page, next) = store
            .group_members(group_id, 3, &cursor)
            .await
            .unwrap_or_else(|e| panic!("group_members({group_id}) failed: {e}"));
        all.extend(page);
        if next.is_empty() {
            return all;
        }
        cursor = next;
    }
    panic!("group_members({group_id}) never returned an empty cursor");
}

fn message_of(entry: &pb::InboxEntry) -> Option<&pb::Message> {
    match &entry.body {
        Some(Body::Message(message)) => Some(message),
        _ => None,
    }
}

fn group_event_of(delivery: &Delivery) -> &pb::GroupEvent {
    match &delivery.entry.body {
        Some(Body::GroupEvent(event)) => event,
        other => panic!("expected a GroupEvent for {}, got {other:?}", delivery.user),
    }
}

fn seqs(messages: &[pb::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.conversation_seq).collect()
}

/// Checks a group change's deliveries: one `kind` event per user of `audience`, each with the
/// given changed members, stored at that user's inbox seq.
async fn assert_group_event<S: TimelineStore>(
    store: &S,
    change: &GroupChange,
    kind: pb::GroupEventKind,
    audience: &[&str],
    members: &[&str],
) {
    let users: Vec<&str> = change.deliveries.iter().map(|d| d.user.as_str()).collect();
    let mut sorted_users = users.clone();
    sorted_users.sort_unstable();
    let mut expected: Vec<&str> = audience.to_vec();
    expected.sort_unstable();
    assert_eq!(
        sorted_users, expected,
        "{kind:?} goes to exactly these users"
    );
    for delivery in &change.deliveries {
        let event = group_event_of(delivery);
        assert_eq!(event.kind, kind as i32, "event kind for {}", delivery.user);
        assert_eq!(event.group_id, change.group.group_id);
        let mut got: Vec<&str> = event.members.iter().map(String::as_str).collect();
        got.sort_unstable();
        let mut want = members.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{kind:?} event names who changed");
        let stored = store
            .read_inbox(
                &delivery.user,
                delivery.entry.inbox_seq,
                delivery.entry.inbox_seq,
                1,
            )
            .await
            .unwrap_or_else(|e| panic!("read_inbox({}) failed: {e}", delivery.user));
        assert_eq!(
            stored.entries,
            vec![delivery.entry.clone()],
            "the {kind:?} event pushed to {} is the one stored in their inbox",
            delivery.user
        );
    }
}

// ----- the checks -----

/// Inbox seqs stay contiguous per user, and conversation seqs follow submission order, when
/// many tasks commit at once into shared inboxes and a shared group.
pub async fn inbox_seqs_are_contiguous_under_concurrent_commits<F: StoreFactory>(factory: &mut F) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let store = Arc::new(factory.open_fresh().await);
    let senders: Vec<String> = (0..TASKS).map(|t| format!("sender{t}")).collect();
    let created = store
        .create_group(NewGroup {
            name: "everyone".into(),
            owner: senders[0].clone(),
            members: senders.clone(),
            open: false,
            client_request_id: String::new(),
            max_members: 100,
            now_ms: T0,
        })
        .await
        .expect("create_group failed");
    let group_id = created.group.group_id.clone();
    let members = store
        .member_ids(&group_id)
        .await
        .expect("member_ids failed");

    let mut tasks = Vec::new();
    for (t, sender) in senders.iter().cloned().enumerate() {
        let store = Arc::clone(&store);
        let group_id = group_id.clone();
        let members = members.clone();
        tasks.push(tokio::spawn(async move {
            let messages: Vec<NewMessage> = (0..PER_TASK)
                .map(|i| {
                    let id = format!("t{t}-m{i}");
                    let now = T0 + i as u64;
                    if i % 4 == 3 {
                        to_group(&sender, &group_id, &members, &id, &id, now)
                    } else {
                        // Peers are shared by every task: their inboxes are contended.
                        direct(&sender, &format!("peer{}", i % 3), &id, &id, now)
                    }
                })
                .collect();
            let mut committed = Vec::with_capacity(PER_TASK);
            let mut rest = messages.as_slice();
            let mut size = 1;
            while !rest.is_empty() {
                let (call, tail) = rest.split_at(size.min(rest.len()));
                rest = tail;
                size = size % 3 + 1;
                let results = store.commit_messages(call.to_vec()).await;
                assert_eq!(results.len(), call.len(), "one result per message");
                for (message, result) in call.iter().zip(results) {
                    let result = result.unwrap_or_else(|e| {
                        panic!("commit of {} failed: {e}", message.client_msg_id)
                    });
                    committed.push((message.clone(), result));
                }
            }
            committed
        }));
    }
    let mut all: Vec<(NewMessage, CommittedMessage)> = Vec::new();
    for task in tasks {
        let committed = task.await.expect("a committing task panicked");
        // Per task and conversation, seqs rise in submission order.
        let mut last: HashMap<String, u64> = HashMap::new();
        for (message, result) in &committed {
            let seq = result.message.conversation_seq;
            let previous = last
                .insert(message.conversation_id.clone(), seq)
                .unwrap_or(0);
            assert!(
                seq > previous,
                "{}: seq {seq} is not above the task's previous seq {previous} in {}",
                message.client_msg_id,
                message.conversation_id
            );
        }
        all.extend(committed);
    }
    assert_eq!(all.len(), TASKS * PER_TASK);

    let mut msg_ids = HashSet::new();
    let mut expected: BTreeMap<String, Vec<pb::InboxEntry>> = BTreeMap::new();
    for delivery in &created.deliveries {
        expected
            .entry(delivery.user.clone())
            .or_default()
            .push(delivery.entry.clone());
    }
    for (message, result) in &all {
        assert!(
            !result.duplicate,
            "{} reported as duplicate",
            message.client_msg_id
        );
        assert!(
            msg_ids.insert(result.message.server_msg_id),
            "server msg id {} handed out twice",
            result.message.server_msg_id
        );
        let users: Vec<&str> = result.deliveries.iter().map(|d| d.user.as_str()).collect();
        let recipients: Vec<&str> = message.recipients.iter().map(String::as_str).collect();
        assert_eq!(
            users, recipients,
            "{}: one delivery per recipient",
            message.client_msg_id
        );
        for delivery in &result.deliveries {
            if delivery.user == message.sender_user {
                assert_eq!(
                    delivery.entry.inbox_seq, result.sender_inbox_seq,
                    "{}: sender_inbox_seq is the sender's delivery",
                    message.client_msg_id
                );
            }
            expected
                .entry(delivery.user.clone())
                .or_default()
                .push(delivery.entry.clone());
        }
    }
    for (user, mut entries) in expected {
        entries.sort_by_key(|e| e.inbox_seq);
        let got_seqs: Vec<u64> = entries.iter().map(|e| e.inbox_seq).collect();
        let want_seqs: Vec<u64> = (1..=entries.len() as u64).collect();
        assert_eq!(
            got_seqs, want_seqs,
            "{user}'s delivered inbox seqs have a hole or a duplicate"
        );
        assert_eq!(
            head(&*store, &user).await,
            entries.len() as u64,
            "{user}'s inbox head"
        );
        let stored = whole_inbox(&*store, &user).await;
        assert!(
            stored == entries,
            "{user}'s stored inbox differs from what was delivered"
        );
    }
    // Each direct conversation belongs to one task: its seqs are exactly 1..=n.
    let mut per_conversation: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (message, result) in &all {
        per_conversation
            .entry(message.conversation_id.as_str())
            .or_default()
            .push(result.message.conversation_seq);
    }
    for (conversation_id, mut got) in per_conversation {
        got.sort_unstable();
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(
            got, want,
            "{conversation_id}: conversation seqs are not 1..=n"
        );
        let stored = history(&*store, conversation_id).await;
        assert_eq!(seqs(&stored), want, "{conversation_id}: stored timeline");
    }
}

/// Server msg ids are unique across conversations and calls.
pub async fn server_msg_ids_are_unique<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let mut seen = HashSet::new();
    for i in 0..40u64 {
        let peer = format!("peer{}", i % 5);
        let batch = vec![
            direct("alice", &peer, &format!("a{i}"), "hi", T0 + i),
            direct(&peer, "alice", &format!("b{i}"), "ho", T0 + i),
        ];
        for result in store.commit_messages(batch).await {
            let committed = result.expect("commit failed");
            assert!(
                seen.insert(committed.message.server_msg_id),
                "server msg id {} handed out twice",
                committed.message.server_msg_id
            );
            assert_ne!(
                committed.message.server_msg_id, 0,
                "0 is not a valid server msg id"
            );
        }
    }
}

/// Messages of one call get ascending seqs in their order, and their fields are stored as given.
pub async fn messages_of_one_call_are_stored_in_order<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let batch = vec![
        direct("alice", "bob", "c1", "one", T0),
        direct("alice", "bob", "c2", "two", T0 + 1),
        direct("alice", "bob", "c3", "three", T0 + 2),
    ];
    let results: Vec<CommittedMessage> = store
        .commit_messages(batch.clone())
        .await
        .into_iter()
        .map(|r| r.expect("commit failed"))
        .collect();
    assert_eq!(
        seqs(
            &results
                .iter()
                .map(|r| r.message.clone())
                .collect::<Vec<_>>()
        ),
        vec![1, 2, 3]
    );
    for (sent, result) in batch.iter().zip(&results) {
        let m = &result.message;
        assert_eq!(m.conversation_id, sent.conversation_id);
        assert_eq!(m.kind, pb::ConversationKind::Direct as i32);
        assert_eq!(m.sender_user, "alice");
        assert_eq!(m.sender_device, "alice-phone");
        assert_eq!(m.client_msg_id, sent.client_msg_id);
        assert_eq!(m.content, sent.content);
        assert_eq!(m.server_time_ms, sent.now_ms);
        assert!(!m.recalled);
    }
    let stored = history(&store, "d:alice:bob").await;
    let committed: Vec<pb::Message> = results.iter().map(|r| r.message.clone()).collect();
    assert_eq!(
        stored, committed,
        "the timeline holds exactly the committed messages"
    );
    let bob = whole_inbox(&store, "bob").await;
    let in_inbox: Vec<pb::Message> = bob.iter().filter_map(message_of).cloned().collect();
    assert_eq!(
        in_inbox, committed,
        "bob's inbox holds the messages in order"
    );
}

/// A resend returns the original with `duplicate`, and stores nothing.
pub async fn resend_returns_the_original_as_a_duplicate_and_writes_nothing<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let original = send(&store, direct("alice", "bob", "c1", "hello", T0)).await;
    let heads = (head(&store, "alice").await, head(&store, "bob").await);
    let bob_before = state(&store, "bob", "d:alice:bob").await;

    let mut resend = direct("alice", "bob", "c1", "hello", T0 + 5_000);
    resend.sender_device = "alice-laptop".into();
    let again = send(&store, resend.clone()).await;
    assert!(again.duplicate, "a resend must be reported as duplicate");
    assert_eq!(
        again.message, original.message,
        "a resend returns the original message"
    );
    assert_eq!(again.sender_inbox_seq, original.sender_inbox_seq);
    assert!(again.deliveries.is_empty(), "a resend delivers nothing");
    assert_eq!(
        (head(&store, "alice").await, head(&store, "bob").await),
        heads,
        "a resend must not append to any inbox"
    );
    assert_eq!(
        history(&store, "d:alice:bob").await.len(),
        1,
        "a resend must not append to the timeline"
    );
    assert_eq!(
        state(&store, "bob", "d:alice:bob").await,
        bob_before,
        "a resend must not touch unread counts"
    );

    // The same id twice in one call: the second is the duplicate of the first.
    let results = store
        .commit_messages(vec![
            direct("alice", "bob", "c2", "x", T0 + 1),
            direct("alice", "bob", "c2", "x", T0 + 2),
            direct("alice", "bob", "c1", "hello", T0 + 3),
        ])
        .await;
    let [first, second, third] = <[_; 3]>::try_from(results).expect("three results");
    let (first, second, third) = (
        first.expect("c2"),
        second.expect("c2 again"),
        third.expect("c1 again"),
    );
    assert!(!first.duplicate && second.duplicate && third.duplicate);
    assert_eq!(second.message, first.message);
    assert_eq!(third.message, original.message);
    assert_eq!(
        head(&store, "bob").await,
        heads.1 + 1,
        "only the new message reached bob"
    );
}

/// A client msg id reused for other content or another conversation is a conflict, which
/// stores nothing and does not fail the other messages of the call.
pub async fn reusing_a_client_msg_id_for_another_message_conflicts<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    send(&store, direct("alice", "bob", "c1", "hello", T0)).await;
    let heads = (
        head(&store, "alice").await,
        head(&store, "bob").await,
        head(&store, "carol").await,
    );
    let results = store
        .commit_messages(vec![
            direct("alice", "bob", "c1", "other content", T0 + 1),
            direct("alice", "carol", "c1", "hello", T0 + 1),
            direct("alice", "bob", "c9", "fine", T0 + 1),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert!(
        matches!(&results[0], Err(StoreError::ClientMsgIdConflict(id)) if id == "c1"),
        "other content: {:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(StoreError::ClientMsgIdConflict(_))),
        "other conversation: {:?}",
        results[1]
    );
    let fine = results[2]
        .as_ref()
        .expect("an unrelated message of the same call must succeed");
    assert_eq!(fine.message.conversation_seq, 2);
    assert_eq!(
        head(&store, "carol").await,
        heads.2,
        "a conflict stores nothing"
    );
    assert_eq!(
        head(&store, "bob").await,
        heads.1 + 1,
        "only c9 reached bob"
    );
    // Client msg ids are per sender: bob may use "c1" too.
    let bobs = send(&store, direct("bob", "alice", "c1", "hello", T0 + 2)).await;
    assert!(!bobs.duplicate, "another sender's c1 is a new message");
}

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

async fn history_as<S: TimelineStore>(
    store: &S,
    viewer: &str,
    conversation_id: &str,
    anchor_seq: u64,
    direction: pb::HistoryDirection,
    limit: u32,
) -> Vec<u64> {
    let page = store
        .read_history_as(viewer, conversation_id, anchor_seq, direction, limit)
        .await
        .unwrap_or_else(|e| panic!("read_history_as({viewer}, {conversation_id}) failed: {e}"));
    seqs(&page.messages)
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

/// Creating a group puts the owner first, drops duplicate members, tells every member, gives
/// each a conversation state, and is idempotent per client request id.
pub async fn group_creation_puts_the_owner_first_and_is_idempotent<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let change = store
        .create_group(new_group(
            "olga",
            &["zed", "amy", "olga", "amy"],
            false,
            "r1",
            10,
        ))
        .await
        .expect("create_group");
    let group = &change.group;
    let gid = group.group_id.clone();
    ids::validate_id(&gid, "group id")
        .unwrap_or_else(|e| panic!("group id {gid:?} is invalid: {e}"));
    assert_eq!(group.owner, "olga");
    assert_eq!(group.member_count, 3, "duplicates are dropped");
    assert_eq!(group.name, "olga's group");
    assert!(!group.open);
    assert_eq!(group.created_ms, T0);
    assert_eq!(
        change.changed.first().map(String::as_str),
        Some("olga"),
        "owner first"
    );
    let changed: BTreeSet<&str> = change.changed.iter().map(String::as_str).collect();
    assert_eq!(changed, BTreeSet::from(["amy", "olga", "zed"]));
    assert_eq!(change.changed.len(), 3);
    assert_group_event(
        &store,
        &change,
        pb::GroupEventKind::Created,
        &["olga", "amy", "zed"],
        &["olga", "amy", "zed"],
    )
    .await;
    for delivery in &change.deliveries {
        let event = group_event_of(delivery);
        assert_eq!(event.actor_user, "olga");
        assert_eq!(event.group_name, "olga's group");
        assert_eq!(
            event.members.first().map(String::as_str),
            Some("olga"),
            "owner first in the event"
        );
    }
    assert_eq!(store.group(&gid).await.expect("group"), *group);
    assert_eq!(
        store.member_ids(&gid).await.expect("member_ids"),
        strings(&["amy", "olga", "zed"])
    );
    let members = all_members(&store, &gid).await;
    for m in &members {
        let role = if m.user_id == "olga" {
            pb::GroupRole::Owner
        } else {
            pb::GroupRole::Member
        };
        assert_eq!(m.role, role as i32, "{}'s role", m.user_id);
    }
    let c = ids::group_conversation_id(&gid);
    for user in ["olga", "amy", "zed"] {
        let s = state(&store, user, &c).await;
        assert_eq!(
            (s.kind, s.peer.as_str(), s.last_seq, s.unread_count),
            (pb::ConversationKind::Group, gid.as_str(), 0, 0)
        );
        assert_eq!(s.last_message, None);
    }

    let heads = head(&store, "amy").await;
    let again = store
        .create_group(new_group("olga", &["zed", "amy"], false, "r1", 10))
        .await
        .expect("repeat create_group");
    assert_eq!(
        again.group, *group,
        "a repeated request returns the same group"
    );
    assert!(
        again.deliveries.is_empty() && again.changed.is_empty(),
        "a repeat changes nothing"
    );
    assert_eq!(head(&store, "amy").await, heads, "a repeat appends nothing");

    let other = store
        .create_group(new_group("olga", &["amy"], false, "r2", 10))
        .await
        .expect("second group");
    assert_ne!(other.group.group_id, gid, "group ids are unique");
    let unkeyed = store
        .create_group(new_group("olga", &["amy"], false, "", 10))
        .await
        .expect("group without request id");
    let unkeyed_again = store
        .create_group(new_group("olga", &["amy"], false, "", 10))
        .await
        .expect("group without request id");
    assert_ne!(
        unkeyed.group.group_id, unkeyed_again.group.group_id,
        "no request id, no deduplication"
    );

    let full = store
        .create_group(new_group("olga", &["a", "b", "c"], false, "r3", 3))
        .await;
    assert!(
        matches!(full, Err(StoreError::GroupFull(3))),
        "4 members above 3: {full:?}"
    );
    let exactly = store
        .create_group(new_group("olga", &["a", "b"], false, "r4", 3))
        .await;
    assert!(exactly.is_ok(), "3 members at a limit of 3: {exactly:?}");
}

/// Any member may add, only the owner may remove (not themself), limits hold, and events
/// reach the right users.
pub async fn adding_and_removing_members_checks_permissions_and_limits<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let gid = store
        .create_group(new_group("olga", &["amy"], false, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    let c = ids::group_conversation_id(&gid);
    let members = strings(&["amy", "olga"]);
    send(
        &store,
        to_group("olga", &gid, &members, "g1", "before bob", T0 + 1),
    )
    .await;
    send(
        &store,
        to_group("olga", &gid, &members, "g2", "before bob", T0 + 2),
    )
    .await;

    let stranger = store
        .add_members(&gid, "mallory", &strings(&["eve"]), 10, T0)
        .await;
    assert!(
        matches!(stranger, Err(StoreError::Forbidden(_))),
        "non-member adds: {stranger:?}"
    );

    let added = store
        .add_members(&gid, "amy", &strings(&["bob", "amy"]), 10, T0 + 5)
        .await
        .expect("a member adds");
    assert_eq!(added.changed, strings(&["bob"]), "only bob was new");
    assert_eq!(added.group.member_count, 3);
    assert_group_event(
        &store,
        &added,
        pb::GroupEventKind::MembersAdded,
        &["olga", "amy", "bob"],
        &["bob"],
    )
    .await;
    assert_eq!(group_event_of(&added.deliveries[0]).actor_user, "amy");
    let bob = state(&store, "bob", &c).await;
    assert_eq!(
        (bob.last_seq, bob.read_seq, bob.unread_count),
        (2, 2, 0),
        "messages from before bob joined are not unread for him"
    );
    assert!(store.is_member(&gid, "bob").await.expect("is_member"));

    let none = store
        .add_members(&gid, "olga", &strings(&["bob"]), 10, T0 + 6)
        .await
        .expect("adding a member again");
    assert!(
        none.changed.is_empty() && none.deliveries.is_empty(),
        "nothing changes: {none:?}"
    );
    let full = store
        .add_members(&gid, "olga", &strings(&["c1", "c2"]), 4, T0 + 7)
        .await;
    assert!(
        matches!(full, Err(StoreError::GroupFull(4))),
        "3 + 2 above 4: {full:?}"
    );
    assert!(
        !store.is_member(&gid, "c1").await.expect("is_member"),
        "a refused add adds nobody"
    );

    let not_owner = store
        .remove_members(&gid, "amy", &strings(&["bob"]), T0 + 8)
        .await;
    assert!(
        matches!(not_owner, Err(StoreError::Forbidden(_))),
        "a member removes: {not_owner:?}"
    );
    let itself = store
        .remove_members(&gid, "olga", &strings(&["olga"]), T0 + 8)
        .await;
    assert!(
        matches!(itself, Err(StoreError::Forbidden(_))),
        "the owner removes themself: {itself:?}"
    );

    let removed = store
        .remove_members(&gid, "olga", &strings(&["bob", "nobody"]), T0 + 9)
        .await
        .expect("the owner removes");
    assert_eq!(removed.changed, strings(&["bob"]));
    assert_eq!(removed.group.member_count, 2);
    assert_group_event(
        &store,
        &removed,
        pb::GroupEventKind::MembersRemoved,
        &["olga", "amy", "bob"],
        &["bob"],
    )
    .await;
    assert!(!store.is_member(&gid, "bob").await.expect("is_member"));
    assert_eq!(store.member_ids(&gid).await.expect("member_ids"), members);
    assert_eq!(store.group(&gid).await.expect("group").member_count, 2);
}

/// Joining needs an open group with room; leaving hands ownership to the longest-standing
/// member; the last one out leaves an empty group.
pub async fn joining_and_leaving_follow_openness_and_hand_over_ownership<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let gid = store
        .create_group(new_group("olga", &["amy"], true, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    let joined = store
        .join_group(&gid, "ben", 10, T0 + 1)
        .await
        .expect("join");
    assert_eq!(joined.changed, strings(&["ben"]));
    assert_eq!(joined.group.member_count, 3);
    assert_group_event(
        &store,
        &joined,
        pb::GroupEventKind::MemberJoined,
        &["olga", "amy", "ben"],
        &["ben"],
    )
    .await;
    state(&store, "ben", &ids::group_conversation_id(&gid)).await;
    let twice = store
        .join_group(&gid, "ben", 10, T0 + 2)
        .await
        .expect("join twice");
    assert!(
        twice.changed.is_empty() && twice.deliveries.is_empty(),
        "joining twice changes nothing"
    );
    let full = store.join_group(&gid, "cat", 3, T0 + 3).await;
    assert!(
        matches!(full, Err(StoreError::GroupFull(3))),
        "full: {full:?}"
    );

    let closed = store
        .create_group(new_group("olga", &[], false, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    let refused = store.join_group(&closed, "ben", 10, T0).await;
    assert!(
        matches!(refused, Err(StoreError::NotOpen)),
        "closed group: {refused:?}"
    );
    let member = store.join_group(&closed, "olga", 10, T0).await;
    assert!(
        member.is_ok(),
        "a member joining a closed group changes nothing: {member:?}"
    );

    let stranger = store.leave_group(&gid, "cat", T0 + 4).await;
    assert!(
        matches!(stranger, Err(StoreError::Forbidden(_))),
        "non-member leaves: {stranger:?}"
    );

    let left = store
        .leave_group(&gid, "olga", T0 + 5)
        .await
        .expect("owner leaves");
    assert_eq!(left.changed, strings(&["olga"]));
    assert_eq!(left.group.owner, "amy", "amy has been a member longest");
    assert_eq!(left.group.member_count, 2);
    assert_group_event(
        &store,
        &left,
        pb::GroupEventKind::MemberLeft,
        &["olga", "amy", "ben"],
        &["olga"],
    )
    .await;
    let roles: Vec<(String, i32)> = all_members(&store, &gid)
        .await
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("amy".into(), pb::GroupRole::Owner as i32),
            ("ben".into(), pb::GroupRole::Member as i32)
        ]
    );
    let left = store
        .leave_group(&gid, "amy", T0 + 6)
        .await
        .expect("new owner leaves");
    assert_eq!(left.group.owner, "ben");
    let left = store
        .leave_group(&gid, "ben", T0 + 7)
        .await
        .expect("last member leaves");
    assert_eq!(left.group.member_count, 0);
    assert_group_event(
        &store,
        &left,
        pb::GroupEventKind::MemberLeft,
        &["ben"],
        &["ben"],
    )
    .await;
    let empty = store
        .group(&gid)
        .await
        .expect("an empty group still exists");
    assert_eq!(empty.member_count, 0);
    assert!(store.member_ids(&gid).await.expect("member_ids").is_empty());
}

/// Members page in user id order; unknown groups are `NotFound` everywhere.
pub async fn group_members_page_in_user_id_order<F: StoreFactory>(factory: &mut F) {
    let store = factory.open_fresh().await;
    let gid = store
        .create_group(new_group(
            "m3",
            &["m6", "m0", "m5", "m1", "m4", "m2"],
            false,
            "",
            10,
        ))
        .await
        .expect("create_group")
        .group
        .group_id;
    let (page, cursor) = store
        .group_members(&gid, 3, "")
        .await
        .expect("group_members");
    let names =
        |page: &[pb::GroupMember]| page.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>();
    assert_eq!(names(&page), strings(&["m0", "m1", "m2"]));
    assert!(!cursor.is_empty());
    let (page, cursor) = store
        .group_members(&gid, 3, &cursor)
        .await
        .expect("group_members");
    assert_eq!(names(&page), strings(&["m3", "m4", "m5"]));
    assert!(!cursor.is_empty());
    let (page, cursor) = store
        .group_members(&gid, 3, &cursor)
        .await
        .expect("group_members");
    assert_eq!(names(&page), strings(&["m6"]));
    assert!(cursor.is_empty(), "no more members");
    let (page, cursor) = store
        .group_members(&gid, 7, "")
        .await
        .expect("group_members");
    assert_eq!(page.len(), 7);
    assert!(
        cursor.is_empty(),
        "a page ending at the last member has no cursor"
    );
    assert!(page.iter().all(|m| m.joined_ms == T0));
    assert!(store.is_member(&gid, "m4").await.expect("is_member"));
    assert!(!store.is_member(&gid, "m7").await.expect("is_member"));

    let ghost = "grp-missing";
    let not_found = |what: &str, r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::NotFound(_))),
            "{what} of an unknown group: {r:?}"
        );
    };
    not_found("group", store.group(ghost).await.map(drop));
    not_found(
        "group_members",
        store.group_members(ghost, 3, "").await.map(drop),
    );
    not_found("is_member", store.is_member(ghost, "m1").await.map(drop));
    not_found("member_ids", store.member_ids(ghost).await.map(drop));
    not_found(
        "add_members",
        store
            .add_members(ghost, "m1", &strings(&["x"]), 10, T0)
            .await
            .map(drop),
    );
    not_found(
        "remove_members",
        store
            .remove_members(ghost, "m1", &strings(&["x"]), T0)
            .await
            .map(drop),
    );
    not_found(
        "join_group",
        store.join_group(ghost, "m1", 10, T0).await.map(drop),
    );
    not_found(
        "leave_group",
        store.leave_group(ghost, "m1", T0).await.map(drop),
    );
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

/// A group the user left, or was removed from, leaves their conversation list at once and
/// for good (a restart included); joining again brings it back.
pub async fn groups_left_or_removed_from_leave_the_conversation_list<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let gid = store
        .create_group(new_group("olga", &["amy", "ben"], true, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    let conversation = ids::group_conversation_id(&gid);
    let listed =
        |states: Vec<ConversationState>| states.iter().any(|s| s.conversation_id == conversation);
    let members = strings(&["amy", "ben", "olga"]);
    send(
        &store,
        to_group("olga", &gid, &members, "o1", "hello", T0 + 1),
    )
    .await;
    assert!(listed(all_conversations(&store, "amy").await));
    store.leave_group(&gid, "amy", T0 + 2).await.expect("leave");
    store
        .remove_members(&gid, "olga", &strings(&["ben"]), T0 + 3)
        .await
        .expect("remove");
    assert!(!listed(all_conversations(&store, "amy").await), "amy left");
    assert!(
        !listed(all_conversations(&store, "ben").await),
        "ben was removed"
    );
    assert!(
        listed(all_conversations(&store, "olga").await),
        "olga stays"
    );
    let store = factory.reopen(store).await;
    assert!(
        !listed(all_conversations(&store, "amy").await),
        "amy left, after a restart"
    );
    assert!(
        !listed(all_conversations(&store, "ben").await),
        "ben, after a restart"
    );
    store
        .join_group(&gid, "amy", 10, T0 + 4)
        .await
        .expect("join again");
    assert!(
        listed(all_conversations(&store, "amy").await),
        "amy is back"
    );
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

/// Runs every check, each on fresh stores from `factory`, panicking with the name of the
/// first check that fails.
pub async fn run_all<F: StoreFactory>(factory: &mut F) {
    macro_rules! checks {
        ($($check:ident),* $(,)?) => {$(
            if let Err(panic) = AssertUnwindSafe($check(&mut *factory)).catch_unwind().await {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("conformance check `{}` failed: {reason}", stringify!($check));
            }
        )*};
    }
    crate::for_each_check!(checks);
}

/// Calls macro `$m` with the name of every conformance check, so a backend's test file can turn
/// each into its own test without repeating (or missing) the list:
///
/// ```ignore
/// macro_rules! conformance_tests {
///     ($($check:ident),* $(,)?) => {$(
///         #[tokio::test]
///         async fn $check() { timeline_store::conformance::$check(&mut MyFactory::new()).await; }
///     )*};
/// }
/// timeline_store::for_each_check!(conformance_tests);
/// ```
#[macro_export]
macro_rules! for_each_check {
    ($m:ident) => {
        $m!(
            inbox_seqs_are_contiguous_under_concurrent_commits,
            server_msg_ids_are_unique,
            messages_of_one_call_are_stored_in_order,
            resend_returns_the_original_as_a_duplicate_and_writes_nothing,
            reusing_a_client_msg_id_for_another_message_conflicts,
            unread_counts_rise_for_recipients_but_not_the_sender,
            mark_read_recomputes_unread_and_only_moves_forward,
            mark_read_syncs_the_marker_and_sends_a_receipt,
            recall_refuses_unknown_messages_other_senders_and_expired_windows,
            recall_erases_the_content_and_tells_every_recipient_once,
            delete_hides_messages_for_the_deleter_only,
            inbox_retention_by_count_keeps_the_newest_entries,
            inbox_retention_by_age_trims_old_entries_on_a_sweep,
            history_pages_older_and_newer_around_anchors,
            read_inbox_honours_from_to_and_limit,
            conversations_are_listed_newest_first_with_cursor_paging,
            group_creation_puts_the_owner_first_and_is_idempotent,
            adding_and_removing_members_checks_permissions_and_limits,
            joining_and_leaving_follow_openness_and_hand_over_ownership,
            group_members_page_in_user_id_order,
            delivery_cursor_keeps_the_maximum,
            groups_left_or_removed_from_leave_the_conversation_list,
            the_inbox_epoch_is_kept_across_restarts_and_differs_per_store,
            everything_survives_a_restart_and_numbering_continues,
        );
    };
}
