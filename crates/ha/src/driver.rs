//! The election driver: thin async code that feeds the [`Machine`] with what the store, the
//! clock and the probes say, and carries out its commands.
//!
//! Four kinds of tasks run per node, so that no slow store call can delay a decision that is due:
//! * the *machine loop* owns the [`Machine`], its timer and every local effect (leadership watch,
//!   metrics, logs, probes); it never awaits the store;
//! * the *store worker* executes store commands (grant, campaign, resign, revoke, publish) one at
//!   a time in the order the machine emitted them, retrying only what must eventually happen;
//! * the *keep-alive loop* renews the lease every [`MachineConfig::keepalive_interval_ms`] and
//!   reports each acknowledgement with the send time of its request, measured on
//!   [`tokio::time::Instant`] (monotonic);
//! * two *watchers* (election prefix, node records) list then watch from the list's revision and
//!   hand the machine full snapshots. Watching the whole election prefix instead of only the
//!   immediate predecessor (the recipe's `waitDeletes`) costs one event per candidate change and
//!   gives every node the ordered candidate list the status page shows.
//!
//! Keys: `/autogate/<cluster>/election/<lease id in lower-case hex>` = node id (created with
//! `create_revision == 0`, bound to the lease), and `/autogate/<cluster>/nodes/<node id>` = the
//! node record as JSON, bound to the same lease.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autogate_store::{
    CompareOp, EventKind, KeyValue, LeaseId, Store, StoreError, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::machine::{
    Candidate, Command, Event, Leadership, LocalCommand, LogLevel, Machine, MachineConfig, Millis,
    NodeRecord, ProbeResult, Role, StoreCommand,
};

/// `/autogate/<cluster_id>/election` (candidate keys live below it, after a `/`).
pub fn election_prefix(cluster_id: &str) -> String {
    format!("/autogate/{cluster_id}/election")
}

/// `/autogate/<cluster_id>/nodes/`.
pub fn nodes_prefix(cluster_id: &str) -> String {
    format!("/autogate/{cluster_id}/nodes/")
}

/// Everything the driver needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaOptions {
    pub cluster_id: String,
    pub node_id: String,
    pub is_primary: bool,
    pub lease_ttl: Duration,
    pub preempt_delay: Duration,
    pub connect_grace: Duration,
    pub max_transitions: u32,
    pub probe_window: Duration,
    /// Probe period of the active node while it answers (refusals are re-checked faster).
    pub probe_interval: Duration,
    /// `host:port` of this node's API as other core nodes reach it.
    pub advertise_address: Option<String>,
    /// Software version published in the node record.
    pub version: String,
}

impl HaOptions {
    /// Options from the node's configuration (`[application] cluster_id`, `[connect]`).
    pub fn from_config(
        config: &autogate_config::Config,
        node_id: &autogate_runtime::NodeId,
    ) -> Self {
        let c = &config.connect;
        HaOptions {
            cluster_id: config.application.cluster_id.clone(),
            node_id: node_id.as_str().to_owned(),
            is_primary: c.is_primary,
            lease_ttl: c.lease_ttl,
            preempt_delay: c.preempt_delay,
            connect_grace: c.connect_grace,
            max_transitions: c.max_transitions,
            probe_window: c.probe_window,
            // Probing a healthy active costs one loopback/LAN HTTP request; doing it at 2/3 of
            // the proof window keeps crash detection under a second (period + window).
            probe_interval: (c.probe_window * 2 / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            advertise_address: c.advertise_address.as_ref().map(ToString::to_string),
            version: autogate_runtime::VERSION.to_owned(),
        }
    }

    fn machine_config(&self) -> MachineConfig {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        MachineConfig {
            node_id: self.node_id.clone(),
            is_primary: self.is_primary,
            lease_ttl_ms: ms(self.lease_ttl),
            preempt_delay_ms: ms(self.preempt_delay),
            connect_grace_ms: ms(self.connect_grace),
            max_transitions: self.max_transitions,
            probe_window_ms: ms(self.probe_window),
            probe_interval_ms: ms(self.probe_interval).max(1),
            advertise_address: self.advertise_address.clone(),
        }
    }
}

/// Errors starting the driver: the caller fixes its options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaError {
    #[error("invalid HA options: {0}")]
    InvalidOptions(String),
}

/// Why a switchover did not happen; the operator API reports it (409 for `Refused`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverError {
    #[error("switchover refused: {0}")]
    Refused(String),
    #[error("the HA driver has stopped")]
    Stopped,
}

/// Outcome of a fenced write that did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FencedError {
    /// This node does not act as the active node: forward the write to the active node.
    #[error("this node is not the active node")]
    NotActive,
    /// The leader key no longer has this create revision: another node leads now. The caller
    /// drops the write; leadership has already been given up.
    #[error("write rejected: term {term} is no longer the current leadership")]
    Rejected { term: u64 },
    /// The store did not answer; whether the write happened is unknown only if it timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A transaction that runs only while `term_key` still has create revision `term`, i.e. while
/// the caller's leadership of that term lasts.
///
/// Returns the response of `txn` (its own compares decide `succeeded`), or
/// [`FencedError::Rejected`] when the fence failed.
pub async fn fenced_txn(
    store: &dyn Store,
    term_key: &str,
    term: u64,
    txn: Txn,
) -> Result<TxnResponse, FencedError> {
    let revision = i64::try_from(term).map_err(|_| FencedError::Rejected { term })?;
    let fence = autogate_store::Compare::create_revision(term_key, CompareOp::Equal, revision);
    let extra = txn.failure.len();
    let txn = Txn {
        compares: std::iter::once(fence).chain(txn.compares).collect(),
        success: txn.success,
        // A trailing read of the fence key tells the two reasons for failure apart.
        failure: txn
            .failure
            .into_iter()
            .chain(std::iter::once(TxnOp::get(term_key)))
            .collect(),
    };
    let mut response = store.txn(txn).await?;
    if response.succeeded {
        return Ok(response);
    }
    let fence_holds = match response.responses.get(extra) {
        Some(TxnOpResponse::Get(kvs)) => {
            kvs.first().is_some_and(|kv| kv.create_revision == revision)
        }
        _ => false,
    };
    if !fence_holds {
        return Err(FencedError::Rejected { term });
    }
    response.responses.truncate(extra);
    Ok(response)
}

/// Probes an active node's API address; replaceable (a TLS API needs a TLS prober).
pub trait Prober: Send + Sync + fmt::Debug {
    fn probe<'a>(&'a self, address: &'a str) -> BoxFuture<'a, ProbeResult>;
}

/// Plain TCP connect, then `GET /api/v1/health`, whose JSON names the node (`node_id`).
#[derive(Debug, Clone)]
pub struct HttpProber {
    pub timeout: Duration,
}

impl Default for HttpProber {
    fn default() -> Self {
        HttpProber {
            timeout: Duration::from_millis(800),
        }
    }
}

impl Prober for HttpProber {
    fn probe<'a>(&'a self, address: &'a str) -> BoxFuture<'a, ProbeResult> {
        async move {
            let connect = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address));
            let mut stream = match connect.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return ProbeResult::Refused
                }
                _ => return ProbeResult::Timeout,
            };
            let exchange = async {
                let request = format!(
                    "GET /api/v1/health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await?;
                let mut body = Vec::new();
                stream.read_to_end(&mut body).await?;
                Ok::<_, std::io::Error>(body)
            };
            let Ok(Ok(response)) = tokio::time::timeout(self.timeout, exchange).await else {
                return ProbeResult::Timeout;
            };
            health_node_id(&response)
                .map_or(ProbeResult::Timeout, |node_id| ProbeResult::Answered { node_id })
        }
        .boxed()
    }
}

/// The `node_id` of an HTTP response carrying the health document.
pub(crate) fn health_node_id(response: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    value.get("node_id")?.as_str().map(str::to_owned)
}

/// The node record as stored (the machine's record plus what only the driver knows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredRecord {
    address: Option<String>,
    is_primary: bool,
    version: String,
    role: Role,
    manager_reachable: bool,
    paused: bool,
    healthy: bool,
    /// Wall clock (Unix milliseconds) since which the node has been healthy.
    healthy_since: Option<u64>,
    #[serde(default)]
    handover_to: Option<String>,
}

/// One candidate as `GET /api/v1/ha/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CandidateStatus {
    pub node_id: String,
    pub key: String,
    pub create_revision: i64,
    /// Lease id in lower-case hex.
    pub lease: String,
    pub is_primary: Option<bool>,
    pub manager_reachable: Option<bool>,
    pub paused: Option<bool>,
    pub healthy: Option<bool>,
    pub address: Option<String>,
}

/// `GET /api/v1/ha/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HaStatus {
    pub node_id: String,
    /// `active`, `standby` or `paused`.
    pub role: Role,
    pub term: Option<u64>,
    pub active_node_id: Option<String>,
    pub is_primary: bool,
    pub lease_id: Option<String>,
    pub lease_ttl_ms: u64,
    /// Lower bound of the remaining life of this node's lease at the store.
    pub lease_ttl_remaining_ms: Option<u64>,
    /// Time this node may still act without another acknowledged keep-alive.
    pub acting_remaining_ms: Option<u64>,
    pub manager_reachable: bool,
    pub handover_to: Option<String>,
    pub preemptions_last_hour: usize,
    /// Crash detection of the active node (standbys): armed once its address answered with its id.
    pub crash_probe: Option<crate::machine::CrashProbe>,
    /// Candidates in election order (the first one leads).
    pub candidates: Vec<CandidateStatus>,
}

/// The driver's metrics.
#[derive(Clone, Debug)]
struct HaMetrics {
    is_active: Gauge,
    term: Gauge,
    transitions: Counter,
    failover: Histogram,
    fenced_rejected: Counter,
}

impl HaMetrics {
    fn new() -> Self {
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

    fn register(&self, metrics: &autogate_runtime::Metrics) {
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

struct Shared {
    node_id: String,
    is_primary: bool,
    lease_ttl: Duration,
    election_prefix: String,
    snapshot: Mutex<(Instant, crate::machine::MachineSnapshot)>,
    metrics: HaMetrics,
}

/// The running election of one node; cheap to clone.
#[derive(Clone)]
pub struct HaHandle {
    input: mpsc::UnboundedSender<Input>,
    leadership: watch::Receiver<Leadership>,
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    /// Every task of this election (machine loop, store worker, keep-alive loop, watchers,
    /// probes); closed at start, so waiting on it ends once they all have.
    tasks: TaskTracker,
}

impl fmt::Debug for HaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaHandle")
            .field("node_id", &self.shared.node_id)
            .field("leadership", &*self.leadership.borrow())
            .finish()
    }
}

/// Entry point: [`HaDriver::start`].
#[derive(Debug)]
pub struct HaDriver;

impl HaDriver {
    /// Starts campaigning on the current Tokio runtime with the default [`HttpProber`]. The
    /// election's tasks are tracked by `tracker` (the process's), which sees them all end after
    /// [`HaHandle::shutdown`].
    pub fn start(
        store: Arc<dyn Store>,
        options: HaOptions,
        metrics: Option<&autogate_runtime::Metrics>,
        tracker: &TaskTracker,
    ) -> Result<HaHandle, HaError> {
        Self::start_with_prober(
            store,
            options,
            metrics,
            Arc::new(HttpProber::default()),
            tracker,
        )
    }

    /// Like [`start`](Self::start) with another way of probing the active node.
    pub fn start_with_prober(
        store: Arc<dyn Store>,
        options: HaOptions,
        metrics: Option<&autogate_runtime::Metrics>,
        prober: Arc<dyn Prober>,
        tracker: &TaskTracker,
    ) -> Result<HaHandle, HaError> {
        if options.cluster_id.is_empty() || options.cluster_id.contains('/') {
            return Err(HaError::InvalidOptions(format!(
                "cluster id '{}' must be non-empty and contain no '/'",
                options.cluster_id
            )));
        }
        if options.node_id.is_empty() {
            return Err(HaError::InvalidOptions("node id is empty".into()));
        }
        if options.lease_ttl < Duration::from_secs(1) {
            return Err(HaError::InvalidOptions(format!(
                "lease TTL {:?} is below etcd's minimum of 1 s",
                options.lease_ttl
            )));
        }
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
        });
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (leader_tx, leader_rx) = watch::channel(machine.leadership());
        let (lease_tx, lease_rx) = watch::channel(None::<LeaseId>);
        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
        let options = Arc::new(options);
        // The election's own tracker, so that its shutdown can wait for exactly its tasks; the
        // caller's tracker holds one task that ends when they all have.
        let tasks = TaskTracker::new();

        tasks.spawn(worker(
            store.clone(),
            options.clone(),
            worker_rx,
            input_tx.clone(),
            lease_rx.clone(),
            origin,
            tasks.clone(),
        ));
        tasks.spawn(keep_alive_loop(
            store.clone(),
            machine.config().keepalive_interval_ms(),
            lease_rx,
            input_tx.clone(),
            origin,
        ));
        let election = format!("{}/", shared.election_prefix);
        tasks.spawn(watch_prefix(
            store.clone(),
            election,
            input_tx.clone(),
            |revision, kvs| {
                let candidates = kvs
                    .into_iter()
                    .map(|kv| Candidate {
                        node_id: String::from_utf8_lossy(&kv.value).into_owned(),
                        key: kv.key,
                        create_revision: kv.create_revision,
                        lease: kv.lease,
                    })
                    .collect();
                Event::ElectionView {
                    revision,
                    candidates,
                }
            },
        ));
        let nodes = nodes_prefix(&options.cluster_id);
        tasks.spawn(watch_prefix(
            store.clone(),
            nodes.clone(),
            input_tx.clone(),
            move |_, kvs| {
                Event::NodeRecords(
                    kvs.into_iter()
                        .filter_map(|kv| {
                            let id = kv.key.strip_prefix(&nodes)?.to_owned();
                            let r: StoredRecord = serde_json::from_slice(&kv.value).ok()?;
                            Some(NodeRecord {
                                node_id: id,
                                address: r.address,
                                is_primary: r.is_primary,
                                role: r.role,
                                manager_reachable: r.manager_reachable,
                                paused: r.paused,
                                healthy: r.healthy,
                                handover_to: r.handover_to,
                            })
                        })
                        .collect(),
                )
            },
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

impl HaHandle {
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Leadership changes; `borrow()` is the current value.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub fn current(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    /// The election key and term to fence writes with, while active.
    pub fn fence(&self) -> Option<(String, u64)> {
        let guard = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let snap = &guard.1;
        match (&snap.leadership, snap.lease) {
            (Leadership::Active { term }, Some(lease)) => {
                Some((format!("{}/{lease:x}", self.shared.election_prefix), *term))
            }
            _ => None,
        }
    }

    /// Runs `txn` fenced by this node's current term. A rejection counts in
    /// `autogate_ha_fenced_writes_rejected_total` and makes this node step down.
    pub async fn fenced_txn(&self, txn: Txn) -> Result<TxnResponse, FencedError> {
        let (key, term) = self.fence().ok_or(FencedError::NotActive)?;
        let result = fenced_txn(self.store.as_ref(), &key, term, txn).await;
        if let Err(FencedError::Rejected { term }) = &result {
            self.shared.metrics.fenced_rejected.inc();
            self.send(Event::FencedWriteRejected { term: *term });
        }
        result
    }

    /// What the server knows of its own manager reachability: the link's state while active, a
    /// reachability check while standby. Until told, a node counts as unable to reach it.
    pub fn set_manager_reachable(&self, reachable: bool) {
        self.send(Event::ManagerReachable(reachable));
    }

    /// Stop campaigning (an active node hands over first).
    pub fn pause(&self) {
        self.send(Event::Pause);
    }

    pub fn resume(&self) {
        self.send(Event::Resume);
    }

    /// Give up the active role now and queue again behind the other candidates.
    pub fn resign(&self) {
        self.send(Event::Resign);
    }

    /// Operator switchover: only the active node accepts it; with `to`, only towards a healthy
    /// candidate. Returns once accepted (the hand-over itself follows within milliseconds, or
    /// after the standbys ahead of the target re-queued).
    pub async fn switchover(&self, to: Option<String>) -> Result<(), SwitchoverError> {
        let (tx, rx) = oneshot::channel();
        self.input
            .send(Input::Switchover(to, tx))
            .map_err(|_| SwitchoverError::Stopped)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(SwitchoverError::Refused(reason)),
            Err(_) => Err(SwitchoverError::Stopped),
        }
    }

    /// Resign (delete the key), stop leader work, revoke the lease, and stop every task. Returns
    /// when the store calls were made (each bounded by the store's request timeout) and every
    /// task of the election has ended.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.input.send(Input::Shutdown(tx)).is_ok() {
            let _ = rx.await;
            self.tasks.wait().await;
        }
    }

    /// The core nodes of the cluster as their records in the store say (each record is bound to
    /// its node's lease, so a dead node drops out with its lease).
    pub fn nodes(&self) -> Vec<NodeRecord> {
        let guard = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        guard.1.records.clone()
    }

    /// Snapshot for `GET /api/v1/ha/status`.
    pub fn status(&self) -> HaStatus {
        let (taken, snap) = {
            let guard = self
                .shared
                .snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            (guard.0, guard.1.clone())
        };
        let elapsed = u64::try_from(taken.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (role, term) = match snap.leadership {
            Leadership::Active { term } => (Role::Active, Some(term)),
            Leadership::Paused => (Role::Paused, None),
            Leadership::Standby { .. } => (Role::Standby, None),
        };
        let candidates = snap
            .candidates
            .iter()
            .map(|c| {
                let r = snap.records.iter().find(|r| r.node_id == c.node_id);
                CandidateStatus {
                    node_id: c.node_id.clone(),
                    key: c.key.clone(),
                    create_revision: c.create_revision,
                    lease: format!("{:x}", c.lease),
                    is_primary: r.map(|r| r.is_primary),
                    manager_reachable: r.map(|r| r.manager_reachable),
                    paused: r.map(|r| r.paused),
                    healthy: r.map(|r| r.healthy),
                    address: r.and_then(|r| r.address.clone()),
                }
            })
            .collect();
        HaStatus {
            node_id: self.shared.node_id.clone(),
            role,
            term,
            active_node_id: snap.candidates.first().map(|c| c.node_id.clone()),
            is_primary: self.shared.is_primary,
            lease_id: snap.lease.map(|l| format!("{l:x}")),
            lease_ttl_ms: u64::try_from(self.shared.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            lease_ttl_remaining_ms: snap.lease_remaining_ms.map(|r| r.saturating_sub(elapsed)),
            acting_remaining_ms: snap.acting_remaining_ms.map(|r| r.saturating_sub(elapsed)),
            manager_reachable: snap.manager_reachable,
            handover_to: snap.handover_to,
            preemptions_last_hour: snap.preemptions_last_hour,
            crash_probe: snap.crash_probe,
            candidates,
        }
    }

    fn send(&self, event: Event) {
        // After shutdown nobody listens, which is fine: there is nothing left to tell.
        let _ = self.input.send(Input::Event(event));
    }
}

fn millis(origin: Instant, at: Instant) -> Millis {
    Millis(u64::try_from(at.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX))
}

struct MachineLoop {
    machine: Machine,
    origin: Instant,
    shared: Arc<Shared>,
    leader_tx: watch::Sender<Leadership>,
    lease_tx: watch::Sender<Option<LeaseId>>,
    worker_tx: mpsc::UnboundedSender<StoreCmd>,
    input_tx: mpsc::UnboundedSender<Input>,
    prober: Arc<dyn Prober>,
    replies: VecDeque<oneshot::Sender<Result<(), String>>>,
    timer: Option<Instant>,
    tasks: TaskTracker,
}

impl MachineLoop {
    async fn run(mut self, mut input: mpsc::UnboundedReceiver<Input>) {
        loop {
            let timer = self.timer;
            let next = tokio::select! {
                msg = input.recv() => msg,
                () = async {
                    match timer {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.timer = None;
                    Some(Input::Event(Event::Tick))
                }
            };
            let Some(msg) = next else { break };
            let now = millis(self.origin, Instant::now());
            let commands = match msg {
                Input::Event(e) => self.machine.handle(now, e),
                Input::Switchover(to, reply) => {
                    self.replies.push_back(reply);
                    self.machine.handle(now, Event::Switchover { to })
                }
                Input::Republish => {
                    self.machine.republish();
                    self.machine.handle(now, Event::Tick)
                }
                Input::Shutdown(done) => {
                    let commands = self.machine.handle(now, Event::Shutdown);
                    self.execute(commands);
                    self.after(now);
                    let (tx, rx) = oneshot::channel();
                    let _ = self.worker_tx.send(StoreCmd::Drain(tx));
                    let _ = rx.await;
                    let _ = done.send(());
                    break;
                }
            };
            self.execute(commands);
            self.after(now);
            if self.machine.is_finished() {
                break;
            }
        }
        // Stop the keep-alive loop and the watchers (they end when their sends fail).
        self.lease_tx.send_replace(None);
    }

    fn after(&mut self, now: Millis) {
        self.sync_lease();
        let leadership = self.machine.leadership();
        self.leader_tx.send_if_modified(|l| {
            let changed = *l != leadership;
            *l = leadership.clone();
            changed
        });
        let snap = self.machine.snapshot(now);
        let mut guard = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *guard = (Instant::now(), snap);
    }

    fn sync_lease(&self) {
        self.lease_tx.send_if_modified(|l| {
            let current = self.machine.current_lease();
            let changed = *l != current;
            *l = current;
            changed
        });
    }

    fn execute(&mut self, commands: Vec<Command>) {
        // The worker drops store commands for a lease that is not current, so the current lease
        // must be visible to it before the commands are.
        self.sync_lease();
        for command in commands {
            match command {
                Command::Store(command) => {
                    let _ = self.worker_tx.send(StoreCmd::Do(command));
                }
                Command::Local(command) => self.carry_out(command),
            }
        }
    }

    /// Carries out one local command (nothing here waits on the store).
    fn carry_out(&mut self, command: LocalCommand) {
        let metrics = &self.shared.metrics;
        match command {
            LocalCommand::StartLeaderWork { term, waited_ms } => {
                metrics.is_active.set(1);
                metrics.term.set(i64::try_from(term).unwrap_or(i64::MAX));
                metrics.transitions.inc();
                if let Some(ms) = waited_ms {
                    #[allow(clippy::cast_precision_loss)]
                    metrics.failover.observe(ms as f64 / 1000.0);
                }
            }
            LocalCommand::StopLeaderWork { .. } => {
                metrics.is_active.set(0);
                metrics.term.set(0);
                metrics.transitions.inc();
            }
            LocalCommand::Probe { node_id, address } => {
                let prober = self.prober.clone();
                let input = self.input_tx.clone();
                self.tasks.spawn(async move {
                    // A probe still in flight when the election stops has nobody to tell.
                    let result = tokio::select! {
                        result = prober.probe(&address) => result,
                        () = input.closed() => return,
                    };
                    let _ = input.send(Input::Event(Event::ProbeResult {
                        node_id,
                        address,
                        result,
                    }));
                });
            }
            LocalCommand::Log { level, text } => match level {
                LogLevel::Debug => tracing::debug!("{text}"),
                LogLevel::Info => tracing::info!("{text}"),
                LogLevel::Warn => tracing::warn!("{text}"),
            },
            LocalCommand::SetTimer { at } => {
                self.timer = Some(self.origin + Duration::from_millis(at.0));
            }
            LocalCommand::SwitchoverOutcome(outcome) => {
                if let Some(reply) = self.replies.pop_front() {
                    let _ = reply.send(outcome);
                }
            }
            LocalCommand::Finished => {}
        }
    }
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

async fn worker(
    store: Arc<dyn Store>,
    options: Arc<HaOptions>,
    mut commands: mpsc::UnboundedReceiver<StoreCmd>,
    input: mpsc::UnboundedSender<Input>,
    lease: watch::Receiver<Option<LeaseId>>,
    origin: Instant,
    tasks: TaskTracker,
) {
    let prefix = election_prefix(&options.cluster_id);
    let record_key = format!("{}{}", nodes_prefix(&options.cluster_id), options.node_id);
    let mut healthy_since: Option<u64> = None;
    let event = |e: Event| {
        let _ = input.send(Input::Event(e));
    };
    while let Some(cmd) = commands.recv().await {
        let command = match cmd {
            StoreCmd::Do(c) => c,
            StoreCmd::Drain(done) => {
                let _ = done.send(());
                continue;
            }
        };
        match command {
            StoreCommand::GrantLease => {
                let mut backoff = Backoff::new();
                loop {
                    let sent = Instant::now();
                    match store.grant(options.lease_ttl).await {
                        Ok(id) => {
                            event(Event::LeaseGranted {
                                lease: id,
                                sent_at: millis(origin, sent),
                            });
                            break;
                        }
                        Err(e) => {
                            tracing::debug!("lease grant failed, retrying: {e}");
                            if input.is_closed() {
                                return;
                            }
                            backoff.wait().await;
                        }
                    }
                }
            }
            StoreCommand::Campaign { lease: id, attempt } => {
                let key = format!("{prefix}/{id:x}");
                let txn = Txn::new()
                    .when([autogate_store::Compare::missing(&key)])
                    .and_then([TxnOp::put_with_lease(
                        &key,
                        options.node_id.as_bytes().to_vec(),
                        id,
                    )])
                    .or_else([TxnOp::get(&key)]);
                let mut backoff = Backoff::new();
                while *lease.borrow() == Some(id) {
                    match store.txn(txn.clone()).await {
                        Ok(response) => {
                            let create_revision = if response.succeeded {
                                Some(response.revision)
                            } else {
                                match response.responses.first() {
                                    Some(TxnOpResponse::Get(kvs)) => kvs
                                        .first()
                                        .filter(|kv| kv.lease == id)
                                        .map(|kv| kv.create_revision),
                                    _ => None,
                                }
                            };
                            match create_revision {
                                Some(create_revision) => event(Event::OwnKeyCreated {
                                    lease: id,
                                    attempt,
                                    create_revision,
                                }),
                                None => event(Event::LeaseLost { lease: id }),
                            }
                            break;
                        }
                        Err(StoreError::LeaseNotFound(_)) => {
                            event(Event::LeaseLost { lease: id });
                            break;
                        }
                        Err(e) => {
                            tracing::debug!("campaign failed, retrying: {e}");
                            backoff.wait().await;
                        }
                    }
                }
            }
            StoreCommand::Resign { lease: id } => {
                let key = format!("{prefix}/{id:x}");
                if let Err(e) = store.delete(&key).await {
                    tracing::warn!("cannot delete election key {key}: {e}");
                }
            }
            StoreCommand::RevokeLease { lease: id } => match store.revoke(id).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => tracing::debug!("cannot revoke lease {id:x}: {e}"),
            },
            StoreCommand::RevokePeerLease { node_id, lease: id } => match store.revoke(id).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => {
                    tracing::warn!("cannot revoke lease {id:x} of core node '{node_id}': {e}")
                }
            },
            StoreCommand::PublishRecord { lease: id, record } => {
                if *lease.borrow() != Some(id) {
                    continue;
                }
                if record.healthy {
                    healthy_since.get_or_insert_with(unix_ms);
                } else {
                    healthy_since = None;
                }
                let stored = StoredRecord {
                    address: record.address,
                    is_primary: record.is_primary,
                    version: options.version.clone(),
                    role: record.role,
                    manager_reachable: record.manager_reachable,
                    paused: record.paused,
                    healthy: record.healthy,
                    healthy_since,
                    handover_to: record.handover_to,
                };
                let Ok(value) = serde_json::to_vec(&stored) else {
                    continue;
                };
                match store.put(&record_key, value, Some(id)).await {
                    Ok(_) => {}
                    Err(StoreError::LeaseNotFound(_)) => event(Event::LeaseLost { lease: id }),
                    Err(e) => {
                        tracing::debug!("cannot publish node record: {e}");
                        let input = input.clone();
                        tasks.spawn(async move {
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(500)) => {
                                    let _ = input.send(Input::Republish);
                                }
                                () = input.closed() => {}
                            }
                        });
                    }
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn keep_alive_loop(
    store: Arc<dyn Store>,
    interval_ms: u64,
    mut lease: watch::Receiver<Option<LeaseId>>,
    input: mpsc::UnboundedSender<Input>,
    origin: Instant,
) {
    let interval = Duration::from_millis(interval_ms);
    // A failed renewal is retried sooner: the acting window allows about one lost interval.
    let retry = (interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        let current = *lease.borrow_and_update();
        let Some(id) = current else {
            if lease.changed().await.is_err() || input.is_closed() {
                return;
            }
            continue;
        };
        let mut next = Instant::now() + interval;
        loop {
            tokio::select! {
                changed = lease.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            let outcome = tokio::select! {
                changed = lease.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                r = store.keep_alive(id) => r,
            };
            let event = match outcome {
                Ok(_) => {
                    next = sent + interval;
                    Event::KeepAliveAcked {
                        lease: id,
                        sent_at: millis(origin, sent),
                    }
                }
                Err(StoreError::LeaseNotFound(_)) => {
                    next = Instant::now() + interval;
                    Event::LeaseLost { lease: id }
                }
                Err(e) => {
                    next = Instant::now() + retry;
                    Event::KeepAliveFailed {
                        lease: id,
                        error: e.to_string(),
                    }
                }
            };
            if input.send(Input::Event(event)).is_err() {
                return;
            }
        }
    }
}

/// Lists `prefix`, then watches it from the list's revision; after every change hands the
/// machine `to_event(revision, all keys)`. Re-lists after any watch error.
async fn watch_prefix<F>(
    store: Arc<dyn Store>,
    prefix: String,
    input: mpsc::UnboundedSender<Input>,
    to_event: F,
) where
    F: Fn(i64, Vec<KeyValue>) -> Event + Send + 'static,
{
    let mut backoff = Backoff::new();
    while !input.is_closed() {
        // Every wait also ends when the machine loop has (shutdown then waits for this task).
        let listed = tokio::select! {
            listed = store.txn(Txn::new().and_then([TxnOp::get_prefix(&prefix)])) => listed,
            () = input.closed() => return,
        };
        let (revision, kvs) = match listed {
            Ok(r) => {
                let kvs = match r.responses.into_iter().next() {
                    Some(TxnOpResponse::Get(kvs)) => kvs,
                    _ => Vec::new(),
                };
                (r.revision, kvs)
            }
            Err(e) => {
                tracing::debug!("cannot list {prefix}: {e}");
                tokio::select! {
                    () = backoff.wait() => {}
                    () = input.closed() => return,
                }
                continue;
            }
        };
        let mut state: std::collections::BTreeMap<String, KeyValue> =
            kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        if input
            .send(Input::Event(to_event(
                revision,
                state.values().cloned().collect(),
            )))
            .is_err()
        {
            return;
        }
        let watched = tokio::select! {
            watched = store.watch(&prefix, Some(revision + 1)) => watched,
            () = input.closed() => return,
        };
        let mut stream = match watched {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("cannot watch {prefix}: {e}");
                tokio::select! {
                    () = backoff.wait() => {}
                    () = input.closed() => return,
                }
                continue;
            }
        };
        backoff = Backoff::new();
        let mut last = revision;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = input.closed() => return,
            };
            match item {
                Some(Ok(ev)) => {
                    last = last.max(ev.kv.mod_revision);
                    match ev.kind {
                        EventKind::Put => {
                            state.insert(ev.kv.key.clone(), ev.kv);
                        }
                        EventKind::Delete => {
                            state.remove(&ev.kv.key);
                        }
                    }
                    if input
                        .send(Input::Event(to_event(
                            last,
                            state.values().cloned().collect(),
                        )))
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("watch of {prefix} ended: {e}");
                    break;
                }
                None => break,
            }
        }
    }
}
