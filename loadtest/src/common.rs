//! What every workload shares: the target and its safety check, tokens, authenticated raw
//! connections (optionally from a chosen 127.0.0.x source address), the server's CPU and memory
//! from /proc, latency summaries and progress lines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use im_auth::{Claims, TokenKey};
use im_protocol::pb;
use im_protocol::{Body, Frame, FrameCodec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Where the load goes and what to measure there. Shared by every workload.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// Gateway address. Only loopback addresses unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: SocketAddr,
    /// Token secret of the server (to mint test users' tokens).
    #[arg(long, env = "IM_TOKEN_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,
    /// PID of the server process, to report its CPU time and memory; a comma-separated list
    /// (a cluster's gateways and logic nodes) reports their sum.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// More gateways of the same cluster: connections are spread over `--server` and these,
    /// and a W1 pair's sender and receiver are on different gateways.
    #[arg(long = "also-gateway", value_delimiter = ',')]
    pub also_gateways: Vec<SocketAddr>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How connections reach the server.
    #[command(flatten)]
    pub dial: Dial,
}

/// The transport the load goes over.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// Plain TCP (the gateway's --listen port).
    #[default]
    Tcp,
    /// TLS over TCP (the gateway's --tls-listen port).
    Tls,
    /// QUIC (UDP at the gateway's --tls-listen port number), one stream per connection.
    Quic,
    /// The HTTP tunnel over plain HTTP (SPEC §18; the gateway's --listen port): each
    /// connection is a tunnel of two keep-alive HTTP connections.
    Tunnel,
}

/// How to reach the server: the transport and, for TLS, whom to trust.
#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize)]
pub struct Dial {
    /// Transport of every connection; --server is then that transport's address.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Name the server's certificate is checked against (TLS; QUIC checks the --server IP).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// PEM certificate of the CA to trust (TLS), such as a development server's
    /// DATA_DIR/tls/cert.pem. Without it, the public Web PKI roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}

impl Dial {
    /// Prepares connecting to `server` (reads the CA once).
    pub fn dialer(&self, server: SocketAddr) -> anyhow::Result<Dialer> {
        let trust = || -> anyhow::Result<sdk_core::TlsTrust> {
            Ok(match &self.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    sdk_core::TlsTrust::pinned_ca_pem(&pem)
                        .with_context(|| format!("{}", path.display()))?
                }
                None => sdk_core::TlsTrust::default(),
            })
        };
        let quic = match self.transport {
            Transport::Quic => Some(std::sync::Arc::new(
                sdk_core::QuicConnector::new(&trust()?)?,
            )),
            _ => None,
        };
        let tls = match self.transport {
            Transport::Tcp | Transport::Tunnel | Transport::Quic => None,
            Transport::Tls => {
                let trust = trust()?;
                let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
                    .with_context(|| format!("server name {:?}", self.server_name))?;
                Some((
                    tokio_rustls::TlsConnector::from(trust.client_config(&[])?),
                    name,
                ))
            }
        };
        Ok(Dialer {
            server,
            tls,
            tunnel: self.transport == Transport::Tunnel,
            quic,
        })
    }
}

/// Opens streams to the server over the chosen transport.
#[derive(Clone)]
pub struct Dialer {
    server: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    tunnel: bool,
    quic: Option<std::sync::Arc<sdk_core::QuicConnector>>,
}

impl Dialer {
    /// The server's address (for choosing source addresses).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Opens one stream, from `source` if given, and splits it.
    async fn open(&self, source: Option<IpAddr>) -> anyhow::Result<(ReadStream, WriteStream)> {
        let addr = self.server;
        if let Some(quic) = &self.quic {
            use sdk_core::Connector as _;
            // The certificate is checked for the IP address dialled (not --server-name), which
            // a development certificate names.
            let stream = tokio::time::timeout(Duration::from_secs(20), quic.connect(&addr.into()))
                .await
                .with_context(|| format!("QUIC to {addr}: timed out"))?
                .with_context(|| format!("QUIC to {addr}"))?;
            let (r, w) = tokio::io::split(stream);
            return Ok((Box::new(r), Box::new(w)));
        }
        if self.tunnel {
            use sdk_core::Connector as _;
            let tunnel =
                sdk_core::HttpTunnelConnector::direct(std::sync::Arc::new(sdk_core::TcpConnector));
            let stream =
                tokio::time::timeout(Duration::from_secs(20), tunnel.connect(&addr.into()))
                    .await
                    .with_context(|| format!("opening a tunnel to {addr}: timed out"))?
                    .with_context(|| format!("opening a tunnel to {addr}"))?;
            let (r, w) = tokio::io::split(stream);
            return Ok((Box::new(r), Box::new(w)));
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding the client socket to {ip}"))?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(20), socket.connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        match &self.tls {
            None => {
                // The halves of a TCP stream need no lock between them.
                let (r, w) = stream.into_split();
                Ok((Box::new(r), Box::new(w)))
            }
            Some((tls, name)) => {
                let stream = tokio::time::timeout(
                    Duration::from_secs(20),
                    tls.connect(name.clone(), stream),
                )
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
                let (r, w) = tokio::io::split(stream);
                Ok((Box::new(r), Box::new(w)))
            }
        }
    }
}

/// The read half of a connection, whatever its transport.
pub type ReadStream = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection, whatever its transport.
pub type WriteStream = Box<dyn AsyncWrite + Send + Unpin>;

impl Target {
    /// A loopback target without a PID or JSON output (tests, bench).
    pub fn local(server: SocketAddr, secret: impl Into<String>) -> Target {
        Target {
            server,
            secret: secret.into(),
            allow_remote: false,
            server_pid: Vec::new(),
            also_gateways: Vec::new(),
            json: None,
            dial: Dial::default(),
        }
    }

    /// Prepares connecting to the target.
    pub fn dialer(&self) -> anyhow::Result<Dialer> {
        self.dial.dialer(self.server)
    }

    /// Prepares connecting to every gateway of the target: `--server` first, then each
    /// `--also-gateway`.
    pub fn dialers(&self) -> anyhow::Result<Vec<Dialer>> {
        std::iter::once(self.server)
            .chain(self.also_gateways.iter().copied())
            .map(|server| self.dial.dialer(server))
            .collect()
    }

    /// Refuses a target outside loopback unless `--allow-remote`: a load test pointed at a
    /// production address by a typo is an outage.
    pub fn check(&self) -> anyhow::Result<()> {
        for server in std::iter::once(&self.server).chain(&self.also_gateways) {
            if !server.ip().is_loopback() && !self.allow_remote {
                bail!(
                    "refusing to load {server}: not a loopback address (pass --allow-remote to insist)"
                );
            }
        }
        Ok(())
    }

    /// A probe of the server process, if its PID was given.
    pub fn probe(&self) -> Option<ServerProbe> {
        (!self.server_pid.is_empty()).then(|| ServerProbe {
            pids: self.server_pid.clone(),
        })
    }
}

/// A token for `user`, valid for an hour, for any device.
pub fn token(secret: &str, user: &str) -> String {
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

/// Read half of a raw protocol connection.
pub type Reader = FramedRead<ReadStream, FrameCodec>;
/// Write half of a raw protocol connection.
pub type Writer = FramedWrite<WriteStream, FrameCodec>;

/// An authenticated raw connection: no client core, every frame is the workload's own.
pub struct Conn {
    /// Frames from the server.
    pub reader: Reader,
    /// Frames to the server.
    pub writer: Writer,
    /// The server's answer to the handshake.
    pub hello: pb::HandshakeResp,
}

/// Connects as `user` (device "load") and completes the handshake.
pub async fn connect(dialer: &Dialer, secret: &str, user: &str) -> anyhow::Result<Conn> {
    connect_from(dialer, None, secret, user).await
}

/// Like [`connect`], but binds the client socket to `source` first, so that many connections
/// can be spread over 127.0.0.x addresses (each source address has its own ephemeral ports).
pub async fn connect_from(
    dialer: &Dialer,
    source: Option<IpAddr>,
    secret: &str,
    user: &str,
) -> anyhow::Result<Conn> {
    let (r, w) = dialer.open(source).await?;
    let mut reader = FramedRead::new(r, FrameCodec::default());
    let mut writer = FramedWrite::new(w, FrameCodec::default());
    let hello = pb::HandshakeReq {
        token: token(secret, user),
        device_id: "load".into(),
        platform: pb::Platform::Server as i32,
        client_version: "loadtest".into(),
        // Revision 2: read-fan-out groups' messages come as GROUP_PUSH (SPEC §13.12).
        protocol_version: im_protocol::PROTOCOL_REVISION,
        ..Default::default()
    };
    writer.send(Frame::new(1, hello)).await?;
    let frame = tokio::time::timeout(Duration::from_secs(20), reader.next())
        .await
        .context("handshake timed out")?
        .context("closed during handshake")??;
    match frame.decode_body()? {
        Body::HandshakeResp(hello) => Ok(Conn {
            reader,
            writer,
            hello,
        }),
        Body::Error(e) => bail!("handshake refused: {} ({})", e.message, e.code),
        other => bail!("unexpected handshake answer {other:?}"),
    }
}

/// The `n`-th source address of a range starting at `first` (127.0.0.2, 127.0.0.3, …), or
/// `None` when the target is not IPv4 loopback (binding would make the route impossible).
pub fn source_ip(target: SocketAddr, first: u32, n: u32) -> Option<IpAddr> {
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            // 127.0.0.0/8: skip .0 and .255 in each /24 to stay clear of broadcast-like ends.
            let k = first + n;
            let host = 0x7f00_0000u32 + (k / 254) * 256 + (k % 254) + 1;
            Some(IpAddr::V4(Ipv4Addr::from(host)))
        }
        _ => None,
    }
}

/// Reads CPU time and memory of the server process from /proc.
#[derive(Clone, Debug)]
pub struct ServerProbe {
    /// The server's PIDs (one, or a cluster's processes).
    pub pids: Vec<u32>,
}

/// One reading of the server's cost.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set (VmRSS), bytes.
    pub rss_bytes: u64,
    /// Highest resident set so far (VmHWM), bytes.
    pub hwm_bytes: u64,
}

impl ServerProbe {
    /// Reads /proc/PID/stat (CPU) and /proc/PID/status (VmRSS, VmHWM); `None` if the process
    /// is gone or /proc is unreadable.
    pub fn sample(&self) -> Option<Usage> {
        let mut total = Usage::default();
        for pid in &self.pids {
            let one = sample_pid(*pid)?;
            total.cpu_secs += one.cpu_secs;
            total.rss_bytes += one.rss_bytes;
            total.hwm_bytes += one.hwm_bytes;
        }
        Some(total)
    }
}

/// One process's reading.
fn sample_pid(pid: u32) -> Option<Usage> {
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = 100.0; // USER_HZ on Linux
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        Some(Usage {
            cpu_secs: (utime + stime) / ticks,
            rss_bytes: kib("VmRSS:")? * 1024,
            hwm_bytes: kib("VmHWM:").unwrap_or(0) * 1024,
        })
    }
}

/// The server's cost over one measured interval.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerCost {
    /// CPU seconds spent in the interval.
    pub cpu_secs: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cpu_cores: f64,
    /// RSS at the start, bytes.
    pub rss_before_bytes: u64,
    /// RSS at the end, bytes.
    pub rss_after_bytes: u64,
    /// Highest RSS seen by the sampler during the interval (or at its ends), bytes.
    pub rss_peak_bytes: u64,
}

/// Samples a server every 100 ms in the background, to catch its peak RSS.
pub struct CostMeter {
    probe: Option<ServerProbe>,
    before: Option<Usage>,
    started: std::time::Instant,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl CostMeter {
    /// Starts measuring (does nothing without a probe).
    pub fn start(probe: Option<ServerProbe>) -> CostMeter {
        let before = probe.as_ref().and_then(|p| p.sample());
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            before.map(|u| u.rss_bytes).unwrap_or(0),
        ));
        let sampler = probe.clone().map(|p| {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(u) = p.sample() {
                        peak.fetch_max(u.rss_bytes, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        });
        CostMeter {
            probe,
            before,
            started: std::time::Instant::now(),
            peak,
            sampler,
        }
    }

    /// The RSS at the start, if known.
    pub fn rss_before(&self) -> Option<u64> {
        self.before.map(|u| u.rss_bytes)
    }

    /// Ends the interval.
    pub fn finish(self) -> Option<ServerCost> {
        if let Some(s) = &self.sampler {
            s.abort();
        }
        let before = self.before?;
        let after = self.probe.as_ref()?.sample()?;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let cpu = (after.cpu_secs - before.cpu_secs).max(0.0);
        Some(ServerCost {
            cpu_secs: cpu,
            cpu_cores: cpu / secs,
            rss_before_bytes: before.rss_bytes,
            rss_after_bytes: after.rss_bytes,
            rss_peak_bytes: self
                .peak
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(after.rss_bytes),
        })
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records a duration (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).clamp(1, 60_000_000));
}

/// The latencies one task records, in microseconds, added to a shared histogram when it ends.
///
/// Each task keeps a list rather than a histogram of its own: a histogram with the bounds above
/// is 136 KiB, and the two that each of W3's 1,000 receivers used to allocate (272 MiB) were
/// allocated just as its first messages went out, which held the load generator for about
/// 400 ms and was the whole of the p99 it reported (BENCHMARKS.md, issue 15). A list costs
/// 4 bytes per delivery and grows as they come.
#[derive(Debug, Default)]
pub struct LatencyLog(Vec<u32>);

impl LatencyLog {
    /// Records a duration (clamped to [`histogram`]'s range).
    pub fn record(&mut self, d: Duration) {
        self.0
            .push((d.as_micros() as u64).clamp(1, 60_000_000) as u32);
    }

    /// Adds every recorded latency to `h` (a [`histogram`]).
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &micros in &self.0 {
            h.saturating_record(u64::from(micros));
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Latency {
    /// Summarises a histogram recorded in microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    /// "p50 / p99 / p99.9 / max" in ms.
    pub fn line(&self) -> String {
        format!(
            "{:.3} / {:.3} / {:.3} / {:.3}",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// Prints a progress line on stderr (never on stdout, which carries the result).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!($($arg)*) };
}

/// Milliseconds since the Unix epoch.
pub use im_protocol::unix_time_ms as now_ms;

/// Sends `SendReq`s from one connection with at most `window` unacknowledged, and waits for
/// every ack. Used to pre-load inboxes and conversations. Returns (acked, errors).
pub async fn send_pipelined(
    conn: &mut Conn,
    targets: impl Iterator<Item = pb::send_req::Target>,
    payload: &[u8],
    window: usize,
    id_prefix: &str,
    progress: Option<&std::sync::atomic::AtomicU64>,
) -> anyhow::Result<(u64, u64)> {
    let mut outstanding = 0usize;
    let mut acked = 0u64;
    let mut errors = 0u64;
    let mut n: u32 = 0;
    let mut targets = targets.peekable();
    loop {
        while outstanding < window.max(1) {
            let Some(target) = targets.next() else { break };
            n += 1;
            let req = pb::SendReq {
                target: Some(target),
                client_msg_id: format!("{id_prefix}-{n}"),
                content_type: 1,
                content: payload.to_vec(),
            };
            let frame = Frame::new(n, req);
            if outstanding + 1 < window && targets.peek().is_some() {
                conn.writer.feed(frame).await?;
            } else {
                conn.writer.send(frame).await?;
            }
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        let frame = tokio::time::timeout(Duration::from_secs(30), conn.reader.next())
            .await
            .context("no ack for 30 s")?
            .context("connection closed while sending")??;
        if frame.is_push() {
            continue;
        }
        match frame.decode_body() {
            Ok(Body::SendAck(_)) => {
                acked += 1;
                outstanding -= 1;
                if let Some(p) = progress {
                    p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(Body::Error(e)) => {
                if errors < 5 {
                    progress!("send error: {} ({})", e.message, e.code);
                }
                errors += 1;
                outstanding -= 1;
            }
            _ => {}
        }
    }
    Ok((acked, errors))
}

/// Writes a result as pretty JSON, if a path was given.
pub fn write_json(path: Option<&std::path::Path>, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// KiB with one decimal.
pub fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}
