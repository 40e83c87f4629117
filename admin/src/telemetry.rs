//! The process's Prometheus recorder: every crate records through the `metrics` facade, and
//! this exporter turns what they recorded into the text format `/metrics` serves.

use std::sync::OnceLock;
use std::time::Duration;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets of the latency histograms, in seconds: from a fast local fsync to a stalled store.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of the group commit size: operations per commit.
const COMMIT_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and starts
/// its upkeep, which folds recorded histogram samples into their buckets so memory does not
/// grow between scrapes. Must run inside a tokio runtime.
///
/// Installed only when the admin listener is on: without a recorder the `metrics` calls on
/// the hot paths are no-ops, which is what "metrics off" measures in `BENCHMARKS.md`.
pub fn install() -> PrometheusHandle {
    let mut fresh = false;
    let handle = HANDLE.get_or_init(|| {
        fresh = true;
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("im_store_commit_size".into()),
                    COMMIT_SIZE_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed (an embedding process's own): then
        // that one receives the metrics and /metrics shows what this handle has, nothing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        handle
    });
    if fresh {
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    handle.clone()
}
