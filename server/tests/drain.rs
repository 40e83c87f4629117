//! A rolling restart: two gateways on one logic node (and its store), 2,000 client cores on
//! the first. SIGTERM drains it: its clients are sent to the second gateway at the configured
//! rate, all of them reconnect there within the window, and no message sent meanwhile is lost
//! or delivered twice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdk_core::{ConnectionState, Event, Recipient, SendState};
use support::admin_http::{get, sample};
use support::cluster::{LogicNode, Redis};
use support::{Server, start_client_with};

const CLIENTS: usize = 2_000;
const SENDERS: usize = 20;
const MESSAGES_PER_SENDER: usize = 10;
/// Kicks per second while draining, and the window they must fit in.
const DRAIN_RATE: usize = 500;
const DRAIN_WINDOW_SECS: u64 = 8;

/// What one client saw, shared with the test.
#[derive(Default)]
struct Seen {
    /// When the client became `Online` (every time).
    online_at: Vec<Instant>,
    /// Server message ids received from others.
    received: Vec<u64>,
    /// Own messages acknowledged: local id → server message id.
    sent: BTreeMap<u64, u64>,
}

fn user(i: usize) -> String {
    format!("user{i:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_gateway_sends_its_clients_to_another_at_the_configured_rate_without_losing_a_message()
 {
    let dir = tempfile::tempdir().unwrap();
    let logic = LogicNode::start_embedded(&dir.path().join("logic"));
    let redis = Redis::start(&dir.path().join("redis"));
    let gateway = |name: &str, extra: &[&str]| {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut args = vec![
            "--logic-nodes".to_string(),
            logic.addr.to_string(),
            "--redis-url".into(),
            redis.url(),
            "--gateway-id".into(),
            name.into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--max-connections".into(),
            "10000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_process(&data_dir, &args)
    };
    let second = gateway("gw2", &[]);
    let redirect = second.addr.to_string();
    let mut first = gateway(
        "gw1",
        &[
            "--drain-redirect",
            &redirect,
            "--drain-rate",
            &DRAIN_RATE.to_string(),
            "--drain-window-secs",
            &DRAIN_WINDOW_SECS.to_string(),
        ],
    );

    // 2,000 client cores on the first gateway, each recording what it sees.
    let mut handles = Vec::new();
    let mut seen = Vec::new();
    for i in 0..CLIENTS {
        let record = Arc::new(Mutex::new(Seen::default()));
        let options = sdk_core::DriverOptions {
            connector: first.connector(),
            ..sdk_core::DriverOptions::default()
        };
        let (handle, mut events) = start_client_with(
            &first,
            &user(i),
            "phone",
            support::config(&user(i), "phone"),
            options,
        );
        let sink = record.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let mut seen = sink.lock().unwrap();
                match event {
                    Event::State(ConnectionState::Online) => seen.online_at.push(Instant::now()),
                    Event::MessageReceived(message) => seen.received.push(message.server_msg_id),
                    Event::MessageUpdated(message) if message.state == SendState::Sent => {
                        seen.sent.insert(message.local_id, message.server_msg_id);
                    }
                    _ => {}
                }
            }
        });
        handles.push(handle);
        seen.push(record);
    }
    let first_admin = first.admin_addr.unwrap();
    let second_admin = second.admin_addr.unwrap();
    let logins_ok = r#"im_logins_total{result="ok"}"#;
    support::wait_until_within(Duration::from_secs(60), || async {
        sample(
            &get(first_admin, "/metrics").await.body,
            "im_online_connections",
        ) == Some(CLIENTS as f64)
    })
    .await;
    support::wait_until_within(Duration::from_secs(30), || async {
        seen.iter().all(|r| r.lock().unwrap().online_at.len() == 1)
    })
    .await;
    let all_online = Instant::now();

    // Senders write to other users throughout the drain.
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let handle = handles[s].clone();
            tokio::spawn(async move {
                for m in 0..MESSAGES_PER_SENDER {
                    let to = user(SENDERS + (s * MESSAGES_PER_SENDER + m) % (CLIENTS - SENDERS));
                    handle
                        .send_text(Recipient::User(to), &format!("{s}-{m}"))
                        .await
                        .expect("queued");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain_started = Instant::now();
    assert!(first.terminate(), "the drained gateway exits cleanly");
    let drain_took = drain_started.elapsed();
    for sender in senders {
        sender.await.unwrap();
    }

    // Everyone is back, on the second gateway, within the window (plus the clients' jitter).
    support::wait_until_within(Duration::from_secs(60), || async {
        sample(
            &get(second_admin, "/metrics").await.body,
            "im_online_connections",
        ) == Some(CLIENTS as f64)
    })
    .await;
    let scrape = get(second_admin, "/metrics").await.body;
    assert!(sample(&scrape, logins_ok).unwrap() >= CLIENTS as f64);
    let mut reconnects: Vec<Instant> = Vec::new();
    for record in &seen {
        let record = record.lock().unwrap();
        assert_eq!(record.online_at.len(), 2, "each client moved once");
        assert!(record.online_at[0] <= all_online);
        reconnects.push(record.online_at[1]);
    }
    reconnects.sort();
    let first_back = reconnects[0];
    let span = reconnects[CLIENTS - 1] - first_back;
    assert!(
        span <= Duration::from_secs(DRAIN_WINDOW_SECS + 2),
        "all reconnected within the window: {span:?}"
    );
    // Spread, not a storm: no second saw more than the rate (plus the clients' jitter and
    // timer slack), and the moves took about CLIENTS / RATE seconds.
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for at in &reconnects {
        *per_second.entry((*at - first_back).as_secs()).or_default() += 1;
    }
    let burst = per_second.values().copied().max().unwrap();
    assert!(
        burst <= DRAIN_RATE * 3 / 2,
        "at most about {DRAIN_RATE} reconnects per second, saw {burst}: {per_second:?}"
    );
    eprintln!(
        "drain took {drain_took:?}; reconnects spread over {span:?}; per second {per_second:?}"
    );
    let expected = Duration::from_secs_f64(CLIENTS as f64 / DRAIN_RATE as f64);
    assert!(
        span >= expected.mul_f64(0.7),
        "the moves were spread over about {expected:?}: {span:?} (drain took {drain_took:?})"
    );

    // No message lost or doubled: every acked send reached its recipient exactly once.
    support::wait_until_within(Duration::from_secs(30), || async {
        seen[..SENDERS]
            .iter()
            .map(|r| r.lock().unwrap().sent.len())
            .sum::<usize>()
            == SENDERS * MESSAGES_PER_SENDER
    })
    .await;
    let sent: BTreeSet<u64> = seen[..SENDERS]
        .iter()
        .flat_map(|r| r.lock().unwrap().sent.values().copied().collect::<Vec<_>>())
        .collect();
    assert_eq!(sent.len(), SENDERS * MESSAGES_PER_SENDER);
    support::wait_until_within(Duration::from_secs(30), || async {
        let received: usize = seen[SENDERS..]
            .iter()
            .map(|r| r.lock().unwrap().received.len())
            .sum();
        received >= sent.len()
    })
    .await;
    let mut received: Vec<u64> = seen[SENDERS..]
        .iter()
        .flat_map(|r| r.lock().unwrap().received.clone())
        .collect();
    received.sort();
    let unique: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "no message delivered twice");
    assert_eq!(unique, sent, "every acked message delivered");

    for handle in handles {
        let _ = handle.shutdown().await;
    }
}
