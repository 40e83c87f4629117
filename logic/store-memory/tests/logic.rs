//! The real logic tier over the in-memory store: what a simulation does, in miniature.

use im_protocol::Body;
use im_protocol::pb::{self, inbox_entry::Body as Entry, send_req::Target};
use logic::{Caller, Logic, LogicConfig};
use store_memory::MemoryStore;

fn caller(user: &str) -> Caller {
    Caller {
        user: user.into(),
        device: "phone".into(),
    }
}

fn sync_from(from_seq: u64) -> Body {
    Body::SyncReq(pb::SyncReq {
        from_seq,
        limit: 0,
        to_seq: 0,
    })
}

#[tokio::test]
async fn a_message_sent_through_logic_reaches_the_peers_inbox_and_a_resend_is_a_duplicate() {
    let logic = Logic::new(MemoryStore::new(42), LogicConfig::default());
    let send = || {
        Body::SendReq(pb::SendReq {
            target: Some(Target::ToUser("bob".into())),
            client_msg_id: "m1".into(),
            content_type: 0,
            content: b"hello".to_vec(),
        })
    };

    let (reply, effects) = logic.handle(&caller("alice"), send()).await;
    let Ok(Some(Body::SendAck(ack))) = reply else {
        panic!("no ack: {reply:?}");
    };
    assert!(!ack.duplicate);
    assert_eq!(ack.conversation_id, "d:alice:bob");
    let pushed: Vec<&str> = effects.deliveries.iter().map(|d| d.user.as_str()).collect();
    assert_eq!(pushed, ["alice", "bob"], "pushed to both users' devices");

    let (reply, _) = logic.handle(&caller("bob"), sync_from(1)).await;
    let Ok(Some(Body::SyncResp(sync))) = reply else {
        panic!("no sync: {reply:?}");
    };
    assert_eq!(sync.inbox_epoch, 42, "the store's epoch reaches the client");
    assert_eq!(sync.head_seq, 1);
    let Some(Entry::Message(message)) = &sync.entries[0].body else {
        panic!("not a message: {:?}", sync.entries[0]);
    };
    assert_eq!(message.content, b"hello");

    let (reply, effects) = logic.handle(&caller("alice"), send()).await;
    let Ok(Some(Body::SendAck(again))) = reply else {
        panic!("no ack: {reply:?}");
    };
    assert!(again.duplicate, "a resend is acknowledged as a duplicate");
    assert_eq!(again.server_msg_id, ack.server_msg_id);
    assert!(effects.deliveries.is_empty(), "and pushes nothing");
}

#[tokio::test]
async fn a_group_created_through_logic_fans_messages_out_to_its_members() {
    let logic = Logic::new(MemoryStore::new(1), LogicConfig::default());
    let (reply, _) = logic
        .handle(
            &caller("olga"),
            Body::GroupCreateReq(pb::GroupCreateReq {
                name: "team".into(),
                members: vec!["amy".into(), "ben".into()],
                open: false,
                client_request_id: "create-1".into(),
                broadcast: false,
            }),
        )
        .await;
    let Ok(Some(Body::GroupCreateResp(created))) = reply else {
        panic!("no group: {reply:?}");
    };
    let group_id = created.group.expect("the group's info").group_id;

    let (reply, effects) = logic
        .handle(
            &caller("amy"),
            Body::SendReq(pb::SendReq {
                target: Some(Target::ToGroup(group_id.clone())),
                client_msg_id: "g1".into(),
                content_type: 0,
                content: b"hi all".to_vec(),
            }),
        )
        .await;
    assert!(matches!(reply, Ok(Some(Body::SendAck(_)))), "{reply:?}");
    let pushed: Vec<&str> = effects.deliveries.iter().map(|d| d.user.as_str()).collect();
    assert_eq!(pushed, ["amy", "ben", "olga"]);

    let (reply, _) = logic
        .handle(
            &caller("mallory"),
            Body::SendReq(pb::SendReq {
                target: Some(Target::ToGroup(group_id)),
                client_msg_id: "x".into(),
                content_type: 0,
                content: b"let me in".to_vec(),
            }),
        )
        .await;
    let Err(error) = reply else {
        panic!("a non-member sent to the group: {reply:?}");
    };
    assert_eq!(error.code, pb::ErrorCode::Forbidden as i32);
}
