//! Assembles a server process in one of its roles: everything in one process (the embedded
//! store or a CQL cluster, the logic tier and the gateway, the default), a gateway alone (its
//! logic tier on remote logic nodes, its pushes to other gateways through Redis), or a logic
//! node. The `im-server` binary, the load tester's tests and the server's tests all start
//! servers through here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::hooks::{HookedLogic, MessagePolicy};
use crate::offline_push::NotifyingLogic;
use im_presence::{ClusterRouter, PresenceOptions};
use logic::{Logic, LogicConfig};
use logic_api::LogicApi;
use logic_remote::{RemoteLogic, RemoteOptions};
use store_cql::{CqlOptions, CqlStore};
use store_embedded::{EmbeddedOptions, EmbeddedStore};
use timeline_store::{InboxRetention, TimelineStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use gateway::auth::TokenKey;
use gateway::hub::Hub;
use gateway::router::PushRouter;
use gateway::server::{self, DrainPlan, Gateway, GatewayConfig, Shared};
use gateway::session::{self, SessionConfig};
use gateway::transport::front_door::{FrontDoor, FrontDoorError};
use gateway::transport::http_tunnel::{TunnelConfig, TunnelServer};
use gateway::transport::memory::{self, MemoryDialer};
use gateway::transport::quic::{QuicAcceptor, QuicError};
use gateway::transport::tls::TlsIdentity;

/// Everything a single-process server needs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address for plain-TCP clients.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Verifies client tokens.
    pub tokens: TokenKey,
    /// Announced heartbeat interval; the idle timeout is three of them.
    pub heartbeat: Duration,
    /// Time a new connection has to authenticate.
    pub handshake_timeout: Duration,
    /// Requests per second per connection (0 = unlimited); burst is twice this.
    pub rate_limit: u32,
    /// Largest message content.
    pub max_message_bytes: usize,
    /// Largest frame body.
    pub max_frame_bytes: usize,
    /// Largest group.
    pub max_group_members: u32,
    /// Groups above this many members use read fan-out (0 = never).
    pub read_fanout_threshold: u32,
    /// Recall window.
    pub recall_window: Duration,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Most live connections of one user (one per device).
    pub max_connections_per_user: usize,
    /// Bytes of outbound frames queued per connection before it counts as too slow.
    pub outbound_queue_bytes: usize,
    /// How long a connection may leave its outbound data unread before it is closed.
    pub slow_client_timeout: Duration,
    /// Kernel send buffer of each client socket (SO_SNDBUF; 0 = the kernel's autotuning).
    pub socket_send_buffer_bytes: u32,
    /// Writes are refused (retryable UNAVAILABLE) while the data directory's filesystem has
    /// less free space than this (0 = no threshold).
    pub min_free_disk_bytes: u64,
    /// Storage bytes per second one sender's messages may write (content + per-recipient
    /// entries; 0 = unlimited).
    pub fanout_bytes_per_sec: u64,
    /// Burst of that budget.
    pub fanout_burst_bytes: u64,
    /// Most entries kept per user inbox; older ones are trimmed and reported as `TRIMMED` to
    /// a device that syncs from below them (0 = no limit).
    pub inbox_retention_entries: u64,
    /// Inbox entries older than this are trimmed (zero = kept forever).
    pub inbox_retention_age: Duration,
    /// TLS clients, when set: where to listen and what to present. The plain port then takes
    /// TLS clients too.
    pub tls: Option<TlsOptions>,
    /// QUIC on UDP at the TLS port's number, whenever TLS is on.
    pub quic: bool,
    /// The HTTP tunnel (SPEC §18) on the plain and the TLS port, when set.
    pub http_tunnel: Option<TunnelConfig>,
    /// What this process runs.
    pub role: Role,
    /// Where the logic tier keeps its data (roles `All` and `Logic`).
    pub store: StoreChoice,
    /// The cluster's presence registry and push routing between gateways (roles `All` and
    /// `Gateway`); `None`: this gateway is the only one.
    pub presence: Option<PresenceOptions>,
    /// Deadline of one call to a logic node (role `Gateway`).
    pub logic_attempt_timeout: Duration,
    /// The admin listener (metrics, health, the server API), when on.
    pub admin: Option<AdminSettings>,
    /// How the gateway sends its clients away when it stops.
    pub drain: DrainPlan,
    /// Offline push notifications (off unless a provider is configured; the one-gateway
    /// shapes only).
    pub push: crate::offline_push::PushSettings,
    /// Webhooks to the app's server (before-send, after-events, presence), when set.
    pub webhooks: Option<im_webhooks::WebhookConfig>,
}

/// Where the admin listener listens and who may call its API.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// Its address.
    pub listen: SocketAddr,
    /// The server API's key (`None`: the API is off; metrics and health still work).
    pub admin_key: Option<String>,
    /// The sender of messages sent "as the system".
    pub system_user: String,
}

/// What a server process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Gateway, logic tier and store in one process (the default).
    All,
    /// A gateway: client connections, with the logic tier on these logic nodes (`host:port`).
    Gateway {
        /// The logic nodes.
        logic_nodes: Vec<String>,
    },
    /// A logic node: serves the logic API to gateways on `listen`.
    Logic,
}

/// Where the logic tier keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded store in `data_dir` (one process owns it).
    Embedded,
    /// A ScyllaDB or Cassandra cluster, shared by every logic node.
    Cql(CqlSettings),
}

/// How to reach and lay out the CQL store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CqlSettings {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace.
    pub keyspace: String,
    /// Its replication (a CQL map literal), used when creating it.
    pub replication: String,
}

/// The TLS listener.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// Address for TLS clients (443 in production).
    pub listen: SocketAddr,
    /// The certificate chain and key presented.
    pub identity: TlsIdentity,
}

/// Default of [`ServerOptions::inbox_retention_entries`].
pub const DEFAULT_INBOX_RETENTION_ENTRIES: u64 = 100_000;
/// Default of [`ServerOptions::inbox_retention_age`], in days.
pub const DEFAULT_INBOX_RETENTION_DAYS: u64 = 30;
/// How often inboxes are swept for entries past the retention age.
const RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

impl ServerOptions {
    /// Defaults for a server on `listen` storing in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, tokens: TokenKey) -> ServerOptions {
        ServerOptions {
            listen,
            data_dir,
            tokens,
            heartbeat: Duration::from_secs(session::DEFAULT_HEARTBEAT_SECS),
            handshake_timeout: Duration::from_secs(session::DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            rate_limit: session::DEFAULT_RATE_PER_SEC,
            max_message_bytes: logic::DEFAULT_MAX_MESSAGE_BYTES,
            max_frame_bytes: im_protocol::DEFAULT_MAX_BODY,
            max_group_members: logic::DEFAULT_MAX_GROUP_MEMBERS,
            read_fanout_threshold: logic::DEFAULT_READ_FANOUT_THRESHOLD,
            recall_window: Duration::from_secs(logic::DEFAULT_RECALL_WINDOW_SECS),
            max_connections: server::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_user: gateway::hub::DEFAULT_MAX_CONNECTIONS_PER_USER,
            outbound_queue_bytes: server::DEFAULT_OUTBOUND_QUEUE_BYTES,
            min_free_disk_bytes: store_embedded::DEFAULT_MIN_FREE_BYTES,
            fanout_bytes_per_sec: logic::DEFAULT_FANOUT_BYTES_PER_SEC,
            fanout_burst_bytes: logic::DEFAULT_FANOUT_BURST_BYTES,
            inbox_retention_entries: DEFAULT_INBOX_RETENTION_ENTRIES,
            inbox_retention_age: Duration::from_secs(DEFAULT_INBOX_RETENTION_DAYS * 24 * 3600),
            slow_client_timeout: Duration::from_secs(server::DEFAULT_SLOW_CLIENT_TIMEOUT_SECS),
            socket_send_buffer_bytes: DEFAULT_SOCKET_SEND_BUFFER,
            tls: None,
            quic: true,
            http_tunnel: Some(TunnelConfig::default()),
            role: Role::All,
            store: StoreChoice::Embedded,
            presence: None,
            logic_attempt_timeout: Duration::from_secs(10),
            admin: None,
            drain: DrainPlan::default(),
            push: crate::offline_push::PushSettings::default(),
            webhooks: None,
        }
    }
}

/// Default kernel send buffer per client socket. Autotuning grows it to 4 MiB for a peer that
/// does not read, memory the server's own bounds would not see and bytes that hide a stalled
/// peer from the slow-client check; 256 KiB still fills a 20 Mbit/s link at 100 ms RTT.
pub const DEFAULT_SOCKET_SEND_BUFFER: u32 = 256 * 1024;

/// Why a server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened or closed.
    #[error("store: {0}")]
    Store(#[from] store_embedded::EmbeddedError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Accepting failed for good.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(#[from] gateway::transport::tls::TlsError),
    /// QUIC could not be set up.
    #[error("quic: {0}")]
    Quic(gateway::transport::quic::QuicError),
    /// The token secret would let anyone forge tokens.
    #[error("token secret: {0}")]
    WeakSecret(#[from] gateway::auth::WeakSecret),
    /// The CQL store could not be reached or set up.
    #[error("CQL store: {0}")]
    Cql(timeline_store::StoreError),
    /// The presence registry could not be set up.
    #[error("presence: {0}")]
    Presence(#[from] im_presence::PresenceError),
    /// The webhooks could not start.
    #[error("webhooks: {0}")]
    Webhooks(#[from] im_webhooks::WebhookError),
    /// A push provider is misconfigured (an unreadable key, a bad URL).
    #[error("offline push: {0}")]
    Push(#[from] im_push::ConfigError),
    /// The admin listener could not be bound.
    #[error("cannot listen for admin calls on {addr}: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// This start function does not run this role.
    #[error("{0}")]
    Role(&'static str),
}

/// A started server.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Opens in-process connections to the same gateway (no socket involved).
    pub dialer: MemoryDialer,
    /// The bound TLS address, when TLS is on.
    pub tls_addr: Option<SocketAddr>,
    /// The bound QUIC (UDP) address, when QUIC is on: the TLS port's number.
    pub quic_addr: Option<SocketAddr>,
    /// The admin listener's bound address, when it is on.
    pub admin_addr: Option<SocketAddr>,
    /// Cancel to shut down gracefully.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped and the store is closed.
    pub task: JoinHandle<Result<(), ServerError>>,
}

/// What runs once the gateway has drained: closing the store.
type Finish = Pin<Box<dyn Future<Output = Result<(), ServerError>> + Send>>;

/// The logic tier's settings, from the server's.
fn logic_config(options: &ServerOptions) -> LogicConfig {
    LogicConfig {
        max_message_bytes: options.max_message_bytes,
        max_group_members: options.max_group_members,
        read_fanout_threshold: options.read_fanout_threshold,
        recall_window_ms: options.recall_window.as_millis() as u64,
        page_bytes: im_protocol::page_budget(
            options.max_frame_bytes.min(im_protocol::ABSOLUTE_MAX_BODY),
        ),
        fanout_bytes_per_sec: options.fanout_bytes_per_sec,
        fanout_burst_bytes: options.fanout_burst_bytes,
        ..LogicConfig::default()
    }
}

/// A logic node's settings: no read fan-out, because the cluster's gateways do not route
/// `GROUP_PUSH` between them yet (issue 15 built it for one process).
fn logic_node_config(options: &ServerOptions) -> LogicConfig {
    LogicConfig {
        read_fanout_threshold: 0,
        ..logic_config(options)
    }
}

fn retention(options: &ServerOptions) -> InboxRetention {
    InboxRetention {
        max_entries: options.inbox_retention_entries,
        max_age_ms: options.inbox_retention_age.as_millis() as u64,
    }
}

/// Opens the embedded store in `data_dir`.
fn open_embedded(options: &ServerOptions) -> Result<EmbeddedStore, ServerError> {
    let data_dir_error = |source| ServerError::DataDir {
        path: options.data_dir.clone(),
        source,
    };
    create_private_dir(&options.data_dir).map_err(data_dir_error)?;
    let store = EmbeddedStore::open(
        &options.data_dir.join("store"),
        EmbeddedOptions {
            min_free_bytes: options.min_free_disk_bytes,
            inbox_retention: retention(options),
            ..EmbeddedOptions::default()
        },
    )?;
    // The journal holds message text in plain form: only the server's user may read it. The
    // binary sets its umask so new files are private; this also covers files written before
    // that (an upgraded data directory) and servers embedded in other processes.
    make_private(&options.data_dir).map_err(data_dir_error)?;
    Ok(store)
}

/// Connects to the CQL store.
async fn open_cql(options: &ServerOptions, cql: &CqlSettings) -> Result<CqlStore, ServerError> {
    CqlStore::connect(CqlOptions {
        nodes: cql.nodes.clone(),
        keyspace: cql.keyspace.clone(),
        replication: cql.replication.clone(),
        retention: retention(options),
        request_timeout: Duration::from_secs(10),
    })
    .await
    .map_err(ServerError::Cql)
}

/// Opens the store, binds the listeners and starts serving in a background task (roles
/// `All` and `Gateway`; a logic node starts with [`start_logic_node`]).
pub async fn start(options: ServerOptions) -> Result<RunningServer, ServerError> {
    options.tokens.check_strength()?;
    let shutdown = CancellationToken::new();
    match (options.role.clone(), options.store.clone()) {
        (Role::Logic, _) => Err(ServerError::Role(
            "a logic node starts with start_logic_node",
        )),
        (Role::Gateway { logic_nodes }, _) => {
            let logic = RemoteLogic::new(RemoteOptions {
                attempt_timeout: options.logic_attempt_timeout,
                call_budget: options.logic_attempt_timeout * 3,
                ..RemoteOptions::new(logic_nodes)
            });
            if options.push.enabled() {
                tracing::warn!(
                    "push providers are ignored on a gateway of logic nodes: give them to the logic nodes (with --redis-url)"
                );
            }
            // A gateway reports its devices coming and going; its logic nodes run the policy.
            let hooks = start_webhooks(&options, &shutdown)?;
            let closing = hooks.clone();
            let finish: Finish = Box::pin(async move {
                if let Some(hooks) = closing {
                    hooks.close(HOOKS_CLOSE_TIMEOUT).await;
                }
                Ok(())
            });
            serve_gateway(
                options,
                logic,
                finish,
                StoreProbe::Remote,
                None,
                hooks,
                shutdown,
            )
            .await
        }
        (Role::All, StoreChoice::Embedded) => {
            let store = open_embedded(&options)?;
            let probe = StoreProbe::Embedded(store.clone());
            let closing = store.clone();
            // Flush what the writer still holds; acked messages are durable already.
            let close_store: Finish = Box::pin(async move {
                closing.close().await?;
                Ok(())
            });
            serve_all(options, store, probe, close_store, shutdown).await
        }
        (Role::All, StoreChoice::Cql(cql)) => {
            let store = open_cql(&options, &cql).await?;
            let nothing: Finish = Box::pin(async { Ok(()) });
            serve_all(options, store, StoreProbe::Remote, nothing, shutdown).await
        }
    }
}

/// Everything in one process over `store`: the logic tier (behind the message policy and the
/// offline notifier, when configured) and the gateway; `close_store` runs last.
async fn serve_all<S: TimelineStore + Clone>(
    options: ServerOptions,
    store: S,
    probe: StoreProbe,
    close_store: Finish,
    shutdown: CancellationToken,
) -> Result<RunningServer, ServerError> {
    let logic = Arc::new(Logic::new(store.clone(), logic_config(&options)));
    spawn_retention_sweeps(&options, store, &shutdown);
    let extras = Extras::new(
        start_push(&options, &logic, &shutdown)?,
        start_webhooks(&options, &shutdown)?,
        options.presence.is_some(),
    );
    let sink = extras.offline_sink();
    let webhooks = extras.webhooks.clone();
    let policed = HookedLogic::new(
        NotifyingLogic::new(logic, extras.logic_notifier()),
        extras.policy(),
    );
    let finish: Finish = Box::pin(async move {
        extras.close().await;
        close_store.await
    });
    serve_gateway(options, policed, finish, probe, sink, webhooks, shutdown).await
}

/// A started logic node.
pub struct RunningLogicNode {
    /// The address gateways call.
    pub addr: SocketAddr,
    /// The admin listener's bound address (metrics and health), when it is on.
    pub admin_addr: Option<SocketAddr>,
    /// Cancel to shut down gracefully (calls in flight are answered).
    pub shutdown: CancellationToken,
    /// Ends when the node has stopped and its store is closed.
    pub task: JoinHandle<Result<(), ServerError>>,
}

/// Opens the store and serves the logic API to gateways on `options.listen`.
pub async fn start_logic_node(options: ServerOptions) -> Result<RunningLogicNode, ServerError> {
    if options.push.enabled() && options.presence.is_none() {
        return Err(ServerError::Role(
            "push providers on a logic node need --redis-url: the presence registry says who has no connection",
        ));
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let admin_stop = CancellationToken::new();
    let (task, probe) = match options.store.clone() {
        StoreChoice::Embedded => {
            let store = open_embedded(&options)?;
            spawn_retention_sweeps(&options, store.clone(), &shutdown);
            let logic = Arc::new(Logic::new(store.clone(), logic_node_config(&options)));
            let extras = Extras::new(
                start_push(&options, &logic, &shutdown)?,
                start_webhooks(&options, &shutdown)?,
                true,
            );
            let logic = Arc::new(HookedLogic::new(
                NotifyingLogic::new(logic, extras.logic_notifier()),
                extras.policy(),
            ));
            let probe = StoreProbe::Embedded(store.clone());
            let admin_stop = admin_stop.clone();
            let task = tokio::spawn(async move {
                logic_remote::serve(listener, logic, stop).await?;
                extras.close().await;
                store.close().await?;
                admin_stop.cancel();
                Ok(())
            });
            (task, probe)
        }
        StoreChoice::Cql(cql) => {
            let store = open_cql(&options, &cql).await?;
            spawn_retention_sweeps(&options, store.clone(), &shutdown);
            let logic = Arc::new(Logic::new(store, logic_node_config(&options)));
            let extras = Extras::new(
                start_push(&options, &logic, &shutdown)?,
                start_webhooks(&options, &shutdown)?,
                true,
            );
            let logic = Arc::new(HookedLogic::new(
                NotifyingLogic::new(logic, extras.logic_notifier()),
                extras.policy(),
            ));
            let admin_stop = admin_stop.clone();
            let task = tokio::spawn(async move {
                logic_remote::serve(listener, logic, stop).await?;
                extras.close().await;
                admin_stop.cancel();
                Ok(())
            });
            (task, StoreProbe::Remote)
        }
    };
    let admin_addr = match &options.admin {
        // A logic node serves metrics and health, never the server API (it holds no token
        // key and no connections): no admin key.
        Some(settings) => Some(
            start_admin(
                &AdminSettings {
                    admin_key: None,
                    ..settings.clone()
                },
                Arc::new(LogicNodeBackend {
                    shutdown: shutdown.clone(),
                    probe,
                }),
                Some(im_admin::telemetry::install()),
                admin_stop,
            )
            .await?,
        ),
        None => None,
    };
    Ok(RunningLogicNode {
        addr,
        admin_addr,
        shutdown,
        task,
    })
}

fn spawn_retention_sweeps<S: TimelineStore>(
    options: &ServerOptions,
    store: S,
    shutdown: &CancellationToken,
) {
    if !options.inbox_retention_age.is_zero() {
        tokio::spawn(sweep_retention(store, shutdown.clone()));
    }
}

/// Binds the client listeners and serves clients with `logic`; `finish` runs after the last
/// connection closed.
async fn serve_gateway<L: LogicApi>(
    options: ServerOptions,
    logic: L,
    finish: Finish,
    probe: StoreProbe,
    offline: Option<Arc<dyn gateway::router::OfflineSink>>,
    webhooks: Option<im_webhooks::Webhooks>,
    shutdown: CancellationToken,
) -> Result<RunningServer, ServerError> {
    // Before the hub and the gateway: they look their per-message metrics up once, at
    // construction, and a lookup made before the recorder exists records nothing.
    let metrics = options
        .admin
        .as_ref()
        .map(|_| im_admin::telemetry::install());
    let heartbeat = options.heartbeat.max(Duration::from_secs(1));
    let config = GatewayConfig {
        session: SessionConfig {
            handshake_timeout: options.handshake_timeout.max(Duration::from_millis(100)),
            heartbeat_interval: heartbeat,
            idle_timeout: heartbeat * 3,
            rate_per_sec: options.rate_limit,
            rate_burst: options.rate_limit.saturating_mul(2),
        },
        max_frame_bytes: options.max_frame_bytes.min(im_protocol::ABSOLUTE_MAX_BODY),
        compression_threshold: 8 * 1024,
        max_connections: options.max_connections,
        max_connections_per_user: options.max_connections_per_user.max(1),
        outbound_queue_bytes: options.outbound_queue_bytes,
        slow_client_timeout: options.slow_client_timeout.max(Duration::from_millis(100)),
    };
    let (in_process, dialer) = memory::listener();
    let hub = Hub::with_limits(config.max_frame_bytes, config.max_connections_per_user);
    hub.coalesce_group_pushes(gateway::hub::GROUP_PUSH_INTERVAL, shutdown.clone());
    // The only gateway: its hub is the whole push router. One of several: the cluster router
    // reaches the others through Redis.
    let mut cluster = None;
    let router: Arc<dyn PushRouter> = match options.presence.clone() {
        Some(presence) => {
            let router = ClusterRouter::start(hub.clone(), presence, shutdown.clone())?;
            cluster = Some(router.clone());
            router
        }
        None => {
            if let Some(sink) = offline {
                hub.set_offline_sink(sink);
            }
            hub.clone()
        }
    };
    let router: Arc<dyn PushRouter> = match webhooks {
        Some(hooks) => Arc::new(crate::webhook_policy::PresenceHooks::new(router, hooks)),
        None => router,
    };
    let gateway_handshake_timeout = config.session.handshake_timeout;
    let gateway = Gateway::new(Shared {
        logic,
        router,
        hub,
        tokens: options.tokens.clone(),
        config,
    });
    let admin_stop = CancellationToken::new();
    let admin_addr = match &options.admin {
        Some(settings) => Some(
            start_admin(
                settings,
                Arc::new(GatewayBackend {
                    gateway: gateway.clone(),
                    cluster,
                    tokens: options.tokens.clone(),
                    shutdown: shutdown.clone(),
                    probe,
                }),
                metrics.clone(),
                admin_stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let drain_plan = options.drain.clone();
    let tunnel = options
        .http_tunnel
        .clone()
        .map(|tunnel_config| TunnelServer::new(tunnel_config, gateway.clone()));
    let bind_error = |addr| {
        move |e: FrontDoorError| match e {
            FrontDoorError::Io(source) => ServerError::Bind { addr, source },
            FrontDoorError::Tls(e) => ServerError::Tls(e),
        }
    };
    let identity = options.tls.as_ref().map(|tls| &tls.identity);
    // A silent client is served as frames shortly before its handshake deadline, so it is
    // told HANDSHAKE_TIMEOUT like on any port.
    let sniff_timeout = gateway_handshake_timeout.mul_f32(0.8);
    let plain = FrontDoor::bind(
        options.listen,
        options.socket_send_buffer_bytes,
        identity,
        tunnel.clone(),
    )
    .map_err(bind_error(options.listen))?
    .with_sniff_timeout(sniff_timeout);
    let addr = plain.local_addr()?;
    let tls = match &options.tls {
        Some(tls) => Some(
            FrontDoor::bind_tls_only(
                tls.listen,
                options.socket_send_buffer_bytes,
                &tls.identity,
                tunnel.clone(),
            )
            .map_err(bind_error(tls.listen))?
            .with_sniff_timeout(sniff_timeout),
        ),
        None => None,
    };
    let tls_addr = tls.as_ref().map(|t| t.local_addr()).transpose()?;
    let quic = match (&options.tls, tls_addr) {
        (Some(tls), Some(tls_addr)) if options.quic => Some(
            QuicAcceptor::bind(
                tls_addr,
                &tls.identity,
                // Above the session's idle timeout, which is the one that decides.
                heartbeat * 3 + Duration::from_secs(15),
            )
            .map_err(|e| match e {
                QuicError::Io(source) => ServerError::Bind {
                    addr: tls_addr,
                    source,
                },
                other => ServerError::Quic(other),
            })?,
        ),
        _ => None,
    };
    let quic_addr = quic.as_ref().map(|q| q.local_addr()).transpose()?;
    let quic_endpoint = quic.as_ref().map(|q| q.endpoint());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        tokio::join!(
            gateway.serve(plain, stop.clone()),
            gateway.serve(in_process, stop.clone()),
            async {
                if let Some(tls) = tls {
                    gateway.serve(tls, stop.clone()).await;
                }
            },
            async {
                if let Some(quic) = quic {
                    gateway.serve(quic, stop.clone()).await;
                }
            },
        );
        gateway.drain_with(&drain_plan).await;
        if let Some(endpoint) = quic_endpoint {
            endpoint.close(quinn::VarInt::from_u32(0), b"server shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        if let Some(tunnel) = tunnel {
            tunnel.shutdown().await;
        }
        let finished = finish.await;
        // Last: /readyz said "draining" until the end.
        admin_stop.cancel();
        finished
    });
    Ok(RunningServer {
        addr,
        dialer,
        tls_addr,
        quic_addr,
        admin_addr,
        shutdown,
        task,
    })
}

/// Creates `dir` (and its parents) if needed, readable by the owner only.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Restricts `dir` and everything under it to the owner: directories 0700, files 0600.
fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                make_private(&entry.path())?;
            } else if kind.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Trims inbox entries past the retention age, every ten minutes until shutdown: the age is
/// counted in days, and each sweep seeks through every inbox.
async fn sweep_retention<S: TimelineStore>(store: S, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store
            .sweep_inbox_retention(im_protocol::unix_time_ms())
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "inbox entries past the retention age trimmed"),
            Err(e) => tracing::warn!(error = %e, "inbox retention sweep failed"),
        }
    }
}

/// Binds the admin listener.
async fn start_admin(
    settings: &AdminSettings,
    backend: Arc<dyn im_admin::Backend>,
    metrics: Option<im_admin::telemetry::PrometheusHandle>,
    stop: CancellationToken,
) -> Result<SocketAddr, ServerError> {
    let running = im_admin::start(
        im_admin::AdminConfig {
            listen: settings.listen,
            admin_key: settings.admin_key.clone(),
            system_user: settings.system_user.clone(),
        },
        backend,
        metrics,
        stop,
    )
    .await
    .map_err(|source| ServerError::AdminBind {
        addr: settings.listen,
        source,
    })?;
    Ok(running.addr)
}

/// What `/readyz` and the store gauges look at.
enum StoreProbe {
    /// The store this process opened.
    Embedded(EmbeddedStore),
    /// A store elsewhere (logic nodes, a CQL cluster): its health is theirs to report.
    Remote,
}

impl StoreProbe {
    fn healthy(&self) -> bool {
        match self {
            StoreProbe::Embedded(store) => store.is_healthy(),
            StoreProbe::Remote => true,
        }
    }

    fn refresh_gauges(&self) {
        if let StoreProbe::Embedded(store) = self {
            metrics::gauge!("im_store_disk_bytes").set(store.disk_bytes() as f64);
            metrics::gauge!("im_store_free_bytes").set(store.free_bytes() as f64);
        }
    }
}

/// The admin listener's view of a serving gateway (and its logic tier, local or remote).
struct GatewayBackend<L> {
    gateway: Arc<Gateway<L>>,
    /// The cluster's router, when there are other gateways: lookups and kicks go through its
    /// registry.
    cluster: Option<Arc<ClusterRouter>>,
    tokens: TokenKey,
    /// Cancelled to drain and stop, as SIGTERM does.
    shutdown: CancellationToken,
    probe: StoreProbe,
}

impl<L: LogicApi> im_admin::Backend for GatewayBackend<L> {
    fn issue_token(
        &self,
        user: &str,
        device: Option<&str>,
        ttl_secs: u64,
    ) -> im_admin::IssuedToken {
        let now = im_protocol::unix_time_ms() / 1000;
        let expires_at = now.saturating_add(ttl_secs);
        let token = self.tokens.sign(&gateway::auth::Claims {
            sub: user.to_owned(),
            dev: device.map(str::to_owned),
            plt: None,
            exp: expires_at,
            iat: Some(now),
        });
        im_admin::IssuedToken { token, expires_at }
    }

    fn send(
        &self,
        caller: logic_api::Caller,
        request: im_protocol::pb::SendReq,
    ) -> im_admin::BoxFuture<'_, logic_api::SendReply> {
        Box::pin(async move { self.gateway.send_as(&caller, request).await })
    }

    fn call(
        &self,
        caller: logic_api::Caller,
        body: im_protocol::Body,
    ) -> im_admin::BoxFuture<'_, logic_api::Reply> {
        Box::pin(async move { self.gateway.call_as(&caller, body).await })
    }

    fn kick(
        &self,
        user: String,
        device: Option<String>,
        reason: im_protocol::pb::KickReason,
    ) -> im_admin::BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move {
            if let Some(cluster) = &self.cluster {
                return cluster
                    .kick_everywhere(&user, device.as_deref(), reason)
                    .await;
            }
            let kick = im_protocol::Frame::push(im_protocol::pb::Kick {
                reason: reason as i32,
                message: "kicked by the operator".into(),
                redirect_addr: String::new(),
                retry_after_ms: 0,
            });
            Ok(self
                .gateway
                .hub()
                .kick_user(&user, device.as_deref(), &kick))
        })
    }

    fn online_devices(&self, user: String) -> im_admin::BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            match &self.cluster {
                Some(cluster) => {
                    let mut devices: Vec<String> = cluster
                        .devices_of(&user)
                        .await?
                        .into_iter()
                        .map(|(device, _gateway)| device)
                        .collect();
                    devices.dedup();
                    Ok(devices)
                }
                None => Ok(self.gateway.hub().devices_of(&user)),
            }
        })
    }

    fn start_drain(&self) {
        self.shutdown.cancel();
    }

    fn readiness(&self) -> im_admin::Readiness {
        im_admin::Readiness {
            store_ok: self.probe.healthy(),
            draining: self.shutdown.is_cancelled() || self.gateway.is_draining(),
        }
    }

    fn refresh_gauges(&self) {
        let (queued, most) = self.gateway.hub().queued_bytes();
        metrics::gauge!("im_push_queue_bytes").set(queued as f64);
        metrics::gauge!("im_push_queue_max_bytes").set(most as f64);
        metrics::gauge!("im_online_connections").set(self.gateway.hub().connection_count() as f64);
        self.probe.refresh_gauges();
    }
}

/// The admin listener's view of a logic node: health and metrics only.
struct LogicNodeBackend {
    shutdown: CancellationToken,
    probe: StoreProbe,
}

impl im_admin::Backend for LogicNodeBackend {
    fn issue_token(&self, _: &str, _: Option<&str>, _: u64) -> im_admin::IssuedToken {
        // Unreachable: the API is off on a logic node (no admin key). Nothing usable either way.
        im_admin::IssuedToken {
            token: String::new(),
            expires_at: 0,
        }
    }

    fn send(
        &self,
        _: logic_api::Caller,
        _: im_protocol::pb::SendReq,
    ) -> im_admin::BoxFuture<'_, logic_api::SendReply> {
        Box::pin(async { Err(not_here()) })
    }

    fn call(
        &self,
        _: logic_api::Caller,
        _: im_protocol::Body,
    ) -> im_admin::BoxFuture<'_, logic_api::Reply> {
        Box::pin(async { Err(not_here()) })
    }

    fn kick(
        &self,
        _: String,
        _: Option<String>,
        _: im_protocol::pb::KickReason,
    ) -> im_admin::BoxFuture<'_, Result<usize, String>> {
        Box::pin(async { Ok(0) })
    }

    fn online_devices(&self, _: String) -> im_admin::BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn start_drain(&self) {
        self.shutdown.cancel();
    }

    fn readiness(&self) -> im_admin::Readiness {
        im_admin::Readiness {
            store_ok: self.probe.healthy(),
            draining: self.shutdown.is_cancelled(),
        }
    }

    fn refresh_gauges(&self) {
        self.probe.refresh_gauges();
    }
}

fn not_here() -> im_protocol::pb::Error {
    use im_protocol::ErrorCodeExt as _;
    im_protocol::pb::ErrorCode::Unavailable.to_error("a logic node serves no server API")
}

/// How long a stopping server gives the push dispatcher and the webhooks to send what they
/// hold.
const PUSH_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const HOOKS_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The offline notifier and its dispatcher, when a push provider is configured.
type Push = Option<(
    Arc<crate::offline_push::OfflineNotifier>,
    im_push::PushDispatcher,
)>;

fn start_push<S: TimelineStore>(
    options: &ServerOptions,
    logic: &Arc<Logic<S>>,
    shutdown: &CancellationToken,
) -> Result<Push, ServerError> {
    if !options.push.enabled() {
        return Ok(None);
    }
    // With a presence registry the connections are (also) elsewhere: ask it who is offline.
    let presence = options
        .presence
        .as_ref()
        .map(|p| im_presence::PresenceReader::new(&p.redis_url, &p.prefix))
        .transpose()?;
    Ok(Some(crate::offline_push::start(
        &options.push,
        logic.clone(),
        presence,
        shutdown.clone(),
    )?))
}

fn start_webhooks(
    options: &ServerOptions,
    shutdown: &CancellationToken,
) -> Result<Option<im_webhooks::Webhooks>, ServerError> {
    match &options.webhooks {
        Some(config) => Ok(Some(im_webhooks::Webhooks::start(
            config.clone(),
            shutdown.clone(),
        )?)),
        None => Ok(None),
    }
}

fn webhook_policy(hooks: im_webhooks::Webhooks) -> Arc<dyn MessagePolicy> {
    Arc::new(crate::webhook_policy::WebhookPolicy::new(hooks))
}

/// What a serving process runs beside the gateway and the logic tier: offline push and
/// webhooks, each when configured.
struct Extras {
    push: Push,
    webhooks: Option<im_webhooks::Webhooks>,
    /// Connections are on other processes too: the logic tier reports new messages and the
    /// presence registry says who is offline (instead of this process's hub).
    clustered: bool,
}

impl Extras {
    fn new(push: Push, webhooks: Option<im_webhooks::Webhooks>, clustered: bool) -> Extras {
        Extras {
            push,
            webhooks,
            clustered,
        }
    }

    /// For the hub of the only gateway.
    fn offline_sink(&self) -> Option<Arc<dyn gateway::router::OfflineSink>> {
        if self.clustered {
            return None;
        }
        self.push
            .as_ref()
            .map(|(notifier, _)| notifier.clone() as Arc<dyn gateway::router::OfflineSink>)
    }

    /// For the logic tier, in a cluster.
    fn logic_notifier(&self) -> Option<Arc<crate::offline_push::OfflineNotifier>> {
        if !self.clustered {
            return None;
        }
        self.push.as_ref().map(|(notifier, _)| notifier.clone())
    }

    fn policy(&self) -> Option<Arc<dyn MessagePolicy>> {
        self.webhooks.clone().map(webhook_policy)
    }

    /// Sends what is queued, bounded.
    async fn close(&self) {
        if let Some((_, dispatcher)) = &self.push {
            dispatcher.close(PUSH_CLOSE_TIMEOUT).await;
        }
        if let Some(hooks) = &self.webhooks {
            hooks.close(HOOKS_CLOSE_TIMEOUT).await;
        }
    }
}
