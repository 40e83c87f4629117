//! Crash safety: a process killed with SIGKILL in the middle of group commits loses nothing it
//! acknowledged, leaves every inbox contiguous, and never hands out a seq or server msg id again.
//!
//! The test re-runs its own binary as the child (selected by an environment variable), which
//! commits from many tasks and prints each acknowledgement; the parent kills it mid-stream.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use im_protocol::pb::inbox_entry::Body;
use store_embedded::{EmbeddedOptions, EmbeddedStore};
use timeline_store::{NewMessage, TimelineStore};

const CHILD_DIR: &str = "STORE_EMBEDDED_CRASH_CHILD_DIR";
const USERS: usize = 6;

fn message(task: usize, i: usize) -> NewMessage {
    let sender = format!("u{}", task % USERS);
    let peer = format!("u{}", (task + 1 + i % (USERS - 1)) % USERS);
    let mut recipients = vec![sender.clone(), peer.clone()];
    recipients.sort();
    NewMessage {
        conversation_id: im_protocol::ids::direct_conversation_id(&sender, &peer),
        kind: im_protocol::pb::ConversationKind::Direct,
        sender_user: sender,
        sender_device: "phone".into(),
        client_msg_id: format!("t{task}-{i}"),
        content_type: 0,
        content: vec![b'x'; 100],
        recipients,
        now_ms: 1_700_000_000_000 + i as u64,
    }
}

/// The child: commits forever and prints `user inbox_seq server_msg_id` per acknowledged
/// delivery. Does nothing in an ordinary test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = EmbeddedStore::open(dir.as_ref(), EmbeddedOptions::default()).expect("open");
        let mut tasks = Vec::new();
        for task in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    for result in store.commit_messages(vec![message(task, i)]).await {
                        let committed = result.expect("commit");
                        for d in committed.deliveries {
                            println!(
                                "ack {} {} {}",
                                d.user, d.entry.inbox_seq, committed.message.server_msg_id
                            );
                        }
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_keeps_every_acknowledged_message_and_reuses_no_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut count = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ack") {
            continue;
        }
        let (Some(user), Some(seq), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(seq), Ok(id)) = (seq.parse(), id.parse()) else {
            continue;
        };
        acked.entry(user.to_owned()).or_default().insert(seq, id);
        count += 1;
        if count == 2_000 {
            child.kill().expect("SIGKILL the child");
            break;
        }
    }
    let _ = child.wait();
    assert_eq!(
        count, 2_000,
        "the child stopped before acknowledging enough"
    );

    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .expect("reopen after the crash");
    let mut stored_ids: HashSet<u64> = HashSet::new();
    for u in 0..USERS {
        let user = format!("u{u}");
        let page = store
            .read_inbox(&user, 1, 0, 1_000_000)
            .await
            .expect("read_inbox");
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.inbox_seq).collect();
        assert_eq!(
            seqs,
            (1..=page.head_seq).collect::<Vec<_>>(),
            "{user}'s inbox is not contiguous"
        );
        let by_seq: BTreeMap<u64, u64> = page
            .entries
            .iter()
            .filter_map(|e| match &e.body {
                Some(Body::Message(m)) => Some((e.inbox_seq, m.server_msg_id)),
                _ => None,
            })
            .collect();
        for (seq, id) in acked.get(&user).into_iter().flatten() {
            assert_eq!(
                by_seq.get(seq),
                Some(id),
                "{user}'s acknowledged seq {seq} is lost or changed"
            );
        }
        stored_ids.extend(by_seq.values());
    }
    let next = store.commit_messages(vec![message(99, 0)]).await;
    let next = next
        .into_iter()
        .next()
        .expect("one result")
        .expect("commit after the crash");
    assert!(
        !stored_ids.contains(&next.message.server_msg_id),
        "server msg id {} reused after the crash",
        next.message.server_msg_id
    );
    for d in &next.deliveries {
        let head_before = acked
            .get(&d.user)
            .and_then(|m| m.keys().last())
            .copied()
            .unwrap_or(0);
        assert!(
            d.entry.inbox_seq > head_before,
            "{}'s inbox seq {} reused",
            d.user,
            d.entry.inbox_seq
        );
    }
}
