//! Inboxes: appends, retention (trimming on append and by sweep) and reads.

use std::collections::VecDeque;

use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::{Delivery, InboxPage, InboxRetention, StoreResult};

use crate::limits::check_part;
use crate::state::{State, missing};

/// Most inbox entries one retention step removes from one inbox, as in the embedded store (its
/// `TRIM_STEP`): a longer backlog goes with later appends or sweeps, so sweep counts match.
const TRIM_STEP: u64 = 10_000;

/// What an inbox entry holds.
#[derive(Clone, Debug)]
pub(crate) enum Stored {
    /// A message, by reference into its conversation's timeline: a read shows it as it is now
    /// (recalled, or hidden from a user who deleted it).
    Message {
        /// The message's conversation.
        conversation_id: String,
        /// The message's conversation seq.
        seq: u64,
    },
    /// Any other entry, whole.
    Event(Body),
}

/// One inbox entry.
#[derive(Clone, Debug)]
pub(crate) struct InboxItem {
    /// Server time of the append, for retention by age.
    pub appended_ms: u64,
    /// The entry.
    pub stored: Stored,
}

/// A user's inbox: the retained entries, oldest first, and the seq of the first one. Never
/// empty once created, since retention never removes the newest entry: the head stays known.
#[derive(Clone, Debug)]
pub(crate) struct Inbox {
    /// The seq of `entries[0]`.
    pub oldest: u64,
    /// Retained entries, with contiguous seqs from `oldest`.
    pub entries: VecDeque<InboxItem>,
}

impl Inbox {
    /// The highest seq handed out.
    pub fn head(&self) -> u64 {
        self.oldest + self.entries.len() as u64 - 1
    }
}

impl State {
    /// `user`'s highest inbox seq (0 = none yet).
    pub(crate) fn inbox_head_of(&self, user: &str) -> u64 {
        self.inboxes.get(user).map_or(0, Inbox::head)
    }

    /// Appends an entry to `user`'s inbox, enforces the count limit, and returns the entry's
    /// seq.
    pub(crate) fn append_inbox(&mut self, user: &str, stored: Stored, now_ms: u64) -> u64 {
        let inbox = self
            .inboxes
            .entry(user.to_owned())
            .or_insert_with(|| Inbox {
                oldest: 1,
                entries: VecDeque::new(),
            });
        inbox.entries.push_back(InboxItem {
            appended_ms: now_ms,
            stored,
        });
        let seq = inbox.head();
        let max = self.retention.max_entries;
        if max > 0 && seq > max {
            self.trim_inbox_through(user, seq - max);
        }
        seq
    }

    /// Appends a non-message entry to `user`'s inbox and returns the delivery to push.
    pub(crate) fn append_event(&mut self, user: &str, body: Body, now_ms: u64) -> Delivery {
        let inbox_seq = self.append_inbox(user, Stored::Event(body.clone()), now_ms);
        Delivery {
            user: user.to_owned(),
            entry: pb::InboxEntry {
                inbox_seq,
                body: Some(body),
            },
        }
    }

    /// Retention: removes `user`'s oldest entries up to and including seq `last`, but never the
    /// newest entry and at most [`TRIM_STEP`] of them. Returns how many were removed.
    fn trim_inbox_through(&mut self, user: &str, last: u64) -> u64 {
        let Some(inbox) = self.inboxes.get_mut(user) else {
            return 0;
        };
        let last = last.min(inbox.head().saturating_sub(1));
        let oldest = inbox.oldest;
        if oldest > last {
            return 0;
        }
        let end = last.min(oldest + TRIM_STEP - 1);
        let removed = end - oldest + 1;
        inbox.entries.drain(..removed as usize);
        inbox.oldest = end + 1;
        removed
    }

    /// See [`timeline_store::TimelineStore::sweep_inbox_retention`].
    pub(crate) fn sweep_inbox_retention(&mut self, now_ms: u64) -> u64 {
        let retention = self.retention;
        if retention == InboxRetention::UNLIMITED {
            return 0;
        }
        let due: Vec<(String, u64)> = self
            .inboxes
            .iter()
            .filter_map(|(user, inbox)| {
                Some((user.clone(), retention_due(inbox, retention, now_ms)?))
            })
            .collect();
        due.into_iter()
            .map(|(user, last)| self.trim_inbox_through(&user, last))
            .sum()
    }

    /// See [`timeline_store::TimelineStore::inbox_head`].
    pub(crate) fn inbox_head(&self, user: &str) -> StoreResult<u64> {
        check_part("id", user)?;
        Ok(self.inbox_head_of(user))
    }

    /// See [`timeline_store::TimelineStore::read_inbox`].
    pub(crate) fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> StoreResult<InboxPage> {
        check_part("id", user)?;
        let Some(inbox) = self.inboxes.get(user) else {
            return Ok(InboxPage {
                entries: Vec::new(),
                head_seq: 0,
                oldest_seq: 1,
            });
        };
        let head = inbox.head();
        let from = from_seq.max(1).max(inbox.oldest);
        let to = if to_seq == 0 { head } else { to_seq.min(head) };
        let mut entries = Vec::new();
        if from <= to && limit > 0 {
            let skip = (from - inbox.oldest) as usize;
            let count = (to - from + 1).min(u64::from(limit)) as usize;
            for (offset, item) in inbox.entries.iter().skip(skip).take(count).enumerate() {
                let body = match &item.stored {
                    Stored::Event(body) => Some(body.clone()),
                    // A message the user deleted for themself keeps its seq but shows nothing
                    // (SPEC §13.7): the client skips an entry without a body.
                    Stored::Message {
                        conversation_id,
                        seq,
                    } if self.is_hidden(user, conversation_id, *seq) => None,
                    Stored::Message {
                        conversation_id,
                        seq,
                    } => {
                        let message = self
                            .message(conversation_id, *seq)
                            .ok_or_else(|| missing("an inbox entry names no message"))?;
                        Some(Body::Message(message.clone()))
                    }
                };
                entries.push(pb::InboxEntry {
                    inbox_seq: from + offset as u64,
                    body,
                });
            }
        }
        Ok(InboxPage {
            entries,
            head_seq: head,
            oldest_seq: inbox.oldest,
        })
    }
}

/// The last seq of `inbox` that retention removes now, if any: beyond the count limit, or
/// appended longer ago than the age limit (never the newest entry; at most [`TRIM_STEP`]
/// entries looked at by age, as the embedded store does).
fn retention_due(inbox: &Inbox, retention: InboxRetention, now_ms: u64) -> Option<u64> {
    let (oldest, head) = (inbox.oldest, inbox.head());
    let mut last = 0;
    if retention.max_entries > 0 && head - oldest + 1 > retention.max_entries {
        last = head - retention.max_entries;
    }
    if retention.max_age_ms > 0 && now_ms > retention.max_age_ms {
        let cutoff = now_ms - retention.max_age_ms;
        // Entries are appended in time order, so the due ones are a prefix; the newest entry
        // is never due. An entry appended at time 0 has no known age (the embedded store's
        // records from before retention) and goes only with a later entry that is due.
        let older = inbox
            .entries
            .len()
            .saturating_sub(1)
            .min(TRIM_STEP as usize);
        for (offset, item) in inbox.entries.iter().take(older).enumerate() {
            if item.appended_ms == 0 {
                continue;
            }
            if item.appended_ms >= cutoff {
                break;
            }
            last = last.max(oldest + offset as u64);
        }
    }
    (last >= oldest).then_some(last)
}
