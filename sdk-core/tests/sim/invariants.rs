//! The invariants: checked after every step, when the world settles, and at the end.

use super::*;

impl World {
    /// Cheap checks after every step.
    pub(super) fn check_step(&mut self) -> Result<(), String> {
        if let Some(v) = self.server.violations.first() {
            return Err(format!("the server saw a protocol violation: {v}"));
        }
        for i in 0..self.devices.len() {
            let Some(epoch) = self.devices[i]
                .client
                .as_ref()
                .map(|c| c.store().inbox_epoch())
            else {
                continue;
            };
            let epoch = epoch.map_err(|e| e.to_string())?;
            if epoch != self.devices[i].epoch_seen {
                // The device moved to another inbox numbering (a restored server): its cursor
                // starts over, and the entries it verified belonged to the old one.
                let d = &mut self.devices[i];
                d.epoch_seen = epoch;
                d.cursor_seen = 0;
                d.verified_to = 0;
            }
            let d = &self.devices[i];
            let Some(client) = d.client.as_ref() else {
                continue;
            };
            let cursor = client.cursor();
            let head = self.server.head(&d.user);
            if epoch != 0 && epoch != self.server.inbox_epoch() {
                // Still following the replaced server's numbering until it reconnects: its
                // cursor counts in another inbox.
                continue;
            }
            if cursor < d.cursor_seen {
                return Err(format!(
                    "{}: cursor went back from {} to {cursor}",
                    d.name, d.cursor_seen
                ));
            }
            if cursor > head {
                return Err(format!(
                    "{}: cursor {cursor} above the inbox head {head}",
                    d.name
                ));
            }
            // The cursor never moves past an entry that was not applied (§10.3): every message
            // entry up to the cursor is in the store (each entry is checked once per device).
            if cursor > d.verified_to {
                let inbox = self.server.inbox(&d.user);
                for entry in &inbox[d.verified_to as usize..cursor as usize] {
                    if let Some(pb::inbox_entry::Body::Message(m)) = &entry.body {
                        let stored = client
                            .store()
                            .message(&m.conversation_id, m.conversation_seq)
                            .map_err(|e| e.to_string())?;
                        if stored
                            .as_ref()
                            .is_none_or(|s| s.client_msg_id != m.client_msg_id)
                        {
                            return Err(format!(
                                "{}: cursor at {cursor} but inbox entry {} ({}#{}) is not in the store: {stored:?}",
                                d.name, entry.inbox_seq, m.conversation_id, m.conversation_seq
                            ));
                        }
                    }
                }
            }
            let d = &mut self.devices[i];
            d.cursor_seen = cursor;
            d.verified_to = d.verified_to.max(cursor);
        }
        Ok(())
    }

    /// Everything has arrived everywhere: every app running and online, every cursor at its
    /// user's head, every outbox empty.
    pub fn settled(&self) -> bool {
        let timelines = self.server.timelines();
        self.devices.iter().enumerate().all(|(i, d)| {
            let Some(client) = d.client.as_ref() else {
                return false;
            };
            // A link that died silently, or still carries a frame delayed during the faults,
            // must be dealt with first.
            let in_flight_limit = self.now + Duration::from_secs(1);
            let healthy = d.link.and_then(|l| self.conns.get(&l)).is_some_and(|c| {
                c.client_open
                    && c.server_open
                    && !c.lost_to_client
                    && !c.lost_to_server
                    && c.last_to_client <= in_flight_limit
                    && c.last_to_server <= in_flight_limit
            });
            // A read-fan-out group's messages come by GROUP_PUSH and catch-up pages, not the
            // inbox: its newest message must be there too.
            let caught_up = timelines.iter().all(|(conversation_id, timeline)| {
                timeline.is_empty()
                    || !self.server.participants(conversation_id).contains(&d.user)
                    || client
                        .store()
                        .message(conversation_id, timeline.len() as u64)
                        .is_ok_and(|m| m.is_some())
            });
            healthy
                && caught_up
                && client.state() == ConnectionState::Online
                && client.cursor() == self.server.head(&d.user)
                && self.sent.iter().filter(|r| r.device == i).all(|r| {
                    client
                        .store()
                        .outbox_get(r.local_id)
                        .is_ok_and(|item| item.is_none())
                })
        })
    }

    /// A description of where each device stands (for stall reports).
    pub fn dump(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "server up {} holds pushes {}",
            self.server_up,
            self.server.holds_pushes()
        );
        for (i, d) in self.devices.iter().enumerate() {
            let pending = d.store().outbox_pending().map(|p| p.len()).unwrap_or(0);
            let unacked = self
                .sent
                .iter()
                .filter(|r| r.device == i)
                .filter(|r| !matches!(d.store().outbox_get(r.local_id), Ok(None)))
                .count();
            let _ = writeln!(
                s,
                "  {}: state {:?} cursor {} head {} outbox pending {pending} unacked {unacked} link {:?} connecting {:?} next timeout {:?}",
                d.name,
                d.client.as_ref().map(|c| c.state()),
                d.client
                    .as_ref()
                    .map(|c| c.cursor())
                    .unwrap_or(d.cursor_seen),
                self.server.head(&d.user),
                d.link,
                d.connecting,
                d.client
                    .as_ref()
                    .and_then(|c| c.next_timeout())
                    .map(|t| t.saturating_duration_since(self.base)),
            );
        }
        s
    }

    /// The end-of-run invariants.
    pub fn check_final(&self) -> Result<(), String> {
        // Every send call was stored exactly once and is Sent on its device at the server's seq.
        let mut by_key: BTreeMap<(String, String), usize> = BTreeMap::new();
        let timelines = self.server.timelines();
        for timeline in timelines.values() {
            for m in timeline {
                *by_key
                    .entry((m.sender_user.clone(), m.client_msg_id.clone()))
                    .or_default() += 1;
            }
        }
        for r in &self.sent {
            let key = (r.user.clone(), r.client_msg_id.clone());
            let count = by_key.get(&key).copied().unwrap_or(0);
            if count != 1 {
                return Err(format!(
                    "{} ({}) is stored {count} times on the server",
                    r.client_msg_id, r.conversation_id
                ));
            }
            let Some((conversation_id, seq)) = self.server.find_send(&r.user, &r.client_msg_id)
            else {
                return Err(format!("{} has no dedup record", r.client_msg_id));
            };
            if conversation_id != r.conversation_id {
                return Err(format!(
                    "{} went to {conversation_id}, not {}",
                    r.client_msg_id, r.conversation_id
                ));
            }
            let d = &self.devices[r.device];
            let history = d
                .store()
                .history(&r.conversation_id, 0, u32::MAX)
                .map_err(|e| e.to_string())?;
            let copies: Vec<_> = history
                .iter()
                .filter(|m| m.client_msg_id == r.client_msg_id)
                .collect();
            match copies.as_slice() {
                [m] if m.state == SendState::Sent
                    && m.seq == seq
                    && m.local_id == r.local_id
                    && m.content == r.content => {}
                other => {
                    return Err(format!(
                        "{}: own message {} should be Sent once at seq {seq}, found {other:?}",
                        d.name, r.client_msg_id
                    ));
                }
            }
        }
        if by_key.len() != self.sent.len() {
            return Err(format!(
                "the server stored {} messages, the apps sent {}",
                by_key.len(),
                self.sent.len()
            ));
        }
        // Every device of every participant has every message of its conversations exactly
        // once, in seq order with no gaps, and nothing else.
        for d in &self.devices {
            for (conversation_id, timeline) in &timelines {
                let party = self.server.participants(conversation_id).contains(&d.user);
                let history = d
                    .store()
                    .history(conversation_id, 0, u32::MAX)
                    .map_err(|e| e.to_string())?;
                if !party {
                    if !history.is_empty() {
                        return Err(format!(
                            "{} holds messages of {conversation_id}, which is not its user's",
                            d.name
                        ));
                    }
                    continue;
                }
                let seqs: Vec<u64> = history.iter().rev().map(|m| m.seq).collect();
                let expected: Vec<u64> = (1..=timeline.len() as u64).collect();
                if seqs != expected {
                    return Err(format!(
                        "{}: {conversation_id} holds seqs {seqs:?}, the server {expected:?}",
                        d.name
                    ));
                }
                for (local, server) in history.iter().rev().zip(timeline) {
                    if local.client_msg_id != server.client_msg_id
                        || local.sender != server.sender_user
                        || local.content != server.content
                        || local.state != SendState::Sent
                    {
                        return Err(format!(
                            "{}: {conversation_id}#{} differs from the server's: {local:?}",
                            d.name, local.seq
                        ));
                    }
                }
            }
            // The cursor equals the user's inbox head, in memory and on disk.
            let head = self.server.head(&d.user);
            let cursor = d.client.as_ref().map(|c| c.cursor());
            let stored = d.store().cursor().map_err(|e| e.to_string())?;
            if cursor != Some(head) || stored != head {
                return Err(format!(
                    "{}: cursor {cursor:?} (stored {stored}) but head {head}",
                    d.name
                ));
            }
            let state = d.client.as_ref().map(|c| c.state());
            if state != Some(ConnectionState::Online) {
                return Err(format!("{} is stuck in {state:?}", d.name));
            }
        }
        // Messages one device sent to one conversation got increasing seqs in send order;
        // except that a send answered with a retryable error, or failed and retried, may be
        // overtaken by the sends after it (§12).
        let mut last: BTreeMap<(usize, String), (u64, String)> = BTreeMap::new();
        for r in &self.sent {
            let exempt = r.retried
                || self
                    .server
                    .unavailable_sends
                    .contains(&(r.user.clone(), r.client_msg_id.clone()));
            if exempt {
                continue;
            }
            let (_, seq) = self
                .server
                .find_send(&r.user, &r.client_msg_id)
                .expect("checked above");
            let key = (r.device, r.conversation_id.clone());
            if let Some((previous, previous_id)) = last.get(&key)
                && seq <= *previous
            {
                return Err(format!(
                    "{}: {} was sent after {previous_id} in {} but got seq {seq} <= {previous}",
                    self.devices[r.device].name, r.client_msg_id, r.conversation_id
                ));
            }
            last.insert(key, (seq, r.client_msg_id.clone()));
        }
        Ok(())
    }
}
