//! The event loop: what happens at each step of simulated time.

use super::*;

impl World {
    /// When the next thing happens: (time, which) with 0 = queued event, 1 = a client timer,
    /// 2 = the server's timer.
    pub(super) fn next(&self) -> Option<(Duration, usize, usize)> {
        let mut best: Option<(Duration, usize, usize)> =
            self.queue.keys().next().map(|(t, _)| (*t, 0, 0));
        for (i, d) in self.devices.iter().enumerate() {
            if let Some(t) = d.client.as_ref().and_then(|c| c.next_timeout()) {
                let t = t.saturating_duration_since(self.base);
                if best.is_none_or(|(b, _, _)| t < b) {
                    best = Some((t, 1, i));
                }
            }
        }
        if let Some(t) = self.server.next_timeout()
            && best.is_none_or(|(b, _, _)| t < b)
        {
            best = Some((t, 2, 0));
        }
        best
    }

    /// One step; `Ok(false)` when nothing is left to happen.
    pub fn step(&mut self) -> Result<bool, String> {
        let Some((t, which, device)) = self.next() else {
            return Ok(false);
        };
        let t = t.max(self.now);
        self.now = t;
        self.stats.steps += 1;
        match which {
            0 => {
                let (_, ev) = self.queue.pop_first().expect("peeked");
                self.handle(ev)?;
            }
            1 => {
                let now = self.at();
                let d = &mut self.devices[device];
                d.same_instant_timeouts += 1;
                if d.same_instant_timeouts > 3 {
                    return Err(format!(
                        "{} busy-loops: next_timeout stays at {:?} after on_timeout (state {:?})",
                        d.name,
                        self.now,
                        d.client.as_ref().map(|c| c.state())
                    ));
                }
                let name = d.name.clone();
                self.note(|| format!("{name} timeout"));
                self.devices[device]
                    .client
                    .as_mut()
                    .expect("has a timer")
                    .on_timeout(now);
                self.pump(device)?;
            }
            _ => {
                let mut out = Vec::new();
                self.server.on_timeout(self.now, &mut out);
                self.server_outputs(out);
            }
        }
        for d in &mut self.devices {
            let due = d
                .client
                .as_ref()
                .and_then(|c| c.next_timeout())
                .is_some_and(|t| t <= self.base + self.now);
            if !due {
                d.same_instant_timeouts = 0;
            }
        }
        self.check_step()?;
        Ok(true)
    }

    pub(super) fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::ToServer { conn, frame } => {
                let c = &self.conns[&conn];
                if c.lost_to_server || !c.server_open {
                    return Ok(());
                }
                self.note(|| format!("server <- conn {conn}: {}", describe(&frame)));
                let mut out = Vec::new();
                self.server
                    .on_frame(conn, frame, self.now, &mut self.rng, &mut out);
                self.server_outputs(out);
            }
            Ev::ToClient { conn, frame } => {
                let c = &self.conns[&conn];
                let device = c.device;
                // Only the driver's current link is read; a dead connection's frames never
                // reach the machine.
                if c.lost_to_client || !c.client_open || self.devices[device].link != Some(conn) {
                    return Ok(());
                }
                let name = self.devices[device].name.clone();
                self.note(|| format!("{name} <- conn {conn}: {}", describe(&frame)));
                if let Ok(Body::HandshakeResp(hello)) = frame.decode_body() {
                    self.devices[device].handshake_head = hello.inbox_head_seq;
                }
                let now = self.at();
                self.devices[device]
                    .client
                    .as_mut()
                    .expect("a link implies a running app")
                    .on_frame(frame, now);
                self.pump(device)?;
            }
            Ev::ServerAccept { conn } => {
                if !self.conns[&conn].client_open {
                    return Ok(());
                }
                if !self.server_up {
                    let latency = self.short_latency();
                    self.schedule(self.now + latency, Ev::ConnectResult { conn, ok: false });
                    return Ok(());
                }
                self.note(|| format!("server accepts conn {conn}"));
                self.server.accept(conn, self.now);
                self.conns.get_mut(&conn).expect("known").server_open = true;
                let latency = self.short_latency();
                self.schedule(self.now + latency, Ev::ConnectResult { conn, ok: true });
            }
            Ev::ConnectResult { conn, ok } => {
                let device = self.conns[&conn].device;
                if self.devices[device].connecting != Some(conn) {
                    // Abandoned attempt: `client_drops` already closed it.
                    return Ok(());
                }
                self.devices[device].connecting = None;
                let name = self.devices[device].name.clone();
                self.note(|| {
                    format!(
                        "{name} conn {conn} connect {}",
                        if ok { "ok" } else { "failed" }
                    )
                });
                let now = self.at();
                if ok {
                    self.devices[device].link = Some(conn);
                    self.devices[device]
                        .client
                        .as_mut()
                        .expect("connecting implies running")
                        .on_connected(now);
                } else {
                    self.conns.get_mut(&conn).expect("known").client_open = false;
                    self.devices[device]
                        .client
                        .as_mut()
                        .expect("connecting implies running")
                        .on_disconnected(now);
                }
                self.pump(device)?;
            }
            Ev::ClientSeesClose { conn, forced } => {
                let c = self.conns.get_mut(&conn).expect("known");
                if !forced && c.lost_to_client {
                    return Ok(());
                }
                let device = c.device;
                c.client_open = false;
                if self.devices[device].link == Some(conn) {
                    self.devices[device].link = None;
                    let name = self.devices[device].name.clone();
                    self.note(|| format!("{name} sees conn {conn} close"));
                    let now = self.at();
                    self.devices[device]
                        .client
                        .as_mut()
                        .expect("running")
                        .on_disconnected(now);
                    self.pump(device)?;
                }
            }
            Ev::ServerSeesClose { conn, forced } => {
                let c = self.conns.get_mut(&conn).expect("known");
                if (!forced && c.lost_to_server) || !c.server_open {
                    return Ok(());
                }
                c.server_open = false;
                self.note(|| format!("server sees conn {conn} close"));
                self.server.on_closed(conn);
            }
            Ev::AppSend { device, recipient } => self.app_send(device, recipient)?,
            Ev::AppMarkRead { device } => self.app_mark_read(device)?,
            Ev::AppRetry { device, local_id } => {
                let now = self.at();
                match self.devices[device].client.as_mut() {
                    Some(client) => {
                        client.retry(local_id, now).map_err(|e| e.to_string())?;
                        self.pump(device)?;
                    }
                    None => self.schedule(
                        self.now + Duration::from_secs(1),
                        Ev::AppRetry { device, local_id },
                    ),
                }
            }
            Ev::AppStart { device } => self.app_start(device)?,
            Ev::Chaos => self.chaos()?,
            Ev::ServerStart => {
                self.note(|| "server up".into());
                self.server_up = true;
            }
        }
        Ok(())
    }

    /// Runs until simulated time `until` (or nothing is left to do).
    pub fn run_until(&mut self, until: Duration) -> Result<(), String> {
        while self.next().is_some_and(|(t, _, _)| t <= until) {
            self.step()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs until `done` holds (checked after every step) or `limit` passes.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        done: impl Fn(&World) -> bool,
    ) -> Result<bool, String> {
        loop {
            if done(self) {
                return Ok(true);
            }
            match self.next() {
                Some((t, _, _)) if t <= limit => {
                    self.step()?;
                }
                _ => {
                    self.now = self.now.max(limit);
                    return Ok(done(self));
                }
            }
        }
    }
}
