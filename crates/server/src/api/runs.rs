//! Service runs: `POST /api/v1/services/{name}/run` (in-process, or as a job with distributed
//! execution) and the inputs a service expects.

use autogate_automation::RunRequest;
use autogate_jobs::model::FailureKind;
use autogate_jobs::JobOutcome;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::jobs::{jobs_error, moved, DISPATCHER_WAIT};
use super::{ApiError, ApiResult, ApiState};

pub(super) async fn run(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> ApiResult<Json<Value>> {
    let mut body = match body {
        Some(Json(Value::Object(m))) => m,
        Some(Json(Value::Null)) | None => Map::new(),
        Some(Json(other)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("run body must be a JSON object, not {other}"),
            ))
        }
    };
    if body.contains_key("service") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "run body: unknown field `service` (the service is named in the path)",
        ));
    }
    body.insert("service".into(), Value::String(name.clone()));
    let req: RunRequest = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("run body: {e}")))?;
    if s.node.jobs.enabled() {
        return run_job(&s, req).await;
    }
    // Cancelled when the node shuts down, and — through the guard, dropped with this future —
    // when the client goes away before the run ends.
    let cancel = s.shutdown.child_token();
    let _guard = cancel.clone().drop_guard();
    let result = s.node.automation.run(&req, &cancel).await?;
    Ok(Json(json!({ "status": "completed", "result": result })))
}

/// A run with distributed execution: queued as a job, answered when it ends. The job does not
/// stop when the caller goes away; the caller can come back with its id.
async fn run_job(s: &ApiState, req: RunRequest) -> ApiResult<Json<Value>> {
    let dispatcher = s
        .node
        .jobs
        .wait_current(DISPATCHER_WAIT)
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node does not dispatch jobs now (it is not the active node, or it is starting); retry",
            )
        })?;
    let (job, done) = dispatcher
        .submit(&s.node.automation, req, autogate_jobs::Origin::Api)
        .await
        .map_err(jobs_error)?;
    match done.await {
        Ok(done) => finished_answer(&job, done.outcome),
        Err(_) => Err(moved(&job)),
    }
}

/// The answer for a job that ended: the run's result, or its failure with the job id.
fn finished_answer(job: &str, outcome: JobOutcome) -> ApiResult<Json<Value>> {
    match outcome {
        JobOutcome::Completed { result } => Ok(Json(
            json!({ "status": "completed", "result": result, "job_id": job }),
        )),
        JobOutcome::Error { kind, message } => {
            Err(ApiError::new(failure_status(kind), message).with_job(job))
        }
        JobOutcome::Released => Err(moved(job)),
    }
}

/// The status of a job's failure: no runner to take it, or the runner died with it, is the
/// cluster's fault, not the request's, and asking again may succeed.
fn failure_status(kind: FailureKind) -> StatusCode {
    match kind {
        FailureKind::NoRunner | FailureKind::RunnerLost => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::ServiceFailed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(super) async fn inputs(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let info: autogate_automation::ServiceInfo = s.node.automation.describe_inputs(&name).await?;
    Ok(Json(json!(info)))
}
