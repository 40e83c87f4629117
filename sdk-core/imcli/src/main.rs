//! `imcli`: a command-line chat client on sdk-core, so the system can be tried in two
//! terminals. Human-readable output by default; `--json` prints one JSON object per line.
//!
//! Exit codes: 0 success, 2 bad arguments, 3 server unreachable, 4 token refused,
//! 5 request refused or timed out, 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use im_protocol::ids;
use sdk_core::driver::{self, ClientHandle, DriverError, DriverOptions, EventStream};
use sdk_core::sqlite::SqliteStore;
use sdk_core::{
    ClientConfig, ConnectionState, Connector, Event, GroupEventKind, GroupInfo, GroupRole,
    HttpProxyConnector, HttpTunnelConnector, LocalMessage, Platform, Recipient, SendState,
    ServerAddress, StopReason, TcpConnector, TlsConnector, TlsTrust,
};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "imcli", version, about = "Command-line IM client")]
struct Cli {
    /// Server address: host:port (a host name or an IP address), or [IPv6]:port.
    #[arg(long, env = "IM_SERVER", default_value = "127.0.0.1:8080")]
    server: String,
    /// Token (from your app server, or `im-server token --user NAME`).
    #[arg(long, env = "IM_TOKEN")]
    token: String,
    /// Device id (default: the token's device, else the first of cli-1, cli-2, … that no
    /// other imcli of this user is using right now, so `follow` in one terminal and commands in
    /// another do not log each other out).
    #[arg(long)]
    device: Option<String>,
    /// Local database (default: ~/.local/share/imcli/USER-DEVICE.sqlite3).
    #[arg(long)]
    db: Option<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the server before giving up.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// How to reach the server: plain TCP (the server's --listen port), TLS (its --tls-listen
    /// port; the certificate must name the --server host), or the HTTP tunnel over HTTP
    /// (`http`, the --listen port) or HTTPS (`https`, the --tls-listen port).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// PEM file of a CA to trust for TLS instead of the public Web PKI roots, such as a
    /// development server's DATA_DIR/tls/cert.pem.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// An HTTP proxy (host:port) to go through: CONNECT for tls and https, plain requests
    /// for http. Not used with tcp.
    #[arg(long)]
    proxy: Option<ServerAddress>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP, the certificate verified.
    Tls,
    /// The HTTP tunnel over plain HTTP.
    Http,
    /// The HTTP tunnel over HTTPS, the certificate verified.
    Https,
}

/// The connector for `--transport` and `--ca-cert`.
fn connector(cli: &Cli) -> Result<Arc<dyn Connector>, Failure> {
    let trust = match &cli.ca_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| fail(2, anyhow!("--ca-cert {}: {e}", path.display())))?;
            TlsTrust::pinned_ca_pem(&pem)
                .map_err(|e| fail(2, anyhow!("--ca-cert {}: {e}", path.display())))?
        }
        None => TlsTrust::default(),
    };
    let tcp: Arc<dyn Connector> = match &cli.proxy {
        Some(proxy) => Arc::new(HttpProxyConnector::new(proxy.clone())),
        None => Arc::new(TcpConnector),
    };
    let tls = || -> Result<Arc<dyn Connector>, Failure> {
        Ok(Arc::new(
            TlsConnector::over(&trust, tcp.clone())
                .map_err(|e| fail(2, anyhow!("--ca-cert: {e}")))?,
        ))
    };
    Ok(match (cli.transport, &cli.proxy) {
        (Transport::Tcp, Some(_)) => {
            return Err(fail(
                2,
                anyhow!("--proxy needs --transport tls, http or https"),
            ));
        }
        (Transport::Tcp, None) => Arc::new(TcpConnector),
        (Transport::Tls, _) => tls()?,
        (Transport::Http, Some(proxy)) => Arc::new(HttpTunnelConnector::via_proxy(proxy.clone())),
        (Transport::Http, None) => Arc::new(HttpTunnelConnector::direct(Arc::new(TcpConnector))),
        (Transport::Https, _) => Arc::new(HttpTunnelConnector::direct(tls()?)),
    })
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send TEXT to a user, or to a group written g:GROUP_ID.
    Send { to: String, text: String },
    /// Print incoming messages and events live until interrupted.
    Follow,
    /// List conversations with unread counts.
    Conversations,
    /// Page the history with PEER (a user, or g:GROUP_ID), newest first.
    History {
        peer: String,
        /// Only messages below this seq.
        #[arg(long, default_value_t = 0)]
        before: u64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Mark the conversation with PEER read.
    Read { peer: String },
    /// Recall one of your messages.
    Recall { peer: String, seq: u64 },
    /// Group management.
    Group {
        #[command(subcommand)]
        command: GroupCmd,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Create a group with the given members (you are the owner).
    Create {
        name: String,
        members: Vec<String>,
        /// A broadcast channel: only you post and add members.
        #[arg(long)]
        channel: bool,
    },
    /// Add members.
    Add { group: String, members: Vec<String> },
    /// Remove members (owner only).
    Remove { group: String, members: Vec<String> },
    /// Leave a group.
    Leave { group: String },
    /// List members.
    Members { group: String },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn fail(code: u8, error: anyhow::Error) -> Failure {
    Failure { code, error }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        fail(1, error)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("imcli: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            if json {
                println!(
                    "{}",
                    json!({"type": "error", "exit_code": code, "message": format!("{error:#}")})
                );
            }
            eprintln!("imcli: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Reads the claims of a token without verifying it (the server verifies): the CLI only needs
/// to know whose token it is.
fn token_claims(token: &str) -> Result<(String, Option<String>), Failure> {
    let payload = token.split('.').nth(1).ok_or_else(|| {
        fail(
            4,
            anyhow!("the token is not a JWT (header.payload.signature)"),
        )
    })?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| fail(4, anyhow!("the token's payload is not base64url")))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| fail(4, anyhow!("the token's payload is not JSON")))?;
    let user = claims["sub"]
        .as_str()
        .ok_or_else(|| fail(4, anyhow!("the token has no sub claim")))?
        .to_owned();
    let device = claims["dev"].as_str().map(str::to_owned);
    Ok((user, device))
}

/// A user id, or `g:GROUP` for a group.
fn recipient(target: &str) -> Result<Recipient, Failure> {
    let bad = |e: ids::IdError| fail(2, anyhow!("{target:?}: {e}"));
    match target.strip_prefix("g:") {
        Some(group) => {
            ids::validate_id(group, "group id").map_err(bad)?;
            Ok(Recipient::Group(group.to_owned()))
        }
        None => {
            ids::validate_id(target, "user id").map_err(bad)?;
            Ok(Recipient::User(target.to_owned()))
        }
    }
}

fn conversation_of(me: &str, target: &str) -> Result<String, Failure> {
    Ok(match recipient(target)? {
        Recipient::User(user) => ids::direct_conversation_id(me, &user),
        Recipient::Group(group) => ids::group_conversation_id(&group),
    })
}

fn data_dir() -> Result<PathBuf, Failure> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .ok_or_else(|| fail(2, anyhow!("no HOME: pass --db PATH and --device ID")))?;
    let dir = base.join("imcli");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn default_db(user: &str, device: &str) -> Result<PathBuf, Failure> {
    Ok(data_dir()?.join(format!("{user}-{device}.sqlite3")))
}

/// Device slots a user's concurrent imcli processes choose from.
const DEVICE_SLOTS: u32 = 8;

/// Picks the first device `cli-N` no other imcli process of `user` holds, and holds it (an
/// exclusive lock on its lock file) until this process exits. One device per running process
/// means two terminals never log each other out (SPEC §5: a second login of the same device
/// kicks the first), while a process started later reuses a free slot and its local database,
/// so `follow` still resumes where it stopped.
fn lease_device(user: &str) -> Result<(String, std::fs::File), Failure> {
    let dir = data_dir()?;
    for slot in 1..=DEVICE_SLOTS {
        let device = format!("cli-{slot}");
        let path = dir.join(format!("{user}-{device}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok((device, file)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow!("locking {}: {e}", path.display()).into());
            }
        }
    }
    Err(fail(
        2,
        anyhow!("{DEVICE_SLOTS} imcli processes of {user} are running already: pass --device ID"),
    ))
}

struct Session {
    handle: ClientHandle,
    events: EventStream,
    me: String,
    json: bool,
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let (me, token_device) = token_claims(&cli.token)?;
    // Held until the process exits: the lock keeps the device slot ours.
    let mut _device_lease = None;
    let device = match cli.device.clone().or(token_device) {
        Some(device) => device,
        None => {
            let (device, lease) = lease_device(&me)?;
            _device_lease = Some(lease);
            device
        }
    };
    ids::validate_id(&device, "device").map_err(|e| fail(2, anyhow!("--device: {e}")))?;
    let server: ServerAddress = cli
        .server
        .parse()
        .map_err(|e| fail(2, anyhow!("--server: {e}")))?;
    let connector = connector(&cli)?;
    // Probe once so an unreachable server is reported plainly instead of retried in silence.
    tokio::time::timeout(Duration::from_secs(cli.timeout), connector.connect(&server))
        .await
        .map_err(|_| fail(3, anyhow!("cannot reach server {server}: timed out")))?
        .map_err(|e| fail(3, anyhow!("cannot reach server {server}: {e}")))?;

    let db = match &cli.db {
        Some(path) => path.clone(),
        None => default_db(&me, &device)?,
    };
    let store = SqliteStore::open(&db)
        .with_context(|| format!("opening local database {}", db.display()))?;
    let mut config = ClientConfig::new(me.clone(), device);
    config.platform = Platform::Desktop;
    config.client_version = concat!("imcli/", env!("CARGO_PKG_VERSION")).into();
    let (handle, events) = driver::start(
        server,
        cli.token.clone(),
        config,
        store,
        DriverOptions {
            connector,
            ..DriverOptions::default()
        },
        &tokio::runtime::Handle::current(),
    )
    .with_context(|| format!("reading local database {}", db.display()))?;
    let mut session = Session {
        handle,
        events,
        me,
        json: cli.json,
    };
    let wait = Duration::from_secs(cli.timeout);
    session.wait_synced(wait).await?;

    let result = match cli.command {
        Cmd::Send { to, text } => session.send(&to, &text, wait).await,
        Cmd::Follow => session.follow().await,
        Cmd::Conversations => session.conversations().await,
        Cmd::History {
            peer,
            before,
            limit,
        } => session.history(&peer, before, limit).await,
        Cmd::Read { peer } => session.read(&peer).await,
        Cmd::Recall { peer, seq } => {
            let conversation_id = conversation_of(&session.me, &peer)?;
            session
                .handle
                .recall(&conversation_id, seq)
                .await
                .map_err(refused)
                .map(|_| {
                    session.line(
                        json!({"type": "recalled", "peer": peer, "seq": seq}),
                        format!("recalled {seq}"),
                    );
                })
        }
        Cmd::Group { command } => session.group(command).await,
    };
    let _ = session.handle.shutdown().await;
    result
}

/// A request the server refused or that could not be made: exit code 5.
fn refused(e: DriverError) -> Failure {
    fail(5, anyhow!(e))
}

/// The protocol's number of a group event kind (`GroupEventKind` in messaging.proto), which
/// `--json` output has always carried.
fn kind_number(kind: GroupEventKind) -> i32 {
    match kind {
        GroupEventKind::Created => 1,
        GroupEventKind::MembersAdded => 2,
        GroupEventKind::MembersRemoved => 3,
        GroupEventKind::MemberJoined => 4,
        GroupEventKind::MemberLeft => 5,
        GroupEventKind::Unknown(number) => number,
    }
}

fn message_json(m: &LocalMessage) -> serde_json::Value {
    json!({
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "sender": m.sender,
        "text": String::from_utf8_lossy(&m.content),
        "time_ms": m.time_ms,
        "state": format!("{:?}", m.state).to_lowercase(),
        "recalled": m.recalled,
        "client_msg_id": m.client_msg_id,
    })
}

fn message_text(m: &LocalMessage) -> String {
    let body = if m.recalled {
        "(recalled)".to_string()
    } else {
        String::from_utf8_lossy(&m.content).into_owned()
    };
    format!("[{}] #{} {}: {}", m.conversation_id, m.seq, m.sender, body)
}

impl Session {
    fn line(&self, value: serde_json::Value, text: String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    /// Waits until the client is online and caught up, or reports why it cannot be.
    async fn wait_synced(&mut self, wait: Duration) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| fail(3, anyhow!("the server did not let us in within {wait:?}")))?
                .ok_or_else(|| fail(1, anyhow!("the client stopped")))?;
            match event {
                Event::Synced { .. } => return Ok(()),
                Event::State(ConnectionState::Stopped(reason)) => {
                    let why = match reason {
                        StopReason::TokenExpired => {
                            "the token has expired: get a new one".to_string()
                        }
                        StopReason::AuthFailed(message) => {
                            format!("the server refused the token: {message}")
                        }
                        StopReason::LoggedInElsewhere => {
                            "this device logged in elsewhere".to_string()
                        }
                    };
                    return Err(fail(4, anyhow!(why)));
                }
                _ => {}
            }
        }
    }

    async fn send(&mut self, to: &str, text: &str, wait: Duration) -> Result<(), Failure> {
        let sent = self
            .handle
            .send_text(recipient(to)?, text)
            .await
            .map_err(|e| fail(1, anyhow!(e)))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| fail(5, anyhow!("no acknowledgement within {wait:?}; the message stays in the outbox and is resent on the next run")))?
                .ok_or_else(|| fail(1, anyhow!("the client stopped")))?;
            if let Event::MessageUpdated(m) = event
                && m.local_id == sent.local_id
            {
                match m.state {
                    SendState::Sent => {
                        self.line(
                            json!({"type": "sent", "message": message_json(&m)}),
                            format!("sent #{} to {}", m.seq, m.conversation_id),
                        );
                        return Ok(());
                    }
                    SendState::Failed => {
                        return Err(fail(5, anyhow!("the server refused the message")));
                    }
                    SendState::Sending => {}
                }
            }
        }
    }

    async fn follow(&mut self) -> Result<(), Failure> {
        if !self.json {
            eprintln!("following as {} (Ctrl-C to stop)", self.me);
        }
        loop {
            let event = tokio::select! {
                event = self.events.recv() => event,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let Some(event) = event else { return Ok(()) };
            match event {
                Event::MessageReceived(m) => self.line(json!({"type": "message", "message": message_json(&m)}), message_text(&m)),
                Event::MessageRecalled { conversation_id, seq } => self.line(
                    json!({"type": "recalled", "conversation_id": conversation_id, "seq": seq}),
                    format!("[{conversation_id}] #{seq} was recalled"),
                ),
                Event::ReadReceipt { conversation_id, reader, read_seq } => self.line(
                    json!({"type": "read", "conversation_id": conversation_id, "reader": reader, "read_seq": read_seq}),
                    format!("[{conversation_id}] {reader} read up to #{read_seq}"),
                ),
                Event::Typing(t) => self.line(
                    json!({"type": "typing", "conversation_id": t.conversation_id, "user": t.user_id, "typing": t.typing}),
                    format!("[{}] {} {}", t.conversation_id, t.user_id, if t.typing { "is typing…" } else { "stopped typing" }),
                ),
                Event::GroupChanged(g) => self.line(
                    json!({"type": "group", "group_id": g.group_id, "kind": kind_number(g.kind), "actor": g.actor, "members": g.members}),
                    format!("[g:{}] group changed by {}: {:?} {:?}", g.group_id, g.actor, g.kind, g.members),
                ),
                Event::State(state)
                    if !self.json => {
                        eprintln!("connection: {state:?}");
                    }
                _ => {}
            }
        }
    }

    async fn conversations(&self) -> Result<(), Failure> {
        let list = self
            .handle
            .conversations()
            .await
            .map_err(|e| fail(1, anyhow!(e)))?;
        if list.is_empty() && !self.json {
            println!("no conversations yet");
        }
        for c in list {
            let last = c
                .last_message
                .as_ref()
                .map(|m| String::from_utf8_lossy(&m.content).into_owned())
                .unwrap_or_default();
            let name = if c.title.is_empty() {
                c.peer.clone()
            } else {
                c.title.clone()
            };
            self.line(
                json!({"type": "conversation", "conversation_id": c.conversation_id, "peer": c.peer, "title": c.title,
                       "unread": c.unread_count, "last_seq": c.last_seq, "read_seq": c.read_seq, "last_text": last}),
                format!("{:<24} {:>4} unread  #{:<5} {}", name, c.unread_count, c.last_seq, last),
            );
        }
        Ok(())
    }

    async fn history(&self, peer: &str, before: u64, limit: u32) -> Result<(), Failure> {
        let conversation_id = conversation_of(&self.me, peer)?;
        let messages = self
            .handle
            .history(&conversation_id, before, limit)
            .await
            .map_err(|e| match e {
                DriverError::Request(_) => refused(e),
                e => fail(1, anyhow!(e)),
            })?;
        for m in &messages {
            self.line(
                json!({"type": "message", "message": message_json(m)}),
                message_text(m),
            );
        }
        Ok(())
    }

    async fn read(&self, peer: &str) -> Result<(), Failure> {
        let conversation_id = conversation_of(&self.me, peer)?;
        let last = self
            .handle
            .conversations()
            .await
            .map_err(|e| fail(1, anyhow!(e)))?
            .into_iter()
            .find(|c| c.conversation_id == conversation_id)
            .map(|c| c.last_seq)
            .unwrap_or(0);
        let r = self
            .handle
            .mark_read(&conversation_id, last)
            .await
            .map_err(refused)?;
        self.line(
            json!({"type": "read_marker", "conversation_id": r.conversation_id, "read_seq": r.read_seq, "unread": r.unread_count}),
            format!("read {} up to #{} ({} unread)", r.conversation_id, r.read_seq, r.unread_count),
        );
        Ok(())
    }

    async fn group(&self, command: GroupCmd) -> Result<(), Failure> {
        let group_id = |g: &str| g.strip_prefix("g:").unwrap_or(g).to_owned();
        let print_group = |g: &GroupInfo, verb: &str| {
            self.line(
                json!({"type": "group", "action": verb, "group_id": g.group_id, "name": g.name, "owner": g.owner, "member_count": g.member_count, "broadcast": g.broadcast}),
                format!("{verb} group {} (g:{}), {} members", g.name, g.group_id, g.member_count),
            );
        };
        match command {
            GroupCmd::Create {
                name,
                members,
                channel,
            } => {
                let group = if channel {
                    self.handle.create_channel(&name, members, false, "").await
                } else {
                    self.handle.create_group(&name, members, false, "").await
                }
                .map_err(refused)?;
                print_group(&group, "created");
            }
            GroupCmd::Add { group, members } => {
                let change = self
                    .handle
                    .add_group_members(&group_id(&group), members)
                    .await
                    .map_err(refused)?;
                print_group(&change.group, "added to");
            }
            GroupCmd::Remove { group, members } => {
                let change = self
                    .handle
                    .remove_group_members(&group_id(&group), members)
                    .await
                    .map_err(refused)?;
                print_group(&change.group, "removed from");
            }
            GroupCmd::Leave { group } => {
                self.handle
                    .leave_group(&group_id(&group))
                    .await
                    .map_err(refused)?;
                self.line(
                    json!({"type": "left", "group_id": group_id(&group)}),
                    format!("left g:{}", group_id(&group)),
                );
            }
            GroupCmd::Members { group } => {
                let page = self
                    .handle
                    .group_members(&group_id(&group), 0, "")
                    .await
                    .map_err(refused)?;
                for m in page.members {
                    let role = match m.role {
                        GroupRole::Owner => "owner",
                        GroupRole::Member => "member",
                    };
                    self.line(
                        json!({"type": "member", "user_id": m.user_id, "role": role}),
                        format!("{} ({role})", m.user_id),
                    );
                }
            }
        }
        Ok(())
    }
}
