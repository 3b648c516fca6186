//! Metrics of distributed execution, kept by the dispatcher of the active core node: jobs
//! submitted, finished (by outcome), dispatched again, waiting now, and the time from
//! submission to the first assignment.
//!
//! A core node registers them at start whatever its mode, so the documented list is what every
//! core node exposes; the two `outcome` series are created at registration with a zero value,
//! so a dashboard has both from the first scrape.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// Upper bounds of the dispatch-time buckets, seconds: from a batch that commits at once
/// (milliseconds) to a job that waited for a free runner.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// The dispatcher's metrics; clones share the same series.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    submitted: Counter,
    finished: Family<Labels, Counter>,
    requeued: Counter,
    queued: Gauge,
    dispatch: Histogram,
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl JobMetrics {
    /// Unregistered metrics (counting into nowhere until [`JobMetrics::register`]).
    pub fn new() -> Self {
        JobMetrics {
            submitted: Counter::default(),
            finished: Family::default(),
            requeued: Counter::default(),
            queued: Gauge::default(),
            dispatch: Histogram::new(BUCKETS),
        }
    }

    /// Adds the metrics to a registry whose prefix is `autogate`.
    pub fn register(&self, r: &mut Registry) {
        for outcome in ["completed", "failed"] {
            let _ = self.finished.get_or_create(&[("outcome", outcome)]);
        }
        r.register(
            "jobs_submitted",
            "Jobs submitted to the dispatcher",
            self.submitted.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs that ended, by outcome (completed: the program ran; failed: with a reason)",
            self.finished.clone(),
        );
        r.register(
            "jobs_requeued",
            "Attempts dispatched again (runner lost with retries left, or handed back)",
            self.requeued.clone(),
        );
        r.register(
            "jobs_queued",
            "Jobs waiting for a runner now",
            self.queued.clone(),
        );
        r.register(
            "jobs_dispatch_seconds",
            "Time from submission to the first assignment to a runner",
            self.dispatch.clone(),
        );
    }

    pub(crate) fn submitted(&self) {
        self.submitted.inc();
    }

    pub(crate) fn finished(&self, completed: bool) {
        let outcome = if completed { "completed" } else { "failed" };
        self.finished.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub(crate) fn requeued(&self) {
        self.requeued.inc();
    }

    pub(crate) fn set_queued(&self, n: usize) {
        self.queued.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn dispatched_after(&self, seconds: f64) {
        self.dispatch.observe(seconds);
    }
}

/// A runner's metrics: jobs running now and jobs run, by outcome (`completed`: the program
/// ran; `failed`: it could not run; `cancelled`: stopped because the job moved or was handed
/// back).
#[derive(Debug, Clone, Default)]
pub struct RunnerMetrics {
    running: Gauge,
    runs: Family<Labels, Counter>,
}

impl RunnerMetrics {
    /// Adds the metrics to a registry whose prefix is `autogate`.
    pub fn register(&self, r: &mut Registry) {
        for outcome in ["completed", "failed", "cancelled"] {
            let _ = self.runs.get_or_create(&[("outcome", outcome)]);
        }
        r.register(
            "runner_jobs_running",
            "Jobs this runner is running now",
            self.running.clone(),
        );
        r.register(
            "runner_jobs",
            "Jobs this runner ran, by outcome (completed, failed, cancelled)",
            self.runs.clone(),
        );
    }

    pub(crate) fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn ran(&self, outcome: &'static str) {
        self.runs.get_or_create(&[("outcome", outcome)]).inc();
    }
}
