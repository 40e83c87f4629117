//! The command line: one subcommand per workload, plus the relay, the bench and the hidden
//! helpers (`worker`). Every workload prints progress on stderr, a table on stdout and
//! writes its result object to `--json FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::common::{Target, write_json};
use crate::{bench, relay, w1, w2, w3, w4, w5};

/// Load generator for the IM protocol.
#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "Load generator and benchmark suite for the IM protocol"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// W1: 1:1 throughput and latency (`--rate 5000` for the paced run).
    W1 {
        #[command(flatten)]
        target: Target,
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
        /// Start a bare relay in this process and measure it instead of --server.
        #[arg(long)]
        bare: bool,
    },
    /// W2: idle authenticated connections, with heartbeats, over several processes.
    W2 {
        #[command(flatten)]
        target: Target,
        /// Connections in total.
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        /// Handshakes in progress at once (over all processes).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Client processes (0 = all in this process).
        #[arg(long, default_value_t = 4)]
        processes: usize,
        /// 127.0.0.x source addresses per process.
        #[arg(long, default_value_t = 4)]
        sources_per_process: u32,
        /// Seconds to hold the connections once all are in (35 s covers one heartbeat).
        #[arg(long, default_value_t = 35)]
        hold: u64,
        /// Prefix of the user ids.
        #[arg(long, default_value = "w2")]
        prefix: String,
    },
    /// W3: group fan-out, one sender to M members of which K are online.
    W3 {
        #[command(flatten)]
        target: Target,
        /// Group members, the sender included.
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Online receivers (default and maximum: members − 1).
        #[arg(long)]
        online: Option<usize>,
        /// Messages sent to the group.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages in flight (until the last online member got them).
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Send at this many messages per second on a fixed schedule instead of keeping
        /// `window` in flight (0 = windowed).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Payload bytes (at least 12).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Prefix of the user ids.
        #[arg(long, default_value = "w3")]
        prefix: String,
    },
    /// W4: reconnect storm of client cores with messages waiting.
    W4 {
        #[command(flatten)]
        target: Target,
        /// Clients (at most 18,000 per process).
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Messages waiting per client.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Connections pre-loading the inboxes.
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Unacknowledged sends per pre-loading connection.
        #[arg(long, default_value_t = 256)]
        send_window: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// A client not synced after this many seconds has given up.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Prefix of the user ids.
        #[arg(long, default_value = "w4")]
        prefix: String,
    },
    /// W5: page through a conversation newest first with HISTORY_REQ.
    W5 {
        #[command(flatten)]
        target: Target,
        /// Messages in the conversation.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Messages per page.
        #[arg(long, default_value_t = 50)]
        page: u32,
        /// Times to page through the whole conversation.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Prefix of the user ids.
        #[arg(long, default_value = "w5")]
        prefix: String,
    },
    /// The bare relay baseline: same framing, no auth, no storage.
    Relay {
        /// Address to listen on (loopback unless --allow-remote).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Allow listening outside loopback.
        #[arg(long)]
        allow_remote: bool,
    },
    /// Relay and our server (embedded, fresh data dir) one after the other, same workloads;
    /// prints our figures as ratios to the relay's.
    Bench {
        /// W1 pairs.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// W1 seconds measured.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// W1 seconds of warm-up.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Paced W1 total rate (0 = skip).
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// W2 connections (0 = skip).
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// W2 client processes.
        #[arg(long, default_value_t = 2)]
        processes: usize,
        /// W2 seconds to hold.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// W3 online receivers (0 = skip).
        #[arg(long, default_value_t = 999)]
        group: usize,
        /// W3 messages.
        #[arg(long, default_value_t = 200)]
        group_messages: usize,
        /// Rounds; medians are reported.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Write both systems' results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The server binary to measure (default: `im-server` next to this binary).
        #[arg(long)]
        server_exe: Option<PathBuf>,
    },
    /// A W2 client process (used by `w2`; prints JSON lines, reads go/stop on stdin).
    #[command(hide = true)]
    Worker {
        /// The workload; only `w2`.
        kind: String,
        /// The part's JSON spec.
        #[arg(long)]
        spec: String,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let secs = Duration::from_secs;
    match cli.command {
        Command::W1 {
            mut target,
            pairs,
            window,
            rate,
            payload,
            duration,
            warmup,
            prefix,
            bare,
        } => {
            target.check()?;
            let _relay = if bare {
                let relay = relay::start("127.0.0.1:0".parse()?).await?;
                target.server = relay.addr;
                target.server_pid = vec![std::process::id()];
                crate::progress!(
                    "bare relay in this process on {} (server CPU includes the clients')",
                    relay.addr
                );
                Some(relay)
            } else {
                None
            };
            let config = w1::W1Config {
                pairs,
                window,
                rate,
                payload,
                duration: secs(duration),
                warmup: secs(warmup),
                prefix,
            };
            let result = w1::run(&target, &config).await?;
            print!("{}", result.table());
            write_json(target.json.as_deref(), &result)
        }
        Command::W2 {
            target,
            connections,
            concurrency,
            processes,
            sources_per_process,
            hold,
            prefix,
        } => {
            target.check()?;
            let config = w2::W2Config {
                connections,
                concurrency,
                processes,
                sources_per_process,
                hold: secs(hold),
                prefix,
                worker_exe: None,
            };
            let result = w2::run(&target, &config).await?;
            print!("{}", result.table());
            write_json(target.json.as_deref(), &result)
        }
        Command::W3 {
            target,
            members,
            online,
            messages,
            window,
            rate,
            payload,
            timeout,
            prefix,
        } => {
            target.check()?;
            let config = w3::W3Config {
                members,
                online: online.unwrap_or(usize::MAX),
                messages,
                window,
                rate,
                payload,
                timeout: secs(timeout),
                prefix,
            };
            let result = w3::run(&target, &config).await?;
            print!("{}", result.table());
            write_json(target.json.as_deref(), &result)
        }
        Command::W4 {
            target,
            clients,
            messages,
            senders,
            send_window,
            payload,
            timeout,
            prefix,
        } => {
            target.check()?;
            let config = w4::W4Config {
                clients,
                messages,
                senders,
                send_window,
                payload,
                timeout: secs(timeout),
                prefix,
            };
            let result = w4::run(&target, &config).await?;
            print!("{}", result.table());
            write_json(target.json.as_deref(), &result)
        }
        Command::W5 {
            target,
            messages,
            page,
            rounds,
            payload,
            prefix,
        } => {
            target.check()?;
            let config = w5::W5Config {
                messages,
                page,
                rounds,
                payload,
                prefix,
            };
            let result = w5::run(&target, &config).await?;
            print!("{}", result.table());
            write_json(target.json.as_deref(), &result)
        }
        Command::Relay {
            listen,
            allow_remote,
        } => {
            if !listen.ip().is_loopback() && !allow_remote {
                anyhow::bail!("refusing to listen on {listen}: not loopback (pass --allow-remote)");
            }
            let relay = relay::start(listen).await?;
            println!("listening on {}", relay.addr);
            tokio::signal::ctrl_c().await?;
            relay.shutdown.cancel();
            Ok(())
        }
        Command::Bench {
            pairs,
            duration,
            warmup,
            rate,
            connections,
            processes,
            hold,
            group,
            group_messages,
            rounds,
            json,
            server_exe,
        } => {
            let config = bench::BenchConfig {
                pairs,
                duration: secs(duration),
                warmup: secs(warmup),
                rate,
                connections,
                processes,
                hold: secs(hold),
                group,
                group_messages,
                rounds,
                exe: None,
                server_exe,
            };
            let result = bench::run(&config).await?;
            print!("{}", result.table());
            write_json(json.as_deref(), &result)
        }
        Command::Worker { kind, spec } => match kind.as_str() {
            "w2" => w2::worker_main(serde_json::from_str(&spec)?).await,
            other => anyhow::bail!("no worker for {other}"),
        },
    }
}
