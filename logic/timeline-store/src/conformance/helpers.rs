//! What the checks share: message and group builders, reads that follow cursors to the end,
//! and assertions about group events.

use im_protocol::ids;
use im_protocol::pb::{self, inbox_entry::Body};

use super::{ALL, T0};
use crate::{
    CommittedMessage, ConversationState, Delivery, GroupChange, NewGroup, NewMessage, TimelineStore,
};

pub(super) fn direct(
    sender: &str,
    peer: &str,
    client_msg_id: &str,
    content: &str,
    now_ms: u64,
) -> NewMessage {
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

pub(super) fn to_group(
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

pub(super) fn new_group(
    owner: &str,
    members: &[&str],
    open: bool,
    request: &str,
    max: u32,
) -> NewGroup {
    NewGroup {
        name: format!("{owner}'s group"),
        owner: owner.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        open,
        client_request_id: request.to_owned(),
        max_members: max,
        read_fanout: false,
        broadcast: false,
        now_ms: T0,
    }
}

pub(super) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Commits one message and expects success.
pub(super) async fn send<S: TimelineStore>(store: &S, message: NewMessage) -> CommittedMessage {
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

pub(super) async fn head<S: TimelineStore>(store: &S, user: &str) -> u64 {
    store
        .inbox_head(user)
        .await
        .unwrap_or_else(|e| panic!("inbox_head({user}) failed: {e}"))
}

/// A user's whole inbox, read in pages of 7 to exercise paging.
pub(super) async fn whole_inbox<S: TimelineStore>(store: &S, user: &str) -> Vec<pb::InboxEntry> {
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

pub(super) async fn state<S: TimelineStore>(
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

pub(super) async fn history<S: TimelineStore>(
    store: &S,
    conversation_id: &str,
) -> Vec<pb::Message> {
    store
        .read_history(conversation_id, 0, pb::HistoryDirection::Newer, ALL)
        .await
        .unwrap_or_else(|e| panic!("read_history({conversation_id}) failed: {e}"))
        .messages
}

/// Every conversation of a user, following cursors with pages of 2.
pub(super) async fn all_conversations<S: TimelineStore>(
    store: &S,
    user: &str,
) -> Vec<ConversationState> {
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

pub(super) async fn all_members<S: TimelineStore>(
    store: &S,
    group_id: &str,
) -> Vec<pb::GroupMember> {
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

pub(super) fn message_of(entry: &pb::InboxEntry) -> Option<&pb::Message> {
    match &entry.body {
        Some(Body::Message(message)) => Some(message),
        _ => None,
    }
}

pub(super) fn group_event_of(delivery: &Delivery) -> &pb::GroupEvent {
    match &delivery.entry.body {
        Some(Body::GroupEvent(event)) => event,
        other => panic!("expected a GroupEvent for {}, got {other:?}", delivery.user),
    }
}

pub(super) fn seqs(messages: &[pb::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.conversation_seq).collect()
}

/// Checks a group change's deliveries: one `kind` event per user of `audience`, each with the
/// given changed members, stored at that user's inbox seq.
pub(super) async fn assert_group_event<S: TimelineStore>(
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

/// The seqs of a history page as `viewer` sees it.
pub(super) async fn history_as<S: TimelineStore>(
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
