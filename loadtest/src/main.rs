//! `loadtest`: see `loadtest --help` and the crate documentation in `lib.rs`.

use clap::Parser as _;

// Same allocator as the `im-server` binary, so that the relay and our server compare fairly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = loadtest::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(loadtest::cli::run(cli))
}
