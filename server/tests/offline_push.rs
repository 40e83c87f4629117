//! Offline push through a real server process to a real local push gateway (the webhook
//! provider): a device registers its token over the protocol (SPEC §13.11); messages to its
//! user while no device is connected become one folded notification; muted conversations,
//! online users and their own messages send none; a token the service rejects is removed.
//! (The APNs and FCM providers are tested against local mocks of their endpoints in
//! `push/tests`.)

mod support;

#[path = "../../webhooks/tests/receiver/mod.rs"]
mod receiver;

use std::time::Duration;

use im_protocol::{Body, pb};
use receiver::{Receiver, Reply, eventually};
use serde_json::{Value, json};
use support::admin_http::{get, sample};
use support::{Client, Server, to_user};

const SECRET: &str = "push-gateway-secret-for-tests";

async fn register(
    client: &mut Client,
    service: pb::PushService,
    token: &str,
    preview: pb::PushPreview,
) -> Body {
    client
        .request(pb::PushTokenReq {
            service: service as i32,
            token: token.into(),
            preview: preview as i32,
        })
        .await
}

/// A server whose notifications go to `gateway`, folding messages within `window_ms`.
fn server_pushing_to(gateway: &Receiver, dir: &std::path::Path, window_ms: &str) -> Server {
    Server::start_process(
        dir,
        &[
            "--push-webhook-url",
            &gateway.url,
            "--push-webhook-secret",
            SECRET,
            "--push-batch-window-ms",
            window_ms,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
}

async fn wait_until_offline(server: &Server, connected: f64) {
    let admin = server.admin_addr.unwrap();
    support::wait_until(|| async {
        sample(&get(admin, "/metrics").await.body, "im_online_connections") == Some(connected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_sleeping_phone_become_one_notification_and_muted_ones_none() {
    // The push gateway: the token "dead-token" is gone for good (410).
    let gateway = Receiver::scripted(|_, request| {
        let dead = request.json()["token"] == json!("dead-token");
        Box::pin(async move { Reply::status(if dead { 410 } else { 200 }) })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_pushing_to(&gateway, dir.path(), "500");

    // Bob's phone registers (a bad registration is refused first), mutes carol, and sleeps.
    let mut bob = Client::connect(&server, "bob", "phone").await;
    match register(
        &mut bob,
        pb::PushService::Webhook,
        "",
        pb::PushPreview::Full,
    )
    .await
    {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::InvalidArgument as i32),
        other => panic!("an empty token is refused, got {other:?}"),
    }
    match register(
        &mut bob,
        pb::PushService::Webhook,
        "bob-phone-token",
        pb::PushPreview::Full,
    )
    .await
    {
        Body::PushTokenResp(resp) => assert!(resp.registered),
        other => panic!("unexpected {other:?}"),
    }
    match bob
        .request(pb::MuteReq {
            conversation_id: "d:bob:carol".into(),
            muted: true,
        })
        .await
    {
        Body::MuteResp(resp) => assert!(resp.muted),
        other => panic!("unexpected {other:?}"),
    }
    match bob
        .request(pb::MuteReq {
            conversation_id: "d:alice:carol".into(),
            muted: true,
        })
        .await
    {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::Forbidden as i32),
        other => panic!("someone else's conversation cannot be muted, got {other:?}"),
    }
    // Bob's own message (to alice) is not something to wake him for.
    bob.send_text(to_user("alice"), "b1", "see you")
        .await
        .unwrap();
    drop(bob);

    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut carol = Client::connect(&server, "carol", "phone").await;
    wait_until_offline(&server, 2.0).await;
    carol
        .send_text(to_user("bob"), "c1", "muted chatter")
        .await
        .unwrap();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        alice
            .send_text(to_user("bob"), &format!("a{i}"), text)
            .await
            .unwrap();
    }

    eventually("bob's phone was notified", || {
        !gateway.requests().is_empty()
    })
    .await;
    // Nothing else arrives for the window after the first notification.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let notes: Vec<Value> = gateway.requests().iter().map(|r| r.json()).collect();
    assert_eq!(notes.len(), 1, "three messages folded into one: {notes:?}");
    let note = &notes[0];
    assert_eq!(note["user"], json!("bob"));
    assert_eq!(note["device"], json!("phone"));
    assert_eq!(note["token"], json!("bob-phone-token"));
    assert_eq!(note["conversation_id"], json!("d:alice:bob"));
    assert_eq!(note["messages"], json!(3));
    assert_eq!(note["badge"], json!(3));
    assert_eq!(note["body"], json!("three"), "full preview of the newest");
    let request = &gateway.requests()[0];
    let timestamp = request.header("x-im-timestamp").parse::<u64>().unwrap();
    assert_eq!(
        request.header("x-im-signature"),
        im_push::webhook_signature(SECRET.as_bytes(), timestamp, &request.body),
        "signed with the push gateway's secret"
    );

    // Online again: messages arrive live, no notification.
    let mut bob = Client::connect(&server, "bob", "phone").await;
    alice.send_text(to_user("bob"), "a9", "live").await.unwrap();
    bob.pushed_entries(1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gateway.requests().len(),
        1,
        "no notification for an online user"
    );

    // Logged out: the token is removed, and nothing is sent any more.
    match register(
        &mut bob,
        pb::PushService::Unspecified,
        "",
        pb::PushPreview::None,
    )
    .await
    {
        Body::PushTokenResp(resp) => assert!(!resp.registered),
        other => panic!("unexpected {other:?}"),
    }
    drop(bob);
    wait_until_offline(&server, 2.0).await;
    alice
        .send_text(to_user("bob"), "a10", "into the void")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(gateway.requests().len(), 1, "no token, no notification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_push_service_rejects_is_removed() {
    let gateway = Receiver::scripted(|_, _| Box::pin(async { Reply::status(410) })).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_pushing_to(&gateway, dir.path(), "100");
    let mut dave = Client::connect(&server, "dave", "old-phone").await;
    register(
        &mut dave,
        pb::PushService::Webhook,
        "dead-token",
        pb::PushPreview::None,
    )
    .await;
    drop(dave);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    wait_until_offline(&server, 1.0).await;
    alice
        .send_text(to_user("dave"), "a1", "hello?")
        .await
        .unwrap();
    eventually("the push gateway was asked once", || {
        gateway.requests().len() == 1
    })
    .await;
    let metrics_ok = || async {
        let m = get(server.admin_addr.unwrap(), "/metrics").await.body;
        m.contains(r#"im_push_sent_total{provider="webhook",result="token_invalid"}"#)
    };
    support::wait_until(metrics_ok).await;
    // The registration is gone: a later message asks nobody.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice
        .send_text(to_user("dave"), "a2", "hello again?")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gateway.requests().len(),
        1,
        "the rejected token was removed"
    );
}

/// In a cluster the logic node sends the notifications, asking the presence registry the
/// gateways write which users have no connection anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_logic_node_notifies_users_no_gateway_holds() {
    let gateway_receiver = Receiver::answering(|_| Reply::status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let redis = support::cluster::Redis::start(&dir.path().join("redis"));
    let logic = support::cluster::LogicNode::start_embedded_with(
        &dir.path().join("logic"),
        &[
            "--redis-url",
            &redis.url(),
            "--push-webhook-url",
            &gateway_receiver.url,
            "--push-webhook-secret",
            SECRET,
            "--push-batch-window-ms",
            "200",
        ],
    );
    let gateway_dir = dir.path().join("gateway");
    std::fs::create_dir_all(&gateway_dir).unwrap();
    let server = Server::start_process(
        &gateway_dir,
        &[
            "--logic-nodes",
            &logic.addr.to_string(),
            "--redis-url",
            &redis.url(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let mut bob = Client::connect(&server, "bob", "phone").await;
    register(
        &mut bob,
        pb::PushService::Webhook,
        "bob-token",
        pb::PushPreview::Sender,
    )
    .await;
    drop(bob);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    wait_until_offline(&server, 1.0).await;
    alice
        .send_text(to_user("bob"), "a1", "wake up")
        .await
        .unwrap();
    eventually("the logic node notified bob's phone", || {
        gateway_receiver.requests().len() == 1
    })
    .await;
    let note = gateway_receiver.requests()[0].json();
    assert_eq!(
        (note["user"].clone(), note["token"].clone()),
        (json!("bob"), json!("bob-token"))
    );
    assert_eq!(note["title"], json!("alice"), "sender-only preview");

    // Connected again (through the gateway, registered in Redis): no notification.
    let mut bob = Client::connect(&server, "bob", "phone").await;
    alice
        .send_text(to_user("bob"), "a2", "you are here")
        .await
        .unwrap();
    bob.pushed_entries(1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gateway_receiver.requests().len(),
        1,
        "no notification for a connected user"
    );
}
