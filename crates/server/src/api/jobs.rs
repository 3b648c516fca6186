//! Jobs of distributed execution: `GET /api/v1/jobs/{id}` (the record, and the result or error
//! once it ended), and the answers shared with the runs that submit them.

use autogate_jobs::{JobOutcome, JobsError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::{ApiError, ApiResult, ApiState};

/// How long a run waits for the dispatcher of a node that has just become active.
pub(super) const DISPATCHER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The dispatcher stopped while the caller waited: another node is active now.
pub(super) fn moved(job: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the job is still known to the cluster but this node stopped dispatching (the active node changed); ask again with GET /api/v1/jobs/{job}?wait=true"),
    )
    .with_job(job)
}

pub(super) fn jobs_error(e: JobsError) -> ApiError {
    match e {
        JobsError::Automation(e) => ApiError::from(e),
        JobsError::Stopped(job) => moved(&job),
        JobsError::UnknownJob(job) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("job {job} does not exist"))
        }
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct JobQuery {
    /// Wait for the job's end (on the active node: a standby forwards the request).
    #[param(default = false)]
    wait: bool,
}

/// `GET /api/v1/jobs/{id}`: the record, plus `result` or `error` once it ended. `wait=true`
/// waits for the end on the active node (a standby forwards it there).
pub(super) async fn job(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("job query: {}", e.body_text()),
            )
            .into_response()
        }
    };
    let req = if q.wait {
        match s.forwarder.forward(&s.node, req).await {
            Ok(answer) => return answer,
            Err(crate::forward::Local(req)) => req,
        }
    } else {
        req
    };
    drop(req);
    match job_view(&s, &id, q.wait).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn job_view(s: &ApiState, id: &str, wait: bool) -> ApiResult<Value> {
    let cid = &s.node.config.application.cluster_id;
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, format!("job {id} does not exist"));
    let (mut record, mut outcome) = autogate_jobs::lookup(&*s.node.store, cid, id)
        .await
        .map_err(jobs_error)?
        .ok_or_else(unknown)?;
    if wait && !record.state.is_final() {
        let dispatcher = s
            .node
            .jobs
            .wait_current(DISPATCHER_WAIT)
            .await
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node does not dispatch jobs now (no active node, or it is starting); retry",
                )
                .with_job(id)
            })?;
        let done = dispatcher.wait(id).await.map_err(jobs_error)?;
        record = done.record;
        outcome = Some(done.outcome);
    }
    let mut v = serde_json::to_value(&record).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        match outcome {
            Some(JobOutcome::Completed { result }) => {
                m.insert("result".into(), json!(result));
            }
            Some(JobOutcome::Error { message, .. }) => {
                m.insert("error".into(), json!(message));
            }
            _ => {}
        }
    }
    Ok(v)
}
