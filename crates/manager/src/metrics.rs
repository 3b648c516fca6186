//! The manager's Prometheus metrics (`/metrics`), registered in the process registry of
//! `autogate-runtime` so process metrics come along.
//!
//! Label values are small fixed sets (refusal categories, handshake outcomes), never cluster
//! ids or addresses: a flood of bad connections must not grow the registry.

use std::sync::Arc;

use autogate_runtime::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

type Labels = Vec<(String, String)>;

/// Why a gateway connection was refused: the `reason` label of
/// `manager_sessions_refused` and the `refusal` field of the log line that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCategory {
    /// `/ws` without a client certificate.
    NoCertificate,
    /// No `hello` within the deadline.
    HelloTimeout,
    /// The first frame was not a valid `hello`.
    BadHello,
    /// The `hello` names a cluster that is not registered.
    UnknownCluster,
    /// The cluster is disabled.
    ClusterDisabled,
    /// The certificate is not registered for the cluster.
    CertificateNotRegistered,
    /// The certificate expired (checked again at `hello`).
    CertificateExpired,
    /// The session rules refused it (a second session for a cluster, a stale term).
    SessionRule,
    /// The manager could not record the session.
    StoreError,
}

impl RefusalCategory {
    /// Every category, for documentation and tests.
    pub const ALL: [RefusalCategory; 9] = [
        RefusalCategory::NoCertificate,
        RefusalCategory::HelloTimeout,
        RefusalCategory::BadHello,
        RefusalCategory::UnknownCluster,
        RefusalCategory::ClusterDisabled,
        RefusalCategory::CertificateNotRegistered,
        RefusalCategory::CertificateExpired,
        RefusalCategory::SessionRule,
        RefusalCategory::StoreError,
    ];

    /// The label value (stable: dashboards and alerts select on it).
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalCategory::NoCertificate => "no_certificate",
            RefusalCategory::HelloTimeout => "hello_timeout",
            RefusalCategory::BadHello => "bad_hello",
            RefusalCategory::UnknownCluster => "unknown_cluster",
            RefusalCategory::ClusterDisabled => "cluster_disabled",
            RefusalCategory::CertificateNotRegistered => "certificate_not_registered",
            RefusalCategory::CertificateExpired => "certificate_expired",
            RefusalCategory::SessionRule => "session_rule",
            RefusalCategory::StoreError => "store_error",
        }
    }
}

impl std::fmt::Display for RefusalCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters and gauges of the manager.
#[derive(Debug, Clone)]
pub struct ManagerMetrics {
    /// The registry they are rendered from.
    pub registry: Arc<Metrics>,
    sessions_live: Gauge,
    sessions_total: Counter,
    refused: Family<Labels, Counter>,
    frames: Family<Labels, Counter>,
    handshake_failures: Family<Labels, Counter>,
}

impl ManagerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let m = ManagerMetrics {
            registry: Arc::new(Metrics::new()),
            sessions_live: Gauge::default(),
            sessions_total: Counter::default(),
            refused: Family::default(),
            frames: Family::default(),
            handshake_failures: Family::default(),
        };
        m.registry.register(|r| {
            r.register(
                "manager_sessions_live",
                "Gateway sessions live now (at most one per cluster)",
                m.sessions_live.clone(),
            );
            r.register(
                "manager_sessions",
                "Gateway sessions accepted since start",
                m.sessions_total.clone(),
            );
            r.register(
                "manager_sessions_refused",
                "Gateway connections refused, by reason",
                m.refused.clone(),
            );
            r.register(
                "manager_frames",
                "WebSocket frames on gateway sessions, by direction",
                m.frames.clone(),
            );
            r.register(
                "manager_handshake_failures",
                "TLS handshakes that failed or timed out, by reason",
                m.handshake_failures.clone(),
            );
        });
        m
    }

    /// A session was accepted.
    pub fn session_opened(&self) {
        self.sessions_total.inc();
        self.sessions_live.inc();
    }

    /// A live session ended.
    pub fn session_closed(&self) {
        self.sessions_live.dec();
    }

    /// A connection was refused.
    pub fn refused(&self, category: RefusalCategory) {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), category.as_str().to_owned())])
            .inc();
    }

    /// A frame was received (`in`) or sent (`out`).
    pub fn frame(&self, direction: &'static str) {
        self.frames
            .get_or_create(&vec![("direction".to_owned(), direction.to_owned())])
            .inc();
    }

    /// A TLS handshake failed (`error`) or timed out (`timeout`), or a connection was dropped
    /// because too many were open (`overload`).
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Live sessions now.
    pub fn live(&self) -> i64 {
        self.sessions_live.get()
    }
}

impl Default for ManagerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_are_distinct_snake_case() {
        let labels: std::collections::HashSet<&str> =
            RefusalCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), RefusalCategory::ALL.len());
        for l in labels {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
        }
    }
}
