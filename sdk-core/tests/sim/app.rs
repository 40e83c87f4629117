//! App behaviour: sends, read markers, restarts, and the chaos the world inflicts.

use super::*;

impl World {
    pub(super) fn on_event(&mut self, device: usize, event: Event) -> Result<(), String> {
        let name = self.devices[device].name.clone();
        match &event {
            Event::MessageReceived(m) => {
                let Some(server_copy) = self.server.message(&m.conversation_id, m.seq) else {
                    return Err(format!(
                        "{name} received {}#{} which the server never stored",
                        m.conversation_id, m.seq
                    ));
                };
                if server_copy.client_msg_id != m.client_msg_id || server_copy.content != m.content
                {
                    return Err(format!(
                        "{name} received {}#{} with the wrong content",
                        m.conversation_id, m.seq
                    ));
                }
                if !self.devices[device]
                    .received
                    .insert((m.conversation_id.clone(), m.seq))
                {
                    return Err(format!(
                        "{name} received {}#{} twice",
                        m.conversation_id, m.seq
                    ));
                }
            }
            Event::MessageUpdated(m) if m.state == SendState::Sent => {
                let server_seq = self
                    .server
                    .find_send(&self.devices[device].user, &m.client_msg_id);
                if server_seq != Some((m.conversation_id.clone(), m.seq)) {
                    return Err(format!(
                        "{name}: {} marked Sent at {}#{} but the server has {server_seq:?}",
                        m.client_msg_id, m.conversation_id, m.seq
                    ));
                }
            }
            Event::MessageUpdated(m) if m.state == SendState::Failed => {
                // The app retries failed messages after a moment (they failed after the
                // attempt limit); the retried one may be overtaken by later sends (§12).
                self.stats.failed_then_retried += 1;
                if let Some(record) = self
                    .sent
                    .iter_mut()
                    .find(|r| r.device == device && r.local_id == m.local_id)
                {
                    record.retried = true;
                }
                let at = self.now + Duration::from_secs(1);
                self.schedule(
                    at,
                    Ev::AppRetry {
                        device,
                        local_id: m.local_id,
                    },
                );
            }
            Event::Synced { cursor } => {
                // "Synced" means everything up to the head announced at connect is applied.
                let head = self.devices[device].handshake_head;
                if *cursor < head {
                    return Err(format!(
                        "{name} reported Synced at cursor {cursor} below the handshake head {head}"
                    ));
                }
            }
            Event::StoreError(e) => return Err(format!("{name}: store error {e}")),
            Event::State(ConnectionState::Stopped(reason)) => {
                return Err(format!("{name} stopped: {reason:?}"));
            }
            _ => {}
        }
        // Answers to requests come from `poll_response`, not as events (the pump drops them:
        // nothing here depends on them, and a lost connection's come out in `HashMap` order).
        if self.trace != Trace::Off {
            let text = match &event {
                Event::ConversationUpdated(c) => format!(
                    "ConversationUpdated({} last {})",
                    c.conversation_id, c.last_seq
                ),
                Event::MessageReceived(m) | Event::MessageUpdated(m) | Event::MessageAdded(m) => {
                    format!(
                        "{} {}#{} {} {:?}",
                        match &event {
                            Event::MessageReceived(_) => "MessageReceived",
                            Event::MessageUpdated(_) => "MessageUpdated",
                            _ => "MessageAdded",
                        },
                        m.conversation_id,
                        m.seq,
                        m.client_msg_id,
                        m.state
                    )
                }
                other => format!("{other:?}"),
            };
            self.note(|| format!("{name} event {text}"));
        }
        Ok(())
    }

    /// The app on `device` sends a message now.
    pub fn send_now(&mut self, device: usize, recipient: Recipient) -> Result<(), String> {
        self.app_send(device, recipient)
    }

    pub(super) fn app_send(&mut self, device: usize, recipient: Recipient) -> Result<(), String> {
        let now = self.at();
        let now_ms = self.now_ms();
        if self.devices[device].client.is_none() {
            // The app is not running: the user sends once it is back.
            let at = self.now + Duration::from_millis(500);
            self.schedule(at, Ev::AppSend { device, recipient });
            return Ok(());
        }
        let n = self.sent.iter().filter(|r| r.device == device).count();
        let d = &mut self.devices[device];
        let content = format!("{} says #{n}", d.name).into_bytes();
        let client = d.client.as_mut().expect("checked above");
        let message = client
            .send(recipient.clone(), 0, content.clone(), now, now_ms)
            .map_err(|e| format!("{}: send failed locally: {e}", d.name))?;
        self.stats.sends += 1;
        let record = SentRecord {
            device,
            user: d.user.clone(),
            conversation_id: message.conversation_id.clone(),
            client_msg_id: message.client_msg_id.clone(),
            local_id: message.local_id,
            content,
            retried: false,
        };
        let name = d.name.clone();
        self.note(|| format!("{name} app send {} to {recipient:?}", record.client_msg_id));
        self.sent.push(record);
        self.pump(device)
    }

    pub(super) fn app_mark_read(&mut self, device: usize) -> Result<(), String> {
        let now = self.at();
        let d = &mut self.devices[device];
        let Some(client) = d.client.as_mut() else {
            return Ok(());
        };
        let conversations = client.local_conversations().map_err(|e| e.to_string())?;
        let candidates: Vec<_> = conversations
            .into_iter()
            .filter(|c| c.last_seq > 0)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let pick = &candidates[self.rng.random_range(0..candidates.len())];
        let seq = self.rng.random_range(1..=pick.last_seq);
        let conversation_id = pick.conversation_id.clone();
        self.devices[device]
            .client
            .as_mut()
            .expect("running")
            .mark_read(&conversation_id, seq, now);
        self.pump(device)
    }

    pub(super) fn app_start(&mut self, device: usize) -> Result<(), String> {
        let config = self.client_config(device);
        let now = self.at();
        let d = &mut self.devices[device];
        if d.client.is_some() {
            return Ok(());
        }
        d.incarnation += 1;
        d.background = false;
        let token = server::token(&d.user);
        let mut client =
            Client::new(config, d.disk.clone(), now).map_err(|e| format!("{}: {e}", d.name))?;
        client.set_token(token, now);
        client.connect(now);
        d.client = Some(client);
        let name = d.name.clone();
        self.note(|| format!("{name} app starts"));
        self.pump(device)
    }

    /// The app process dies and its disk stays: the store is snapshotted as it is now (every
    /// store call is atomic, as a SQLite transaction would be) and the client dropped.
    pub fn app_crash(&mut self, device: usize, downtime: Duration) {
        let d = &mut self.devices[device];
        let Some(client) = d.client.take() else {
            return;
        };
        d.disk = client.store().clone();
        drop(client);
        let name = d.name.clone();
        self.stats.app_restarts += 1;
        self.note(|| format!("{name} app crashes"));
        if let Some(link) = self.devices[device].link.take() {
            self.client_drops(link);
        }
        if let Some(pending) = self.devices[device].connecting.take() {
            self.client_drops(pending);
        }
        self.schedule(self.now + downtime, Ev::AppStart { device });
    }

    /// The server process restarts: every session is gone, clients see the close (or, for
    /// `silent_share` of them, nothing at all), connects are refused for `downtime`.
    pub fn server_crash(&mut self, downtime: Duration, silent_share: f64) {
        self.stats.server_restarts += 1;
        self.note(|| "server crashes".into());
        self.server_up = false;
        let graceful = self.rng.random_bool(0.3);
        let conns = self.server.restart();
        for conn in conns {
            if graceful && !self.conns[&conn].lost_to_client {
                // A draining server kicks every connection first (§5).
                let retry_after_ms = self.rng.random_range(0..3000);
                let kick = pb::Kick {
                    reason: pb::KickReason::ServerShutdown as i32,
                    retry_after_ms,
                    ..Default::default()
                };
                self.send_to_client(conn, Frame::push(kick));
                self.server_drops(conn);
                self.conns
                    .get_mut(&conn)
                    .expect("known conn")
                    .lost_to_server = true;
                continue;
            }
            let silent = self.rng.random_bool(silent_share);
            let latency = self.short_latency();
            let c = self.conns.get_mut(&conn).expect("known conn");
            c.server_open = false;
            c.lost_to_server = true;
            if silent {
                c.lost_to_client = true;
            } else if c.client_open {
                self.schedule(
                    self.now + latency,
                    Ev::ClientSeesClose { conn, forced: true },
                );
            }
        }
        self.schedule(self.now + downtime, Ev::ServerStart);
    }

    /// The server comes back with its store replaced by an empty one (a restore from a backup
    /// taken before anything was written, a wiped volume): every connection sees the close,
    /// connects are refused for `downtime`, and the messages acknowledged so far are gone from
    /// the server, so the world stops expecting them (those still in an outbox are sent again).
    pub fn server_restore_empty(&mut self, downtime: Duration) {
        self.stats.server_restarts += 1;
        self.note(|| "server restored from an empty backup".into());
        self.server_up = false;
        let conns = self.server.restore_empty();
        for conn in conns {
            let latency = self.short_latency();
            let c = self.conns.get_mut(&conn).expect("known conn");
            c.server_open = false;
            c.lost_to_server = true;
            if c.client_open && !c.lost_to_client {
                self.schedule(
                    self.now + latency,
                    Ev::ClientSeesClose { conn, forced: true },
                );
            }
        }
        let devices = &self.devices;
        self.sent.retain(|r| {
            devices[r.device]
                .store()
                .outbox_get(r.local_id)
                .is_ok_and(|item| item.is_some())
        });
        self.schedule(self.now + downtime, Ev::ServerStart);
    }

    /// Cuts a device's link. `kind`: 0 both ends see a reset, 1 only the client, 2 only the
    /// server, 3 silently (half-dead both ways), 4 only server→client traffic dies, 5 only
    /// client→server traffic dies.
    pub fn cut(&mut self, device: usize, kind: u32) {
        let Some(conn) = self.devices[device].link else {
            return;
        };
        self.stats.cuts += 1;
        self.note(|| format!("cut conn {conn} kind {kind}"));
        let l1 = self.short_latency();
        let l2 = self.short_latency();
        let c = self.conns.get_mut(&conn).expect("known conn");
        match kind {
            4 => c.lost_to_client = true,
            5 => c.lost_to_server = true,
            _ => {
                c.lost_to_client = true;
                c.lost_to_server = true;
            }
        }
        if kind == 0 || kind == 1 {
            self.schedule(self.now + l1, Ev::ClientSeesClose { conn, forced: true });
        }
        if kind == 0 || kind == 2 {
            self.schedule(self.now + l2, Ev::ServerSeesClose { conn, forced: true });
        }
    }

    pub(super) fn chaos(&mut self) -> Result<(), String> {
        if self.now >= self.chaos_until {
            return Ok(());
        }
        let weights = self.faults.chaos_weights;
        let total: u32 = weights.iter().sum();
        if total > 0 {
            let mut roll = self.rng.random_range(0..total);
            let mut kind = 0;
            while roll >= weights[kind] {
                roll -= weights[kind];
                kind += 1;
            }
            let device = self.rng.random_range(0..self.devices.len());
            match kind {
                0 => {
                    let how = self.rng.random_range(0..6);
                    self.cut(device, how);
                }
                1 => {
                    let downtime = Duration::from_millis(self.rng.random_range(100..8_000));
                    self.app_crash(device, downtime);
                }
                2 if self.server_up => {
                    let downtime = Duration::from_millis(self.rng.random_range(500..20_000));
                    let silent = self.rng.random_range(0.0..0.5);
                    self.server_crash(downtime, silent);
                }
                3 => {
                    let now = self.at();
                    // Either the app reports a network change, or the connector found a
                    // better route and the session moves to a new connection.
                    let moves = self.rng.random_bool(0.5);
                    if let Some(client) = self.devices[device].client.as_mut() {
                        if moves {
                            client.move_connection(now);
                        } else {
                            client.network_changed(now);
                        }
                        self.pump(device)?;
                    }
                }
                4 => {
                    let now = self.at();
                    let background = !self.devices[device].background;
                    if let Some(client) = self.devices[device].client.as_mut() {
                        client.set_background(background, now);
                        self.devices[device].background = background;
                        self.pump(device)?;
                    }
                }
                _ => {}
            }
        }
        if let Some(every) = self.faults.chaos_every {
            let gap = Duration::from_millis(self.rng.random_range(0..every.as_millis() as u64 * 2));
            self.schedule(self.now + gap, Ev::Chaos);
        }
        Ok(())
    }
}
