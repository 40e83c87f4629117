//! W2, idle connections: N authenticated connections, opened `concurrency` at a time, spread
//! over several client processes (one process may open at most 20,000 files) and 127.0.0.x
//! source addresses; each keeps its connection alive with PINGs at the server's announced
//! heartbeat interval for `hold`. Reports the server's RSS before and after, RSS per connection
//! and the time to log everyone in.
//!
//! A *part* is the share of one process. With `processes` = 0 the parts run as tasks of this
//! process (tests); otherwise each part is a child `loadtest worker w2 --spec JSON` that talks
//! to the parent in JSON lines on stdout and takes `go` / `stop` lines on stdin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use im_protocol::{Body, Frame, pb};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::common::{self, CostMeter, Latency};
use crate::progress;

/// What W2 does.
#[derive(Clone, Debug)]
pub struct W2Config {
    /// Connections in total.
    pub connections: usize,
    /// Handshakes in progress at once, over all processes.
    pub concurrency: usize,
    /// Client processes (0 = tasks in this process).
    pub processes: usize,
    /// Source addresses per process (127.0.0.2, 127.0.0.3, …; each process its own range).
    pub sources_per_process: u32,
    /// How long to hold the connections once all are in.
    pub hold: Duration,
    /// Prefix of the user ids.
    pub prefix: String,
    /// The loadtest binary for child processes (default: this executable).
    pub worker_exe: Option<PathBuf>,
}

/// The share of one process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartSpec {
    /// Gateway.
    pub server: SocketAddr,
    /// Its transport.
    pub dial: common::Dial,
    /// Token secret.
    pub secret: String,
    /// User ids are `{prefix}-{first + i}`.
    pub prefix: String,
    /// First user index.
    pub first: usize,
    /// Connections of this part.
    pub count: usize,
    /// Handshakes at once in this part.
    pub concurrency: usize,
    /// First source address index (0 = 127.0.0.2).
    pub source_first: u32,
    /// Source addresses to rotate over.
    pub source_count: u32,
    /// A child stops by itself after this many seconds even if the parent never says `stop`.
    pub max_secs: u64,
}

/// A part reports this once all its connections are in.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PartReady {
    /// Connections authenticated.
    pub logged_in: u64,
    /// Connections that failed to connect or authenticate.
    pub failed: u64,
    /// From `go` to the last handshake, seconds.
    pub login_secs: f64,
    /// Heartbeat interval the server announced, ms.
    pub heartbeat_ms: u64,
    /// Handshake latencies as (value µs, count), mergeable across processes.
    pub handshake_us: Vec<(u64, u64)>,
}

/// A part reports this when it stops.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PartDone {
    /// PINGs sent.
    pub pings: u64,
    /// PONGs received.
    pub pongs: u64,
    /// Connections the server closed (or kicked) while held.
    pub dropped: u64,
    /// Error frames received.
    pub errors: u64,
}

/// What W2 measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct W2Result {
    /// Always "W2".
    pub workload: String,
    /// Connections asked for.
    pub connections: usize,
    /// Connections authenticated.
    pub logged_in: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Client processes (0 = in-process).
    pub processes: usize,
    /// Handshakes at once.
    pub concurrency: usize,
    /// Time to log all in, seconds.
    pub login_secs: f64,
    /// Logins per second.
    pub logins_per_sec: f64,
    /// Handshake latency, ms.
    pub handshake_ms: Latency,
    /// Held for, seconds.
    pub hold_secs: f64,
    /// Announced heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// PINGs sent / PONGs received while held.
    pub pings: u64,
    /// PONGs received.
    pub pongs: u64,
    /// Connections lost while held.
    pub dropped: u64,
    /// Error frames.
    pub errors: u64,
    /// Server RSS before the first connection, bytes.
    pub rss_before_bytes: Option<u64>,
    /// Server RSS once all were in, bytes.
    pub rss_after_login_bytes: Option<u64>,
    /// Server RSS at the end of the hold, bytes.
    pub rss_after_hold_bytes: Option<u64>,
    /// (RSS at end of hold − RSS before) / connections, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Server CPU seconds spent logging everyone in.
    pub login_cpu_secs: Option<f64>,
    /// Server CPU seconds over the whole run (login and hold).
    pub server_cpu_secs: Option<f64>,
}

impl W2Result {
    /// The human-readable table (stdout).
    pub fn table(&self) -> String {
        let mib = |b: Option<u64>| {
            b.map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "W2  connections={} processes={} concurrency={} hold={:.0}s heartbeat={}ms\n",
            self.connections, self.processes, self.concurrency, self.hold_secs, self.heartbeat_ms
        );
        s += &format!(
            "  logged in / failed     {} / {}\n",
            self.logged_in, self.failed
        );
        s += &format!(
            "  time to log all in     {:>10.2} s  ({:.0}/s)\n",
            self.login_secs, self.logins_per_sec
        );
        s += &format!(
            "  handshake ms p50/p99/p99.9/max  {}\n",
            self.handshake_ms.line()
        );
        s += &format!(
            "  server RSS MiB before / after login / after hold  {} / {} / {}\n",
            mib(self.rss_before_bytes),
            mib(self.rss_after_login_bytes),
            mib(self.rss_after_hold_bytes)
        );
        if let Some(k) = self.rss_per_connection_kib {
            s += &format!("  RSS per connection     {k:>10.2} KiB\n");
        }
        if let Some(cpu) = self.login_cpu_secs {
            s += &format!("  server CPU-s (login)   {cpu:>10.2}\n");
        }
        s += &format!(
            "  pings / pongs          {} / {}\n  dropped / errors       {} / {}\n",
            self.pings, self.pongs, self.dropped, self.errors
        );
        s
    }
}

/// Runs one part: logs in its connections after `go`, reports `ready`, holds them with
/// heartbeats until `stop`, then says goodbye and reports.
pub async fn run_part(
    spec: PartSpec,
    go: impl std::future::Future<Output = ()>,
    ready: oneshot::Sender<PartReady>,
    stop: CancellationToken,
) -> PartDone {
    let dialer = match spec.dial.dialer(spec.server) {
        Ok(dialer) => dialer,
        Err(e) => {
            progress!("w2 part@{}: {e:#}", spec.first);
            let _ = ready.send(PartReady {
                failed: spec.count as u64,
                ..PartReady::default()
            });
            return PartDone::default();
        }
    };
    go.await;
    let start = Instant::now();
    let pings = Arc::new(AtomicU64::new(0));
    let pongs = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let logged_in = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let heartbeat_ms = Arc::new(AtomicU64::new(0));
    let tracker = tokio_util::task::TaskTracker::new();
    let mut handshakes = common::histogram();
    let ticker = {
        let (logged_in, failed) = (logged_in.clone(), failed.clone());
        let first = spec.first;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress!(
                    "  w2 part@{first}: logged in {} failed {}",
                    logged_in.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut logins = futures::stream::iter(0..spec.count)
        .map(|i| {
            let spec = &spec;
            let dialer = &dialer;
            async move {
                let t = Instant::now();
                let source = common::source_ip(
                    spec.server,
                    spec.source_first,
                    (i as u32) % spec.source_count.max(1),
                );
                let user = format!("{}-{}", spec.prefix, spec.first + i);
                let conn = common::connect_from(dialer, source, &spec.secret, &user).await;
                (conn, t.elapsed())
            }
        })
        .buffer_unordered(spec.concurrency.max(1));
    while let Some((conn, took)) = logins.next().await {
        match conn {
            Ok(conn) => {
                common::record(&mut handshakes, took);
                logged_in.fetch_add(1, Ordering::Relaxed);
                let interval =
                    Duration::from_millis(u64::from(conn.hello.heartbeat_interval_ms.max(1000)));
                heartbeat_ms.store(interval.as_millis() as u64, Ordering::Relaxed);
                let (pings, pongs, dropped, errors, stop) = (
                    pings.clone(),
                    pongs.clone(),
                    dropped.clone(),
                    errors.clone(),
                    stop.clone(),
                );
                tracker.spawn(hold(conn, interval, stop, pings, pongs, dropped, errors));
            }
            Err(e) => {
                if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    progress!("w2 login failed: {e:#}");
                }
            }
        }
    }
    drop(logins);
    ticker.abort();
    let _ = ready.send(PartReady {
        logged_in: logged_in.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        login_secs: start.elapsed().as_secs_f64(),
        heartbeat_ms: heartbeat_ms.load(Ordering::Relaxed),
        handshake_us: handshakes
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    });
    stop.cancelled().await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    PartDone {
        pings: pings.load(Ordering::Relaxed),
        pongs: pongs.load(Ordering::Relaxed),
        dropped: dropped.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Keeps one connection alive: a PING every heartbeat interval (nothing else is sent, so this
/// is exactly the production client's rhythm when idle), count the answers.
async fn hold(
    mut conn: common::Conn,
    interval: Duration,
    stop: CancellationToken,
    pings: Arc<AtomicU64>,
    pongs: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let mut next_ping = tokio::time::Instant::now() + interval;
    let mut request_id: u32 = 1;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                request_id += 1;
                let _ = conn.writer.send(Frame::new(request_id, pb::Goodbye::default())).await;
                return;
            }
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping += interval;
                request_id += 1;
                let ping = pb::Ping { client_time_ms: common::now_ms() };
                if conn.writer.send(Frame::new(request_id, ping)).await.is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                pings.fetch_add(1, Ordering::Relaxed);
            }
            frame = conn.reader.next() => match frame {
                Some(Ok(frame)) => match frame.decode_body() {
                    Ok(Body::Pong(_)) => { pongs.fetch_add(1, Ordering::Relaxed); }
                    Ok(Body::Error(_)) => { errors.fetch_add(1, Ordering::Relaxed); }
                    Ok(Body::Kick(_)) => { dropped.fetch_add(1, Ordering::Relaxed); return; }
                    _ => {}
                },
                _ => { dropped.fetch_add(1, Ordering::Relaxed); return; }
            },
        }
    }
}

/// One running part, in a task or in a child process. A bench has a handful of parts, so the
/// size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Part {
    Task {
        ready: oneshot::Receiver<PartReady>,
        done: tokio::task::JoinHandle<PartDone>,
        go: Option<oneshot::Sender<()>>,
        stop: CancellationToken,
    },
    Child {
        child: tokio::process::Child,
        stdin: tokio::process::ChildStdin,
        lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    },
}

impl Part {
    async fn go(&mut self) -> anyhow::Result<()> {
        match self {
            Part::Task { go, .. } => {
                if let Some(go) = go.take() {
                    let _ = go.send(());
                }
            }
            Part::Child { stdin, .. } => stdin.write_all(b"go\n").await?,
        }
        Ok(())
    }

    async fn ready(&mut self) -> anyhow::Result<PartReady> {
        match self {
            Part::Task { ready, .. } => Ok(ready.await?),
            Part::Child { lines, .. } => next_json(lines, "ready").await,
        }
    }

    /// Asks the part to stop (all parts are asked before any is awaited, so they close
    /// their connections together).
    async fn signal_stop(&mut self) {
        match self {
            Part::Task { stop, .. } => stop.cancel(),
            Part::Child { stdin, .. } => {
                let _ = stdin.write_all(b"stop\n").await;
                let _ = stdin.shutdown().await;
            }
        }
    }

    async fn done(&mut self) -> anyhow::Result<PartDone> {
        match self {
            Part::Task { done, .. } => Ok(done.await?),
            Part::Child { child, lines, .. } => {
                let done = next_json(lines, "done").await;
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                done
            }
        }
    }
}

/// Reads the child's next JSON line of the given phase (`{"phase": ..., "data": ...}`).
async fn next_json<T: serde::de::DeserializeOwned>(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    phase: &str,
) -> anyhow::Result<T> {
    while let Some(line) = lines.next_line().await? {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value.get("phase").and_then(|p| p.as_str()) == Some(phase) {
            return Ok(serde_json::from_value(
                value.get("data").cloned().unwrap_or_default(),
            )?);
        }
    }
    bail!("worker ended before reporting {phase}")
}

/// Runs W2 against `target`.
pub async fn run(target: &common::Target, config: &W2Config) -> anyhow::Result<W2Result> {
    let parts_n = config.processes.max(1);
    let run = common::now_ms() % 1_000_000_000;
    let per = config.connections.div_ceil(parts_n);
    let concurrency = (config.concurrency / parts_n).max(1);
    let max_secs = config.hold.as_secs() + 600;
    let mut parts = Vec::new();
    let probe = target.probe();
    let rss = || probe.as_ref().and_then(|p| p.sample()).map(|u| u.rss_bytes);
    let cpu = || probe.as_ref().and_then(|p| p.sample()).map(|u| u.cpu_secs);
    for k in 0..parts_n {
        let first = k * per;
        let count = per.min(config.connections.saturating_sub(first));
        let spec = PartSpec {
            server: target.server,
            dial: target.dial.clone(),
            secret: target.secret.clone(),
            prefix: format!("{}-{run}", config.prefix),
            first,
            count,
            concurrency,
            source_first: k as u32 * config.sources_per_process.max(1),
            source_count: config.sources_per_process.max(1),
            max_secs,
        };
        if config.processes == 0 {
            let (go_tx, go_rx) = oneshot::channel();
            let (ready_tx, ready_rx) = oneshot::channel();
            let stop = CancellationToken::new();
            let done = tokio::spawn(run_part(
                spec,
                async move {
                    let _ = go_rx.await;
                },
                ready_tx,
                stop.clone(),
            ));
            parts.push(Part::Task {
                ready: ready_rx,
                done,
                go: Some(go_tx),
                stop,
            });
        } else {
            let exe = match &config.worker_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe()?,
            };
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .arg("w2")
                .arg("--spec")
                .arg(serde_json::to_string(&spec)?)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {}", exe.display()))?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let () = next_json(&mut lines, "started").await?;
            parts.push(Part::Child {
                child,
                stdin,
                lines,
            });
        }
    }
    // Let the server settle after the previous workload before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss();
    let cpu_start = cpu();
    let meter = CostMeter::start(probe.clone());
    progress!(
        "W2: {} connections in {} part(s), {} at a time",
        config.connections,
        parts_n,
        concurrency * parts_n
    );
    let start = Instant::now();
    for part in &mut parts {
        part.go().await?;
    }
    let mut ready = Vec::new();
    for part in &mut parts {
        ready.push(part.ready().await?);
    }
    let login_secs = start.elapsed().as_secs_f64();
    let login_cpu = match (cpu_start, cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let logged_in: u64 = ready.iter().map(|r| r.logged_in).sum();
    progress!(
        "W2: {logged_in} logged in in {login_secs:.2} s; holding {} s",
        config.hold.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after_login = rss();
    let hold_start = Instant::now();
    while hold_start.elapsed() < config.hold {
        let left = config.hold.saturating_sub(hold_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
        progress!(
            "  held {:>4.0} s  server RSS {} MiB",
            hold_start.elapsed().as_secs_f64(),
            rss()
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    let rss_after_hold = rss();
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let cost = meter.finish();
    let mut done = Vec::new();
    for part in &mut parts {
        part.signal_stop().await;
    }
    for part in &mut parts {
        done.push(part.done().await?);
    }
    let mut h = common::histogram();
    for r in &ready {
        for &(v, c) in &r.handshake_us {
            let _ = h.record_n(v.max(1), c);
        }
    }
    let per_conn = match (rss_before, rss_after_hold) {
        (Some(a), Some(b)) if logged_in > 0 => {
            Some(common::kib(b as f64 - a as f64) / logged_in as f64)
        }
        _ => None,
    };
    Ok(W2Result {
        workload: "W2".into(),
        connections: config.connections,
        logged_in,
        failed: ready.iter().map(|r| r.failed).sum(),
        processes: config.processes,
        concurrency: concurrency * parts_n,
        login_secs,
        logins_per_sec: logged_in as f64 / login_secs.max(1e-9),
        handshake_ms: Latency::of(&h),
        hold_secs,
        heartbeat_ms: ready.iter().map(|r| r.heartbeat_ms).max().unwrap_or(0),
        pings: done.iter().map(|d| d.pings).sum(),
        pongs: done.iter().map(|d| d.pongs).sum(),
        dropped: done.iter().map(|d| d.dropped).sum(),
        errors: done.iter().map(|d| d.errors).sum(),
        rss_before_bytes: rss_before,
        rss_after_login_bytes: rss_after_login,
        rss_after_hold_bytes: rss_after_hold,
        rss_per_connection_kib: per_conn,
        login_cpu_secs: login_cpu,
        server_cpu_secs: cost.map(|c| c.cpu_secs),
    })
}

/// The child side (`loadtest worker w2 --spec JSON`): JSON lines on stdout
/// (`started`, `ready`, `done`), `go` and `stop` on stdin. Stops by itself when stdin closes
/// (the parent died) or after `max_secs`.
pub async fn worker_main(spec: PartSpec) -> anyhow::Result<()> {
    fn emit(phase: &str, data: impl Serialize) {
        let line = serde_json::json!({ "phase": phase, "data": data });
        println!("{line}");
    }
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line_tx.send(line).await.is_err() {
                return;
            }
        }
    });
    emit("started", ());
    let stop = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let max = Duration::from_secs(spec.max_secs);
    let part = tokio::spawn(run_part(
        spec,
        async move {
            let _ = go_rx.await;
        },
        ready_tx,
        stop.clone(),
    ));
    let stopper = stop.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(max);
        tokio::pin!(deadline);
        let mut go = Some(go_tx);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                line = line_rx.recv() => match line.as_deref().map(str::trim) {
                    Some("go") => { if let Some(go) = go.take() { let _ = go.send(()); } }
                    Some("stop") | None => break,
                    Some(_) => {}
                },
            }
        }
        if let Some(go) = go.take() {
            let _ = go.send(());
        }
        stopper.cancel();
    });
    if let Ok(ready) = ready_rx.await {
        emit("ready", ready);
    }
    let done = part.await?;
    emit("done", done);
    // Exit at once: the runtime would otherwise wait for the blocking stdin reader.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}
