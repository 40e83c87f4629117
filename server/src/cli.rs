//! The server's command line, shared by the binary and by tests that start a server in their
//! own process with the same flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::auth::TokenKey;
use gateway::{hub, server, session};
use im_presence::PresenceOptions;

use gateway::transport::http_tunnel::TunnelConfig;
use gateway::transport::tls::{TlsError, TlsIdentity};

use crate::app::{self, CqlSettings, Role, ServerOptions, StoreChoice, TlsOptions};

/// Why the settings do not make a server.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The slow-client timeout is not a number of seconds.
    #[error("--slow-client-timeout-secs must be a non-negative number of seconds")]
    SlowClientTimeout,
    /// The TLS certificate or key.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The development certificate could not be stored.
    #[error("TLS development certificate: {0}")]
    Io(#[from] std::io::Error),
    /// A gateway without logic nodes.
    #[error("--role gateway needs --logic-nodes HOST:PORT[,HOST:PORT...]")]
    NoLogicNodes,
    /// --logic-nodes with a role that does not call logic nodes.
    #[error("--logic-nodes runs a gateway, which --role {0} is not: drop one of them")]
    LogicNodesWithRole(&'static str),
    /// A CQL store without contact points.
    #[error("--store cql needs --cql-nodes HOST:PORT[,HOST:PORT...]")]
    NoCqlNodes,
    /// The webhook settings are unusable.
    #[error("webhooks: {0}")]
    Webhook(im_webhooks::ConfigError),
    /// An admin key anyone could guess.
    #[error("--admin-key must be at least {0} characters")]
    WeakAdminKey(usize),
}

/// Shortest admin key accepted.
pub const MIN_ADMIN_KEY_CHARS: usize = 24;

/// How the server writes its log lines (on stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Text for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The admin listener: metrics, health, the server API.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Serve /metrics (Prometheus), /healthz, /readyz, the server API (/v1/...) and its OpenAPI
    /// document (/openapi.json) on this address, e.g. 127.0.0.1:9090. Off unless given. Keep
    /// it on loopback or a private network: it is for operators and the app's backend.
    #[arg(long, env = "IM_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The key callers of the server API present as `Authorization: Bearer KEY` (at least 24
    /// characters). Without it the API answers 403; metrics and health work without a key.
    #[arg(long, env = "IM_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
}

/// Webhooks: the app's server asked before each send and told after messages, group changes
/// and devices connecting or leaving.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// URL every webhook is POSTed to (http:// or https://), signed with --webhook-secret.
    #[arg(long, env = "IM_WEBHOOK_URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The webhooks' HMAC-SHA256 signing secret (at least 16 bytes).
    #[arg(long, env = "IM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Milliseconds one webhook call may take (the before-send call holds the send this long
    /// at most).
    #[arg(long, env = "IM_WEBHOOK_TIMEOUT_MS", default_value_t = 2000)]
    pub webhook_timeout_ms: u64,
    /// When the app's server cannot be asked before a send: refuse the send (retryable
    /// UNAVAILABLE) instead of storing it.
    #[arg(long, env = "IM_WEBHOOK_FAIL_CLOSED")]
    pub webhook_fail_closed: bool,
    /// Turn off the before-send call (after-events are still sent).
    #[arg(long, env = "IM_WEBHOOK_NO_BEFORE_SEND")]
    pub webhook_no_before_send: bool,
    /// After-events waiting for delivery; more are dropped and counted.
    #[arg(long, env = "IM_WEBHOOK_QUEUE", default_value_t = 10_000)]
    pub webhook_queue: usize,
    /// Attempts per after-event before it is given up.
    #[arg(long, env = "IM_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Milliseconds before the first retry of an after-event (doubling, up to a minute).
    #[arg(long, env = "IM_WEBHOOK_RETRY_MS", default_value_t = 500)]
    pub webhook_retry_ms: u64,
}

impl WebhookArgs {
    fn settings(&self) -> Result<Option<im_webhooks::WebhookConfig>, OptionsError> {
        let (Some(url), Some(secret)) = (&self.webhook_url, &self.webhook_secret) else {
            return Ok(None);
        };
        let mut config = im_webhooks::WebhookConfig::new(url, secret.as_bytes())
            .map_err(OptionsError::Webhook)?;
        config.timeout = Duration::from_millis(self.webhook_timeout_ms.max(1));
        config.before_send_failure = if self.webhook_fail_closed {
            im_webhooks::FailurePolicy::Closed
        } else {
            im_webhooks::FailurePolicy::Open
        };
        config.events.before_send = !self.webhook_no_before_send;
        config.queue_capacity = self.webhook_queue.max(1);
        config.max_attempts = self.webhook_max_attempts.max(1);
        config.initial_backoff = Duration::from_millis(self.webhook_retry_ms.max(1));
        config.max_backoff = config.max_backoff.max(config.initial_backoff);
        config.validate().map_err(OptionsError::Webhook)?;
        Ok(Some(config))
    }
}

/// Offline push notifications (SPEC §13.11): the providers, and how often a user may be woken.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// The deployment's own push gateway: notifications for PUSH_SERVICE_WEBHOOK tokens are
    /// POSTed here as signed JSON (X-IM-Signature: v1=HMAC-SHA256 of "TIMESTAMP.BODY").
    #[arg(long, env = "IM_PUSH_WEBHOOK_URL", requires = "push_webhook_secret")]
    pub push_webhook_url: Option<String>,
    /// The push webhook's signing secret.
    #[arg(long, env = "IM_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    pub push_webhook_secret: Option<String>,
    /// APNs: the AuthKey_KEYID.p8 file from the Apple developer account (token auth).
    #[arg(long, env = "IM_APNS_KEY_FILE", requires_all = ["apns_key_id", "apns_team_id", "apns_bundle_id"])]
    pub apns_key_file: Option<PathBuf>,
    /// APNs: the key's 10-character Key ID.
    #[arg(long, env = "IM_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    /// APNs: the 10-character Team ID.
    #[arg(long, env = "IM_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// APNs: the app's bundle id (the apns-topic).
    #[arg(long, env = "IM_APNS_BUNDLE_ID")]
    pub apns_bundle_id: Option<String>,
    /// APNs endpoint: https://api.push.apple.com (production, the default) or
    /// https://api.sandbox.push.apple.com (development builds).
    #[arg(long, env = "IM_APNS_URL", default_value = im_push::APNS_PRODUCTION_URL)]
    pub apns_url: String,
    /// FCM: the service-account JSON key file from the Firebase console.
    #[arg(long, env = "IM_FCM_SERVICE_ACCOUNT")]
    pub fcm_service_account: Option<PathBuf>,
    /// FCM endpoint.
    #[arg(long, env = "IM_FCM_URL", default_value = im_push::FCM_URL)]
    pub fcm_url: String,
    /// Notifications one user may get per minute once the burst is used (0 = no limit);
    /// messages over it are folded into the next notification.
    #[arg(long, env = "IM_PUSH_ALERTS_PER_MINUTE", default_value_t = 10)]
    pub push_alerts_per_minute: u32,
    /// Notifications one user may get back to back.
    #[arg(long, env = "IM_PUSH_ALERT_BURST", default_value_t = 3)]
    pub push_alert_burst: u32,
    /// Messages to one user within this many milliseconds become one notification.
    #[arg(long, env = "IM_PUSH_BATCH_WINDOW_MS", default_value_t = 1000)]
    pub push_batch_window_ms: u64,
}

impl PushArgs {
    fn settings(&self) -> crate::offline_push::PushSettings {
        crate::offline_push::PushSettings {
            webhook: self
                .push_webhook_url
                .clone()
                .zip(self.push_webhook_secret.clone())
                .map(|(url, secret)| (url, secret.into_bytes())),
            apns: match (
                &self.apns_key_file,
                &self.apns_key_id,
                &self.apns_team_id,
                &self.apns_bundle_id,
            ) {
                (Some(file), Some(key_id), Some(team), Some(bundle)) => Some(im_push::ApnsConfig {
                    base_url: self.apns_url.clone(),
                    ..im_push::ApnsConfig::new(team, key_id, file, bundle)
                }),
                _ => None,
            },
            fcm: self
                .fcm_service_account
                .as_ref()
                .map(|file| im_push::FcmConfig {
                    base_url: self.fcm_url.clone(),
                    ..im_push::FcmConfig::new(file)
                }),
            dispatcher: im_push::DispatcherConfig {
                alerts_per_minute: self.push_alerts_per_minute,
                alert_burst: self.push_alert_burst.max(1),
                batch_window: Duration::from_millis(self.push_batch_window_ms),
                ..im_push::DispatcherConfig::default()
            },
        }
    }
}

impl AdminArgs {
    /// The admin listener's settings, when it is on.
    fn settings(&self, system_user: &str) -> Result<Option<app::AdminSettings>, OptionsError> {
        if let Some(key) = &self.admin_key
            && key.chars().count() < MIN_ADMIN_KEY_CHARS
        {
            return Err(OptionsError::WeakAdminKey(MIN_ADMIN_KEY_CHARS));
        }
        Ok(self.admin_listen.map(|listen| app::AdminSettings {
            listen,
            admin_key: self.admin_key.clone(),
            system_user: system_user.to_owned(),
        }))
    }
}

/// What a server process runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    /// Gateway, logic tier and store in one process.
    All,
    /// Client connections only; the logic tier on --logic-nodes.
    Gateway,
    /// A logic node serving gateways on --listen.
    Logic,
}

/// Where the logic tier keeps its data.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreArg {
    /// On disk in DATA_DIR.
    Embedded,
    /// A ScyllaDB or Cassandra cluster (--cql-nodes).
    Cql,
}

/// Writes a self-signed certificate for `hosts` into `dir` (cert.pem, and key.pem readable by
/// the owner only).
pub fn write_dev_cert(dir: &std::path::Path, hosts: &[String]) -> Result<(), OptionsError> {
    let pair = TlsIdentity::self_signed(hosts)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cert.pem"), &pair.cert_pem)?;
    let key = dir.join("key.pem");
    std::fs::write(&key, &pair.key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The development identity in `dir`, made on first use (for localhost and 127.0.0.1).
fn dev_identity(dir: &std::path::Path) -> Result<TlsIdentity, OptionsError> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        write_dev_cert(dir, &["localhost".into(), "127.0.0.1".into()])?;
        tracing::warn!(
            cert = %cert.display(),
            "TLS without --tls-cert: using a self-signed development certificate; clients must trust this file"
        );
    }
    Ok(TlsIdentity::from_pem_files(&cert, &key)?)
}

/// The IM server: accepts clients on TCP, stores every message durably before acknowledging it,
/// and pushes to online devices. One process holds everything by default (messages in
/// DATA_DIR). Split in two: `im-server logic --listen ADDR` runs the logic tier and its store,
/// and `im-server --logic-nodes ADDR[,ADDR...]` a gateway calling it; several of each over
/// ScyllaDB or Cassandra (--store cql) and Redis make a cluster (also --role gateway|logic).
#[derive(Parser, Debug)]
#[command(name = "im-server", version, about)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do; none = serve.
    pub command: Option<Command>,
    #[command(flatten)]
    /// Settings of every command.
    pub common: Common,
    #[command(flatten)]
    /// Settings of the server.
    pub serve: ServeArgs,
}

/// Settings every command reads: where the data and the token secret are.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// A TOML file of settings: its keys are these long flags without the dashes
    /// (`rate-limit = 0`, `logic-nodes = ["a:7000", "b:7000"]`); `IM_*` variables and flags
    /// override it. `im-server config` prints what is in effect.
    #[arg(long, env = "IM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the message store and the generated token secret.
    #[arg(long, env = "IM_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// Shared token secret (HS256). Default: read DATA_DIR/token.secret, created on first use.
    #[arg(long, env = "IM_TOKEN_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,
    /// File holding the token secret, instead of DATA_DIR/token.secret.
    #[arg(long, env = "IM_TOKEN_SECRET_FILE", global = true)]
    pub secret_file: Option<PathBuf>,
    /// Log lines on stderr: `human` text or `json` (one object per line). RUST_LOG sets the
    /// levels (default: info).
    #[arg(long, env = "IM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
}

/// The server's settings.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to accept plain-TCP clients on.
    #[arg(long, env = "IM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Heartbeat interval announced to clients, in seconds; the idle timeout is three of them.
    #[arg(long, env = "IM_HEARTBEAT_SECS", default_value_t = session::DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat_secs: u64,
    /// Seconds a new connection has to authenticate.
    #[arg(long, env = "IM_HANDSHAKE_TIMEOUT_SECS", default_value_t = session::DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    pub handshake_timeout_secs: u64,
    /// Requests per second one connection may send (0 = unlimited); the burst is twice this.
    #[arg(long, env = "IM_RATE_LIMIT", default_value_t = session::DEFAULT_RATE_PER_SEC)]
    pub rate_limit: u32,
    /// Most concurrent connections.
    #[arg(long, env = "IM_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most live connections of one user (each of another device); more are refused with
    /// TOO_MANY_CONNECTIONS.
    #[arg(long, env = "IM_MAX_CONNECTIONS_PER_USER", default_value_t = hub::DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,
    /// Bytes of outbound frames queued for one connection before it counts as too slow.
    #[arg(long, env = "IM_OUTBOUND_QUEUE_BYTES", default_value_t = server::DEFAULT_OUTBOUND_QUEUE_BYTES)]
    pub outbound_queue_bytes: usize,
    /// Seconds a connection may leave its outbound data unread before it is closed (its
    /// requests are not read meanwhile). Fractions allowed.
    #[arg(long, env = "IM_SLOW_CLIENT_TIMEOUT_SECS", default_value_t = server::DEFAULT_SLOW_CLIENT_TIMEOUT_SECS as f64)]
    pub slow_client_timeout_secs: f64,
    /// Kernel send buffer of each client socket in bytes (0 = kernel autotuning, which lets
    /// a peer that does not read pin up to 4 MiB of kernel memory).
    #[arg(long, env = "IM_SOCKET_SEND_BUFFER_BYTES", default_value_t = app::DEFAULT_SOCKET_SEND_BUFFER)]
    pub socket_send_buffer_bytes: u32,
    /// Address to accept TLS clients on: 443 in production, an unprivileged port such as
    /// 0.0.0.0:8443 for development. TLS is off unless this is given.
    #[arg(long, env = "IM_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// PEM file with the TLS certificate chain, leaf first. Without --tls-cert and --tls-key, a
    /// self-signed pair for localhost is made once in DATA_DIR/tls/ (development only).
    #[arg(long, env = "IM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the TLS private key.
    #[arg(long, env = "IM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Turn off QUIC, which is otherwise served on UDP at the --tls-listen port number.
    #[arg(long, env = "IM_NO_QUIC")]
    pub no_quic: bool,
    /// Turn off the HTTP tunnel (SPEC §18), which is otherwise served on the plain and the TLS
    /// port for clients that can reach the server only through HTTP.
    #[arg(long, env = "IM_NO_HTTP_TUNNEL")]
    pub no_http_tunnel: bool,
    /// Longest a tunnel's downstream poll is held open before it is answered empty, in seconds.
    /// At most 30 (clients wait 40 s for an answer);
    /// keep it under the idle timeout of the HTTP proxies in the way.
    #[arg(long, env = "IM_TUNNEL_POLL_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub tunnel_poll_secs: u64,
    /// Seconds an HTTP client has to send a request's head, and then its body; a slower one is
    /// cut off (the head) or answered 408 (the body).
    #[arg(long, env = "IM_TUNNEL_REQUEST_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub tunnel_request_timeout_secs: u64,
    /// A tunnel with no request for this many seconds is closed.
    #[arg(long, env = "IM_TUNNEL_IDLE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tunnel_idle_secs: u64,
    /// What this process runs: everything (the default), a gateway of a cluster (the default
    /// when --logic-nodes is given), or a logic node of a cluster (serving gateways on
    /// --listen; `im-server logic` does the same).
    #[arg(long, env = "IM_ROLE", value_enum)]
    pub role: Option<RoleArg>,
    /// Run a gateway only, calling these logic nodes (`im-server logic`) for everything else:
    /// comma-separated HOST:PORT. No store is opened.
    #[arg(long, env = "IM_LOGIC_NODES", value_delimiter = ',')]
    pub logic_nodes: Vec<String>,
    /// Milliseconds a gateway waits for one call to a logic node before trying another. A node
    /// that stops answering the gateway's pings (every 500 ms) is left after 1.5 s instead,
    /// whatever this says: this deadline is for a node that is alive but too slow.
    #[arg(long, env = "IM_LOGIC_TIMEOUT_MS", default_value_t = 10_000)]
    pub logic_timeout_ms: u64,
    /// Redis for the cluster's presence registry and the pushes between gateways
    /// (redis://HOST:PORT/). Without it, this gateway pushes only to its own connections.
    #[arg(long, env = "IM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// This gateway's id in the cluster; default: random at every start.
    #[arg(long, env = "IM_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// When draining (SIGTERM, or POST /v1/drain), tell clients to reconnect to this HOST:PORT
    /// (`Kick.redirect_addr`) instead of the same address.
    #[arg(long, env = "IM_DRAIN_REDIRECT")]
    pub drain_redirect: Option<String>,
    /// When draining, send clients away at this many per second, so their reconnects reach the
    /// other gateways spread out (0 = all at once).
    #[arg(long, env = "IM_DRAIN_RATE", default_value_t = 1000)]
    pub drain_rate: u32,
    /// The longest a drain's kicks may take, in seconds: with more clients than the rate sends
    /// away in this time, the rate rises to fit.
    #[arg(long, env = "IM_DRAIN_WINDOW_SECS", default_value_t = 30)]
    pub drain_window_secs: u64,
    /// The user id messages sent through the server API "as the system" come from.
    #[arg(long, env = "IM_SYSTEM_USER", default_value = "system")]
    pub system_user: String,
    /// The admin listener.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Offline push notifications.
    #[command(flatten)]
    pub push: PushArgs,
    /// Webhooks.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// The logic tier's settings (when this process runs it).
    #[command(flatten)]
    pub logic: LogicArgs,
}

/// The logic tier's settings: read by the all-in-one server and by a logic node. A gateway
/// alone reads only --max-frame-bytes here; the rest are the logic nodes' business.
#[derive(clap::Args, Debug, Clone)]
pub struct LogicArgs {
    /// Largest message content in bytes.
    #[arg(long, env = "IM_MAX_MESSAGE_BYTES", default_value_t = logic::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Largest frame body in bytes: a gateway's frame limit, and the page size of the logic
    /// tier's answers (give a cluster's gateways and logic nodes the same value).
    #[arg(long, env = "IM_MAX_FRAME_BYTES", default_value_t = im_protocol::DEFAULT_MAX_BODY)]
    pub max_frame_bytes: usize,
    /// Largest group (members, owner included). Without read fan-out (logic nodes, the CQL
    /// store, or --read-fanout-threshold 0) groups stop at 1,000 whatever this says.
    #[arg(long, env = "IM_MAX_GROUP_MEMBERS", default_value_t = logic::DEFAULT_MAX_GROUP_MEMBERS)]
    pub max_group_members: u32,
    /// Groups with more members than this switch to read fan-out (one copy of a message in
    /// the group's timeline instead of one per member's inbox; SPEC §13.12), and back when
    /// they shrink to half of it. 0 = every group in write fan-out. One process with the
    /// embedded or memory store only: logic nodes keep write fan-out.
    #[arg(long, env = "IM_READ_FANOUT_THRESHOLD", default_value_t = logic::DEFAULT_READ_FANOUT_THRESHOLD)]
    pub read_fanout_threshold: u32,
    /// Seconds after sending during which a sender may recall a message.
    #[arg(long, env = "IM_RECALL_WINDOW_SECS", default_value_t = logic::DEFAULT_RECALL_WINDOW_SECS)]
    pub recall_window_secs: u64,
    /// Refuse writes (retryable UNAVAILABLE) while the data directory's filesystem has less
    /// free space than this many bytes; reads keep working, writes resume by themselves once
    /// space is freed (0 = no threshold).
    #[arg(long, env = "IM_MIN_FREE_DISK_BYTES", default_value_t = store_embedded::DEFAULT_MIN_FREE_BYTES)]
    pub min_free_disk_bytes: u64,
    /// Storage bytes per second one sender's messages may write: the content once plus 128
    /// bytes per recipient (0 = unlimited). Above it sends get RATE_LIMITED.
    #[arg(long, env = "IM_FANOUT_BYTES_PER_SEC", default_value_t = logic::DEFAULT_FANOUT_BYTES_PER_SEC)]
    pub fanout_bytes_per_sec: u64,
    /// Burst of the per-sender storage budget, in bytes.
    #[arg(long, env = "IM_FANOUT_BURST_BYTES", default_value_t = logic::DEFAULT_FANOUT_BURST_BYTES)]
    pub fanout_burst_bytes: u64,
    /// Most entries kept per user inbox; older ones are trimmed, and a device syncing from
    /// below them gets a TRIMMED range (0 = no limit).
    #[arg(long, env = "IM_INBOX_RETENTION_ENTRIES", default_value_t = app::DEFAULT_INBOX_RETENTION_ENTRIES)]
    pub inbox_retention_entries: u64,
    /// Days inbox entries are kept (0 = forever). History is not affected.
    #[arg(long, env = "IM_INBOX_RETENTION_DAYS", default_value_t = app::DEFAULT_INBOX_RETENTION_DAYS)]
    pub inbox_retention_days: u64,
    /// Where messages are stored: `embedded` (DATA_DIR) or `cql` (a ScyllaDB or Cassandra
    /// cluster, which several logic nodes can share).
    #[arg(long, env = "IM_STORE", value_enum, default_value_t = StoreArg::Embedded)]
    pub store: StoreArg,
    /// CQL contact points, comma-separated HOST:PORT (--store cql).
    #[arg(long, env = "IM_CQL_NODES", value_delimiter = ',')]
    pub cql_nodes: Vec<String>,
    /// The CQL keyspace (created if missing).
    #[arg(long, env = "IM_CQL_KEYSPACE", default_value = "im")]
    pub cql_keyspace: String,
    /// The keyspace's replication, a CQL map, used when creating it. For a real cluster:
    /// "{'class': 'NetworkTopologyStrategy', 'DC1': 3}".
    #[arg(
        long,
        env = "IM_CQL_REPLICATION",
        default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )]
    pub cql_replication: String,
}

/// A logic node's settings (`im-server logic`).
#[derive(clap::Args, Debug, Clone)]
pub struct LogicNodeArgs {
    /// Address gateways call the logic API on. The RPC between gateways and logic nodes is not
    /// authenticated (a gateway vouches for its clients): use an address of a private network.
    #[arg(long, env = "IM_LISTEN")]
    pub listen: SocketAddr,
    /// The logic tier's settings.
    #[command(flatten)]
    pub logic: LogicArgs,
    /// The admin listener (metrics and health; a logic node serves no server API).
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Webhooks: a logic node asks before sends and reports messages and group changes.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// Offline push: a logic node sends the notifications of a cluster.
    #[command(flatten)]
    pub push: PushArgs,
    /// The cluster's Redis (the gateways' --redis-url): with push providers, a logic node asks
    /// its presence registry who has no connection.
    #[arg(long, env = "IM_REDIS_URL")]
    pub redis_url: Option<String>,
}

/// Commands besides serving.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a logic node: the logic tier over its store (DATA_DIR by default), serving the
    /// logic API to gateways on --listen. Gateways are started with
    /// `--logic-nodes HOST:PORT[,...]`. Prints `logic listening on ADDR`.
    Logic(Box<LogicNodeArgs>),
    /// Give the store in DATA_DIR a new inbox epoch, after restoring it from a backup (with
    /// the server stopped): every client then resets and resyncs instead of trusting seqs it
    /// saw before the restore.
    RenewInboxEpoch,
    /// Write a self-signed TLS certificate and key (cert.pem, key.pem) for development: start
    /// the server with --tls-cert/--tls-key pointing at them, and have clients trust cert.pem.
    DevCert {
        /// Host names and IP addresses the certificate is for.
        #[arg(long = "host", default_values_t = [String::from("localhost"), String::from("127.0.0.1")])]
        hosts: Vec<String>,
        /// Directory to write cert.pem and key.pem into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the settings in effect (config file, then IM_* environment, then flags, over the
    /// built-in defaults) as a TOML config file, the token secret masked, and exit.
    Config,
    /// Print a token for USER signed with the server's secret (for development and tests).
    Token {
        /// User id.
        #[arg(long)]
        user: String,
        /// Device id the token is bound to; omitted = any device.
        #[arg(long)]
        device: Option<String>,
        /// Lifetime in seconds from now. Zero or negative values mint an already-expired token,
        /// for testing how clients handle TOKEN_EXPIRED.
        #[arg(long, default_value_t = 7 * 24 * 3600, allow_negative_numbers = true, conflicts_with = "expires_at")]
        ttl_secs: i64,
        /// Absolute expiry in Unix seconds, instead of --ttl-secs.
        #[arg(long)]
        expires_at: Option<u64>,
    },
}

impl Cli {
    /// The command without a config file's defaults: its flags in `--help`'s order.
    pub fn command_for_docs() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
    }
}

impl ServeArgs {
    /// The server's options: these settings, the store in `data_dir`, tokens checked with
    /// `tokens`. Fails for settings that do not make a server (a slow-client timeout that is
    /// not a number of seconds, an unusable TLS identity, a role without what it needs).
    pub fn options(
        &self,
        data_dir: PathBuf,
        tokens: TokenKey,
    ) -> Result<ServerOptions, OptionsError> {
        let tls = match self.tls_listen {
            Some(listen) => Some(TlsOptions {
                listen,
                identity: match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key)?,
                    _ => dev_identity(&data_dir.join("tls"))?,
                },
            }),
            None => None,
        };
        self.logic.apply(ServerOptions {
            heartbeat: Duration::from_secs(self.heartbeat_secs),
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            rate_limit: self.rate_limit,
            max_connections: self.max_connections,
            max_connections_per_user: self.max_connections_per_user,
            outbound_queue_bytes: self.outbound_queue_bytes,
            slow_client_timeout: Duration::try_from_secs_f64(self.slow_client_timeout_secs)
                .map_err(|_| OptionsError::SlowClientTimeout)?,
            socket_send_buffer_bytes: self.socket_send_buffer_bytes,
            tls,
            quic: !self.no_quic,
            http_tunnel: (!self.no_http_tunnel).then(|| TunnelConfig {
                poll_wait: Duration::from_secs(self.tunnel_poll_secs),
                idle_timeout: Duration::from_secs(self.tunnel_idle_secs),
                request_timeout: Duration::from_secs(self.tunnel_request_timeout_secs),
                // An HTTP connection idles at most through one poll and the gap to the next.
                connection_idle_timeout: Duration::from_secs(self.tunnel_poll_secs + 15),
                max_http_connections: self.max_connections.saturating_mul(2),
                ..TunnelConfig::default()
            }),
            role: role(self.role, &self.logic_nodes)?,
            presence: self.redis_url.as_ref().map(|url| {
                let id = self
                    .gateway_id
                    .clone()
                    .unwrap_or_else(|| format!("gw-{:016x}", rand::random::<u64>()));
                PresenceOptions::new(url.clone(), id)
            }),
            logic_attempt_timeout: Duration::from_millis(self.logic_timeout_ms.max(50)),
            admin: self.admin.settings(&self.system_user)?,
            push: self.push.settings(),
            webhooks: self.webhooks.settings()?,
            drain: gateway::server::DrainPlan {
                redirect_addr: self.drain_redirect.clone().unwrap_or_default(),
                kicks_per_sec: self.drain_rate,
                window: Duration::from_secs(self.drain_window_secs),
                // Sent elsewhere, a client may go at once (its jitter spreads it); told to
                // come back here, it waits for this process's successor to start.
                retry_after_ms: if self.drain_redirect.is_some() {
                    0
                } else {
                    1000
                },
                close_timeout: Duration::from_secs(5),
            },
            ..ServerOptions::new(self.listen, data_dir, tokens)
        })
    }
}

/// What runs, from --role and --logic-nodes: logic nodes without a role make a gateway.
fn role(role: Option<RoleArg>, logic_nodes: &[String]) -> Result<Role, OptionsError> {
    match (role, logic_nodes.is_empty()) {
        (None | Some(RoleArg::All), true) => Ok(Role::All),
        (None | Some(RoleArg::Gateway), false) => Ok(Role::Gateway {
            logic_nodes: logic_nodes.to_vec(),
        }),
        (Some(RoleArg::Gateway), true) => Err(OptionsError::NoLogicNodes),
        (Some(RoleArg::Logic), true) => Ok(Role::Logic),
        (Some(RoleArg::All), false) => Err(OptionsError::LogicNodesWithRole("all")),
        (Some(RoleArg::Logic), false) => Err(OptionsError::LogicNodesWithRole("logic")),
    }
}

impl LogicArgs {
    /// `options` with the logic tier's settings and store set from these.
    fn apply(&self, options: ServerOptions) -> Result<ServerOptions, OptionsError> {
        let store = match self.store {
            StoreArg::Embedded => StoreChoice::Embedded,
            StoreArg::Cql if self.cql_nodes.is_empty() => return Err(OptionsError::NoCqlNodes),
            StoreArg::Cql => StoreChoice::Cql(CqlSettings {
                nodes: self.cql_nodes.clone(),
                keyspace: self.cql_keyspace.clone(),
                replication: self.cql_replication.clone(),
            }),
        };
        Ok(ServerOptions {
            max_message_bytes: self.max_message_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_group_members: self.max_group_members,
            read_fanout_threshold: self.read_fanout_threshold,
            recall_window: Duration::from_secs(self.recall_window_secs),
            min_free_disk_bytes: self.min_free_disk_bytes,
            fanout_bytes_per_sec: self.fanout_bytes_per_sec,
            fanout_burst_bytes: self.fanout_burst_bytes,
            inbox_retention_entries: self.inbox_retention_entries,
            inbox_retention_age: Duration::from_secs(
                self.inbox_retention_days.saturating_mul(24 * 3600),
            ),
            store,
            ..options
        })
    }
}

impl LogicNodeArgs {
    /// A logic node's options: these settings, its store in `data_dir` (embedded) or the CQL
    /// cluster named. A logic node checks no token (gateways authenticate clients), so the
    /// options carry an empty token key, which `app::start` refuses: they cannot start a
    /// gateway by mistake.
    pub fn options(&self, data_dir: PathBuf) -> Result<ServerOptions, OptionsError> {
        self.logic.apply(ServerOptions {
            role: Role::Logic,
            admin: self.admin.settings("system")?,
            webhooks: self.webhooks.settings()?,
            push: self.push.settings(),
            presence: self
                .redis_url
                .as_ref()
                .map(|url| PresenceOptions::new(url.clone(), "logic-node")),
            ..ServerOptions::new(self.listen, data_dir, TokenKey::new(Vec::new()))
        })
    }
}
