//! `loadtest`: drives the real wire protocol against a gateway and reports what it measured.
//!
//! Workload W1 (../shared/BENCHMARKS.md): P sender→receiver pairs; each sender keeps at most
//! `window` messages in flight, where a message is in flight until its *receiver* got it (not
//! merely until the sender's ack). Payloads carry the send time, so the receiver measures
//! one-way latency on the same clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt as _, StreamExt as _};
use gateway::auth::{Claims, TokenKey};
use hdrhistogram::Histogram;
use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, Frame, FrameCodec};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "Load generator for the IM protocol")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(clap::Args, Debug, Clone)]
struct Target_ {
    /// Gateway address. Only loopback addresses unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Token secret of the server (to mint test users' tokens).
    #[arg(long, env = "IM_TOKEN_SECRET")]
    secret: String,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote: bool,
    /// PID of the server process, to report its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// W1: 1:1 throughput and latency.
    W1 {
        #[command(flatten)]
        target: Target_,
        /// Sender→receiver pairs.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages in flight per sender (until the receiver got them).
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Total messages per second across all senders (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Payload bytes (at least 8: the send timestamp).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Seconds measured, after the warm-up.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds of warm-up, not measured.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Prefix of the user ids, so runs do not share conversations.
        #[arg(long, default_value = "w1")]
        prefix: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.workload {
        Workload::W1 {
            target,
            pairs,
            window,
            rate,
            payload,
            duration,
            warmup,
            prefix,
        } => {
            check_target(&target)?;
            if payload < 8 {
                bail!("--payload must be at least 8 bytes (the timestamp)");
            }
            runtime.block_on(w1(
                target, pairs, window, rate, payload, duration, warmup, prefix,
            ))
        }
    }
}

fn check_target(target: &Target_) -> anyhow::Result<()> {
    if !target.server.ip().is_loopback() && !target.allow_remote {
        bail!(
            "refusing to load {}: not a loopback address (pass --allow-remote to insist)",
            target.server
        );
    }
    Ok(())
}

fn token(secret: &str, user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    TokenKey::new(secret.as_bytes().to_vec()).sign(&Claims {
        sub: user.into(),
        dev: None,
        plt: Some("loadtest".into()),
        exp: now + 3600,
        iat: Some(now),
    })
}

type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>;
type Writer = FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>;

async fn connect(
    addr: SocketAddr,
    secret: &str,
    user: &str,
) -> anyhow::Result<(Reader, Writer, pb::HandshakeResp)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, FrameCodec::default());
    let mut writer = FramedWrite::new(w, FrameCodec::default());
    let hello = pb::HandshakeReq {
        token: token(secret, user),
        device_id: "load".into(),
        platform: pb::Platform::Server as i32,
        client_version: "loadtest".into(),
        protocol_version: 1,
        ..Default::default()
    };
    writer.send(Frame::new(1, hello)).await?;
    let frame = reader.next().await.context("closed during handshake")??;
    match frame.decode_body()? {
        Body::HandshakeResp(resp) => Ok((reader, writer, resp)),
        Body::Error(e) => bail!("handshake refused: {} ({})", e.message, e.code),
        other => bail!("unexpected handshake answer {other:?}"),
    }
}

/// Server CPU seconds (user + system) and RSS bytes from /proc.
fn server_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some(((utime + stime) / ticks, rss_pages * 4096))
}

struct Counters {
    measuring: AtomicBool,
    stop: AtomicBool,
    delivered: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
}

#[allow(clippy::too_many_arguments)]
async fn w1(
    target: Target_,
    pairs: usize,
    window: usize,
    rate: u64,
    payload: usize,
    duration: u64,
    warmup: u64,
    prefix: String,
) -> anyhow::Result<()> {
    let origin = Instant::now();
    let counters = Arc::new(Counters {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let login_start = Instant::now();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    // Per-sender pacing interval when a total rate is asked for.
    let pace = (rate > 0).then(|| Duration::from_secs_f64(pairs as f64 / rate as f64));
    for i in 0..pairs {
        let sender_id = format!("{prefix}-s{i}");
        let receiver_id = format!("{prefix}-r{i}");
        let (mut rx_reader, mut rx_writer, _) =
            connect(target.server, &target.secret, &receiver_id).await?;
        let (mut tx_reader, mut tx_writer, _) =
            connect(target.server, &target.secret, &sender_id).await?;
        let window_permits = Arc::new(Semaphore::new(window));

        // Receiver: count deliveries, record latency, release the sender's window, ack delivery.
        let permits = window_permits.clone();
        let c = counters.clone();
        let h = histogram.clone();
        tasks.push(tokio::spawn(async move {
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut since_ack = 0;
            let mut request_id = 2;
            loop {
                // After the run, drain for a moment, then hand the histogram over.
                let wait = if c.stop.load(Ordering::Relaxed) {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(3600)
                };
                let Ok(Some(Ok(frame))) = tokio::time::timeout(wait, rx_reader.next()).await else {
                    break;
                };
                let Ok(Body::Push(push)) = frame.decode_body() else {
                    continue;
                };
                let mut last_seq = 0;
                for entry in push.entries {
                    last_seq = entry.inbox_seq;
                    let Some(pb::inbox_entry::Body::Message(m)) = entry.body else {
                        continue;
                    };
                    if m.content.len() >= 8 {
                        let sent_ns =
                            u64::from_be_bytes(m.content[..8].try_into().expect("8 bytes"));
                        let now_ns = origin.elapsed().as_nanos() as u64;
                        if c.measuring.load(Ordering::Relaxed) {
                            let _ = local.record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
                            c.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    permits.add_permits(1);
                    since_ack += 1;
                }
                if since_ack >= 32 {
                    since_ack = 0;
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
            h.lock().await.add(&local).expect("same bounds");
        }));

        // Sender's ack reader: errors count; acks are not the flow control.
        let c = counters.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = tx_reader.next().await {
                if let Ok(Body::Error(e)) = frame.decode_body() {
                    if c.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("send error: {} ({})", e.message, e.code);
                    }
                }
                if c.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }));

        let c = counters.clone();
        let permits = window_permits;
        tasks.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut body = vec![b'x'; payload];
            let mut next_at = tokio::time::Instant::now();
            while !c.stop.load(Ordering::Relaxed) {
                let Ok(permit) =
                    tokio::time::timeout(Duration::from_millis(200), permits.acquire()).await
                else {
                    continue;
                };
                permit.expect("semaphore open").forget();
                if let Some(pace) = pace {
                    next_at += pace;
                    tokio::time::sleep_until(next_at).await;
                }
                n += 1;
                body[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_be_bytes());
                let request = pb::SendReq {
                    target: Some(Target::ToUser(receiver_id.clone())),
                    client_msg_id: format!("{n}"),
                    content_type: 1,
                    content: body.clone(),
                };
                // Feed without flushing while more permits are ready, so sends coalesce.
                let frame = Frame::new((n % u64::from(u32::MAX - 1)) as u32 + 1, request);
                let result = if permits.available_permits() > 0 && pace.is_none() {
                    tx_writer.feed(frame).await
                } else {
                    tx_writer.send(frame).await
                };
                if result.is_err() {
                    break;
                }
                c.sent.fetch_add(1, Ordering::Relaxed);
            }
            let _ = futures::SinkExt::<Frame>::flush(&mut tx_writer).await;
        }));
    }
    let login_secs = login_start.elapsed().as_secs_f64();
    eprintln!(
        "{} connections logged in in {login_secs:.2} s; warming up {warmup} s",
        pairs * 2
    );
    tokio::time::sleep(Duration::from_secs(warmup)).await;

    let cpu_before = target.server_pid.and_then(server_usage);
    counters.measuring.store(true, Ordering::Relaxed);
    let measure_start = Instant::now();
    for second in 1..=duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "  {second:>3}s  delivered {:>10}  errors {}",
            counters.delivered.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed)
        );
    }
    counters.measuring.store(false, Ordering::Relaxed);
    let elapsed = measure_start.elapsed().as_secs_f64();
    let cpu_after = target.server_pid.and_then(server_usage);
    counters.stop.store(true, Ordering::Relaxed);
    // Receivers finish on their own (to merge their histograms); senders and ack readers are
    // stopped after a grace period.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for task in tasks.iter_mut().step_by(3) {
            let _ = task.await;
        }
    })
    .await;
    for task in &tasks {
        task.abort();
    }

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let per_sec = delivered as f64 / elapsed;
    let server_cpu = match (cpu_before, cpu_after) {
        (Some((a, _)), Some((b, _))) => Some(b - a),
        _ => None,
    };
    let h = histogram.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "workload": "W1",
        "pairs": pairs,
        "window": window,
        "rate": rate,
        "payload_bytes": payload,
        "measured_secs": elapsed,
        "delivered": delivered,
        "delivered_per_sec": per_sec,
        "errors": counters.errors.load(Ordering::Relaxed),
        "server_cpu_secs": server_cpu,
        "delivered_per_server_cpu_sec": server_cpu.map(|cpu| delivered as f64 / cpu.max(1e-9)),
        "server_rss_bytes": cpu_after.map(|(_, rss)| rss),
        "latency_ms": { "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0 },
        "login_secs": login_secs,
    });
    println!(
        "W1  pairs={pairs} window={window} rate={} payload={payload}B",
        if rate == 0 {
            "max".to_string()
        } else {
            rate.to_string()
        }
    );
    println!("  delivered/s            {per_sec:>12.0}");
    if let Some(cpu) = server_cpu {
        println!("  server CPU-s           {cpu:>12.2}");
        println!(
            "  delivered/server CPU-s {:>12.0}",
            delivered as f64 / cpu.max(1e-9)
        );
    }
    println!(
        "  latency ms p50/p99/p99.9/max  {:.3} / {:.3} / {:.3} / {:.3}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    println!(
        "  errors                 {:>12}",
        counters.errors.load(Ordering::Relaxed)
    );
    if let Some(path) = target.json {
        std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
