//! The core node's record of each run it must not execute twice: a manager's run it executes
//! itself (local execution), and an operator API run sent with an `Idempotency-Key`
//! ([`RecordKind::Api`]). A run sent again — after a fail-over, a lost session, a manager
//! restart or a client's lost connection — is answered from what happened instead of running
//! twice.
//!
//! Manager runs are recorded under their run id, API runs under `api-<SHA-256 of the key>`, so
//! the two cannot meet; an API record's answer is the serialized HTTP answer ([`HttpAnswer`])
//! instead of a JSON-RPC frame. An API run queued as a job (distributed execution) records the
//! job's id: from then on the job, which outlives its node, is what a repeat waits for.
//!
//! # Keys
//!
//! - `/autogate/<cluster>/runs/<run id>`: the record (`running`, then `done` with the answer
//!   frame). Created by a create-if-absent transaction fenced by the active node's term, so a
//!   deposed node cannot start a run; bound to an hourly *retention lease* (TTL: the retention
//!   window plus an hour), so records go by themselves once the window has passed.
//! - `/autogate/<cluster>/run-owners/<run id>`: present while the node running it lives —
//!   bound to that node's own lease (with HA), which goes when the node stops, or when a standby
//!   proves it dead and revokes it.
//!
//! # A run id that comes again
//!
//! - `done`: answered from the record at once.
//! - `running` on this node: the caller waits for the same run.
//! - `running` elsewhere, its owner key present: the node that runs it is alive (it handed the
//!   role over and is finishing the run, or draining): the caller waits for the record to be
//!   `done`.
//! - `running` elsewhere, its owner key gone: that node died with the run. The record is closed
//!   with the error `interrupted` ("the node running it was lost; it may have partially run"),
//!   never run again; a transaction on the record's revision makes this lose against a late
//!   `done` from the node, if it was only frozen.
//! - `running` with a job id (an API run queued as a job): the caller waits for that job, which
//!   any active node can follow; never interrupted, since the job outlives the node.
//!
//! The answer frame is stored as it is sent: the request's JSON-RPC id is the run id, so the
//! record's frame answers every copy of the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autogate_proto::{decode, encode, run_failed, Frame, Id, RpcError};
use autogate_store::{Compare, CompareOp, LeaseId, Store, StoreError, Txn, TxnOp};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Largest answer frame kept in a record (etcd refuses requests above 1.5 MiB by default).
pub const RECORD_FRAME_LIMIT: usize = 512 * 1024;
/// The JSON-RPC error code of an interrupted run.
pub const INTERRUPTED: i64 = autogate_proto::RUN_FAILED;
/// How long a retention lease is used for new records before the next one is granted.
const BUCKET: Duration = Duration::from_secs(3600);

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    Running,
    Done,
}

/// Whom a record answers, which decides the shape of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A manager's run: the answer is a JSON-RPC frame (records of earlier versions have no
    /// kind and are these).
    #[default]
    Manager,
    /// An operator API run with an `Idempotency-Key`: the answer is an [`HttpAnswer`].
    Api,
}

impl RecordKind {
    fn is_manager(&self) -> bool {
        *self == RecordKind::Manager
    }
}

/// The answer an API run's record keeps: the HTTP status and the JSON body, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl HttpAnswer {
    /// As kept in a record.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From a record; a record that cannot be read is the node's failure, said as such.
    pub fn decode(text: &str) -> HttpAnswer {
        serde_json::from_str(text).unwrap_or_else(|e| HttpAnswer {
            status: 500,
            body: serde_json::json!({"error": format!("the kept answer of this request cannot be read: {e}")}),
        })
    }
}

/// The record id of an API run with `Idempotency-Key` `key`: only its digest is stored, as
/// with API keys, and the prefix keeps it apart from manager run ids.
pub fn api_run_id(key: &str) -> String {
    format!("api-{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// One run's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// SHA-256 of the request's params: the same id with another request is refused.
    pub digest: String,
    /// The node that runs (ran) it.
    pub node_id: String,
    pub term: Option<u64>,
    pub state: RecordState,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The answer frame, as sent to the manager (its id is the run id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The retention lease the record is bound to (rewrites keep it).
    pub lease: Option<LeaseId>,
    #[serde(default, skip_serializing_if = "RecordKind::is_manager")]
    pub kind: RecordKind,
    /// The job an API run was queued as (distributed execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl RunRecord {
    /// Done, with `answer`, now.
    fn close(&mut self, answer: String) {
        self.state = RecordState::Done;
        self.finished_at = Some(now());
        self.answer = Some(answer);
    }
}

/// What to do with a run id.
#[derive(Debug)]
pub enum Begin {
    /// New: this node runs it, and must [`finish`](RunRecords::finish) it.
    Start(Started),
    /// It runs (here or on a live node): wait for its answer frame.
    Wait(watch::Receiver<Option<String>>),
    /// Answered already (or just found interrupted): the frame.
    Answered(String),
    /// This node may not start runs now (not active, or fenced): leave the request unanswered;
    /// the manager sends it again on the next session.
    NotNow,
}

/// What to do with an API run's key ([`RunRecords::begin_api`]).
#[derive(Debug)]
pub enum Keyed {
    /// New: this node runs (or queues) it, and must [`finish`](RunRecords::finish),
    /// [`queued`](RunRecords::queued) or [`abandon`](RunRecords::abandon) it.
    Start(Started),
    /// It runs (here or on a live node): wait for its answer. The sender may go without one
    /// (the run was queued as a job, or abandoned): then look again.
    Wait(watch::Receiver<Option<String>>),
    /// Answered already (or just found interrupted): the encoded [`HttpAnswer`].
    Answered(String),
    /// It was queued as this job: its answer is the job's.
    Job(String),
    /// A live node is queuing it as a job right now: look again shortly.
    Queuing,
    /// This node may not start runs now (not active, or fenced).
    NotNow,
}

/// What the store says about a run id (the part shared by manager and API runs).
enum Look {
    Start(Started),
    /// Running on this node.
    Here(watch::Receiver<Option<String>>),
    Answered(String),
    /// Running on another node that is alive.
    Live,
    Job(String),
    NotNow,
}

/// A run this node started.
#[derive(Debug)]
pub struct Started {
    pub run_id: String,
    revision: i64,
    // Boxed: the other outcomes of a look are small.
    record: Box<RunRecord>,
    tx: watch::Sender<Option<String>>,
}

impl Started {
    /// Where its answer frame comes.
    pub fn answer(&self) -> watch::Receiver<Option<String>> {
        self.tx.subscribe()
    }
}

/// Waits for a run's answer frame; `None` when `stop` fires first (the session ended: the
/// manager asks again, and gets it from the record).
pub async fn wait_answer(
    mut rx: watch::Receiver<Option<String>>,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<String> {
    loop {
        if let Some(frame) = rx.borrow_and_update().clone() {
            return Some(frame);
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return rx.borrow().clone();
                }
            }
            () = stop.cancelled() => return None,
        }
    }
}

/// Why a run id could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("run {0} was sent before with a different request; refusing it")]
    Mismatch(String),
    #[error("the run record store is unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Digest of a run's params, without the fields that may differ between copies of one run.
pub fn digest(params: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(params).unwrap_or_default(),
    ))
}

/// The runs this node executes, and the retention lease of new records.
#[derive(Debug, Clone)]
pub struct RunRecords {
    store: Arc<dyn Store>,
    prefix: String,
    retention: Duration,
    /// Runs started by this node and not finished: run id → its answer when it comes.
    running: Arc<Mutex<HashMap<String, watch::Receiver<Option<String>>>>>,
    /// One look at a run id at a time on this node: a copy arriving while the first creates
    /// the record must find it in `running`, not a record without an owner key (which, without
    /// HA, would read as a run whose node was lost).
    looking: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    bucket: Arc<Mutex<Option<(Instant, LeaseId)>>>,
    /// The watchers of other nodes' runs (they end when nobody waits any more).
    tasks: tokio_util::task::TaskTracker,
    /// The executions of this node's runs: they belong to the node, not to the session that
    /// asked (a session can end and the run goes on; its answer is in the record).
    exec: tokio_util::task::TaskTracker,
    /// Kills what still runs when a stop's drain is over.
    stop: tokio_util::sync::CancellationToken,
    /// Set when the node stops: new runs are left to the next active node.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Who writes: this node, and its election when HA is on (runs start only under its term,
/// and the owner key is bound to its lease).
#[derive(Debug, Clone)]
pub struct Writer {
    pub node_id: String,
    pub ha: Option<autogate_ha::HaHandle>,
}

fn now() -> String {
    autogate_jobs::model::now_rfc3339()
}

impl RunRecords {
    /// Records of `cluster_id` in `store`, kept `retention` after they were created.
    pub fn new(
        store: Arc<dyn Store>,
        cluster_id: &str,
        retention: Duration,
        tasks: tokio_util::task::TaskTracker,
    ) -> Self {
        RunRecords {
            store,
            prefix: autogate_store::cluster_prefix(cluster_id),
            retention,
            running: Arc::default(),
            looking: Arc::default(),
            bucket: Arc::default(),
            tasks,
            exec: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            draining: Arc::default(),
        }
    }

    /// Starts the execution of a run this node began; it ends with [`finish`](Self::finish).
    pub fn spawn<F>(&self, run: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.exec.spawn(run);
    }

    /// Cancelled when a stop's drain is over: what still runs is killed.
    pub fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    /// The node is stopping: runs not started yet are left to the next active node.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A stop's drain: takes no new runs, lets the running ones finish and record their
    /// answers for up to `timeout`, then kills what is left (each is answered interrupted) and
    /// waits for those answers briefly. Returns how many runs were killed.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.exec.close();
        let running = self.running();
        if running > 0 {
            tracing::info!(
                "letting {running} run(s) (of the manager, or API runs with an Idempotency-Key) finish before handing over (at most {timeout:?}, connect.server_ha_drain_timeout)"
            );
        }
        if tokio::time::timeout(timeout, self.exec.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let killed = self.running();
        tracing::warn!(
            "{killed} run(s) still running after {timeout:?} (connect.server_ha_drain_timeout): killing them; they are answered interrupted"
        );
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.exec.wait()).await;
        killed
    }

    fn key(&self, run_id: &str) -> String {
        format!("{}runs/{run_id}", self.prefix)
    }

    fn owner_key(&self, run_id: &str) -> String {
        format!("{}run-owners/{run_id}", self.prefix)
    }

    /// A transaction that rewrites `rec` only while its record is still at `revision`, on the
    /// retention lease it was created with (a plain put would detach it); with `release`, its
    /// owner key goes in the same step.
    fn rewrite(&self, rec: &RunRecord, revision: i64, release: bool) -> Txn {
        let key = self.key(&rec.run_id);
        let value = serde_json::to_vec(rec).unwrap_or_default();
        let mut ops = vec![match rec.lease {
            Some(l) => TxnOp::put_with_lease(key.clone(), value, l),
            None => TxnOp::put(key.clone(), value),
        }];
        if release {
            ops.push(TxnOp::delete(self.owner_key(&rec.run_id)));
        }
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then(ops)
    }

    /// Runs this node started and has not finished.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The retention lease for records created now (a new one every hour).
    async fn retention_lease(&self) -> Result<LeaseId, StoreError> {
        if let Some((since, lease)) = *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) {
            if since.elapsed() < BUCKET {
                return Ok(lease);
            }
        }
        let lease = self.store.grant(self.retention + BUCKET).await?;
        *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), lease));
        Ok(lease)
    }

    /// Looks at run `run_id` (request params digest `digest`) and decides what this node does
    /// with it.
    pub async fn begin(
        &self,
        run_id: &str,
        digest: &str,
        w: &Writer,
    ) -> Result<Begin, RecordError> {
        Ok(
            match self.look(RecordKind::Manager, run_id, digest, w).await? {
                Look::Start(s) => Begin::Start(s),
                Look::Here(rx) => Begin::Wait(rx),
                Look::Answered(frame) => Begin::Answered(frame),
                // A manager run never has a job (its jobs are the dispatcher's own).
                Look::Live | Look::Job(_) => Begin::Wait(self.watch_done(run_id)),
                Look::NotNow => Begin::NotNow,
            },
        )
    }

    /// [`begin`](Self::begin) for an API run with an `Idempotency-Key` (`run_id` from
    /// [`api_run_id`], `digest` of the service and the canonical body). `queued`: with
    /// distributed execution, where a run that is not done is followed through its job.
    pub async fn begin_api(
        &self,
        run_id: &str,
        digest: &str,
        w: &Writer,
        queued: bool,
    ) -> Result<Keyed, RecordError> {
        Ok(match self.look(RecordKind::Api, run_id, digest, w).await? {
            Look::Start(s) => Keyed::Start(s),
            Look::Here(rx) => Keyed::Wait(rx),
            Look::Answered(answer) => Keyed::Answered(answer),
            Look::Job(job) => Keyed::Job(job),
            // Being queued: its job id comes in a moment, and the record's watch below only
            // ends with an answer.
            Look::Live if queued => Keyed::Queuing,
            Look::Live => Keyed::Wait(self.watch_done(run_id)),
            Look::NotNow => Keyed::NotNow,
        })
    }

    async fn look(
        &self,
        kind: RecordKind,
        run_id: &str,
        digest: &str,
        w: &Writer,
    ) -> Result<Look, RecordError> {
        let gate = Gate::enter(&self.looking, run_id);
        let _held = gate.lock.lock().await;
        self.look_alone(kind, run_id, digest, w).await
    }

    async fn look_alone(
        &self,
        kind: RecordKind,
        run_id: &str,
        digest: &str,
        w: &Writer,
    ) -> Result<Look, RecordError> {
        if let Some(rx) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
        {
            return Ok(Look::Here(rx.clone()));
        }
        loop {
            let key = self.key(run_id);
            if let Some(kv) = self.store.get(&key).await? {
                let Ok(rec) = serde_json::from_slice::<RunRecord>(&kv.value) else {
                    return Err(RecordError::Mismatch(run_id.to_owned()));
                };
                if rec.digest != digest || rec.kind != kind {
                    return Err(RecordError::Mismatch(run_id.to_owned()));
                }
                if let (RecordState::Done, Some(frame)) = (rec.state, &rec.answer) {
                    return Ok(Look::Answered(frame.clone()));
                }
                if let Some(job) = &rec.job_id {
                    return Ok(Look::Job(job.clone()));
                }
                if self.store.get(&self.owner_key(run_id)).await?.is_some() {
                    return Ok(Look::Live);
                }
                // Its node is gone and so is its answer.
                match self.interrupt(rec, kv.mod_revision).await? {
                    Some(frame) => return Ok(Look::Answered(frame)),
                    None => continue,
                }
            }
            let fence = w.ha.as_ref().and_then(autogate_ha::HaHandle::fence);
            let own = w.ha.as_ref().and_then(autogate_ha::HaHandle::lease);
            if w.ha.is_some() && (fence.is_none() || own.is_none()) {
                return Ok(Look::NotNow);
            }
            let lease = self.retention_lease().await?;
            let record = RunRecord {
                run_id: run_id.to_owned(),
                digest: digest.to_owned(),
                node_id: w.node_id.clone(),
                term: fence.as_ref().map(|f| f.1),
                state: RecordState::Running,
                started_at: now(),
                finished_at: None,
                answer: None,
                lease: Some(lease),
                kind,
                job_id: None,
            };
            let mut ops = vec![TxnOp::put_with_lease(
                key.clone(),
                serde_json::to_vec(&record).unwrap_or_default(),
                lease,
            )];
            if let Some(own) = own {
                ops.push(TxnOp::put_with_lease(
                    self.owner_key(run_id),
                    w.node_id.as_bytes().to_vec(),
                    own,
                ));
            }
            let txn = Txn::new()
                .when([Compare::missing(key.clone())])
                .and_then(ops);
            let resp = match &w.ha {
                Some(ha) => match ha.fenced_txn(txn).await {
                    Ok(r) => r,
                    Err(autogate_ha::FencedError::Store(e)) => return Err(e.into()),
                    // Deposed meanwhile: the next active node answers it.
                    Err(_) => return Ok(Look::NotNow),
                },
                None => self.store.txn(txn).await?,
            };
            if !resp.succeeded {
                // Created meanwhile by another copy of the request: look again.
                continue;
            }
            let revision = self.store.get(&key).await?.map_or(0, |kv| kv.mod_revision);
            let (tx, rx) = watch::channel(None);
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(run_id.to_owned(), rx);
            return Ok(Look::Start(Started {
                run_id: run_id.to_owned(),
                revision,
                record: Box::new(record),
                tx,
            }));
        }
    }

    /// Closes a record whose node is gone with `interrupted`; `None` when the record changed
    /// meanwhile (its node finished it after all: look again).
    async fn interrupt(
        &self,
        mut rec: RunRecord,
        revision: i64,
    ) -> Result<Option<String>, StoreError> {
        let message = format!(
            "interrupted: the node running it ({}) was lost; it may have partially run",
            rec.node_id
        );
        let data = serde_json::json!({"reason": "interrupted", "node_id": rec.node_id});
        let frame = match rec.kind {
            RecordKind::Manager => encode(&Frame::Response(run_failed(
                Id::String(rec.run_id.clone()),
                RpcError::new(INTERRUPTED, message).with_data(data),
            ))),
            // Not worth asking again under the same key (it would get this answer again):
            // the message says what to do instead.
            RecordKind::Api => HttpAnswer {
                status: 503,
                body: serde_json::json!({
                    "error": format!("{message}; send it with a new Idempotency-Key to run it again"),
                    "detail": data,
                }),
            }
            .encode(),
        };
        rec.close(frame.clone());
        let ok = self
            .store
            .txn(self.rewrite(&rec, revision, false))
            .await?
            .succeeded;
        if ok {
            tracing::warn!(
                "run {} was running on node {}, which was lost: answered interrupted",
                rec.run_id,
                rec.node_id
            );
        }
        Ok(ok.then_some(frame))
    }

    /// Waits for another node's run to be done: a watch on its record, and on its owner key
    /// (gone without an answer: interrupted).
    fn watch_done(&self, run_id: &str) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        let this = self.clone();
        let run_id = run_id.to_owned();
        // Ends when the answer is known or nobody waits any more (the receivers are dropped).
        self.tasks.spawn(async move {
            loop {
                let frame = this.poll_done(&run_id).await;
                if let Some(frame) = frame {
                    let _ = tx.send(Some(frame));
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                let key = this.key(&run_id);
                let owner = this.owner_key(&run_id);
                // Watch both keys; a change of either (or a broken watch) means look again.
                let watches = futures::future::join(
                    this.store.watch(&key, None),
                    this.store.watch(&owner, None),
                )
                .await;
                match watches {
                    (Ok(mut a), Ok(mut b)) => {
                        // Looked at after the watches began: nothing is missed in between.
                        if let Some(frame) = this.poll_done(&run_id).await {
                            let _ = tx.send(Some(frame));
                            return;
                        }
                        tokio::select! {
                            _ = a.next() => {}
                            _ = b.next() => {}
                            () = tx.closed() => return,
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        rx
    }

    /// The answer of `run_id` when it is done, or interrupted (its owner gone).
    async fn poll_done(&self, run_id: &str) -> Option<String> {
        let kv = self.store.get(&self.key(run_id)).await.ok()??;
        let rec: RunRecord = serde_json::from_slice(&kv.value).ok()?;
        if let (RecordState::Done, Some(frame)) = (&rec.state, &rec.answer) {
            return Some(frame.clone());
        }
        if rec.job_id.is_some() {
            // Its job outlives the node that queued it: not interrupted, just not done yet.
            return None;
        }
        if self
            .store
            .get(&self.owner_key(run_id))
            .await
            .ok()?
            .is_none()
        {
            return self.interrupt(rec, kv.mod_revision).await.ok()?;
        }
        None
    }

    /// Records the answer of a run this node started and tells everyone waiting. The write is
    /// tried again while the store fails (bounded): a run that ran must not be left looking
    /// interrupted if it can be helped.
    pub async fn finish(&self, started: Started, frame: String) {
        let Started {
            run_id,
            revision,
            mut record,
            tx,
        } = started;
        record.close(frame.clone());
        let txn = self.rewrite(&record, revision, true);
        let mut delay = Duration::from_millis(100);
        for attempt in 0..8 {
            match self.store.txn(txn.clone()).await {
                Ok(r) if r.succeeded => break,
                Ok(_) => {
                    // Closed by another node as interrupted (this node looked dead): that
                    // answer stands; the log says what really happened.
                    tracing::warn!(
                        "run {run_id} finished here after another node had answered it interrupted"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot record the answer of run {run_id} (attempt {}): {e}",
                        attempt + 1
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        let _ = tx.send(Some(frame));
    }

    /// An API run this node started was queued as job `job`: the record names it, so every
    /// repeat follows the job (which outlives this node); the owner key goes, as the job is
    /// what is alive now. Callers waiting here are let go to look again.
    pub async fn queued(&self, started: Started, job: &str) -> Result<(), StoreError> {
        let Started {
            run_id,
            revision,
            mut record,
            tx,
        } = started;
        record.job_id = Some(job.to_owned());
        let result = self.store.txn(self.rewrite(&record, revision, true)).await;
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        drop(tx);
        match result {
            Ok(r) if !r.succeeded => {
                tracing::warn!("run {run_id} was queued as job {job} after another node had answered it interrupted");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A run this node started did not start after all, and asking again may succeed (the
    /// store or the dispatcher was unavailable): its record goes, so the same key runs it then.
    pub async fn abandon(&self, started: Started) {
        let Started {
            run_id,
            revision,
            tx,
            ..
        } = started;
        let key = self.key(&run_id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key), TxnOp::delete(self.owner_key(&run_id))]);
        if let Err(e) = self.store.txn(txn).await {
            tracing::warn!("cannot remove the record of run {run_id}, which did not start: {e}");
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        drop(tx);
    }

    /// Keeps the answer of a run that was queued as a job, by whoever saw the job end first:
    /// the job is kept for a shorter time than the record, and the record must answer for its
    /// whole window. A record answered already keeps its answer.
    pub async fn settle(&self, run_id: &str, answer: String) {
        let key = self.key(run_id);
        let Ok(Some(kv)) = self.store.get(&key).await else {
            return;
        };
        let Ok(mut rec) = serde_json::from_slice::<RunRecord>(&kv.value) else {
            return;
        };
        if rec.state == RecordState::Done || rec.job_id.is_none() {
            return;
        }
        rec.close(answer);
        let txn = self.rewrite(&rec, kv.mod_revision, false);
        // Lost to another caller's settle, or the store failed: a later repeat settles it.
        if let Err(e) = self.store.txn(txn).await {
            tracing::debug!("cannot keep the answer of run {run_id}: {e}");
        }
    }
}

/// A turn at looking at one run id; its map entry goes with the last one waiting (also when a
/// caller goes away mid-look).
struct Gate<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    run_id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Gate<'a> {
    fn enter(map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>, run_id: &str) -> Self {
        let lock = map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(run_id.to_owned())
            .or_default()
            .clone();
        Gate {
            map,
            run_id: run_id.to_owned(),
            lock,
        }
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are only taken under this lock: the map's and this one left means nobody
        // else waits.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.run_id);
        }
    }
}

/// `frame` (an answer whose id is the run id) as the answer to request `id`.
pub fn answer_as(frame: &str, id: &Id) -> String {
    match decode(frame, usize::MAX) {
        Ok(Frame::Response(mut r)) if r.id.as_ref() != Some(id) => {
            r.id = Some(id.clone());
            encode(&Frame::Response(r))
        }
        _ => frame.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autogate_proto::run_completed;
    use serde_json::json;

    async fn records() -> RunRecords {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        RunRecords::new(
            store,
            "c1",
            Duration::from_secs(3600),
            tokio_util::task::TaskTracker::new(),
        )
    }

    fn writer(node: &str) -> Writer {
        Writer {
            node_id: node.to_owned(),
            ha: None,
        }
    }

    fn frame(run_id: &str) -> String {
        encode(&Frame::Response(run_completed(
            Id::String(run_id.to_owned()),
            json!({"stdout": "ran"}),
        )))
    }

    #[tokio::test]
    async fn a_run_id_runs_once_and_copies_get_its_answer() {
        let r = records().await;
        let Begin::Start(started) = r.begin("r-1", "d", &writer("n1")).await.unwrap() else {
            panic!("a new id starts");
        };
        let Begin::Wait(rx) = r.begin("r-1", "d", &writer("n1")).await.unwrap() else {
            panic!("a copy of a running id waits");
        };
        assert_eq!(r.running(), 1);
        r.finish(started, frame("r-1")).await;
        assert_eq!(rx.borrow().as_deref(), Some(frame("r-1").as_str()));
        assert_eq!(r.running(), 0);
        match r.begin("r-1", "d", &writer("n2")).await.unwrap() {
            Begin::Answered(f) => assert_eq!(f, frame("r-1")),
            other => panic!("a done id is answered from its record: {other:?}"),
        }
        let mismatch = r.begin("r-1", "other", &writer("n1")).await.unwrap_err();
        assert!(matches!(mismatch, RecordError::Mismatch(_)), "{mismatch}");
    }

    #[tokio::test]
    async fn a_run_whose_node_is_gone_is_answered_interrupted_once() {
        let r = records().await;
        let Begin::Start(started) = r.begin("r-2", "d", &writer("n1")).await.unwrap() else {
            panic!("a new id starts");
        };
        // Another process (this node restarted, or the next active node) sees it running with
        // no owner: the node that ran it is gone.
        let other = RunRecords::new(
            r.store.clone(),
            "c1",
            Duration::from_secs(3600),
            tokio_util::task::TaskTracker::new(),
        );
        let Begin::Answered(f) = other.begin("r-2", "d", &writer("n2")).await.unwrap() else {
            panic!("a run of a lost node is answered");
        };
        assert!(
            f.contains("interrupted") && f.contains("may have partially run"),
            "{f}"
        );
        // The late finish of the lost node does not overwrite that answer.
        r.finish(started, frame("r-2")).await;
        let Begin::Answered(again) = other.begin("r-2", "d", &writer("n2")).await.unwrap() else {
            panic!("answered");
        };
        assert_eq!(again, f);
    }

    #[tokio::test]
    async fn an_api_key_runs_once_and_its_lost_run_is_an_http_answer() {
        let r = records().await;
        let id = api_run_id("key-1");
        assert!(id.starts_with("api-") && !id.contains("key-1"), "{id}");
        let Keyed::Start(started) = r.begin_api(&id, "d", &writer("n1"), false).await.unwrap()
        else {
            panic!("a new key starts");
        };
        let other = RunRecords::new(
            r.store.clone(),
            "c1",
            Duration::from_secs(3600),
            tokio_util::task::TaskTracker::new(),
        );
        let Keyed::Answered(a) = other
            .begin_api(&id, "d", &writer("n2"), false)
            .await
            .unwrap()
        else {
            panic!("a run of a lost node is answered");
        };
        let a = HttpAnswer::decode(&a);
        assert_eq!(a.status, 503, "{a:?}");
        let msg = a.body["error"].as_str().unwrap();
        assert!(
            msg.contains("interrupted") && msg.contains("new Idempotency-Key"),
            "{msg}"
        );
        // A manager run is never answered from an API record, even under the same id.
        assert!(matches!(
            other.begin(&id, "d", &writer("n2")).await,
            Err(RecordError::Mismatch(_))
        ));
        drop(started);
    }

    #[tokio::test]
    async fn a_queued_key_follows_its_job_and_keeps_its_answer() {
        let r = records().await;
        let id = api_run_id("key-2");
        let Keyed::Start(started) = r.begin_api(&id, "d", &writer("n1"), true).await.unwrap()
        else {
            panic!("a new key starts");
        };
        let Keyed::Wait(rx) = r.begin_api(&id, "d", &writer("n1"), true).await.unwrap() else {
            panic!("a copy on the same node waits");
        };
        r.queued(started, "job-1").await.unwrap();
        // The waiter is let go without an answer, to look again.
        assert_eq!(
            wait_answer(rx, &tokio_util::sync::CancellationToken::new()).await,
            None
        );
        // Another process sees the job, not a lost run: the job outlives its node.
        let other = RunRecords::new(
            r.store.clone(),
            "c1",
            Duration::from_secs(3600),
            tokio_util::task::TaskTracker::new(),
        );
        match other
            .begin_api(&id, "d", &writer("n2"), true)
            .await
            .unwrap()
        {
            Keyed::Job(job) => assert_eq!(job, "job-1"),
            k => panic!("a queued key follows its job: {k:?}"),
        }
        let answer = HttpAnswer {
            status: 200,
            body: json!({"job_id": "job-1"}),
        };
        other.settle(&id, answer.encode()).await;
        other.settle(&id, "later".into()).await;
        match r.begin_api(&id, "d", &writer("n1"), true).await.unwrap() {
            Keyed::Answered(a) => assert_eq!(HttpAnswer::decode(&a), answer),
            k => panic!("answered from the record: {k:?}"),
        }
    }

    /// Copies arriving together on one node (no HA, so no owner key): one starts, the others
    /// wait for it. (The memory store does not yield between the record's creation and its
    /// entry in `running`; the race the gate closes shows against the embedded store, in the
    /// black-box test `api_idempotency`.)
    #[tokio::test]
    async fn copies_arriving_together_wait_for_the_one_that_starts() {
        let r = records().await;
        let id = api_run_id("key-4");
        let w = writer("n1");
        let looks =
            futures::future::join_all((0..8).map(|_| r.begin_api(&id, "d", &w, false))).await;
        let starts = looks
            .iter()
            .filter(|k| matches!(k, Ok(Keyed::Start(_))))
            .count();
        let waits = looks
            .iter()
            .filter(|k| matches!(k, Ok(Keyed::Wait(_))))
            .count();
        assert_eq!((starts, waits), (1, 7), "{looks:?}");
        assert!(r.looking.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_key_can_start_again() {
        let r = records().await;
        let id = api_run_id("key-3");
        let Keyed::Start(started) = r.begin_api(&id, "d", &writer("n1"), true).await.unwrap()
        else {
            panic!("a new key starts");
        };
        r.abandon(started).await;
        assert_eq!(r.running(), 0);
        assert!(matches!(
            r.begin_api(&id, "d", &writer("n1"), true).await.unwrap(),
            Keyed::Start(_)
        ));
    }

    #[test]
    fn a_stored_answer_takes_the_id_of_the_request_it_answers() {
        let f = frame("r-3");
        assert_eq!(answer_as(&f, &Id::String("r-3".into())), f);
        let as_seven = answer_as(&f, &Id::Number(7));
        assert!(as_seven.contains("\"id\":7"), "{as_seven}");
    }
}
