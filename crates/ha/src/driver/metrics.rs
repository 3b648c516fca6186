//! What the driver counts (`autogate_ha_*`): whether this node acts, its term, its transitions,
//! how long fail-overs left the cluster without a leader, and fenced writes refused.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// The driver's metrics.
#[derive(Clone, Debug)]
pub(super) struct HaMetrics {
    pub(super) is_active: Gauge,
    pub(super) term: Gauge,
    pub(super) transitions: Counter,
    pub(super) failover: Histogram,
    pub(super) fenced_rejected: Counter,
}

impl HaMetrics {
    pub(super) fn new() -> Self {
        HaMetrics {
            is_active: Gauge::default(),
            term: Gauge::default(),
            transitions: Counter::default(),
            failover: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
            ]),
            fenced_rejected: Counter::default(),
        }
    }

    pub(super) fn register(&self, metrics: &autogate_runtime::Metrics) {
        metrics.register(|r| {
            r.register(
                "ha_is_active",
                "1 while this core node acts as the active node",
                self.is_active.clone(),
            );
            r.register(
                "ha_term",
                "Fencing term of this node's current leadership (0 when standby)",
                self.term.clone(),
            );
            r.register(
                "ha_transitions",
                "Changes of this node between active and not active",
                self.transitions.clone(),
            );
            r.register(
                "ha_failover_seconds",
                "Time without another leader before this node started acting",
                self.failover.clone(),
            );
            r.register(
                "ha_fenced_writes_rejected",
                "Fenced writes refused because the leadership had moved",
                self.fenced_rejected.clone(),
            );
        });
    }
}
