//! Webhooks of a real server process to a real local HTTP receiver (the app's backend): the
//! before-send call allows, rejects with the app's reason code, or rewrites; after-events for
//! messages, group changes and devices arrive signed and are retried; a silent receiver is
//! failed open or closed as configured.

mod support;

#[path = "../../webhooks/tests/receiver/mod.rs"]
mod receiver;

use std::time::Duration;

use base64::Engine as _;
use im_protocol::{Body, pb};
use receiver::{Receiver, Reply, eventually};
use serde_json::{Value, json};
use support::{Client, Server, to_group, to_user};

const SECRET: &str = "webhook-secret-for-the-tests-42";

fn server_with_hooks(dir: &std::path::Path, receiver: &Receiver, extra: &[&str]) -> Server {
    let mut args = vec![
        "--webhook-url",
        receiver.url.as_str(),
        "--webhook-secret",
        SECRET,
        "--webhook-retry-ms",
        "50",
        "--webhook-timeout-ms",
        "500",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    Server::start_process(dir, &args)
}

/// The `event` of every call the receiver got, in arrival order.
fn event_names(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_owned())
        .collect()
}

fn content_of(event: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(event["content_base64"].as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// The app's policy: "forbidden" is rejected with reason 42, "rewrite me" becomes
/// "rewritten"; the first delivery of each `message_sent` fails with a 500 (it is retried).
fn app_policy(_: usize, request: receiver::Recorded) -> receiver::ReplyFuture {
    Box::pin(async move {
        let event = request.json();
        match event["event"].as_str().unwrap() {
            "before_send" => match content_of(&event).as_str() {
                "forbidden" => {
                    Reply::json(json!({"action": "reject", "reason": 42, "message": "not here"}))
                }
                "rewrite me" => Reply::json(json!({
                    "action": "rewrite",
                    "content_base64": base64::engine::general_purpose::STANDARD.encode("rewritten"),
                })),
                _ => Reply::json(json!({"action": "allow"})),
            },
            _ => Reply::status(200),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_server_allows_rejects_and_rewrites_messages_and_hears_what_happened() {
    let first_message_sent_fails = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail = first_message_sent_fails.clone();
    let receiver = Receiver::scripted(move |index, request| {
        let event = request.json();
        if event["event"] == json!("message_sent")
            && fail.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Box::pin(async { Reply::status(500) });
        }
        app_policy(index, request)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_hooks(dir.path(), &receiver, &[]);

    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut bob = Client::connect(&server, "bob", "phone").await;
    let ack = alice
        .send_text(to_user("bob"), "m1", "hello")
        .await
        .expect("allowed");
    assert!(!ack.content_rewritten);
    let refused = alice
        .send_text(to_user("bob"), "m2", "forbidden")
        .await
        .expect_err("rejected by the app");
    assert_eq!(refused.code, pb::ErrorCode::Rejected as i32);
    assert_eq!(refused.app_reason, 42);
    assert!(!refused.retryable);
    let rewritten = alice
        .send_text(to_user("bob"), "m3", "rewrite me")
        .await
        .expect("rewritten");
    assert!(rewritten.content_rewritten);
    // Bob gets what the app allowed, as the app wrote it; nothing of the rejected message.
    let texts = support::inbox_texts_from(&mut bob, "bob", "alice").await;
    assert_eq!(texts, vec!["hello", "rewritten"]);

    // A group change is reported too.
    let created = match alice
        .request(pb::GroupCreateReq {
            name: "team".into(),
            members: vec!["bob".into()],
            open: false,
            client_request_id: String::new(),
            broadcast: false,
        })
        .await
    {
        Body::GroupCreateResp(resp) => resp.group.unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    alice
        .send_text(to_group(&created.group_id), "g1", "to the team")
        .await
        .expect("allowed");
    drop(bob);

    eventually("the after-events arrived", || {
        let events = event_names(&receiver);
        events.iter().filter(|e| *e == "message_sent").count() >= 4
            && events.iter().any(|e| e == "group_changed")
            && events.iter().any(|e| e == "user_offline")
    })
    .await;
    let requests = receiver.requests();
    let now = support::now_secs();
    for request in &requests {
        assert!(
            im_webhooks::verify_headers(
                SECRET.as_bytes(),
                &request.headers,
                &request.body,
                now,
                Duration::from_secs(300)
            ),
            "every call is signed"
        );
    }
    let events: Vec<Value> = requests.iter().map(|r| r.json()).collect();
    let of = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["event"] == json!(name))
            .collect()
    };
    // Three messages stored (the rejected one is not); the first delivery failed and was
    // retried with the same delivery id.
    let sent = of("message_sent");
    let mut stored: Vec<String> = sent.iter().map(|e| content_of(e)).collect();
    stored.sort();
    stored.dedup();
    assert_eq!(stored, vec!["hello", "rewritten", "to the team"]);
    let first = sent[0]["delivery_id"].clone();
    assert_eq!(
        sent.iter().filter(|e| e["delivery_id"] == first).count(),
        2,
        "the failed delivery was retried under the same id"
    );
    let before: Vec<String> = of("before_send").iter().map(|e| content_of(e)).collect();
    assert_eq!(
        before,
        vec!["hello", "forbidden", "rewrite me", "to the team"]
    );
    let group = of("group_changed")[0];
    assert_eq!(group["change"], json!("created"));
    assert_eq!(group["actor"], json!("alice"));
    assert_eq!(group["members"], json!(["alice", "bob"]));
    let online: Vec<&Value> = of("user_online");
    assert!(
        online
            .iter()
            .any(|e| e["user"] == json!("bob") && e["device"] == json!("phone"))
    );
    assert!(of("user_offline").iter().any(|e| e["user"] == json!("bob")));

    // Failures are counted where operators look.
    let metrics = support::admin_http::get(server.admin_addr.unwrap(), "/metrics")
        .await
        .body;
    assert!(
        metrics
            .contains(r#"im_webhook_requests_total{hook="message_sent",result="rejected_status"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_apps_server_fails_open_or_closed_as_configured() {
    // Never answers the before-send call within the server's 500 ms.
    let receiver = Receiver::scripted(|_, request| {
        let before_send = request.json()["event"] == json!("before_send");
        Box::pin(async move {
            if before_send {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Reply::json(json!({"action": "allow"}))
        })
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let open = server_with_hooks(dir.path(), &receiver, &[]);
    let mut alice = Client::connect(&open, "alice", "phone").await;
    alice
        .send_text(to_user("bob"), "m1", "stored anyway")
        .await
        .expect("fail-open stores the message");
    drop(alice);
    drop(open);

    let dir = tempfile::tempdir().unwrap();
    let closed = server_with_hooks(dir.path(), &receiver, &["--webhook-fail-closed"]);
    let mut alice = Client::connect(&closed, "alice", "phone").await;
    let refused = alice
        .send_text(to_user("bob"), "m1", "not without the app")
        .await
        .expect_err("fail-closed refuses");
    assert_eq!(refused.code, pb::ErrorCode::Unavailable as i32);
    assert!(refused.retryable, "the client resends it later");
    let metrics = support::admin_http::get(closed.admin_addr.unwrap(), "/metrics")
        .await
        .body;
    assert!(
        metrics.contains(r#"im_webhook_requests_total{hook="before_send",result="timeout"}"#),
        "{metrics}"
    );
}

/// In a cluster the logic nodes ask the app's server before each send, and each gateway
/// reports its own devices coming and going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_logic_nodes_run_the_policy_and_gateways_report_devices() {
    let receiver = Receiver::scripted(app_policy).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = [
        "--webhook-url",
        receiver.url.as_str(),
        "--webhook-secret",
        SECRET,
        "--webhook-retry-ms",
        "50",
    ];
    let logic = support::cluster::LogicNode::start_embedded_with(&dir.path().join("logic"), &hooks);
    let gateway_dir = dir.path().join("gateway");
    std::fs::create_dir_all(&gateway_dir).unwrap();
    let logic_nodes = logic.addr.to_string();
    let mut args = vec!["--logic-nodes", logic_nodes.as_str()];
    args.extend(hooks);
    let server = Server::start_process(&gateway_dir, &args);

    let mut alice = Client::connect(&server, "alice", "phone").await;
    let refused = alice
        .send_text(to_user("bob"), "m1", "forbidden")
        .await
        .expect_err("the logic node asked the app");
    assert_eq!(
        (refused.code, refused.app_reason),
        (pb::ErrorCode::Rejected as i32, 42)
    );
    let ack = alice
        .send_text(to_user("bob"), "m2", "rewrite me")
        .await
        .expect("stored");
    assert!(ack.content_rewritten);
    drop(alice);
    eventually("the message and the device events arrived", || {
        let events = event_names(&receiver);
        ["message_sent", "user_online", "user_offline"]
            .iter()
            .all(|e| events.iter().any(|seen| seen == e))
    })
    .await;
    let sent: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|e| e["event"] == json!("message_sent"))
        .collect();
    assert_eq!(sent.len(), 1, "once, from the logic node: {sent:?}");
    assert_eq!(content_of(&sent[0]), "rewritten");
}
