//! The active core node's side of distributed execution: turns run requests into job records,
//! feeds the [`Scheduler`] with what the store shows (runners coming and going, results
//! arriving) and writes its commands with the node's fenced transactions.
//!
//! One task owns all state; every input (submissions, watch events, ticks) goes through one
//! channel, and each batch of inputs becomes one store transaction per group of jobs, so under
//! load many jobs share a write. Nothing is notified before its write has committed.
//!
//! A new active node starts a dispatcher that adopts the store's state (see [`start`]): queued
//! jobs are queued again, assigned jobs keep their runner (or are lost with it), results that
//! arrived meanwhile are processed, and finished jobs whose requester never heard of them are
//! handed to [`Dispatcher::deliveries`] to be sent again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use autogate_automation::{Automation, AutomationError, RunRequest};
use autogate_store::{EventKind, Store, StoreError, Txn, TxnOp, TxnOpResponse, TxnResponse};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::JobMetrics;
use crate::model::{
    new_job_id, now_rfc3339, Assignment, Attempt, FailureKind, JobOutcome, JobRecord, JobState,
    Keys, Origin, RunnerRecord,
};
use crate::scheduler::{Command, Event, RunnerInfo, Scheduler};

/// Executes a write transaction with this node's fence; `Ok(false)` = refused by the fence.
pub type Writer = Arc<dyn Fn(Txn) -> BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// Largest number of operations in one transaction (etcd's default `--max-txn-ops` is 128).
const MAX_OPS: usize = 120;

/// The dispatcher's periodic inputs.
#[derive(Clone, Copy, Debug)]
enum Timer {
    /// Queue timeouts: the scheduler is told the time.
    Tick,
    /// Finished jobs past their retention are removed.
    Sweep,
}

impl Timer {
    fn period(self) -> Duration {
        match self {
            Timer::Tick => Duration::from_millis(250),
            Timer::Sweep => Duration::from_secs(30),
        }
    }

    fn input(self) -> Input {
        match self {
            Timer::Tick => Input::Tick,
            Timer::Sweep => Input::Sweep,
        }
    }
}

/// Settings of a dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    pub cluster_id: String,
    /// How long a job waits while no runner can take it.
    pub queue_timeout: Duration,
    /// How long finished jobs stay for `inspect cluster activity`.
    pub retention: Duration,
}

/// Why a job could not be submitted or followed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Automation(#[from] AutomationError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// This node stopped dispatching (it is no longer active): ask the active node, with the
    /// job id.
    #[error("this node no longer dispatches jobs (the active node changed); ask the active node for job {0}")]
    Stopped(String),
    #[error("job {0} does not exist")]
    UnknownJob(String),
}

/// A job that ended: its record and what it produced (`Completed` or `Error`).
#[derive(Debug, Clone)]
pub struct Finished {
    pub record: JobRecord,
    pub outcome: JobOutcome,
}

/// What [`Dispatcher::submit_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The job is new: it was queued.
    Queued,
    /// A job with that id exists (running, or finished): nothing was queued.
    Exists,
}

enum Input {
    /// A new job; with `once`, only if no job with its id exists (in memory or in the store).
    Submit {
        rec: Box<JobRecord>,
        once: bool,
        ack: oneshot::Sender<Result<Submitted, String>>,
    },
    Wait(String, oneshot::Sender<Finished>),
    Delivered(String),
    RunnerPut(RunnerRecord),
    RunnerGone(String),
    Result(String, Vec<u8>),
    Tick,
    Sweep,
}

/// Handle of a running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<Input>,
    store: Arc<dyn Store>,
    keys: Keys,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// A queued job `id` for `req`. Its service and inputs are checked here, before anything is
/// queued: a job that cannot run never reaches a runner.
async fn new_record(
    automation: &Automation,
    id: String,
    req: RunRequest,
    origin: Origin,
) -> Result<JobRecord, JobsError> {
    let service = automation.requested_service(&req).await?;
    automation.check_inputs(&req).await?;
    Ok(JobRecord {
        id,
        service: req.service.clone(),
        service_type: service.service_type.as_str().to_owned(),
        request: req,
        labels: service.runner_labels.clone(),
        retries: service.retries.unwrap_or(0),
        state: JobState::Queued,
        attempt: 0,
        runner: None,
        attempts: Vec::new(),
        created_at: now_rfc3339(),
        started_at: None,
        finished_at: None,
        error: None,
        error_kind: None,
        origin,
        delivered: false,
    })
}

impl Dispatcher {
    /// Submits a run of `req.service`; returns the job id and a receiver of its end.
    pub async fn submit(
        &self,
        automation: &Automation,
        req: RunRequest,
        origin: Origin,
    ) -> Result<(String, oneshot::Receiver<Finished>), JobsError> {
        let id = new_job_id();
        let record = new_record(automation, id.clone(), req, origin).await?;
        let (_, done) = self.send_submit(record, false).await?;
        Ok((id, done))
    }

    /// Submits a run as job `id` unless a job with that id exists already (a manager's run sent
    /// again after a fail-over: its id is the run's). The receiver gets the job's end either
    /// way — at once when it has ended already.
    pub async fn submit_once(
        &self,
        automation: &Automation,
        req: RunRequest,
        origin: Origin,
        id: String,
    ) -> Result<(Submitted, oneshot::Receiver<Finished>), JobsError> {
        let record = new_record(automation, id, req, origin).await?;
        self.send_submit(record, true).await
    }

    /// Hands `record` to the loop, behind a wait for its end: for a job that ended already the
    /// wait is answered from the store.
    async fn send_submit(
        &self,
        record: JobRecord,
        once: bool,
    ) -> Result<(Submitted, oneshot::Receiver<Finished>), JobsError> {
        let id = record.id.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let (ack, ack_rx) = oneshot::channel();
        let sent = self.tx.send(Input::Wait(id.clone(), done_tx)).is_ok()
            && self
                .tx
                .send(Input::Submit {
                    rec: Box::new(record),
                    once,
                    ack,
                })
                .is_ok();
        if !sent {
            return Err(JobsError::Stopped(id));
        }
        match ack_rx.await {
            Ok(Ok(submitted)) => Ok((submitted, done_rx)),
            Ok(Err(e)) => Err(JobsError::Store(StoreError::Unavailable(e))),
            Err(_) => Err(JobsError::Stopped(id)),
        }
    }

    /// Waits for a job by id (an API caller coming back after a fail-over).
    pub async fn wait(&self, job: &str) -> Result<Finished, JobsError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Wait(job.to_owned(), tx))
            .map_err(|_| JobsError::Stopped(job.to_owned()))?;
        rx.await.map_err(|_| JobsError::Stopped(job.to_owned()))
    }

    /// A job's record (any node can read it).
    pub async fn get(&self, job: &str) -> Result<Option<JobRecord>, JobsError> {
        get_record(&*self.store, &self.keys, job).await
    }

    /// Records that a manager-origin job's outcome was sent on a live session.
    pub fn mark_delivered(&self, job: &str) {
        let _ = self.tx.send(Input::Delivered(job.to_owned()));
    }

    /// Resolves when the dispatcher has stopped (its token was cancelled, or a write failed or
    /// was fenced): a node that is still active starts a new one, which adopts the store's state.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the dispatcher has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Every job record of the cluster, newest first (`inspect cluster activity`).
pub async fn list_jobs(store: &dyn Store, cluster_id: &str) -> Result<Vec<JobRecord>, StoreError> {
    let keys = Keys::new(cluster_id);
    let mut jobs: Vec<JobRecord> = store
        .list(&keys.jobs())
        .await?
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    jobs.sort_by(|a: &JobRecord, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(jobs)
}

/// Every registered runner (`get runners`).
pub async fn list_runners(
    store: &dyn Store,
    cluster_id: &str,
) -> Result<Vec<RunnerRecord>, StoreError> {
    let keys = Keys::new(cluster_id);
    Ok(store
        .list(&keys.runners())
        .await?
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// A job's record and, once it ended, its outcome (any node can read them: `GET /api/v1/jobs/{id}`).
pub async fn lookup(
    store: &dyn Store,
    cluster_id: &str,
    job: &str,
) -> Result<Option<(JobRecord, Option<JobOutcome>)>, JobsError> {
    let keys = Keys::new(cluster_id);
    let Some(rec) = get_record(store, &keys, job).await? else {
        return Ok(None);
    };
    let outcome = match rec.failure() {
        Some(failure) => Some(failure),
        None if rec.state.is_final() => read_outcome(store, &keys, job, rec.attempt).await?,
        None => None,
    };
    Ok(Some((rec, outcome)))
}

async fn get_record(
    store: &dyn Store,
    keys: &Keys,
    job: &str,
) -> Result<Option<JobRecord>, JobsError> {
    Ok(store
        .get(&keys.job(job))
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// Reads the outcome of `attempt` from its chunks, when all are there.
async fn read_outcome(
    store: &dyn Store,
    keys: &Keys,
    job: &str,
    attempt: u32,
) -> Result<Option<JobOutcome>, StoreError> {
    let mut asm = Assembler::default();
    for kv in store.list(&keys.result_attempt(job, attempt)).await? {
        if let Some(done) = asm.add(keys, &kv.key, kv.value) {
            return Ok(Some(done.2));
        }
    }
    Ok(None)
}

/// Collects result chunks until an attempt's outcome is complete.
#[derive(Default)]
struct Assembler {
    parts: HashMap<(String, u32), BTreeMap<usize, Vec<u8>>>,
}

impl Assembler {
    fn add(&mut self, keys: &Keys, key: &str, value: Vec<u8>) -> Option<(String, u32, JobOutcome)> {
        let (job, attempt, part, total) = keys.parse_result_part(key)?;
        let entry = self.parts.entry((job.clone(), attempt)).or_default();
        entry.insert(part, value);
        if entry.len() < total {
            return None;
        }
        let bytes: Vec<u8> = self
            .parts
            .remove(&(job.clone(), attempt))?
            .into_values()
            .flatten()
            .collect();
        let outcome = serde_json::from_slice(&bytes).unwrap_or_else(|e| JobOutcome::Error {
            kind: FailureKind::ServiceFailed,
            message: format!("the runner's result for job {job} is unreadable: {e}"),
        });
        Some((job, attempt, outcome))
    }
}

/// Starts dispatching for as long as `token` lives (the node's leadership). Adopts what the
/// store holds first. Returns the handle and a receiver of manager-origin outcomes to deliver.
///
/// The dispatcher's tasks (its loop, two watches, two timers) are spawned on `tracker`; they
/// all end soon after `token` is cancelled, so the caller can wait for them there.
pub async fn start(
    store: Arc<dyn Store>,
    opts: DispatcherOptions,
    writer: Writer,
    token: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(Dispatcher, mpsc::UnboundedReceiver<Finished>), StoreError> {
    start_metered(store, opts, writer, JobMetrics::new(), token, tracker).await
}

/// [`start`], counting into `metrics` (registered by the caller).
pub async fn start_metered(
    store: Arc<dyn Store>,
    opts: DispatcherOptions,
    writer: Writer,
    metrics: JobMetrics,
    token: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(Dispatcher, mpsc::UnboundedReceiver<Finished>), StoreError> {
    let keys = Keys::new(&opts.cluster_id);
    let snap = store
        .txn(Txn::new().and_then([
            TxnOp::get_prefix(keys.runners()),
            TxnOp::get_prefix(keys.jobs()),
            TxnOp::get_prefix(keys.results()),
        ]))
        .await?;
    let lists: Vec<Vec<autogate_store::KeyValue>> = snap
        .responses
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(kvs) => kvs,
            _ => Vec::new(),
        })
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let (deliver_tx, deliver_rx) = mpsc::unbounded_channel();
    let watch_from = Some(snap.revision + 1);
    for (prefix, is_runner) in [(keys.runners(), true), (keys.results(), false)] {
        let mut stream = store.watch(&prefix, watch_from).await?;
        let (tx, token, keys) = (tx.clone(), token.clone(), keys.clone());
        tracker.spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = token.cancelled() => return,
                    ev = stream.next() => ev,
                };
                let input = match ev {
                    Some(Ok(ev)) => match (is_runner, ev.kind) {
                        (true, EventKind::Put) => match serde_json::from_slice(&ev.kv.value) {
                            Ok(r) => Input::RunnerPut(r),
                            Err(_) => continue,
                        },
                        (true, EventKind::Delete) => {
                            match keys.strip(&keys.runners(), &ev.kv.key) {
                                Some(id) => Input::RunnerGone(id.to_owned()),
                                None => continue,
                            }
                        }
                        (false, EventKind::Put) => Input::Result(ev.kv.key, ev.kv.value),
                        (false, EventKind::Delete) => continue,
                    },
                    Some(Err(e)) => {
                        tracing::warn!("dispatcher watch on {prefix} failed: {e}; stopping");
                        token.cancel();
                        return;
                    }
                    None => return,
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
        });
    }
    for timer in [Timer::Tick, Timer::Sweep] {
        let (tx, token) = (tx.clone(), token.clone());
        tracker.spawn(async move {
            let mut iv = tokio::time::interval(timer.period());
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = iv.tick() => {}
                }
                if tx.send(timer.input()).is_err() {
                    return;
                }
            }
        });
    }
    let mut core = Core {
        sched: Scheduler::new(&opts.cluster_id, opts.queue_timeout, Instant::now()),
        records: HashMap::new(),
        waiters: HashMap::new(),
        asm: Assembler::default(),
        store: store.clone(),
        keys: keys.clone(),
        opts,
        writer,
        deliver: deliver_tx,
        batch: Batch::default(),
        metrics,
        submitted_at: HashMap::new(),
    };
    core.adopt(&lists).await;
    let handle = Dispatcher { tx, store, keys };
    tracker.spawn(core.run(rx, token));
    Ok((handle, deliver_rx))
}

/// Work that waits for a batch's commit (acknowledgements, deliveries).
type AfterCommit = Box<dyn FnOnce(&mut Core) + Send>;

/// Writes of one batch, grouped per job so a group is never split across transactions.
#[derive(Default)]
struct Batch {
    groups: BTreeMap<String, BTreeMap<String, TxnOp>>,
    after: Vec<AfterCommit>,
}

impl Batch {
    fn put(&mut self, job: &str, key: String, value: Vec<u8>) {
        self.groups
            .entry(job.to_owned())
            .or_default()
            .insert(key.clone(), TxnOp::put(key, value));
    }
    fn delete(&mut self, job: &str, key: String) {
        self.groups
            .entry(job.to_owned())
            .or_default()
            .insert(key.clone(), TxnOp::delete(key));
    }
    fn delete_prefix(&mut self, job: &str, prefix: String) {
        self.groups
            .entry(job.to_owned())
            .or_default()
            .insert(prefix.clone(), TxnOp::delete_prefix(prefix));
    }
}

struct Core {
    sched: Scheduler,
    /// Unfinished jobs.
    records: HashMap<String, JobRecord>,
    waiters: HashMap<String, Vec<oneshot::Sender<Finished>>>,
    asm: Assembler,
    store: Arc<dyn Store>,
    keys: Keys,
    opts: DispatcherOptions,
    writer: Writer,
    deliver: mpsc::UnboundedSender<Finished>,
    batch: Batch,
    metrics: JobMetrics,
    /// When each job submitted to this dispatcher arrived, until its first assignment.
    submitted_at: HashMap<String, Instant>,
}

impl Core {
    async fn adopt(&mut self, lists: &[Vec<autogate_store::KeyValue>]) {
        let now = Instant::now();
        let empty = Vec::new();
        let (runners, jobs, results) = (
            lists.first().unwrap_or(&empty),
            lists.get(1).unwrap_or(&empty),
            lists.get(2).unwrap_or(&empty),
        );
        for kv in runners {
            if let Ok(r) = serde_json::from_slice::<RunnerRecord>(&kv.value) {
                self.sched.handle(Event::RunnerUp(info(&r)));
            }
        }
        let mut adopted = 0usize;
        for kv in jobs {
            let Ok(rec) = serde_json::from_slice::<JobRecord>(&kv.value) else {
                continue;
            };
            if rec.state.is_final() {
                if !rec.delivered && matches!(rec.origin, Origin::Manager { .. }) {
                    let outcome = match rec.failure() {
                        Some(failure) => Some(failure),
                        None => read_outcome(&*self.store, &self.keys, &rec.id, rec.attempt)
                            .await
                            .ok()
                            .flatten(),
                    };
                    if let Some(outcome) = outcome {
                        let _ = self.deliver.send(Finished {
                            record: rec,
                            outcome,
                        });
                    }
                }
                continue;
            }
            adopted += 1;
            let retries_left = rec.retries.saturating_sub(rec.attempt.saturating_sub(1));
            let cmds = match (&rec.state, &rec.runner) {
                (JobState::Assigned, Some(runner)) => self.sched.adopt(
                    &rec.id,
                    rec.labels.clone(),
                    retries_left,
                    rec.attempt,
                    runner,
                    now,
                ),
                _ => self.sched.adopt_queued(
                    &rec.id,
                    rec.labels.clone(),
                    retries_left,
                    rec.attempt,
                    now,
                ),
            };
            self.records.insert(rec.id.clone(), rec);
            self.apply(cmds);
        }
        for kv in results {
            if let Some(done) = self.asm.add(&self.keys, &kv.key, kv.value.clone()) {
                self.outcome(done);
            }
        }
        if adopted > 0 {
            tracing::info!("adopted {adopted} unfinished job(s) from the store");
        }
        self.flush().await;
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>, token: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = token.cancelled() => break,
                m = rx.recv() => match m { Some(m) => m, None => break },
            };
            self.input(first).await;
            // Everything already waiting joins this batch.
            let mut n = 0;
            while n < 512 {
                match rx.try_recv() {
                    Ok(m) => self.input(m).await,
                    Err(_) => break,
                }
                n += 1;
            }
            if !self.flush().await {
                tracing::warn!("dispatcher writes refused by the fence: this node is no longer active; stopping");
                break;
            }
        }
        // Waiters learn that this node stopped (their receivers error out).
        self.waiters.clear();
    }

    /// Queues a new job; `queued` runs once its record is written (with the batch).
    fn queue(&mut self, rec: JobRecord, queued: impl FnOnce() + Send + 'static) {
        let job = rec.id.clone();
        self.batch.put(&job, self.keys.job(&job), encode(&rec));
        let labels = rec.labels.clone();
        let retries = rec.retries;
        self.records.insert(job.clone(), rec);
        self.submitted_at.insert(job.clone(), Instant::now());
        let cmds = self.sched.handle(Event::Submitted {
            job,
            labels,
            retries,
            now: Instant::now(),
        });
        self.apply(cmds);
        self.batch.after.push(Box::new(move |core: &mut Core| {
            core.metrics.submitted();
            queued();
        }));
    }

    async fn input(&mut self, m: Input) {
        match m {
            Input::Submit { rec, once, ack } => {
                let job = rec.id.clone();
                let known = once
                    && (self.records.contains_key(&job)
                        || self.batch.groups.contains_key(&job)
                        || match get_record(&*self.store, &self.keys, &job).await {
                            Ok(found) => found.is_some(),
                            Err(e) => {
                                let _ = ack.send(Err(e.to_string()));
                                return;
                            }
                        });
                if known {
                    let _ = ack.send(Ok(Submitted::Exists));
                    return;
                }
                self.queue(*rec, move || {
                    let _ = ack.send(Ok(Submitted::Queued));
                });
            }
            Input::Wait(job, reply) => {
                if self.records.contains_key(&job)
                    || !self.batch.groups.is_empty() && self.batch.groups.contains_key(&job)
                {
                    self.waiters.entry(job).or_default().push(reply);
                    return;
                }
                // Not pending here: finished already, or submitted in this very batch.
                match get_record(&*self.store, &self.keys, &job).await {
                    Ok(Some(rec)) if rec.state.is_final() => {
                        let outcome = match rec.failure() {
                            Some(failure) => Some(failure),
                            None => read_outcome(&*self.store, &self.keys, &job, rec.attempt)
                                .await
                                .ok()
                                .flatten(),
                        };
                        if let Some(outcome) = outcome {
                            let _ = reply.send(Finished {
                                record: rec,
                                outcome,
                            });
                        }
                    }
                    _ => self.waiters.entry(job).or_default().push(reply),
                }
            }
            Input::Delivered(job) => {
                if let Ok(Some(mut rec)) = get_record(&*self.store, &self.keys, &job).await {
                    if !rec.delivered {
                        rec.delivered = true;
                        self.batch.put(&job, self.keys.job(&job), encode(&rec));
                    }
                }
            }
            Input::RunnerPut(r) => {
                let cmds = self.sched.handle(Event::RunnerUp(info(&r)));
                self.apply(cmds);
            }
            Input::RunnerGone(id) => {
                tracing::info!(runner = %id, "runner left the cluster");
                // A runner writes its outcomes (results, hand-backs) before its lease ends, but
                // the two watches do not order their events: read them now so that a job that
                // finished or was handed back is not taken for lost.
                let mine: Vec<(String, u32)> = self
                    .records
                    .values()
                    .filter(|r| r.state == JobState::Assigned && r.runner.as_deref() == Some(&id))
                    .map(|r| (r.id.clone(), r.attempt))
                    .collect();
                for (job, attempt) in mine {
                    if let Ok(Some(outcome)) =
                        read_outcome(&*self.store, &self.keys, &job, attempt).await
                    {
                        self.outcome((job, attempt, outcome));
                    }
                }
                let cmds = self.sched.handle(Event::RunnerGone { id });
                self.apply(cmds);
            }
            Input::Result(key, value) => {
                if let Some(done) = self.asm.add(&self.keys, &key, value) {
                    self.outcome(done);
                }
            }
            Input::Tick => {
                let cmds = self.sched.handle(Event::Tick {
                    now: Instant::now(),
                });
                self.apply(cmds);
            }
            Input::Sweep => self.sweep().await,
        }
    }

    /// An attempt's outcome arrived.
    fn outcome(&mut self, (job, attempt, outcome): (String, u32, JobOutcome)) {
        let Some(rec) = self.records.get_mut(&job) else {
            return;
        };
        if rec.attempt != attempt {
            return;
        }
        let runner = rec.runner.clone().unwrap_or_default();
        let now = now_rfc3339();
        if let Some(a) = rec.attempts.iter_mut().find(|a| a.attempt == attempt) {
            a.ended_at = Some(now.clone());
        }
        match outcome {
            JobOutcome::Released => {
                if let Some(a) = rec.attempts.iter_mut().find(|a| a.attempt == attempt) {
                    a.outcome = Some("released".into());
                }
                rec.state = JobState::Queued;
                self.batch.delete(&job, self.keys.assignment(&runner, &job));
                self.batch.delete(&job, self.keys.claim(&job));
                let rec = rec.clone();
                self.batch.put(&job, self.keys.job(&job), encode(&rec));
                self.metrics.requeued();
                let cmds = self.sched.handle(Event::Released { job, attempt });
                self.apply(cmds);
            }
            outcome => {
                let (state, label) = match &outcome {
                    JobOutcome::Completed { .. } => (JobState::Completed, "completed".to_owned()),
                    JobOutcome::Error { message, .. } => {
                        (JobState::Failed, format!("failed: {message}"))
                    }
                    JobOutcome::Released => (JobState::Queued, String::new()),
                };
                if let Some(a) = rec.attempts.iter_mut().find(|a| a.attempt == attempt) {
                    a.outcome = Some(label);
                }
                rec.state = state;
                rec.finished_at = Some(now);
                if let JobOutcome::Error { kind, message } = &outcome {
                    rec.error = Some(message.clone());
                    rec.error_kind = Some(*kind);
                }
                let rec = rec.clone();
                self.batch.put(&job, self.keys.job(&job), encode(&rec));
                self.batch.delete(&job, self.keys.assignment(&runner, &job));
                self.batch.delete(&job, self.keys.claim(&job));
                self.records.remove(&job);
                let cmds = self.sched.handle(Event::Finished {
                    job: job.clone(),
                    attempt,
                });
                self.apply(cmds);
                self.finish_after_commit(rec, outcome);
            }
        }
    }

    fn finish_after_commit(&mut self, record: JobRecord, outcome: JobOutcome) {
        self.batch.after.push(Box::new(move |core: &mut Core| {
            let done = Finished { record, outcome };
            core.submitted_at.remove(&done.record.id);
            core.metrics
                .finished(matches!(done.outcome, JobOutcome::Completed { .. }));
            if matches!(done.record.origin, Origin::Manager { .. }) {
                let _ = core.deliver.send(done.clone());
            }
            for w in core.waiters.remove(&done.record.id).unwrap_or_default() {
                let _ = w.send(done.clone());
            }
        }));
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Assign {
                    job,
                    runner,
                    attempt,
                } => {
                    let Some(rec) = self.records.get_mut(&job) else {
                        continue;
                    };
                    if let Some(at) = self.submitted_at.remove(&job) {
                        self.metrics.dispatched_after(at.elapsed().as_secs_f64());
                    }
                    let now = now_rfc3339();
                    rec.state = JobState::Assigned;
                    rec.attempt = attempt;
                    rec.runner = Some(runner.clone());
                    rec.started_at.get_or_insert_with(|| now.clone());
                    rec.attempts.push(Attempt {
                        attempt,
                        runner: runner.clone(),
                        assigned_at: now,
                        ended_at: None,
                        outcome: None,
                    });
                    let assignment = Assignment {
                        job: job.clone(),
                        attempt,
                        service: rec.service.clone(),
                        request: rec.request.clone(),
                    };
                    let rec = rec.clone();
                    self.batch.put(&job, self.keys.job(&job), encode(&rec));
                    self.batch.put(
                        &job,
                        self.keys.assignment(&runner, &job),
                        serde_json::to_vec(&assignment).unwrap_or_default(),
                    );
                }
                Command::Requeue {
                    job,
                    attempt,
                    reason,
                } => {
                    tracing::warn!(job = %job, attempt, "{reason}; dispatching it again");
                    self.metrics.requeued();
                    let Some(rec) = self.records.get_mut(&job) else {
                        continue;
                    };
                    let runner = rec.runner.take().unwrap_or_default();
                    if let Some(a) = rec.attempts.iter_mut().find(|a| a.attempt == attempt) {
                        a.ended_at = Some(now_rfc3339());
                        a.outcome = Some(format!("lost: {reason}"));
                    }
                    rec.state = JobState::Queued;
                    let rec = rec.clone();
                    self.batch.put(&job, self.keys.job(&job), encode(&rec));
                    self.batch.delete(&job, self.keys.assignment(&runner, &job));
                }
                Command::Fail {
                    job,
                    attempt,
                    kind,
                    reason,
                } => {
                    tracing::warn!(job = %job, "job failed: {reason}");
                    let Some(mut rec) = self.records.remove(&job) else {
                        continue;
                    };
                    if let Some(runner) = &rec.runner {
                        self.batch.delete(&job, self.keys.assignment(runner, &job));
                    }
                    let now = now_rfc3339();
                    if let Some(a) = rec.attempts.iter_mut().find(|a| a.attempt == attempt) {
                        a.ended_at = Some(now.clone());
                        a.outcome = Some(format!("lost: {reason}"));
                    }
                    rec.state = JobState::Failed;
                    rec.error = Some(reason.clone());
                    rec.error_kind = Some(kind);
                    rec.finished_at = Some(now);
                    self.batch.put(&job, self.keys.job(&job), encode(&rec));
                    self.finish_after_commit(
                        rec,
                        JobOutcome::Error {
                            kind,
                            message: reason,
                        },
                    );
                }
            }
        }
    }

    /// Writes the batch (one transaction per ≤ MAX_OPS operations, jobs never split), then
    /// runs what waited for the commit. `false` when the fence refused a write.
    async fn flush(&mut self) -> bool {
        let batch = std::mem::take(&mut self.batch);
        let mut ok = true;
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut groups = batch.groups.into_values().peekable();
        while let Some(group) = groups.next() {
            ops.extend(group.into_values());
            let next = groups.peek().map_or(0, |g| g.len());
            if groups.peek().is_none() || ops.len() + next > MAX_OPS {
                let txn = Txn::new().and_then(std::mem::take(&mut ops));
                match (self.writer)(txn).await {
                    Ok(true) => {}
                    Ok(false) => {
                        ok = false;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("dispatcher write failed: {e}");
                        ok = false;
                        break;
                    }
                }
            }
        }
        if ok {
            for f in batch.after {
                f(self);
            }
        }
        let queued = self
            .records
            .values()
            .filter(|r| r.state == JobState::Queued)
            .count();
        self.metrics.set_queued(queued);
        ok
    }

    /// Removes finished jobs past their retention, with their results.
    async fn sweep(&mut self) {
        let Ok(kvs) = self.store.list(&self.keys.jobs()).await else {
            return;
        };
        let cutoff = time::OffsetDateTime::now_utc()
            - time::Duration::try_from(self.opts.retention).unwrap_or(time::Duration::MINUTE);
        for kv in kvs {
            let Ok(rec) = serde_json::from_slice::<JobRecord>(&kv.value) else {
                continue;
            };
            let old = rec
                .finished_at
                .as_deref()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|t| t < cutoff);
            if rec.state.is_final() && old {
                self.batch.delete(&rec.id, self.keys.job(&rec.id));
                self.batch
                    .delete_prefix(&rec.id, self.keys.results_of(&rec.id));
            }
        }
    }
}

fn info(r: &RunnerRecord) -> RunnerInfo {
    RunnerInfo {
        id: r.node_id.clone(),
        capacity: r.capacity,
        labels: r.labels.clone(),
        draining: r.draining,
    }
}

fn encode(rec: &JobRecord) -> Vec<u8> {
    serde_json::to_vec(rec).unwrap_or_default()
}

/// A [`Writer`] without fencing (a cluster without HA has one core node).
pub fn plain_writer(store: Arc<dyn Store>) -> Writer {
    Arc::new(move |txn: Txn| {
        let store = store.clone();
        Box::pin(async move {
            store
                .txn(txn)
                .await
                .map(|r: TxnResponse| r.succeeded)
                .map_err(|e| e.to_string())
        })
    })
}
