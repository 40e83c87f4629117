//! Oversized ids and cursors from one client: refused at the edge with INVALID_ARGUMENT and a
//! short text, never a panic in the store, and never a failure of another user's request that
//! shared a group commit with them.

mod support;

use im_protocol::{Body, pb};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ids_and_cursors_fail_alone_with_a_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut mallory = Client::connect(&server, "mallory", "phone").await;
    let group = match mallory
        .request(pb::GroupCreateReq {
            name: "mine".into(),
            ..Default::default()
        })
        .await
    {
        Body::GroupCreateResp(r) => r.group.unwrap().group_id,
        other => panic!("{other:?}"),
    };

    // A bystander keeps sending while the attacker's requests go through the same store.
    let addr_server = &server;
    let bystander = async {
        let mut alice = Client::connect(addr_server, "alice", "phone").await;
        let mut failures = Vec::new();
        for round in 0..30 {
            let mut ids = Vec::new();
            for i in 0..10 {
                ids.push(
                    alice
                        .send_only(pb::SendReq {
                            target: Some(to_user("bob")),
                            client_msg_id: format!("m{round}-{i}"),
                            content: b"hello".to_vec(),
                            ..Default::default()
                        })
                        .await,
                );
            }
            for id in ids {
                let body = alice.response(id).await;
                if !matches!(body, Body::SendAck(_)) {
                    failures.push(body);
                }
            }
        }
        failures
    };
    let attacker = async {
        let mut codes = Vec::new();
        for i in 0..300 {
            let request_id = if i % 10 == 9 {
                mallory
                    .send_only(pb::GroupMembersReq {
                        group_id: group.clone(),
                        cursor: "c".repeat(900 * 1024),
                        ..Default::default()
                    })
                    .await
            } else {
                mallory
                    .send_only(pb::GroupCreateReq {
                        name: "spam".into(),
                        client_request_id: format!("{i}-{}", "r".repeat(64 * 1024)),
                        ..Default::default()
                    })
                    .await
            };
            match mallory.response(request_id).await {
                Body::Error(e) => {
                    assert!(
                        e.message.len() <= 200,
                        "error text of {} bytes",
                        e.message.len()
                    );
                    codes.push(pb::ErrorCode::try_from(e.code).unwrap());
                }
                other => panic!("an oversized request was accepted: {other:?}"),
            }
        }
        codes
    };
    let (failures, codes) = tokio::join!(bystander, attacker);
    assert!(
        failures.is_empty(),
        "bystander sends failed: {:?}",
        &failures[..failures.len().min(3)]
    );
    assert!(
        codes.iter().all(|c| *c == pb::ErrorCode::InvalidArgument),
        "{:?}",
        codes
            .iter()
            .filter(|c| **c != pb::ErrorCode::InvalidArgument)
            .take(3)
            .collect::<Vec<_>>()
    );
    // Every one of the bystander's messages is stored.
    let mut bob = Client::connect(&server, "bob", "phone").await;
    assert_eq!(bob.sync_all(0, 500).await.len(), 300);
}
