//! W5, history: one direct conversation of N messages (pre-loaded by its first user), then
//! paged through newest first, `page` messages at a time, with HISTORY_REQ{OLDER}; `rounds`
//! times. Reports per-page latency.

use std::time::Instant;

use anyhow::bail;
use im_protocol::Body;
use im_protocol::pb::{self, send_req::Target};
use serde::{Deserialize, Serialize};

use crate::common::{self, CostMeter, Latency, ServerCost};
use crate::progress;
use crate::w3::request;

/// What W5 does.
#[derive(Clone, Debug)]
pub struct W5Config {
    /// Messages in the conversation.
    pub messages: usize,
    /// Messages per page (≤ 200).
    pub page: u32,
    /// Times to page through the whole conversation.
    pub rounds: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Prefix of the user ids.
    pub prefix: String,
}

/// What W5 measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct W5Result {
    /// Always "W5".
    pub workload: String,
    /// Messages asked for.
    pub messages: usize,
    /// Page size.
    pub page: u32,
    /// Rounds.
    pub rounds: usize,
    /// Pre-load time, seconds.
    pub preload_secs: f64,
    /// Pre-load sends acknowledged.
    pub preload_acked: u64,
    /// The conversation's last seq as the server reported it.
    pub last_seq: u64,
    /// Messages returned per round (each must equal `messages` on a fresh conversation).
    pub messages_per_round: Vec<u64>,
    /// Pages fetched in total.
    pub pages: u64,
    /// Per-page latency, ms.
    pub page_ms: Latency,
    /// Pages per second (sequential).
    pub pages_per_sec: f64,
    /// Errors: refused requests and pages out of order.
    pub errors: u64,
    /// Server cost while paging.
    pub server: Option<ServerCost>,
}

impl W5Result {
    /// The human-readable table (stdout).
    pub fn table(&self) -> String {
        let mut s = format!(
            "W5  messages={} page={} rounds={}\n",
            self.messages, self.page, self.rounds
        );
        s += &format!(
            "  pre-load               {:.2} s ({} acked)\n",
            self.preload_secs, self.preload_acked
        );
        s += &format!(
            "  pages / per second     {} / {:.0}\n",
            self.pages, self.pages_per_sec
        );
        s += &format!("  page ms p50/p99/p99.9/max  {}\n", self.page_ms.line());
        s += &format!(
            "  messages per round     {:?} (last seq {})\n",
            self.messages_per_round, self.last_seq
        );
        if let Some(c) = &self.server {
            s += &format!(
                "  server CPU-s {:.2}  RSS {:.1} MiB\n",
                c.cpu_secs,
                c.rss_after_bytes as f64 / 1048576.0
            );
        }
        s += &format!("  errors                 {:>12}\n", self.errors);
        s
    }
}

/// Runs W5 against `target`.
pub async fn run(target: &common::Target, config: &W5Config) -> anyhow::Result<W5Result> {
    let dialer = target.dialer()?;
    if config.page == 0 || config.page > 200 {
        bail!("--page must be 1..=200");
    }
    let run = common::now_ms() % 1_000_000_000;
    let a = format!("{}-{run}-a", config.prefix);
    let b = format!("{}-{run}-b", config.prefix);
    let conversation = if a <= b {
        format!("d:{a}:{b}")
    } else {
        format!("d:{b}:{a}")
    };
    let mut writer = common::connect(&dialer, &target.secret, &a).await?;
    let preload_start = Instant::now();
    let (preload_acked, preload_errors) = common::send_pipelined(
        &mut writer,
        (0..config.messages).map(|_| Target::ToUser(b.clone())),
        &vec![b'h'; config.payload],
        256,
        "w5",
        None,
    )
    .await?;
    drop(writer);
    let preload_secs = preload_start.elapsed().as_secs_f64();
    progress!("W5: {preload_acked} messages pre-loaded in {preload_secs:.2} s");

    let mut reader = common::connect(&dialer, &target.secret, &b).await?;
    let mut h = common::histogram();
    let mut errors = preload_errors;
    let mut per_round = Vec::new();
    let mut pages = 0u64;
    let mut last_seq = 0;
    let mut request_id = 1u32;
    let meter = CostMeter::start(target.probe());
    let start = Instant::now();
    for round in 0..config.rounds {
        let mut anchor = 0u64;
        let mut seen = 0u64;
        loop {
            request_id += 1;
            let t = Instant::now();
            let answer = request(
                &mut reader,
                request_id,
                pb::HistoryReq {
                    conversation_id: conversation.clone(),
                    anchor_seq: anchor,
                    direction: pb::HistoryDirection::Older as i32,
                    limit: config.page,
                },
            )
            .await;
            let took = t.elapsed();
            let resp = match answer {
                Ok(Body::HistoryResp(resp)) => resp,
                Ok(other) => bail!("unexpected answer to HISTORY_REQ: {other:?}"),
                Err(e) => {
                    errors += 1;
                    progress!("W5 page failed: {e:#}");
                    break;
                }
            };
            common::record(&mut h, took);
            pages += 1;
            last_seq = resp.last_seq;
            // Newest first, strictly descending, below the anchor.
            let mut prev = if anchor == 0 { u64::MAX } else { anchor };
            for m in &resp.messages {
                if m.conversation_seq >= prev {
                    errors += 1;
                }
                prev = m.conversation_seq;
            }
            seen += resp.messages.len() as u64;
            match resp.messages.last() {
                Some(m) if resp.has_more => anchor = m.conversation_seq,
                _ => break,
            }
        }
        progress!(
            "  round {}: {seen} messages in {pages} pages so far",
            round + 1
        );
        per_round.push(seen);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cost: Option<ServerCost> = meter.finish();
    Ok(W5Result {
        workload: "W5".into(),
        messages: config.messages,
        page: config.page,
        rounds: config.rounds,
        preload_secs,
        preload_acked,
        last_seq,
        messages_per_round: per_round,
        pages,
        page_ms: Latency::of(&h),
        pages_per_sec: pages as f64 / elapsed.max(1e-9),
        errors,
        server: cost,
    })
}
