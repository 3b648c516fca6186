//! The service side of the manager link: running services for the manager (`service.run`),
//! describing them (`services.list`) and telling the manager when they change
//! (`services.update`).
//!
//! Runs can take minutes, so they never run on the link's read loop: each one is a task whose
//! reply goes back to the loop through a queue, and every task of a session hangs off the
//! session's cancellation token, which fires when the session ends or the node shuts down (a
//! run nobody can receive the answer of is killed, not left behind). A `timeout_ms` sent by the
//! manager cancels the run when the manager stops waiting.
//!
//! With distributed execution a run is a job: the task only submits it (inputs are checked
//! first, so a bad request is answered at once), and the answer is sent when the job ends —
//! on this session, or on the cluster's next one when this one ends first (see
//! [`crate::dispatch`]). The job runs on a runner and does not stop with the session.
//!
//! Everything sent is kept under the frame limit the manager announced in its `hello` answer:
//! a larger frame would make the manager close the session (1009). Long stdout/stderr keep
//! their end (where the outcome and the errors usually are) and say how much was cut; a catalog
//! too large for one frame is cut at the end and marked `truncated`.

use std::sync::Arc;
use std::time::Duration;

use autogate_automation::{AutomationError, ErrorClass, RunRequest, ServiceInfo};
use autogate_proto::{
    encode, run_completed, run_failed, violations_data, Frame, Id, Request, Response, RpcError,
    ServiceEntry, ServiceRun, ServicesUpdate, INVALID_PARAMS, NOT_ALLOWED, RUN_FAILED,
    SERVICE_NOT_FOUND, TIMED_OUT, UNAVAILABLE,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::run_records::{answer_as, Begin};
use crate::Node;

/// Runs one session executes at once; more are answered "busy" rather than queued without
/// bound.
pub const MAX_CONCURRENT_RUNS: usize = 64;
/// Catalog changes closer together than this are announced once.
pub const ANNOUNCE_DEBOUNCE: Duration = Duration::from_millis(100);
/// Retry delay after the catalog or its watch failed (store unavailable).
const RETRY: Duration = Duration::from_secs(1);
/// Room left in a frame for the truncation notes and the JSON around the streams.
const FRAME_SLACK: usize = 512;

/// Frames produced off the read loop (run results, catalog updates), in the order to send.
pub type Outbox = mpsc::Sender<String>;

/// What the service side of one session shares between its tasks.
#[derive(Debug, Clone)]
pub struct SessionServices {
    node: Node,
    /// The manager's frame limit.
    limit: usize,
    out: Outbox,
    /// Cancelled when the session ends: stops runs and the catalog watch.
    session: CancellationToken,
    runs: Arc<Semaphore>,
    /// Every task of the session (runs, catalog announcements, replies): the session waits for
    /// them in [`finish`](Self::finish) once it has cancelled them.
    tasks: TaskTracker,
}

impl SessionServices {
    /// The service side of a session whose frames go to `out`, each at most `limit` bytes.
    pub fn new(node: Node, limit: usize, out: Outbox, session: CancellationToken) -> Self {
        SessionServices {
            node,
            limit,
            out,
            session,
            runs: Arc::new(Semaphore::new(MAX_CONCURRENT_RUNS)),
            tasks: TaskTracker::new(),
        }
    }

    /// Ends the session's service side: cancels its runs and its catalog watch, and waits for
    /// their tasks, at most `grace` (a run's process is killed on cancellation, so this is
    /// quick unless a process ignores it). `false` when tasks were still running at the deadline.
    pub async fn finish(&self, grace: Duration) -> bool {
        self.session.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Starts announcing the catalog: once now, then after every change.
    pub fn start_announcing(&self) {
        let this = self.clone();
        self.tasks.spawn(async move { this.announce().await });
    }

    /// Handles `service.run` and `services.list` off the read loop; their answers arrive
    /// through the outbox. `false` when `req` is not one of them.
    pub fn dispatch(&self, req: &Request) -> bool {
        match req.method.as_str() {
            autogate_proto::method::SERVICE_RUN => {
                tracing::debug!(id = ?req.id, "service.run from the manager");
                let Ok(permit) = self.runs.clone().try_acquire_owned() else {
                    let busy = RpcError::new(
                        UNAVAILABLE,
                        format!(
                            "this gateway is already running {MAX_CONCURRENT_RUNS} services for the manager; retry later"
                        ),
                    );
                    self.send_later(encode(&Frame::Response(run_failed(req.id.clone(), busy))));
                    return true;
                };
                let this = self.clone();
                let (id, params) = (req.id.clone(), req.params.clone());
                self.tasks.spawn(async move {
                    let reply = if this.node.jobs.enabled() {
                        this.submit(id, params.as_ref()).await
                    } else {
                        this.run(id, params.as_ref()).await
                    };
                    drop(permit);
                    if let Some(reply) = reply {
                        let _ = this.out.send(reply).await;
                    }
                });
                true
            }
            autogate_proto::method::SERVICES_LIST => {
                let this = self.clone();
                let id = req.id.clone();
                self.tasks.spawn(async move {
                    let reply = match this.node.automation.catalog().await {
                        Ok(c) => Response::success(id, fit_catalog(entries(c), this.limit)),
                        Err(e) => Response::error(Some(id), rpc_error(&e)),
                    };
                    let _ = this.out.send(encode(&Frame::Response(reply))).await;
                });
                true
            }
            _ => false,
        }
    }

    fn send_later(&self, text: String) {
        let out = self.out.clone();
        self.tasks.spawn(async move {
            let _ = out.send(text).await;
        });
    }

    /// One run, start to reply frame; `None` when this node leaves the request unanswered
    /// (it is stopping, or no longer active: the manager sends it again on the next session).
    ///
    /// A run with a `run_id` (every run of a current manager) goes through the node's run
    /// records: it executes once whatever copies of it arrive, outlives this session, and its
    /// answer is kept (see [`crate::run_records`]). One without (an older manager) runs as part
    /// of this session and is killed when the session ends.
    async fn run(&self, id: Id, params: Option<&Value>) -> Option<String> {
        let run = match ServiceRun::from_params(params) {
            Ok(r) => r,
            Err(e) => return Some(encode(&Frame::Response(run_failed(id, e)))),
        };
        let req = match run_request(&run) {
            Ok(r) => r,
            Err(e) => return Some(encode(&Frame::Response(run_failed(id, e)))),
        };
        let Some(run_id) = run.run_id.clone() else {
            let cancel = self.session.child_token();
            return Some(execute(&self.node, id, &run, &req, &cancel, self.limit).await);
        };
        let records = &self.node.runs;
        if records.draining() {
            tracing::info!(service = %run.name, "not starting run {run_id} of {}: this node is stopping; the next active node runs it", run.name);
            return None;
        }
        let digest = crate::run_records::digest(params.unwrap_or(&Value::Null));
        let writer = crate::run_records::Writer {
            node_id: self.node.id.to_string(),
            ha: self.node.ha.clone(),
        };
        let mut retry = StoreRetry::new();
        let begun = loop {
            match records.begin(&run_id, &digest, &writer).await {
                Err(crate::run_records::RecordError::Store(e)) => {
                    match retry.again(&self.session, &e).await {
                        Retry::Again => continue,
                        Retry::SessionEnded => return None,
                        Retry::GiveUp => break Err(crate::run_records::RecordError::Store(e)),
                    }
                }
                other => break other,
            }
        };
        let rx = match begun {
            Err(e @ crate::run_records::RecordError::Mismatch(_)) => {
                tracing::warn!("{e}");
                let err = RpcError::new(INVALID_PARAMS, e.to_string());
                return Some(encode(&Frame::Response(run_failed(id, err))));
            }
            Err(e) => {
                // Nothing ran: saying so is true, and the caller may try again.
                let err = RpcError::new(UNAVAILABLE, e.to_string());
                return Some(encode(&Frame::Response(run_failed(id, err))));
            }
            Ok(Begin::NotNow) => return None,
            Ok(Begin::Answered(frame)) => return Some(answer_as(&frame, &id)),
            Ok(Begin::Wait(rx)) => rx,
            Ok(Begin::Start(started)) => {
                let rx = started.answer();
                let node = self.node.clone();
                let limit = self.limit.min(crate::run_records::RECORD_FRAME_LIMIT);
                let stop = records.stop_token();
                records.spawn(async move {
                    let own = Id::String(started.run_id.clone());
                    let frame = execute(&node, own, &run, &req, &stop, limit).await;
                    node.runs.finish(started, frame).await;
                });
                rx
            }
        };
        let frame = crate::run_records::wait_answer(rx, &self.session).await?;
        Some(answer_as(&frame, &id))
    }

    /// Queues a run as a job (distributed execution). The reply frame when it could not be
    /// queued; `None` when it was: its answer follows when the job ends.
    async fn submit(&self, id: Id, params: Option<&Value>) -> Option<String> {
        let fail = |id: Id, e: RpcError| Some(encode(&Frame::Response(run_failed(id, e))));
        let run = match ServiceRun::from_params(params) {
            Ok(r) => r,
            Err(e) => return fail(id, e),
        };
        let req = match run_request(&run) {
            Ok(r) => r,
            Err(e) => return fail(id, e),
        };
        let Some(dispatcher) = self.node.jobs.wait_current(DISPATCHER_WAIT).await else {
            return fail(
                id,
                RpcError::new(
                    UNAVAILABLE,
                    "this node does not dispatch jobs now (it is not the active node, or it is starting); retry",
                ),
            );
        };
        let origin = autogate_jobs::Origin::Manager {
            request_id: id_value(&id),
        };
        if let Some(run_id) = &run.run_id {
            // The job's id is the run's: a copy of the run sent again (a fail-over, a manager
            // restart) finds the job instead of queuing another.
            let Ok(uuid) = uuid::Uuid::parse_str(run_id) else {
                return fail(
                    id,
                    RpcError::invalid_params(format!("run_id {run_id:?} is not a UUID")),
                );
            };
            let job = uuid.simple().to_string();
            let mut retry = StoreRetry::new();
            let submitted = loop {
                match dispatcher
                    .submit_once(
                        &self.node.automation,
                        req.clone(),
                        origin.clone(),
                        job.clone(),
                    )
                    .await
                {
                    Err(autogate_jobs::JobsError::Store(e)) => {
                        match retry.again(&self.session, &e).await {
                            Retry::Again => continue,
                            Retry::SessionEnded => return None,
                            Retry::GiveUp => break Err(autogate_jobs::JobsError::Store(e)),
                        }
                    }
                    other => break other,
                }
            };
            return match submitted {
                Ok((autogate_jobs::Submitted::Queued, _done)) => {
                    tracing::info!(service = %run.name, job = %job, "queued service {} for the manager as job {job}", run.name);
                    None
                }
                Ok((autogate_jobs::Submitted::Exists, mut done)) => {
                    // Ended already: answer now (the manager may have lost the first answer;
                    // a repeat of one it has is ignored). Still running: its answer comes
                    // when it ends, with the run's id.
                    tracing::info!(job = %job, "run {run_id} is job {job} already; not queuing it again");
                    done.try_recv()
                        .ok()
                        .and_then(|finished| job_reply(&finished, self.limit))
                }
                Err(autogate_jobs::JobsError::Automation(e)) => fail(id, rpc_error(&e)),
                Err(e) => fail(id, RpcError::new(UNAVAILABLE, e.to_string())),
            };
        }
        match dispatcher.submit(&self.node.automation, req, origin).await {
            Ok((job, _done)) => {
                // The outcome comes through the dispatcher's deliveries, whichever session is
                // up when it ends.
                tracing::info!(service = %run.name, job = %job, "queued service {} for the manager as job {job}", run.name);
                None
            }
            Err(autogate_jobs::JobsError::Automation(e)) => fail(id, rpc_error(&e)),
            Err(e) => fail(id, RpcError::new(UNAVAILABLE, e.to_string())),
        }
    }

    /// Sends the catalog after `hello` and after each change of the resources, until the
    /// session ends.
    async fn announce(&self) {
        // One prefix covers every resource key (`…/resources/<kind>/<name>`) and the generation
        // key every write rewrites (`…/resources-generation`), whichever of the two a writer
        // touches.
        let prefix = self.node.automation.resources().prefix();
        let key = prefix.trim_end_matches('/').to_owned();
        let mut last: Option<Vec<ServiceInfo>> = None;
        loop {
            // Watch first, then read: a change between the two is seen by the watch.
            let mut watch = match self.node.store.watch(&key, None).await {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("cannot watch the service catalog: {e}; retrying");
                    None
                }
            };
            if !self.refresh(&mut last).await {
                return;
            }
            let Some(w) = watch.as_mut() else {
                if !self.pause(RETRY).await {
                    return;
                }
                continue;
            };
            loop {
                let event = tokio::select! {
                    _ = self.session.cancelled() => return,
                    e = w.next() => e,
                };
                match event {
                    Some(Ok(_)) => {
                        // Coalesce a burst of writes (an import writes many resources) into
                        // one announcement.
                        let quiet = tokio::time::sleep(ANNOUNCE_DEBOUNCE);
                        tokio::pin!(quiet);
                        let mut broken = false;
                        loop {
                            tokio::select! {
                                _ = self.session.cancelled() => return,
                                _ = &mut quiet => break,
                                e = w.next() => match e {
                                    Some(Ok(_)) => {}
                                    _ => { broken = true; break; }
                                },
                            }
                        }
                        if !self.refresh(&mut last).await {
                            return;
                        }
                        if broken {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!("catalog watch ended: {e}; watching again");
                        break;
                    }
                    None => break,
                }
            }
            if !self.pause(RETRY).await {
                return;
            }
        }
    }

    /// Reads the catalog (retrying while the store fails) and sends it when it differs from
    /// what was sent last. `false` when the session ended.
    async fn refresh(&self, last: &mut Option<Vec<ServiceInfo>>) -> bool {
        let mut failures = 0u32;
        let catalog = loop {
            match self.node.automation.catalog().await {
                Ok(c) => break c,
                Err(e) => {
                    // Once as a warning: the store being down is reported elsewhere too, and a
                    // line a second would drown the log.
                    if failures == 0 {
                        tracing::warn!("cannot read the service catalog: {e}; retrying");
                    } else {
                        tracing::debug!("cannot read the service catalog: {e}; retrying");
                    }
                    failures = failures.saturating_add(1);
                    if !self.pause(RETRY).await {
                        return false;
                    }
                }
            }
        };
        if last.as_ref() == Some(&catalog) {
            return true;
        }
        let update = fit_update(entries(catalog.clone()), self.limit);
        let text = encode(&Frame::Notification(update.to_notification()));
        tracing::debug!(
            "announcing {} service(s) to the manager",
            update.services.len()
        );
        if self.out.send(text).await.is_err() {
            return false;
        }
        *last = Some(catalog);
        true
    }

    /// Sleeps unless the session ends first (`false`).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.session.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Executes one run on this node: the reply frame for request `id`, under `limit` bytes.
/// `cancel` kills the program (the run's own `timeout_ms` does too, answered as a timeout);
/// a cancellation that is not the run's deadline is answered interrupted.
async fn execute(
    node: &Node,
    id: Id,
    run: &ServiceRun,
    req: &RunRequest,
    cancel: &CancellationToken,
    limit: usize,
) -> String {
    tracing::info!(service = %run.name, "running service {} for the manager", run.name);
    let own = cancel.child_token();
    let deadline = run.timeout_ms.map(Duration::from_millis);
    let fut = node.automation.run(req, &own);
    tokio::pin!(fut);
    let mut timed_out = false;
    let outcome = match deadline {
        None => fut.await,
        Some(d) => tokio::select! {
            r = &mut fut => r,
            _ = tokio::time::sleep(d) => {
                // The manager stops waiting now: stop the program too, and let the engine
                // clean up before answering.
                timed_out = true;
                own.cancel();
                fut.await
            }
        },
    };
    match outcome {
        Ok(result) => {
            let value = serde_json::to_value(&result).unwrap_or(Value::Null);
            tracing::info!(
                service = %run.name,
                "service {} completed with return code {} in {}",
                run.name,
                value["return_code"],
                value["elapsed_time"].as_str().unwrap_or("?")
            );
            fit_run_result(id, value, limit)
        }
        Err(e) => {
            let err = if timed_out {
                RpcError::new(
                    TIMED_OUT,
                    format!(
                        "service {} did not finish within {} ms; the run was cancelled",
                        run.name,
                        deadline.map_or(0, |d| d.as_millis())
                    ),
                )
            } else if cancel.is_cancelled() {
                RpcError::new(
                    crate::run_records::INTERRUPTED,
                    format!(
                        "interrupted: the node running service {} stopped before it finished; it may have partially run",
                        run.name
                    ),
                )
                .with_data(json!({"reason": "interrupted"}))
            } else {
                rpc_error(&e)
            };
            tracing::warn!(service = %run.name, "service {} did not run: {}", run.name, err.message);
            encode(&Frame::Response(run_failed(id, err)))
        }
    }
}

/// How long a run whose record or job cannot be written yet (the store is slow or cut off) is
/// tried again before it is answered unavailable. A node cut off from the store stops acting
/// as the active node well within this (its lease TTL), which ends its session: the run is then
/// left to the next active node, which the manager sends it to.
const STORE_RETRY_FOR: Duration = Duration::from_secs(10);

enum Retry {
    Again,
    SessionEnded,
    GiveUp,
}

/// Tries again, every 250 ms, a write of a run that the store failed.
struct StoreRetry {
    until: std::time::Instant,
    logged: bool,
}

impl StoreRetry {
    fn new() -> Self {
        StoreRetry {
            until: std::time::Instant::now() + STORE_RETRY_FOR,
            logged: false,
        }
    }

    async fn again(
        &mut self,
        session: &CancellationToken,
        e: &(dyn std::fmt::Display + Sync),
    ) -> Retry {
        if std::time::Instant::now() >= self.until {
            return Retry::GiveUp;
        }
        if !self.logged {
            tracing::warn!(
                "cannot record a run yet: {e}; trying again for up to {STORE_RETRY_FOR:?}"
            );
            self.logged = true;
        }
        tokio::select! {
            () = session.cancelled() => Retry::SessionEnded,
            () = tokio::time::sleep(Duration::from_millis(250)) => Retry::Again,
        }
    }
}

/// How long a run waits for the dispatcher of a node that has just become active.
const DISPATCHER_WAIT: Duration = Duration::from_secs(10);

/// A JSON-RPC id as stored with a job.
pub fn id_value(id: &Id) -> Value {
    match id {
        Id::Number(n) => json!(n),
        Id::String(s) => json!(s),
    }
}

/// The answer to the `service.run` a finished job came from, kept under the frame limit;
/// `None` for a job that did not come from the manager.
pub fn job_reply(done: &autogate_jobs::Finished, limit: usize) -> Option<String> {
    let autogate_jobs::Origin::Manager { request_id } = &done.record.origin else {
        return None;
    };
    let id = match request_id {
        Value::Number(n) => Id::Number(n.as_i64()?),
        Value::String(s) => Id::String(s.clone()),
        _ => return None,
    };
    Some(match &done.outcome {
        autogate_jobs::JobOutcome::Completed { result } => {
            let value = serde_json::to_value(result).unwrap_or(Value::Null);
            fit_run_result(id, value, limit)
        }
        autogate_jobs::JobOutcome::Error { kind, message } => {
            use autogate_jobs::model::FailureKind;
            let err = match kind {
                // Nothing could take the job: the cluster is short of runners, not the request
                // at fault.
                FailureKind::NoRunner => RpcError::new(UNAVAILABLE, message.clone()),
                // The runner died with the job and no retry was left: like a core node lost
                // mid-run, the program may have partially run — the same answer.
                FailureKind::RunnerLost => RpcError::new(
                    crate::run_records::INTERRUPTED,
                    format!("interrupted: {message}; it may have partially run"),
                )
                .with_data(
                    json!({"reason": "interrupted", "attempts": done.record.attempts.len()}),
                ),
                FailureKind::ServiceFailed => RpcError::new(RUN_FAILED, message.clone()),
            };
            encode(&Frame::Response(run_failed(id, err)))
        }
        autogate_jobs::JobOutcome::Released => return None,
    })
}

/// The automation request for a `service.run`.
fn run_request(run: &ServiceRun) -> Result<RunRequest, RpcError> {
    let mut req = json!({ "service": run.name, "inputs": run.inputs, "set": run.set });
    if let Some(t) = &run.service_type {
        req["type"] = json!(t);
    }
    if let Some(a) = &run.action {
        req["action"] = json!(a);
    }
    if let Some(s) = &run.state {
        req["state"] = s.clone();
    }
    serde_json::from_value(req).map_err(RpcError::invalid_params)
}

/// An automation failure as the JSON-RPC error of a `status: error` reply.
pub fn rpc_error(e: &AutomationError) -> RpcError {
    let message = e.to_string();
    let code = match e.class() {
        ErrorClass::Invalid => INVALID_PARAMS,
        ErrorClass::NotFound => SERVICE_NOT_FOUND,
        ErrorClass::Forbidden => NOT_ALLOWED,
        ErrorClass::Unavailable => UNAVAILABLE,
        ErrorClass::Conflict | ErrorClass::Config | ErrorClass::Internal => RUN_FAILED,
    };
    let data = match e.detail() {
        Some(Value::Object(d)) => match d.get("violations") {
            Some(v) => violations_data(&message, v.clone()),
            None => Value::Object(d),
        },
        Some(other) => other,
        None => Value::from(message.as_str()),
    };
    RpcError::new(code, message).with_data(data)
}

fn entries(catalog: Vec<ServiceInfo>) -> Vec<ServiceEntry> {
    catalog
        .into_iter()
        .map(|s| ServiceEntry {
            name: s.name,
            service_type: s.service_type.as_str().to_owned(),
            description: s.description,
            tags: s.tags,
            repository: s.repository,
            working_directory: s.working_directory,
            decorator: s.decorator,
            schema: s.schema,
            created: s.created,
            updated: s.updated,
        })
        .collect()
}

/// The catalog as one `services.update`, cut at the end if the frame would exceed `limit`.
pub fn fit_update(services: Vec<ServiceEntry>, limit: usize) -> ServicesUpdate {
    let total = services.len();
    let len = |n: usize, services: &[ServiceEntry]| {
        let u = ServicesUpdate {
            services: services[..n].to_vec(),
            truncated: n < total,
            total: (n < total).then_some(total),
        };
        encode(&Frame::Notification(u.to_notification())).len() + FRAME_SLACK
    };
    if len(total, &services) <= limit {
        return ServicesUpdate {
            services,
            truncated: false,
            total: None,
        };
    }
    // The largest prefix that fits (the frame grows with every entry).
    let (mut lo, mut hi) = (0usize, total);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if len(mid, &services) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    tracing::warn!(
        "the service catalog ({total} services) exceeds the manager's frame limit of {limit} bytes; announcing the first {lo}"
    );
    let mut services = services;
    services.truncate(lo);
    ServicesUpdate {
        services,
        truncated: true,
        total: Some(total),
    }
}

/// `services.list` result: the same catalog as `services.update`.
fn fit_catalog(services: Vec<ServiceEntry>, limit: usize) -> Value {
    autogate_proto::to_value(&fit_update(services, limit))
}

/// The `status: completed` reply frame for a run result, its stdout/stderr shortened (keeping
/// their end) when the frame would exceed `limit`.
pub fn fit_run_result(id: Id, mut result: Value, limit: usize) -> String {
    let text = encode(&Frame::Response(run_completed(id.clone(), result.clone())));
    if text.len() <= limit {
        return text;
    }
    // stdout_json repeats stdout: the first thing to go.
    if let Value::Object(m) = &mut result {
        m.remove("stdout_json");
    }
    let stream = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let (stdout, stderr) = (stream(&result, "stdout"), stream(&result, "stderr"));
    let mut empty = result.clone();
    empty["stdout"] = json!("");
    empty["stderr"] = json!("");
    empty["truncated"] = json!(true);
    let base = encode(&Frame::Response(run_completed(id.clone(), empty.clone()))).len();
    let mut room = limit.saturating_sub(base + FRAME_SLACK);
    // Escaping can make a stream longer on the wire than in memory: shrink until it fits.
    for _ in 0..8 {
        let total = stdout.len() + stderr.len();
        let keep_out = (room * stdout.len()).checked_div(total).unwrap_or(0);
        let keep_err = room.saturating_sub(keep_out);
        let mut r = empty.clone();
        r["stdout"] = json!(keep_tail(&stdout, keep_out, limit));
        r["stderr"] = json!(keep_tail(&stderr, keep_err, limit));
        let text = encode(&Frame::Response(run_completed(id.clone(), r)));
        if text.len() <= limit {
            return text;
        }
        room /= 2;
    }
    encode(&Frame::Response(run_completed(id, empty)))
}

/// The last `keep` bytes of `s` (on a character boundary), after a note saying how much was
/// cut; `s` itself when it is short enough.
fn keep_tail(s: &str, keep: usize, limit: usize) -> String {
    if s.len() <= keep {
        return s.to_owned();
    }
    let mut start = s.len() - keep;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[first {start} bytes not sent: the manager accepts frames of at most {limit} bytes]\n{}",
        &s[start..]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            service_type: "executable".into(),
            description: "d".repeat(200),
            tags: vec![],
            repository: None,
            working_directory: None,
            decorator: None,
            schema: None,
            created: None,
            updated: None,
        }
    }

    #[test]
    fn large_results_keep_their_end_and_fit_the_frame() {
        let limit = 4096;
        let result = json!({
            "stdout": format!("{}THE END", "x".repeat(10_000)),
            "stderr": "\u{1}".repeat(3000),
            "return_code": 3, "start_time": "s", "end_time": "e", "elapsed_time": "1s",
            "stdout_json": {"big": "y".repeat(5000)},
        });
        let text = fit_run_result(Id::Number(9), result, limit);
        assert!(text.len() <= limit, "{}", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "completed");
        assert_eq!(v["result"]["return_code"], 3);
        assert_eq!(v["result"]["truncated"], true);
        assert!(v["result"].get("stdout_json").is_none());
        let out = v["result"]["stdout"].as_str().unwrap();
        assert!(out.starts_with("[first "), "{out}");
        assert!(out.ends_with("THE END"), "{out}");

        // Small results are untouched.
        let small = json!({"stdout": "hi\n", "stderr": "", "return_code": 0});
        let v: Value =
            serde_json::from_str(&fit_run_result(Id::Number(1), small.clone(), limit)).unwrap();
        assert_eq!(v["result"], small);
    }

    #[test]
    fn tails_cut_on_character_boundaries() {
        let s = "ééééé";
        let t = keep_tail(s, 3, 10);
        assert!(t.ends_with('é'));
        assert_eq!(keep_tail("abc", 5, 10), "abc");
    }

    #[test]
    fn catalogs_too_large_for_a_frame_are_cut_and_marked() {
        let all: Vec<ServiceEntry> = (0..100).map(|i| entry(&format!("s{i:03}"))).collect();
        let whole = fit_update(all.clone(), 1 << 20);
        assert!(!whole.truncated);
        assert_eq!(whole.services.len(), 100);
        let limit = 8 * 1024;
        let cut = fit_update(all, limit);
        assert!(cut.truncated);
        assert_eq!(cut.total, Some(100));
        assert!(!cut.services.is_empty() && cut.services.len() < 100);
        assert!(encode(&Frame::Notification(cut.to_notification())).len() <= limit);
    }
}
