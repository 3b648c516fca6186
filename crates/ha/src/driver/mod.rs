//! The election driver: thin async code that feeds the [`Machine`] with what the store, the
//! clock and the probes say, and carries out its commands.
//!
//! Four kinds of tasks run per node, so that no slow store call can delay a decision that is due:
//! * the *machine loop* (`machine_loop`) owns the [`Machine`], its timer and every local
//!   command (leadership watch, metrics, logs, probes); it never awaits the store;
//! * the *store worker* (`worker`) executes store commands one at a time in the order the
//!   machine emitted them;
//! * the *keep-alive loop* (`keepalive`) renews the lease and reports each acknowledgement with
//!   the send time of its request;
//! * two *watchers* (`watchers`: election prefix, node records) hand the machine full snapshots.
//!
//! They all run on the election's own task tracker, which the caller's tracker waits on. The
//! rest is what the server uses: `handle` (leadership, status, operator requests, shutdown),
//! `fence` (writes fenced by the term), `options`, `probe` (the crash probe of the active
//! node over HTTP or HTTPS), `predecessor` (at start, the lease a restarted node's previous
//! process left behind), `keys` (the layout in the store) and `metrics`. This module
//! starts it all and holds what the tasks share: their messages and the published snapshot.

mod fence;
mod handle;
mod keepalive;
mod keys;
mod machine_loop;
mod metrics;
mod options;
mod predecessor;
mod probe;
mod watchers;
mod worker;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autogate_store::{LeaseId, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

pub use fence::{fenced_txn, FencedError};
pub use handle::{CandidateStatus, HaHandle, HaStatus, SwitchoverError};
pub use keys::{election_prefix, nodes_prefix};
pub use options::{HaError, HaOptions};
pub use predecessor::revoke_predecessor;
pub use probe::{ProbeProtocol, Prober};

use crate::machine::{Event, Machine, MachineSnapshot, Millis, StoreCommand};
use machine_loop::MachineLoop;
use metrics::HaMetrics;

/// Messages to the machine loop.
enum Input {
    Event(Event),
    Switchover(Option<String>, oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
    Republish,
}

/// Store commands for the worker.
enum StoreCmd {
    Do(StoreCommand),
    Drain(oneshot::Sender<()>),
}

/// What the machine loop publishes for the handle.
struct Shared {
    node_id: String,
    is_primary: bool,
    lease_ttl: Duration,
    election_prefix: String,
    /// The latest snapshot and when it was taken.
    snapshot: Mutex<(Instant, MachineSnapshot)>,
    metrics: HaMetrics,
    /// The number of the machine's last request to dial the manager at once (0: none yet).
    manager_retry: watch::Sender<u64>,
}

/// Entry point: [`HaDriver::start`].
#[derive(Debug)]
pub struct HaDriver;

impl HaDriver {
    /// Starts campaigning on the current Tokio runtime, probing over plain HTTP. The
    /// election's tasks are tracked by `tracker` (the process's), which sees them all end after
    /// [`HaHandle::shutdown`].
    pub fn start(
        store: Arc<dyn Store>,
        options: HaOptions,
        metrics: Option<&autogate_runtime::Metrics>,
        tracker: &TaskTracker,
    ) -> Result<HaHandle, HaError> {
        Self::start_with_prober(store, options, metrics, Prober::default(), tracker)
    }

    /// Like [`start`](Self::start) with another prober (a TLS API is probed over TLS).
    pub fn start_with_prober(
        store: Arc<dyn Store>,
        options: HaOptions,
        metrics: Option<&autogate_runtime::Metrics>,
        prober: Prober,
        tracker: &TaskTracker,
    ) -> Result<HaHandle, HaError> {
        options.check()?;
        let cfg = options.machine_config();
        let machine = Machine::new(cfg);
        let ha_metrics = HaMetrics::new();
        if let Some(m) = metrics {
            ha_metrics.register(m);
        }
        let origin = Instant::now();
        let shared = Arc::new(Shared {
            node_id: options.node_id.clone(),
            is_primary: options.is_primary,
            lease_ttl: options.lease_ttl,
            election_prefix: election_prefix(&options.cluster_id),
            snapshot: Mutex::new((origin, machine.snapshot(Millis(0)))),
            metrics: ha_metrics,
            manager_retry: watch::Sender::new(0),
        });
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (leader_tx, leader_rx) = watch::channel(machine.leadership());
        let (lease_tx, lease_rx) = watch::channel(None::<LeaseId>);
        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
        let options = Arc::new(options);
        // The election's own tracker, so that its shutdown can wait for exactly its tasks; the
        // caller's tracker holds one task that ends when they all have.
        let tasks = TaskTracker::new();

        tasks.spawn(worker::worker(
            store.clone(),
            options.clone(),
            worker_rx,
            input_tx.clone(),
            lease_rx.clone(),
            origin,
            tasks.clone(),
        ));
        tasks.spawn(keepalive::keep_alive_loop(
            store.clone(),
            machine.config().keepalive_interval_ms(),
            lease_rx,
            input_tx.clone(),
            origin,
        ));
        let election = format!("{}/", shared.election_prefix);
        tasks.spawn(watchers::watch_prefix(
            store.clone(),
            election,
            input_tx.clone(),
            watchers::election_view,
        ));
        let nodes = nodes_prefix(&options.cluster_id);
        tasks.spawn(watchers::watch_prefix(
            store.clone(),
            nodes.clone(),
            input_tx.clone(),
            move |_, kvs| watchers::node_records(&nodes, kvs),
        ));
        let loop_state = MachineLoop {
            machine,
            origin,
            shared: shared.clone(),
            leader_tx,
            lease_tx,
            worker_tx,
            input_tx: input_tx.clone(),
            prober,
            replies: VecDeque::new(),
            timer: None,
            tasks: tasks.clone(),
        };
        tasks.spawn(loop_state.run(input_rx));
        // Probes are spawned later by the machine loop; a closed tracker still takes them, and
        // its `wait` cannot end before the loop that spawns them has.
        tasks.close();
        let all_done = tasks.clone();
        tracker.spawn(async move { all_done.wait().await });
        let _ = input_tx.send(Input::Event(Event::Start));
        Ok(HaHandle {
            input: input_tx,
            leadership: leader_rx,
            shared,
            store,
            tasks,
        })
    }
}

fn millis(origin: Instant, at: Instant) -> Millis {
    Millis(u64::try_from(at.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX))
}

/// Pause after a failed store call that must be retried.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}
