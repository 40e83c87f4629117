//! W4, reconnect storm: C clients each with X messages waiting in their inbox (pre-loaded by a
//! few fast senders while the clients are away), then all C come back at once. Each runs the
//! real client core (`sdk_core::driver` with a `MemoryStore`), so connection failures are
//! retried with the core's own exponential backoff and full jitter. Reports the time until every
//! client is synced, the server's peak RSS and CPU, and the clients that gave up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use im_protocol::pb::send_req::Target;
use sdk_core::driver::{self, DriverOptions};
use sdk_core::machine::{ClientConfig, ConnectionState, Event};
use sdk_core::memory::MemoryStore;
use serde::{Deserialize, Serialize};

use crate::common::{self, CostMeter, Latency, ServerCost};
use crate::progress;

/// What W4 does.
#[derive(Clone, Debug)]
pub struct W4Config {
    /// Clients.
    pub clients: usize,
    /// Messages waiting for each client.
    pub messages: usize,
    /// Connections that pre-load the inboxes.
    pub senders: usize,
    /// Unacknowledged sends per pre-loading connection.
    pub send_window: usize,
    /// Payload bytes.
    pub payload: usize,
    /// A client not synced after this long has given up.
    pub timeout: Duration,
    /// Prefix of the user ids.
    pub prefix: String,
}

/// What W4 measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct W4Result {
    /// Always "W4".
    pub workload: String,
    /// Clients.
    pub clients: usize,
    /// Messages waiting per client.
    pub messages_per_client: usize,
    /// Time to pre-load, seconds.
    pub preload_secs: f64,
    /// Pre-load sends acknowledged.
    pub preload_acked: u64,
    /// Pre-load errors.
    pub preload_errors: u64,
    /// Clients that reported `Synced` with every waiting message.
    pub synced: u64,
    /// Clients that stopped (auth failure, kick) or were not synced by the deadline.
    pub gave_up: u64,
    /// From the storm's start until the last client was synced, seconds.
    pub all_synced_secs: f64,
    /// Per client: storm start to synced, ms.
    pub time_to_synced_ms: Latency,
    /// Connection attempts over all clients (C when nobody had to retry).
    pub connect_attempts: u64,
    /// Times a client waited to reconnect (backoff).
    pub backoffs: u64,
    /// Messages the clients received while syncing (expected: clients × messages).
    pub messages_received: u64,
    /// Server cost during the storm (peak RSS sampled every 100 ms).
    pub server: Option<ServerCost>,
}

impl W4Result {
    /// The human-readable table (stdout).
    pub fn table(&self) -> String {
        let mut s = format!(
            "W4  clients={} messages/client={}\n",
            self.clients, self.messages_per_client
        );
        s += &format!(
            "  pre-load               {:.2} s ({} acked, {} errors)\n",
            self.preload_secs, self.preload_acked, self.preload_errors
        );
        s += &format!(
            "  all synced after       {:>10.2} s\n",
            self.all_synced_secs
        );
        s += &format!(
            "  synced / gave up       {} / {}\n",
            self.synced, self.gave_up
        );
        s += &format!(
            "  time to synced ms p50/p99/p99.9/max  {}\n",
            self.time_to_synced_ms.line()
        );
        s += &format!(
            "  connect attempts / backoffs  {} / {}\n",
            self.connect_attempts, self.backoffs
        );
        s += &format!(
            "  messages received      {} of {}\n",
            self.messages_received,
            self.clients as u64 * self.messages_per_client as u64
        );
        if let Some(c) = &self.server {
            s += &format!(
                "  server CPU-s {:.2} ({:.2} cores)  peak RSS {:.1} MiB (before {:.1})\n",
                c.cpu_secs,
                c.cpu_cores,
                c.rss_peak_bytes as f64 / 1048576.0,
                c.rss_before_bytes as f64 / 1048576.0
            );
        }
        s
    }
}

/// Runs W4 against `target`.
pub async fn run(target: &common::Target, config: &W4Config) -> anyhow::Result<W4Result> {
    let dialer = target.dialer()?;
    if config.clients > 18_000 {
        bail!("one process may open at most 20,000 files: at most 18,000 clients per run");
    }
    let run = common::now_ms() % 1_000_000_000;
    let user = |i: usize| format!("{}-{run}-c{i}", config.prefix);

    // Pre-load: each sender serves a slice of the clients, round-robin over them so every
    // inbox grows evenly.
    let preload_start = Instant::now();
    let senders = config.senders.clamp(1, config.clients.max(1));
    let acked = Arc::new(AtomicU64::new(0));
    let mut jobs = Vec::new();
    for s in 0..senders {
        let targets: Vec<String> = (0..config.clients)
            .filter(|i| i % senders == s)
            .map(user)
            .collect();
        let sender = format!("{}-{run}-sender{s}", config.prefix);
        let target = target.clone();
        let dialer = dialer.clone();
        let (messages, window, payload) = (config.messages, config.send_window, config.payload);
        let acked = acked.clone();
        jobs.push(tokio::spawn(async move {
            let mut conn = common::connect(&dialer, &target.secret, &sender).await?;
            let order =
                (0..messages).flat_map(move |_| targets.clone().into_iter().map(Target::ToUser));
            common::send_pipelined(
                &mut conn,
                order,
                &vec![b'x'; payload],
                window,
                &sender,
                Some(&acked),
            )
            .await
        }));
    }
    let ticker = {
        let total = (config.clients * config.messages) as u64;
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress!(
                    "  pre-loaded {:>10} of {total}",
                    acked.load(Ordering::Relaxed)
                );
            }
        })
    };
    let (mut preload_acked, mut preload_errors) = (0, 0);
    for job in jobs {
        match job.await? {
            Ok((a, e)) => {
                preload_acked += a;
                preload_errors += e;
            }
            Err(e) => {
                progress!("W4 pre-load failed: {e:#}");
                preload_errors += 1;
            }
        }
    }
    ticker.abort();
    let preload_secs = preload_start.elapsed().as_secs_f64();
    progress!(
        "W4: pre-loaded {preload_acked} messages in {preload_secs:.2} s; storm of {} clients",
        config.clients
    );

    // The storm.
    let meter = CostMeter::start(target.probe());
    let start = Instant::now();
    let synced = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let backoffs = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..config.clients {
        let u = user(i);
        let token = common::token(&target.secret, &u);
        let (handle, events) = driver::start(
            target.server.into(),
            token,
            ClientConfig::new(u, "w4"),
            MemoryStore::new(),
            DriverOptions::default(),
            &tokio::runtime::Handle::current(),
        )?;
        let (synced, attempts, backoffs, received) = (
            synced.clone(),
            attempts.clone(),
            backoffs.clone(),
            received.clone(),
        );
        let expect = config.messages as u64;
        let timeout = config.timeout;
        let task = tokio::spawn(async move {
            let mut events = events;
            let deadline = tokio::time::Instant::from_std(start + timeout);
            let mut outcome = None;
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
                match event {
                    Event::State(ConnectionState::Connecting) => {
                        attempts.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::State(ConnectionState::WaitingToReconnect) => {
                        backoffs.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::State(ConnectionState::Stopped(reason)) => {
                        progress!("W4 client stopped: {reason:?}");
                        break;
                    }
                    Event::MessageReceived(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Synced { cursor } if cursor >= expect => {
                        synced.fetch_add(1, Ordering::Relaxed);
                        outcome = Some(start.elapsed());
                        break;
                    }
                    _ => {}
                }
            }
            (handle, outcome)
        });
        clients.push(task);
    }
    let ticker = {
        let synced = synced.clone();
        let attempts = attempts.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress!(
                    "  {:>5.1} s  synced {:>6}  connect attempts {}",
                    start.elapsed().as_secs_f64(),
                    synced.load(Ordering::Relaxed),
                    attempts.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut h = common::histogram();
    let mut handles = Vec::new();
    let mut last = Duration::ZERO;
    let mut gave_up = 0;
    for task in clients {
        let (handle, outcome) = task.await?;
        match outcome {
            Some(took) => {
                common::record(&mut h, took);
                last = last.max(took);
            }
            None => gave_up += 1,
        }
        handles.push(handle);
    }
    ticker.abort();
    let cost = meter.finish();
    progress!(
        "W4: {} synced, {gave_up} gave up; closing",
        synced.load(Ordering::Relaxed)
    );
    futures::future::join_all(handles.iter().map(|h| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), h.shutdown()).await;
    }))
    .await;
    Ok(W4Result {
        workload: "W4".into(),
        clients: config.clients,
        messages_per_client: config.messages,
        preload_secs,
        preload_acked,
        preload_errors,
        synced: synced.load(Ordering::Relaxed),
        gave_up,
        all_synced_secs: last.as_secs_f64(),
        time_to_synced_ms: Latency::of(&h),
        connect_attempts: attempts.load(Ordering::Relaxed),
        backoffs: backoffs.load(Ordering::Relaxed),
        messages_received: received.load(Ordering::Relaxed),
        server: cost,
    })
}
