//! Quick durable-throughput check of the embedded store: 200k one-to-one messages of 100 bytes
//! committed by 64 concurrent tasks (one message per call, as separate clients would send),
//! each acknowledged only after its group commit's fsync.
//!
//! `cargo run --release -p store-embedded --example commit_throughput [messages] [tasks] [dir]`
//! (the directory defaults to a temporary one under the system temp dir; the disk it is on
//! decides the fsync cost).

use std::time::Instant;

use im_protocol::{ids, pb};
use store_embedded::{EmbeddedOptions, EmbeddedStore};
use timeline_store::{NewMessage, TimelineStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let tasks: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let temp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_owned());
    let store = EmbeddedStore::open(&dir, EmbeddedOptions::default())?;
    let per_task = total / tasks;
    let content = vec![b'x'; 100];

    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let store = store.clone();
        let content = content.clone();
        handles.push(tokio::spawn(async move {
            let sender = format!("user{t}");
            for i in 0..per_task {
                // Spread over 10k peers, so inbox heads are mostly cold and not all one key.
                let peer = format!("user{}", 100 + (t * 7919 + i * 31) % 10_000);
                let mut recipients = vec![sender.clone(), peer.clone()];
                recipients.sort();
                let message = NewMessage {
                    conversation_id: ids::direct_conversation_id(&sender, &peer),
                    kind: pb::ConversationKind::Direct,
                    sender_user: sender.clone(),
                    sender_device: "bench".into(),
                    client_msg_id: format!("{t}-{i}"),
                    content_type: 0,
                    content: content.clone(),
                    recipients,
                    now_ms: 1_700_000_000_000 + i as u64,
                };
                for result in store.commit_messages(vec![message]).await {
                    if let Err(e) = result {
                        return Err(e.to_string());
                    }
                }
            }
            Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let elapsed = started.elapsed();
    let committed = per_task * tasks;
    let commits = store.group_commits();
    println!(
        "{committed} messages from {tasks} tasks in {:.2} s: {:.0} messages/s durable, \
         {commits} group commits (avg {:.1} messages per fsync)",
        elapsed.as_secs_f64(),
        committed as f64 / elapsed.as_secs_f64(),
        committed as f64 / commits.max(1) as f64,
    );
    store.close().await?;
    Ok(())
}
