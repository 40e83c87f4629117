//! Read fan-out (SPEC §13.12): a group whose messages are stored once, in its timeline, with
//! an inbox entry for the sender only. Skipped by stores that do not support it
//! ([`TimelineStore::supports_read_fanout`]).

use im_protocol::ids;
use im_protocol::pb;

use super::helpers::{group_event_of, head, history, new_group, send, state, strings, to_group};
use super::{StoreFactory, T0};
use crate::{SessionStart, TimelineStore};

/// Switching a group to read fan-out tells every member once (with the last seq delivered
/// through inboxes), lists it for every member, and from then on a message reaches only the
/// sender's inbox, even when the caller listed every member; switching back fans out again.
pub async fn read_fanout_stores_a_message_once_and_switches_without_gaps<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    if refuses_read_fanout_if_unsupported(&store).await {
        return;
    }
    let change = store
        .create_group(new_group("olga", &["amy", "bob"], false, "", 10))
        .await
        .expect("create_group");
    let gid = change.group.group_id.clone();
    assert!(!change.group.read_fanout, "groups start in write fan-out");
    let conversation = ids::group_conversation_id(&gid);
    let everyone = strings(&["amy", "bob", "olga"]);
    send(
        &store,
        to_group("olga", &gid, &everyone, "w1", "one", T0 + 1),
    )
    .await;
    let amy_before = head(&store, "amy").await;

    let switched = store
        .set_group_fanout(&gid, true, T0 + 2)
        .await
        .expect("set_group_fanout(read)");
    assert!(switched.group.read_fanout);
    assert_eq!(
        switched.deliveries.len(),
        3,
        "every member hears of the switch"
    );
    let event = group_event_of(&switched.deliveries[0]);
    assert_eq!(event.kind, pb::GroupEventKind::FanoutChanged as i32);
    assert!(event.read_fanout);
    assert_eq!(event.conversation_seq, 1, "seq 1 came through the inboxes");
    assert!(store.group(&gid).await.expect("group").read_fanout);
    for user in &everyone {
        assert_eq!(
            store
                .read_fanout_groups(user)
                .await
                .expect("read_fanout_groups"),
            vec![gid.clone()],
            "{user} is listed in the read-fan-out group"
        );
    }
    // What a login reads: the inbox head and the groups to follow, or no groups when the
    // logic tier has read fan-out turned off.
    let amy_starts = store
        .session_start("amy", true)
        .await
        .expect("session_start");
    assert_eq!(
        amy_starts,
        SessionStart {
            inbox_head: head(&store, "amy").await,
            read_groups: vec![gid.clone()],
        }
    );
    assert_eq!(
        store
            .session_start("amy", false)
            .await
            .expect("session_start"),
        SessionStart {
            inbox_head: amy_starts.inbox_head,
            read_groups: Vec::new(),
        }
    );
    let again = store
        .set_group_fanout(&gid, true, T0 + 3)
        .await
        .expect("again");
    assert!(
        again.deliveries.is_empty(),
        "switching to the mode in force changes nothing"
    );

    // The caller still lists every member (it looked before the switch): the store decides.
    let read_sent = send(
        &store,
        to_group("olga", &gid, &everyone, "r1", "two", T0 + 4),
    )
    .await;
    assert_eq!(read_sent.message.conversation_seq, 2);
    assert_eq!(
        read_sent
            .deliveries
            .iter()
            .map(|d| d.user.as_str())
            .collect::<Vec<_>>(),
        vec!["olga"],
        "only the sender's inbox gets a read-fan-out message"
    );
    assert!(read_sent.sender_inbox_seq > 0);
    assert_eq!(
        head(&store, "amy").await,
        amy_before + 1,
        "amy got only the switch"
    );
    send(
        &store,
        to_group("bob", &gid, &strings(&["bob"]), "r2", "three", T0 + 5),
    )
    .await;
    assert_eq!(
        seq_list(&history(&store, &conversation).await),
        vec![1, 2, 3]
    );

    // bob's own message counts olga's message before it as unread; amy's marker moves to the
    // timeline's head although her state never saw those messages.
    assert_eq!(state(&store, "bob", &conversation).await.unread_count, 2);
    let (amy, _) = store
        .mark_read("amy", &conversation, 2, None, T0 + 6)
        .await
        .expect("mark_read in a read-fan-out group");
    assert_eq!((amy.read_seq, amy.unread_count), (2, 1));

    // Back to write fan-out at seq 3: a message listing only the sender reaches everyone,
    // and each member's unread count takes in what their state skipped.
    let back = store
        .set_group_fanout(&gid, false, T0 + 7)
        .await
        .expect("set_group_fanout(write)");
    let event = group_event_of(&back.deliveries[0]);
    assert!(!event.read_fanout);
    assert_eq!(event.conversation_seq, 3);
    for user in &everyone {
        assert!(
            store
                .read_fanout_groups(user)
                .await
                .expect("list")
                .is_empty()
        );
        assert!(
            store
                .session_start(user, true)
                .await
                .expect("session_start")
                .read_groups
                .is_empty(),
            "{user} follows no group after the switch back"
        );
    }
    let write_sent = send(
        &store,
        to_group("olga", &gid, &strings(&["olga"]), "w2", "four", T0 + 8),
    )
    .await;
    let mut reached: Vec<&str> = write_sent
        .deliveries
        .iter()
        .map(|d| d.user.as_str())
        .collect();
    reached.sort_unstable();
    assert_eq!(reached, vec!["amy", "bob", "olga"]);
    assert_eq!(
        state(&store, "amy", &conversation).await.unread_count,
        2,
        "3 and 4"
    );
    assert_eq!(
        state(&store, "bob", &conversation).await.unread_count,
        3,
        "1, 2 and 4 (3 is his own)"
    );
}

/// In a read-fan-out group a membership change is announced to the users it changes only,
/// and the read-fan-out list follows membership; a group created in read fan-out lists every
/// member.
pub async fn read_fanout_membership_events_reach_only_the_changed_users<F: StoreFactory>(
    factory: &mut F,
) {
    let store = factory.open_fresh().await;
    if refuses_read_fanout_if_unsupported(&store).await {
        return;
    }
    let mut group = new_group("olga", &["amy", "bob"], true, "", 10);
    group.read_fanout = true;
    let created = store.create_group(group).await.expect("create_group");
    let gid = created.group.group_id.clone();
    assert!(created.group.read_fanout);
    assert_eq!(created.deliveries.len(), 3, "creation reaches every member");
    let everyone = strings(&["amy", "bob", "olga"]);
    send(
        &store,
        to_group("olga", &gid, &everyone, "m1", "hello", T0 + 1),
    )
    .await;

    let added = store
        .add_members(&gid, "olga", &strings(&["cat"]), 10, T0 + 2)
        .await
        .expect("add_members");
    let reached: Vec<&str> = added.deliveries.iter().map(|d| d.user.as_str()).collect();
    assert_eq!(reached, vec!["cat"], "only the added user hears of it");
    let event = group_event_of(&added.deliveries[0]);
    assert!(event.read_fanout);
    assert_eq!(
        event.conversation_seq, 1,
        "cat follows the timeline from seq 1 on"
    );
    assert_eq!(
        store.read_fanout_groups("cat").await.expect("list"),
        vec![gid.clone()]
    );

    let joined = store
        .join_group(&gid, "dan", 10, T0 + 3)
        .await
        .expect("join");
    assert_eq!(joined.deliveries.len(), 1);
    assert_eq!(joined.deliveries[0].user, "dan");
    let removed = store
        .remove_members(&gid, "olga", &strings(&["amy"]), T0 + 4)
        .await
        .expect("remove");
    assert_eq!(removed.deliveries.len(), 1);
    assert_eq!(removed.deliveries[0].user, "amy");
    assert!(
        store
            .read_fanout_groups("amy")
            .await
            .expect("list")
            .is_empty()
    );
    let left = store.leave_group(&gid, "bob", T0 + 5).await.expect("leave");
    assert_eq!(left.deliveries.len(), 1);
    assert!(
        store
            .read_fanout_groups("bob")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store.read_fanout_groups("dan").await.expect("list"),
        vec![gid]
    );
    assert!(
        store
            .read_fanout_groups("nobody")
            .await
            .expect("list")
            .is_empty()
    );
}

/// A store without read fan-out says so, refuses to switch a group and lists no
/// read-fan-out group; every other check of this file is then skipped.
async fn refuses_read_fanout_if_unsupported<S: TimelineStore>(store: &S) -> bool {
    if store.supports_read_fanout() {
        return false;
    }
    let created = store
        .create_group(new_group("olga", &["amy"], false, "", 10))
        .await
        .expect("create_group");
    assert!(!created.group.read_fanout);
    assert!(
        store
            .set_group_fanout(&created.group.group_id, true, T0)
            .await
            .is_err(),
        "a store without read fan-out refuses to switch a group"
    );
    assert!(
        store
            .read_fanout_groups("amy")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .session_start("amy", true)
            .await
            .expect("session_start"),
        SessionStart {
            inbox_head: head(store, "amy").await,
            read_groups: Vec::new(),
        }
    );
    true
}

fn seq_list(messages: &[pb::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.conversation_seq).collect()
}
