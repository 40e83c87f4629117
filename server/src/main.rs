//! `im-server`: the IM server. By default one process holds everything (gateway + logic +
//! embedded store); `im-server logic` runs a logic node and `--logic-nodes` (or `--role
//! gateway`) a gateway calling logic nodes, the parts of a split server or a cluster. Also
//! `im-server token`, which mints a development token with the same secret the server uses.

use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use gateway::auth::{Claims, TokenKey, default_secret_file, load_or_create_secret};
use im_server::app;
use im_server::cli::{Cli, Command, Common, LogFormat, LogicNodeArgs, ServeArgs};
use im_server::config_file;

// The store writer and the codecs allocate many small buffers; glibc malloc spent a third of
// the server's CPU on them in a W1 profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    let mut from_file = std::collections::BTreeSet::new();
    if let Some(path) = config_file::config_path(&args, std::env::var_os(config_file::CONFIG_ENV)) {
        let applied = config_file::apply(command, &path)?;
        command = applied.command;
        from_file = applied.keys;
    }
    let matches = command.clone().get_matches_from(&args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::Config) => {
            // The unchanged command lists the flags in --help's order.
            print!(
                "{}",
                config_file::effective(&Cli::command(), &matches, &from_file)
            );
            // The logic node's own settings (`[logic]`), as `im-server logic` would use them.
            print!(
                "{}",
                config_file::effective_subcommand(&command, "logic", &from_file)
            );
            Ok(())
        }
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
        Some(Command::DevCert { hosts, out }) => {
            im_server::cli::write_dev_cert(&out, &hosts)
                .with_context(|| format!("writing a certificate into {}", out.display()))?;
            println!("wrote {0}/cert.pem and {0}/key.pem", out.display());
            Ok(())
        }
        Some(Command::RenewInboxEpoch) => {
            let dir = cli.common.data_dir.join("store");
            let epoch = store_embedded::renew_inbox_epoch(&dir)
                .with_context(|| format!("renewing the inbox epoch of {}", dir.display()))?;
            println!("new inbox epoch {epoch}");
            Ok(())
        }
        Some(Command::Logic(args)) => {
            let format = cli.common.log_format;
            serve_with(format, run_logic_command(cli.common, args))
        }
        None => serve_with(cli.common.log_format, run(cli.common, cli.serve)),
    }
}

/// Installs logging on stderr and runs `serve` (a server of any role) on a multi-threaded
/// runtime until it ends.
fn serve_with(
    format: LogFormat,
    serve: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // fjall logs every journal and table it touches at INFO: operators want the server's
        // own lines by default.
        .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        // One object per line: level, target, message and the fields at the top level.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // Store reads run on the blocking pool; a few threads serve two cores well, and the default
    // of 512 let a login storm start hundreds of threads whose stacks stayed in RSS.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    runtime.spawn(return_freed_memory());
    runtime.block_on(serve)
}

/// `im-server logic`: a logic node with its own settings. It reads no token secret: gateways
/// authenticate clients, and a logic node trusts its gateways.
async fn run_logic_command(common: Common, args: Box<LogicNodeArgs>) -> anyhow::Result<()> {
    let options = args.options(common.data_dir).context("invalid settings")?;
    run_logic_node(options).await
}

async fn run(common: Common, args: ServeArgs) -> anyhow::Result<()> {
    let tokens = secret(&common)?;
    let options = args
        .options(common.data_dir.clone(), tokens)
        .context("invalid settings")?;
    if options.role == app::Role::Logic {
        return run_logic_node(options).await;
    }
    let server = app::start(options).await.context("starting the server")?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    // Written without println!, which would panic (and stop the server) when nobody reads
    // stdout any more.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", server.addr);
        if let Some(tls) = server.tls_addr {
            let _ = writeln!(out, "tls listening on {tls}");
        }
        if let Some(quic) = server.quic_addr {
            let _ = writeln!(out, "quic listening on {quic}");
        }
        if let Some(admin) = server.admin_addr {
            let _ = writeln!(out, "admin listening on {admin}");
        }
        let _ = out.flush();
    }
    tracing::info!(addr = %server.addr, data_dir = %common.data_dir.display(), "server started");
    let shutdown = server.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.task.await.context("server task")??;
    Ok(())
}

/// A logic node: serves the logic API to the cluster's gateways until SIGTERM or Ctrl-C.
async fn run_logic_node(options: app::ServerOptions) -> anyhow::Result<()> {
    let node = app::start_logic_node(options)
        .await
        .context("starting the logic node")?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "logic listening on {}", node.addr);
        if let Some(admin) = node.admin_addr {
            let _ = writeln!(out, "admin listening on {admin}");
        }
        let _ = out.flush();
    }
    tracing::info!(addr = %node.addr, "logic node started");
    let shutdown = node.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    node.task.await.context("logic node task")??;
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
