//! Service runs: `POST /api/v1/services/{name}/run` (in-process, or as a job with distributed
//! execution; once per `Idempotency-Key`, see [`super::keyed`]) and the inputs a service
//! expects.

use autogate_automation::api_types::{RunResponse, RunStatus};
use autogate_automation::{RunRequest, ServiceInfo};
use autogate_exec::{Inputs, ServiceType, TofuAction};
use autogate_jobs::model::FailureKind;
use autogate_jobs::JobOutcome;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::jobs::{jobs_error, moved, DISPATCHER_WAIT};
use super::{ApiError, ApiResult, ApiState};

/// The body of a run: a run request without the service, which the path names.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(as = RunRequest)]
pub(super) struct RunBody {
    /// When given, the service must be of this type.
    #[serde(rename = "type")]
    service_type: Option<ServiceType>,
    /// The inputs, checked against the service's decorator.
    #[schema(value_type = Object)]
    inputs: Inputs,
    /// `k=v` strings, coerced to the decorator's types and laid over `inputs`.
    set: Vec<String>,
    /// opentofu-plan: apply (default) or destroy.
    action: Option<TofuAction>,
    /// opentofu-plan: the state to start from.
    state: Option<Value>,
    /// Stored secrets injected for this run only (`{"name","type":"env","target"}`), over the
    /// service's own by target; admins only.
    #[schema(value_type = Vec<Object>)]
    secrets: Vec<autogate_resources::model::SecretRef>,
}

impl RunBody {
    fn into_request(self, service: String) -> RunRequest {
        // Every field named, so a field added to RunRequest fails here until the body (and with
        // it the document) has it too.
        RunRequest {
            service,
            service_type: self.service_type,
            inputs: self.inputs,
            set: self.set,
            action: self.action,
            state: self.state,
            secrets: self.secrets,
        }
    }
}

pub(super) async fn run(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let key = match super::keyed::key(&headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let (req, digest) = match request(name, body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Injecting any stored secret into a run is reading it by other means: admins only (an
    // operator runs services with the secrets their definitions name).
    if !req.secrets.is_empty() {
        if let Some(axum::Extension(c)) = &caller {
            if c.role != crate::auth::Role::Admin {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "forbidden: a run with secrets (--set-secret) needs the role admin; user {} has the role {}",
                        c.user, c.role
                    ),
                )
                .into_response();
            }
        }
    }
    if let Some(key) = key {
        return super::keyed::run(&s, &key, req, &digest).await;
    }
    run_once(&s, req).await.into_response()
}

/// The run request from the path's service and the body, and the digest of both that a
/// repeated `Idempotency-Key` must match.
fn request(name: String, body: Option<Json<Value>>) -> ApiResult<(RunRequest, String)> {
    let body = match body {
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
    let digest = super::keyed::digest(&name, &body);
    let req = serde_json::from_value::<RunBody>(Value::Object(body))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("run body: {e}")))?
        .into_request(name);
    Ok((req, digest))
}

/// A run without a key: it belongs to this request.
async fn run_once(s: &ApiState, req: RunRequest) -> ApiResult<Json<RunResponse>> {
    if s.node.jobs.enabled() {
        return run_job(s, req).await;
    }
    // Cancelled when the node shuts down, and — through the guard, dropped with this future —
    // when the client goes away before the run ends.
    let cancel = s.shutdown.child_token();
    let _guard = cancel.clone().drop_guard();
    let result = s.node.automation.run(&req, &cancel).await?;
    Ok(Json(RunResponse {
        status: RunStatus::Completed,
        result,
        job_id: None,
    }))
}

/// A run with distributed execution: queued as a job, answered when it ends. The job does not
/// stop when the caller goes away; the caller can come back with its id.
async fn run_job(s: &ApiState, req: RunRequest) -> ApiResult<Json<RunResponse>> {
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
pub(super) fn finished_answer(job: &str, outcome: JobOutcome) -> ApiResult<Json<RunResponse>> {
    match outcome {
        JobOutcome::Completed { result } => Ok(Json(RunResponse {
            status: RunStatus::Completed,
            result,
            job_id: Some(job.to_owned()),
        })),
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
) -> ApiResult<Json<ServiceInfo>> {
    Ok(Json(s.node.automation.describe_inputs(&name).await?))
}
