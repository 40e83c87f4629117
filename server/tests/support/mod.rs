//! Test harness: the real `im-server` binary as a child process on 127.0.0.1, and a minimal
//! protocol client over a real TCP socket.
//!
//! With `IM_TEST_TRANSPORT=memory`, servers started with [`Server::start`] run in the test's
//! process instead and every connection to them is an in-memory byte stream: the same suite
//! then checks the gateway's connection handling over a transport other than TCP. Tests that
//! kill, restart or measure the process use [`Server::start_process`], which always spawns.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use gateway::auth::{Claims, TokenKey};
use gateway::transport::memory::MemoryDialer;
use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub mod admin_http;
pub mod cluster;
pub mod http_proxy;
pub mod udp_relay;

/// Any ordered byte stream to a server.
pub trait TestStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TestStream for T {}
/// A connection to a server, over whichever transport the suite runs on.
pub type RawStream = Box<dyn TestStream>;

/// Whether this run serves its servers over in-memory streams (`IM_TEST_TRANSPORT=memory`).
pub fn memory_transport() -> bool {
    std::env::var("IM_TEST_TRANSPORT").is_ok_and(|t| t == "memory")
}

/// How a server runs.
enum Running {
    /// The `im-server` binary.
    Process(Child),
    /// In this process, on a runtime of its own (so it keeps serving whatever the test's
    /// runtime does), reached through its in-memory transport.
    InProcess {
        runtime: Option<tokio::runtime::Runtime>,
        dialer: MemoryDialer,
        shutdown: tokio_util::sync::CancellationToken,
        task: Option<tokio::task::JoinHandle<Result<(), im_server::app::ServerError>>>,
    },
}

/// Runs `f` on a thread of its own: a test's async code may not block its runtime's thread on
/// another runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().expect("no panic"))
}

pub const SECRET: &str = "integration-test-secret-6f1c2a9e4b7d3058";
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server.
pub struct Server {
    running: Running,
    pub addr: SocketAddr,
    /// The TLS listener's address, when started with `--tls-listen`.
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener's address, when started with `--admin-listen` (a process only).
    pub admin_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server with its store in `data_dir`: a process on a fresh port, or, with
    /// `IM_TEST_TRANSPORT=memory`, in this process behind in-memory streams.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        if memory_transport() {
            Server::start_in_process(data_dir, extra)
        } else {
            Server::start_process(data_dir, extra)
        }
    }

    /// Starts the `im-server` binary on a fresh port, whatever the transport of this run.
    pub fn start_process(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// Starts a server in this process with the binary's flags, reached over in-memory
    /// streams.
    pub fn start_in_process(data_dir: &Path, extra: &[&str]) -> Server {
        use clap::Parser as _;
        let data = data_dir.display().to_string();
        let mut args = vec!["im-server", "--listen", "127.0.0.1:0", "--data-dir", &data];
        if !extra.contains(&"--rate-limit") {
            args.extend(["--rate-limit", "0"]);
        }
        args.extend(extra);
        let cli = im_server::cli::Cli::try_parse_from(&args).expect("valid server flags");
        let options = cli
            .serve
            .options(data_dir.to_owned(), TokenKey::new(SECRET))
            .expect("valid server options");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the server");
        let running = off_runtime(|| runtime.block_on(im_server::app::start(options)))
            .expect("server starts");
        Server {
            addr: running.addr,
            tls_addr: running.tls_addr,
            admin_addr: running.admin_addr,
            running: Running::InProcess {
                dialer: running.dialer,
                shutdown: running.shutdown,
                task: Some(running.task),
                runtime: Some(runtime),
            },
            data_dir: data_dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// Opens a connection to the server over this run's transport.
    pub async fn connect_raw(&self) -> RawStream {
        match &self.running {
            Running::Process(_) => Box::new(TcpStream::connect(self.addr).await.expect("connect")),
            Running::InProcess { dialer, .. } => {
                Box::new(dialer.dial().await.expect("the server is listening"))
            }
        }
    }

    /// The client core's way to this server: TCP to a process, the in-memory transport to a
    /// server in this process.
    pub fn connector(&self) -> std::sync::Arc<dyn sdk_core::Connector> {
        match &self.running {
            Running::Process(_) => std::sync::Arc::new(sdk_core::TcpConnector),
            Running::InProcess { dialer, .. } => {
                std::sync::Arc::new(MemoryConnector(dialer.clone()))
            }
        }
    }

    fn child(&mut self) -> &mut Child {
        match &mut self.running {
            Running::Process(child) => child,
            Running::InProcess { .. } => {
                panic!("this test needs a server process: start it with Server::start_process")
            }
        }
    }

    /// Like [`Server::start`], with settings also given as `IM_*` environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        // A fixed port (found free now) so a restarted server is where clients reconnect to.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--listen".to_string(), format!("127.0.0.1:{port}")]);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, listening) = spawn(data_dir, &extra, &env);
        Server {
            running: Running::Process(child),
            addr: listening.addr,
            tls_addr: listening.tls,
            admin_addr: listening.admin,
            data_dir: data_dir.to_owned(),
            extra,
            env,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Process(child) => child.id(),
            Running::InProcess { .. } => std::process::id(),
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let child = self.child();
        child.kill().expect("kill -9 the server");
        child.wait().expect("reap the server");
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited successfully.
    /// In process: the same graceful shutdown, then waits for the server task.
    pub fn terminate(&mut self) -> bool {
        if let Running::InProcess {
            runtime,
            shutdown,
            task,
            ..
        } = &mut self.running
        {
            shutdown.cancel();
            let (Some(runtime), Some(task)) = (runtime.take(), task.take()) else {
                panic!("the server was stopped already");
            };
            return off_runtime(move || {
                let stopped = runtime.block_on(task);
                runtime.shutdown_timeout(Duration::from_secs(5));
                matches!(stopped, Ok(Ok(())))
            });
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.child().id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child().try_wait().expect("wait for the server") {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port but another data directory (a restore from
    /// a backup, a replaced volume).
    pub fn restart_on(&mut self, data_dir: &Path) {
        self.data_dir = data_dir.to_owned();
        self.restart();
    }

    /// Starts the server again on the same data directory and port (in process: the same
    /// data directory, after [`Server::terminate`]).
    pub fn restart(&mut self) {
        if let Running::InProcess { .. } = self.running {
            let extra: Vec<String> = self.extra.clone();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let restarted = Server::start_in_process(&self.data_dir, &extra);
            // Swap in the new server; the stopped one is dropped with the old state.
            *self = restarted;
            return;
        }
        let (child, listening) = spawn(&self.data_dir, &self.extra, &self.env);
        self.running = Running::Process(child);
        self.addr = listening.addr;
        self.tls_addr = listening.tls;
        self.admin_addr = listening.admin;
    }

    /// Waits up to `timeout` for the process to exit by itself; whether it exited
    /// successfully in that time.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child().try_wait().expect("wait for the server") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A valid token for `user` bound to `device`.
    pub fn token(&self, user: &str, device: &str) -> String {
        token_with(user, Some(device), now_secs() + 3600)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Like a kill: the test is over, nothing needs to be flushed.
            Running::InProcess {
                runtime, shutdown, ..
            } => {
                shutdown.cancel();
                if let Some(runtime) = runtime.take() {
                    runtime.shutdown_background();
                }
            }
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn token_with(user: &str, device: Option<&str>, exp: u64) -> String {
    TokenKey::new(SECRET).sign(&Claims {
        sub: user.into(),
        dev: device.map(Into::into),
        plt: None,
        exp,
        iat: None,
    })
}

fn spawn(data_dir: &Path, extra: &[String], env: &[(String, String)]) -> (Child, Listening) {
    // Tests pipeline hundreds of requests: no rate limit unless a test sets one.
    let rate_limit: &[&str] = if extra.iter().any(|a| a == "--rate-limit") {
        &[]
    } else {
        &["--rate-limit", "0"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--secret", SECRET])
        .args(rate_limit)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(
            "RUST_LOG",
            std::env::var("IM_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway binary");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut stdout = BufReader::new(stdout);
    let mut read_addr = |prefix: &str| -> SocketAddr {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .parse()
            .expect("an address")
    };
    // The binary prints one line per listener, plain TCP first.
    let addr = read_addr("listening on ");
    let tls = extra
        .iter()
        .any(|a| a == "--tls-listen")
        .then(|| read_addr("tls listening on "));
    if tls.is_some() && !extra.iter().any(|a| a == "--no-quic") {
        // QUIC shares the TLS port's number; the line is read so the pipe stays drained.
        let _quic = read_addr("quic listening on ");
    }
    let admin = extra
        .iter()
        .any(|a| a == "--admin-listen")
        .then(|| read_addr("admin listening on "));
    (child, Listening { addr, tls, admin })
}

/// Where a server process listens.
struct Listening {
    addr: SocketAddr,
    tls: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// The client core's connector to an in-process server: every connection an in-memory stream.
struct MemoryConnector(MemoryDialer);

impl sdk_core::Connector for MemoryConnector {
    fn connect(
        &self,
        _server: &sdk_core::ServerAddress,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Box<dyn sdk_core::ByteStream>>> {
        let dialer = self.0.clone();
        Box::pin(async move {
            match dialer.dial().await {
                Some(stream) => Ok(Box::new(stream) as Box<dyn sdk_core::ByteStream>),
                None => Err(std::io::ErrorKind::ConnectionRefused.into()),
            }
        })
    }
}

/// A protocol client over one connection.
pub struct Client {
    framed: Framed<RawStream, FrameCodec>,
    next_request: u32,
    pub pushes: VecDeque<Frame>,
    pub hello: pb::HandshakeResp,
}

impl Client {
    /// Connects and authenticates; panics unless the handshake succeeds.
    pub async fn connect(server: &Server, user: &str, device: &str) -> Client {
        let token = server.token(user, device);
        match Client::try_connect(server, &token, device).await {
            Ok(client) => client,
            Err(e) => panic!("handshake failed: {e:?}"),
        }
    }

    /// Connects and sends a handshake; returns the error frame's body on refusal.
    pub async fn try_connect(
        server: &Server,
        token: &str,
        device: &str,
    ) -> Result<Client, pb::Error> {
        Client::try_handshake(server.connect_raw().await, token, device).await
    }

    /// Sends a handshake over `stream`; returns the error frame's body on refusal.
    pub async fn try_handshake(
        stream: RawStream,
        token: &str,
        device: &str,
    ) -> Result<Client, pb::Error> {
        let mut framed = Framed::new(stream, FrameCodec::default());
        let hello = pb::HandshakeReq {
            token: token.into(),
            device_id: device.into(),
            platform: pb::Platform::Server as i32,
            client_version: "gateway-tests".into(),
            protocol_version: 1,
            ..Default::default()
        };
        framed
            .send(Frame::new(1, hello))
            .await
            .expect("send handshake");
        let frame = tokio::time::timeout(WAIT, framed.next())
            .await
            .expect("handshake answer in time");
        let frame = frame.expect("connection open").expect("decodable");
        match frame.decode_body().expect("known body") {
            Body::HandshakeResp(hello) => Ok(Client {
                framed,
                next_request: 2,
                pushes: VecDeque::new(),
                hello,
            }),
            Body::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends a request and returns its response body (pushes received meanwhile are queued).
    pub async fn request(&mut self, body: impl Into<Body>) -> Body {
        let id = self.send_only(body).await;
        self.response(id).await
    }

    /// Sends a request without waiting; returns its request id.
    pub async fn send_only(&mut self, body: impl Into<Body>) -> u32 {
        let id = self.next_request;
        self.next_request += 1;
        self.framed.send(Frame::new(id, body)).await.expect("send");
        id
    }

    /// Waits for the response to `request_id`.
    pub async fn response(&mut self, request_id: u32) -> Body {
        loop {
            let frame = self
                .next_frame()
                .await
                .expect("connection closed while waiting for a response");
            if frame.is_push() {
                self.pushes.push_back(frame);
            } else if frame.request_id == request_id {
                return frame.decode_body().expect("known body");
            } else {
                panic!(
                    "response to {} while waiting for {request_id}",
                    frame.request_id
                );
            }
        }
    }

    /// The next frame of any kind, or None when the server closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, self.framed.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(e))) => panic!("undecodable frame from the server: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no frame from the server within {WAIT:?}"),
        }
    }

    /// The next push body.
    pub async fn next_push(&mut self) -> Body {
        if let Some(frame) = self.pushes.pop_front() {
            return frame.decode_body().expect("known push");
        }
        loop {
            let frame = self
                .next_frame()
                .await
                .expect("connection closed while waiting for a push");
            if frame.is_push() {
                return frame.decode_body().expect("known push");
            }
        }
    }

    /// Collects pushed inbox entries until `count` have arrived.
    pub async fn pushed_entries(&mut self, count: usize) -> Vec<pb::InboxEntry> {
        let mut entries = Vec::new();
        while entries.len() < count {
            if let Body::Push(push) = self.next_push().await {
                entries.extend(push.entries);
            }
        }
        entries
    }

    pub async fn send_text(
        &mut self,
        target: Target,
        client_msg_id: &str,
        text: &str,
    ) -> Result<pb::SendAck, pb::Error> {
        let request = pb::SendReq {
            target: Some(target),
            client_msg_id: client_msg_id.into(),
            content_type: 0,
            content: text.as_bytes().to_vec(),
        };
        match self.request(request).await {
            Body::SendAck(ack) => Ok(ack),
            Body::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Pulls the whole inbox from `from_seq`, page by page.
    pub async fn sync_all(&mut self, from_seq: u64, page: u32) -> Vec<pb::InboxEntry> {
        let mut entries = Vec::new();
        let mut from = from_seq;
        loop {
            match self
                .request(pb::SyncReq {
                    from_seq: from,
                    limit: page,
                    to_seq: 0,
                })
                .await
            {
                Body::SyncResp(resp) => {
                    entries.extend(resp.entries);
                    if !resp.has_more {
                        return entries;
                    }
                    from = resp.next_seq;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub async fn conversations(&mut self) -> Vec<pb::ConversationSummary> {
        match self.request(pb::ConversationsReq::default()).await {
            Body::ConversationsResp(resp) => resp.conversations,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Writes raw bytes (for garbage-input tests).
    pub async fn raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("write raw");
    }
}

pub fn to_user(user: &str) -> Target {
    Target::ToUser(user.into())
}

pub fn to_group(group: &str) -> Target {
    Target::ToGroup(group.into())
}

/// The messages among inbox entries.
pub fn messages(entries: &[pb::InboxEntry]) -> Vec<pb::Message> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::inbox_entry::Body::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn text(message: &pb::Message) -> String {
    String::from_utf8_lossy(&message.content).into_owned()
}

/// Checks `user`'s whole inbox through `client`: seqs run 1..=head without a hole, and no
/// message is there twice. Returns the texts of the messages from `from`, in inbox order.
pub async fn inbox_texts_from(client: &mut Client, user: &str, from: &str) -> Vec<String> {
    let entries = client.sync_all(1, 200).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.inbox_seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the inbox of {user} has no hole");
    let all = messages(&entries);
    let ids: std::collections::BTreeSet<u64> = all.iter().map(|m| m.server_msg_id).collect();
    assert_eq!(
        ids.len(),
        all.len(),
        "no message twice in the inbox of {user}"
    );
    all.iter()
        .filter(|m| m.sender_user == from)
        .map(text)
        .collect()
}

// ----- the client core (sdk-core's driver) against the server -----

/// A client core configuration with short reconnect backoff, so tests that restart the server
/// do not wait out production delays.
pub fn config(user: &str, device: &str) -> sdk_core::ClientConfig {
    let mut config = sdk_core::ClientConfig::new(user, device);
    config.backoff_base = Duration::from_millis(50);
    config.backoff_cap = Duration::from_millis(500);
    config.seed = 7;
    config
}

/// Starts a client core for `user` on `device` with an in-memory local store, on the test's
/// runtime.
pub fn start_client(
    server: &Server,
    user: &str,
    device: &str,
) -> (sdk_core::ClientHandle, sdk_core::EventStream) {
    let options = sdk_core::DriverOptions {
        connector: server.connector(),
        ..sdk_core::DriverOptions::default()
    };
    start_client_with(server, user, device, config(user, device), options)
}

/// Like [`start_client`], with the test's own configuration and driver options (a connector,
/// the event queue's capacity).
pub fn start_client_with(
    server: &Server,
    user: &str,
    device: &str,
    config: sdk_core::ClientConfig,
    options: sdk_core::DriverOptions,
) -> (sdk_core::ClientHandle, sdk_core::EventStream) {
    sdk_core::driver::start(
        server.addr.into(),
        server.token(user, device),
        config,
        sdk_core::memory::MemoryStore::new(),
        options,
        &tokio::runtime::Handle::current(),
    )
    .expect("client starts")
}

/// Waits for an event of the client core matching `pick`.
pub async fn wait_for<T>(
    events: &mut sdk_core::EventStream,
    what: &str,
    mut pick: impl FnMut(&sdk_core::Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("client stopped while waiting for {what}"));
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

/// Starts a client core for `user` that reaches the server at `address` through `connector`
/// (TLS to a host name, a transport other than this run's default).
pub fn start_client_over(
    server: &Server,
    address: sdk_core::ServerAddress,
    connector: std::sync::Arc<dyn sdk_core::Connector>,
    user: &str,
    device: &str,
) -> (sdk_core::ClientHandle, sdk_core::EventStream) {
    sdk_core::driver::start(
        address,
        server.token(user, device),
        config(user, device),
        sdk_core::memory::MemoryStore::new(),
        sdk_core::DriverOptions {
            connector,
            ..sdk_core::DriverOptions::default()
        },
        &tokio::runtime::Handle::current(),
    )
    .expect("client starts")
}

/// Alice sends Bob a text through their client cores and Bob receives it: the scenario every
/// transport test runs.
pub async fn chat_once(
    alice: &sdk_core::ClientHandle,
    alice_events: &mut sdk_core::EventStream,
    bob_events: &mut sdk_core::EventStream,
    text: &str,
) {
    let sent = alice
        .send_text(sdk_core::Recipient::User("bob".into()), text)
        .await
        .expect("the send is queued");
    wait_for(alice_events, "the ack", |e| match e {
        sdk_core::Event::MessageUpdated(m)
            if m.local_id == sent.local_id && m.state == sdk_core::SendState::Sent =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let received = wait_for(bob_events, "the message", |e| match e {
        sdk_core::Event::MessageReceived(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(received.sender, "alice");
    assert_eq!(String::from_utf8_lossy(&received.content), text);
}

/// Polls `check` until it holds (at most 10 s; panics after).
pub async fn wait_until<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_within(WAIT, check).await
}

/// Polls `check` until it holds (at most `limit`; panics after).
pub async fn wait_until_within<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it gives a value (at most 10 s; panics after).
pub async fn wait_for_value<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no value within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
