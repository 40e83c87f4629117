//! Read fan-out through the business tier (SPEC §13.12), over the memory and embedded stores:
//! a group crosses the threshold both ways by membership changes, and the unread counts, the
//! conversation list and the sync's list of heads stay exact throughout.

use im_protocol::{Body, pb};
use logic::{Caller, Logic, LogicConfig};
use timeline_store::TimelineStore;

fn caller(user: &str) -> Caller {
    Caller {
        user: user.into(),
        device: "phone".into(),
    }
}

async fn send<S: TimelineStore>(logic: &Logic<S>, from: &str, group: &str, id: &str) -> u64 {
    let (mut replies, _) = logic
        .send_batch(
            &caller(from),
            vec![pb::SendReq {
                target: Some(pb::send_req::Target::ToGroup(group.into())),
                client_msg_id: id.into(),
                content_type: 0,
                content: b"hi".to_vec(),
            }],
        )
        .await;
    replies.pop().unwrap().expect("sent").conversation_seq
}

async fn summary<S: TimelineStore>(
    logic: &Logic<S>,
    user: &str,
    conversation: &str,
) -> pb::ConversationSummary {
    let (reply, _) = logic
        .handle(
            &caller(user),
            pb::ConversationsReq {
                limit: 10,
                cursor: String::new(),
            }
            .into(),
        )
        .await;
    let Ok(Some(Body::ConversationsResp(list))) = reply else {
        panic!("list refused: {reply:?}");
    };
    list.conversations
        .into_iter()
        .find(|c| c.conversation_id == conversation)
        .unwrap_or_else(|| panic!("{user} does not list {conversation}"))
}

async fn change<S: TimelineStore>(logic: &Logic<S>, body: Body) -> pb::GroupInfo {
    let (reply, _) = logic.handle(&caller("owner"), body).await;
    match reply {
        Ok(Some(Body::GroupAddMembersResp(r))) => r.group.unwrap(),
        Ok(Some(Body::GroupRemoveMembersResp(r))) => r.group.unwrap(),
        Ok(Some(Body::GroupCreateResp(r))) => r.group.unwrap(),
        other => panic!("refused: {other:?}"),
    }
}

async fn crossing_both_ways_keeps_unread_counts_exact<S: TimelineStore>(store: S) {
    let logic = Logic::new(
        store,
        LogicConfig {
            read_fanout_threshold: 4,
            ..LogicConfig::default()
        },
    );
    let group = change(
        &logic,
        pb::GroupCreateReq {
            name: "g".into(),
            members: vec!["amy".into(), "bob".into()],
            open: false,
            client_request_id: String::new(),
            broadcast: false,
        }
        .into(),
    )
    .await;
    assert!(!group.read_fanout);
    let gid = group.group_id;
    let conversation = format!("g:{gid}");
    send(&logic, "owner", &gid, "w1").await;
    send(&logic, "amy", &gid, "w2").await;
    let up = change(
        &logic,
        pb::GroupAddMembersReq {
            group_id: gid.clone(),
            members: vec!["cat".into(), "dan".into()],
        }
        .into(),
    )
    .await;
    assert!(up.read_fanout, "5 members is above 4");
    for i in 0..5 {
        send(&logic, "owner", &gid, &format!("r{i}")).await;
    }
    send(&logic, "amy", &gid, "r-amy").await;
    let bob = summary(&logic, "bob", &conversation).await;
    assert_eq!(
        (bob.last_seq, bob.unread_count),
        (8, 8),
        "bob: all 8 are others'"
    );
    let amy = summary(&logic, "amy", &conversation).await;
    assert_eq!(amy.unread_count, 6, "amy: 8 but her own 2");
    let cat = summary(&logic, "cat", &conversation).await;
    assert_eq!(cat.unread_count, 6, "cat joined after seq 2");
    assert_eq!(
        cat.last_message.map(|m| m.client_msg_id).as_deref(),
        Some("r-amy")
    );

    // The sync lists the group's head for the members.
    let (reply, _) = logic
        .handle(&caller("bob"), pb::SyncReq::default().into())
        .await;
    let Ok(Some(Body::SyncResp(sync))) = reply else {
        panic!("sync refused");
    };
    assert_eq!(sync.read_groups.len(), 1);
    assert_eq!(sync.read_groups[0].last_seq, 8);

    let down = change(
        &logic,
        pb::GroupRemoveMembersReq {
            group_id: gid.clone(),
            members: vec!["cat".into(), "dan".into(), "amy".into()],
        }
        .into(),
    )
    .await;
    assert!(!down.read_fanout, "2 members is half of 4");
    send(&logic, "owner", &gid, "w3").await;
    let bob = summary(&logic, "bob", &conversation).await;
    assert_eq!(
        (bob.last_seq, bob.unread_count),
        (9, 9),
        "bob after the switch back"
    );
    let (reply, _) = logic
        .handle(&caller("bob"), pb::SyncReq::default().into())
        .await;
    let Ok(Some(Body::SyncResp(sync))) = reply else {
        panic!("sync refused");
    };
    assert!(
        sync.read_groups.is_empty(),
        "no read-fan-out group any more"
    );
}

#[tokio::test]
async fn crossing_both_ways_keeps_unread_counts_exact_in_the_memory_store() {
    crossing_both_ways_keeps_unread_counts_exact(store_memory::MemoryStore::new(1)).await;
}

#[tokio::test]
async fn crossing_both_ways_keeps_unread_counts_exact_in_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("opens");
    crossing_both_ways_keeps_unread_counts_exact(store).await;
}

async fn send_refused<S: TimelineStore>(logic: &Logic<S>, from: &str, group: &str) -> pb::Error {
    let (mut replies, _) = logic
        .send_batch(
            &caller(from),
            vec![pb::SendReq {
                target: Some(pb::send_req::Target::ToGroup(group.into())),
                client_msg_id: format!("{from}-1"),
                content_type: 0,
                content: b"me too".to_vec(),
            }],
        )
        .await;
    replies
        .pop()
        .unwrap()
        .expect_err("a subscriber cannot post")
}

async fn refused<S: TimelineStore>(logic: &Logic<S>, user: &str, body: Body) -> pb::Error {
    match logic.handle(&caller(user), body).await.0 {
        Err(e) => e,
        Ok(other) => panic!("{user}'s request succeeded: {other:?}"),
    }
}

/// A broadcast channel (SPEC §13.8): only the owner posts and adds members; it is in read
/// fan-out from its creation, however small, and stays there when it shrinks.
async fn a_broadcast_channel_lets_only_its_owner_post<S: TimelineStore>(store: S) {
    let logic = Logic::new(
        store,
        LogicConfig {
            read_fanout_threshold: 4,
            ..LogicConfig::default()
        },
    );
    let channel = change(
        &logic,
        pb::GroupCreateReq {
            name: "news".into(),
            members: vec!["amy".into(), "bob".into()],
            open: true,
            client_request_id: String::new(),
            broadcast: true,
        }
        .into(),
    )
    .await;
    assert!(channel.broadcast);
    assert!(channel.read_fanout, "a channel of 3 starts in read fan-out");
    let gid = channel.group_id;
    assert_eq!(send(&logic, "owner", &gid, "n1").await, 1);

    let error = send_refused(&logic, "amy", &gid).await;
    assert_eq!(error.code, pb::ErrorCode::Forbidden as i32);
    let error = refused(
        &logic,
        "amy",
        pb::GroupAddMembersReq {
            group_id: gid.clone(),
            members: vec!["cat".into()],
        }
        .into(),
    )
    .await;
    assert_eq!(error.code, pb::ErrorCode::Forbidden as i32);

    // Subscribers join an open channel themselves; the owner removes; it never switches back.
    let (joined, _) = logic
        .handle(
            &caller("cat"),
            pb::GroupJoinReq {
                group_id: gid.clone(),
            }
            .into(),
        )
        .await;
    assert!(
        matches!(joined, Ok(Some(Body::GroupJoinResp(_)))),
        "{joined:?}"
    );
    let shrunk = change(
        &logic,
        pb::GroupRemoveMembersReq {
            group_id: gid.clone(),
            members: vec!["amy".into(), "bob".into(), "cat".into()],
        }
        .into(),
    )
    .await;
    assert_eq!(shrunk.member_count, 1);
    assert!(
        shrunk.read_fanout && shrunk.broadcast,
        "still a read-fan-out channel (the flag read back from the store)"
    );
    assert_eq!(send(&logic, "owner", &gid, "n2").await, 2);
}

#[tokio::test]
async fn a_broadcast_channel_lets_only_its_owner_post_in_the_memory_store() {
    a_broadcast_channel_lets_only_its_owner_post(store_memory::MemoryStore::new(1)).await;
}

#[tokio::test]
async fn a_broadcast_channel_lets_only_its_owner_post_in_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("opens");
    a_broadcast_channel_lets_only_its_owner_post(store).await;
}

/// With read fan-out off (a threshold of 0, as on a cluster's logic nodes), a channel is in
/// write fan-out and still only its owner posts.
#[tokio::test]
async fn a_broadcast_channel_without_read_fanout_still_lets_only_its_owner_post() {
    let logic = Logic::new(
        store_memory::MemoryStore::new(1),
        LogicConfig {
            read_fanout_threshold: 0,
            ..LogicConfig::default()
        },
    );
    let channel = change(
        &logic,
        pb::GroupCreateReq {
            name: "news".into(),
            members: vec!["amy".into()],
            open: false,
            client_request_id: String::new(),
            broadcast: true,
        }
        .into(),
    )
    .await;
    assert!(channel.broadcast && !channel.read_fanout);
    let gid = channel.group_id;
    send(&logic, "owner", &gid, "n1").await;
    let error = send_refused(&logic, "amy", &gid).await;
    assert_eq!(error.code, pb::ErrorCode::Forbidden as i32);
}
