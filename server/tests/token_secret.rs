//! The server refuses to run with a token secret anyone could guess, and `gateway token` can
//! mint the expired tokens client authors need to test their TOKEN_EXPIRED handling.

mod support;

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use im_protocol::pb;
use support::*;

/// Runs the gateway binary to completion; one that is still running after 10 s (a server
/// that started when it should have refused) is killed and reported as a success.
fn gateway(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(args)
        .env_remove("IM_TOKEN_SECRET")
        .env_remove("IM_TOKEN_SECRET_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the gateway binary");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill the server that started");
            let mut output = child.wait_with_output().expect("reap");
            output.status = std::process::ExitStatus::from_raw(0);
            return output;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the output")
}

fn assert_refused(output: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{what}: started anyway");
    assert!(
        stderr.contains("token secret") && stderr.contains("32"),
        "{what}: unclear message {stderr:?}"
    );
}

#[test]
fn a_server_with_an_empty_or_short_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for secret in ["", "short", "integration-test-secret"] {
        let output = gateway(&[
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--secret",
            secret,
        ]);
        assert_refused(&output, &format!("--secret {secret:?}"));
    }
    let empty_file = dir.path().join("empty.secret");
    std::fs::write(&empty_file, "\n").unwrap();
    let output = gateway(&[
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        empty_file.to_str().unwrap(),
    ]);
    assert_refused(&output, "an empty secret file");
    let uniform = dir.path().join("uniform.secret");
    std::fs::write(&uniform, "a".repeat(64)).unwrap();
    let output = gateway(&[
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        uniform.to_str().unwrap(),
    ]);
    assert_refused(&output, "a secret of one repeated byte");
}

#[test]
fn gateway_token_refuses_to_mint_with_an_empty_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = gateway(&[
        "token",
        "--user",
        "alice",
        "--secret",
        "",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_refused(&output, "gateway token --secret ''");
    assert!(output.stdout.is_empty(), "a token was printed");
}

#[test]
fn a_generated_secret_file_is_strong_enough() {
    let dir = tempfile::tempdir().unwrap();
    let output = gateway(&[
        "token",
        "--user",
        "alice",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let secret = std::fs::read_to_string(dir.path().join("token.secret")).unwrap();
    assert!(secret.trim().len() >= 32);
}

fn mint(args: &[&str]) -> String {
    let mut all = vec![
        "token", "--secret", SECRET, "--user", "alice", "--device", "phone",
    ];
    all.extend_from_slice(args);
    let output = gateway(&all);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn gateway_token_mints_expired_tokens_for_tests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &[]);
    let code = |e: pb::Error| pb::ErrorCode::try_from(e.code).unwrap();
    for args in [
        vec!["--ttl-secs", "-3600"],
        vec!["--ttl-secs", "0"],
        vec!["--expires-at", "1000000000"],
    ] {
        let token = mint(&args);
        match Client::try_connect(&server, &token, "phone").await {
            Ok(_) => panic!("{args:?}: an expired token was accepted"),
            Err(e) => assert_eq!(code(e), pb::ErrorCode::TokenExpired, "{args:?}"),
        }
    }
    let future = (now_secs() + 3600).to_string();
    let token = mint(&["--expires-at", &future]);
    assert!(Client::try_connect(&server, &token, "phone").await.is_ok());
}
