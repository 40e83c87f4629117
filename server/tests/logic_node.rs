//! The split shape on loopback, without a cluster's services: a logic node (`im-server logic`,
//! the embedded store in its own data directory) and a gateway (`im-server --logic-nodes`),
//! both real processes. Users chat through it; the logic node is killed with SIGKILL while
//! clients keep sending and restarted on the same data and address: every acknowledged
//! message is in its recipient's inbox exactly once.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use im_protocol::pb::send_req::Target;
use im_protocol::{Body, pb};
use support::cluster::LogicNode;
use support::{Client, Server, inbox_texts_from, messages, text, to_group, to_user};

/// A logic node and a gateway calling it.
struct Split {
    dir: tempfile::TempDir,
    logic: LogicNode,
    gateway: Server,
}

impl Split {
    fn start() -> Split {
        let dir = tempfile::tempdir().expect("temp dir");
        let logic = LogicNode::start_embedded(&dir.path().join("logic"));
        let gateway_dir = dir.path().join("gateway");
        std::fs::create_dir_all(&gateway_dir).expect("gateway dir");
        let gateway =
            Server::start_process(&gateway_dir, &["--logic-nodes", &logic.addr.to_string()]);
        Split {
            dir,
            logic,
            gateway,
        }
    }
}

/// Creates a group of `owner` with `members`; returns its id.
async fn create_group(owner: &mut Client, members: &[&str], request_id: &str) -> String {
    match owner
        .request(pb::GroupCreateReq {
            name: "group".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            open: false,
            client_request_id: request_id.into(),
            broadcast: false,
        })
        .await
    {
        Body::GroupCreateResp(resp) => resp.group.expect("group").group_id,
        other => panic!("expected the group, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_chat_one_to_one_and_in_a_group_through_a_gateway_and_a_logic_node() {
    let split = Split::start();
    let mut alice = Client::connect(&split.gateway, "alice", "phone").await;
    let mut bob = Client::connect(&split.gateway, "bob", "phone").await;
    let mut carol = Client::connect(&split.gateway, "carol", "laptop").await;
    assert_ne!(
        alice.hello.inbox_epoch, 0,
        "the handshake carries the logic node's inbox epoch"
    );

    // 1:1 both ways, pushed.
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

    // A group of three.
    let group = create_group(&mut alice, &["bob", "carol"], "g1").await;
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
    carol
        .send_text(to_group(&group), "c1", "hi both")
        .await
        .expect("sent");

    // Dave was offline: he pulls what was sent to him.
    alice
        .send_text(to_user("dave"), "d1", "for dave")
        .await
        .expect("sent");
    let mut dave = Client::connect(&split.gateway, "dave", "tablet").await;
    assert_eq!(
        inbox_texts_from(&mut dave, "dave", "alice").await,
        vec!["for dave"]
    );
    assert_eq!(
        inbox_texts_from(&mut bob, "bob", "alice").await,
        vec!["hi bob", "hello trio"]
    );
    assert_eq!(
        inbox_texts_from(&mut bob, "bob", "carol").await,
        vec!["hi both"]
    );

    // The gateway holds no messages: only the logic node opened a store.
    assert!(split.dir.path().join("logic").join("store").exists());
    assert!(
        !split.gateway.data_dir.join("store").exists(),
        "a gateway alone opens no store"
    );
}

/// What one sender saw.
#[derive(Default)]
struct Sent {
    /// The texts acknowledged, in order (each text is also its client msg id).
    acked: Vec<String>,
    /// How many answers were retryable errors, after which the same send was resent.
    retried: usize,
    /// The codes of those errors.
    retry_codes: Vec<i32>,
    /// Acknowledgements of a resend that found the message stored already: the attempt that
    /// got the error had in fact been stored (its outcome was unknown to the gateway).
    found_stored: usize,
}

/// Keeps `client` sending to `to` until `stop`: each message is resent with the same client
/// msg id after a retryable error until it is acknowledged (what a client core does);
/// `acked` counts the acknowledgements as they come.
async fn keep_sending(
    mut client: Client,
    to: Target,
    prefix: &str,
    acked_count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Sent {
    let mut sent = Sent::default();
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let text = format!("{prefix}-{i}");
        loop {
            match client.send_text(to.clone(), &text, &text).await {
                Ok(ack) => {
                    sent.found_stored += usize::from(ack.duplicate);
                    break;
                }
                Err(error) if error.retryable && sent.retried < 1000 => {
                    sent.retried += 1;
                    sent.retry_codes.push(error.code);
                    tokio::time::sleep(Duration::from_millis(
                        u64::from(error.retry_after_ms).clamp(50, 500),
                    ))
                    .await;
                }
                Err(error) => panic!("{text} refused: {error:?}"),
            }
        }
        sent.acked.push(text);
        acked_count.fetch_add(1, Ordering::SeqCst);
    }
    sent
}

/// Waits until `count` reaches `at_least`.
async fn until_at_least(count: &AtomicUsize, at_least: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {} of {at_least}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_node_killed_mid_traffic_and_restarted_on_its_data_loses_and_duplicates_no_acked_message()
 {
    let mut split = Split::start();
    let mut alice = Client::connect(&split.gateway, "alice", "phone").await;
    let carol = Client::connect(&split.gateway, "carol", "phone").await;
    let group = create_group(&mut alice, &["bob", "carol"], "g-kill").await;
    let epoch = alice.hello.inbox_epoch;

    // Alice writes to Bob directly, Carol to the group: both land in Bob's inbox.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let senders = [
        tokio::spawn(keep_sending(
            alice,
            to_user("bob"),
            "alice",
            counts[0].clone(),
            stop.clone(),
        )),
        tokio::spawn(keep_sending(
            carol,
            to_group(&group),
            "carol",
            counts[1].clone(),
            stop.clone(),
        )),
    ];
    for count in &counts {
        until_at_least(count, 20, "acknowledgements before the kill").await;
    }

    split.logic.kill9();
    let at_kill: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    split.logic.restart();
    for (count, before) in counts.iter().zip(&at_kill) {
        until_at_least(count, before + 20, "acknowledgements after the restart").await;
    }
    stop.store(true, Ordering::SeqCst);

    let mut results = Vec::new();
    for sender in senders {
        results.push(sender.await.expect("sender ran"));
    }
    let retried: usize = results.iter().map(|s| s.retried).sum();
    eprintln!(
        "acknowledged {:?} (at the kill {at_kill:?}), resent after a retryable error {retried} \
         times, {} of them found stored already",
        results.iter().map(|s| s.acked.len()).collect::<Vec<_>>(),
        results.iter().map(|s| s.found_stored).sum::<usize>()
    );
    assert!(
        retried > 0,
        "sends were answered with a retryable error while the node was down, and resent"
    );
    for sent in &results {
        for code in &sent.retry_codes {
            assert_eq!(
                *code,
                pb::ErrorCode::Unavailable as i32,
                "a dead logic node is UNAVAILABLE to clients"
            );
        }
    }

    // Bob, connecting afresh, finds each acknowledged message once, in each sender's order,
    // in an inbox without holes.
    let mut bob = Client::connect(&split.gateway, "bob", "reader").await;
    assert_eq!(
        bob.hello.inbox_epoch, epoch,
        "the restarted node kept its inbox numbering"
    );
    for (sender, sent) in ["alice", "carol"].iter().zip(&results) {
        assert_eq!(
            inbox_texts_from(&mut bob, "bob", sender).await,
            sent.acked,
            "bob has each acknowledged message of {sender} once, in order"
        );
    }
}

#[test]
fn a_logic_node_needs_an_address_and_logic_nodes_do_not_mix_with_another_role() {
    for (args, hint) in [
        (vec!["logic"], "--listen"),
        (
            vec!["--role", "all", "--logic-nodes", "127.0.0.1:1"],
            "--logic-nodes",
        ),
        (
            vec!["--role", "logic", "--logic-nodes", "127.0.0.1:1"],
            "--logic-nodes",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_im-server"))
            .args(["--secret", support::SECRET])
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
