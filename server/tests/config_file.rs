//! The config file, end to end through the binary: its values are used, the environment and
//! flags override them, and a bad file stops the server with the key named.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

fn im_server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_im-server"));
    // Nothing from the test runner's environment decides what these tests check.
    for (key, _) in std::env::vars() {
        if key.starts_with("IM_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_BACKTRACE");
    command
}

/// Starts the server, reads the first line it prints (where it listens) and kills it.
fn first_line_of(command: &mut Command) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

fn effective(command: &mut Command) -> String {
    let out = command.output().expect("run im-server");
    assert!(
        out.status.success(),
        "im-server config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_example_config_in_the_repo_parses_and_its_values_are_used() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/im-server.example.toml");
    let shown = effective(im_server().args(["--config", example, "config"]));
    assert!(
        shown.contains("rate-limit = \"200\"  # config file"),
        "{shown}"
    );
    assert!(
        shown.contains("store = \"embedded\"  # config file"),
        "{shown}"
    );
    assert!(
        shown.contains("no-quic = \"false\"  # config file"),
        "{shown}"
    );
    assert!(
        shown.contains("admin-listen = \"127.0.0.1:9090\"  # config file"),
        "{shown}"
    );
}

#[test]
fn the_admin_key_is_never_printed() {
    let shown = effective(
        im_server()
            .env("IM_ADMIN_KEY", "an-admin-key-that-stays-secret-0123")
            .args(["config"]),
    );
    assert!(!shown.contains("stays-secret"), "{shown}");
    assert!(shown.contains("admin-key = "), "{shown}");
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("im.toml");
    std::fs::write(
        &file,
        "rate-limit = 5\nmax-group-members = 6\nheartbeat-secs = 7\nlogic-timeout-ms = 8\nsecret = \"a-secret-that-is-never-printed\"\n",
    )
    .unwrap();
    let shown = effective(
        im_server()
            .env("IM_CONFIG", &file)
            .env("IM_MAX_GROUP_MEMBERS", "60")
            .env("IM_HEARTBEAT_SECS", "70")
            .args(["--heartbeat-secs", "700", "config"]),
    );
    assert!(
        shown.contains("rate-limit = \"5\"  # config file"),
        "{shown}"
    );
    assert!(
        shown.contains("max-group-members = \"60\"  # environment"),
        "{shown}"
    );
    assert!(
        shown.contains("heartbeat-secs = \"700\"  # flag"),
        "{shown}"
    );
    assert!(
        shown.contains("logic-timeout-ms = \"8\"  # config file"),
        "{shown}"
    );
    assert!(
        shown.contains("max-connections = \"100000\"  # default"),
        "{shown}"
    );
    assert!(
        shown.contains("secret = \"********\"  # config file"),
        "{shown}"
    );
    assert!(!shown.contains("a-secret-that-is-never-printed"), "{shown}");
}

#[test]
fn an_unknown_key_or_a_bad_value_stops_the_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        ("rate-limt = 5\n", "unknown key `rate-limt`"),
        ("rate-limit = \"fast\"\n", "--rate-limit"),
        ("rate-limit = { per-second = 5 }\n", "key `rate-limit`"),
        ("rate-limit = \n", "not valid TOML"),
        ("config = \"other.toml\"\n", "unknown key `config`"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = im_server()
            .args(["--config".as_ref(), file.as_os_str()])
            .args(["--data-dir".as_ref(), dir.path().join("data").as_os_str()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "{text:?}: the server started"
        );
    }
    let out = im_server()
        .args(["--config", "/nonexistent/im.toml", "config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/im.toml"));
}

#[test]
fn the_server_serves_with_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data-from-file");
    let file = dir.path().join("im.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata-dir = {:?}\nno-quic = true\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let line = first_line_of(im_server().args(["--config".as_ref(), file.as_os_str()]));
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    assert!(
        data.join("token.secret").exists(),
        "the data directory is the file's"
    );
}

#[test]
fn a_logic_table_holds_the_logic_nodes_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("logic-data");
    let file = dir.path().join("im.toml");
    std::fs::write(
        &file,
        format!(
            "data-dir = {:?}\n[logic]\nlisten = \"127.0.0.1:0\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let line =
        first_line_of(im_server().args(["--config".as_ref(), file.as_os_str(), "logic".as_ref()]));
    assert!(line.starts_with("logic listening on 127.0.0.1:"), "{line}");
    // `im-server config` shows the table as the logic node would use it.
    let shown =
        effective(im_server().args(["--config".as_ref(), file.as_os_str(), "config".as_ref()]));
    let table = shown
        .split_once("\n[logic]\n")
        .unwrap_or_else(|| panic!("a [logic] table in {shown}"))
        .1;
    assert!(
        table.contains("listen = \"127.0.0.1:0\"  # config file"),
        "{table}"
    );
    assert!(
        table.contains("max-group-members = \"100000\"  # default"),
        "{table}"
    );

    std::fs::write(&file, "[logic]\nlistn = \"127.0.0.1:0\"\n").unwrap();
    let out = im_server()
        .args(["--config".as_ref(), file.as_os_str(), "logic".as_ref()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `listn`"));
}
