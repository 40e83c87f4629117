//! The admin listener: a separate HTTP port (loopback unless the operator says otherwise) for
//! what operators and the app's own backend need, never for clients.
//!
//! - `/metrics`: Prometheus text format ([`telemetry`] installs the recorder).
//! - `/healthz` (the process is alive) and `/readyz` (it takes traffic: the store answers and
//!   it is not draining).
//! - `/v1/...`: the server API ([`api`]): tokens, sends, groups, kicks, online devices,
//!   history, drain. Every call needs `Authorization: Bearer <admin key>`.
//! - `/openapi.json`: the OpenAPI document of all of the above, generated from the handlers.

pub mod api;
pub mod backend;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, BoxFuture, IssuedToken, Readiness};

/// The admin listener's settings.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The key the server API's callers present (`Authorization: Bearer <key>`). `None`: the
    /// API answers 403 to everyone; metrics and health still work.
    pub admin_key: Option<String>,
    /// The user id a message sent "as the system" comes from.
    pub system_user: String,
}

/// A started admin listener.
pub struct RunningAdmin {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Ends when the listener has stopped.
    pub task: JoinHandle<()>,
}

/// Binds the admin listener and serves it until `shutdown`. `metrics`: the recorder's handle
/// (`None`: `/metrics` answers 404).
pub async fn start(
    config: AdminConfig,
    backend: Arc<dyn Backend>,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> std::io::Result<RunningAdmin> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = api::router(api::ApiState::new(config, backend, metrics));
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin listener failed");
        }
    });
    Ok(RunningAdmin { addr, task })
}
