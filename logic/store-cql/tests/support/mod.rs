//! A real Cassandra node for the tests: the one `IM_TEST_CQL` names (`host:port`), or one that
//! `scripts/cassandra.sh` starts (or finds running) on this machine. Without a JDK there is no
//! node: the tests say so loudly and pass without checking anything.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The node's address, or `None` (after a loud message) when no JDK is installed.
pub fn cassandra() -> Option<String> {
    static NODE: OnceLock<Option<String>> = OnceLock::new();
    NODE.get_or_init(|| {
        if let Ok(address) = std::env::var("IM_TEST_CQL") {
            return Some(address);
        }
        if Command::new("java").arg("-version").output().is_err() {
            eprintln!(
                "\n========================================================================\n\
                 SKIPPED: no JDK on this machine, so no Cassandra node: the CQL store's\n\
                 tests check nothing here. Install a JDK 17 and Maven to run them.\n\
                 ========================================================================\n"
            );
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cassandra.sh");
        let output = Command::new(&script)
            .arg("start")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} start failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let address = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            !address.is_empty(),
            "scripts/cassandra.sh printed no address"
        );
        Some(address)
    })
    .clone()
}

/// A keyspace name no other store of this run uses.
pub fn fresh_keyspace(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand_suffix()
    )
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
