//! `serve` (hidden): our server in this process, via `gateway::app::start`, for `bench` and for
//! tests that want it in a child process. Prints `listening on ADDR` first, like `gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway::app::{self, ServerOptions};
use im_auth::TokenKey;

/// Starts the server and serves until Ctrl-C.
pub async fn serve(
    listen: SocketAddr,
    data_dir: PathBuf,
    secret: &str,
    heartbeat: Duration,
    max_group_members: u32,
) -> anyhow::Result<()> {
    let mut options =
        ServerOptions::new(listen, data_dir, TokenKey::new(secret.as_bytes().to_vec()));
    // The load tester measures capacity: per-connection and per-sender policies are off, as
    // they are for the other systems it is compared with.
    options.rate_limit = 0;
    options.fanout_bytes_per_sec = 0;
    options.heartbeat = heartbeat;
    options.max_group_members = max_group_members;
    let server = app::start(options).await?;
    println!("listening on {}", server.addr);
    tokio::signal::ctrl_c().await?;
    server.shutdown.cancel();
    server.task.await??;
    Ok(())
}
