//! W1, 1:1 throughput and latency: P sender→receiver pairs; each sender keeps at most `window`
//! messages in flight, where a message is in flight until its *receiver* got it (not merely until
//! the sender's ack). Payloads carry the send time, so the receiver measures one-way latency on
//! the same clock. With `rate` > 0 the senders are paced to that total rate instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{Buf as _, BytesMut};
use im_protocol::Frame;
use im_protocol::pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;
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
    /// Paced runs: how late each send left after its scheduled time, ms (the load generator's
    /// own scheduling jitter, which is not in `latency_ms`: a message is stamped when it
    /// leaves). `None` at full speed.
    #[serde(default)]
    pub pacing_lag_ms: Option<Latency>,
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
    });
    let histogram = Arc::new(Mutex::new(common::histogram()));
    let lag_histogram = Arc::new(Mutex::new(common::histogram()));
    // Cancelled when the measured interval ends: senders stop, receivers drain.
    let stop = CancellationToken::new();
    let login_start = Instant::now();
    let mut pair_tasks = Vec::new();
    // Per-sender pacing interval when a total rate is asked for.
    let pace = (rate > 0).then(|| Duration::from_secs_f64(pairs as f64 / rate as f64));
    for i in 0..pairs {
        let sender_id = format!("{}-s{i}", config.prefix);
        let receiver_id = format!("{}-r{i}", config.prefix);
        // With several gateways, each pair's receiver is on the gateway after its sender's.
        let rx_dialer = &dialers[(i + 1) % dialers.len()];
        let tx_dialer = &dialers[i % dialers.len()];
        let receiver = common::connect(rx_dialer, &target.secret, &receiver_id).await?;
        let sender = common::connect(tx_dialer, &target.secret, &sender_id).await?;
        let pair = Pair {
            receiver: PairConn::of(receiver),
            sender: PairConn::of(sender),
            template: wire::SendTemplate::to_user(&receiver_id, 1, payload),
            window,
            pace,
            origin,
            counters: counters.clone(),
            histogram: histogram.clone(),
            lag_histogram: lag_histogram.clone(),
            stop: stop.clone(),
        };
        pair_tasks.push(tokio::spawn(pair.run()));
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
    // Each pair finishes on its own once everything it sent has arrived and been acked (to
    // merge its histogram), or after seconds of silence.
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        for task in pair_tasks.iter_mut() {
            let _ = task.await;
        }
    })
    .await;
    for task in &pair_tasks {
        task.abort();
    }

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let server_cpu = cost.map(|c| c.cpu_secs);
    let latency = Latency::of(&*histogram.lock().await);
    let lag = Latency::of(&*lag_histogram.lock().await);
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
        pacing_lag_ms: (rate > 0).then_some(lag),
        login_secs,
        sent_total: counters.sent.load(Ordering::Relaxed),
        acked_total: counters.acked.load(Ordering::Relaxed),
        received_total: counters.received.load(Ordering::Relaxed),
        push_gaps: counters.push_gaps.load(Ordering::Relaxed),
    })
}

/// A paced run whose sends leave later than this after their scheduled time (p99) says so in
/// its table: its load generator is not the steady source the workload assumes.
pub const PACING_LAG_P99_MS: f64 = 0.5;

/// One connection of a pair, as raw bytes: whatever the handshake read beyond its answer is
/// kept.
struct PairConn {
    read: common::ReadStream,
    write: common::WriteStream,
    input: BytesMut,
    out: BytesMut,
}

impl PairConn {
    fn of(conn: common::Conn) -> PairConn {
        let mut input = BytesMut::with_capacity(READ_CHUNK);
        input.extend_from_slice(conn.reader.read_buffer());
        PairConn {
            read: conn.reader.into_inner(),
            write: conn.writer.into_inner(),
            input,
            out: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    fn make_room(&mut self) {
        if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
            self.input.reserve(READ_CHUNK);
        }
    }
}

/// Bytes read per socket read at most (and the buffers' starting size).
const READ_CHUNK: usize = 64 * 1024;

/// A sender and its receiver, driven by one task: no hand-off between tasks per message. The
/// receiver's reads free the sender's window directly, and every free slot becomes a message
/// in the sender's next write.
struct Pair {
    receiver: PairConn,
    sender: PairConn,
    template: wire::SendTemplate,
    window: usize,
    pace: Option<Duration>,
    origin: Instant,
    counters: Arc<Counters>,
    histogram: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    lag_histogram: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    stop: CancellationToken,
}

impl Pair {
    async fn run(mut self) {
        let c = self.counters.clone();
        let max_body = im_protocol::DEFAULT_MAX_BODY;
        let mut local = common::LatencyLog::default();
        let mut local_lag = common::LatencyLog::default();
        let mut free = self.window as u64;
        let (mut sent, mut acked, mut received, mut delivered) = (0u64, 0u64, 0u64, 0u64);
        // What was already added to the shared counters.
        let (mut sent_flushed, mut acked_flushed, mut received_flushed, mut delivered_flushed) =
            (0u64, 0u64, 0u64, 0u64);
        let mut unacked_pushes = 0u64;
        let mut ack_request_id = 2u32;
        let (mut last_seq, mut gaps) = (0u64, 0u64);
        let mut stopping = std::pin::pin!(self.stop.clone().cancelled_owned());
        let mut draining = false;
        let mut next_at = tokio::time::Instant::now();
        let mut last_progress = Instant::now();
        loop {
            // Every free window slot becomes a message (paced: one when its time has come).
            if !draining && free > 0 {
                let due = match self.pace {
                    None => free,
                    Some(_) => u64::from(tokio::time::Instant::now() >= next_at),
                };
                if due > 0 {
                    if let Some(pace) = self.pace {
                        if c.measuring.load(Ordering::Relaxed) {
                            local_lag.record(
                                tokio::time::Instant::now().saturating_duration_since(next_at),
                            );
                        }
                        next_at += pace;
                    }
                    let stamp = self.origin.elapsed().as_nanos() as u64;
                    for _ in 0..due {
                        sent += 1;
                        self.template.append(
                            &mut self.sender.out,
                            (sent % u64::from(u32::MAX - 1)) as u32 + 1,
                            sent,
                            stamp,
                        );
                    }
                    free -= due;
                }
            }
            if draining {
                if (received >= sent && acked >= sent)
                    || last_progress.elapsed() > Duration::from_secs(5)
                {
                    break;
                }
            } else if sent - sent_flushed >= 64 {
                c.sent.fetch_add(sent - sent_flushed, Ordering::Relaxed);
                sent_flushed = sent;
            }
            let pace_wait = self.pace.is_some() && free > 0 && !draining;
            let sleep_until = if pace_wait {
                next_at
            } else {
                tokio::time::Instant::now() + Duration::from_millis(100)
            };
            let (receiver, sender) = (&mut self.receiver, &mut self.sender);
            receiver.make_room();
            sender.make_room();
            tokio::select! {
                biased;
                _ = &mut stopping, if !draining => {
                    draining = true;
                    last_progress = Instant::now();
                    // Everything this pair sent is counted before it waits for it.
                    c.sent.fetch_add(sent - sent_flushed, Ordering::Relaxed);
                    sent_flushed = sent;
                }
                read = receiver.read.read_buf(&mut receiver.input) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                    last_progress = Instant::now();
                    let measuring = c.measuring.load(Ordering::Relaxed);
                    let now_ns = self.origin.elapsed().as_nanos() as u64;
                    let mut entries = 0u64;
                    let mut malformed = 0u64;
                    let used = wire::split_frames(&receiver.input, max_body, |header, body| {
                        if header.op != pb::Op::Push as u16 {
                            return;
                        }
                        let scanned = wire::scan_push(body, |seq, content| {
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
                                local.record(Duration::from_nanos(
                                    now_ns.saturating_sub(sent_ns),
                                ));
                                delivered += 1;
                            }
                        });
                        if scanned.is_err() {
                            malformed += 1;
                        }
                    });
                    let Ok(used) = used else {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    receiver.input.advance(used);
                    if malformed > 0 {
                        c.errors.fetch_add(malformed, Ordering::Relaxed);
                    }
                    free = (free + entries).min(self.window as u64);
                    unacked_pushes += entries;
                    if unacked_pushes >= 32 {
                        unacked_pushes = 0;
                        ack_request_id += 1;
                        let ack = Frame::new(
                            ack_request_id,
                            pb::DeliveryAck { up_to_inbox_seq: last_seq },
                        );
                        let _ = tokio_util::codec::Encoder::encode(
                            &mut im_protocol::FrameCodec::default(),
                            ack,
                            &mut receiver.out,
                        );
                    }
                    if received - received_flushed >= 64 {
                        c.received.fetch_add(received - received_flushed, Ordering::Relaxed);
                        c.delivered.fetch_add(delivered - delivered_flushed, Ordering::Relaxed);
                        (received_flushed, delivered_flushed) = (received, delivered);
                    }
                }
                read = sender.read.read_buf(&mut sender.input) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                    last_progress = Instant::now();
                    let mut errors = Vec::new();
                    let used = wire::split_frames(&sender.input, max_body, |header, body| {
                        if header.op == pb::Op::SendAck as u16 {
                            acked += 1;
                        } else if header.op == pb::Op::Error as u16 {
                            errors.push(bytes::Bytes::copy_from_slice(body));
                        }
                    });
                    let Ok(used) = used else {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    sender.input.advance(used);
                    for body in errors {
                        // A refused message never arrives: it no longer holds a window slot.
                        acked += 1;
                        free = (free + 1).min(self.window as u64);
                        if c.errors.fetch_add(1, Ordering::Relaxed) < 5
                            && let Ok(e) = <pb::Error as prost::Message>::decode(body)
                        {
                            progress!("send error: {} ({})", e.message, e.code);
                        }
                    }
                    if acked - acked_flushed >= 64 {
                        c.acked.fetch_add(acked - acked_flushed, Ordering::Relaxed);
                        acked_flushed = acked;
                    }
                }
                written = sender.write.write_buf(&mut sender.out), if !sender.out.is_empty() => {
                    if written.is_err() {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                written = receiver.write.write_buf(&mut receiver.out), if !receiver.out.is_empty() => {
                    if written.is_err() {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                // Only a paced sender or a draining pair has anything to do on a timer; a
                // disabled branch's sleep is never polled, so never registered.
                _ = tokio::time::sleep_until(sleep_until), if pace_wait || draining => {}
            }
        }
        c.sent.fetch_add(sent - sent_flushed, Ordering::Relaxed);
        c.acked.fetch_add(acked - acked_flushed, Ordering::Relaxed);
        c.received
            .fetch_add(received - received_flushed, Ordering::Relaxed);
        c.delivered
            .fetch_add(delivered - delivered_flushed, Ordering::Relaxed);
        c.push_gaps.fetch_add(gaps, Ordering::Relaxed);
        local.add_to(&mut *self.histogram.lock().await);
        local_lag.add_to(&mut *self.lag_histogram.lock().await);
    }
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
        if let Some(lag) = &self.pacing_lag_ms {
            s += &format!("  pacing lag ms p50/p99/p99.9/max  {}\n", lag.line());
            if lag.p99 > PACING_LAG_P99_MS {
                s += &format!(
                    "  (the load generator's sends left more than {PACING_LAG_P99_MS} ms after their scheduled time at p99: its own scheduling jitter is not small)\n"
                );
            }
        }
        s += &format!(
            "  sent/acked/received    {} / {} / {}\n",
            self.sent_total, self.acked_total, self.received_total
        );
        s += &format!("  push gaps              {:>12}\n", self.push_gaps);
        s += &format!("  errors                 {:>12}\n", self.errors);
        s
    }
}
