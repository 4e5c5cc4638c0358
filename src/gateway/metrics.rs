//! Prometheus metrics: names, the recorder, and label hygiene.
//!
//! Method labels are limited to the MCP method names below (anything else is `other`) so a
//! client sending random method names cannot create unbounded label sets.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Counter: JSON-RPC requests and HTTP exchanges, labels `app`, `method`, `status`.
pub const REQUESTS: &str = "catwalk_mcp_requests_total";
/// Counter: connections closed at once because a cap was reached, label `cap`.
pub const CONNECTIONS_REFUSED: &str = "catwalk_http_connections_refused_total";
/// The `app` label of requests to a path that names no routed app.
pub const UNKNOWN_APP: &str = "(unknown)";
/// Histogram (seconds): time to the final response, labels `app`, `method`.
pub const LATENCY: &str = "catwalk_mcp_request_duration_seconds";
/// Gauge: open MCP sessions.
pub const SESSIONS: &str = "catwalk_mcp_sessions_open";
/// Gauge: live stdio children.
pub const CHILDREN: &str = "catwalk_mcp_children_live";
/// Counter: children that exited on their own (crash or exit), label `app`.
pub const CHILD_EXITS: &str = "catwalk_mcp_child_exits_total";
/// Counter: shared children started again after the previous one ended, label `app`.
pub const CHILD_RESTARTS: &str = "catwalk_mcp_child_restarts_total";
/// Gauge: warm spares ready (started, not yet owned by a session), label `app`.
pub const SPARES_READY: &str = "catwalk_mcp_spares_ready";
/// Counter: sessions that got a warm spare, label `app`.
pub const SPARES_TAKEN: &str = "catwalk_mcp_spares_taken_total";
/// Counter: sessions that paid a server start-up (no spare was ready), label `app`.
pub const COLD_STARTS: &str = "catwalk_mcp_cold_starts_total";
/// Histogram (seconds): what a cold start cost the request that paid it, from starting the process to its
/// `initialize` answer; labels `app`, `era` (`2025`: a session's own process; `2026-07-28`: a pooled one).
pub const COLD_START_SECONDS: &str = "catwalk_mcp_cold_start_duration_seconds";

/// Records a start-up a request waited for (see [`COLD_START_SECONDS`]).
pub fn cold_start_paid(app: &str, era: &'static str, started: std::time::Instant) {
    ::metrics::histogram!(COLD_START_SECONDS, "app" => app.to_string(), "era" => era)
        .record(started.elapsed().as_secs_f64());
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide Prometheus recorder once and return its handle (later calls return
/// the same handle). If another recorder was installed first, metrics are not collected and the
/// handle renders an empty page.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// A bounded label for a JSON-RPC method.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
        "server/discover",
        "subscriptions/listen",
    ];
    KNOWN.iter().find(|k| **k == method).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_bounded() {
        assert_eq!(super::method_label("tools/call"), "tools/call");
        assert_eq!(super::method_label("x/random-123"), "other");
    }
}
