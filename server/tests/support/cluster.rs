//! The scaled-out shape on loopback: a real Cassandra node (shared by the run; each cluster
//! gets a keyspace of its own), a Redis server of the cluster's own (so a test can restart it
//! empty), logic nodes and gateways as real `im-server` processes.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{SECRET, Server};

/// A free TCP port on 127.0.0.1 (free now; a process binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The run's Cassandra node: `IM_TEST_CQL`, or one `scripts/cassandra.sh` starts. `None` (after
/// a loud message) only when the machine has no JDK.
pub fn cassandra() -> Option<String> {
    static NODE: OnceLock<Option<String>> = OnceLock::new();
    NODE.get_or_init(|| {
        if let Ok(address) = std::env::var("IM_TEST_CQL") {
            return Some(address);
        }
        if Command::new("java").arg("-version").output().is_err() {
            eprintln!(
                "\n==================================================================\n\
                 SKIPPED: no JDK, so no Cassandra node: the cluster tests check nothing\n\
                 ==================================================================\n"
            );
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cassandra.sh");
        let output = Command::new(&script)
            .arg("start")
            .output()
            .expect("run scripts/cassandra.sh");
        assert!(
            output.status.success(),
            "scripts/cassandra.sh start failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    })
    .clone()
}

/// A Redis server of one test, on a fixed port so that it can be restarted (empty) in place.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts `redis-server` (installed by `scripts/redis.sh`, which the test command runs).
    pub fn start(dir: &Path) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (./scripts/redis.sh start installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: nothing is saved anyway) and starts it again, empty, on the same port.
    pub fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A logic node process.
pub struct LogicNode {
    child: Option<Child>,
    pub addr: SocketAddr,
    args: Vec<String>,
    data_dir: PathBuf,
}

impl LogicNode {
    /// Starts a logic node on a fresh port over the CQL store.
    pub fn start(data_dir: &Path, cql: &str, keyspace: &str) -> LogicNode {
        let port = free_port();
        let args = vec![
            "--role".into(),
            "logic".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--store".into(),
            "cql".into(),
            "--cql-nodes".into(),
            cql.into(),
            "--cql-keyspace".into(),
            keyspace.into(),
        ];
        let mut node = LogicNode {
            child: None,
            addr: format!("127.0.0.1:{port}").parse().expect("address"),
            args,
            data_dir: data_dir.to_owned(),
        };
        node.spawn();
        node
    }

    /// Starts `im-server logic` on a fresh port over the embedded store in `data_dir`.
    pub fn start_embedded(data_dir: &Path) -> LogicNode {
        LogicNode::start_embedded_with(data_dir, &[])
    }

    /// Like [`LogicNode::start_embedded`], with more of the logic node's flags.
    pub fn start_embedded_with(data_dir: &Path, extra: &[&str]) -> LogicNode {
        let port = free_port();
        let mut args = vec![
            "logic".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = LogicNode {
            child: None,
            addr: format!("127.0.0.1:{port}").parse().expect("address"),
            args,
            data_dir: data_dir.to_owned(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
            .args(["--secret", SECRET, "--rate-limit", "0"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("IM_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a logic node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        assert!(
            line.starts_with("logic listening on "),
            "expected the logic node's listening line, got {line:?}"
        );
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// SIGSTOP: the process is frozen where it is, its sockets open.
    pub fn freeze(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT: it goes on where it stopped.
    pub fn thaw(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for LogicNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_quiet(child.id(), "-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, which: &str) {
    assert!(signal_quiet(pid, which), "kill {which} {pid} failed");
}

fn signal_quiet(pid: u32, which: &str) -> bool {
    Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// The whole scaled-out shape.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub redis: Redis,
    pub logic: Vec<LogicNode>,
    pub gateways: Vec<Server>,
    pub keyspace: String,
}

impl Cluster {
    /// `logic` logic nodes over a fresh keyspace and `gateways` gateways using them all and
    /// one Redis. `None` when there is no Cassandra (no JDK).
    pub fn start(logic: usize, gateways: usize) -> Option<Cluster> {
        let cql = cassandra()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let keyspace = format!(
            "cluster_{}_{}",
            std::process::id(),
            super::now_secs() % 1_000_000 * 1000 + u64::from(free_port() % 1000)
        );
        let redis = Redis::start(&dir.path().join("redis"));
        let mut nodes = Vec::new();
        for i in 0..logic {
            nodes.push(LogicNode::start(
                &dir.path().join(format!("logic{i}")),
                &cql,
                &keyspace,
            ));
        }
        let logic_nodes = nodes
            .iter()
            .map(|node| node.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for i in 0..gateways {
            let data_dir = dir.path().join(format!("gateway{i}"));
            std::fs::create_dir_all(&data_dir).expect("gateway dir");
            servers.push(Server::start_process(
                &data_dir,
                &[
                    "--role",
                    "gateway",
                    "--logic-nodes",
                    &logic_nodes,
                    "--redis-url",
                    &redis.url(),
                    "--gateway-id",
                    &format!("gw{i}"),
                ],
            ));
        }
        Some(Cluster {
            dir,
            redis,
            logic: nodes,
            gateways: servers,
            keyspace,
        })
    }
}
