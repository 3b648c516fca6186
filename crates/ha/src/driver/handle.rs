//! The server's side of a running election: the leadership watch, the fence for its writes,
//! the operator's requests (pause, resume, resign, switchover), the status page's snapshot, and
//! shutdown. Everything here either reads the snapshot the machine loop publishes or sends the
//! loop a message; nothing waits on the machine itself.

use std::fmt;
use std::sync::Arc;

use autogate_store::{Store, Txn, TxnResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use super::fence::{fenced_txn, FencedError};
use super::{Input, Shared};
use crate::machine::{CrashProbe, Event, Leadership, NodeRecord, Role};

/// Why a switchover did not happen; the operator API reports it (409 for `Refused`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverError {
    #[error("switchover refused: {0}")]
    Refused(String),
    #[error("the HA driver has stopped")]
    Stopped,
}

/// One candidate as `GET /api/v1/ha/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// `GET /api/v1/ha/status`: serialized by the core node, deserialized by `autogate ha status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Time until a returning primary takes the active role back, on that primary (counting
    /// down) and on the active node that will hand over.
    #[serde(default)]
    pub preempt_in_ms: Option<u64>,
    /// On a primary: time left of the preemption hold its last switchover set.
    #[serde(default)]
    pub preempt_hold_ms: Option<u64>,
    /// Crash detection of the active node (standbys): armed once its address answered with its id.
    pub crash_probe: Option<CrashProbe>,
    /// Candidates in election order (the first one leads).
    pub candidates: Vec<CandidateStatus>,
}

/// The running election of one node; cheap to clone.
#[derive(Clone)]
pub struct HaHandle {
    pub(super) input: mpsc::UnboundedSender<Input>,
    pub(super) leadership: watch::Receiver<Leadership>,
    pub(super) shared: Arc<Shared>,
    pub(super) store: Arc<dyn Store>,
    /// Every task of this election (machine loop, store worker, keep-alive loop, watchers,
    /// probes); closed at start, so waiting on it ends once they all have.
    pub(super) tasks: TaskTracker,
}

impl fmt::Debug for HaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaHandle")
            .field("node_id", &self.shared.node_id)
            .field("leadership", &*self.leadership.borrow())
            .finish()
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

    /// This node's lease, while it has one: keys bound to it go when this node stops, or when
    /// a standby proves it dead and revokes it.
    pub fn lease(&self) -> Option<autogate_store::LeaseId> {
        let guard = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        guard.1.lease
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

    /// Requests to dial the manager at once, by number: the active node's link resets its
    /// back-off and dials when this changes, and reports a failure of an attempt it began
    /// after request `n` with [`manager_retry_failed`](Self::manager_retry_failed)`(n)`.
    pub fn manager_retries(&self) -> watch::Receiver<u64> {
        self.shared.manager_retry.subscribe()
    }

    /// An attempt to reach the manager begun after retry request `retry` failed.
    pub fn manager_retry_failed(&self, retry: u64) {
        self.send(Event::ManagerRetryFailed { retry });
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
            preempt_in_ms: snap.preempt_in_ms.map(|r| r.saturating_sub(elapsed)),
            preempt_hold_ms: snap.preempt_hold_ms.map(|r| r.saturating_sub(elapsed)),
            crash_probe: snap.crash_probe,
            candidates,
        }
    }

    fn send(&self, event: Event) {
        // After shutdown nobody listens, which is fine: there is nothing left to tell.
        let _ = self.input.send(Input::Event(event));
    }
}
