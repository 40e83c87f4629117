//! The admin listener of a real server process: metrics after real traffic, health and
//! readiness through a drain, every route of the OpenAPI document, the server API acting like
//! a client, and JSON logs.

mod support;

use std::collections::BTreeSet;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use im_protocol::{Body, pb};
use serde_json::{Value, json};
use support::admin_http::{call, get, sample};
use support::{Client, SECRET, Server, to_group, to_user};

const KEY: &str = "admin-key-for-the-tests-0123456789";

fn admin_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--admin-listen", "127.0.0.1:0", "--admin-key", KEY];
    args.extend(extra);
    Server::start_process(dir, &args)
}

async fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let answer = call(
        server.admin_addr.expect("admin listener on"),
        method,
        path,
        Some(KEY),
        body.as_ref(),
    )
    .await;
    let json = answer.json();
    (answer.status, json)
}

#[tokio::test]
async fn metrics_count_real_traffic_by_transport_op_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = admin_server(dir.path(), &[]);
    let admin = server.admin_addr.unwrap();

    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut bob = Client::connect(&server, "bob", "phone").await;
    for i in 0..5 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), "hello")
            .await
            .expect("acked");
    }
    bob.pushed_entries(5).await;
    bob.sync_all(1, 100).await;
    // A refused request and a refused login, each counted under its error code.
    let refused = alice
        .send_text(to_user("bad user id!"), "x", "hello")
        .await
        .expect_err("refused");
    assert_eq!(refused.code, pb::ErrorCode::InvalidArgument as i32);
    let wrong = support::token_with("carol", Some("phone"), 1);
    let _ = Client::try_connect(&server, &wrong, "phone").await;

    let scrape = get(admin, "/metrics").await;
    assert_eq!(scrape.status, 200);
    let m = scrape.body;
    assert_eq!(
        sample(&m, r#"im_connections{transport="tcp"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(sample(&m, r#"im_logins_total{result="ok"}"#), Some(2.0));
    assert_eq!(
        sample(&m, r#"im_logins_total{result="TOKEN_EXPIRED"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, r#"im_requests_total{op="SEND_REQ",result="ok"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"im_requests_total{op="SEND_REQ",result="INVALID_ARGUMENT"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, r#"im_requests_total{op="SYNC_REQ",result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&m, "im_send_latency_seconds_count"), Some(5.0));
    assert!(sample(&m, "im_store_commit_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(sample(&m, "im_store_commit_size_count").unwrap_or(0.0) >= 1.0);
    assert!(sample(&m, "im_pushes_total").unwrap_or(0.0) >= 5.0);
    assert_eq!(sample(&m, "im_sync_pages_total"), Some(1.0));
    assert!(sample(&m, "im_store_disk_bytes").unwrap_or(0.0) > 0.0);
    assert_eq!(sample(&m, "im_push_queue_bytes"), Some(0.0));
    assert_eq!(sample(&m, "im_online_connections"), Some(2.0));
    // Histograms have buckets, not only a sum and count.
    assert!(
        m.contains(r#"im_send_latency_seconds_bucket{le="0.001"}"#),
        "{m}"
    );

    // The Grafana dashboard in the repo charts only metrics the server exposes (two of them
    // appear only once what they count has happened: a slow client dropped, a drain).
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ops/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exposed: BTreeSet<&str> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .chain(["im_push_drops_total", "im_drain_kicks_total"])
        .collect();
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("im_") {
                    let name = format!("im_{name}");
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(&name);
                    assert!(
                        exposed.contains(base),
                        "the dashboard charts {name}, which the server does not expose"
                    );
                    charted += 1;
                }
            }
        }
    }
    assert!(charted >= 12, "the dashboard charts the server's metrics");

    drop(bob);
    support::wait_until(|| async {
        let m = get(admin, "/metrics").await.body;
        sample(&m, r#"im_connections{transport="tcp"}"#) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn readiness_turns_off_while_the_server_drains_and_the_process_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    // One kick per second: the drain of three clients takes about two seconds.
    let mut server = admin_server(
        dir.path(),
        &["--drain-rate", "1", "--drain-window-secs", "10"],
    );
    let admin = server.admin_addr.unwrap();
    assert_eq!(get(admin, "/healthz").await.status, 200);
    let ready = get(admin, "/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["ready"].clone()),
        (200, json!(true))
    );

    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3"] {
        clients.push(Client::connect(&server, user, "phone").await);
    }
    let (status, body) = api(&server, "POST", "/v1/drain", None).await;
    assert_eq!((status, body["draining"].clone()), (202, json!(true)));
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["draining"], json!(true));
    // A new client is turned away while the others are still being kicked.
    match tokio::net::TcpStream::connect(server.addr).await {
        Err(_) => {}
        Ok(stream) => {
            let refused =
                Client::try_handshake(Box::new(stream), &server.token("late", "phone"), "phone")
                    .await;
            assert!(refused.is_err(), "no session opens on a draining server");
        }
    }
    // Every client is told to reconnect elsewhere or later.
    for client in &mut clients {
        match client.next_push().await {
            Body::Kick(kick) => {
                assert_eq!(kick.reason, pb::KickReason::ServerShutdown as i32)
            }
            other => panic!("expected a kick, got {other:?}"),
        }
    }
    assert!(
        server.wait_exit(Duration::from_secs(20)),
        "exits cleanly after the drain"
    );
}

/// Calls every route of the document with a valid request; fails if the document lists a
/// route this test has no call for, or a call does not succeed.
#[tokio::test]
async fn every_route_in_the_openapi_document_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = admin_server(dir.path(), &[]);
    let admin = server.admin_addr.unwrap();
    let doc = get(admin, "/openapi.json").await.json();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    // Someone online for the device lookup and the kick.
    let _bob = Client::connect(&server, "bob", "phone").await;
    let calls: Vec<(&str, &str, String, Option<Value>)> = vec![
        ("GET", "/healthz", "/healthz".into(), None),
        ("GET", "/readyz", "/readyz".into(), None),
        ("GET", "/metrics", "/metrics".into(), None),
        (
            "POST",
            "/v1/tokens",
            "/v1/tokens".into(),
            Some(json!({"user": "alice", "device": "web", "ttl_secs": 600})),
        ),
        (
            "POST",
            "/v1/groups",
            "/v1/groups".into(),
            Some(
                json!({"owner": "alice", "name": "team", "members": ["bob"], "client_request_id": "g1"}),
            ),
        ),
        (
            "POST",
            "/v1/groups/{group_id}/members",
            "/v1/groups/GROUP/members".into(),
            Some(json!({"as_user": "alice", "members": ["carol", "dave"]})),
        ),
        (
            "POST",
            "/v1/groups/{group_id}/members/remove",
            "/v1/groups/GROUP/members/remove".into(),
            Some(json!({"as_user": "alice", "members": ["dave"]})),
        ),
        (
            "GET",
            "/v1/groups/{group_id}/members",
            "/v1/groups/GROUP/members?as_user=alice&limit=10".into(),
            None,
        ),
        (
            "POST",
            "/v1/messages",
            "/v1/messages".into(),
            Some(
                json!({"from": "alice", "to_group": "GROUP", "client_msg_id": "c1", "text": "hi team"}),
            ),
        ),
        (
            "GET",
            "/v1/conversations/{conversation_id}/messages",
            "/v1/conversations/g:GROUP/messages?as_user=carol&limit=10".into(),
            None,
        ),
        (
            "GET",
            "/v1/users/{user}/devices",
            "/v1/users/bob/devices".into(),
            None,
        ),
        (
            "POST",
            "/v1/users/{user}/kick",
            "/v1/users/bob/kick".into(),
            Some(json!({"device": "phone"})),
        ),
        ("POST", "/v1/drain", "/v1/drain".into(), None),
    ];
    let covered: BTreeSet<String> = calls.iter().map(|(m, p, ..)| format!("{m} {p}")).collect();
    assert_eq!(
        documented, covered,
        "every documented route is called below, and no other"
    );

    let mut group = String::new();
    for (method, _, path, body) in calls {
        let path = path.replace("GROUP", &group);
        let body = body.map(|b| {
            serde_json::from_str::<Value>(&b.to_string().replace("GROUP", &group)).unwrap()
        });
        let answer = call(admin, method, &path, Some(KEY), body.as_ref()).await;
        assert!(
            (200..300).contains(&answer.status),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
        if path == "/v1/groups" {
            group = answer.json()["group_id"].as_str().unwrap().to_owned();
        }
    }
}

#[tokio::test]
async fn the_server_api_sends_reads_and_manages_groups_like_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = admin_server(dir.path(), &[]);

    // A token from the API opens a real session.
    let (status, token) = api(
        &server,
        "POST",
        "/v1/tokens",
        Some(json!({"user": "bob", "device": "phone"})),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let mut bob = Client::try_connect(&server, token["token"].as_str().unwrap(), "phone")
        .await
        .expect("the API's token is accepted");

    // A send as alice reaches bob like a client's send; its retry is a duplicate, stored once.
    let send = json!({"from": "alice", "to_user": "bob", "client_msg_id": "api-1", "text": "from the backend"});
    let (status, ack) = api(&server, "POST", "/v1/messages", Some(send.clone())).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["duplicate"], json!(false));
    assert_eq!(ack["conversation_id"], json!("d:alice:bob"));
    let pushed = support::messages(&bob.pushed_entries(1).await);
    assert_eq!(support::text(&pushed[0]), "from the backend");
    assert_eq!(pushed[0].sender_device, "server-api");
    let (status, again) = api(&server, "POST", "/v1/messages", Some(send)).await;
    assert_eq!((status, again["duplicate"].clone()), (200, json!(true)));
    assert_eq!(again["server_msg_id"], ack["server_msg_id"]);
    let texts = support::inbox_texts_from(&mut bob, "bob", "alice").await;
    assert_eq!(texts, vec!["from the backend"]);

    // The system sender.
    let (status, system) = api(
        &server,
        "POST",
        "/v1/messages",
        Some(json!({"to_user": "bob", "client_msg_id": "notice-1", "content_type": 7, "content_base64": "AAEC"})),
    )
    .await;
    assert_eq!(status, 200, "{system}");
    assert_eq!(system["conversation_id"], json!("d:bob:system"));
    let pushed = support::messages(&bob.pushed_entries(1).await);
    assert_eq!(
        (pushed[0].content_type, pushed[0].content.clone()),
        (7, vec![0, 1, 2])
    );

    // Groups: created as alice with bob in it; a message to it reaches bob; history reads it.
    let (status, group) = api(
        &server,
        "POST",
        "/v1/groups",
        Some(json!({"owner": "alice", "name": "ops", "members": ["bob"]})),
    )
    .await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["member_count"], json!(2));
    let group_id = group["group_id"].as_str().unwrap().to_owned();
    let (status, _) = api(
        &server,
        "POST",
        "/v1/messages",
        Some(json!({"from": "alice", "to_group": group_id, "client_msg_id": "g-1", "text": "to the group"})),
    )
    .await;
    assert_eq!(status, 200);
    let texts = support::inbox_texts_from(&mut bob, "bob", "alice").await;
    assert_eq!(texts, vec!["from the backend", "to the group"]);
    let (status, page) = api(
        &server,
        "GET",
        &format!("/v1/conversations/g:{group_id}/messages?as_user=bob"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["text"], json!("to the group"));
    // Bob sends into the group himself: the API's sends and a client's share one timeline.
    bob.send_text(to_group(&group_id), "b-1", "reply")
        .await
        .expect("acked");
    let (_, page) = api(
        &server,
        "GET",
        &format!("/v1/conversations/g:{group_id}/messages?as_user=alice&direction=newer"),
        None,
    )
    .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["to the group", "reply"]);

    // Refusals carry the protocol's code: a non-member may not send to the group.
    let (status, refused) = api(
        &server,
        "POST",
        "/v1/messages",
        Some(
            json!({"from": "mallory", "to_group": group_id, "client_msg_id": "m-1", "text": "hi"}),
        ),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["error"]["code"],
        json!(pb::ErrorCode::Forbidden as i32)
    );
    assert_eq!(refused["error"]["name"], json!("FORBIDDEN"));
    // A broadcast channel: only its owner posts; a subscriber's message is refused and stored
    // nowhere.
    let (status, channel) = api(
        &server,
        "POST",
        "/v1/groups",
        Some(json!({"owner": "alice", "name": "news", "members": ["bob"], "broadcast": true})),
    )
    .await;
    assert_eq!(status, 200, "{channel}");
    assert_eq!(
        (channel["broadcast"].clone(), channel["read_fanout"].clone()),
        (json!(true), json!(true)),
        "a channel is in read fan-out at any size"
    );
    let channel_id = channel["group_id"].as_str().unwrap().to_owned();
    let post = |from: &str, id: &str| json!({"from": from, "to_group": channel_id, "client_msg_id": id, "text": "news"});
    let (status, _) = api(&server, "POST", "/v1/messages", Some(post("alice", "n-1"))).await;
    assert_eq!(status, 200);
    let (status, refused) = api(&server, "POST", "/v1/messages", Some(post("bob", "n-2"))).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["name"], json!("FORBIDDEN"));
    let (_, page) = api(
        &server,
        "GET",
        &format!("/v1/conversations/g:{channel_id}/messages?as_user=bob&direction=newer"),
        None,
    )
    .await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");

    let (status, refused) = api(
        &server,
        "POST",
        "/v1/messages",
        Some(json!({"from": "alice", "client_msg_id": "m-2", "text": "no target"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("to_user")
    );
    let (status, refused) = api(&server, "POST", "/v1/tokens", Some(json!({"usr": "x"}))).await;
    assert_eq!(status, 400, "unknown field: {refused}");

    // Online devices, and a kick of one device.
    let (_, devices) = api(&server, "GET", "/v1/users/bob/devices", None).await;
    assert_eq!(devices["devices"], json!(["phone"]));
    let (status, kicked) = api(
        &server,
        "POST",
        "/v1/users/bob/kick",
        Some(json!({"device": "phone"})),
    )
    .await;
    assert_eq!((status, kicked["kicked"].clone()), (200, json!(1)));
    loop {
        match bob.next_push().await {
            Body::Kick(kick) => {
                assert_eq!(kick.reason, pb::KickReason::TokenRevoked as i32);
                break;
            }
            Body::Push(_) => continue,
            other => panic!("expected a kick, got {other:?}"),
        }
    }
    support::wait_until(|| async {
        let (_, devices) = api(&server, "GET", "/v1/users/bob/devices", None).await;
        devices["devices"] == json!([])
    })
    .await;
}

#[tokio::test]
async fn the_api_needs_the_admin_key_and_is_off_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = admin_server(dir.path(), &[]);
    let admin = server.admin_addr.unwrap();
    let body = json!({"user": "alice"});
    let missing = call(admin, "POST", "/v1/tokens", None, Some(&body)).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["name"], json!("UNAUTHORIZED"));
    let wrong = call(
        admin,
        "POST",
        "/v1/tokens",
        Some("admin-key-for-the-tests-0123456780"),
        Some(&body),
    )
    .await;
    assert_eq!(wrong.status, 401);
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let keyless = Server::start_process(dir.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = keyless.admin_addr.unwrap();
    let off = call(admin, "POST", "/v1/tokens", Some(KEY), Some(&body)).await;
    assert_eq!(off.status, 403);
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/metrics").await.status, 200);

    // A key anyone could guess stops the server at start.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--secret", SECRET, "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--admin-key", "short"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-key"));
}

#[tokio::test]
async fn json_logs_have_one_line_per_session_event_and_refusal_and_never_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args([
            "--secret",
            SECRET,
            "--log-format",
            "json",
            "--rate-limit",
            "0",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let token = support::token_with("alice", Some("phone"), support::now_secs() + 600);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut alice = Client::try_handshake(Box::new(stream), &token, "phone")
        .await
        .expect("session opens");
    alice
        .send_text(to_user("bob"), "m1", "a secret text")
        .await
        .expect("acked");
    alice
        .send_text(to_user("not valid!"), "m2", "another secret")
        .await
        .expect_err("refused");
    drop(alice);
    let lines = support::wait_for_value(|| {
        let text = std::fs::read_to_string(&log_path).unwrap();
        text.contains("session closed").then_some(text)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();

    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["message"] == json!(message))
            .unwrap_or_else(|| panic!("no {message:?} line in {lines}"))
            .clone()
    };
    let opened = find("session opened");
    assert_eq!(
        (opened["user"].clone(), opened["device"].clone()),
        (json!("alice"), json!("phone"))
    );
    assert_eq!(opened["transport"], json!("tcp"));
    assert_eq!(opened["level"], json!("INFO"));
    let refused = find("send refused");
    assert_eq!(refused["code"], json!("INVALID_ARGUMENT"));
    let closed = find("session closed");
    assert_eq!(closed["user"], json!("alice"));
    assert!(
        !lines.contains("secret text") && !lines.contains("another secret"),
        "{lines}"
    );
}

/// In a cluster, a gateway's admin API sees and kicks devices connected to other gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_api_finds_and_kicks_devices_on_other_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let redis = support::cluster::Redis::start(&dir.path().join("redis"));
    let logic = support::cluster::LogicNode::start_embedded(&dir.path().join("logic"));
    let gateway = |name: &str| {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let logic_nodes = logic.addr.to_string();
        let redis_url = redis.url();
        admin_server(
            &data_dir,
            &[
                "--logic-nodes",
                &logic_nodes,
                "--redis-url",
                &redis_url,
                "--gateway-id",
                name,
            ],
        )
    };
    let first = gateway("gw1");
    let second = gateway("gw2");
    let mut bob = Client::connect(&second, "bob", "phone").await;
    let _bob_laptop = Client::connect(&second, "bob", "laptop").await;

    let (status, devices) = api(&first, "GET", "/v1/users/bob/devices", None).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["devices"], json!(["laptop", "phone"]));
    let (status, kicked) = api(
        &first,
        "POST",
        "/v1/users/bob/kick",
        Some(json!({"device": "phone"})),
    )
    .await;
    assert_eq!(
        (status, kicked["kicked"].clone()),
        (200, json!(1)),
        "{kicked}"
    );
    match bob.next_push().await {
        Body::Kick(kick) => assert_eq!(kick.reason, pb::KickReason::TokenRevoked as i32),
        other => panic!("expected a kick, got {other:?}"),
    }
    support::wait_until(|| async {
        let (_, devices) = api(&first, "GET", "/v1/users/bob/devices", None).await;
        devices["devices"] == json!(["laptop"])
    })
    .await;
}
