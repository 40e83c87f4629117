//! `gateway`: the single-process IM server (gateway + logic + embedded store), and `gateway
//! token`, which mints a development token with the same secret the server uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::app::{self, ServerOptions};
use gateway::auth::{Claims, TokenKey, default_secret_file, load_or_create_secret};
use gateway::{hub, server, session};

// The store writer and the codecs allocate many small buffers; glibc malloc spent a third of
// the server's CPU on them in a W1 profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A complete single-node IM server: accepts clients on TCP, stores every message durably in
/// DATA_DIR before acknowledging it, and pushes to online devices.
#[derive(Parser, Debug)]
#[command(name = "gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Directory for the message store and the generated token secret.
    #[arg(long, env = "IM_DATA_DIR", default_value = "data", global = true)]
    data_dir: PathBuf,
    /// Shared token secret (HS256). Default: read DATA_DIR/token.secret, created on first use.
    #[arg(long, env = "IM_TOKEN_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,
    /// File holding the token secret, instead of DATA_DIR/token.secret.
    #[arg(long, env = "IM_TOKEN_SECRET_FILE", global = true)]
    secret_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to accept plain-TCP clients on.
    #[arg(long, env = "IM_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Heartbeat interval announced to clients, in seconds; the idle timeout is three of them.
    #[arg(long, env = "IM_HEARTBEAT_SECS", default_value_t = session::DEFAULT_HEARTBEAT_SECS)]
    heartbeat_secs: u64,
    /// Seconds a new connection has to authenticate.
    #[arg(long, env = "IM_HANDSHAKE_TIMEOUT_SECS", default_value_t = session::DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    handshake_timeout_secs: u64,
    /// Requests per second one connection may send (0 = unlimited); the burst is twice this.
    #[arg(long, env = "IM_RATE_LIMIT", default_value_t = session::DEFAULT_RATE_PER_SEC)]
    rate_limit: u32,
    /// Largest message content in bytes.
    #[arg(long, env = "IM_MAX_MESSAGE_BYTES", default_value_t = logic::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Largest frame body in bytes.
    #[arg(long, env = "IM_MAX_FRAME_BYTES", default_value_t = im_protocol::DEFAULT_MAX_BODY)]
    max_frame_bytes: usize,
    /// Largest group (members, owner included); groups use write fan-out up to this size.
    #[arg(long, env = "IM_MAX_GROUP_MEMBERS", default_value_t = logic::DEFAULT_MAX_GROUP_MEMBERS)]
    max_group_members: u32,
    /// Seconds after sending during which a sender may recall a message.
    #[arg(long, env = "IM_RECALL_WINDOW_SECS", default_value_t = logic::DEFAULT_RECALL_WINDOW_SECS)]
    recall_window_secs: u64,
    /// Most concurrent connections.
    #[arg(long, env = "IM_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most live connections of one user (each of another device); more are refused with
    /// TOO_MANY_CONNECTIONS.
    #[arg(long, env = "IM_MAX_CONNECTIONS_PER_USER", default_value_t = hub::DEFAULT_MAX_CONNECTIONS_PER_USER)]
    max_connections_per_user: usize,
    /// Bytes of outbound frames queued for one connection before it counts as too slow.
    #[arg(long, env = "IM_OUTBOUND_QUEUE_BYTES", default_value_t = server::DEFAULT_OUTBOUND_QUEUE_BYTES)]
    outbound_queue_bytes: usize,
    /// Seconds a connection may leave its outbound data unread before it is closed (its
    /// requests are not read meanwhile). Fractions allowed.
    #[arg(long, env = "IM_SLOW_CLIENT_TIMEOUT_SECS", default_value_t = server::DEFAULT_SLOW_CLIENT_TIMEOUT_SECS as f64)]
    slow_client_timeout_secs: f64,
    /// Kernel send buffer of each client socket in bytes (0 = kernel autotuning, which lets
    /// a peer that does not read pin up to 4 MiB of kernel memory).
    #[arg(long, env = "IM_SOCKET_SEND_BUFFER_BYTES", default_value_t = app::DEFAULT_SOCKET_SEND_BUFFER)]
    socket_send_buffer_bytes: u32,
    /// Refuse writes (retryable UNAVAILABLE) while the data directory's filesystem has less
    /// free space than this many bytes; reads keep working, writes resume by themselves once
    /// space is freed (0 = no threshold).
    #[arg(long, env = "IM_MIN_FREE_DISK_BYTES", default_value_t = store_embedded::DEFAULT_MIN_FREE_BYTES)]
    min_free_disk_bytes: u64,
    /// Storage bytes per second one sender's messages may write: the content once plus 128
    /// bytes per recipient (0 = unlimited). Above it sends get RATE_LIMITED.
    #[arg(long, env = "IM_FANOUT_BYTES_PER_SEC", default_value_t = logic::DEFAULT_FANOUT_BYTES_PER_SEC)]
    fanout_bytes_per_sec: u64,
    /// Burst of the per-sender storage budget, in bytes.
    #[arg(long, env = "IM_FANOUT_BURST_BYTES", default_value_t = logic::DEFAULT_FANOUT_BURST_BYTES)]
    fanout_burst_bytes: u64,
    /// Most entries kept per user inbox; older ones are trimmed, and a device syncing from
    /// below them gets a TRIMMED range (0 = no limit).
    #[arg(long, env = "IM_INBOX_RETENTION_ENTRIES", default_value_t = app::DEFAULT_INBOX_RETENTION_ENTRIES)]
    inbox_retention_entries: u64,
    /// Days inbox entries are kept (0 = forever). History is not affected.
    #[arg(long, env = "IM_INBOX_RETENTION_DAYS", default_value_t = app::DEFAULT_INBOX_RETENTION_DAYS)]
    inbox_retention_days: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Give the store in DATA_DIR a new inbox epoch, after restoring it from a backup (with
    /// the server stopped): every client then resets and resyncs instead of trusting seqs it
    /// saw before the restore.
    RenewInboxEpoch,
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

fn secret(common: &Common) -> anyhow::Result<TokenKey> {
    let file = common
        .secret_file
        .clone()
        .unwrap_or_else(|| default_secret_file(&common.data_dir));
    let secret = load_or_create_secret(common.secret.as_deref(), &file)
        .with_context(|| format!("reading or creating the token secret {}", file.display()))?;
    let source = match &common.secret {
        Some(_) => "--secret / IM_TOKEN_SECRET".to_string(),
        None => file.display().to_string(),
    };
    TokenKey::strong(secret).with_context(|| format!("refusing the token secret from {source}"))
}

fn main() -> anyhow::Result<()> {
    // Everything the server writes (the store's journal holds message text in plain form, the
    // token secret) is for its own user only: files 0600, directories 0700.
    // SAFETY: umask takes no pointers and cannot fail; it runs before any thread starts.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    unsafe {
        umask(0o077);
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token {
            user,
            device,
            ttl_secs,
            expires_at,
        }) => {
            im_protocol::ids::validate_id(&user, "--user").map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(device) = &device {
                im_protocol::ids::validate_id(device, "--device")
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let key = secret(&cli.common)?;
            let token = key.sign(&Claims {
                sub: user,
                dev: device,
                plt: None,
                exp: expires_at.unwrap_or_else(|| now.saturating_add_signed(ttl_secs)),
                iat: Some(now),
            });
            println!("{token}");
            Ok(())
        }
        Some(Command::RenewInboxEpoch) => {
            let dir = cli.common.data_dir.join("store");
            let epoch = store_embedded::renew_inbox_epoch(&dir)
                .with_context(|| format!("renewing the inbox epoch of {}", dir.display()))?;
            println!("new inbox epoch {epoch}");
            Ok(())
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        // fjall logs every journal and table it touches at INFO: operators want
                        // the server's own lines by default.
                        .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            // Store reads run on the blocking pool; a few threads serve two cores well, and the
            // default of 512 let a login storm start hundreds of threads whose stacks stayed in
            // RSS.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .max_blocking_threads(8)
                .enable_all()
                .build()?;
            runtime.spawn(return_freed_memory());
            runtime.block_on(run(cli.common, cli.serve))
        }
    }
}

async fn run(common: Common, args: ServeArgs) -> anyhow::Result<()> {
    let tokens = secret(&common)?;
    let options = ServerOptions {
        heartbeat: Duration::from_secs(args.heartbeat_secs),
        handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
        rate_limit: args.rate_limit,
        max_message_bytes: args.max_message_bytes,
        max_frame_bytes: args.max_frame_bytes,
        max_group_members: args.max_group_members,
        recall_window: Duration::from_secs(args.recall_window_secs),
        max_connections: args.max_connections,
        max_connections_per_user: args.max_connections_per_user,
        outbound_queue_bytes: args.outbound_queue_bytes,
        slow_client_timeout: Duration::try_from_secs_f64(args.slow_client_timeout_secs)
            .context("--slow-client-timeout-secs must be a non-negative number of seconds")?,
        socket_send_buffer_bytes: args.socket_send_buffer_bytes,
        min_free_disk_bytes: args.min_free_disk_bytes,
        fanout_bytes_per_sec: args.fanout_bytes_per_sec,
        fanout_burst_bytes: args.fanout_burst_bytes,
        inbox_retention_entries: args.inbox_retention_entries,
        inbox_retention_age: Duration::from_secs(
            args.inbox_retention_days.saturating_mul(24 * 3600),
        ),
        ..ServerOptions::new(args.listen, common.data_dir.clone(), tokens)
    };
    let server = app::start(options).await.context("starting the server")?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on {}", server.addr);
    tracing::info!(addr = %server.addr, data_dir = %common.data_dir.display(), "gateway started");
    let shutdown = server.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.task.await.context("server task")??;
    Ok(())
}

#[allow(unsafe_code)]
unsafe extern "C" {
    /// POSIX: sets the file mode creation mask and returns the previous one.
    #[cfg(unix)]
    fn umask(mask: u32) -> u32;

    /// mimalloc: free what can be freed and carry out the due purges (returning freed pages
    /// to the OS). Part of mimalloc's stable C API.
    fn mi_collect(force: bool);
}

/// mimalloc returns freed pages to the OS only from a later allocation or free on the same
/// heap: after a burst (connections that held megabytes of queued frames closing), an idle
/// server kept the memory. A periodic collect on every worker returns it.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            mi_collect(false)
        };
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
