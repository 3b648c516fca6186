//! Store latency and error metrics of a core node: [`MeteredStore`] wraps the opened store and
//! times every call, so `autogate_store_request_seconds{op}` and
//! `autogate_store_errors_total{op}` show how the store behaves as the node sees it — the
//! latency that decides whether keep-alives, fenced writes and API reads arrive in time — on
//! whichever backend is configured, without touching the backends themselves.
//!
//! Operations are grouped into a small fixed set of `op` values (`get`, `list`, `put`,
//! `delete`, `txn`, `watch`, `lease`) so the series count never grows with keys or lease ids.
//! Every series is created at start with a zero value: a dashboard shows every operation from
//! the first scrape and `rate()` has a starting point, instead of series appearing on first use.
//! `status` (the readiness probe's check) is not counted: probes run on the supervisor's
//! schedule and would dilute the latency of the node's own work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use autogate_runtime::Metrics;
use autogate_store::{
    KeyValue, LeaseId, Revision, Store, StoreError, StoreStatus, Txn, TxnResponse, WatchStream,
};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds of the latency buckets, seconds: from an embedded read (well under a
/// millisecond) to etcd's request timeout (5 s) and beyond.
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `op` label values, in the order of [`Op`].
const OPS: [&str; 7] = ["get", "list", "put", "delete", "txn", "watch", "lease"];

type Labels = [(&'static str, &'static str); 1];

#[derive(Clone, Copy, Debug)]
enum Op {
    Get,
    List,
    Put,
    Delete,
    Txn,
    Watch,
    Lease,
}

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// One histogram and one error counter per operation, taken out of their families once so a
/// call records without looking up labels.
#[derive(Clone, Debug)]
struct StoreMetrics {
    latency: Vec<Histogram>,
    errors: Vec<Counter>,
}

impl StoreMetrics {
    fn register(metrics: &Metrics) -> Self {
        let latency: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_histogram);
        let errors: Family<Labels, Counter> = Family::default();
        let m = StoreMetrics {
            latency: OPS
                .iter()
                .map(|op| latency.get_or_create_owned(&[("op", op)]))
                .collect(),
            errors: OPS
                .iter()
                .map(|op| errors.get_or_create_owned(&[("op", op)]))
                .collect(),
        };
        metrics.register(|r| {
            r.register(
                "store_request_seconds",
                "Time of store requests made by this node, by operation",
                latency,
            );
            r.register(
                "store_errors",
                "Store requests of this node that failed, by operation",
                errors,
            );
        });
        m
    }

    fn observe<T>(&self, op: Op, started: Instant, result: &Result<T, StoreError>) {
        let i = op as usize;
        self.latency[i].observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors[i].inc();
        }
    }
}

/// A [`Store`] that records the latency and failures of every call made through it.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    /// Registers the store metrics in `metrics` and wraps `inner`.
    pub fn wrap(inner: Arc<dyn Store>, metrics: &Metrics) -> Arc<dyn Store> {
        Arc::new(MeteredStore {
            inner,
            metrics: StoreMetrics::register(metrics),
        })
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.observe(Op::Get, started, &result);
        result
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let started = Instant::now();
        let result = self.inner.list(prefix).await;
        self.metrics.observe(Op::List, started, &result);
        result
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let started = Instant::now();
        let result = self.inner.put(key, value, lease).await;
        self.metrics.observe(Op::Put, started, &result);
        result
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.delete(key).await;
        self.metrics.observe(Op::Delete, started, &result);
        result
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let started = Instant::now();
        let result = self.inner.delete_prefix(prefix).await;
        self.metrics.observe(Op::Delete, started, &result);
        result
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let started = Instant::now();
        let result = self.inner.txn(txn).await;
        self.metrics.observe(Op::Txn, started, &result);
        result
    }

    /// Times setting the watch up; an error the stream yields later (etcd lost, history
    /// compacted) counts as a watch error too, because that is when a watcher loses events.
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError> {
        let started = Instant::now();
        let result = self.inner.watch(prefix, start_revision).await;
        self.metrics.observe(Op::Watch, started, &result);
        let errors = self.metrics.errors[Op::Watch as usize].clone();
        result.map(|stream| {
            let counted = stream.inspect(move |item| {
                if item.is_err() {
                    errors.inc();
                }
            });
            Box::pin(counted) as WatchStream
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let started = Instant::now();
        let result = self.inner.grant(ttl).await;
        self.metrics.observe(Op::Lease, started, &result);
        result
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let started = Instant::now();
        let result = self.inner.keep_alive(lease).await;
        self.metrics.observe(Op::Lease, started, &result);
        result
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.revoke(lease).await;
        self.metrics.observe(Op::Lease, started, &result);
        result
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let started = Instant::now();
        let result = self.inner.time_to_live(lease).await;
        self.metrics.observe(Op::Lease, started, &result);
        result
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.inner.status().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autogate_store::StoreOptions;

    #[tokio::test]
    async fn every_operation_is_timed_and_failures_are_counted() {
        let metrics = Metrics::new();
        let inner = autogate_store::open(StoreOptions::Memory)
            .await
            .expect("memory store");
        let store = MeteredStore::wrap(inner, &metrics);

        // Every series exists before the first call.
        let text = metrics.render();
        for op in OPS {
            assert!(
                text.contains(&format!(
                    "autogate_store_request_seconds_count{{op=\"{op}\"}} 0"
                )),
                "{op}: {text}"
            );
            assert!(
                text.contains(&format!("autogate_store_errors_total{{op=\"{op}\"}} 0")),
                "{op}: {text}"
            );
        }

        store.put("/k", b"v".to_vec(), None).await.expect("put");
        store.get("/k").await.expect("get");
        store.list("/").await.expect("list");
        store.txn(Txn::new()).await.expect("txn");
        store.delete("/k").await.expect("delete");
        store.delete_prefix("/").await.expect("delete prefix");
        let _watch = store.watch("/", None).await.expect("watch");
        let lease = store.grant(Duration::from_secs(5)).await.expect("grant");
        store.revoke(lease).await.expect("revoke");
        // A lease that has ended: the store refuses it, and that is an error of `lease`.
        assert!(store.keep_alive(lease).await.is_err());

        let text = metrics.render();
        for (op, count) in [
            ("get", 1),
            ("list", 1),
            ("put", 1),
            ("delete", 2),
            ("txn", 1),
            ("watch", 1),
            ("lease", 3),
        ] {
            assert!(
                text.contains(&format!(
                    "autogate_store_request_seconds_count{{op=\"{op}\"}} {count}"
                )),
                "{op} count {count}: {text}"
            );
        }
        assert!(
            text.contains("autogate_store_errors_total{op=\"lease\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("autogate_store_errors_total{op=\"put\"} 0"),
            "{text}"
        );
    }
}
