//! Service runs the manager accepted: each has an id, a record in the manager's store from the
//! moment it is accepted until it is answered (and for the retention window after), and is
//! sent to its cluster's sessions until one answers it.
//!
//! # Life of a run
//!
//! `POST …/services/{name}/run` [`accept`](Runs::accept)s a run: its record is written
//! (`queued`) before anything is sent, so a manager restart loses neither it nor, later, its
//! answer. The run id is the JSON-RPC id of every `service.run` it is sent as, so an answer
//! names its run whichever session, node or manager process it comes through. The cluster's
//! live session [`take`](Runs::take_unsent)s what it has not sent yet — at once when a run is
//! accepted, and all of it when a session starts — and an answer [`settle`](Runs::settle)s the
//! run: the record is rewritten `answered` with the answer, then every caller waiting for it is
//! told. A late or repeated answer finds nothing to settle and is dropped.
//!
//! # Through a gap
//!
//! A cluster without a live session (a fail-over in progress) keeps its runs queued, each for
//! at most `[manager] run_queue_timeout`, and at most `run_queue_size` at once; a run still
//! unsent at its deadline is withdrawn (its record deleted: it never ran) and refused with a
//! 503 naming the limit. When a session ends with runs sent on it and unanswered, what happens
//! depends on what its gateway said in `hello`:
//!
//! - `run_dedup` (it keeps a record of each run id and answers a repeat from it): the runs go
//!   back to unsent and the next session sends them again, with the same ids — at-least-once
//!   sending, exactly-once execution;
//! - distributed execution without it: the runs are jobs that outlive the session, and their
//!   answers come on a later session; they are not sent again (that could run them twice);
//! - neither: the run died with the session; it is answered "the session closed before
//!   answering; it may have run".
//!
//! # Across replicas
//!
//! Every replica keeps a copy of every open run, fed by the store watch ([`Runs::apply`]): a
//! run accepted by replica X reaches the replica Y holding its cluster's session that way, and
//! the answer Y writes reaches X's caller the same way. Before Y sends runs it marks them sent
//! in one store transaction that also compares the revision of its session's claim and of each
//! run's record: a replica whose session was replaced meanwhile, or a run someone else changed,
//! makes it fail, and nothing is sent. So a run is sent by one session at a time, and a run a
//! dead replica sent is known as sent by the replica that takes the cluster's next session
//! (which waits for its copy to reach its claim's revision before it decides, see
//! [`crate::hub`]).
//!
//! # Concurrency
//!
//! The table sits behind a plain mutex never held across an `.await`; store writes happen
//! outside it. Every write of a record compares the revision the table holds for it, so two
//! replicas (or a replica and an answer) never both settle, withdraw or send one run: the loser
//! reads the record again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use autogate_proto::{ConnId, RpcError};
use autogate_store::{
    Compare, CompareOp, EventKind, Revision, Store, StoreError, Txn, TxnOp, TxnOpResponse,
    WatchEvent, TXN_BYTES, TXN_OPS,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::model::{format_rfc3339, now_rfc3339};

/// Run records: `/manager/runs/<cluster>/<run id>`.
pub const RUNS: &str = "/manager/runs/";
/// Idempotency keys: `/manager/run-keys/<cluster>/<sha-256 of the key>` → run id.
const KEYS: &str = "/manager/run-keys/";
/// "Sent, on no session": a job of an ended session whose answer comes on a later one. Session
/// ids start at 1.
const NO_SESSION: ConnId = ConnId(0);
/// Longest `Idempotency-Key` accepted (the draft sets no limit; a UUID is 36).
pub const MAX_KEY_LEN: usize = 255;

/// The limits of `[manager]` that shape a run's wait.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// How long a run may wait for a session before it is refused.
    pub queue_timeout: Duration,
    /// Runs of one cluster that may wait unsent at once.
    pub queue_size: usize,
    /// How long a record is kept after its answer (and an unanswered one after acceptance).
    pub retention: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            queue_timeout: Duration::from_secs(30),
            queue_size: 1000,
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, not sent on any session yet (or to be sent again).
    Queued,
    /// Sent on a session, no answer yet.
    Sent,
    /// Answered; the answer is in the record.
    Answered,
}

/// A gateway's answer to a run, as kept in its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAnswer {
    /// The node that answered (after a fail-over, not the one the run was first sent to).
    pub node_id: String,
    /// Its term.
    pub term: Option<u64>,
    /// The service's result, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The gateway's error, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StoredError>,
}

/// A JSON-RPC error in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl From<RpcError> for StoredError {
    fn from(e: RpcError) -> Self {
        StoredError {
            code: e.code,
            message: e.message,
            data: e.data,
        }
    }
}

impl From<StoredError> for RpcError {
    fn from(e: StoredError) -> Self {
        RpcError {
            code: e.code,
            message: e.message,
            data: e.data,
        }
    }
}

impl RunAnswer {
    /// The answer as the gateway gave it.
    pub fn outcome(&self) -> Result<Value, RpcError> {
        match (&self.result, &self.error) {
            (_, Some(e)) => Err(RpcError::from(e.clone())),
            (Some(v), None) => Ok(v.clone()),
            (None, None) => Ok(Value::Null),
        }
    }

    /// The answer `outcome` of `node_id` at `term`, as it is kept.
    pub(crate) fn new(outcome: Result<Value, RpcError>, node_id: &str, term: Option<u64>) -> Self {
        let (result, error) = match outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(StoredError::from(e))),
        };
        RunAnswer {
            node_id: node_id.to_owned(),
            term,
            result,
            error,
        }
    }
}

/// One run's record, in the store and in `GET …/runs/{run_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub cluster_id: String,
    pub service: String,
    /// The `service.run` params (what is sent, each time with the same id).
    pub params: Value,
    /// SHA-256 of the params: a repeated `Idempotency-Key` must come with the same request.
    pub digest: String,
    /// RFC 3339, manager's clock.
    pub accepted_at: String,
    pub state: RunState,
    /// Times it was sent (in this manager process; the store keeps the state, not this).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<RunAnswer>,
}

/// Why a run was not accepted, or was withdrawn unanswered.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The same `Idempotency-Key` came with a different request (422).
    #[error("Idempotency-Key {key:?} was used for a different request (run {run_id}); use a new key for a new request")]
    KeyReused { key: String, run_id: String },
    /// Too many runs already wait for the cluster's next session (503).
    #[error("{waiting} runs of cluster {cluster} already wait for a session (manager.run_queue_size = {limit}); retry later")]
    QueueFull {
        cluster: String,
        waiting: usize,
        limit: usize,
    },
    /// No session took the run in time (503); it was never sent, so it did not run.
    #[error("cluster {cluster} had no session for {after:?} (manager.run_queue_timeout); the run was not sent and did not run")]
    NoSession { cluster: String, after: Duration },
    /// The store failed (500); nothing was accepted.
    #[error("the manager cannot record the run: {0}")]
    Store(#[from] StoreError),
}

/// What a session said about runs in its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKind {
    /// The gateway answers a repeated run id from its record.
    pub dedup: bool,
    /// Runs are jobs that outlive the session.
    pub distributed: bool,
}

/// How a waiting caller hears of its run.
pub type Settled = Arc<RunRecord>;

#[derive(Debug)]
struct Entry {
    record: RunRecord,
    /// The revision of its record as this replica last saw it (0 until written).
    rev: Revision,
    /// The session it was last sent on; `None` while (again) unsent.
    sent_on: Option<ConnId>,
    /// Sent at least once: it may be running somewhere.
    ever_sent: bool,
    /// Set when unsent and waiting for a session: the hold's deadline.
    hold_until: Option<Instant>,
    waiters: Vec<oneshot::Sender<Settled>>,
    /// Its record is in the store. An entry is in the table from before its record is
    /// written until after its answer is: a caller that attaches meanwhile waits here rather
    /// than reading a record in transition. It is sent only once durable.
    durable: bool,
    /// Being answered or withdrawn: nothing else may settle, withdraw or send it.
    closing: bool,
}

impl Entry {
    /// A run as the store holds it at `rev`, with nobody waiting for it here: sent before if
    /// its record says so.
    fn stored(record: RunRecord, rev: Revision) -> Entry {
        Entry {
            ever_sent: record.state == RunState::Sent,
            record,
            rev,
            sent_on: None,
            hold_until: None,
            waiters: Vec::new(),
            durable: true,
            closing: false,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Unanswered runs by id.
    open: HashMap<String, Entry>,
    /// Per cluster: bumped whenever it has something new to send.
    wake: HashMap<String, watch::Sender<u64>>,
    /// Runs answered or withdrawn, with the revision of that write, until the watch has
    /// passed it: a late event of an earlier write must not bring them back.
    done: HashMap<String, Revision>,
}

/// The manager's runs. Shared by the API and every session task.
#[derive(Debug)]
pub struct Runs {
    store: Arc<dyn Store>,
    limits: RunLimits,
    table: Mutex<Table>,
}

/// The id of a new run: a UUID v7 (time-ordered, so a listing comes out in acceptance order).
fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn run_key(cluster: &str, run_id: &str) -> String {
    format!("{RUNS}{cluster}/{run_id}")
}

fn key_key(cluster: &str, key: &str) -> String {
    format!(
        "{KEYS}{cluster}/{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// Checks an `Idempotency-Key` value: 1–255 visible ASCII characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key: must be 1 to {MAX_KEY_LEN} characters, got {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("Idempotency-Key: only visible ASCII characters are allowed".to_owned());
    }
    Ok(())
}

impl Runs {
    /// The runs kept in `store`: unanswered ones are loaded to be sent again (their callers
    /// are gone; `GET …/runs/{id}` shows their answer once it comes), records past the
    /// retention window are deleted.
    pub async fn open(store: Arc<dyn Store>, limits: RunLimits) -> Result<Runs, StoreError> {
        let runs = Runs {
            store,
            limits,
            table: Mutex::new(Table::default()),
        };
        let open = runs.collect().await?;
        let mut table = runs.table();
        for (record, rev) in open {
            let cluster = record.cluster_id.clone();
            table
                .open
                .insert(record.run_id.clone(), Entry::stored(record, rev));
            table
                .wake
                .entry(cluster)
                .or_insert_with(|| watch::channel(0).0);
        }
        drop(table);
        Ok(runs)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits in force.
    pub fn limits(&self) -> RunLimits {
        self.limits
    }

    /// Deletes the records past the retention window, and the idempotency keys whose run is
    /// gone; returns the unanswered runs kept, with their revisions.
    ///
    /// Runs and keys are read in one transaction, so they are one snapshot (a run and its key
    /// are written together), and every delete is guarded by the revision read: a key used
    /// again meanwhile, or a record changed, stays. Nothing is read key by key: at start, with
    /// thousands of keys, one etcd round trip each was seconds before the manager served.
    pub async fn collect(&self) -> Result<Vec<(RunRecord, Revision)>, StoreError> {
        let retention =
            time::Duration::try_from(self.limits.retention).unwrap_or(time::Duration::MAX);
        let cutoff = time::OffsetDateTime::now_utc()
            .checked_sub(retention)
            .map_or_else(String::new, format_rfc3339);
        let read = self
            .store
            .txn(Txn::new().and_then([TxnOp::get_prefix(RUNS), TxnOp::get_prefix(KEYS)]))
            .await?;
        let mut lists = read.responses.into_iter().map(|r| match r {
            TxnOpResponse::Get(kvs) => kvs,
            _ => Vec::new(),
        });
        let (runs, keys) = (
            lists.next().unwrap_or_default(),
            lists.next().unwrap_or_default(),
        );
        let mut open = Vec::new();
        let mut kept = std::collections::HashSet::new();
        let mut doomed = Vec::new();
        for kv in runs {
            let Ok(record) = serde_json::from_slice::<RunRecord>(&kv.value) else {
                // Not ours to read (a newer manager's format): leave it.
                kept.insert(kv.key);
                continue;
            };
            let since = record.answered_at.as_deref().unwrap_or(&record.accepted_at);
            if since < cutoff.as_str() {
                doomed.push((kv.key, kv.mod_revision));
            } else {
                if record.state != RunState::Answered {
                    open.push((record, kv.mod_revision));
                }
                kept.insert(kv.key);
            }
        }
        let expired = doomed.len();
        // Keys of runs that are gone.
        for kv in keys {
            let run_id = String::from_utf8_lossy(&kv.value).into_owned();
            let cluster = kv
                .key
                .strip_prefix(KEYS)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default();
            if !kept.contains(&run_key(cluster, &run_id)) {
                doomed.push((kv.key, kv.mod_revision));
            }
        }
        for batch in doomed.chunks(TXN_OPS) {
            let guarded =
                |items: &[(String, Revision)]| {
                    Txn::new()
                        .when(items.iter().map(|(k, rev)| {
                            Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)
                        }))
                        .and_then(items.iter().map(|(k, _)| TxnOp::delete(k.clone())))
                };
            if !self.store.txn(guarded(batch)).await?.succeeded {
                // Something in the batch changed: one by one, leaving what changed.
                for one in batch {
                    self.store.txn(guarded(std::slice::from_ref(one))).await?;
                }
            }
        }
        if expired > 0 {
            tracing::info!(
                "deleted {expired} run record(s) older than the retention window ({:?})",
                self.limits.retention
            );
        }
        Ok(open)
    }

    /// The wake-up channel of `cluster`'s sessions: it changes whenever the cluster has runs
    /// to send.
    pub fn subscribe(&self, cluster: &str) -> watch::Receiver<u64> {
        self.table()
            .wake
            .entry(cluster.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake(table: &mut Table, cluster: &str) {
        if let Some(w) = table.wake.get(cluster) {
            w.send_modify(|n| *n = n.wrapping_add(1));
        } else {
            table.wake.insert(cluster.to_owned(), watch::channel(1).0);
        }
    }

    /// Accepts a run of `service` on `cluster` (its record written before anything is sent)
    /// and returns its id and a receiver for its answer. With an `Idempotency-Key` already
    /// used for the same request, attaches to that run instead (answered at once when it is
    /// answered already).
    pub async fn accept(
        &self,
        cluster: &str,
        service: &str,
        params: Value,
        key: Option<&str>,
    ) -> Result<(String, oneshot::Receiver<Settled>), RunError> {
        let digest = hex::encode(Sha256::digest(
            serde_json::to_vec(&params).unwrap_or_default(),
        ));
        loop {
            if let Some(key) = key {
                if let Some(kv) = self.store.get(&key_key(cluster, key)).await? {
                    let run_id = String::from_utf8_lossy(&kv.value).into_owned();
                    match self.attach(cluster, &run_id, &digest, key).await? {
                        Some(rx) => return Ok((run_id, rx)),
                        // Its run was collected: the key is free again.
                        None => {
                            let _ = self.store.delete(&kv.key).await;
                            continue;
                        }
                    }
                }
            }
            {
                let table = self.table();
                let waiting = table
                    .open
                    .values()
                    .filter(|e| e.record.cluster_id == cluster && e.sent_on.is_none())
                    .count();
                if waiting >= self.limits.queue_size {
                    return Err(RunError::QueueFull {
                        cluster: cluster.to_owned(),
                        waiting,
                        limit: self.limits.queue_size,
                    });
                }
            }
            let run_id = new_run_id();
            let mut params = params.clone();
            if let Value::Object(m) = &mut params {
                m.insert("run_id".into(), Value::from(run_id.as_str()));
            }
            let record = RunRecord {
                run_id: run_id.clone(),
                cluster_id: cluster.to_owned(),
                service: service.to_owned(),
                params,
                digest: digest.clone(),
                accepted_at: now_rfc3339(),
                state: RunState::Queued,
                attempts: 0,
                answered_at: None,
                answer: None,
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            let mut txn = Txn::new();
            let mut ops = vec![TxnOp::put(run_key(cluster, &run_id), value)];
            if let Some(key) = key {
                // Two callers with one new key: one creates, the other attaches.
                txn = txn.when([Compare::missing(key_key(cluster, key))]);
                ops.push(TxnOp::put(
                    key_key(cluster, key),
                    run_id.as_bytes().to_vec(),
                ));
            }
            // In the table first: a caller that finds the key the moment it is written
            // attaches here instead of reading the record alone.
            let (tx, rx) = oneshot::channel();
            self.table().open.insert(
                run_id.clone(),
                Entry {
                    record,
                    rev: 0,
                    sent_on: None,
                    ever_sent: false,
                    hold_until: Some(Instant::now() + self.limits.queue_timeout),
                    waiters: vec![tx],
                    durable: false,
                    closing: false,
                },
            );
            let written = self.store.txn(txn.and_then(ops)).await;
            let mut table = self.table();
            match written {
                Ok(r) if r.succeeded => {
                    if let Some(e) = table.open.get_mut(&run_id) {
                        e.durable = true;
                        e.rev = e.rev.max(r.revision);
                    }
                    Self::wake(&mut table, cluster);
                    return Ok((run_id, rx));
                }
                // Another caller created the key's run meanwhile: attach to it.
                Ok(_) => {
                    table.open.remove(&run_id);
                }
                Err(e) => {
                    table.open.remove(&run_id);
                    return Err(e.into());
                }
            }
        }
    }

    /// A second caller of the run an `Idempotency-Key` names; `None` when the run is gone.
    async fn attach(
        &self,
        cluster: &str,
        run_id: &str,
        digest: &str,
        key: &str,
    ) -> Result<Option<oneshot::Receiver<Settled>>, RunError> {
        let reused = || RunError::KeyReused {
            key: crate::model::truncate(key, 80).to_owned(),
            run_id: run_id.to_owned(),
        };
        {
            let mut table = self.table();
            if let Some(e) = table.open.get_mut(run_id) {
                if e.record.digest != digest {
                    return Err(reused());
                }
                let (tx, rx) = oneshot::channel();
                e.waiters.push(tx);
                return Ok(Some(rx));
            }
        }
        let Some(record) = self.get(cluster, run_id).await? else {
            return Ok(None);
        };
        if record.digest != digest {
            return Err(reused());
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Arc::new(record));
        Ok(Some(rx))
    }

    /// One run: the table's view while it is open, else its record.
    pub async fn get(&self, cluster: &str, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        if let Some(e) = self.table().open.get(run_id) {
            if e.record.cluster_id == cluster {
                return Ok(Some(e.record.clone()));
            }
            return Ok(None);
        }
        let Some(kv) = self.store.get(&run_key(cluster, run_id)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&kv.value).ok())
    }

    /// The runs session `conn` of `cluster` should send now: the cluster's unsent runs, marked
    /// sent on `conn` in the store first. The caller is the cluster's live session `session`
    /// on this replica, whose claim it last knew at revision `claim_rev`: if the claim is no
    /// longer this session's (another session replaced it), nothing is marked and nothing is
    /// to be sent.
    pub async fn take_unsent(
        &self,
        cluster: &str,
        conn: ConnId,
        session: &str,
        claim_rev: Revision,
    ) -> Vec<(String, Value)> {
        // Picked under the lock and held (`closing`) while the store decides.
        let picked: Vec<(RunRecord, Revision)> = {
            let mut table = self.table();
            let mut picked = Vec::new();
            for e in table.open.values_mut() {
                if e.record.cluster_id != cluster || e.sent_on.is_some() || !e.durable || e.closing
                {
                    continue;
                }
                e.closing = true;
                let mut record = e.record.clone();
                record.state = RunState::Sent;
                record.attempts += 1;
                picked.push((record, e.rev));
            }
            picked
        };
        if picked.is_empty() {
            return Vec::new();
        }
        // Written as they are serialized here, once, whatever the retries.
        let picked: Vec<Picked> = picked
            .into_iter()
            .map(|(record, rev)| {
                let value = serde_json::to_vec(&record).unwrap_or_default();
                (record, rev, value)
            })
            .collect();
        let mut sent: Vec<(RunRecord, Revision)> = Vec::new();
        let mut fence_rev = claim_rev;
        let sizes = |(_, _, value): &Picked| value.len();
        for range in autogate_store::txn_batches(&picked, TXN_OPS, TXN_BYTES, sizes) {
            match self
                .mark_batch(cluster, session, &mut fence_rev, &picked[range])
                .await
            {
                Ok(marked) => sent.extend(marked),
                Err(marked) => {
                    // The claim is no longer this session's, or the store failed: the rest
                    // stays unsent.
                    sent.extend(marked);
                    break;
                }
            }
        }
        let mut table = self.table();
        for (record, _, _) in &picked {
            if let Some(e) = table.open.get_mut(&record.run_id) {
                e.closing = false;
            }
        }
        let mut out = Vec::new();
        for (record, rev) in sent {
            if let Some(e) = table.open.get_mut(&record.run_id) {
                e.sent_on = Some(conn);
                e.ever_sent = true;
                e.hold_until = None;
                e.rev = e.rev.max(rev);
                e.record.state = RunState::Sent;
                e.record.attempts = record.attempts;
                out.push((record.run_id.clone(), record.params.clone()));
            }
        }
        // Oldest first (UUID v7 ids sort by time).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Marks one batch sent under the claim's revision `fence_rev` (followed when this
    /// session's own claim changed). `Err` carries what was marked when the rest cannot be:
    /// the claim is another session's, or the store failed.
    async fn mark_batch(
        &self,
        cluster: &str,
        session: &str,
        fence_rev: &mut Revision,
        batch: &[Picked],
    ) -> Result<Vec<(RunRecord, Revision)>, Vec<(RunRecord, Revision)>> {
        for _ in 0..3 {
            let fence = Compare::mod_revision(
                crate::claims::claim_key(cluster),
                CompareOp::Equal,
                *fence_rev,
            );
            match self.mark_sent(&fence, batch).await {
                Ok(Some(rev)) => {
                    return Ok(batch.iter().map(|(r, _, _)| (r.clone(), rev)).collect())
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("cannot mark runs of cluster {cluster} as sent: {e}");
                    return Err(Vec::new());
                }
            }
            // The claim changed (this session's own node list, or another session), or a
            // run did (withdrawn, or this replica's copy is behind).
            let claim = match self.store.get(&crate::claims::claim_key(cluster)).await {
                Ok(Some(kv)) => serde_json::from_slice::<crate::claims::Claim>(&kv.value)
                    .ok()
                    .filter(|c| c.session_id == session && c.ended.is_none())
                    .map(|_| kv.mod_revision),
                _ => None,
            };
            let Some(current) = claim else {
                return Err(Vec::new());
            };
            if current != *fence_rev {
                *fence_rev = current;
                continue;
            }
            // The claim holds: some run changed. One by one, skipping those.
            let mut sent = Vec::new();
            for one in batch {
                if let Ok(Some(rev)) = self.mark_sent(&fence, std::slice::from_ref(one)).await {
                    sent.push((one.0.clone(), rev));
                }
            }
            return Ok(sent);
        }
        Err(Vec::new())
    }

    /// Writes `runs` as sent, if the fence and every run's revision still hold.
    async fn mark_sent(
        &self,
        fence: &Compare,
        runs: &[Picked],
    ) -> Result<Option<Revision>, StoreError> {
        let mut compares = vec![fence.clone()];
        let mut ops = Vec::new();
        for (record, rev, value) in runs {
            let key = run_key(&record.cluster_id, &record.run_id);
            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
            ops.push(TxnOp::put(key, value.clone()));
        }
        let resp = self
            .store
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// A watch event under [`RUNS`]: a run accepted elsewhere joins this replica's copy (and
    /// wakes the cluster's session, if this replica holds it), a run answered elsewhere is
    /// answered to this replica's callers, a run withdrawn elsewhere leaves.
    pub fn apply(&self, ev: &WatchEvent) {
        let rev = ev.kv.mod_revision;
        match ev.kind {
            EventKind::Put => {
                let record = match serde_json::from_slice::<RunRecord>(&ev.kv.value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("ignoring unreadable run record {}: {e}", ev.kv.key);
                        return;
                    }
                };
                if run_key(&record.cluster_id, &record.run_id) != ev.kv.key {
                    tracing::warn!("ignoring run record {}: it names another run", ev.kv.key);
                    return;
                }
                self.observe(record, rev);
            }
            EventKind::Delete => {
                let Some(run_id) = ev.kv.key.rsplit('/').next() else {
                    return;
                };
                let mut table = self.table();
                let gone = table
                    .open
                    .get(run_id)
                    .is_some_and(|e| !e.closing && e.durable && e.rev < rev);
                if gone {
                    // Its callers' receivers end: the run was withdrawn unsent.
                    table.open.remove(run_id);
                }
                table.done.insert(run_id.to_owned(), rev);
            }
        }
    }

    /// A record as the store holds it at `rev`.
    fn observe(&self, record: RunRecord, rev: Revision) {
        let mut table = self.table();
        if table.done.get(&record.run_id).is_some_and(|d| *d >= rev) {
            return;
        }
        if record.state == RunState::Answered {
            table.done.insert(record.run_id.clone(), rev);
            let answered = table
                .open
                .get(&record.run_id)
                .is_some_and(|e| !e.closing && e.rev < rev);
            if !answered {
                return;
            }
            let waiters = table
                .open
                .remove(&record.run_id)
                .map(|e| e.waiters)
                .unwrap_or_default();
            drop(table);
            let record = Arc::new(record);
            for w in waiters {
                let _ = w.send(record.clone());
            }
            return;
        }
        let cluster = record.cluster_id.clone();
        match table.open.get_mut(&record.run_id) {
            Some(e) => {
                if rev > e.rev && !e.closing {
                    if record.state == RunState::Sent {
                        e.ever_sent = true;
                    }
                    e.record.state = record.state;
                    e.record.attempts = record.attempts;
                    e.rev = rev;
                }
            }
            None => {
                table
                    .open
                    .insert(record.run_id.clone(), Entry::stored(record, rev));
                Self::wake(&mut table, &cluster);
            }
        }
    }

    /// Reads every run again (after the watch was lost).
    pub async fn reload(&self) -> Result<(), StoreError> {
        for kv in self.store.list(RUNS).await? {
            if let Ok(record) = serde_json::from_slice::<RunRecord>(&kv.value) {
                self.observe(record, kv.mod_revision);
            }
        }
        Ok(())
    }

    /// Forgets the answered and withdrawn runs the watch has passed.
    pub fn passed(&self, rev: Revision) {
        self.table().done.retain(|_, r| *r > rev);
    }

    /// A session of `cluster` started. Runs loaded from the store that an earlier manager
    /// process sent (it may have run them) are failed when the gateway cannot deduplicate
    /// and does not run them as jobs; the rest are sent.
    pub async fn session_started(&self, cluster: &str, kind: SessionKind) {
        if kind.dedup {
            return;
        }
        let lost: Vec<String> = self
            .table()
            .open
            .values()
            .filter(|e| e.record.cluster_id == cluster && e.sent_on.is_none() && e.ever_sent)
            .filter(|_| !kind.distributed)
            .map(|e| e.record.run_id.clone())
            .collect();
        for run_id in lost {
            self.fail_lost(cluster, &run_id).await;
        }
        if kind.distributed {
            // Their answers come as the jobs end; sending them again could run them twice.
            let mut table = self.table();
            for e in table.open.values_mut() {
                if e.record.cluster_id == cluster && e.sent_on.is_none() && e.ever_sent {
                    e.sent_on = Some(NO_SESSION);
                }
            }
        }
    }

    /// Session `conn` of `cluster` ended: its unanswered runs go back to unsent (to be sent on
    /// the next session) when its gateway deduplicates, wait for an answer on a later session
    /// when they are jobs, and are answered "may have run" otherwise.
    pub async fn session_ended(&self, cluster: &str, conn: ConnId, kind: SessionKind) {
        let mut lost = Vec::new();
        let mut again = 0usize;
        {
            let mut table = self.table();
            for e in table.open.values_mut() {
                if e.sent_on != Some(conn) {
                    continue;
                }
                if kind.dedup {
                    e.sent_on = None;
                    e.record.state = RunState::Queued;
                    again += 1;
                } else if kind.distributed {
                    // Still "sent", on no session: the answer comes when the job ends.
                    e.sent_on = Some(NO_SESSION);
                } else {
                    lost.push(e.record.run_id.clone());
                }
            }
            if kind.dedup {
                Self::wake(&mut table, cluster);
            }
        }
        if again > 0 {
            tracing::info!(
                "{again} unanswered run(s) of gateway cluster {cluster} will be sent again, with the same ids, on its next session"
            );
        }
        for run_id in lost {
            self.fail_lost(cluster, &run_id).await;
        }
    }

    async fn fail_lost(&self, cluster: &str, run_id: &str) {
        let err = RpcError::new(
            autogate_proto::UNAVAILABLE,
            format!(
                "the session of cluster {cluster} closed before answering; the run may have run (this gateway cannot be asked again safely)"
            ),
        );
        self.settle(cluster, run_id, Err(err), "", None).await;
    }

    /// An answer to run `run_id` from a session of `cluster`. Rewrites the record, then tells
    /// every waiting caller. `false` when the run is not open (answered already: a duplicate).
    pub async fn settle(
        &self,
        cluster: &str,
        run_id: &str,
        outcome: Result<Value, RpcError>,
        node_id: &str,
        term: Option<u64>,
    ) -> bool {
        // Claimed under the lock, written, then taken out: callers attaching meanwhile still
        // find it open and wait for this answer.
        let (mut record, mut rev) = {
            let mut table = self.table();
            match table.open.get_mut(run_id) {
                Some(e) if e.record.cluster_id == cluster && e.durable && !e.closing => {
                    e.closing = true;
                    (e.record.clone(), e.rev)
                }
                _ => return false,
            }
        };
        record.state = RunState::Answered;
        record.answered_at = Some(now_rfc3339());
        record.answer = Some(RunAnswer::new(outcome, node_id, term));
        let key = run_key(cluster, run_id);
        let value = serde_json::to_vec(&record).unwrap_or_default();
        for _ in 0..3 {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), value.clone())]);
            match self.store.txn(txn).await {
                Ok(r) if r.succeeded => {
                    self.table().done.insert(run_id.to_owned(), r.revision);
                    break;
                }
                Ok(_) => match self.store.get(&key).await {
                    // Answered by another replica meanwhile: that answer stands, and reaches
                    // the callers here through the watch.
                    Ok(Some(kv)) => match serde_json::from_slice::<RunRecord>(&kv.value) {
                        Ok(stored) if stored.state == RunState::Answered => {
                            if let Some(e) = self.table().open.get_mut(run_id) {
                                e.closing = false;
                            }
                            self.observe(stored, kv.mod_revision);
                            return false;
                        }
                        _ => rev = kv.mod_revision,
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("cannot record the answer of run {run_id}: {e}");
                        break;
                    }
                },
                Err(e) => {
                    // The callers still get the answer; only a later GET (or a restarted
                    // manager) would not see it, and would send the run again to a gateway
                    // that answers it from its own record.
                    tracing::warn!("cannot record the answer of run {run_id}: {e}");
                    break;
                }
            }
        }
        let waiters = self
            .table()
            .open
            .remove(run_id)
            .map(|e| e.waiters)
            .unwrap_or_default();
        let record = Arc::new(record);
        for w in waiters {
            let _ = w.send(record.clone());
        }
        true
    }

    /// Withdraws run `run_id` if it was never sent and its hold expired: its record is deleted
    /// (it did not run). `false` when it was sent meanwhile (its answer is then still to come).
    pub async fn withdraw_unsent(&self, cluster: &str, run_id: &str) -> bool {
        // Claimed (so it is not sent meanwhile), deleted, then taken out, as in `settle`.
        let rev = {
            let mut table = self.table();
            match table.open.get_mut(run_id) {
                Some(e)
                    if e.record.cluster_id == cluster
                        && e.durable
                        && !e.closing
                        && !e.ever_sent
                        && e.hold_until.is_some_and(|t| t <= Instant::now()) =>
                {
                    e.closing = true;
                    e.rev
                }
                _ => return false,
            }
        };
        let key = run_key(cluster, run_id);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key)]);
        match self.store.txn(txn).await {
            Ok(r) if r.succeeded => {
                let mut table = self.table();
                table.done.insert(run_id.to_owned(), r.revision);
                table.open.remove(run_id);
                true
            }
            Ok(_) => {
                // Sent meanwhile (by the replica holding the session): its answer is to come.
                let mut table = self.table();
                if let Some(e) = table.open.get_mut(run_id) {
                    e.closing = false;
                    e.ever_sent = true;
                    e.hold_until = None;
                }
                false
            }
            Err(e) => {
                // Not known withdrawn, so not known unsent: the caller waits for an answer
                // until its deadline rather than being told it did not run.
                tracing::warn!("cannot withdraw run {run_id}: {e}");
                let mut table = self.table();
                if let Some(e) = table.open.get_mut(run_id) {
                    e.closing = false;
                    e.hold_until = None;
                }
                false
            }
        }
    }

    /// When run `run_id`'s hold ends, if it is unsent.
    pub fn hold_until(&self, run_id: &str) -> Option<Instant> {
        // A run another replica sent is out of its hold, whatever this copy set at acceptance.
        self.table()
            .open
            .get(run_id)
            .filter(|e| !e.ever_sent)
            .and_then(|e| e.hold_until)
    }

    /// A cluster was deleted or disabled: its open runs are answered with `why`.
    pub async fn fail_cluster(&self, cluster: &str, why: &str) {
        let ids: Vec<String> = self
            .table()
            .open
            .values()
            .filter(|e| e.record.cluster_id == cluster)
            .map(|e| e.record.run_id.clone())
            .collect();
        for run_id in ids {
            let err = RpcError::new(
                autogate_proto::UNAVAILABLE,
                format!("{why} while the run waited for its answer; it may have run"),
            );
            self.settle(cluster, &run_id, Err(err), "", None).await;
        }
    }

    /// Open runs of every cluster (for metrics and tests).
    pub fn open_count(&self) -> usize {
        self.table().open.len()
    }
}

/// A run picked to be marked sent: its record as it will be written, the revision it must
/// still be at, and that record serialized.
type Picked = (RunRecord, Revision, Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;
    use autogate_store::StoreOptions;
    use serde_json::json;

    async fn runs(limits: RunLimits) -> (Arc<dyn Store>, Runs) {
        let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
        let runs = Runs::open(store.clone(), limits).await.unwrap();
        (store, runs)
    }

    const DEDUP: SessionKind = SessionKind {
        dedup: true,
        distributed: false,
    };
    const LOCAL: SessionKind = SessionKind {
        dedup: false,
        distributed: false,
    };

    #[tokio::test]
    async fn a_run_is_recorded_before_it_is_sent_and_answered_once() {
        let (store, runs) = runs(RunLimits::default()).await;
        let (id, rx) = runs
            .accept("c1", "svc", json!({"name": "svc"}), None)
            .await
            .unwrap();
        let rec = runs.get("c1", &id).await.unwrap().unwrap();
        assert_eq!(rec.state, RunState::Queued);
        assert!(store.get(&run_key("c1", &id)).await.unwrap().is_some());
        let sent = runs.take_unsent("c1", ConnId(7), "s", 0).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1["run_id"], id.as_str());
        assert!(
            runs.take_unsent("c1", ConnId(7), "s", 0).await.is_empty(),
            "sent once per session"
        );
        assert!(
            runs.settle("c1", &id, Ok(json!({"rc": 0})), "n1", Some(3))
                .await
        );
        assert!(
            !runs
                .settle("c1", &id, Ok(json!({"rc": 1})), "n2", Some(4))
                .await
        );
        let got = rx.await.unwrap();
        assert_eq!(got.answer.as_ref().unwrap().result, Some(json!({"rc": 0})));
        let stored: RunRecord =
            serde_json::from_slice(&store.get(&run_key("c1", &id)).await.unwrap().unwrap().value)
                .unwrap();
        assert_eq!(stored.state, RunState::Answered);
        assert_eq!(stored.answer.unwrap().node_id, "n1");
    }

    /// Runs opened again on `store` with a retention of zero, once the clock has moved past
    /// the last record (RFC 3339 text to the millisecond: wait one).
    async fn reopened_past_the_window(store: &Arc<dyn Store>) -> Runs {
        let short = RunLimits {
            retention: Duration::ZERO,
            ..RunLimits::default()
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        Runs::open(store.clone(), short).await.unwrap()
    }

    /// A real etcd (kept alive by the caller), its store, and runs on it.
    async fn on_etcd() -> (autogate_testkit::etcd::EtcdServer, Arc<dyn Store>, Runs) {
        let etcd = autogate_testkit::etcd::EtcdServer::start();
        let options = autogate_store::EtcdOptions::new(etcd.endpoints());
        let store = autogate_store::open(StoreOptions::Etcd(options))
            .await
            .unwrap();
        let runs = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        (etcd, store, runs)
    }

    /// A cluster with more runs waiting than one etcd transaction may carry (128 operations,
    /// 1.5 MiB by default): its session gets them all, each marked sent in the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_waiting_runs_than_one_etcd_transaction_takes_are_all_sent() {
        let (_etcd, store, runs) = on_etcd().await;
        let pad = "x".repeat(8 * 1024);
        let mut waiting = Vec::new();
        for i in 0..300 {
            let params = json!({"name": "svc", "inputs": {"i": i, "pad": pad}});
            waiting.push(runs.accept("c1", "svc", params, None).await.unwrap());
        }
        let sent = runs.take_unsent("c1", ConnId(1), "s", 0).await;
        assert_eq!(sent.len(), 300);
        for (id, _) in &waiting {
            let rec = runs.get("c1", id).await.unwrap().unwrap();
            assert_eq!(rec.state, RunState::Sent, "{id}");
        }
        for kv in store.list(RUNS).await.unwrap() {
            let rec: RunRecord = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(rec.state, RunState::Sent, "{}", kv.key);
        }
        assert!(runs.take_unsent("c1", ConnId(1), "s", 0).await.is_empty());
    }

    /// The next change under [`RUNS`], as the store watch delivers it.
    async fn next(watch: &mut autogate_store::WatchStream) -> WatchEvent {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a change in time")
            .expect("the watch goes on")
            .expect("no watch error")
    }

    #[tokio::test]
    async fn a_run_accepted_on_one_replica_is_sent_by_another_and_answered_back() {
        let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
        let x = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        let y = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        let mut watch = store.watch(RUNS, None).await.unwrap();
        let (id, rx) = x.accept("c1", "svc", json!({}), None).await.unwrap();
        let accepted = next(&mut watch).await;
        x.apply(&accepted);
        y.apply(&accepted);
        // The holder's copy has it and sends it, once.
        let sent = y.take_unsent("c1", ConnId(1), "s", 0).await;
        assert_eq!(sent.len(), 1);
        assert!(y.take_unsent("c1", ConnId(1), "s", 0).await.is_empty());
        // The mark reaches the accepting replica: its hold is over, it cannot withdraw.
        let marked = next(&mut watch).await;
        x.apply(&marked);
        assert!(x.hold_until(&id).is_none());
        assert!(!x.withdraw_unsent("c1", &id).await);
        // The answer written by the holder reaches the caller of the other replica.
        assert!(
            y.settle("c1", &id, Ok(json!({"rc": 0})), "n1", Some(2))
                .await
        );
        let answered = next(&mut watch).await;
        x.apply(&answered);
        let got = rx.await.unwrap();
        assert_eq!(got.answer.as_ref().unwrap().node_id, "n1");
        // A late replay of the acceptance brings nothing back on either replica.
        x.apply(&accepted);
        y.apply(&accepted);
        assert_eq!((x.open_count(), y.open_count()), (0, 0));
        // A second answer (the other replica's, from a late frame) settles nothing.
        assert!(!x.settle("c1", &id, Ok(json!({"rc": 1})), "n2", None).await);
        // Once the watch has passed the answer, neither replica remembers the run.
        x.passed(answered.kv.mod_revision);
        y.passed(answered.kv.mod_revision);
        assert!(x.table().done.is_empty() && y.table().done.is_empty());
    }

    #[tokio::test]
    async fn a_replica_whose_session_was_replaced_sends_nothing() {
        let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
        let runs = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        let claim = |session: &str| {
            serde_json::to_vec(&json!({
                "replica": "r", "session_id": session, "node_id": "n", "term": 1,
                "connected_at": now_rfc3339(), "remote_addr": "127.0.0.1:1",
                "history_key": "h", "certificate": "f",
            }))
            .unwrap()
        };
        let key = crate::claims::claim_key("c1");
        let old = store.put(&key, claim("old"), None).await.unwrap();
        let (id, _rx) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        // Another replica's hello replaced the session.
        store.put(&key, claim("new"), None).await.unwrap();
        assert!(runs
            .take_unsent("c1", ConnId(1), "old", old)
            .await
            .is_empty());
        let rec = runs.get("c1", &id).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts), (RunState::Queued, 0));
        // The session's own claim moving on (its node list) does not stop it.
        let mine = store.put(&key, claim("new"), None).await.unwrap();
        store.put(&key, claim("new"), None).await.unwrap();
        assert_eq!(
            runs.take_unsent("c1", ConnId(2), "new", mine).await.len(),
            1
        );
    }

    #[tokio::test]
    async fn a_dedup_session_that_ends_gives_its_runs_to_the_next() {
        let (_, runs) = runs(RunLimits::default()).await;
        let (id, _rx) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        assert_eq!(runs.take_unsent("c1", ConnId(1), "s", 0).await.len(), 1);
        runs.session_ended("c1", ConnId(1), DEDUP).await;
        let again = runs.take_unsent("c1", ConnId(2), "s", 0).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, id);
        assert_eq!(runs.get("c1", &id).await.unwrap().unwrap().attempts, 2);
    }

    #[tokio::test]
    async fn a_local_session_that_ends_answers_may_have_run() {
        let (_, runs) = runs(RunLimits::default()).await;
        let (_, rx) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        runs.take_unsent("c1", ConnId(1), "s", 0).await;
        runs.session_ended("c1", ConnId(1), LOCAL).await;
        let got = rx.await.unwrap();
        let err = got.answer.as_ref().unwrap().error.clone().unwrap();
        assert!(err.message.contains("may have run"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_job_outlives_its_session_without_being_sent_again() {
        let (_, runs) = runs(RunLimits::default()).await;
        let (id, rx) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        runs.take_unsent("c1", ConnId(1), "s", 0).await;
        let jobs = SessionKind {
            dedup: false,
            distributed: true,
        };
        runs.session_ended("c1", ConnId(1), jobs).await;
        runs.session_started("c1", jobs).await;
        assert!(runs.take_unsent("c1", ConnId(2), "s", 0).await.is_empty());
        assert!(runs.settle("c1", &id, Ok(json!(1)), "n2", None).await);
        assert!(rx.await.unwrap().answer.is_some());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_an_unsent_run_is_withdrawn() {
        let limits = RunLimits {
            queue_timeout: Duration::ZERO,
            queue_size: 2,
            ..RunLimits::default()
        };
        let (store, runs) = runs(limits).await;
        let (a, _) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        runs.accept("c1", "svc", json!({}), None).await.unwrap();
        let full = runs.accept("c1", "svc", json!({}), None).await.unwrap_err();
        assert!(
            matches!(
                full,
                RunError::QueueFull {
                    waiting: 2,
                    limit: 2,
                    ..
                }
            ),
            "{full}"
        );
        assert!(full.to_string().contains("manager.run_queue_size"));
        // Another cluster has its own queue.
        runs.accept("c2", "svc", json!({}), None).await.unwrap();
        assert!(runs.withdraw_unsent("c1", &a).await);
        assert!(store.get(&run_key("c1", &a)).await.unwrap().is_none());
        // A sent run is never withdrawn.
        let sent = runs.take_unsent("c1", ConnId(1), "s", 0).await;
        assert!(!runs.withdraw_unsent("c1", &sent[0].0).await);
    }

    #[tokio::test]
    async fn an_idempotency_key_names_one_run() {
        let (_, runs) = runs(RunLimits::default()).await;
        let body = json!({"name": "svc", "inputs": {"a": 1}});
        let (a, rx1) = runs
            .accept("c1", "svc", body.clone(), Some("k-1"))
            .await
            .unwrap();
        let (b, rx2) = runs
            .accept("c1", "svc", body.clone(), Some("k-1"))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            runs.take_unsent("c1", ConnId(1), "s", 0).await.len(),
            1,
            "one run, sent once"
        );
        let other = json!({"name": "svc", "inputs": {"a": 2}});
        let err = runs
            .accept("c1", "svc", other, Some("k-1"))
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::KeyReused { .. }), "{err}");
        runs.settle("c1", &a, Ok(json!("done")), "n1", None).await;
        assert!(rx1.await.is_ok() && rx2.await.is_ok());
        // After the answer, the same key is answered from the record at once.
        let (c, rx3) = runs.accept("c1", "svc", body, Some("k-1")).await.unwrap();
        assert_eq!(c, a);
        assert_eq!(
            rx3.await.unwrap().answer.as_ref().unwrap().result,
            Some(json!("done"))
        );
        assert!(check_key("").is_err() && check_key("a\u{7}").is_err());
        assert!(check_key(&"x".repeat(256)).is_err() && check_key("5f1e-ok").is_ok());
    }

    #[tokio::test]
    async fn a_restarted_manager_keeps_open_runs_and_collects_old_ones() {
        let store = autogate_store::open(StoreOptions::Memory).await.unwrap();
        let runs = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        let (open, _) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        let (done, _) = runs.accept("c1", "svc", json!({}), None).await.unwrap();
        runs.take_unsent("c1", ConnId(1), "s", 0).await;
        runs.settle("c1", &done, Ok(json!(0)), "n1", None).await;
        drop(runs);
        let again = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        assert_eq!(again.open_count(), 1);
        assert_eq!(again.take_unsent("c1", ConnId(2), "s", 0).await[0].0, open);
        assert!(again
            .get("c1", &done)
            .await
            .unwrap()
            .unwrap()
            .answer
            .is_some());
        drop(again);
        // Past the window, everything goes.
        assert_eq!(reopened_past_the_window(&store).await.open_count(), 0);
        assert!(store.list(RUNS).await.unwrap().is_empty());
    }

    /// On etcd (at most 128 operations a transaction): keys whose run is gone are deleted and
    /// the others kept, then everything past the window goes, hundreds at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collecting_hundreds_of_runs_and_keys_on_etcd() {
        let (_etcd, store, runs) = on_etcd().await;
        for i in 0..200 {
            let (id, _) = runs
                .accept("c1", "svc", json!({"i": i}), Some(&format!("k{i}")))
                .await
                .unwrap();
            runs.take_unsent("c1", ConnId(1), "s", 0).await;
            runs.settle("c1", &id, Ok(json!(i)), "n1", None).await;
        }
        let (open, _) = runs
            .accept("c1", "svc", json!({"open": true}), Some("k-open"))
            .await
            .unwrap();
        for i in 0..150 {
            let gone = format!("0190aaaa-0000-7000-8000-{i:012}");
            store
                .put(&key_key("c1", &format!("old-{i}")), gone.into_bytes(), None)
                .await
                .unwrap();
        }
        drop(runs);
        let again = Runs::open(store.clone(), RunLimits::default())
            .await
            .unwrap();
        assert_eq!(again.open_count(), 1);
        assert_eq!(store.list(RUNS).await.unwrap().len(), 201);
        assert_eq!(
            store.list(KEYS).await.unwrap().len(),
            201,
            "orphan keys deleted"
        );
        // A key still names its run: the same request attaches to it.
        let (id, _) = again
            .accept("c1", "svc", json!({"open": true}), Some("k-open"))
            .await
            .unwrap();
        assert_eq!(id, open);
        drop(again);
        assert_eq!(reopened_past_the_window(&store).await.open_count(), 0);
        assert!(store.list(RUNS).await.unwrap().is_empty());
        assert!(store.list(KEYS).await.unwrap().is_empty());
    }
}
