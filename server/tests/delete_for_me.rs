//! Through the real server: delete for me (SPEC §13.7). Bob deletes messages on his phone;
//! his laptop hears of it by push, his history, sync and conversation list stop showing them,
//! across a restart, and alice keeps everything.

mod support;

use im_protocol::{Body, pb};
use support::*;

async fn delete(client: &mut Client, conversation_id: &str, seqs: &[u64]) -> Body {
    client
        .request(pb::DeleteReq {
            conversation_id: conversation_id.into(),
            conversation_seqs: seqs.to_vec(),
        })
        .await
}

async fn deleted(client: &mut Client, conversation_id: &str, seqs: &[u64]) -> u64 {
    match delete(client, conversation_id, seqs).await {
        Body::DeleteResp(resp) => resp.deleted,
        other => panic!("expected DeleteResp, got {other:?}"),
    }
}

async fn history_seqs(client: &mut Client, conversation_id: &str) -> Vec<u64> {
    match client
        .request(pb::HistoryReq {
            conversation_id: conversation_id.into(),
            anchor_seq: 0,
            direction: pb::HistoryDirection::Newer as i32,
            limit: 0,
        })
        .await
    {
        Body::HistoryResp(resp) => resp.messages.iter().map(|m| m.conversation_seq).collect(),
        other => panic!("expected HistoryResp, got {other:?}"),
    }
}

fn message_seqs(entries: &[pb::InboxEntry]) -> Vec<u64> {
    messages(entries)
        .iter()
        .map(|m| m.conversation_seq)
        .collect()
}

async fn last_message_seq(client: &mut Client, conversation_id: &str) -> Option<u64> {
    client
        .conversations()
        .await
        .into_iter()
        .find(|c| c.conversation_id == conversation_id)
        .expect("the conversation is listed")
        .last_message
        .map(|m| m.conversation_seq)
}

fn error_code(body: Body) -> i32 {
    match body {
        Body::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn deleted_messages_disappear_for_the_deleter_on_every_device_and_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let c = "d:alice:bob";
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut phone = Client::connect(&server, "bob", "phone").await;
    let mut laptop = Client::connect(&server, "bob", "laptop").await;
    for i in 1..=3 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("text {i}"))
            .await
            .unwrap();
    }
    laptop.pushed_entries(3).await;
    phone.pushed_entries(3).await;

    assert_eq!(deleted(&mut phone, c, &[2, 3, 3, 42]).await, 2);
    for device in [&mut laptop, &mut phone] {
        let pushed = device.pushed_entries(1).await;
        assert_eq!(
            pushed[0].body,
            Some(pb::inbox_entry::Body::Delete(pb::DeleteEvent {
                conversation_id: c.into(),
                conversation_seqs: vec![2, 3],
            })),
            "every device of bob hears of the delete"
        );
    }
    assert_eq!(
        deleted(&mut laptop, c, &[2]).await,
        0,
        "a repeat hides nothing new"
    );

    let check = |mut bob: Client, mut alice: Client| async move {
        assert_eq!(history_seqs(&mut bob, c).await, vec![1]);
        assert_eq!(
            history_seqs(&mut alice, c).await,
            vec![1, 2, 3],
            "alice keeps them"
        );
        let synced = bob.sync_all(0, 0).await;
        assert_eq!(
            message_seqs(&synced),
            vec![1],
            "sync no longer carries them"
        );
        assert_eq!(
            synced.iter().filter(|e| e.body.is_none()).count(),
            2,
            "their inbox seqs remain, without a body"
        );
        assert_eq!(message_seqs(&alice.sync_all(0, 0).await), vec![1, 2, 3]);
        assert_eq!(last_message_seq(&mut bob, c).await, Some(1));
        assert_eq!(last_message_seq(&mut alice, c).await, Some(3));
    };
    check(laptop, alice).await;
    drop(phone);

    assert!(server.terminate(), "the server stops cleanly");
    server.restart();
    let bob = Client::connect(&server, "bob", "tablet").await;
    let alice = Client::connect(&server, "alice", "phone").await;
    check(bob, alice).await;
}

#[tokio::test]
async fn deletes_are_refused_to_outsiders_and_above_the_seq_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    alice.send_text(to_user("bob"), "m1", "hi").await.unwrap();
    let mut eve = Client::connect(&server, "eve", "phone").await;
    assert_eq!(
        error_code(delete(&mut eve, "d:alice:bob", &[1]).await),
        pb::ErrorCode::Forbidden as i32
    );
    let too_many: Vec<u64> = (1..=1001).collect();
    assert_eq!(
        error_code(delete(&mut alice, "d:alice:bob", &too_many).await),
        pb::ErrorCode::InvalidArgument as i32
    );
    assert_eq!(
        deleted(&mut alice, "d:alice:bob", &too_many[..1000]).await,
        1,
        "1000 seqs are allowed; only the one that exists counts"
    );
}
