//! The hub: every live gateway session, the session rules ([`SessionTable`]), and the
//! operations that change them — a `hello`, a session ending, an administrative change
//! (certificate removed, cluster disabled or deleted), a request sent to a cluster.
//!
//! # Ordering
//!
//! Everything that changes the sessions of one cluster runs under that cluster's async lock
//! (`cluster_lock`), and writes the session history *before* releasing it. A `hello` that
//! replaces a live session writes, in one store transaction, the old session's
//! `disconnected_at` and the new one's `connected_at` from the same clock reading, so the
//! history never shows two overlapping live sessions. The session table and the map of live
//! sessions sit behind a plain mutex that is never held across an `.await`.
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
//! (replaced, certificate removed, …) the task's call finds nothing to do, so each session end
//! is recorded exactly once, by whoever took the session out of the table.
//!
//! # Requests and runs
//!
//! Requests sent to gateways (`ping`, `services.list`) wait for their answers in the hub, not
//! in the session task, under numeric ids unique across the cluster's sessions (and across
//! restarts of the manager: the counter starts from the clock); they fail when their session
//! ends. Service runs are not requests of a session: they belong to the cluster, live in
//! [`Runs`] from acceptance to answer, and are sent by whichever session is live, under their
//! run id (see [`crate::runs`]). An answer to an id nobody waits for any more (a late
//! duplicate) is ignored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use autogate_proto::{
    ConnId, Departed, Hello, HelloDecision, NodeInfo, Role, RpcError, SessionTable, NOT_ALLOWED,
    SESSION_REFUSED,
};
use autogate_store::{StoreError, Txn, TxnOp};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::members::{Absence, ForgetError, Members};
use crate::metrics::{ManagerMetrics, RefusalCategory};
use crate::model::{format_rfc3339, now_rfc3339, ClusterRecord, ClusterState, SessionRecord};
use crate::registry::Registry;
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

/// What the hub knows about a live session.
#[derive(Debug, Clone)]
pub struct LiveInfo {
    /// Its cluster.
    pub cluster_id: String,
    /// The manager's id of the session.
    pub session_id: String,
    /// The node holding it.
    pub node_id: String,
    /// Its stable name, when it sent one.
    pub node_name: Option<String>,
    /// Its term.
    pub term: Option<u64>,
    /// The gateway's version.
    pub version: String,
    /// When it was accepted.
    pub connected_at: String,
    /// Where it comes from.
    pub remote_addr: String,
    /// The cluster's nodes, from `hello` and `nodes.update`.
    pub nodes: Vec<NodeInfo>,
    /// The cluster runs services as jobs (its `hello` said so).
    pub distributed_execution: bool,
    history_key: String,
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

#[derive(Debug, Default)]
struct HubState {
    table: SessionTable,
    live: HashMap<ConnId, LiveInfo>,
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
    /// Per cluster: the nodes that left and the ones that came back ([`Members`]).
    members: Mutex<HashMap<String, Members>>,
    /// Service runs, from acceptance to answer ([`Runs`]).
    runs: Runs,
    /// Serialises the changes that pin certificates (taken before any cluster lock).
    pins: tokio::sync::Mutex<()>,
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
    /// A hub over the registry; restores each cluster's highest term into the session rules.
    pub fn new(registry: Registry, metrics: ManagerMetrics, runs: Runs) -> Hub {
        let mut table = SessionTable::new();
        for rec in registry.list() {
            if let Some((term, node)) = &rec.highest_term {
                table.restore_highest_term(&rec.cluster_id, *term, node);
            }
        }
        Hub {
            registry,
            metrics,
            state: Mutex::new(HubState {
                table,
                live: HashMap::new(),
            }),
            locks: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            events: Events::new(),
            pending: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
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

    fn members(&self) -> MutexGuard<'_, HashMap<String, Members>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A membership of `cluster` arrived (with `hello` or `nodes.update`): records who left and
    /// who came back, and tells the page when that changed.
    fn observe_members(&self, cluster: &str, nodes: &[NodeInfo], departed: &[Departed]) {
        let changed = self
            .members()
            .entry(cluster.to_owned())
            .or_default()
            .observe(nodes, departed, &now_rfc3339());
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
    fn take_live(&self, state: &mut HubState, conn: ConnId) -> Option<LiveInfo> {
        let info = state.live.remove(&conn)?;
        self.metrics.session_closed();
        Some(info)
    }

    fn closed_record(info: &LiveInfo, at: &str, reason: &str) -> TxnOp {
        Registry::session_op(
            &info.history_key,
            &SessionRecord {
                session_id: info.session_id.clone(),
                node_id: info.node_id.clone(),
                node_name: info.node_name.clone(),
                term: info.term,
                remote_addr: info.remote_addr.clone(),
                connected_at: info.connected_at.clone(),
                disconnected_at: Some(at.to_owned()),
                close_reason: Some(reason.to_owned()),
            },
        )
    }

    /// Decides a `hello` received on `conn` from a peer that presented `cert`. On acceptance the
    /// session is live (and recorded) when this returns; `requests` and `control` reach its task.
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
        // Checked before taking the cluster lock too, so hellos naming made-up clusters never
        // create lock entries (any certificate passes TLS; the cluster id is the peer's word).
        if self.registry.get(cluster).is_none() {
            return Err(refuse(
                NOT_ALLOWED,
                format!("cluster {cluster} is not registered"),
                RefusalCategory::UnknownCluster,
            ));
        }
        let lock = self.cluster_lock(cluster);
        let _guard = lock.lock().await;
        let Some(mut rec) = self.registry.get(cluster) else {
            return Err(refuse(
                NOT_ALLOWED,
                format!("cluster {cluster} is not registered"),
                RefusalCategory::UnknownCluster,
            ));
        };
        if rec.state == ClusterState::Disabled {
            return Err(refuse(
                NOT_ALLOWED,
                format!("cluster {cluster} is disabled"),
                RefusalCategory::ClusterDisabled,
            ));
        }
        let fp = &cert.fingerprint;
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

        let now = now_rfc3339();
        let session_id = uuid::Uuid::now_v7().to_string();
        let history_key = self.registry.new_session_key(cluster);
        let (replaced, ops) = {
            let mut state = self.state();
            let decision =
                state
                    .table
                    .on_hello(cluster, &hello.node_id, hello.term, conn, SystemTime::now());
            let replace = match decision {
                HelloDecision::Refuse { reason } => {
                    return Err(refuse(
                        SESSION_REFUSED,
                        reason,
                        RefusalCategory::SessionRule,
                    ));
                }
                HelloDecision::Accept { replace } => replace,
            };
            state.table.set_certificate(conn, fp);
            let mut ops = Vec::new();
            let mut replaced = None;
            if let Some((old, why)) = replace {
                if let Some(old_info) = self.take_live(&mut state, old) {
                    ops.push(Self::closed_record(&old_info, &now, &why));
                    replaced = Some((old_info, why));
                }
            }
            rec.highest_term = state
                .table
                .highest_term(cluster)
                .map(|(t, n)| (t, n.to_owned()));
            (replaced, ops)
        };
        let mut ops = ops;
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
        ops.push(Registry::session_op(
            &history_key,
            &SessionRecord {
                session_id: session_id.clone(),
                node_id: hello.node_id.clone(),
                node_name: node_name.clone(),
                term: hello.term,
                remote_addr: remote.to_string(),
                connected_at: now.clone(),
                disconnected_at: None,
                close_reason: None,
            },
        ));
        ops.push(Registry::put_op(&rec));

        // The replaced session is out of the table already: close it whatever the store says.
        if let Some((old, why)) = &replaced {
            old.control.close(CLOSE_NORMAL, why.clone());
        }
        if let Err(e) = self.registry.store().txn(Txn::new().and_then(ops)).await {
            let mut state = self.state();
            state.table.on_closed(conn);
            return Err(refuse(
                autogate_proto::INTERNAL_ERROR,
                format!("the manager cannot record the session: {e}"),
                RefusalCategory::StoreError,
            ));
        }
        self.registry.cache_put(rec);
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
        self.observe_members(cluster, &nodes, &hello.departed);
        self.state().live.insert(
            conn,
            LiveInfo {
                cluster_id: cluster.to_owned(),
                session_id: session_id.clone(),
                node_id: hello.node_id.clone(),
                node_name,
                term: hello.term,
                version: hello.version.clone(),
                connected_at: now,
                remote_addr: remote.to_string(),
                nodes,
                distributed_execution: hello.distributed_execution,
                history_key,
                control,
                requests,
            },
        );
        let kind = SessionKind {
            dedup: hello.run_dedup,
            distributed: hello.distributed_execution,
        };
        self.runs.session_started(cluster, kind).await;
        self.metrics.session_opened();
        self.events.send(EventKind::SessionOpened, cluster);
        self.registry.after_insert(cluster).await;
        Ok(Accepted {
            session_id,
            replaced: replaced.map(|(old, why)| (old.node_id, why)),
        })
    }

    /// A session task ended with `reason`. Records it unless the hub closed it first. `detail`
    /// (the library's error behind a lost connection) goes to the log only: the history keeps
    /// the operator's words. `left` says whether the session's node left the membership with
    /// it, and how (`None` when its fate is unknown: the next session will tell).
    pub async fn closed(
        &self,
        conn: ConnId,
        reason: &str,
        detail: Option<&str>,
        left: Option<Absence>,
    ) {
        let Some(cluster) = self.state().table.cluster_of(conn).map(str::to_owned) else {
            return;
        };
        let lock = self.cluster_lock(&cluster);
        let _guard = lock.lock().await;
        let info = {
            let mut state = self.state();
            if state.table.on_closed(conn).is_none() {
                return;
            }
            self.take_live(&mut state, conn)
        };
        let Some(info) = info else { return };
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        tracing::info!(
            "session {} of gateway cluster {cluster} (node {}) closed: {reason}{detail}",
            info.session_id,
            info.node_id
        );
        let now = now_rfc3339();
        let op = Self::closed_record(&info, &now, reason);
        if let Err(e) = self.registry.store().txn(Txn::new().and_then([op])).await {
            tracing::warn!("cannot record the end of session {}: {e}", info.session_id);
        }
        if let Some(left) = left {
            if let Some(m) = self.members().get_mut(&cluster) {
                m.session_ended(&info.node_id, left, reason, &now);
            }
        }
        self.events.send(EventKind::SessionClosed, &cluster);
    }

    /// A `nodes.update` arrived on a live session.
    pub fn nodes_update(&self, conn: ConnId, nodes: Vec<NodeInfo>, departed: &[Departed]) {
        let cluster = self.state().live.get_mut(&conn).map(|info| {
            info.nodes.clone_from(&nodes);
            info.cluster_id.clone()
        });
        if let Some(cluster) = cluster {
            self.observe_members(&cluster, &nodes, departed);
            self.events.send(EventKind::NodesChanged, &cluster);
        }
    }

    /// The live session of a cluster.
    pub fn live(&self, cluster: &str) -> Option<LiveInfo> {
        let state = self.state();
        let conn = state.table.live(cluster)?.conn;
        state.live.get(&conn).cloned()
    }

    /// The connection of the cluster's live session.
    pub fn live_conn(&self, cluster: &str) -> Option<ConnId> {
        self.state().table.live(cluster).map(|l| l.conn)
    }

    /// Sends `method` to the cluster's live session and waits for the answer.
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

    /// Which cluster a client certificate may open a session for.
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
        // A cluster registered again after a delete starts with fresh session rules.
        self.state().table.forget_cluster(&rec.cluster_id);
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
    /// disabled) before returning, each with its reason recorded.
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
        let mut rec = self
            .registry
            .get(id)
            .ok_or_else(|| AdminError::NotFound(id.to_owned()))?;
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

        let mut closing: Vec<(LiveInfo, String)> = Vec::new();
        {
            let mut state = self.state();
            if rec.state == ClusterState::Disabled && old_state != ClusterState::Disabled {
                for conn in state.table.on_cluster_disabled(id) {
                    if let Some(info) = self.take_live(&mut state, conn) {
                        closing.push((info, format!("cluster {id} was disabled")));
                    }
                }
            }
            for fp in &patch.remove {
                for conn in state.table.on_certificate_removed(id, fp) {
                    if let Some(info) = self.take_live(&mut state, conn) {
                        closing.push((
                            info,
                            format!("certificate {fp} was removed from cluster {id}"),
                        ));
                    }
                }
            }
        }
        let mut ops = vec![Registry::put_op(&rec)];
        ops.extend(
            closing
                .iter()
                .map(|(info, why)| Self::closed_record(info, &now, why)),
        );
        for (info, why) in &closing {
            info.control.close(CLOSE_POLICY, why.clone());
            tracing::info!(
                "closing session {} of gateway cluster {id} (node {}): {why}",
                info.session_id,
                info.node_id
            );
        }
        self.registry.store().txn(Txn::new().and_then(ops)).await?;
        if old_state != rec.state {
            tracing::info!("gateway cluster {id} is now {}", rec.state);
        }
        if rec.state == ClusterState::Disabled && old_state != ClusterState::Disabled {
            // Nothing will send its runs any more: their callers learn it now.
            self.runs
                .fail_cluster(id, &format!("cluster {id} was disabled"))
                .await;
        }
        self.registry.cache_put(rec.clone());
        self.events.send(EventKind::ClusterChanged, id);
        Ok(rec)
    }

    /// The administrator resets the term of cluster `id` (from the client at `by`): the highest
    /// term is forgotten and stored so, the live session is closed, and an audit line says what,
    /// which cluster, the old and the new term, and from where. The next `hello` with a term
    /// sets the highest term again.
    pub async fn reset_term(&self, id: &str, by: &str) -> Result<TermResetDone, AdminError> {
        let lock = self.cluster_lock(id);
        let _guard = lock.lock().await;
        let mut rec = self
            .registry
            .get(id)
            .ok_or_else(|| AdminError::NotFound(id.to_owned()))?;
        let why = format!("the term of cluster {id} was reset by the administrator");
        let (reset, closing) = {
            let mut state = self.state();
            let reset = state.table.reset_term(id);
            let closing = reset.closed.and_then(|c| self.take_live(&mut state, c));
            (reset, closing)
        };
        // The table may not know the term yet (no hello since a restart): the store does.
        let old = reset.old.or_else(|| rec.highest_term.clone());
        rec.highest_term = None;
        let now = now_rfc3339();
        let mut ops = vec![Registry::put_op(&rec)];
        if let Some(info) = &closing {
            ops.push(Self::closed_record(info, &now, &why));
            info.control.close(CLOSE_POLICY, why.clone());
        }
        self.registry.store().txn(Txn::new().and_then(ops)).await?;
        self.registry.cache_put(rec);
        let old_text = old
            .as_ref()
            .map_or_else(|| "none".to_owned(), |(t, n)| format!("{t} (node {n})"));
        tracing::warn!(
            audit = "reset-term",
            "audit: reset-term cluster={id} old_term={old_text} new_term=none by={by}{}",
            closing
                .as_ref()
                .map(|i| format!("; closed session {} of node {}", i.session_id, i.node_id))
                .unwrap_or_default()
        );
        self.events.send(EventKind::ClusterChanged, id);
        Ok(TermResetDone {
            old,
            closed_node: closing.map(|i| i.node_id),
        })
    }

    /// Deletes a cluster, its history and its session rules; closes its live session.
    pub async fn delete_cluster(&self, id: &str) -> Result<(), AdminError> {
        if self.registry.get(id).is_none() {
            return Err(AdminError::NotFound(id.to_owned()));
        }
        let lock = self.cluster_lock(id);
        let _guard = lock.lock().await;
        if self.registry.get(id).is_none() {
            return Err(AdminError::NotFound(id.to_owned()));
        }
        let closing: Vec<LiveInfo> = {
            let mut state = self.state();
            let conns = state.table.forget_cluster(id);
            conns
                .into_iter()
                .filter_map(|c| self.take_live(&mut state, c))
                .collect()
        };
        let why = format!("cluster {id} was deleted");
        for info in &closing {
            info.control.close(CLOSE_POLICY, why.clone());
        }
        if !self.registry.delete(id).await? {
            return Err(AdminError::NotFound(id.to_owned()));
        }
        self.members().remove(id);
        self.runs.fail_cluster(id, &why).await;
        tracing::info!("deleted gateway cluster {id}");
        self.events.send(EventKind::ClusterChanged, id);
        Ok(())
    }

    /// Asks every live session to close (shutdown). Each task records its own end.
    pub fn close_all(&self, code: u16, reason: &str) {
        let state = self.state();
        for info in state.live.values() {
            info.control.close(code, reason);
        }
    }

    /// Number of live sessions.
    pub fn live_count(&self) -> usize {
        self.state().live.len()
    }

    /// The API view of a cluster: registration, live session and nodes.
    pub fn view(&self, rec: &ClusterRecord) -> Value {
        let live = self.live(&rec.cluster_id);
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
            })
        });
        let (nodes, absent) = {
            let mut members = self.members();
            let m = members.get_mut(&rec.cluster_id);
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
            let absent = m.map(Members::absent).unwrap_or_default();
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
