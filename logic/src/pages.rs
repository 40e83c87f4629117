//! Pages: sync responses built from an inbox read, and pages cut to fit in one frame.

use im_protocol::pb;

/// Shortens `items` so their encoded size stays within `budget` bytes, keeping at least one
/// (a single message is bounded by the message size limit, far below a frame). Returns whether
/// anything was cut.
pub fn fit_in_bytes<T: im_protocol::ProstMessage>(items: &mut Vec<T>, budget: usize) -> bool {
    let mut used = 0usize;
    for (index, item) in items.iter().enumerate() {
        // Field tag and length prefix of each repeated element: at most 1 + 5 bytes.
        used += item.encoded_len() + 6;
        if used > budget && index > 0 {
            items.truncate(index);
            return true;
        }
    }
    false
}

/// Builds a `SyncResp` for a request `[from, to]` (to = 0: up to the head) from an inbox page,
/// naming every requested seq that is not returned and never will be (trimmed) or does not exist
/// yet, so a client never waits for a seq.
pub fn sync_response(from: u64, to: u64, page: timeline_store::InboxPage) -> pb::SyncResp {
    let mut missing = Vec::new();
    if from < page.oldest_seq {
        let trimmed_to = (page.oldest_seq - 1).min(if to == 0 { u64::MAX } else { to });
        missing.push(pb::SeqRange {
            from_seq: from,
            to_seq: trimmed_to,
            reason: pb::SeqRangeReason::Trimmed as i32,
        });
    }
    if to > page.head_seq {
        missing.push(pb::SeqRange {
            from_seq: from.max(page.head_seq + 1),
            to_seq: to,
            reason: pb::SeqRangeReason::NotYet as i32,
        });
    }
    let end = if to == 0 {
        page.head_seq
    } else {
        to.min(page.head_seq)
    };
    let next_seq = page
        .entries
        .last()
        .map(|e| e.inbox_seq + 1)
        .unwrap_or_else(|| from.max(page.oldest_seq).min(end + 1).max(from));
    pb::SyncResp {
        has_more: next_seq <= end,
        next_seq,
        head_seq: page.head_seq,
        entries: page.entries,
        missing,
        inbox_epoch: 0,
        read_groups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline_store::InboxPage;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<pb::InboxEntry> {
        range
            .map(|inbox_seq| pb::InboxEntry {
                inbox_seq,
                body: None,
            })
            .collect()
    }

    #[test]
    fn pages_are_cut_by_bytes_but_never_to_nothing() {
        let big = |seq| pb::InboxEntry {
            inbox_seq: seq,
            body: Some(pb::inbox_entry::Body::Message(pb::Message {
                content: vec![7; 60_000],
                ..Default::default()
            })),
        };
        let mut entries: Vec<_> = (1..=40).map(big).collect();
        assert!(fit_in_bytes(&mut entries, 512 * 1024));
        assert_eq!(entries.len(), 8);
        let mut one = vec![big(1)];
        assert!(!fit_in_bytes(&mut one, 10));
        assert_eq!(one.len(), 1);
        let page = InboxPage {
            entries,
            head_seq: 40,
            oldest_seq: 1,
        };
        let resp = sync_response(1, 0, page);
        assert!(resp.has_more);
        assert_eq!(resp.next_seq, 9);
    }

    #[test]
    fn a_full_page_below_the_head_has_more() {
        let page = InboxPage {
            entries: entries(1..=3),
            head_seq: 10,
            oldest_seq: 1,
        };
        let resp = sync_response(1, 0, page);
        assert!(resp.has_more);
        assert_eq!(resp.next_seq, 4);
        assert!(resp.missing.is_empty());
    }

    #[test]
    fn seqs_above_the_head_are_reported_not_yet() {
        let page = InboxPage {
            entries: entries(5..=6),
            head_seq: 6,
            oldest_seq: 1,
        };
        let resp = sync_response(5, 9, page);
        assert!(!resp.has_more);
        assert_eq!(resp.next_seq, 7);
        assert_eq!(
            resp.missing,
            vec![pb::SeqRange {
                from_seq: 7,
                to_seq: 9,
                reason: pb::SeqRangeReason::NotYet as i32
            }]
        );
    }

    #[test]
    fn trimmed_seqs_are_reported_so_the_client_skips_them() {
        let page = InboxPage {
            entries: entries(4..=5),
            head_seq: 5,
            oldest_seq: 4,
        };
        let resp = sync_response(1, 0, page);
        assert_eq!(
            resp.missing,
            vec![pb::SeqRange {
                from_seq: 1,
                to_seq: 3,
                reason: pb::SeqRangeReason::Trimmed as i32
            }]
        );
        assert!(!resp.has_more);
    }

    #[test]
    fn a_request_past_the_head_of_an_empty_inbox_returns_nothing_and_does_not_loop() {
        let page = InboxPage {
            entries: vec![],
            head_seq: 0,
            oldest_seq: 1,
        };
        let resp = sync_response(1, 0, page);
        assert!(!resp.has_more);
        assert_eq!(resp.next_seq, 1);
    }
}
