//! Through the real server: a repeated recall answers with the original event, and a group the
//! user left or was removed from leaves their conversation list, across reconnects and
//! restarts.

mod support;

use im_protocol::{Body, pb};
use support::*;

#[tokio::test]
async fn a_repeated_recall_returns_the_original_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let ack = alice.send_text(to_user("bob"), "m1", "oops").await.unwrap();
    let recall = pb::RecallReq {
        conversation_id: ack.conversation_id.clone(),
        conversation_seq: ack.conversation_seq,
    };
    let first = match alice.request(recall.clone()).await {
        Body::RecallResp(r) => r.event.unwrap(),
        other => panic!("{other:?}"),
    };
    // Far enough apart that a new event would carry another time.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = match alice.request(recall).await {
        Body::RecallResp(r) => r.event.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(first, second);
}

async fn listed(client: &mut Client, conversation_id: &str) -> bool {
    client
        .conversations()
        .await
        .iter()
        .any(|c| c.conversation_id == conversation_id)
}

#[tokio::test]
async fn groups_left_or_removed_from_leave_the_conversation_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut olga = Client::connect(&server, "olga", "phone").await;
    let group = match olga
        .request(pb::GroupCreateReq {
            name: "team".into(),
            members: vec!["amy".into(), "ben".into()],
            ..Default::default()
        })
        .await
    {
        Body::GroupCreateResp(r) => r.group.unwrap().group_id,
        other => panic!("{other:?}"),
    };
    let conversation = format!("g:{group}");
    olga.send_text(to_group(&group), "o1", "hello")
        .await
        .unwrap();

    let mut amy = Client::connect(&server, "amy", "phone").await;
    assert!(listed(&mut amy, &conversation).await);
    match amy
        .request(pb::GroupLeaveReq {
            group_id: group.clone(),
        })
        .await
    {
        Body::GroupLeaveResp(_) => {}
        other => panic!("{other:?}"),
    }
    match olga
        .request(pb::GroupRemoveMembersReq {
            group_id: group.clone(),
            members: vec!["ben".into()],
        })
        .await
    {
        Body::GroupRemoveMembersResp(_) => {}
        other => panic!("{other:?}"),
    }
    assert!(!listed(&mut amy, &conversation).await, "amy left");
    drop((amy, olga));
    assert!(server.terminate(), "clean shutdown");
    server.restart();
    let mut amy = Client::connect(&server, "amy", "phone").await;
    let mut ben = Client::connect(&server, "ben", "phone").await;
    let mut olga = Client::connect(&server, "olga", "phone").await;
    assert!(
        !listed(&mut amy, &conversation).await,
        "amy left, after a restart"
    );
    assert!(
        !listed(&mut ben, &conversation).await,
        "ben was removed, after a restart"
    );
    assert!(
        listed(&mut olga, &conversation).await,
        "olga is still a member"
    );
}
