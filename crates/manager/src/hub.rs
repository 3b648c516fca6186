//! The hub: this replica's live gateway sessions, every replica's session claims
//! ([`crate::claims`]), and the operations that change them — a `hello`, a session ending, an
//! administrative change (certificate removed, cluster disabled or deleted), a request sent to
//! a cluster.
//!
//! # Ordering
//!
//! The store decides: every change of a cluster's session is one store transaction that
//! compares the revisions of the cluster's record and claim it read, so replicas (and the
//! requests of one replica) changing the same cluster at once are ordered by the store, and the
//! loser reads again. Within a replica, everything that changes the sessions of one cluster also
//! runs under that cluster's async lock (`cluster_lock`), so its own requests do not race each
//! other. A `hello` that replaces a live session writes, in its transaction, the old session's
//! `disconnected_at` and the new one's `connected_at` from the same clock reading, so the
//! history never shows two overlapping live sessions, whichever replica held either. The map of
//! this replica's live sessions sits behind a plain mutex that is never held across an
//! `.await`.
//!
//! A session another replica replaced or ended is closed by its own replica when the store
//! watch delivers the new claim ([`Hub::apply_claim`]); the history was written by the replica
//! that made the change.
//!
//! # Certificates and terms
//!
//! A certificate's fingerprint is pinned to one cluster at most: registering a cluster with, or
//! adding to one, a certificate another cluster pins is refused ([`AdminError::Pinned`]). These
//! changes run under one more lock (`pins`, taken before any cluster lock), so two of them
//! cannot pin the same fingerprint to two clusters at once. A store written before this rule
//! may still hold a fingerprint pinned to several clusters: such a certificate is refused
//! ([`Hub::pinned_cluster`]) with a reason naming the clusters, until the administrator removes
//! it from all but one.
//!
//! [`Hub::reset_term`] is the administrator's way out of a term no real leader can beat (a
//! pinned node that sent a huge one): it forgets the cluster's highest term, closes its live
//! session and writes an audit line.
//!
//! A session task that ends by itself calls [`Hub::closed`]; when the hub closed it first
//! (replaced, certificate removed, …) the task's call finds nothing to do, and the store
//! transaction that ends a claim only succeeds for a claim still live, so each session end is
//! recorded exactly once.
//!
//! # Requests and runs
//!
//! Requests sent to gateways (`ping`, `services.list`) wait for their answers in the hub, not
//! in the session task, under numeric ids unique across the cluster's sessions (and across
//! restarts of the manager: the counter starts from the clock); they fail when their session
//! ends. A request for a cluster whose session another replica holds goes to that replica
//! through the store ([`crate::forward`]). Service runs are not requests of a session: they belong to the cluster, live in
//! [`Runs`] from acceptance to answer, and are sent by whichever session is live, under their
//! run id (see [`crate::runs`]). An answer to an id nobody waits for any more (a late
//! duplicate) is ignored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use autogate_proto::{
    ConnId, Departed, Hello, HelloDecision, NodeInfo, Role, RpcError, NOT_ALLOWED, SESSION_REFUSED,
};
use autogate_store::{
    Compare, CompareOp, EventKind as StoreEventKind, KeyValue, Revision, StoreError, Txn, TxnOp,
    WatchEvent,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::claims::{self, claim_key, Claim};
use crate::forward::Forward;
use crate::membercopy::{Change, MembersCopy};
use crate::members::{Absence, ForgetError, Members};
use crate::metrics::{ManagerMetrics, RefusalCategory};
use crate::mirror::Mirror;
use crate::model::{format_rfc3339, now_rfc3339, ClusterRecord, ClusterState};
use crate::registry::{self, Registry};
use crate::replicas::Replicas;
use crate::runs::{Runs, SessionKind};
use crate::web::{EventKind, Events};

/// WebSocket close code for a normal closure (a session superseded by a newer one).
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code "going away" (manager shutting down, peer silent).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code "policy violation" (refused, certificate removed, rate limit, …).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code "internal error".
pub const CLOSE_INTERNAL: u16 = 1011;

/// The client certificate a connection presented, described once at TLS accept time.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// SHA-256 fingerprint, lower-case hex.
    pub fingerprint: String,
    /// Subject, e.g. `CN=node-1`.
    pub subject: String,
    /// End of validity (`None` when the certificate could not be parsed).
    pub not_after: Option<time::OffsetDateTime>,
}

/// How a session is told to close from outside its task.
#[derive(Debug, Default)]
pub struct SessionControl {
    token: CancellationToken,
    why: Mutex<Option<(u16, String)>>,
}

impl SessionControl {
    /// Asks the session to close with this code and reason (the first request wins).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let mut why = self.why.lock().unwrap_or_else(|e| e.into_inner());
        if why.is_none() {
            *why = Some((code, reason.into()));
        }
        drop(why);
        self.token.cancel();
    }

    /// Resolves when [`SessionControl::close`] was called.
    pub async fn closed(&self) {
        self.token.cancelled().await;
    }

    /// The code and reason given to [`SessionControl::close`].
    pub fn reason(&self) -> (u16, String) {
        self.why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or((CLOSE_NORMAL, "closed by the manager".to_owned()))
    }
}

/// A request the hub hands to a session task.
#[derive(Debug)]
pub struct Outgoing {
    /// JSON-RPC method.
    pub method: String,
    /// Its params.
    pub params: Option<Value>,
    /// Where the gateway's answer goes.
    pub reply: oneshot::Sender<Reply>,
}

/// A gateway's answer to a request, and which node sent it (after a fail-over, not the node
/// the request went to).
#[derive(Debug)]
pub struct Reply {
    /// The result or error.
    pub outcome: Result<Value, RpcError>,
    /// The answering node.
    pub node_id: String,
    /// Its term.
    pub term: Option<u64>,
}

/// A request sent to a gateway, waiting for its answer.
#[derive(Debug)]
struct Pending {
    cluster: String,
    /// The session it went out on.
    conn: Option<ConnId>,
    reply: oneshot::Sender<Reply>,
}

/// Why a request could not be sent on a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} requests already waiting for this gateway")]
pub struct TooManyInFlight(pub usize);

/// What the hub knows about a live session of this replica beyond its claim (which every
/// replica reads for the rest: term, version, address, …): where to reach its task.
#[derive(Debug, Clone)]
pub struct LiveInfo {
    /// Its cluster.
    pub cluster_id: String,
    /// The manager's id of the session.
    pub session_id: String,
    /// The node holding it.
    pub node_id: String,
    /// The cluster's nodes, from `hello` and `nodes.update` (its claim's copy is written
    /// behind them).
    pub nodes: Vec<NodeInfo>,
    /// The revision of the session's claim as this replica last wrote it.
    claim_rev: Revision,
    control: Arc<SessionControl>,
    requests: mpsc::Sender<Outgoing>,
}

/// Why a `hello` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// JSON-RPC error code ([`NOT_ALLOWED`], [`SESSION_REFUSED`] or internal).
    pub code: i64,
    /// The reason, sent to the gateway and logged.
    pub reason: String,
    /// Its category (metric label, log field).
    pub category: RefusalCategory,
}

/// Why a request could not be answered by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No such cluster.
    #[error("cluster {0} is not registered")]
    UnknownCluster(String),
    /// No live session.
    #[error("cluster {0} is not connected")]
    NotConnected(String),
    /// The session has too many requests queued.
    #[error("the session of cluster {0} is busy; retry later")]
    Busy(String),
    /// The session ended before the answer came.
    #[error("the session of cluster {0} closed before answering")]
    SessionClosed(String),
    /// No answer in time.
    #[error("no answer from cluster {cluster} within {after:?}")]
    Timeout {
        /// The cluster.
        cluster: String,
        /// The deadline.
        after: Duration,
    },
}

/// Who answered a request.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The active node.
    pub node_id: String,
    /// Its term.
    pub term: Option<u64>,
    /// The gateway's result or error.
    pub outcome: Result<Value, RpcError>,
    /// Round trip.
    pub rtt: Duration,
}

/// Why an administrative change failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such cluster.
    #[error("cluster {0} is not registered")]
    NotFound(String),
    /// The id is taken.
    #[error("cluster {0} already exists")]
    Exists(String),
    /// A field of the request is wrong; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// A certificate is pinned to another cluster already (a fingerprint belongs to one cluster
    /// at most).
    #[error("{field}: certificate {fingerprint} is already pinned to cluster {cluster}; remove it there first (a certificate belongs to one cluster at most)")]
    Pinned {
        /// The request field that carried it, e.g. `certificates[0]`.
        field: String,
        /// Its fingerprint.
        fingerprint: String,
        /// The cluster that pins it.
        cluster: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A change to a cluster (`PATCH`).
#[derive(Debug, Default, Clone)]
pub struct ClusterPatch {
    /// New name.
    pub name: Option<String>,
    /// New state.
    pub state: Option<ClusterState>,
    /// Certificates to pin (parsed).
    pub add: Vec<crate::api::NewCert>,
    /// Fingerprints to unpin (normalised).
    pub remove: Vec<String>,
}

/// The outcome of one attempt at ending a session in the store.
#[derive(Debug)]
enum Attempt {
    /// Written at this revision; the claim it ended, if one was live.
    Done(Revision, Option<Box<Claim>>),
    /// Nothing to write: the session was not live.
    NotLive,
    /// The claim or a guarded record changed since it was read.
    Conflict,
}

/// Attempts of a change that loses its store transaction to a concurrent one.
const HELLO_ATTEMPTS: usize = 5;
/// Longest wait for the store watch to catch up with a revision.
const APPLY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct HubState {
    /// This replica's live sessions.
    live: HashMap<ConnId, LiveInfo>,
    /// The connection of this replica's live session of each cluster.
    by_cluster: HashMap<String, ConnId>,
}

/// The manager's live state. Shared by the API and every session task.
#[derive(Debug)]
pub struct Hub {
    registry: Registry,
    metrics: ManagerMetrics,
    state: Mutex<HubState>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_conn: AtomicU64,
    /// Change notices for the web page's live view.
    events: Events,
    /// Requests sent to gateways and not answered yet, by JSON-RPC id.
    pending: Mutex<HashMap<i64, Pending>>,
    next_request: std::sync::atomic::AtomicI64,
    /// Per cluster: the nodes that left and the ones that came back ([`Members`]), with the
    /// changes of this replica not stored yet.
    members: Mutex<HashMap<String, MembersCopy>>,
    /// Clusters whose memory changed, for [`Hub::write_members`].
    members_dirty: mpsc::UnboundedSender<String>,
    members_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Service runs, from acceptance to answer ([`Runs`]).
    runs: Runs,
    /// Serialises the changes that pin certificates (taken before any cluster lock).
    pins: tokio::sync::Mutex<()>,
    /// This replica and the others.
    replicas: Arc<Replicas>,
    /// Every cluster's session claim, as the store watch delivers them.
    claims: Mirror<Claim>,
    /// Requests to and from other replicas.
    forward: Forward,
    /// The revision the store watch has applied up to.
    applied: tokio::sync::watch::Sender<Revision>,
}

/// Which cluster a client certificate may open a session for, decided before the WebSocket
/// upgrade ([`Hub::pinned_cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinning {
    /// Pinned to exactly this cluster.
    One(String),
    /// Pinned to no cluster: refused before the upgrade.
    Unpinned,
    /// Pinned to several clusters (a store from before fingerprints were unique): refused
    /// until the administrator removes it from all but one.
    Ambiguous(Vec<String>),
}

impl Pinning {
    /// Why a certificate that is not pinned to exactly one cluster is refused.
    pub fn refusal(&self, fingerprint: &str) -> Option<String> {
        match self {
            Pinning::One(_) => None,
            Pinning::Unpinned => Some(format!(
                "certificate {fingerprint} is not registered for any cluster"
            )),
            Pinning::Ambiguous(ids) => Some(format!(
                "certificate {fingerprint} is pinned to several clusters ({}); remove it from all but one",
                ids.join(", ")
            )),
        }
    }
}

/// What [`Hub::reset_term`] did, for the caller's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermResetDone {
    /// The highest term before the reset and its node (`None`: none was known).
    pub old: Option<(u64, String)>,
    /// The session it closed: its node.
    pub closed_node: Option<String>,
}

/// A session accepted by [`Hub::hello`].
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The manager's id of the session.
    pub session_id: String,
    /// The session it replaced and why, for the log.
    pub replaced: Option<(String, String)>,
}

impl Hub {
    /// A hub over the registry, with the claims read at start (`claims`) and the revision the
    /// store watch starts after (`start`).
    pub fn new(
        registry: Registry,
        metrics: ManagerMetrics,
        runs: Runs,
        replicas: Arc<Replicas>,
        claims: Vec<KeyValue>,
        start: Revision,
    ) -> Hub {
        let mirror = Mirror::new();
        mirror.reset(claims.iter().filter_map(|kv| {
            let cluster = kv.key.strip_prefix(claims::LIVE)?.to_owned();
            Some((cluster, Self::decode_claim(kv)?, kv.mod_revision))
        }));
        let forward = Forward::new(registry.store().clone(), replicas.clone());
        let (members_dirty, members_rx) = mpsc::unbounded_channel();
        Hub {
            registry,
            metrics,
            state: Mutex::new(HubState::default()),
            replicas,
            claims: mirror,
            forward,
            applied: tokio::sync::watch::channel(start).0,
            locks: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            events: Events::new(),
            pending: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            members_dirty,
            members_rx: Mutex::new(Some(members_rx)),
            runs,
            pins: tokio::sync::Mutex::new(()),
            // Ids from the clock (microseconds, well inside JSON's exact integers): a gateway
            // answering a request of the manager's previous run cannot hit a new request's id.
            next_request: std::sync::atomic::AtomicI64::new(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_micros()).unwrap_or(1))
                    .unwrap_or(1),
            ),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<i64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn members(&self) -> MutexGuard<'_, HashMap<String, MembersCopy>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a cluster's memory of its nodes as changed: [`Hub::write_members`] stores it.
    fn members_changed(&self, cluster: &str) {
        let _ = self.members_dirty.send(cluster.to_owned());
    }

    /// Stores the memories of nodes that changed, behind the changes, until `token` is
    /// cancelled. Changes that pile up while a write is under way are written once, as they
    /// are by then.
    pub async fn write_members(self: Arc<Self>, token: CancellationToken) {
        let Some(mut rx) = self
            .members_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        loop {
            let first = tokio::select! {
                () = token.cancelled() => return,
                c = rx.recv() => c,
            };
            let Some(first) = first else { return };
            let mut dirty = std::collections::BTreeSet::from([first]);
            while let Ok(more) = rx.try_recv() {
                dirty.insert(more);
            }
            for cluster in dirty {
                self.write_members_of(&cluster).await;
            }
        }
    }

    /// Stores this replica's pending changes of `cluster`'s memory, on top of whatever another
    /// replica stored meanwhile ([`MembersCopy`]).
    async fn write_members_of(&self, cluster: &str) {
        let key = crate::members::members_key(cluster);
        for _ in 0..8 {
            let Some(write) = self
                .members()
                .get_mut(cluster)
                .and_then(MembersCopy::to_write)
            else {
                return;
            };
            let txn = Txn::new()
                .when([
                    Compare::exists(registry::cluster_key(cluster)),
                    Compare::mod_revision(key.clone(), CompareOp::Equal, write.base),
                ])
                .and_then([TxnOp::put(key.clone(), write.value)]);
            let outcome = self.registry.store().txn(txn).await;
            {
                let mut members = self.members();
                let Some(copy) = members.get_mut(cluster) else {
                    return;
                };
                match outcome {
                    Ok(r) if r.succeeded => {
                        copy.written(r.revision);
                        continue;
                    }
                    Ok(_) => copy.not_written(),
                    Err(e) => {
                        copy.maybe_written();
                        tracing::warn!(
                            "cannot store the nodes of gateway cluster {cluster} that left: {e}"
                        );
                        return;
                    }
                }
            }
            // Another replica wrote first (or the cluster is gone): take its record, and the
            // pending changes are replayed on it.
            match self.registry.store().get(&key).await {
                Ok(Some(kv)) => match serde_json::from_slice::<Members>(&kv.value) {
                    Ok(m) => {
                        if let Some(copy) = self.members().get_mut(cluster) {
                            copy.observe_stored(m, &kv.value, kv.mod_revision);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("ignoring unreadable record {key}: {e}");
                        return;
                    }
                },
                // The cluster is gone (its memory goes with it).
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("cannot read the nodes of gateway cluster {cluster}: {e}");
                    return;
                }
            }
        }
    }

    /// A watch event under [`crate::members::MEMBERS`]: another replica's memory of a
    /// cluster's nodes (or this replica's own write coming back, which is skipped).
    pub fn apply_members(&self, ev: &WatchEvent) {
        let Some(cluster) = ev.kv.key.strip_prefix(crate::members::MEMBERS) else {
            return;
        };
        match ev.kind {
            StoreEventKind::Put => match serde_json::from_slice::<Members>(&ev.kv.value) {
                Ok(m) => {
                    let changed = self
                        .members()
                        .entry(cluster.to_owned())
                        .or_default()
                        .observe_stored(m, &ev.kv.value, ev.kv.mod_revision);
                    if changed {
                        self.events.send(EventKind::NodesChanged, cluster);
                    }
                }
                Err(e) => tracing::warn!("ignoring unreadable record {}: {e}", ev.kv.key),
            },
            StoreEventKind::Delete => {
                self.members().remove(cluster);
            }
        }
    }

    /// Reads every cluster's memory of its nodes (at start, and after the watch was lost).
    pub async fn reload_members(&self) -> Result<(), StoreError> {
        for kv in self.registry.store().list(crate::members::MEMBERS).await? {
            let Some(cluster) = kv.key.strip_prefix(crate::members::MEMBERS) else {
                continue;
            };
            match serde_json::from_slice::<Members>(&kv.value) {
                Ok(m) => {
                    let mut members = self.members();
                    match members.get_mut(cluster) {
                        Some(copy) => {
                            copy.observe_stored(m, &kv.value, kv.mod_revision);
                        }
                        None => {
                            members.insert(
                                cluster.to_owned(),
                                MembersCopy::stored(m, kv.mod_revision),
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!("ignoring unreadable record {}: {e}", kv.key),
            }
        }
        Ok(())
    }

    /// A membership of `cluster` arrived (with `hello` or `nodes.update`): records who left and
    /// who came back, and tells the page when that changed.
    fn observe_members(&self, cluster: &str, nodes: &[NodeInfo], departed: &[Departed]) {
        // Stored again only when what is stored changed: a hello or node list that says what
        // the manager knew already costs no write.
        let (changed, stored_differs) = self
            .members()
            .entry(cluster.to_owned())
            .or_default()
            .change(Change::Observe {
                nodes: nodes.to_vec(),
                departed: departed.to_vec(),
                at: now_rfc3339(),
            });
        if stored_differs {
            self.members_changed(cluster);
        }
        if changed {
            self.events.send(EventKind::NodesChanged, cluster);
        }
    }

    /// Forgets a node that left `cluster` (the operator's "forget"), so the page stops listing
    /// it.
    pub fn forget_node(&self, cluster: &str, node_id: &str) -> Result<(), ForgetError> {
        let forgotten = self
            .members()
            .get_mut(cluster)
            .ok_or_else(|| ForgetError::Unknown(node_id.to_owned()))?
            .forget(node_id)?;
        self.members_changed(cluster);
        tracing::info!(
            "forgot node {} ({}) of gateway cluster {cluster}, {} since {}",
            forgotten.node_id,
            forgotten.name.as_deref().unwrap_or("no name"),
            match forgotten.status {
                Absence::Stopped => "stopped",
                Absence::Lost => "lost",
            },
            forgotten.last_seen
        );
        self.events.send(EventKind::NodesChanged, cluster);
        Ok(())
    }

    /// Registers a request going out on session `conn` of `cluster`; returns its id.
    pub fn send_pending(
        &self,
        cluster: &str,
        conn: ConnId,
        reply: oneshot::Sender<Reply>,
        limit: usize,
    ) -> Result<i64, (TooManyInFlight, oneshot::Sender<Reply>)> {
        let mut pending = self.pending();
        // Requests whose caller stopped waiting (deadline) are dropped here.
        pending.retain(|_, p| !p.reply.is_closed());
        if pending.values().filter(|p| p.conn == Some(conn)).count() >= limit {
            return Err((TooManyInFlight(limit), reply));
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        pending.insert(
            id,
            Pending {
                cluster: cluster.to_owned(),
                conn: Some(conn),
                reply,
            },
        );
        Ok(id)
    }

    /// An answer from a session of `cluster`: completes the request with that id, if someone
    /// still waits for it. `false` for an unknown id (a late duplicate, or never asked).
    pub fn answer(
        &self,
        cluster: &str,
        id: i64,
        outcome: Result<Value, RpcError>,
        node_id: &str,
        term: Option<u64>,
    ) -> bool {
        let p = {
            let mut pending = self.pending();
            match pending.get(&id) {
                Some(p) if p.cluster == cluster => pending.remove(&id),
                _ => None,
            }
        };
        let Some(p) = p else { return false };
        let _ = p.reply.send(Reply {
            outcome,
            node_id: node_id.to_owned(),
            term,
        });
        true
    }

    /// Session `conn` of `cluster` ended: its requests fail now (a service run is not one of
    /// them: runs live in [`Runs`], which decides what becomes of them).
    pub async fn session_ended(&self, cluster: &str, conn: ConnId, kind: SessionKind) {
        self.pending().retain(|_, p| p.conn != Some(conn));
        self.runs.session_ended(cluster, conn, kind).await;
    }

    /// The service runs.
    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &ManagerMetrics {
        &self.metrics
    }

    /// Change notices (sessions, node lists, clusters) for the web page.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// A fresh connection handle.
    pub fn new_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cluster_lock(&self, cluster: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry(cluster.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Removes a live session from the map (the table has already let go of it) and counts it
    /// closed. `None` when someone else did it first.
    /// Removes a local live session from the maps and counts it closed. `None` when someone
    /// else did it first.
    fn take_live(&self, state: &mut HubState, conn: ConnId) -> Option<LiveInfo> {
        let info = state.live.remove(&conn)?;
        if state.by_cluster.get(&info.cluster_id) == Some(&conn) {
            state.by_cluster.remove(&info.cluster_id);
        }
        self.metrics.session_closed();
        Some(info)
    }

    /// The replicas of this manager.
    pub fn replicas(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    /// Waits until the store watch has applied everything up to `rev` (bounded: a watch that
    /// is down must not hold a session start forever).
    pub async fn wait_applied(&self, rev: Revision) {
        let mut rx = self.applied.subscribe();
        let waited = tokio::time::timeout(APPLY_WAIT, rx.wait_for(|applied| *applied >= rev)).await;
        if waited.is_err() {
            tracing::warn!(
                "the store watch has not reached revision {rev} after {APPLY_WAIT:?}; going on"
            );
        }
    }

    /// The store watch applied everything up to `rev`.
    pub fn applied(&self, rev: Revision) {
        self.applied.send_if_modified(|r| {
            if rev > *r {
                *r = rev;
                true
            } else {
                false
            }
        });
        self.claims.passed(rev);
        self.registry.passed(rev);
        self.replicas.passed(rev);
        self.runs.passed(rev);
    }

    /// The claim of a cluster's live session, on whatever replica: `None` when no session is
    /// live (ended, or held by a replica that is gone).
    pub fn live_claim(&self, cluster: &str) -> Option<Claim> {
        self.claims
            .get(cluster)
            .filter(|c| c.ended.is_none() && self.replicas.alive(&c.replica))
    }

    /// Whether the cluster has a live session on any replica.
    pub fn connected(&self, cluster: &str) -> bool {
        self.live_claim(cluster).is_some()
    }

    /// Reads a cluster's record and claim from the store in one transaction.
    async fn read_cluster(
        &self,
        cluster: &str,
    ) -> Result<(Option<KeyValue>, Option<KeyValue>), StoreError> {
        let resp = self
            .registry
            .store()
            .txn(Txn::new().and_then([
                TxnOp::get(registry::cluster_key(cluster)),
                TxnOp::get(claim_key(cluster)),
            ]))
            .await?;
        let mut got = resp.responses.into_iter().map(|r| match r {
            autogate_store::TxnOpResponse::Get(mut kvs) => kvs.pop(),
            _ => None,
        });
        Ok((got.next().flatten(), got.next().flatten()))
    }

    /// A stored claim, or `None` (logged, naming the key) when it does not read back.
    fn decode_claim(kv: &KeyValue) -> Option<Claim> {
        match serde_json::from_slice::<Claim>(&kv.value) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("ignoring unreadable session claim {}: {e}", kv.key);
                None
            }
        }
    }

    /// Why a session that `live` no longer describes ended, seen from its replica.
    fn why_superseded(&self, claim: &Claim, mine: &LiveInfo) -> (u16, String) {
        if claim.session_id == mine.session_id {
            let reason = claim.ended.as_ref().map_or_else(
                || "ended by another replica".to_owned(),
                |e| e.reason.clone(),
            );
            return (CLOSE_POLICY, reason);
        }
        let reason = claim.replaced.clone().unwrap_or_else(|| {
            format!(
                "superseded by a session of node {} on manager replica {}",
                claim.node_id,
                self.replicas.describe(&claim.replica)
            )
        });
        (CLOSE_NORMAL, reason)
    }

    /// Decides a `hello` received on `conn` from a peer that presented `cert`. On acceptance the
    /// session is live (and recorded, with its claim) when this returns; `requests` and
    /// `control` reach its task.
    ///
    /// The decision is made against the store, not this replica's memory: the cluster's record
    /// (highest term) and claim are read in one transaction, decided by the session rules, and
    /// the new claim, the history and the cluster record are written in one transaction that
    /// only succeeds if neither record changed meanwhile. A replica that loses that race reads
    /// again and decides again.
    pub async fn hello(
        &self,
        conn: ConnId,
        hello: &Hello,
        cert: &PeerCert,
        remote: SocketAddr,
        control: Arc<SessionControl>,
        requests: mpsc::Sender<Outgoing>,
    ) -> Result<Accepted, Refusal> {
        let cluster = hello.cluster_id.as_str();
        let refuse = |code, reason: String, category: RefusalCategory| Refusal {
            code,
            reason,
            category,
        };
        let unknown = || {
            refuse(
                NOT_ALLOWED,
                format!("cluster {cluster} is not registered"),
                RefusalCategory::UnknownCluster,
            )
        };
        let store_failed = |e: &dyn std::fmt::Display| {
            refuse(
                autogate_proto::INTERNAL_ERROR,
                format!("the manager cannot record the session: {e}"),
                RefusalCategory::StoreError,
            )
        };
        // Checked before taking the cluster lock too, so hellos naming made-up clusters never
        // create lock entries (any certificate passes TLS; the cluster id is the peer's word).
        if self.registry.get(cluster).is_none() {
            return Err(unknown());
        }
        if !self.replicas.healthy() {
            let why = self
                .replicas
                .trouble()
                .unwrap_or_else(|| "no answer".to_owned());
            return Err(store_failed(&format!("store unavailable ({why})")));
        }
        let lock = self.cluster_lock(cluster);
        let _guard = lock.lock().await;
        let fp = &cert.fingerprint;
        for _ in 0..HELLO_ATTEMPTS {
            let (rec_kv, claim_kv) = self
                .read_cluster(cluster)
                .await
                .map_err(|e| store_failed(&e))?;
            let Some(rec_kv) = rec_kv else {
                return Err(unknown());
            };
            let mut rec: ClusterRecord = serde_json::from_slice(&rec_kv.value).map_err(|e| {
                store_failed(&format!("stored record {} is unreadable: {e}", rec_kv.key))
            })?;
            if rec.state == ClusterState::Disabled {
                return Err(refuse(
                    NOT_ALLOWED,
                    format!("cluster {cluster} is disabled"),
                    RefusalCategory::ClusterDisabled,
                ));
            }
            if rec.certificate(fp).is_none() {
                return Err(refuse(
                    NOT_ALLOWED,
                    format!("certificate {fp} is not registered for cluster {cluster}"),
                    RefusalCategory::CertificateNotRegistered,
                ));
            }
            // Checked before the upgrade too; again here because the registry may have changed
            // since (and a certificate pinned twice must never choose its cluster itself).
            if let Some(reason) = self.pinned_cluster(fp).refusal(fp) {
                return Err(refuse(
                    NOT_ALLOWED,
                    reason,
                    RefusalCategory::CertificateNotRegistered,
                ));
            }
            // The TLS layer already refuses expired certificates; checked again because a
            // long-lived connection may say hello after its certificate expired.
            if let Some(not_after) = cert.not_after {
                if not_after < time::OffsetDateTime::now_utc() {
                    return Err(refuse(
                        NOT_ALLOWED,
                        format!("certificate {fp} expired at {}", format_rfc3339(not_after)),
                        RefusalCategory::CertificateExpired,
                    ));
                }
            }
            let old = claim_kv.as_ref().and_then(Self::decode_claim);
            let live = old
                .as_ref()
                .filter(|c| c.ended.is_none() && self.replicas.alive(&c.replica));
            let decision = claims::decide(
                cluster,
                rec.highest_term.as_ref(),
                live,
                &hello.node_id,
                hello.term,
                conn,
            );
            let replace = match decision {
                HelloDecision::Refuse { reason } => {
                    return Err(refuse(
                        SESSION_REFUSED,
                        reason,
                        RefusalCategory::SessionRule,
                    ));
                }
                HelloDecision::Accept { replace } => replace.map(|(_, why)| why),
            };

            let now = now_rfc3339();
            let session_id = uuid::Uuid::now_v7().to_string();
            let history_key = self.registry.new_session_key(cluster);
            if let Some(t) = hello.term {
                rec.highest_term = Some((t, hello.node_id.clone()));
            }
            if let Some(c) = rec
                .certificates
                .iter_mut()
                .find(|c| &c.fingerprint_sha256 == fp)
            {
                c.last_presented_by = Some(hello.node_id.clone());
                c.last_presented_at = Some(now.clone());
            }
            let node_name = hello
                .nodes
                .iter()
                .find(|n| n.node_id == hello.node_id)
                .and_then(NodeInfo::shown_name)
                .map(str::to_owned);
            let mut nodes = hello.nodes.clone();
            if !nodes.iter().any(|n| n.node_id == hello.node_id) {
                nodes.insert(
                    0,
                    NodeInfo {
                        node_id: hello.node_id.clone(),
                        name: None,
                        role: Role::Active,
                        is_primary: false,
                        address: None,
                        manager_reachable: Some(true),
                        running: None,
                        capacity: None,
                    },
                );
            }
            let claim = Claim {
                replica: self.replicas.id().to_owned(),
                session_id: session_id.clone(),
                node_id: hello.node_id.clone(),
                node_name,
                term: hello.term,
                version: hello.version.clone(),
                connected_at: now.clone(),
                remote_addr: remote.to_string(),
                nodes: nodes.clone(),
                distributed_execution: hello.distributed_execution,
                run_dedup: hello.run_dedup,
                history_key: history_key.clone(),
                certificate: fp.clone(),
                replaced: replace.clone(),
                ended: None,
            };
            let mut ops = vec![
                claim.put_op(cluster),
                Registry::session_op(&history_key, &claim.record(None)),
                Registry::put_op(&rec),
            ];
            // The session this one follows ends now in the history, from the same clock
            // reading: replaced, or held by a replica that is gone.
            let mut replaced = None;
            if let Some(old) = old.as_ref().filter(|c| c.ended.is_none()) {
                let why = match (&replace, live) {
                    (Some(why), Some(_)) => why.clone(),
                    _ => self.gone_reason(&old.replica),
                };
                ops.push(old.closed_op(&now, &why));
                replaced = Some((old.node_id.clone(), why));
            }
            let compares = [
                Compare::mod_revision(
                    registry::cluster_key(cluster),
                    CompareOp::Equal,
                    rec_kv.mod_revision,
                ),
                Compare::mod_revision(
                    claim_key(cluster),
                    CompareOp::Equal,
                    claim_kv.as_ref().map_or(0, |kv| kv.mod_revision),
                ),
            ];
            let resp = self
                .registry
                .store()
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(|e| store_failed(&e))?;
            if !resp.succeeded {
                // Another replica (or an administrator) changed the cluster meanwhile.
                continue;
            }
            let rev = resp.revision;
            self.registry.cache_put(rec, rev);
            self.claims.put(cluster, claim.clone(), rev);
            // A session of this replica that the new one replaces is closed here; one on
            // another replica is closed by that replica when its watch shows the new claim.
            let replaced_here = {
                let mut state = self.state();
                match state.by_cluster.get(cluster).copied() {
                    Some(c) if c != conn => self.take_live(&mut state, c),
                    _ => None,
                }
            };
            if let Some(info) = &replaced_here {
                let why = replaced
                    .as_ref()
                    .map_or_else(|| "superseded".to_owned(), |(_, w)| w.clone());
                info.control.close(CLOSE_NORMAL, why);
            }
            self.observe_members(cluster, &nodes, &hello.departed);
            {
                let mut state = self.state();
                state.live.insert(
                    conn,
                    LiveInfo {
                        cluster_id: cluster.to_owned(),
                        session_id: session_id.clone(),
                        node_id: hello.node_id.clone(),
                        nodes,
                        claim_rev: rev,
                        control,
                        requests,
                    },
                );
                state.by_cluster.insert(cluster.to_owned(), conn);
            }
            // Runs accepted by other replicas before this claim are in this replica's copy
            // once its watch reached the claim's revision.
            self.wait_applied(rev).await;
            let kind = SessionKind {
                dedup: hello.run_dedup,
                distributed: hello.distributed_execution,
            };
            self.runs.session_started(cluster, kind).await;
            self.metrics.session_opened();
            self.events.send(EventKind::SessionOpened, cluster);
            self.registry.after_insert(cluster).await;
            return Ok(Accepted {
                session_id,
                replaced,
            });
        }
        Err(store_failed(&format!(
            "the cluster's records changed {HELLO_ATTEMPTS} times while it tried; the gateway retries"
        )))
    }

    /// The close reason of a session whose replica is gone.
    fn gone_reason(&self, replica: &str) -> String {
        if self.replicas.exclusive() {
            registry::RESTART_REASON.to_owned()
        } else {
            format!(
                "manager replica {} stopped",
                self.replicas.describe(replica)
            )
        }
    }

    /// One attempt at ending the live session of `cluster` that `matches` in the store (claim
    /// ended, history closed), with `extra` writes under `guard` compares in the same
    /// transaction. A claim that is not live, or does not match, is left as it is (the extra
    /// writes still happen, guarded by its revision).
    async fn end_in_store(
        &self,
        cluster: &str,
        matches: impl Fn(&Claim) -> bool,
        why: &str,
        guard: Vec<Compare>,
        extra: Vec<TxnOp>,
    ) -> Result<Attempt, StoreError> {
        let (_, claim_kv) = self.read_cluster(cluster).await?;
        let claim = claim_kv.as_ref().and_then(Self::decode_claim);
        let mut compares = guard;
        let mut ops = extra;
        compares.push(Compare::mod_revision(
            claim_key(cluster),
            CompareOp::Equal,
            claim_kv.as_ref().map_or(0, |kv| kv.mod_revision),
        ));
        let ending = claim.filter(|c| c.ended.is_none() && matches(c));
        let now = now_rfc3339();
        let ended = ending.as_ref().map(|c| c.end(&now, why));
        if let (Some(old), Some(new)) = (&ending, &ended) {
            ops.push(new.put_op(cluster));
            ops.push(old.closed_op(&now, why));
        }
        if ops.is_empty() {
            return Ok(Attempt::NotLive);
        }
        let resp = self
            .registry
            .store()
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        if !resp.succeeded {
            return Ok(Attempt::Conflict);
        }
        if let Some(c) = &ended {
            self.claims.put(cluster, c.clone(), resp.revision);
        }
        Ok(Attempt::Done(resp.revision, ended.map(Box::new)))
    }

    /// A session task ended with `reason`. Records it unless it was closed for it already (by
    /// this replica or, through the store, by another). `detail` (the library's error behind a
    /// lost connection) goes to the log only: the history keeps the operator's words. `left`
    /// says whether the session's node left the membership with it, and how (`None` when its
    /// fate is unknown: the next session will tell).
    pub async fn closed(
        &self,
        conn: ConnId,
        reason: &str,
        detail: Option<&str>,
        left: Option<Absence>,
    ) {
        let Some(cluster) = self.state().live.get(&conn).map(|i| i.cluster_id.clone()) else {
            return;
        };
        let lock = self.cluster_lock(&cluster);
        let _guard = lock.lock().await;
        let Some(info) = self.take_live(&mut self.state(), conn) else {
            return;
        };
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        tracing::info!(
            "session {} of gateway cluster {cluster} (node {}) closed: {reason}{detail}",
            info.session_id,
            info.node_id
        );
        let session = info.session_id.clone();
        for _ in 0..HELLO_ATTEMPTS {
            match self
                .end_in_store(
                    &cluster,
                    |c| c.session_id == session,
                    reason,
                    vec![],
                    vec![],
                )
                .await
            {
                Ok(Attempt::Conflict) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!("cannot record the end of session {}: {e}", info.session_id);
                    break;
                }
            }
        }
        let now = now_rfc3339();
        if let Some(left) = left {
            let stored_differs = self.members().get_mut(&cluster).is_some_and(|m| {
                m.change(Change::SessionEnded {
                    node_id: info.node_id.clone(),
                    status: left,
                    reason: reason.to_owned(),
                    at: now,
                })
                .1
            });
            if stored_differs {
                self.members_changed(&cluster);
            }
        }
        self.events.send(EventKind::SessionClosed, &cluster);
    }

    /// A `nodes.update` arrived on a live session: kept at once, and written to its claim (so
    /// every replica shows it) behind.
    pub fn nodes_update(
        self: &Arc<Self>,
        conn: ConnId,
        nodes: Vec<NodeInfo>,
        departed: &[Departed],
    ) {
        let cluster = self.state().live.get_mut(&conn).map(|info| {
            info.nodes.clone_from(&nodes);
            info.cluster_id.clone()
        });
        if let Some(cluster) = cluster {
            self.observe_members(&cluster, &nodes, departed);
            self.events.send(EventKind::NodesChanged, &cluster);
            let hub = self.clone();
            tokio::spawn(async move { hub.write_nodes(conn, &cluster).await });
        }
    }

    /// Writes the current nodes of session `conn` into its claim (the last write wins: each
    /// takes the nodes as they are when it runs).
    async fn write_nodes(&self, conn: ConnId, cluster: &str) {
        let lock = self.cluster_lock(cluster);
        let _guard = lock.lock().await;
        for _ in 0..HELLO_ATTEMPTS {
            let Some((session, nodes)) = self
                .state()
                .live
                .get(&conn)
                .map(|i| (i.session_id.clone(), i.nodes.clone()))
            else {
                return;
            };
            let claim_kv = match self.read_cluster(cluster).await {
                Ok((_, kv)) => kv,
                Err(e) => {
                    tracing::warn!("cannot store the nodes of cluster {cluster}: {e}");
                    return;
                }
            };
            let Some(kv) = claim_kv else { return };
            let Some(mut claim) = Self::decode_claim(&kv) else {
                return;
            };
            if claim.session_id != session || claim.ended.is_some() {
                return;
            }
            claim.nodes = nodes;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    claim_key(cluster),
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then([claim.put_op(cluster)]);
            match self.registry.store().txn(txn).await {
                Ok(r) if r.succeeded => {
                    if let Some(info) = self.state().live.get_mut(&conn) {
                        info.claim_rev = r.revision;
                    }
                    self.claims.put(cluster, claim, r.revision);
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("cannot store the nodes of cluster {cluster}: {e}");
                    return;
                }
            }
        }
    }

    /// A watch event under [`claims::LIVE`]: updates the copy, closes this replica's session
    /// of the cluster when another replica replaced or ended it, and tells the page about
    /// another replica's sessions.
    pub fn apply_claim(&self, ev: &WatchEvent) {
        let Some(cluster) = ev.kv.key.strip_prefix(claims::LIVE) else {
            return;
        };
        let rev = ev.kv.mod_revision;
        let claim = match ev.kind {
            StoreEventKind::Put => {
                let Some(claim) = Self::decode_claim(&ev.kv) else {
                    return;
                };
                if !self.claims.put(cluster, claim.clone(), rev) {
                    return;
                }
                Some(claim)
            }
            StoreEventKind::Delete => {
                self.claims.remove(cluster, rev);
                None
            }
        };
        let closing = {
            let mut state = self.state();
            let local = state
                .by_cluster
                .get(cluster)
                .and_then(|c| state.live.get(c))
                .filter(|info| rev > info.claim_rev)
                .map(|info| {
                    let why = match &claim {
                        Some(c) if c.session_id == info.session_id && c.ended.is_none() => None,
                        Some(c) => Some(self.why_superseded(c, info)),
                        None => Some((CLOSE_POLICY, format!("cluster {cluster} was deleted"))),
                    };
                    (why, state.by_cluster.get(cluster).copied())
                });
            match local {
                Some((Some(why), Some(conn))) => self.take_live(&mut state, conn).map(|i| (i, why)),
                _ => None,
            }
        };
        if let Some((info, (code, why))) = closing {
            tracing::info!(
                "closing session {} of gateway cluster {cluster} (node {}): {why}",
                info.session_id,
                info.node_id
            );
            info.control.close(code, why);
        }
        if let Some(c) = &claim {
            if c.replica != self.replicas.id() {
                let kind = if c.ended.is_some() {
                    EventKind::SessionClosed
                } else {
                    EventKind::SessionOpened
                };
                self.events.send(kind, cluster);
            }
        }
    }

    /// Reads every claim again (after the watch was lost).
    pub async fn reload_claims(&self) -> Result<(), StoreError> {
        let kvs = self.registry.store().list(claims::LIVE).await?;
        self.claims.reset(kvs.iter().filter_map(|kv| {
            let cluster = kv.key.strip_prefix(claims::LIVE)?.to_owned();
            Some((cluster, Self::decode_claim(kv)?, kv.mod_revision))
        }));
        Ok(())
    }

    /// Ends the claims of replicas that are gone (a crash, a kill, a lost host): their
    /// sessions are over, and the history says so. Every live replica may do this; the store
    /// transaction lets one of them win per claim.
    pub async fn sweep(&self) {
        let stale = self
            .claims
            .filter(|_, c| c.ended.is_none() && !self.replicas.alive(&c.replica));
        for (cluster, claim) in stale {
            let lock = self.cluster_lock(&cluster);
            let _guard = lock.lock().await;
            let why = self.gone_reason(&claim.replica);
            let replicas = self.replicas.clone();
            let ended = self
                .end_in_store(
                    &cluster,
                    |c| c.session_id == claim.session_id && !replicas.alive(&c.replica),
                    &why,
                    vec![],
                    vec![],
                )
                .await;
            match ended {
                Ok(Attempt::Done(..)) => {
                    tracing::info!(
                        "session {} of gateway cluster {cluster} (node {}) ended: {why}",
                        claim.session_id,
                        claim.node_id
                    );
                    self.events.send(EventKind::SessionClosed, &cluster);
                }
                // Ended meanwhile (by another replica, or its gateway came back): nothing to do.
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "cannot end the session of cluster {cluster} held by a replica that is gone: {e}"
                ),
            }
        }
    }

    /// This replica's live session of a cluster.
    pub fn live(&self, cluster: &str) -> Option<LiveInfo> {
        let state = self.state();
        let conn = state.by_cluster.get(cluster)?;
        state.live.get(conn).cloned()
    }

    /// The revision of the claim of this replica's session on `conn`, as it last wrote it.
    pub fn claim_rev(&self, conn: ConnId) -> Option<Revision> {
        self.state().live.get(&conn).map(|i| i.claim_rev)
    }

    /// The connection of this replica's live session of a cluster.
    pub fn live_conn(&self, cluster: &str) -> Option<ConnId> {
        self.state().by_cluster.get(cluster).copied()
    }

    /// Sends `method` to the cluster's live session and waits for the answer: on this
    /// replica directly, through the store when another replica holds the session.
    pub async fn request(
        &self,
        cluster: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Answered, RequestError> {
        if self.registry.get(cluster).is_none() {
            return Err(RequestError::UnknownCluster(cluster.to_owned()));
        }
        if self.live_conn(cluster).is_none() {
            if let Some(claim) = self.live_claim(cluster) {
                if claim.replica != self.replicas.id() {
                    let started = Instant::now();
                    let reply = self
                        .forward
                        .ask(&claim.replica, cluster, method, params, timeout)
                        .await?;
                    return Ok(Answered {
                        node_id: reply.node_id,
                        term: reply.term,
                        outcome: reply.outcome,
                        rtt: started.elapsed(),
                    });
                }
            }
        }
        self.request_here(cluster, method, params, timeout).await
    }

    /// [`Hub::request`] on this replica's own session of the cluster.
    pub async fn request_here(
        &self,
        cluster: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Answered, RequestError> {
        let info = self
            .live(cluster)
            .ok_or_else(|| RequestError::NotConnected(cluster.to_owned()))?;
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        info.requests
            .try_send(Outgoing {
                method: method.to_owned(),
                params,
                reply: tx,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RequestError::Busy(cluster.to_owned()),
                mpsc::error::TrySendError::Closed(_) => {
                    RequestError::NotConnected(cluster.to_owned())
                }
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(RequestError::Timeout {
                cluster: cluster.to_owned(),
                after: timeout,
            }),
            Ok(Err(_)) => Err(RequestError::SessionClosed(cluster.to_owned())),
            Ok(Ok(reply)) => Ok(Answered {
                node_id: reply.node_id,
                term: reply.term,
                outcome: reply.outcome,
                rtt: started.elapsed(),
            }),
        }
    }

    /// The request forwarding between replicas.
    pub fn forward(&self) -> &Forward {
        &self.forward
    }
    pub fn pinned_cluster(&self, fingerprint: &str) -> Pinning {
        let mut ids = self.registry.pinned_by(fingerprint);
        match ids.len() {
            0 => Pinning::Unpinned,
            1 => Pinning::One(ids.remove(0)),
            _ => Pinning::Ambiguous(ids),
        }
    }

    /// Refuses certificates that another cluster than `id` pins. `field` names where each came
    /// from in the request (`certificates`, `add_certificates`).
    fn check_unpinned(
        &self,
        id: &str,
        field: &str,
        fingerprints: impl IntoIterator<Item = String>,
    ) -> Result<(), AdminError> {
        for (i, fp) in fingerprints.into_iter().enumerate() {
            if let Some(other) = self.registry.pinned_by(&fp).into_iter().find(|c| c != id) {
                return Err(AdminError::Pinned {
                    field: format!("{field}[{i}]"),
                    fingerprint: fp,
                    cluster: other,
                });
            }
        }
        Ok(())
    }

    /// Registers a cluster.
    pub async fn create_cluster(&self, rec: ClusterRecord) -> Result<ClusterRecord, AdminError> {
        let _pins = self.pins.lock().await;
        let lock = self.cluster_lock(&rec.cluster_id);
        let _guard = lock.lock().await;
        if self.registry.get(&rec.cluster_id).is_some() {
            return Err(AdminError::Exists(rec.cluster_id));
        }
        self.check_unpinned(
            &rec.cluster_id,
            "certificates",
            rec.certificates
                .iter()
                .map(|c| c.fingerprint_sha256.clone()),
        )?;
        if !self.registry.create(rec.clone()).await? {
            return Err(AdminError::Exists(rec.cluster_id));
        }
        tracing::info!(
            "registered gateway cluster {} ({}, {} certificate(s))",
            rec.cluster_id,
            rec.state,
            rec.certificates.len()
        );
        self.events.send(EventKind::ClusterChanged, &rec.cluster_id);
        Ok(rec)
    }

    /// Applies a change; closes the sessions it no longer allows (certificate removed, cluster
    /// disabled) before returning, each with its reason recorded — on this replica directly,
    /// on another through its claim, which the same transaction ends.
    pub async fn patch_cluster(
        &self,
        id: &str,
        patch: ClusterPatch,
    ) -> Result<ClusterRecord, AdminError> {
        if self.registry.get(id).is_none() {
            return Err(AdminError::NotFound(id.to_owned()));
        }
        // Only a change that pins certificates needs the registry-wide lock.
        let _pins = if patch.add.is_empty() {
            None
        } else {
            Some(self.pins.lock().await)
        };
        let lock = self.cluster_lock(id);
        let _guard = lock.lock().await;
        self.check_unpinned(
            id,
            "add_certificates",
            patch.add.iter().map(|c| c.fingerprint.clone()),
        )?;
        for _ in 0..HELLO_ATTEMPTS {
            let (mut rec, guard_rev) = self.fetch_cluster(id).await?;
            for (i, fp) in patch.remove.iter().enumerate() {
                if rec.certificate(fp).is_none() {
                    return Err(AdminError::BadRequest(format!(
                        "remove_certificates[{i}]: certificate {fp} is not registered for cluster {id}"
                    )));
                }
            }
            let now = now_rfc3339();
            for cert in &patch.add {
                if rec.certificate(&cert.fingerprint).is_none() {
                    rec.certificates.push(cert.to_record(&now));
                }
            }
            rec.certificates
                .retain(|c| !patch.remove.contains(&c.fingerprint_sha256));
            if let Some(name) = &patch.name {
                rec.name.clone_from(name);
            }
            let old_state = rec.state;
            if let Some(state) = patch.state {
                rec.state = state;
            }
            let disabling =
                rec.state == ClusterState::Disabled && old_state != ClusterState::Disabled;
            let why = if disabling {
                format!("cluster {id} was disabled")
            } else {
                let fp = patch.remove.first().cloned().unwrap_or_default();
                format!("certificate {fp} was removed from cluster {id}")
            };
            let attempt = self
                .rewrite_ending(
                    &rec,
                    guard_rev,
                    |c| disabling || patch.remove.contains(&c.certificate),
                    &why,
                )
                .await?;
            let (rev, ended) = match attempt {
                Attempt::Done(rev, ended) => (rev, ended),
                // The record or the claim changed meanwhile: read them again.
                Attempt::Conflict | Attempt::NotLive => continue,
            };
            self.registry.cache_put(rec.clone(), rev);
            if let Some(claim) = &ended {
                tracing::info!(
                    "closing session {} of gateway cluster {id} (node {}): {why}",
                    claim.session_id,
                    claim.node_id
                );
                self.close_here(id, &claim.session_id, CLOSE_POLICY, &why);
            }
            if old_state != rec.state {
                tracing::info!("gateway cluster {id} is now {}", rec.state);
            }
            if disabling {
                // Nothing will send its runs any more: their callers learn it now.
                self.runs.fail_cluster(id, &why).await;
            }
            self.events.send(EventKind::ClusterChanged, id);
            return Ok(rec);
        }
        Err(AdminError::Store(StoreError::Unavailable(format!(
            "cluster {id} kept changing while the change was written; try again"
        ))))
    }

    /// A cluster's record read from the store, with its revision.
    async fn fetch_cluster(&self, id: &str) -> Result<(ClusterRecord, Revision), AdminError> {
        let (rec_kv, _) = self.read_cluster(id).await?;
        let Some(kv) = rec_kv else {
            return Err(AdminError::NotFound(id.to_owned()));
        };
        let rec = serde_json::from_slice(&kv.value).map_err(|e| {
            AdminError::Store(StoreError::Corrupt(format!(
                "stored record {} is unreadable: {e}",
                kv.key
            )))
        })?;
        Ok((rec, kv.mod_revision))
    }

    /// Writes a changed cluster record read at `guard_rev`, ending its live session in the same
    /// transaction when `matches` says so.
    async fn rewrite_ending(
        &self,
        rec: &ClusterRecord,
        guard_rev: Revision,
        matches: impl Fn(&Claim) -> bool,
        why: &str,
    ) -> Result<Attempt, StoreError> {
        let id = &rec.cluster_id;
        self.end_in_store(
            id,
            matches,
            why,
            vec![Compare::mod_revision(
                registry::cluster_key(id),
                CompareOp::Equal,
                guard_rev,
            )],
            vec![Registry::put_op(rec)],
        )
        .await
    }

    /// Closes this replica's session `session_id` of `cluster`, if it holds it (its end is
    /// recorded already).
    fn close_here(&self, cluster: &str, session_id: &str, code: u16, why: &str) {
        let info = {
            let mut state = self.state();
            match state.by_cluster.get(cluster).copied() {
                Some(conn)
                    if state
                        .live
                        .get(&conn)
                        .is_some_and(|i| i.session_id == session_id) =>
                {
                    self.take_live(&mut state, conn)
                }
                _ => None,
            }
        };
        if let Some(info) = info {
            info.control.close(code, why.to_owned());
        }
    }

    /// The administrator resets the term of cluster `id` (from the client at `by`): the highest
    /// term is forgotten and stored so, the live session is closed, and an audit line says what,
    /// which cluster, the old and the new term, and from where. The next `hello` with a term
    /// sets the highest term again.
    pub async fn reset_term(&self, id: &str, by: &str) -> Result<TermResetDone, AdminError> {
        let lock = self.cluster_lock(id);
        let _guard = lock.lock().await;
        let why = format!("the term of cluster {id} was reset by the administrator");
        for _ in 0..HELLO_ATTEMPTS {
            let (mut rec, guard_rev) = self.fetch_cluster(id).await?;
            let old = rec.highest_term.take();
            let attempt = self.rewrite_ending(&rec, guard_rev, |_| true, &why).await?;
            let (rev, closing) = match attempt {
                Attempt::Done(rev, ended) => (rev, ended),
                Attempt::Conflict | Attempt::NotLive => continue,
            };
            self.registry.cache_put(rec, rev);
            if let Some(c) = &closing {
                self.close_here(id, &c.session_id, CLOSE_POLICY, &why);
            }
            let old_text = old
                .as_ref()
                .map_or_else(|| "none".to_owned(), |(t, n)| format!("{t} (node {n})"));
            tracing::warn!(
                audit = "reset-term",
                "audit: reset-term cluster={id} old_term={old_text} new_term=none by={by}{}",
                closing
                    .as_ref()
                    .map(|c| format!("; closed session {} of node {}", c.session_id, c.node_id))
                    .unwrap_or_default()
            );
            self.events.send(EventKind::ClusterChanged, id);
            return Ok(TermResetDone {
                old,
                closed_node: closing.map(|c| c.node_id),
            });
        }
        Err(AdminError::Store(StoreError::Unavailable(format!(
            "cluster {id} kept changing while its term was reset; try again"
        ))))
    }

    /// Deletes a cluster, its history, its claim and its session rules; closes its live
    /// session (on another replica: that replica closes it when its watch shows the claim
    /// gone).
    pub async fn delete_cluster(&self, id: &str) -> Result<(), AdminError> {
        if self.registry.get(id).is_none() {
            return Err(AdminError::NotFound(id.to_owned()));
        }
        let lock = self.cluster_lock(id);
        let _guard = lock.lock().await;
        if !self.registry.delete(id).await? {
            return Err(AdminError::NotFound(id.to_owned()));
        }
        let why = format!("cluster {id} was deleted");
        let local = {
            let mut state = self.state();
            state
                .by_cluster
                .get(id)
                .copied()
                .and_then(|c| self.take_live(&mut state, c))
        };
        if let Some(info) = local {
            info.control.close(CLOSE_POLICY, why.clone());
        }
        self.members().remove(id);
        self.runs.fail_cluster(id, &why).await;
        tracing::info!("deleted gateway cluster {id}");
        self.events.send(EventKind::ClusterChanged, id);
        Ok(())
    }

    /// Asks every live session of this replica to close (shutdown). Each task records its
    /// own end.
    pub fn close_all(&self, code: u16, reason: &str) {
        let state = self.state();
        for info in state.live.values() {
            info.control.close(code, reason);
        }
    }

    /// Why this replica's sessions end when it stops: the manager stops, or — with other
    /// replicas alive to take its gateways — only this replica does.
    pub fn shutdown_reason(&self) -> String {
        if self.other_replicas() {
            format!("manager replica {} shutting down", self.replicas.address())
        } else {
            registry::SHUTDOWN_REASON.to_owned()
        }
    }

    /// Whether other replicas are alive (as far as this one's copy knows).
    pub fn other_replicas(&self) -> bool {
        self.replicas.list(0).len() > 1
    }

    /// Number of live sessions on this replica.
    pub fn live_count(&self) -> usize {
        self.state().live.len()
    }
    /// The API view of a cluster: registration, live session (on whatever replica) and nodes.
    pub fn view(&self, rec: &ClusterRecord) -> Value {
        let mut live = self.live_claim(&rec.cluster_id);
        // This replica's own session: its nodes as they arrived (the claim's copy is written
        // behind them).
        if let (Some(claim), Some(here)) = (live.as_mut(), self.live(&rec.cluster_id)) {
            if claim.session_id == here.session_id {
                claim.nodes = here.nodes;
            }
        }
        let catalog = self.registry.catalog(&rec.cluster_id);
        let now = time::OffsetDateTime::now_utc();
        let certificates: Vec<Value> = rec
            .certificates
            .iter()
            .map(|c| {
                let expired = crate::model::parse_rfc3339(&c.not_after).is_some_and(|t| t < now);
                json!({
                    "fingerprint_sha256": c.fingerprint_sha256,
                    "subject": c.subject,
                    "not_after": c.not_after,
                    "expired": expired,
                    "added_at": c.added_at,
                    "last_presented_by": c.last_presented_by,
                    "last_presented_at": c.last_presented_at,
                })
            })
            .collect();
        let active = live.as_ref().map(|l| {
            json!({
                "node_id": l.node_id,
                "node_name": l.node_name,
                "term": l.term,
                "connected_at": l.connected_at,
                "remote_addr": l.remote_addr,
                "session_id": l.session_id,
                "version": l.version,
                "replica": self.replicas.describe(&l.replica),
            })
        });
        let (nodes, absent) = {
            let mut members = self.members();
            let mut m = members.get_mut(&rec.cluster_id).map(MembersCopy::view);
            // Each node as the gateway described it, with where it came back from when it did.
            let nodes: Vec<Value> = live
                .as_ref()
                .map(|l| {
                    l.nodes
                        .iter()
                        .map(|n| {
                            let mut v = autogate_proto::to_value(n);
                            if let Some(back) = m.as_ref().and_then(|m| m.returned(&n.node_id)) {
                                v["back"] = json!(back);
                            }
                            v
                        })
                        .collect()
                })
                .unwrap_or_default();
            let absent = m.as_mut().map(|m| m.absent()).unwrap_or_default();
            (nodes, absent)
        };
        json!({
            "cluster_id": rec.cluster_id,
            "name": rec.name,
            "state": rec.state,
            "connected": live.is_some(),
            "active": active,
            "nodes": nodes,
            "absent_nodes": absent,
            "certificates": certificates,
            "created_at": rec.created_at,
            "highest_term": rec.highest_term.as_ref().map(|(t, _)| *t),
            "service_count": catalog.as_ref().map_or(0, |c| c.total),
            "services_updated_at": catalog.as_ref().map(|c| c.updated_at.clone()),
        })
    }
}
