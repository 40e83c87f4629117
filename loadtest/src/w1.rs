//! W1, 1:1 throughput and latency: P sender→receiver pairs; each sender keeps at most `window`
//! messages in flight, where a message is in flight until its *receiver* got it (not merely until
//! the sender's ack). Payloads carry the send time, so the receiver measures one-way latency on
//! the same clock. With `rate` > 0 the senders are paced to that total rate instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use im_protocol::pb;
use im_protocol::{Body, Frame};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::common::{self, CostMeter, Latency, ServerCost};
use crate::progress;
use crate::wire;

/// What W1 does.
#[derive(Clone, Debug)]
pub struct W1Config {
    /// Sender→receiver pairs.
    pub pairs: usize,
    /// Messages in flight per sender (until the receiver got them).
    pub window: usize,
    /// Total messages per second across all senders (0 = as fast as possible).
    pub rate: u64,
    /// Payload bytes (at least 8: the send timestamp).
    pub payload: usize,
    /// Time measured, after the warm-up.
    pub duration: Duration,
    /// Warm-up, not measured.
    pub warmup: Duration,
    /// Prefix of the user ids, so runs do not share conversations.
    pub prefix: String,
}

/// What W1 measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct W1Result {
    /// Always "W1".
    pub workload: String,
    /// Pairs.
    pub pairs: usize,
    /// Window per sender.
    pub window: usize,
    /// Asked total rate (0 = max).
    pub rate: u64,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Length of the measured interval, seconds.
    pub measured_secs: f64,
    /// Messages received in the measured interval.
    pub delivered: u64,
    /// `delivered / measured_secs`.
    pub delivered_per_sec: f64,
    /// Error frames and failed connections.
    pub errors: u64,
    /// Server CPU seconds in the measured interval.
    pub server_cpu_secs: Option<f64>,
    /// `delivered / server_cpu_secs`.
    pub delivered_per_server_cpu_sec: Option<f64>,
    /// Server RSS at the end, bytes.
    pub server_rss_bytes: Option<u64>,
    /// The load generator's own CPU seconds in the measured interval (this process; with
    /// `--bare` the relay in it too): beside the server's, it shows which side is the ceiling.
    #[serde(default)]
    pub loadgen_cpu_secs: Option<f64>,
    /// One-way latency of the measured messages, ms.
    pub latency_ms: Latency,
    /// Time to log in all 2·P connections, seconds.
    pub login_secs: f64,
    /// Messages sent over the whole run (warm-up included).
    pub sent_total: u64,
    /// Messages acknowledged to their senders over the whole run.
    pub acked_total: u64,
    /// Messages received over the whole run; equals `sent_total` when nothing was lost.
    pub received_total: u64,
    /// Pushes whose first inbox seq was not the one after the receiver's last: each would make
    /// a client core see a gap and sync (0 on a healthy link when pushes leave in inbox order).
    #[serde(default)]
    pub push_gaps: u64,
}

struct Counters {
    measuring: AtomicBool,
    stop: AtomicBool,
    delivered: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    push_gaps: AtomicU64,
    /// Senders that left their loop after `stop` (their last frame is flushed): until all have,
    /// a receiver must not conclude that everything sent has arrived, since a sender may be
    /// between counting a message and sending it.
    senders_done: AtomicU64,
}

/// Runs W1 against `target`.
pub async fn run(target: &common::Target, config: &W1Config) -> anyhow::Result<W1Result> {
    let dialers = target.dialers()?;
    if config.payload < 8 {
        bail!("--payload must be at least 8 bytes (the timestamp)");
    }
    let W1Config {
        pairs,
        window,
        rate,
        payload,
        ..
    } = config.clone();
    let origin = Instant::now();
    let counters = Arc::new(Counters {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        push_gaps: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
    });
    let histogram = Arc::new(Mutex::new(common::histogram()));
    // Cancelled when the measured interval ends: senders stop, receivers drain.
    let stop = CancellationToken::new();
    let login_start = Instant::now();
    let mut receivers = Vec::new();
    let mut others = Vec::new();
    // Per-sender pacing interval when a total rate is asked for.
    let pace = (rate > 0).then(|| Duration::from_secs_f64(pairs as f64 / rate as f64));
    for i in 0..pairs {
        let sender_id = format!("{}-s{i}", config.prefix);
        let receiver_id = format!("{}-r{i}", config.prefix);
        // With several gateways, each pair's receiver is on the gateway after its sender's.
        let rx_dialer = &dialers[(i + 1) % dialers.len()];
        let tx_dialer = &dialers[i % dialers.len()];
        let rx = common::connect(rx_dialer, &target.secret, &receiver_id).await?;
        let tx = common::connect(tx_dialer, &target.secret, &sender_id).await?;
        let (mut rx_reader, mut rx_writer) = (rx.reader, rx.writer);
        let (mut tx_reader, tx_writer) = (tx.reader, tx.writer);
        let window_permits = Arc::new(Semaphore::new(window));

        // Receiver: count deliveries, record latency, release the sender's window, ack delivery.
        // Counts go to the shared counters in runs (every frame would make the two cores fight
        // over their cache lines), and nothing is decoded beyond the inbox seq and the stamp.
        let permits = window_permits.clone();
        let c = counters.clone();
        let h = histogram.clone();
        let stopped = stop.clone();
        receivers.push(tokio::spawn(async move {
            let mut local = common::histogram();
            let mut unacked = 0;
            let mut request_id = 2;
            let (mut received, mut delivered) = (0u64, 0u64);
            let mut stopping = std::pin::pin!(stopped.cancelled_owned());
            let mut quiet_since: Option<Instant> = None;
            let mut draining = false;
            // The inbox seq of the last entry pushed, and how often the next was not its
            // successor.
            let (mut last_seq, mut gaps) = (0u64, 0u64);
            loop {
                let frame = if !draining {
                    tokio::select! {
                        biased;
                        frame = rx_reader.next() => frame,
                        _ = &mut stopping => {
                            draining = true;
                            continue;
                        }
                    }
                } else {
                    // After the run: stop once everything sent arrived, or after seconds of
                    // silence (on a loaded 2-core machine the server's tasks can be starved for
                    // a few hundred ms, and leaving early would count a message as lost).
                    c.received
                        .fetch_add(std::mem::take(&mut received), Ordering::Relaxed);
                    c.delivered
                        .fetch_add(std::mem::take(&mut delivered), Ordering::Relaxed);
                    if c.senders_done.load(Ordering::Acquire) == pairs as u64
                        && c.received.load(Ordering::Relaxed) >= c.sent.load(Ordering::Relaxed)
                    {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_millis(100), rx_reader.next()).await {
                        Ok(frame) => {
                            quiet_since = None;
                            frame
                        }
                        Err(_) => {
                            let silent = *quiet_since.get_or_insert_with(Instant::now);
                            if silent.elapsed() > Duration::from_secs(5) {
                                break;
                            }
                            continue;
                        }
                    }
                };
                let Some(Ok(frame)) = frame else { break };
                if frame.op != pb::Op::Push as u16 {
                    continue;
                }
                let measuring = c.measuring.load(Ordering::Relaxed);
                let mut entries = 0;
                let scanned = wire::scan_push(&frame.body, |seq, content| {
                    if last_seq != 0 && seq != last_seq + 1 {
                        gaps += 1;
                    }
                    last_seq = seq;
                    entries += 1;
                    let Some(stamp) = content.and_then(|c| c.get(..8)) else {
                        return;
                    };
                    let sent_ns = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
                    received += 1;
                    if measuring {
                        let now_ns = origin.elapsed().as_nanos() as u64;
                        common::record(
                            &mut local,
                            Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
                        );
                        delivered += 1;
                    }
                });
                if scanned.is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                permits.add_permits(entries);
                if received >= 64 {
                    c.received
                        .fetch_add(std::mem::take(&mut received), Ordering::Relaxed);
                    c.delivered
                        .fetch_add(std::mem::take(&mut delivered), Ordering::Relaxed);
                }
                unacked += entries;
                if unacked >= 32 {
                    unacked = 0;
                    request_id += 1;
                    let _ = rx_writer
                        .send(Frame::new(
                            request_id,
                            pb::DeliveryAck {
                                up_to_inbox_seq: last_seq,
                            },
                        ))
                        .await;
                }
            }
            c.received.fetch_add(received, Ordering::Relaxed);
            c.delivered.fetch_add(delivered, Ordering::Relaxed);
            c.push_gaps.fetch_add(gaps, Ordering::Relaxed);
            h.lock().await.add(&local).expect("same bounds");
        }));

        // Sender's ack reader: acks are counted by their op (not the flow control); errors are
        // decoded to be shown.
        let c = counters.clone();
        others.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while let Some(Ok(frame)) = tx_reader.next().await {
                if frame.op == pb::Op::SendAck as u16 {
                    acked += 1;
                    if acked == 64 {
                        c.acked
                            .fetch_add(std::mem::take(&mut acked), Ordering::Relaxed);
                    }
                } else if let Ok(Body::Error(e)) = frame.decode_body()
                    && c.errors.fetch_add(1, Ordering::Relaxed) < 5
                {
                    progress!("send error: {} ({})", e.message, e.code);
                }
                if tx_reader.read_buffer().is_empty() {
                    c.acked
                        .fetch_add(std::mem::take(&mut acked), Ordering::Relaxed);
                }
            }
            c.acked.fetch_add(acked, Ordering::Relaxed);
        }));

        // Sender: every permit the window has free becomes a message, all of them in one write,
        // each a copy of one pre-encoded frame with its id and stamp patched in.
        let c = counters.clone();
        let permits = window_permits;
        let stopped = stop.clone();
        let template = wire::SendTemplate::to_user(&receiver_id, 1, payload);
        let mut tx = tx_writer.into_inner();
        others.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut out = BytesMut::with_capacity(template.len() * window);
            let mut next_at = tokio::time::Instant::now();
            let mut stopping = std::pin::pin!(stopped.cancelled_owned());
            loop {
                let permit = tokio::select! {
                    biased;
                    _ = &mut stopping => break,
                    permit = permits.acquire() => permit,
                };
                permit.expect("semaphore open").forget();
                let mut batch = 1;
                if let Some(pace) = pace {
                    next_at += pace;
                    tokio::select! {
                        biased;
                        _ = &mut stopping => break,
                        _ = tokio::time::sleep_until(next_at) => {}
                    }
                } else {
                    while let Ok(permit) = permits.try_acquire() {
                        permit.forget();
                        batch += 1;
                    }
                }
                let stamp = origin.elapsed().as_nanos() as u64;
                for _ in 0..batch {
                    n += 1;
                    template.append(&mut out, (n % u64::from(u32::MAX - 1)) as u32 + 1, n, stamp);
                }
                // Counted before they leave, so the receivers' drain never misses one.
                c.sent.fetch_add(batch, Ordering::Relaxed);
                if tx.write_all_buf(&mut out).await.is_err() {
                    c.sent.fetch_sub(batch, Ordering::Relaxed);
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            let _ = tx.flush().await;
            c.senders_done.fetch_add(1, Ordering::Release);
            // Keep the connection until the ack reader is done.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }));
    }
    let login_secs = login_start.elapsed().as_secs_f64();
    progress!(
        "{} connections logged in in {login_secs:.2} s; warming up {} s",
        pairs * 2,
        config.warmup.as_secs_f64()
    );
    tokio::time::sleep(config.warmup).await;

    let meter = CostMeter::start(target.probe());
    let own_meter = CostMeter::start(Some(common::ServerProbe {
        pids: vec![std::process::id()],
    }));
    counters.measuring.store(true, Ordering::Relaxed);
    let measure_start = Instant::now();
    let mut second = 0u64;
    while measure_start.elapsed() < config.duration {
        let left = config.duration.saturating_sub(measure_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        second += 1;
        progress!(
            "  {second:>3}s  delivered {:>10}  errors {}",
            counters.delivered.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed)
        );
    }
    counters.measuring.store(false, Ordering::Relaxed);
    let elapsed = measure_start.elapsed().as_secs_f64();
    let cost: Option<ServerCost> = meter.finish();
    let own_cost = own_meter.finish();
    counters.stop.store(true, Ordering::Relaxed);
    stop.cancel();
    // Receivers finish on their own once everything sent has arrived (to merge their
    // histograms); senders and ack readers are stopped after that.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for task in receivers.iter_mut() {
            let _ = task.await;
        }
    })
    .await;
    // Let the last acks arrive.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while counters.acked.load(Ordering::Relaxed) + counters.errors.load(Ordering::Relaxed)
            < counters.sent.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for task in receivers.iter().chain(&others) {
        task.abort();
    }

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let server_cpu = cost.map(|c| c.cpu_secs);
    let latency = Latency::of(&*histogram.lock().await);
    Ok(W1Result {
        workload: "W1".into(),
        pairs,
        window,
        rate,
        payload_bytes: payload,
        measured_secs: elapsed,
        delivered,
        delivered_per_sec: delivered as f64 / elapsed,
        errors: counters.errors.load(Ordering::Relaxed),
        server_cpu_secs: server_cpu,
        delivered_per_server_cpu_sec: server_cpu.map(|cpu| delivered as f64 / cpu.max(1e-9)),
        server_rss_bytes: cost.map(|c| c.rss_after_bytes),
        loadgen_cpu_secs: own_cost.map(|c| c.cpu_secs),
        latency_ms: latency,
        login_secs,
        sent_total: counters.sent.load(Ordering::Relaxed),
        acked_total: counters.acked.load(Ordering::Relaxed),
        received_total: counters.received.load(Ordering::Relaxed),
        push_gaps: counters.push_gaps.load(Ordering::Relaxed),
    })
}

impl W1Result {
    /// The human-readable table (stdout).
    pub fn table(&self) -> String {
        let mut s = format!(
            "W1  pairs={} window={} rate={} payload={}B\n",
            self.pairs,
            self.window,
            if self.rate == 0 {
                "max".to_string()
            } else {
                self.rate.to_string()
            },
            self.payload_bytes
        );
        s += &format!(
            "  delivered/s            {:>12.0}\n",
            self.delivered_per_sec
        );
        if let (Some(cpu), Some(per)) = (self.server_cpu_secs, self.delivered_per_server_cpu_sec) {
            s += &format!("  server CPU-s           {cpu:>12.2}\n");
            s += &format!("  delivered/server CPU-s {per:>12.0}\n");
        }
        if let Some(cpu) = self.loadgen_cpu_secs {
            s += &format!("  load generator CPU-s   {cpu:>12.2}\n");
        }
        if let Some(rss) = self.server_rss_bytes {
            s += &format!(
                "  server RSS MiB         {:>12.1}\n",
                rss as f64 / 1048576.0
            );
        }
        s += &format!(
            "  latency ms p50/p99/p99.9/max  {}\n",
            self.latency_ms.line()
        );
        s += &format!(
            "  sent/acked/received    {} / {} / {}\n",
            self.sent_total, self.acked_total, self.received_total
        );
        s += &format!("  push gaps              {:>12}\n", self.push_gaps);
        s += &format!("  errors                 {:>12}\n", self.errors);
        s
    }
}
