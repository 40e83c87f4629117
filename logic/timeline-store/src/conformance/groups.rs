//! Groups: creation, adding and removing members, joining and leaving, member pages, and the
//! conversation list of users who left.

use std::collections::BTreeSet;

use im_protocol::ids;
use im_protocol::pb;

use super::helpers::{
    all_conversations, all_members, assert_group_event, group_event_of, head, new_group, send,
    state, strings, to_group,
};
use super::{StoreFactory, T0};
use crate::{ConversationState, StoreError, TimelineStore};

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

/// A member who leaves and joins again counts as the newest member (the owner's successor is
/// chosen among those who stayed longer), and starts with nothing unread: the messages sent
/// while they were away never reached them.
pub async fn a_member_who_rejoins_ranks_newest_and_starts_with_nothing_unread<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let gid = store
        .create_group(new_group("olga", &["amy", "ben"], true, "", 10))
        .await
        .expect("create_group")
        .group
        .group_id;
    let c = ids::group_conversation_id(&gid);
    let everyone = strings(&["amy", "ben", "olga"]);
    send(
        &store,
        to_group("olga", &gid, &everyone, "o1", "hi", T0 + 1),
    )
    .await;
    store
        .leave_group(&gid, "amy", T0 + 2)
        .await
        .expect("amy leaves");
    let amy_head = head(&store, "amy").await;
    let stayed = strings(&["ben", "olga"]);
    send(&store, to_group("olga", &gid, &stayed, "o2", "hi", T0 + 3)).await;
    send(&store, to_group("olga", &gid, &stayed, "o3", "hi", T0 + 4)).await;
    assert_eq!(
        head(&store, "amy").await,
        amy_head,
        "nothing reaches amy while she is away"
    );

    let back = store
        .join_group(&gid, "amy", 10, T0 + 5)
        .await
        .expect("amy joins again");
    assert_eq!(back.changed, strings(&["amy"]));
    let amy = state(&store, "amy", &c).await;
    assert_eq!(
        (amy.last_seq, amy.read_seq, amy.unread_count),
        (3, 3, 0),
        "amy starts at the conversation's head with nothing unread"
    );
    assert_eq!(amy.updated_ms, T0 + 5);

    let left = store
        .leave_group(&gid, "olga", T0 + 6)
        .await
        .expect("the owner leaves");
    assert_eq!(
        left.group.owner, "ben",
        "ben has been a member longer than amy, who rejoined"
    );
}

/// A broadcast channel (SPEC §13.8) is a flag of the group, set at creation and kept through
/// membership changes and a restart; an ordinary group does not have it.
pub async fn a_broadcast_channel_keeps_its_flag_through_changes_and_restarts<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    let mut channel = new_group("olga", &["amy"], true, "", 10);
    channel.broadcast = true;
    let created = store.create_group(channel).await.expect("create_group");
    assert!(
        created.group.broadcast,
        "the creation answer shows the flag"
    );
    let gid = created.group.group_id.clone();
    let ordinary = store
        .create_group(new_group("olga", &["amy"], true, "", 10))
        .await
        .expect("create_group");
    assert!(!ordinary.group.broadcast);
    let added = store
        .add_members(&gid, "olga", &strings(&["bob"]), 10, T0 + 1)
        .await
        .expect("add_members");
    assert!(added.group.broadcast, "an add keeps the flag");
    store
        .join_group(&gid, "cat", 10, T0 + 2)
        .await
        .expect("join_group");
    let store = factory.reopen(store).await;
    let group = store.group(&gid).await.expect("group");
    assert!(group.broadcast, "kept across a restart");
    assert_eq!(group.member_count, 4);
    assert!(
        !store
            .group(&ordinary.group.group_id)
            .await
            .expect("group")
            .broadcast
    );
}
