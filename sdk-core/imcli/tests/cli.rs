//! `imcli` as a user runs it: a real child process against a real server on 127.0.0.1.

use std::path::Path;
use std::process::{Command, Output};

use im_auth::{Claims, TokenKey};
use im_server::app::{self, ServerOptions};

const SECRET: &str = "cli-test-secret-8d2f6a0c4e1b9375";

fn token(user: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    TokenKey::new(SECRET).sign(&Claims {
        sub: user.into(),
        dev: None,
        plt: None,
        exp: (now + exp_offset) as u64,
        iat: None,
    })
}

async fn imcli(home: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imcli"));
    command
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME");
    tokio::task::spawn_blocking(move || command.output().expect("run imcli"))
        .await
        .unwrap()
}

/// A server in this process on a free port, its data under `dir`.
async fn start_server(dir: &Path) -> app::RunningServer {
    app::start(ServerOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("srv"),
        TokenKey::new(SECRET),
    ))
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_chats_creates_a_group_and_reads_with_imcli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let addr = server.addr.to_string();
    let home = dir.path();
    let (alice, bob) = (token("alice", 600), token("bob", 600));

    let sent = imcli(
        home,
        &[
            "--server", &addr, "--token", &alice, "--json", "send", "bob", "hi bob",
        ],
    )
    .await;
    assert!(sent.status.success(), "{sent:?}");
    let line: serde_json::Value = serde_json::from_str(stdout(&sent).trim()).unwrap();
    assert_eq!(
        (line["type"].as_str(), line["message"]["seq"].as_u64()),
        (Some("sent"), Some(1))
    );

    let created = imcli(
        home,
        &[
            "--server", &addr, "--token", &alice, "--json", "group", "create", "friends", "bob",
            "carol",
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    let group: serde_json::Value = serde_json::from_str(stdout(&created).trim()).unwrap();
    let group_id = group["group_id"].as_str().unwrap().to_owned();
    assert_eq!(group["member_count"].as_u64(), Some(3));
    assert_eq!(group["broadcast"].as_bool(), Some(false));
    let to_group = format!("g:{group_id}");
    assert!(
        imcli(
            home,
            &[
                "--server",
                &addr,
                "--token",
                &alice,
                "send",
                &to_group,
                "hello friends"
            ]
        )
        .await
        .status
        .success()
    );

    let listed = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &bob,
            "--json",
            "conversations",
        ],
    )
    .await;
    let rows: Vec<serde_json::Value> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r["unread"].as_u64() == Some(1)),
        "{rows:?}"
    );

    let history = imcli(
        home,
        &["--server", &addr, "--token", &bob, "history", "alice"],
    )
    .await;
    assert!(stdout(&history).contains("alice: hi bob"), "{history:?}");
    let read = imcli(
        home,
        &[
            "--server", &addr, "--token", &bob, "--json", "read", "alice",
        ],
    )
    .await;
    let marker: serde_json::Value = serde_json::from_str(stdout(&read).trim()).unwrap();
    assert_eq!(
        (marker["read_seq"].as_u64(), marker["unread"].as_u64()),
        (Some(1), Some(0))
    );
    // A broadcast channel: bob, a subscriber, cannot post to it (exit code 5, refused).
    let channel = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &alice,
            "--json",
            "group",
            "create",
            "news",
            "bob",
            "--channel",
        ],
    )
    .await;
    assert!(channel.status.success(), "{channel:?}");
    let channel: serde_json::Value = serde_json::from_str(stdout(&channel).trim()).unwrap();
    assert_eq!(channel["broadcast"].as_bool(), Some(true));
    let to_channel = format!("g:{}", channel["group_id"].as_str().unwrap());
    let subscriber_post = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &bob,
            "send",
            &to_channel,
            "me too",
        ],
    )
    .await;
    assert_eq!(
        subscriber_post.status.code(),
        Some(5),
        "{subscriber_post:?}"
    );
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_may_be_named_by_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let by_name = format!("localhost:{}", server.addr.port());
    let sent = imcli(
        dir.path(),
        &[
            "--server",
            &by_name,
            "--token",
            &token("alice", 600),
            "--json",
            "send",
            "bob",
            "hi by name",
        ],
    )
    .await;
    assert!(sent.status.success(), "{sent:?}");
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_server_is_trusted_only_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    im_server::cli::write_dev_cert(&certs, &["localhost".into()]).unwrap();
    let mut options = ServerOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("srv"),
        TokenKey::new(SECRET),
    );
    options.tls = Some(app::TlsOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: gateway::transport::tls::TlsIdentity::from_pem_files(
            &certs.join("cert.pem"),
            &certs.join("key.pem"),
        )
        .unwrap(),
    });
    let server = app::start(options).await.unwrap();
    let tls = format!("localhost:{}", server.tls_addr.unwrap().port());
    let ca = certs.join("cert.pem").display().to_string();
    let alice = token("alice", 600);
    let base = ["--server", &tls, "--token", &alice, "--transport", "tls"];

    let trusted = imcli(
        dir.path(),
        &[&base[..], &["--ca-cert", &ca, "send", "bob", "over TLS"]].concat(),
    )
    .await;
    assert!(trusted.status.success(), "{trusted:?}");

    // The public roots do not vouch for a self-signed certificate: unreachable, exit 3.
    let untrusted = imcli(dir.path(), &[&base[..], &["send", "bob", "no"]].concat()).await;
    assert_eq!(untrusted.status.code(), Some(3), "{untrusted:?}");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");

    // A CA file that holds no certificate is a bad argument, exit 2.
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let empty = dir.path().join("empty.pem").display().to_string();
    let bad = imcli(
        dir.path(),
        &[&base[..], &["--ca-cert", &empty, "send", "bob", "no"]].concat(),
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    server.shutdown.cancel();
}

#[tokio::test]
async fn over_the_http_tunnel_a_message_goes_and_a_proxy_without_a_tunnel_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("srv"),
        TokenKey::new(SECRET),
    );
    let server = app::start(options).await.unwrap();
    let addr = server.addr.to_string();
    let alice = token("alice", 600);
    let bob = token("bob", 600);
    let sent = imcli(
        dir.path(),
        &[
            "--server",
            &addr,
            "--token",
            &alice,
            "--transport",
            "http",
            "send",
            "bob",
            "over HTTP",
        ],
    )
    .await;
    assert!(sent.status.success(), "{sent:?}");
    let history = imcli(
        dir.path(),
        &[
            "--server",
            &addr,
            "--token",
            &bob,
            "--transport",
            "http",
            "history",
            "alice",
        ],
    )
    .await;
    assert!(history.status.success(), "{history:?}");
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("over HTTP"),
        "{history:?}"
    );
    // A proxy with plain TCP is a contradiction: a bad argument.
    let bad = imcli(
        dir.path(),
        &[
            "--server",
            &addr,
            "--token",
            &alice,
            "--proxy",
            "127.0.0.1:9",
            "send",
            "bob",
            "no",
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_tokens_and_arguments_exit_with_clear_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let addr = server.addr.to_string();
    let home = dir.path();
    let alice = token("alice", 600);

    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let unreachable = imcli(
        home,
        &["--server", &closed_port, "--token", &alice, "conversations"],
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(3), "{unreachable:?}");
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach server"));
    let no_port = imcli(
        home,
        &["--server", "localhost", "--token", &alice, "conversations"],
    )
    .await;
    assert_eq!(no_port.status.code(), Some(2), "{no_port:?}");

    let forged = TokenKey::new("wrong").sign(&Claims {
        sub: "alice".into(),
        dev: None,
        plt: None,
        exp: u64::MAX / 2,
        iat: None,
    });
    let refused = imcli(
        home,
        &["--server", &addr, "--token", &forged, "conversations"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let expired = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &token("alice", -10),
            "conversations",
        ],
    )
    .await;
    assert_eq!(expired.status.code(), Some(4), "{expired:?}");
    assert!(String::from_utf8_lossy(&expired.stderr).contains("expired"));

    let bad_target = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &alice,
            "send",
            "not valid",
            "x",
        ],
    )
    .await;
    assert_eq!(bad_target.status.code(), Some(2), "{bad_target:?}");
    let no_command = imcli(home, &["--server", &addr, "--token", &alice]).await;
    assert_eq!(no_command.status.code(), Some(2));
    server.shutdown.cancel();
}

/// The README's two-terminal demo: bob follows in one terminal and lists his conversations in
/// another, with the same device-less token; neither logs the other out, and a message sent
/// afterwards still reaches the follower. A later run reuses its device and database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_in_one_terminal_survives_commands_in_another() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let addr = server.addr.to_string();
    let home = dir.path();
    let (alice, bob) = (token("alice", 600), token("bob", 600));

    let mut follower = Command::new(env!("CARGO_BIN_EXE_imcli"))
        .args(["--server", &addr, "--token", &bob, "--json", "follow"])
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imcli follow");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Let the follower connect and sync before the second terminal logs in.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;

    let listed = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &bob,
            "--json",
            "conversations",
        ],
    )
    .await;
    assert!(listed.status.success(), "{listed:?}");
    let sent = imcli(
        home,
        &[
            "--server",
            &addr,
            "--token",
            &alice,
            "send",
            "bob",
            "still there?",
        ],
    )
    .await;
    assert!(sent.status.success(), "{sent:?}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut received = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines_rx.recv_timeout(left) {
            Ok(line) if line.contains("still there?") => {
                received = true;
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let still_running = follower.try_wait().unwrap().is_none();
    let _ = follower.kill();
    let output = follower.wait_with_output().unwrap();
    assert!(
        still_running && received,
        "follow stopped or missed the message; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Two devices were used at once, each with its own local database.
    let imcli_dir = home.join(".local/share/imcli");
    let databases = std::fs::read_dir(&imcli_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("bob-") && name.ends_with(".sqlite3")
        })
        .count();
    assert_eq!(databases, 2);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}
