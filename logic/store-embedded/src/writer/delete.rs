//! Delete for me: hiding messages for one user.

use std::collections::BTreeSet;

use im_protocol::pb::{self, inbox_entry::Body};
use timeline_store::{Delivery, StoreResult};

use super::{WriteCtx, check_id, parse_conversation};
use crate::keys;

impl WriteCtx<'_> {
    pub(crate) fn delete_messages(
        &mut self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        check_id(user, "user id")?;
        parse_conversation(conversation_id)?;
        // A conversation's seqs have no holes, so 1..=head are exactly the messages that exist;
        // this spares a lookup per requested seq on the writer thread.
        let head = self.conversation_head(conversation_id)?;
        let wanted: BTreeSet<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| (1..=head).contains(seq))
            .collect();
        let ks = self.ks;
        let mut newly_hidden = Vec::new();
        for seq in wanted {
            let key = keys::hidden_key(user, conversation_id, seq);
            if self.get(&ks.hidden, &key)?.is_none() {
                self.put(&ks.hidden, key, Vec::new());
                newly_hidden.push(seq);
            }
        }
        if newly_hidden.is_empty() {
            return Ok((0, Vec::new()));
        }
        let count = newly_hidden.len() as u64;
        let delivery = self.append_event(
            user,
            Body::Delete(pb::DeleteEvent {
                conversation_id: conversation_id.to_owned(),
                conversation_seqs: newly_hidden,
            }),
            now_ms,
        )?;
        Ok((count, vec![delivery]))
    }
}
