//! What the gateway counts, through the `metrics` facade: the process that embeds the gateway
//! decides whether anything records it (the server installs a Prometheus exporter when its
//! admin listener is on; without a recorder every call here is a no-op).
//!
//! Names and labels are part of the operator's interface (dashboards, alerts): the README
//! lists them, and they change only together with it.

use metrics::{Counter, Histogram};

/// Connections open now, by transport (`tcp`, `tls`, `quic`, `http_tunnel`, `memory`).
pub const CONNECTIONS: &str = "im_connections";
/// Handshakes, by result: `ok`, or the error code name the handshake was refused with.
pub const LOGINS: &str = "im_logins_total";
/// Requests after the handshake, by op (`SEND_REQ`, `SYNC_REQ`, …) and result (`ok` or the
/// error code name).
pub const REQUESTS: &str = "im_requests_total";
/// Seconds from a `SEND_REQ` frame read off the connection to its `SEND_ACK` queued for it.
pub const SEND_LATENCY: &str = "im_send_latency_seconds";
/// `PUSH` frames queued for connections.
pub const PUSHES: &str = "im_pushes_total";
/// Connections closed because a push found their outbound queue full (the device resyncs).
pub const PUSH_DROPS: &str = "im_push_drops_total";
/// Kicks sent by a draining gateway.
pub const DRAIN_KICKS: &str = "im_drain_kicks_total";

/// Handles for what happens per message, looked up once: a registry lookup per message would
/// be measurable on the send path.
#[derive(Clone)]
pub(crate) struct HotMetrics {
    pub sends_ok: Counter,
    pub send_latency: Histogram,
}

impl HotMetrics {
    pub fn new() -> HotMetrics {
        HotMetrics {
            sends_ok: metrics::counter!(REQUESTS, "op" => "SEND_REQ", "result" => "ok"),
            send_latency: metrics::histogram!(SEND_LATENCY),
        }
    }
}

/// The label for an error code: its name without the `ERROR_CODE_` prefix (`RATE_LIMITED`).
pub fn code_label(code: i32) -> &'static str {
    match im_protocol::pb::ErrorCode::try_from(code) {
        Ok(code) => {
            let name = code.as_str_name();
            name.strip_prefix("ERROR_CODE_").unwrap_or(name)
        }
        Err(_) => "UNKNOWN",
    }
}

/// The label for an op: its name without the `OP_` prefix (`SEND_REQ`).
pub fn op_label(op: Option<im_protocol::pb::Op>) -> &'static str {
    match op {
        Some(op) => {
            let name = op.as_str_name();
            name.strip_prefix("OP_").unwrap_or(name)
        }
        None => "UNKNOWN",
    }
}

/// Counts one request after the handshake.
pub(crate) fn request(op: &'static str, result: &'static str) {
    metrics::counter!(REQUESTS, "op" => op, "result" => result).increment(1);
}

/// Counts one handshake.
pub(crate) fn login(result: &'static str) {
    metrics::counter!(LOGINS, "result" => result).increment(1);
}

/// Counts a connection in (`+1`) or out (`-1`).
pub(crate) fn connection(transport: &'static str, delta: f64) {
    metrics::gauge!(CONNECTIONS, "transport" => transport).increment(delta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::pb::{ErrorCode, Op};

    #[test]
    fn labels_are_the_spec_names_without_their_prefix() {
        assert_eq!(code_label(ErrorCode::RateLimited as i32), "RATE_LIMITED");
        assert_eq!(code_label(9_999), "UNKNOWN");
        assert_eq!(op_label(Some(Op::SendReq)), "SEND_REQ");
        assert_eq!(op_label(None), "UNKNOWN");
    }
}
