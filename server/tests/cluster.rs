//! The scaled-out shape, every part a real process on loopback: two gateways, two logic nodes,
//! Redis and a Cassandra node. Users on different gateways chat; logic nodes are killed and
//! frozen mid-traffic, Redis is restarted empty, a gateway dies: no acknowledged message is
//! lost, duplicated or given a reused seq.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use im_protocol::{Body, pb};
use support::cluster::Cluster;
use support::{Client, messages, text, to_group, to_user};

/// Checks `user`'s whole inbox through `client`: seqs run 1..=head without a hole, and no
/// message is there twice. Returns the texts of the messages from `from`, in inbox order.
async fn inbox_texts_from(client: &mut Client, user: &str, from: &str) -> Vec<String> {
    let entries = client.sync_all(1, 200).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.inbox_seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the inbox of {user} has no hole");
    let all = messages(&entries);
    let ids: BTreeSet<u64> = all.iter().map(|m| m.server_msg_id).collect();
    assert_eq!(ids.len(), all.len(), "no message twice in the inbox of {user}");
    all.iter()
        .filter(|m| m.sender_user == from)
        .map(text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_and_an_offline_user_pulls_on_reconnect() {
    let Some(cluster) = Cluster::start(2, 2) else { return };
    let (gw0, gw1) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut alice = Client::connect(gw0, "alice", "phone").await;
    let mut bob = Client::connect(gw1, "bob", "phone").await;
    let mut carol = Client::connect(gw1, "carol", "laptop").await;

    // 1:1 across gateways, both ways, pushed.
    alice.send_text(to_user("bob"), "a1", "hi bob").await.expect("sent");
    let pushed = messages(&bob.pushed_entries(1).await);
    assert_eq!(text(&pushed[0]), "hi bob");
    bob.send_text(to_user("alice"), "b1", "hi alice").await.expect("sent");
    let pushed = messages(&alice.pushed_entries(1).await);
    assert_eq!(text(&pushed[0]), "hi alice");

    // A group with members on both gateways.
    let group = match alice
        .request(pb::GroupCreateReq {
            name: "trio".into(),
            members: vec!["bob".into(), "carol".into()],
            open: false,
            client_request_id: "g1".into(),
        })
        .await
    {
        Body::GroupCreateResp(resp) => resp.group.expect("group").group_id,
        other => panic!("expected the group, got {other:?}"),
    };
    alice.send_text(to_group(&group), "a2", "hello trio").await.expect("sent");
    for member in [&mut bob, &mut carol] {
        let mut seen = Vec::new();
        while !seen.contains(&"hello trio".to_string()) {
            seen.extend(messages(&member.pushed_entries(1).await).iter().map(text));
        }
    }

    // Dave is offline; he pulls everything when he comes, on either gateway.
    for i in 0..3 {
        alice
            .send_text(to_user("dave"), &format!("d{i}"), &format!("for dave {i}"))
            .await
            .expect("sent");
    }
    let mut dave = Client::connect(gw1, "dave", "tablet").await;
    assert_eq!(
        inbox_texts_from(&mut dave, "dave", "alice").await,
        vec!["for dave 0", "for dave 1", "for dave 2"]
    );

    // The same device logging in on the other gateway closes its old connection there.
    let _bob_again = Client::connect(gw0, "bob", "phone").await;
    loop {
        match bob.next_frame().await {
            None => panic!("the old connection closed without a kick"),
            Some(frame) if frame.is_push() => {
                if let Ok(Body::Kick(kick)) = frame.decode_body() {
                    assert_eq!(kick.reason, pb::KickReason::LoggedInElsewhere as i32);
                    break;
                }
            }
            Some(_) => {}
        }
    }
}
