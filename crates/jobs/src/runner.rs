//! The runner role (`autogate runner`): registers itself under its own lease, watches only its
//! own assignments, claims each with its lease, runs it through the same engine as a core node,
//! and writes the outcome in chunks that are accepted only while its claim still holds.
//!
//! Losing the lease (cut off from etcd longer than the TTL) means the claims are gone and the
//! jobs are being dispatched again elsewhere: the runner cancels what it was running (its
//! results would be refused anyway), registers again under a new lease and carries on.
//!
//! Stopping (the token) drains: the registration says `draining` so no new work comes, running
//! jobs get `drain_grace` to finish, what is left is cancelled and handed back (a `released`
//! outcome) so the active node dispatches it again at once, and the lease is revoked last.
//!
//! A runner killed outright leaves its lease behind: its jobs would move only when the lease
//! expires. With a working directory ([`RunnerWorkdir`]) the runner names each lease in its
//! state file before registering with it, and a runner restarted there revokes the lease its
//! previous process left while that lease still holds the predecessor's registration: the
//! active node sees that runner gone at once and deals with its claimed jobs as with any lost
//! runner's (dispatched again when retryable, failed as lost otherwise).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use autogate_automation::Automation;
use autogate_ha::{ProcessState, StateFile};
use autogate_store::{
    Compare, CompareOp, EventKind, LeaseId, Store, StoreError, Txn, TxnOp, TxnOpResponse,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{
    now_rfc3339, Assignment, Claim, FailureKind, JobOutcome, Keys, RunnerRecord, CHUNK,
};

/// How a runner runs.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub cluster_id: String,
    pub node_id: String,
    /// Its stable name, published in its registration.
    pub name: Option<String>,
    pub host: String,
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    /// TTL of the registration and claims: how long after a crash or a cut its jobs move.
    pub lease_ttl: Duration,
    pub drain_grace: Duration,
    /// Counts into the node's registry when registered there.
    pub metrics: crate::metrics::RunnerMetrics,
    /// The working directory this process holds, if any.
    pub workdir: Option<RunnerWorkdir>,
}

/// A runner process's hold on its working directory (see [`autogate_ha::workdir`]).
#[derive(Debug, Clone)]
pub struct RunnerWorkdir {
    /// Where each lease is named before the runner registers with it.
    pub state_file: StateFile,
    /// What the previous runner process of this directory recorded.
    pub previous: Option<ProcessState>,
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

enum Msg {
    /// An assignment appeared (or was found at start).
    Assigned(Assignment, i64),
    /// A job task ended.
    Done { job: String },
}

struct Running {
    cancel: CancellationToken,
    attempt: u32,
    claim: Vec<u8>,
}

/// Closes a tracker when dropped, so that whoever waits on it is released on every way out.
struct CloseOnDrop(TaskTracker);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs until `token` is cancelled, then drains; returns once the runner's tasks (the
/// assignment watch, one task per job) have ended. `tracker` (the process's) holds a task that
/// ends with them.
pub async fn run(
    store: Arc<dyn Store>,
    automation: Automation,
    opts: RunnerOptions,
    token: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), RunnerError> {
    // The runner's own tracker, so that stopping waits for exactly its tasks.
    let tasks = TaskTracker::new();
    let closer = CloseOnDrop(tasks.clone());
    let all_done = tasks.clone();
    tracker.spawn(async move { all_done.wait().await });
    let keys = Keys::new(&opts.cluster_id);
    let started_at = now_rfc3339();
    if let Some(previous) = opts.workdir.as_ref().and_then(|w| w.previous.as_ref()) {
        if let Err(e) = revoke_predecessor(&*store, &keys, &opts, previous).await {
            tracing::warn!("cannot clear the lease of this node's previous process: {e}");
        }
    }
    let mut lease = register(&*store, &keys, &opts, &started_at, 0, false).await?;
    tracing::info!(
        node_id = %opts.node_id,
        capacity = opts.capacity,
        "runner registered in cluster {}",
        opts.cluster_id
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut watch_token = token.child_token();
    spawn_watch(
        store.clone(),
        keys.clone(),
        opts.node_id.clone(),
        tx.clone(),
        watch_token.clone(),
        &tasks,
    )
    .await?;
    let mut running: HashMap<String, Running> = HashMap::new();
    // Assignments that arrived while every slot was taken: the dispatcher frees a slot when it
    // sees a result, which can be before this loop has heard that the job's task ended, so an
    // assignment may come a moment early. It is claimed when a slot frees, not dropped.
    let mut early: std::collections::VecDeque<(Assignment, i64)> =
        std::collections::VecDeque::new();
    let mut keep_alive = tokio::time::interval(opts.lease_ttl / 3);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ack = Instant::now();
    let mut dirty = false;
    let mut publish = tokio::time::interval(Duration::from_millis(200));

    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = keep_alive.tick() => {
                match store.keep_alive(lease).await {
                    Ok(_) => last_ack = Instant::now(),
                    Err(StoreError::LeaseNotFound(_)) => {
                        tracing::warn!("runner lease expired: claims are gone and the jobs are being dispatched again; cancelling {} running job(s) and registering again", running.len());
                        for (_, r) in running.drain() {
                            r.cancel.cancel();
                        }
                        watch_token.cancel();
                        lease = match register(&*store, &keys, &opts, &started_at, 0, false).await {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::warn!("registering again failed: {e}");
                                continue;
                            }
                        };
                        last_ack = Instant::now();
                        watch_token = token.child_token();
                        if let Err(e) = spawn_watch(store.clone(), keys.clone(), opts.node_id.clone(), tx.clone(), watch_token.clone(), &tasks).await {
                            tracing::warn!("watching assignments failed: {e}");
                        }
                    }
                    Err(e) => {
                        // Past the TTL without an answer the lease is as good as gone: stop
                        // the jobs now rather than run them twice.
                        if last_ack.elapsed() >= opts.lease_ttl && !running.is_empty() {
                            tracing::warn!("store unreachable for {:?} ({e}): cancelling {} running job(s), they will be dispatched again", last_ack.elapsed(), running.len());
                            for (_, r) in running.drain() {
                                r.cancel.cancel();
                            }
                            dirty = true;
                        }
                    }
                }
            }
            _ = publish.tick(), if dirty => {
                dirty = false;
                if let Err(e) = put_record(&*store, &keys, &opts, &started_at, running.len(), false, lease).await {
                    tracing::debug!("runner record update failed: {e}");
                    dirty = true;
                }
            }
            Some(msg) = rx.recv() => match msg {
                Msg::Assigned(a, mod_rev) => {
                    if running.contains_key(&a.job) {
                        continue;
                    }
                    if running.len() as u32 >= opts.capacity.max(1) {
                        early.push_back((a, mod_rev));
                        continue;
                    }
                    let claim = serde_json::to_vec(&Claim { runner: opts.node_id.clone(), attempt: a.attempt }).unwrap_or_default();
                    let assign_key = keys.assignment(&opts.node_id, &a.job);
                    let claim_key = keys.claim(&a.job);
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(assign_key, CompareOp::Equal, mod_rev),
                            Compare::missing(claim_key.clone()),
                        ])
                        .and_then([TxnOp::put_with_lease(claim_key, claim.clone(), lease)]);
                    match store.txn(txn).await {
                        Ok(r) if r.succeeded => {}
                        Ok(_) => continue, // moved, or claimed already
                        Err(e) => {
                            tracing::warn!(job = %a.job, "claim failed: {e}");
                            continue;
                        }
                    }
                    tracing::info!(job = %a.job, attempt = a.attempt, service = %a.service, "job claimed");
                    // Not a child of the root token: stopping the runner drains, it does not
                    // kill running jobs (they get the drain grace first).
                    let cancel = CancellationToken::new();
                    running.insert(a.job.clone(), Running { cancel: cancel.clone(), attempt: a.attempt, claim: claim.clone() });
                    opts.metrics.set_running(running.len());
                    dirty = true;
                    let (store, keys, automation, tx, metrics) = (store.clone(), keys.clone(), automation.clone(), tx.clone(), opts.metrics.clone());
                    tasks.spawn(async move {
                        let outcome = match automation.run(&a.request, &cancel).await {
                            Ok(result) => JobOutcome::Completed { result },
                            Err(e) => JobOutcome::Error { kind: FailureKind::ServiceFailed, message: e.to_string() },
                        };
                        metrics.ran(match (&outcome, cancel.is_cancelled()) {
                            (_, true) => "cancelled",
                            (JobOutcome::Completed { .. }, false) => "completed",
                            _ => "failed",
                        });
                        if !cancel.is_cancelled() {
                            if let Err(e) = write_outcome(&*store, &keys, &a.job, a.attempt, &claim, &outcome).await {
                                tracing::warn!(job = %a.job, "result not written: {e}");
                            }
                        }
                        let _ = tx.send(Msg::Done { job: a.job });
                    });
                }
                Msg::Done { job } => {
                    running.remove(&job);
                    opts.metrics.set_running(running.len());
                    dirty = true;
                    if let Some((a, mod_rev)) = early.pop_front() {
                        let _ = tx.send(Msg::Assigned(a, mod_rev));
                    }
                }
            },
        }
    }

    // Drain: no new work, let running jobs finish, hand back the rest, then leave.
    watch_token.cancel();
    let _ = put_record(
        &*store,
        &keys,
        &opts,
        &started_at,
        running.len(),
        true,
        lease,
    )
    .await;
    if !running.is_empty() {
        tracing::info!(
            "draining: waiting up to {:?} for {} running job(s)",
            opts.drain_grace,
            running.len()
        );
    }
    let deadline = Instant::now() + opts.drain_grace;
    while !running.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            // The claims of the running jobs live as long as the lease: without keep-alives a
            // drain grace longer than the TTL would lose them, and the jobs with them.
            _ = keep_alive.tick() => {
                if let Err(e) = store.keep_alive(lease).await {
                    tracing::debug!("keep-alive while draining failed: {e}");
                }
            }
            m = rx.recv() => match m {
                Some(Msg::Done { job }) => {
                    running.remove(&job);
                }
                Some(Msg::Assigned(..)) => {}
                None => break,
            },
        }
    }
    for (job, r) in running.drain() {
        r.cancel.cancel();
        let released = JobOutcome::Released;
        match write_outcome(&*store, &keys, &job, r.attempt, &r.claim, &released).await {
            Ok(()) => tracing::info!(job = %job, "job handed back for dispatch elsewhere"),
            Err(e) => {
                tracing::warn!(job = %job, "could not hand the job back ({e}); it moves when the lease ends")
            }
        }
    }
    let _ = store.revoke(lease).await;
    // The jobs left were cancelled above: their tasks end once their processes are gone.
    drop(closer);
    tasks.wait().await;
    // The role says it stopped, with its signal and timings; this is the loop's own end.
    tracing::debug!("runner loop stopped");
    Ok(())
}

async fn register(
    store: &dyn Store,
    keys: &Keys,
    opts: &RunnerOptions,
    started_at: &str,
    running: usize,
    draining: bool,
) -> Result<LeaseId, StoreError> {
    let lease = store.grant(opts.lease_ttl).await?;
    // Named in the state file before anything is bound to it, so that a successor of a
    // crashed process finds it.
    if let Some(workdir) = &opts.workdir {
        workdir.state_file.record_lease(lease).await;
    }
    put_record(store, keys, opts, started_at, running, draining, lease).await?;
    Ok(lease)
}

/// Revokes the lease this runner's previous process (same working directory, so gone: the
/// directory's lock proves it) left, if it still holds that process's registration. The
/// claims go with it, and the active node sees the runner leave now instead of after the TTL.
/// Returns the lease revoked, if any.
async fn revoke_predecessor(
    store: &dyn Store,
    keys: &Keys,
    opts: &RunnerOptions,
    previous: &ProcessState,
) -> Result<Option<LeaseId>, StoreError> {
    let Some(lease) = previous.lease_to_clear(&opts.node_id, &opts.cluster_id) else {
        return Ok(None);
    };
    let registered = store
        .get(&keys.runner(&previous.node_id))
        .await?
        .is_some_and(|kv| kv.lease == lease);
    if !registered {
        tracing::debug!(
            "previous process of this runner (node id {}, lease {lease:x}) left nothing in the store",
            previous.node_id
        );
        return Ok(None);
    }
    let claims = store
        .list(&keys.claims())
        .await?
        .iter()
        .filter(|kv| kv.lease == lease)
        .count();
    match store.revoke(lease).await {
        Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    tracing::warn!(
        "revoked the lease of this node's previous process (node id {}, lease {lease:x}): it ended without handing back its {claims} claimed job(s), which move now",
        previous.node_id
    );
    Ok(Some(lease))
}

async fn put_record(
    store: &dyn Store,
    keys: &Keys,
    opts: &RunnerOptions,
    started_at: &str,
    running: usize,
    draining: bool,
    lease: LeaseId,
) -> Result<(), StoreError> {
    let rec = RunnerRecord {
        node_id: opts.node_id.clone(),
        name: opts.name.clone(),
        host: opts.host.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        capacity: opts.capacity,
        labels: opts.labels.clone(),
        running: u32::try_from(running).unwrap_or(u32::MAX),
        draining,
        started_at: started_at.to_owned(),
        last_seen: now_rfc3339(),
    };
    let value = serde_json::to_vec(&rec).unwrap_or_default();
    store
        .put(&keys.runner(&opts.node_id), value, Some(lease))
        .await
        .map(|_| ())
}

/// Lists this runner's assignments and then watches them from the same revision.
async fn spawn_watch(
    store: Arc<dyn Store>,
    keys: Keys,
    node_id: String,
    tx: mpsc::UnboundedSender<Msg>,
    token: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), StoreError> {
    let prefix = keys.assignments_of(&node_id);
    let snap = store
        .txn(Txn::new().and_then([TxnOp::get_prefix(prefix.clone())]))
        .await?;
    if let Some(TxnOpResponse::Get(kvs)) = snap.responses.first() {
        for kv in kvs {
            if let Ok(a) = serde_json::from_slice::<Assignment>(&kv.value) {
                let _ = tx.send(Msg::Assigned(a, kv.mod_revision));
            }
        }
    }
    let mut stream = store.watch(&prefix, Some(snap.revision + 1)).await?;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) if ev.kind == EventKind::Put => {
                        if let Ok(a) = serde_json::from_slice::<Assignment>(&ev.kv.value) {
                            let _ = tx.send(Msg::Assigned(a, ev.kv.mod_revision));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("assignment watch failed: {e}");
                        return;
                    }
                    None => return,
                }
            }
        }
    });
    Ok(())
}

/// Writes an outcome in chunks; each chunk commits only while this attempt's claim holds, so a
/// runner whose claim vanished (lease ended, job moved) cannot write over a newer attempt.
pub(crate) async fn write_outcome(
    store: &dyn Store,
    keys: &Keys,
    job: &str,
    attempt: u32,
    claim: &[u8],
    outcome: &JobOutcome,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(outcome).map_err(|e| e.to_string())?;
    let parts: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(CHUNK).collect()
    };
    let total = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let txn = Txn::new()
            .when([Compare::value(
                keys.claim(job),
                CompareOp::Equal,
                claim.to_vec(),
            )])
            .and_then([TxnOp::put(
                keys.result_part(job, attempt, i, total),
                part.to_vec(),
            )]);
        let r = store.txn(txn).await.map_err(|e| e.to_string())?;
        if !r.succeeded {
            return Err(format!(
                "the claim on attempt {attempt} no longer holds (the job moved); outcome discarded"
            ));
        }
    }
    Ok(())
}
