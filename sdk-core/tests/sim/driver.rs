//! The driver contract of `src/driver.rs`: what the world does for each action of a machine, and the network between devices and the server.

use super::*;

impl World {
    /// Carries out a device's actions, writes its frames, handles its events; as the tokio
    /// driver's loop does.
    pub(super) fn pump(&mut self, device: usize) -> Result<(), String> {
        loop {
            let Some(client) = self.devices[device].client.as_mut() else {
                return Ok(());
            };
            let mut actions = Vec::new();
            while let Some(action) = client.poll_action() {
                actions.push(action);
            }
            let mut progressed = !actions.is_empty();
            for action in actions {
                let name = self.devices[device].name.clone();
                self.note(|| format!("{name} action {action:?}"));
                match action {
                    Action::Connect => {
                        if let Some(old) = self.devices[device].link.take() {
                            self.client_drops(old);
                        }
                        if let Some(pending) = self.devices[device].connecting.take() {
                            self.client_drops(pending);
                        }
                        self.start_connect(device);
                    }
                    Action::Disconnect => {
                        if let Some(old) = self.devices[device].link.take() {
                            // Flush what is queued (a goodbye) before closing.
                            let client = self.devices[device].client.as_mut().expect("running");
                            let mut frames = Vec::new();
                            while let Some(frame) = client.poll_transmit() {
                                frames.push(frame);
                            }
                            for frame in frames {
                                self.send_to_server(old, frame);
                            }
                            self.client_drops(old);
                        }
                        if let Some(pending) = self.devices[device].connecting.take() {
                            self.client_drops(pending);
                        }
                    }
                }
            }
            let client = self.devices[device].client.as_mut().expect("running");
            let mut frames = Vec::new();
            while let Some(frame) = client.poll_transmit() {
                frames.push(frame);
            }
            let mut events = Vec::new();
            while let Some(event) = client.poll_event() {
                events.push(event);
            }
            while client.poll_response().is_some() {}
            progressed |= !frames.is_empty() || !events.is_empty();
            // Frames for a connection that no longer exists are void.
            if let Some(link) = self.devices[device].link {
                for frame in frames {
                    self.send_to_server(link, frame);
                }
            }
            for event in events {
                self.on_event(device, event)?;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    pub(super) fn start_connect(&mut self, device: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.stats.connects += 1;
        self.devices[device].connects += 1;
        self.devices[device].connecting = Some(conn);
        self.conns.insert(
            conn,
            Conn {
                device,
                client_open: true,
                server_open: false,
                lost_to_server: false,
                lost_to_client: false,
                last_to_server: self.now,
                last_to_client: self.now,
            },
        );
        let latency = self.short_latency();
        if !self.server_up || (self.faults_on && self.rng.random_bool(self.faults.refuse_connect)) {
            self.schedule(self.now + latency, Ev::ConnectResult { conn, ok: false });
        } else if self.faults_on && self.rng.random_bool(self.faults.blackhole_connect) {
            self.schedule(
                self.now + CONNECT_TIMEOUT,
                Ev::ConnectResult { conn, ok: false },
            );
        } else {
            self.schedule(self.now + latency, Ev::ServerAccept { conn });
        }
    }

    /// The driver lets go of a connection (closed, replaced or the process died): the server
    /// sees the close after the data already sent, unless that direction is dead.
    pub(super) fn client_drops(&mut self, conn: ConnId) {
        let latency = self.short_latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        c.client_open = false;
        if c.server_open && !c.lost_to_server {
            let at = (now + latency).max(c.last_to_server);
            self.schedule(
                at,
                Ev::ServerSeesClose {
                    conn,
                    forced: false,
                },
            );
        }
    }

    /// The server closes a connection: the client sees it after the data already sent.
    pub(super) fn server_drops(&mut self, conn: ConnId) {
        let latency = self.short_latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        c.server_open = false;
        if c.client_open && !c.lost_to_client {
            let at = (now + latency).max(c.last_to_client);
            self.schedule(
                at,
                Ev::ClientSeesClose {
                    conn,
                    forced: false,
                },
            );
        }
    }

    pub(super) fn maybe_drop_link(&mut self, conn: ConnId) -> bool {
        if self.faults_on && self.rng.random_bool(self.faults.drop_frame) {
            let c = self.conns.get_mut(&conn).expect("known conn");
            c.lost_to_server = true;
            c.lost_to_client = true;
            self.stats.dropped_links += 1;
            self.note(|| format!("conn {conn} goes half-dead"));
            return true;
        }
        false
    }

    pub(super) fn send_to_server(&mut self, conn: ConnId, frame: Frame) {
        self.stats.frames += 1;
        if self.conns[&conn].lost_to_server || self.maybe_drop_link(conn) {
            return;
        }
        let latency = self.latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        let at = (now + latency).max(c.last_to_server);
        c.last_to_server = at;
        self.schedule(at, Ev::ToServer { conn, frame });
    }

    pub(super) fn send_to_client(&mut self, conn: ConnId, frame: Frame) {
        self.stats.frames += 1;
        if self.conns[&conn].lost_to_client || self.maybe_drop_link(conn) {
            return;
        }
        let latency = self.latency();
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        let at = (now + latency).max(c.last_to_client);
        c.last_to_client = at;
        self.schedule(at, Ev::ToClient { conn, frame });
    }

    pub(super) fn server_outputs(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Frame(conn, frame) => self.send_to_client(conn, frame),
                Out::Close(conn) => self.server_drops(conn),
            }
        }
    }
}
