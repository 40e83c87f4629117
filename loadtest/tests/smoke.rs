//! Smoke tests: every workload at small scale against a real server started in this process
//! (`im_server::app::start` on 127.0.0.1:0 with a temporary data directory), and W1/W3 against
//! the bare relay. They prove the workloads complete and that every message sent arrived
//! (exact counts), not how fast anything is.

use std::time::Duration;

use im_auth::TokenKey;
use im_server::app::{self, RunningServer, ServerOptions};
use loadtest::common::Target;
use loadtest::{relay, w1, w2, w3, w4, w5};

const SECRET: &str = "smoke-test-secret-5a3e9c1f7b2d4860";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn server(dir: &tempfile::TempDir) -> (RunningServer, Target) {
    server_with(dir, |_| {}).await
}

/// A server in this process with no rate limits, and `adjust`'s settings.
async fn server_with(
    dir: &tempfile::TempDir,
    adjust: impl FnOnce(&mut ServerOptions),
) -> (RunningServer, Target) {
    init_tracing();
    let mut options = ServerOptions::new(
        "127.0.0.1:0".parse().expect("address"),
        dir.path().to_path_buf(),
        TokenKey::new(SECRET.as_bytes().to_vec()),
    );
    options.rate_limit = 0;
    options.fanout_bytes_per_sec = 0;
    adjust(&mut options);
    let server = app::start(options).await.expect("server starts");
    let mut target = Target::local(server.addr, SECRET);
    target.server_pid = vec![std::process::id()];
    (server, target)
}

async fn stop(server: RunningServer) {
    server.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server.task).await;
}

fn w1_config(prefix: &str) -> w1::W1Config {
    w1::W1Config {
        pairs: 4,
        window: 16,
        rate: 0,
        payload: 100,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        prefix: prefix.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_delivers_every_message_sent_to_the_receivers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, target) = server(&dir).await;
    let result = w1::run(&target, &w1_config("smoke-w1"))
        .await
        .expect("W1 runs");
    assert!(result.sent_total > 0, "nothing was sent: {result:?}");
    assert_eq!(result.received_total, result.sent_total, "{result:?}");
    assert_eq!(result.acked_total, result.sent_total, "{result:?}");
    assert_eq!(result.errors, 0);
    assert!(result.delivered > 0 && result.latency_ms.count == result.delivered);
    assert!(result.server_cpu_secs.is_some());

    // The paced mode sends close to the asked rate.
    let paced = w1::W1Config {
        rate: 200,
        ..w1_config("smoke-w1p")
    };
    let result = w1::run(&target, &paced).await.expect("paced W1 runs");
    assert_eq!(result.received_total, result.sent_total, "{result:?}");
    assert!(
        (100..=300).contains(&result.delivered),
        "paced at 200/s for 1 s: {result:?}"
    );
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w2_logs_in_every_connection_over_two_worker_processes_and_keeps_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, target) = server(&dir).await;
    let config = w2::W2Config {
        connections: 200,
        concurrency: 64,
        processes: 2,
        sources_per_process: 2,
        hold: Duration::from_millis(500),
        prefix: "smoke-w2".into(),
        worker_exe: Some(env!("CARGO_BIN_EXE_loadtest").into()),
    };
    let result = w2::run(&target, &config).await.expect("W2 runs");
    assert_eq!(result.logged_in, 200, "{result:?}");
    assert_eq!(result.failed, 0);
    assert_eq!(result.dropped, 0);
    assert_eq!(result.handshake_ms.count, 200);
    assert_eq!(result.heartbeat_ms, 30_000);
    assert!(result.rss_per_connection_kib.is_some());

    // The same in-process (no workers).
    let config = w2::W2Config {
        processes: 0,
        connections: 100,
        ..config
    };
    let result = w2::run(&target, &config).await.expect("W2 in-process runs");
    assert_eq!(result.logged_in, 100, "{result:?}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3_every_online_member_receives_every_group_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, target) = server(&dir).await;
    let config = w3::W3Config {
        members: 20,
        online: 15,
        messages: 30,
        window: 4,
        rate: 0,
        payload: 100,
        timeout: Duration::from_secs(20),
        prefix: "smoke-w3".into(),
    };
    let result = w3::run(&target, &config).await.expect("W3 runs");
    assert_eq!(result.acked, 30, "{result:?}");
    assert_eq!(result.deliveries, 30 * 15, "{result:?}");
    assert_eq!(result.complete_messages, 30);
    assert_eq!(result.last_receipt_ms.count, 30);
    assert_eq!(result.errors, 0);
    assert!(!result.read_fanout, "20 members is write fan-out");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3_paced_sends_reach_every_member_of_a_read_fanout_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, target) = server_with(&dir, |options| options.read_fanout_threshold = 10).await;
    let config = w3::W3Config {
        members: 1_200,
        online: 40,
        messages: 50,
        window: 4,
        rate: 100,
        payload: 100,
        timeout: Duration::from_secs(20),
        prefix: "smoke-w3-read".into(),
    };
    let result = w3::run(&target, &config).await.expect("W3 runs");
    assert!(result.read_fanout, "{result:?}");
    assert_eq!(result.deliveries, 50 * 40, "{result:?}");
    assert_eq!(result.complete_messages, 50);
    assert_eq!(result.errors, 0);
    assert!(result.rss_per_member_bytes.is_some());
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w4_every_client_core_syncs_all_waiting_messages_after_the_storm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, target) = server(&dir).await;
    let config = w4::W4Config {
        clients: 50,
        messages: 5,
        senders: 2,
        send_window: 64,
        payload: 100,
        timeout: Duration::from_secs(30),
        prefix: "smoke-w4".into(),
    };
    let result = w4::run(&target, &config).await.expect("W4 runs");
    assert_eq!(result.preload_acked, 250, "{result:?}");
    assert_eq!(result.synced, 50, "{result:?}");
    assert_eq!(result.gave_up, 0);
    assert_eq!(result.messages_received, 250, "{result:?}");
    assert!(result.server.is_some());
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w5_pages_through_every_message_newest_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, target) = server(&dir).await;
    let config = w5::W5Config {
        messages: 300,
        page: 50,
        rounds: 2,
        payload: 100,
        prefix: "smoke-w5".into(),
    };
    let result = w5::run(&target, &config).await.expect("W5 runs");
    assert_eq!(result.preload_acked, 300);
    assert_eq!(result.last_seq, 300);
    assert_eq!(result.messages_per_round, vec![300, 300], "{result:?}");
    assert_eq!(result.pages, 12, "{result:?}");
    assert_eq!(result.errors, 0);
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_relay_carries_w1_and_w3() {
    init_tracing();
    let relay = relay::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("relay starts");
    let target = Target::local(relay.addr, SECRET);
    let result = w1::run(&target, &w1_config("smoke-relay"))
        .await
        .expect("W1 on the relay");
    assert!(result.sent_total > 0);
    assert_eq!(result.received_total, result.sent_total, "{result:?}");
    assert_eq!(result.acked_total, result.sent_total, "{result:?}");
    let config = w3::W3Config {
        members: 20,
        online: 19,
        messages: 20,
        window: 4,
        rate: 0,
        payload: 100,
        timeout: Duration::from_secs(20),
        prefix: "smoke-relay-w3".into(),
    };
    let result = w3::run(&target, &config).await.expect("W3 on the relay");
    assert_eq!(result.deliveries, 20 * 19, "{result:?}");
    relay.shutdown.cancel();
}

#[test]
fn targets_outside_loopback_are_refused_unless_allowed() {
    let mut target = Target::local("10.1.2.3:8080".parse().expect("address"), SECRET);
    assert!(target.check().is_err());
    target.allow_remote = true;
    assert!(target.check().is_ok());
    assert!(
        Target::local("127.0.0.1:1".parse().expect("address"), SECRET)
            .check()
            .is_ok()
    );
}
