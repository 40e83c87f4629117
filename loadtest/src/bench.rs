//! `bench`: the same workloads against the bare relay and against our server (embedded store,
//! fresh data directory), one after the other in one invocation, each server in its own child
//! process so its CPU and memory are its own; prints our figures as ratios to the relay's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::common::Target;
use crate::progress;
use crate::{w1, w2, w3};

/// What `bench` runs.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// W1 pairs.
    pub pairs: usize,
    /// W1 measured time.
    pub duration: Duration,
    /// W1 warm-up.
    pub warmup: Duration,
    /// W1 paced total rate (0 = skip the paced run).
    pub rate: u64,
    /// W2 connections (0 = skip).
    pub connections: usize,
    /// W2 client processes.
    pub processes: usize,
    /// W2 hold.
    pub hold: Duration,
    /// W3 online receivers (0 = skip); the group has one more member, the sender.
    pub group: usize,
    /// W3 messages.
    pub group_messages: usize,
    /// Rounds (relay, ours, relay, ours, …); medians are reported.
    pub rounds: usize,
    /// The loadtest binary that serves the relay and runs W2 workers (default: this one).
    pub exe: Option<PathBuf>,
    /// The server binary measured (default: `im-server` next to the loadtest binary, which
    /// is where `cargo build --release -p im-server -p loadtest` puts it).
    pub server_exe: Option<PathBuf>,
}

/// The figures of one system.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    /// W1 at full speed, per round.
    pub w1: Vec<w1::W1Result>,
    /// W1 paced, per round.
    pub w1_paced: Vec<w1::W1Result>,
    /// W2, per round.
    pub w2: Vec<w2::W2Result>,
    /// W3, per round.
    pub w3: Vec<w3::W3Result>,
}

/// Both systems' figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchResult {
    /// The bare relay.
    pub relay: Figures,
    /// Our server.
    pub ours: Figures,
}

/// A server child process that printed `listening on ADDR`.
struct ServerChild {
    child: tokio::process::Child,
    addr: SocketAddr,
    pid: u32,
}

async fn spawn_server(exe: &Path, args: &[String]) -> anyhow::Result<ServerChild> {
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        // The server logs a line per session at info: 15,000 logins would print 30,000 lines
        // into the figures. IM_BENCH_SERVER_LOG measures with them.
        .env(
            "RUST_LOG",
            std::env::var("IM_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id().context("server has no pid")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("server did not start within 30 s")??
        .context("server exited before listening")?;
    let Some(addr) = line.strip_prefix("listening on ") else {
        bail!("unexpected first line from the server: {line}");
    };
    let addr = addr.trim().parse()?;
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ServerChild { child, addr, pid })
}

async fn run_system(
    config: &BenchConfig,
    exe: &Path,
    server_exe: &Path,
    args: Vec<String>,
    secret: &str,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let mut server = spawn_server(server_exe, &args).await?;
    let mut target = Target::local(server.addr, secret);
    target.server_pid = vec![server.pid];
    let round = figures.w1.len();
    progress!(
        "bench: {} on {} (pid {})",
        server_exe.display(),
        server.addr,
        server.pid
    );
    let w1_config = w1::W1Config {
        pairs: config.pairs,
        window: 64,
        rate: 0,
        payload: 100,
        duration: config.duration,
        warmup: config.warmup,
        prefix: format!("b{round}w1"),
    };
    // Order matters on one server process: W2 first, so its RSS baseline is a fresh process
    // (memory freed by earlier workloads would be reused and hide the cost per connection);
    // the paced W1 before the full-speed one, so it does not run behind the compaction
    // debt of a million stored messages.
    if config.connections > 0 {
        let w2_config = w2::W2Config {
            connections: config.connections,
            concurrency: 64,
            processes: config.processes,
            sources_per_process: 4,
            hold: config.hold,
            prefix: format!("b{round}w2"),
            worker_exe: Some(exe.to_path_buf()),
        };
        figures.w2.push(w2::run(&target, &w2_config).await?);
    }
    if config.rate > 0 {
        let paced = w1::W1Config {
            rate: config.rate,
            prefix: format!("b{round}w1p"),
            ..w1_config.clone()
        };
        figures.w1_paced.push(w1::run(&target, &paced).await?);
    }
    figures.w1.push(w1::run(&target, &w1_config).await?);
    if config.group > 0 {
        let w3_config = w3::W3Config {
            members: config.group + 1,
            online: config.group,
            messages: config.group_messages,
            window: 8,
            rate: 0,
            payload: 100,
            timeout: Duration::from_secs(60),
            prefix: format!("b{round}w3"),
        };
        figures.w3.push(w3::run(&target, &w3_config).await?);
    }
    let _ = server.child.kill().await;
    Ok(())
}

/// Runs the bench.
pub async fn run(config: &BenchConfig) -> anyhow::Result<BenchResult> {
    let exe = match &config.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?,
    };
    let server_exe = match &config.server_exe {
        Some(exe) => exe.clone(),
        None => exe.with_file_name(format!("im-server{}", std::env::consts::EXE_SUFFIX)),
    };
    anyhow::ensure!(
        server_exe.exists(),
        "no server binary at {} (build it with `cargo build --release -p im-server`, or pass --server-exe)",
        server_exe.display()
    );
    let secret = format!(
        "loadtest-bench-secret-{}-{}",
        crate::common::now_ms(),
        std::process::id()
    );
    let mut result = BenchResult::default();
    for round in 0..config.rounds.max(1) {
        progress!("bench round {}", round + 1);
        let relay_args = vec!["relay".to_string(), "--listen".into(), "127.0.0.1:0".into()];
        run_system(config, &exe, &exe, relay_args, &secret, &mut result.relay).await?;
        let dir = tempfile::tempdir()?;
        // The load tester measures capacity: per-connection and per-sender policies are off,
        // as they are for the other systems it is compared with.
        let serve_args = vec![
            "--rate-limit".to_string(),
            "0".into(),
            "--fanout-bytes-per-sec".into(),
            "0".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--secret".into(),
            secret.clone(),
            "--max-group-members".into(),
            (config.group + 1).max(1000).to_string(),
        ];
        run_system(
            config,
            &exe,
            &server_exe,
            serve_args,
            &secret,
            &mut result.ours,
        )
        .await?;
    }
    Ok(result)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

impl BenchResult {
    /// The comparison table (stdout): medians over rounds, ours / relay.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<38} {:>14} {:>14} {:>10}\n",
            "figure (median)", "bare relay", "ours", "ours/relay"
        );
        let mut row = |name: &str, f: &dyn Fn(&Figures) -> Vec<f64>| {
            let (r, o) = (median(f(&self.relay)), median(f(&self.ours)));
            let fmt = |x: Option<f64>| x.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
            let ratio = match (r, o) {
                (Some(r), Some(o)) if r != 0.0 => format!("{:.3}", o / r),
                _ => "-".into(),
            };
            if r.is_some() || o.is_some() {
                s += &format!("{name:<38} {:>14} {:>14} {ratio:>10}\n", fmt(r), fmt(o));
            }
        };
        row("W1 delivered/s", &|f| {
            f.w1.iter().map(|r| r.delivered_per_sec).collect()
        });
        row("W1 delivered/server CPU-s", &|f| {
            f.w1.iter()
                .filter_map(|r| r.delivered_per_server_cpu_sec)
                .collect()
        });
        row("W1 latency p50 ms", &|f| {
            f.w1.iter().map(|r| r.latency_ms.p50).collect()
        });
        row("W1 latency p99 ms", &|f| {
            f.w1.iter().map(|r| r.latency_ms.p99).collect()
        });
        row("W1 paced latency p50 ms", &|f| {
            f.w1_paced.iter().map(|r| r.latency_ms.p50).collect()
        });
        row("W1 paced latency p99 ms", &|f| {
            f.w1_paced.iter().map(|r| r.latency_ms.p99).collect()
        });
        row("W1 paced latency p99.9 ms", &|f| {
            f.w1_paced.iter().map(|r| r.latency_ms.p999).collect()
        });
        row("W1 paced: load generator lag p99 ms", &|f| {
            f.w1_paced
                .iter()
                .filter_map(|r| r.pacing_lag_ms.map(|lag| lag.p99))
                .collect()
        });
        row("W1 paced server CPU-s", &|f| {
            f.w1_paced
                .iter()
                .filter_map(|r| r.server_cpu_secs)
                .collect()
        });
        row("W2 RSS per connection KiB", &|f| {
            f.w2.iter()
                .filter_map(|r| r.rss_per_connection_kib)
                .collect()
        });
        row("W2 time to log all in s", &|f| {
            f.w2.iter().map(|r| r.login_secs).collect()
        });
        row("W1 push gaps", &|f| {
            f.w1.iter().map(|r| r.push_gaps as f64).collect()
        });
        row("W1 paced push gaps", &|f| {
            f.w1_paced.iter().map(|r| r.push_gaps as f64).collect()
        });
        row("W3 deliveries/s", &|f| {
            f.w3.iter().map(|r| r.deliveries_per_sec).collect()
        });
        row("W3 send→last member p50 ms", &|f| {
            f.w3.iter().map(|r| r.last_receipt_ms.p50).collect()
        });
        row("W3 send→last member p99 ms", &|f| {
            f.w3.iter().map(|r| r.last_receipt_ms.p99).collect()
        });
        row("W3 push gaps", &|f| {
            f.w3.iter().map(|r| r.push_gaps as f64).collect()
        });
        s
    }
}
