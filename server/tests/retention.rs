//! Inbox retention makes TRIMMED real: a device that syncs from below the retained entries is
//! told which seqs are gone, gets the newest ones contiguously, and the head keeps counting.

mod support;

use im_protocol::{Body, pb};
use support::*;

#[tokio::test]
async fn a_sync_from_the_start_reports_the_trimmed_prefix_and_returns_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--inbox-retention-entries", "10"]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    for i in 0..30 {
        alice
            .send_text(to_user("bob"), &format!("m{i}"), &format!("message {i}"))
            .await
            .unwrap();
    }
    let mut bob = Client::connect(&server, "bob", "phone").await;
    assert_eq!(bob.hello.inbox_head_seq, 30, "the head keeps counting");
    let response = match bob
        .request(pb::SyncReq {
            from_seq: 0,
            limit: 100,
            to_seq: 0,
        })
        .await
    {
        Body::SyncResp(r) => r,
        other => panic!("{other:?}"),
    };
    let trimmed: Vec<_> = response
        .missing
        .iter()
        .filter(|m| m.reason == pb::SeqRangeReason::Trimmed as i32)
        .collect();
    let [range] = trimmed.as_slice() else {
        panic!("expected one TRIMMED range: {:?}", response.missing)
    };
    assert_eq!(range.from_seq, 1);
    assert!(range.to_seq >= 20, "at most 10 entries retained: {range:?}");
    let seqs: Vec<u64> = response.entries.iter().map(|e| e.inbox_seq).collect();
    let expected: Vec<u64> = (range.to_seq + 1..=30).collect();
    assert_eq!(
        seqs, expected,
        "the retained entries, contiguous up to the head"
    );
    assert_eq!(response.head_seq, 30);
    assert!(!response.has_more);
    // History is not an inbox: the conversation keeps every message.
    match bob
        .request(pb::HistoryReq {
            conversation_id: "d:alice:bob".into(),
            limit: 100,
            ..Default::default()
        })
        .await
    {
        Body::HistoryResp(h) => assert_eq!(h.messages.len(), 30),
        other => panic!("{other:?}"),
    }
}
