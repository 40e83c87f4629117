//! W3, group fan-out: one sender to a group of M members (the sender included) of which K
//! receivers are online. The sender keeps at most `window` messages in flight, where a message
//! is in flight until the *last* online member got it. Reports deliveries/s and the time from
//! send to the last member's receipt, per message and overall.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, Frame};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};

use crate::common::{self, Conn, CostMeter, Latency, ServerCost};
use crate::progress;

/// What W3 does.
#[derive(Clone, Debug)]
pub struct W3Config {
    /// Group members, the sender included.
    pub members: usize,
    /// Members online to receive (at most members − 1).
    pub online: usize,
    /// Messages the sender sends.
    pub messages: usize,
    /// Messages in flight (until the last online member got them).
    pub window: usize,
    /// Messages per second on a fixed schedule (0 = keep `window` in flight instead).
    pub rate: u32,
    /// Payload bytes (at least 12: index and timestamp).
    pub payload: usize,
    /// Give up waiting for deliveries after this long.
    pub timeout: Duration,
    /// Prefix of the user ids.
    pub prefix: String,
}

/// What W3 measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct W3Result {
    /// Always "W3".
    pub workload: String,
    /// Group members, sender included.
    pub members: usize,
    /// Online receivers.
    pub online: usize,
    /// Messages sent.
    pub messages: usize,
    /// Window.
    pub window: usize,
    /// Time to create the group and add everyone, seconds.
    pub setup_secs: f64,
    /// The slowest and the fastest add request of the setup (500 members each), ms: equal
    /// when setting up is linear in members (each add costs the same however many are in).
    #[serde(default)]
    pub add_ms_first_last: (f64, f64),
    /// Server RSS growth over the setup, per member, bytes.
    #[serde(default)]
    pub rss_per_member_bytes: Option<f64>,
    /// Sending schedule, messages/s (0 = windowed).
    #[serde(default)]
    pub rate: u32,
    /// Whether the group was in read fan-out when the sends started.
    #[serde(default)]
    pub read_fanout: bool,
    /// Time to log in the receivers, seconds.
    pub login_secs: f64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Deliveries received (expected: messages × online).
    pub deliveries: u64,
    /// Messages that reached every online member.
    pub complete_messages: u64,
    /// From the first send to the last receipt, seconds.
    pub elapsed_secs: f64,
    /// `deliveries / elapsed_secs`.
    pub deliveries_per_sec: f64,
    /// Per message: from send to the last online member's receipt, ms.
    pub last_receipt_ms: Latency,
    /// Per delivery: from send to that member's receipt, ms.
    pub delivery_ms: Latency,
    /// Error frames and failed connections.
    pub errors: u64,
    /// Pushes whose first inbox seq did not follow the receiver's previous one: each would make
    /// a client core see a gap and sync (0 on a healthy link when pushes leave in inbox order).
    #[serde(default)]
    pub push_gaps: u64,
    /// Server cost while sending.
    pub server: Option<ServerCost>,
}

impl W3Result {
    /// The human-readable table (stdout).
    pub fn table(&self) -> String {
        let mode = if self.read_fanout { "read" } else { "write" };
        let pace = if self.rate > 0 {
            format!("rate={}/s", self.rate)
        } else {
            format!("window={}", self.window)
        };
        let mut s = format!(
            "W3  members={} online={} messages={} {pace} fan-out={mode}\n",
            self.members, self.online, self.messages
        );
        s += &format!(
            "  setup / login s        {:.2} / {:.2}\n",
            self.setup_secs, self.login_secs
        );
        s += &format!(
            "  add of 500, first/last ms {:.1} / {:.1}\n",
            self.add_ms_first_last.0, self.add_ms_first_last.1
        );
        if let Some(per_member) = self.rss_per_member_bytes {
            s += &format!("  server RSS per member  {per_member:>12.0} B\n");
        }
        s += &format!(
            "  deliveries/s           {:>12.0}\n",
            self.deliveries_per_sec
        );
        s += &format!(
            "  deliveries             {} of {} ({} messages complete)\n",
            self.deliveries,
            self.messages as u64 * self.online as u64,
            self.complete_messages
        );
        s += &format!(
            "  send→last member ms p50/p99/p99.9/max  {}\n",
            self.last_receipt_ms.line()
        );
        s += &format!(
            "  send→member ms p50/p99/p99.9/max       {}\n",
            self.delivery_ms.line()
        );
        s += &format!("  elapsed s              {:>12.3}\n", self.elapsed_secs);
        if let Some(c) = &self.server {
            s += &format!(
                "  server CPU-s {:.2}  peak RSS {:.1} MiB\n",
                c.cpu_secs,
                c.rss_peak_bytes as f64 / 1048576.0
            );
        }
        s += &format!("  push gaps              {:>12}\n", self.push_gaps);
        s += &format!("  errors                 {:>12}\n", self.errors);
        s
    }
}

/// Sends one request and waits for its answer, skipping pushes.
pub async fn request(
    conn: &mut Conn,
    request_id: u32,
    body: impl Into<Body>,
) -> anyhow::Result<Body> {
    conn.writer.send(Frame::new(request_id, body)).await?;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), conn.reader.next())
            .await
            .context("no answer for 30 s")?
            .context("connection closed")??;
        if frame.request_id != request_id || frame.is_push() {
            continue;
        }
        return match frame.decode_body()? {
            Body::Error(e) => bail!("request refused: {} ({})", e.message, e.code),
            body => Ok(body),
        };
    }
}

/// Runs W3 against `target`.
pub async fn run(target: &common::Target, config: &W3Config) -> anyhow::Result<W3Result> {
    let dialers = target.dialers()?;
    let dialer = dialers[0].clone();
    if config.payload < 12 {
        bail!("--payload must be at least 12 bytes (index and timestamp)");
    }
    if config.members < 2 {
        bail!("--members must be at least 2");
    }
    let online = config.online.min(config.members - 1);
    let run = common::now_ms() % 1_000_000_000;
    let user = |i: usize| format!("{}-{run}-m{i}", config.prefix);
    let sender_id = format!("{}-{run}-sender", config.prefix);

    // The group: created with the first members, the rest added in chunks (bodies stay small).
    let rss_before_setup = target.probe().and_then(|p| p.sample()).map(|u| u.rss_bytes);
    let setup_start = Instant::now();
    let mut sender = common::connect(&dialer, &target.secret, &sender_id).await?;
    let others: Vec<String> = (0..config.members - 1).map(user).collect();
    let mut chunks = others.chunks(500);
    let created = request(
        &mut sender,
        2,
        pb::GroupCreateReq {
            name: "w3".into(),
            members: chunks.next().unwrap_or_default().to_vec(),
            open: false,
            client_request_id: format!("w3-{run}"),
            broadcast: false,
        },
    )
    .await?;
    let Body::GroupCreateResp(created) = created else {
        bail!("unexpected answer to group creation: {created:?}");
    };
    let created = created.group.context("no group in the answer")?;
    let group_id = created.group_id;
    let mut read_fanout = created.read_fanout;
    let mut request_id = 3;
    let mut add_ms = Vec::new();
    for chunk in chunks {
        request_id += 1;
        let started = Instant::now();
        let added = request(
            &mut sender,
            request_id,
            pb::GroupAddMembersReq {
                group_id: group_id.clone(),
                members: chunk.to_vec(),
            },
        )
        .await?;
        add_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Body::GroupAddMembersResp(pb::GroupAddMembersResp {
            group: Some(group), ..
        }) = added
        {
            read_fanout = group.read_fanout;
        }
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let rss_per_member_bytes = match (
        rss_before_setup,
        target.probe().and_then(|p| p.sample()).map(|u| u.rss_bytes),
    ) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / config.members as f64)
        }
        _ => None,
    };
    // The first and the last few adds (median of up to 5 each), so one slow request does not
    // decide.
    let median = |xs: &[f64]| -> f64 {
        let mut xs = xs.to_vec();
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(0.0)
    };
    let add_ms_first_last = (
        median(&add_ms[..add_ms.len().min(5)]),
        median(&add_ms[add_ms.len().saturating_sub(5)..]),
    );
    progress!(
        "W3: group {group_id} of {} members set up in {setup_secs:.2} s",
        config.members
    );

    // Receivers.
    let login_start = Instant::now();
    let receivers: Vec<anyhow::Result<Conn>> = futures::stream::iter(0..online)
        .map(|i| {
            let u = user(i);
            // Spread over the gateways (the sender is on the first).
            let dialer = &dialers[(i + 1) % dialers.len()];
            async move { common::connect(dialer, &target.secret, &u).await }
        })
        .buffered(64)
        .collect()
        .await;
    let login_secs = login_start.elapsed().as_secs_f64();
    let mut conns = Vec::new();
    for r in receivers {
        conns.push(r.context("logging in a receiver")?);
    }
    progress!("W3: {online} receivers logged in in {login_secs:.2} s");

    let origin = Instant::now();
    let n = config.messages;
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let deliveries = Arc::new(AtomicU64::new(0));
    let complete = Arc::new(AtomicU64::new(0));
    let last_receipt_ns = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let push_gaps = Arc::new(AtomicU64::new(0));
    let window = Arc::new(Semaphore::new(config.window.max(1)));
    let per_message = Arc::new(Mutex::new(common::histogram()));
    let per_delivery = Arc::new(Mutex::new(common::histogram()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let conv = format!("g:{group_id}");
    for conn in conns {
        let (mut reader, mut writer) = (conn.reader, conn.writer);
        let (counts, deliveries, complete, last, window, pm, pd, stop, conv) = (
            counts.clone(),
            deliveries.clone(),
            complete.clone(),
            last_receipt_ns.clone(),
            window.clone(),
            per_message.clone(),
            per_delivery.clone(),
            stop.clone(),
            conv.clone(),
        );
        let online = online as u32;
        let gaps = push_gaps.clone();
        tasks.push(tokio::spawn(async move {
            let mut previous_seq = 0u64;
            let mut local = common::LatencyLog::default();
            let mut local_last = common::LatencyLog::default();
            let mut since_ack = 0;
            let mut request_id = 1;
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => break,
                    f = reader.next() => match f { Some(Ok(f)) => f, _ => break },
                };
                // Write fan-out: inbox entries (acknowledged); read fan-out: GROUP_PUSH
                // messages (no inbox seq, nothing to acknowledge).
                let mut last_seq = 0;
                let messages: Vec<pb::Message> = match frame.decode_body() {
                    Ok(Body::Push(push)) => {
                        if let Some(first) = push.entries.first() {
                            if previous_seq != 0 && first.inbox_seq != previous_seq + 1 {
                                gaps.fetch_add(1, Ordering::Relaxed);
                            }
                            previous_seq = push.entries.last().map_or(0, |e| e.inbox_seq);
                        }
                        push.entries
                            .into_iter()
                            .filter_map(|entry| {
                                last_seq = entry.inbox_seq;
                                since_ack += 1;
                                match entry.body {
                                    Some(pb::inbox_entry::Body::Message(m)) => Some(m),
                                    _ => None,
                                }
                            })
                            .collect()
                    }
                    Ok(Body::GroupPush(push)) => push.messages,
                    _ => continue,
                };
                for m in messages {
                    {
                        if m.conversation_id != conv || m.content.len() < 12 {
                            continue;
                        }
                        let idx =
                            u32::from_be_bytes(m.content[..4].try_into().expect("4")) as usize;
                        let sent_ns = u64::from_be_bytes(m.content[4..12].try_into().expect("8"));
                        let now_ns = origin.elapsed().as_nanos() as u64;
                        let took = Duration::from_nanos(now_ns.saturating_sub(sent_ns));
                        local.record(took);
                        deliveries.fetch_add(1, Ordering::Relaxed);
                        let Some(count) = counts.get(idx) else {
                            continue;
                        };
                        if count.fetch_add(1, Ordering::Relaxed) + 1 == online {
                            local_last.record(took);
                            complete.fetch_add(1, Ordering::Relaxed);
                            last.fetch_max(now_ns, Ordering::Relaxed);
                            window.add_permits(1);
                        }
                    }
                }
                if since_ack >= 32 && last_seq > 0 {
                    since_ack = 0;
                    request_id += 1;
                    let _ = writer
                        .send(Frame::new(
                            request_id,
                            pb::DeliveryAck {
                                up_to_inbox_seq: last_seq,
                            },
                        ))
                        .await;
                }
            }
            local.add_to(&mut *pd.lock().await);
            local_last.add_to(&mut *pm.lock().await);
        }));
    }

    // The sender; its own pushes (it is a member) are skipped by the ack reader.
    let (mut s_reader, mut s_writer) = (sender.reader, sender.writer);
    let acked = Arc::new(AtomicU64::new(0));
    let ack_task = {
        let (acked, errors) = (acked.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(frame)) = s_reader.next().await {
                if frame.is_push() {
                    continue;
                }
                match frame.decode_body() {
                    Ok(Body::SendAck(_)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Body::Error(e)) if errors.fetch_add(1, Ordering::Relaxed) < 5 => {
                        progress!("W3 send error: {} ({})", e.message, e.code);
                    }
                    _ => {}
                }
            }
        })
    };
    let meter = CostMeter::start(target.probe());
    let first_send_ns = origin.elapsed().as_nanos() as u64;
    let deadline = Instant::now() + config.timeout;
    let ticker = {
        let (deliveries, complete) = (deliveries.clone(), complete.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress!(
                    "  deliveries {:>10}  messages complete {}",
                    deliveries.load(Ordering::Relaxed),
                    complete.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut body = vec![b'x'; config.payload];
    let schedule = Instant::now();
    for i in 0..n {
        if config.rate > 0 {
            // Open loop: message i leaves at i / rate, whatever the deliveries do.
            let at = schedule + Duration::from_secs_f64(i as f64 / f64::from(config.rate));
            tokio::time::sleep_until(at.into()).await;
            if Instant::now() > deadline {
                break;
            }
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, window.acquire()).await {
                Ok(permit) => permit.expect("semaphore open").forget(),
                Err(_) => break,
            }
        }
        body[..4].copy_from_slice(&(i as u32).to_be_bytes());
        body[4..12].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_be_bytes());
        let req = pb::SendReq {
            target: Some(Target::ToGroup(group_id.clone())),
            client_msg_id: format!("w3-{i}"),
            content_type: 1,
            content: body.clone(),
        };
        s_writer.send(Frame::new(i as u32 + 100, req)).await?;
    }
    // Wait for the stragglers.
    while complete.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cost = meter.finish();
    ticker.abort();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while acked.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) < n as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    ack_task.abort();
    let elapsed = Duration::from_nanos(
        last_receipt_ns
            .load(Ordering::Relaxed)
            .saturating_sub(first_send_ns),
    )
    .as_secs_f64();
    let deliveries = deliveries.load(Ordering::Relaxed);
    Ok(W3Result {
        workload: "W3".into(),
        members: config.members,
        online,
        messages: n,
        window: config.window,
        rate: config.rate,
        read_fanout,
        add_ms_first_last,
        rss_per_member_bytes,
        setup_secs,
        login_secs,
        acked: acked.load(Ordering::Relaxed),
        deliveries,
        complete_messages: complete.load(Ordering::Relaxed),
        elapsed_secs: elapsed,
        deliveries_per_sec: deliveries as f64 / elapsed.max(1e-9),
        last_receipt_ms: Latency::of(&*per_message.lock().await),
        delivery_ms: Latency::of(&*per_delivery.lock().await),
        errors: errors.load(Ordering::Relaxed),
        push_gaps: push_gaps.load(Ordering::Relaxed),
        server: cost,
    })
}
