//! The scaled-out shape, every part a real process on loopback: two gateways, two logic nodes,
//! Redis and a Cassandra node. Users on different gateways chat; logic nodes are killed and
//! frozen mid-traffic, Redis is restarted empty, a gateway dies: no acknowledged message is
//! lost, duplicated or given a reused seq.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use im_protocol::{Body, pb};
use support::cluster::Cluster;
use support::{Client, inbox_texts_from, messages, text, to_group, to_user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_and_an_offline_user_pulls_on_reconnect() {
    let Some(cluster) = Cluster::start(2, 2) else {
        return;
    };
    let (gw0, gw1) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut alice = Client::connect(gw0, "alice", "phone").await;
    let mut bob = Client::connect(gw1, "bob", "phone").await;
    let mut carol = Client::connect(gw1, "carol", "laptop").await;

    // 1:1 across gateways, both ways, pushed.
    alice
        .send_text(to_user("bob"), "a1", "hi bob")
        .await
        .expect("sent");
    let pushed = messages(&bob.pushed_entries(1).await);
    assert_eq!(text(&pushed[0]), "hi bob");
    bob.send_text(to_user("alice"), "b1", "hi alice")
        .await
        .expect("sent");
    let pushed = messages(&alice.pushed_entries(1).await);
    assert_eq!(text(&pushed[0]), "hi alice");

    // A group with members on both gateways.
    let group = match alice
        .request(pb::GroupCreateReq {
            name: "trio".into(),
            members: vec!["bob".into(), "carol".into()],
            open: false,
            client_request_id: "g1".into(),
            broadcast: false,
        })
        .await
    {
        Body::GroupCreateResp(resp) => resp.group.expect("group").group_id,
        other => panic!("expected the group, got {other:?}"),
    };
    alice
        .send_text(to_group(&group), "a2", "hello trio")
        .await
        .expect("sent");
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

/// What one sender saw.
struct Sent {
    /// The texts acknowledged, in order.
    acked: Vec<String>,
    /// When each was acknowledged.
    acked_at: Vec<Instant>,
}

/// Sends `count` messages from `client` to `to`, each resent with the same client msg id after
/// a retryable error until it is acknowledged (what a client core does); `progress` counts the
/// acknowledgements as they come.
async fn send_acked(
    mut client: Client,
    to: String,
    prefix: String,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> Sent {
    let mut acked = Vec::new();
    let mut acked_at = Vec::new();
    for i in 0..count {
        let text = format!("{prefix}-{i}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.send_text(to_user(&to), &text, &text).await {
                Ok(_) => break,
                Err(error) if error.retryable && attempts < 200 => {
                    tokio::time::sleep(Duration::from_millis(
                        u64::from(error.retry_after_ms).clamp(50, 500),
                    ))
                    .await;
                }
                Err(error) => panic!("{text} refused after {attempts} attempts: {error:?}"),
            }
        }
        acked.push(text);
        acked_at.push(Instant::now());
        progress.fetch_add(1, Ordering::SeqCst);
    }
    Sent { acked, acked_at }
}

/// Three senders on both gateways send `count` messages each to `receiver` while `fault` runs
/// (given the cluster); then the receiver, connecting afresh, finds every acknowledged
/// message exactly once, in each sender's order, in an inbox without holes. The fault must
/// strike mid-traffic: each sender has acknowledgements from before it and after it.
async fn traffic_through(
    cluster: &mut Cluster,
    receiver: &str,
    count: usize,
    fault: impl AsyncFnOnce(&mut Cluster),
) {
    // Two senders whose calls go to logic node 0 first (the one the faults hit), one whose
    // calls go to node 1.
    let nodes: Vec<String> = cluster.logic.iter().map(|n| n.addr.to_string()).collect();
    let first_node = |user: &str| logic_remote::policy::node_order(user, &nodes)[0];
    let names = (0..).map(|i| format!("{receiver}-sender{i}"));
    let mut chosen: Vec<String> = names
        .clone()
        .filter(|u| first_node(u) == 0)
        .take(2)
        .collect();
    chosen.extend(names.filter(|u| first_node(u) == 1).take(1));
    let mut senders = Vec::new();
    let mut progress = Vec::new();
    for (sender, gateway) in chosen.into_iter().zip([0usize, 1, 0]) {
        let client = Client::connect(&cluster.gateways[gateway], &sender, "phone").await;
        let acks = Arc::new(AtomicUsize::new(0));
        progress.push(acks.clone());
        senders.push((
            sender.clone(),
            tokio::spawn(send_acked(
                client,
                receiver.to_owned(),
                sender.clone(),
                count,
                acks,
            )),
        ));
    }
    // The fault strikes once every sender has a few acknowledgements (a cold Cassandra's first
    // transactions can take longer than a fixed wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.iter().any(|acks| acks.load(Ordering::SeqCst) < 5) {
        assert!(Instant::now() < deadline, "no traffic before the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let struck = Instant::now();
    fault(cluster).await;
    let mut acked = Vec::new();
    for (sender, task) in senders {
        let sent = task.await.expect("sender ran");
        assert!(
            sent.acked_at.first().is_some_and(|t| *t < struck)
                && sent.acked_at.last().is_some_and(|t| *t > struck),
            "{sender} was sending when the fault struck"
        );
        acked.push((sender, sent.acked));
    }
    let mut reader = Client::connect(&cluster.gateways[1], receiver, "reader").await;
    for (sender, texts) in acked {
        assert_eq!(
            texts.len(),
            count,
            "every send of {sender} was acknowledged in the end"
        );
        assert_eq!(
            inbox_texts_from(&mut reader, receiver, &sender).await,
            texts,
            "{receiver} has each acknowledged message of {sender} once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_node_killed_mid_traffic_loses_and_duplicates_nothing() {
    let Some(mut cluster) = Cluster::start(2, 2) else {
        return;
    };
    traffic_through(&mut cluster, "rita", 150, async |cluster: &mut Cluster| {
        cluster.logic[0].kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.logic[0].restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_node_frozen_mid_traffic_and_resumed_loses_reuses_and_duplicates_nothing() {
    let Some(mut cluster) = Cluster::start(2, 2) else {
        return;
    };
    traffic_through(&mut cluster, "fred", 150, async |cluster: &mut Cluster| {
        // Frozen with calls in flight for four seconds: the gateways stop hearing its pongs,
        // move its calls to the other node and repeat them there with the same ids; then the
        // frozen node goes on with what it was doing, late.
        cluster.logic[0].freeze();
        tokio::time::sleep(Duration::from_secs(4)).await;
        cluster.logic[0].thaw();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_traffic_loses_nothing_and_pushes_resume() {
    let Some(mut cluster) = Cluster::start(2, 2) else {
        return;
    };
    let mut bob = Client::connect(&cluster.gateways[1], "bob", "phone").await;
    traffic_through(&mut cluster, "rosa", 150, async |cluster: &mut Cluster| {
        cluster.redis.restart_empty();
    })
    .await;
    // Once the gateways have renewed their leases they write their devices again, and pushes
    // cross gateways as before.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut alice = Client::connect(&cluster.gateways[0], "alice", "phone").await;
    alice
        .send_text(to_user("bob"), "after", "after the restart")
        .await
        .expect("sent");
    let pushed = messages(&bob.pushed_entries(1).await);
    assert_eq!(text(&pushed[0]), "after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_killed_gateway_reconnect_to_the_other_and_resume_from_their_cursor() {
    let Some(mut cluster) = Cluster::start(2, 2) else {
        return;
    };
    let mut alice = Client::connect(&cluster.gateways[0], "alice", "phone").await;
    let mut bob = Client::connect(&cluster.gateways[1], "bob", "phone").await;
    for i in 0..5 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("before {i}"))
            .await
            .expect("sent");
    }
    let seen = bob.pushed_entries(5).await;
    let cursor = seen.iter().map(|e| e.inbox_seq).max().expect("pushed");
    assert_eq!(
        messages(&seen).iter().map(text).collect::<Vec<_>>().len(),
        5
    );

    cluster.gateways[1].kill9();
    for i in 5..10 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("while away {i}"))
            .await
            .expect("sent");
    }
    // Bob's app reconnects to the gateway that is left and pulls from its cursor.
    let mut bob = Client::connect(&cluster.gateways[0], "bob", "phone").await;
    assert!(
        bob.hello.inbox_head_seq >= cursor + 5,
        "the handshake shows what is new"
    );
    let rest = bob.sync_all(cursor + 1, 100).await;
    assert_eq!(
        messages(&rest).iter().map(text).collect::<Vec<_>>(),
        (5..10)
            .map(|i| format!("while away {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        rest.first().map(|e| e.inbox_seq),
        Some(cursor + 1),
        "resumed right after the cursor"
    );
}

#[test]
fn a_gateway_without_logic_nodes_or_a_cql_store_without_nodes_is_refused_clearly() {
    for (args, hint) in [
        (vec!["--role", "gateway"], "--logic-nodes"),
        (vec!["--store", "cql"], "--cql-nodes"),
        (
            vec![
                "--role",
                "logic",
                "--store",
                "cql",
                "--cql-nodes",
                "127.0.0.1:1",
            ],
            "CQL",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_im-server"))
            .args(["--secret", support::SECRET, "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .output()
            .expect("run im-server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must not start");
        assert!(
            stderr.contains(hint),
            "{args:?}: the error names {hint}: {stderr}"
        );
    }
}
