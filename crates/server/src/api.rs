//! The operator API of a core node: HTTP/JSON under `/api/v1`, plus `/healthz`, `/readyz` and
//! `/metrics` for supervisors and Prometheus.
//!
//! Every route is declared once, in [`table`]: its method, path, whether it needs an API key,
//! whether a standby forwards it to the active node, and what the OpenAPI document says about
//! it. The router and the document (`GET /api/v1/openapi.json`) are both built from that table,
//! so neither can have a route the other lacks.
//!
//! Errors are `{"error": "<message>", "detail": {...}?}` with the status of their class:
//! invalid 422 (400 for a body that is not JSON/YAML at all), not found 404, conflict 409,
//! forbidden 403, unavailable 503, configuration and internal failures 500.

use autogate_automation::{AutomationError, ErrorClass, RunRequest};
use autogate_jobs::model::FailureKind;
use autogate_resources::model::Kind;
use autogate_resources::{ImportMode, ImportOutcome};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthError};
use crate::forward::Forwarder;
use crate::Node;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct ApiState {
    node: Node,
    auth: Auth,
    forwarder: Forwarder,
    /// Cancelled when the node shuts down: runs in flight are cancelled with it.
    shutdown: CancellationToken,
}

impl ApiState {
    pub fn new(node: Node, auth: Auth, forwarder: Forwarder, shutdown: CancellationToken) -> Self {
        ApiState {
            node,
            auth,
            forwarder,
            shutdown,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer: status plus `{"error", "detail"?}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    detail: Option<Value>,
    /// The job a distributed run's error is about (its caller can ask for it again).
    job_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            detail: None,
            job_id: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(d) = self.detail {
            body["detail"] = d;
        }
        if let Some(job) = self.job_id {
            body["job_id"] = json!(job);
        }
        (self.status, Json(body)).into_response()
    }
}

fn class_status(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorClass::NotFound => StatusCode::NOT_FOUND,
        ErrorClass::Conflict => StatusCode::CONFLICT,
        ErrorClass::Forbidden => StatusCode::FORBIDDEN,
        ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Config | ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<AutomationError> for ApiError {
    fn from(e: AutomationError) -> Self {
        let status = class_status(e.class());
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {e}");
        }
        ApiError {
            status,
            message: e.to_string(),
            detail: e.detail(),
            job_id: None,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match &e {
            AuthError::BadCredentials | AuthError::MissingKey | AuthError::Expired => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Exists(_) | AuthError::LastUser(_) => StatusCode::CONFLICT,
            AuthError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AuthError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {e}");
        }
        ApiError::new(status, e.to_string())
    }
}

/// A JSON body the handler could not take: not JSON at all is 400, JSON of the wrong shape 422.
fn body_error(what: &str, e: JsonRejection) -> ApiError {
    let status = match &e {
        JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
        JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("{what}: {}", e.body_text()))
}

fn json_body<T>(what: &str, body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| body_error(what, e))
}

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------------------------
// The route table

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No API key (health, the OpenAPI document, login, probes).
    Open,
    /// `Authorization: Bearer <key>`.
    Key,
}

/// What a route does with a standby's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// Answered by whichever node receives it (reads from the shared store, node-local state).
    Local,
    /// Sent on to the active node (writes and runs).
    Forward,
}

/// The request body a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    None,
    /// JSON, with the name of a schema in `components.schemas`.
    Json(&'static str),
    Yaml,
}

/// One route: everything the router and the OpenAPI document need.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// axum/OpenAPI path template (`/api/v1/services/{name}`).
    pub path: String,
    pub access: Access,
    pub standby: Standby,
    pub tag: &'static str,
    pub summary: String,
    pub body: RequestBody,
    /// Success status and what it returns.
    pub ok: (u16, &'static str),
    /// The error statuses worth documenting.
    pub errors: &'static [u16],
}

struct Route {
    spec: RouteSpec,
    handler: MethodRouter<ApiState>,
}

#[allow(clippy::too_many_arguments)]
fn route(
    method: &'static str,
    path: impl Into<String>,
    access: Access,
    standby: Standby,
    tag: &'static str,
    summary: impl Into<String>,
    body: RequestBody,
    ok: (u16, &'static str),
    errors: &'static [u16],
    handler: MethodRouter<ApiState>,
) -> Route {
    Route {
        spec: RouteSpec {
            method,
            path: path.into(),
            access,
            standby,
            tag,
            summary: summary.into(),
            body,
            ok,
            errors,
        },
        handler,
    }
}

/// The plural path segment of a resource kind.
pub fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Decorator => "decorators",
        Kind::Repository => "repositories",
        Kind::Service => "services",
        Kind::Secret => "secrets",
        Kind::ExecutableObject => "executable-objects",
        Kind::Registry => "registries",
    }
}

const READ_ERRORS: &[u16] = &[401, 404, 503];
const WRITE_ERRORS: &[u16] = &[400, 401, 403, 409, 422, 503];

/// Every route of the API, in the order the document lists them.
fn table() -> Vec<Route> {
    use Access::{Key, Open};
    use RequestBody as B;
    use Standby::{Forward, Local};
    let mut t = vec![
        route(
            "GET",
            "/api/v1/health",
            Open,
            Local,
            "node",
            "Who this node is: id, cluster, store, manager link and HA role",
            B::None,
            (200, "Health"),
            &[],
            get(health),
        ),
        route(
            "GET",
            "/healthz",
            Open,
            Local,
            "node",
            "Liveness: the process answers",
            B::None,
            (200, "text"),
            &[],
            get(healthz),
        ),
        route(
            "GET",
            "/readyz",
            Open,
            Local,
            "node",
            "Readiness: the store answers",
            B::None,
            (200, "text"),
            &[503],
            get(readyz),
        ),
        route(
            "GET",
            "/metrics",
            Open,
            Local,
            "node",
            "Prometheus metrics (OpenMetrics text)",
            B::None,
            (200, "text"),
            &[],
            get(metrics),
        ),
        route(
            "GET",
            "/api/v1/openapi.json",
            Open,
            Local,
            "node",
            "This document",
            B::None,
            (200, "object"),
            &[],
            get(openapi),
        ),
        route(
            "POST",
            "/api/v1/login",
            Open,
            Forward,
            "users",
            "Exchange a user name and password for an API key",
            B::Json("Login"),
            (200, "ApiKey"),
            &[400, 401, 422, 503],
            post(login),
        ),
        route(
            "GET",
            "/api/v1/users",
            Key,
            Local,
            "users",
            "List users",
            B::None,
            (200, "UserList"),
            &[401, 503],
            get(users_list),
        ),
        route(
            "POST",
            "/api/v1/users",
            Key,
            Forward,
            "users",
            "Create a user",
            B::Json("NewUser"),
            (201, "User"),
            &[400, 401, 409, 422, 503],
            post(users_create),
        ),
        route(
            "GET",
            "/api/v1/users/{name}",
            Key,
            Local,
            "users",
            "One user",
            B::None,
            (200, "User"),
            READ_ERRORS,
            get(users_get),
        ),
        route(
            "DELETE",
            "/api/v1/users/{name}",
            Key,
            Forward,
            "users",
            "Delete a user and revoke its API keys",
            B::None,
            (204, "empty"),
            &[401, 404, 409, 503],
            delete(users_delete),
        ),
        route(
            "POST",
            "/api/v1/users/{name}/password",
            Key,
            Forward,
            "users",
            "Set a user's password; revokes every API key of that user",
            B::Json("Password"),
            (200, "PasswordChanged"),
            &[400, 401, 404, 422, 503],
            post(users_password),
        ),
    ];
    for kind in Kind::ALL {
        let p = plural(kind);
        let base = format!("/api/v1/{p}");
        let one = format!("{base}/{{name}}");
        let create_body = if kind == Kind::Secret {
            "SecretInput"
        } else {
            "Resource"
        };
        t.push(route(
            "GET",
            base.clone(),
            Key,
            Local,
            "resources",
            format!("List {p}"),
            B::None,
            (200, "ResourceList"),
            &[401, 403, 503],
            get(move |s: State<ApiState>| list(s, kind)),
        ));
        t.push(route(
            "POST",
            base,
            Key,
            Forward,
            "resources",
            format!("Create a {kind}"),
            B::Json(create_body),
            (201, "Resource"),
            WRITE_ERRORS,
            post(
                move |s: State<ApiState>, b: Result<Json<Value>, JsonRejection>| create(s, b, kind),
            ),
        ));
        t.push(route(
            "GET",
            one.clone(),
            Key,
            Local,
            "resources",
            format!("One {kind}"),
            B::None,
            (200, "Resource"),
            READ_ERRORS,
            get(move |s: State<ApiState>, n: Path<String>| get_one(s, n, kind)),
        ));
        t.push(route(
            "DELETE",
            one,
            Key,
            Forward,
            "resources",
            format!("Delete a {kind} (refused while others name it)"),
            B::None,
            (204, "empty"),
            &[401, 404, 409, 503],
            delete(move |s: State<ApiState>, n: Path<String>| delete_one(s, n, kind)),
        ));
    }
    t.extend([
        route(
            "POST",
            "/api/v1/services/{name}/run",
            Key,
            Forward,
            "services",
            "Run a service and wait for its result",
            B::Json("RunRequest"),
            (200, "RunResponse"),
            &[400, 401, 403, 404, 422, 500, 503],
            post(run),
        ),
        route(
            "GET",
            "/api/v1/jobs/{id}",
            Key,
            Local,
            "services",
            "A job (distributed execution): its record, and its result or error once it ended; with wait=true, waits for the end",
            B::None,
            (200, "object"),
            &[401, 404, 503],
            get(job),
        ),
        route(
            "GET",
            "/api/v1/services/{name}/inputs",
            Key,
            Local,
            "services",
            "The inputs a service expects: its catalog entry with the decorator's schema",
            B::None,
            (200, "ServiceInfo"),
            READ_ERRORS,
            get(inputs),
        ),
        route(
            "GET",
            "/api/v1/db/export",
            Key,
            Local,
            "db",
            "Every resource as the import YAML (secrets sealed)",
            B::None,
            (200, "yaml"),
            &[401, 503],
            get(export),
        ),
        route(
            "POST",
            "/api/v1/db/import",
            Key,
            Forward,
            "db",
            "Import a YAML resource file, all or nothing (query: check, force)",
            B::Yaml,
            (200, "ImportReport"),
            &[400, 401, 403, 409, 422, 503],
            post(import),
        ),
        route(
            "GET",
            "/api/v1/runners",
            Key,
            Local,
            "cluster",
            "Registered runners with their load and status",
            B::None,
            (200, "object"),
            &[401, 503],
            get(runners),
        ),
        route(
            "GET",
            "/api/v1/cluster/activity",
            Key,
            Local,
            "cluster",
            "Retained jobs of the cluster, newest first",
            B::None,
            (200, "object"),
            &[401, 503],
            get(activity),
        ),
        route(
            "GET",
            "/api/v1/cluster/health",
            Key,
            Local,
            "cluster",
            "Health of the cluster: store, core nodes, runners, manager link",
            B::None,
            (200, "object"),
            &[401],
            get(cluster_health),
        ),
        route(
            "GET",
            "/api/v1/ha/status",
            Key,
            Local,
            "ha",
            "This node's view of the election",
            B::None,
            (200, "object"),
            &[401, 409],
            get(ha_status),
        ),
        route(
            "POST",
            "/api/v1/ha/switchover",
            Key,
            Local,
            "ha",
            "Planned hand-over by the active node",
            B::Json("Switchover"),
            (202, "object"),
            &[401, 409, 503],
            post(ha_switchover),
        ),
        route(
            "POST",
            "/api/v1/ha/pause",
            Key,
            Local,
            "ha",
            "Stop standing for election (an active node hands over first)",
            B::None,
            (202, "object"),
            &[401, 409],
            post(ha_pause),
        ),
        route(
            "POST",
            "/api/v1/ha/resume",
            Key,
            Local,
            "ha",
            "Stand for election again",
            B::None,
            (202, "object"),
            &[401, 409],
            post(ha_resume),
        ),
    ]);
    t
}

/// The route table without handlers (the OpenAPI document and tests read it).
pub fn route_specs() -> Vec<RouteSpec> {
    table().into_iter().map(|r| r.spec).collect()
}

/// All routes of the core node API, each with the checks its table entry asks for.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for Route { spec, handler } in table() {
        let mut handler = handler;
        // Layers wrap what is already there: forwarding first, so the key check runs before it
        // and a standby refuses a bad key itself instead of passing it on.
        if spec.standby == Standby::Forward {
            handler = handler.route_layer(from_fn_with_state(state.clone(), forward_to_active));
        }
        if spec.access == Access::Key {
            handler = handler.route_layer(from_fn_with_state(state.clone(), require_key));
        }
        router = router.route(&spec.path, handler);
    }
    router.fallback(no_route).with_state(state)
}

async fn no_route(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such route: {} {} (see /api/v1/openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Middleware

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key)
}

async fn require_key(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    match s.auth.check(bearer(req.headers())).await {
        Ok(_user) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn forward_to_active(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    match s.forwarder.forward(&s.node, req).await {
        Ok(response) => response,
        Err(crate::forward::Local(req)) => next.run(req).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Node

/// `GET /api/v1/health`: who this node is.
pub fn health_body(node: &Node) -> Value {
    json!({
        "node_id": node.id.as_str(),
        "cluster_id": node.config.application.cluster_id,
        "mode": "server",
        "store": node.store.backend(),
        "version": autogate_runtime::VERSION,
        "manager": node.link.get(),
        "ha": node.ha.as_ref().map(|ha| {
            let st = ha.status();
            json!({ "role": st.role, "term": st.term, "active_node_id": st.active_node_id })
        }),
    })
}

async fn health(State(s): State<ApiState>) -> Json<Value> {
    Json(health_body(&s.node))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers: a node that cannot reach its store cannot do its job.
async fn readyz(State(s): State<ApiState>) -> impl IntoResponse {
    match s.node.store.status().await {
        Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.node.metrics.render(),
    )
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

// ---------------------------------------------------------------------------------------------
// Users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(s): State<ApiState>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let b = json_body("login body", body)?;
    let issued: crate::auth::IssuedKey = s.auth.login(&b.username, &b.password).await?;
    tracing::info!(user = %b.username, "user logged in");
    Ok(Json(json!(issued)))
}

async fn users_list(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let users: Vec<crate::auth::UserView> = s.auth.list_users().await?;
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
}

async fn users_create(
    State(s): State<ApiState>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b = json_body("user body", body)?;
    let user: crate::auth::UserView = s.auth.create_user(&b.name, &b.password).await?;
    tracing::info!(user = %b.name, "user created");
    Ok((StatusCode::CREATED, Json(json!(user))))
}

async fn users_get(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let user: crate::auth::UserView = s.auth.get_user(&name).await?;
    Ok(Json(json!(user)))
}

async fn users_delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.auth.delete_user(&name).await?;
    tracing::info!(user = %name, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

async fn users_password(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<PasswordBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let b = json_body("password body", body)?;
    let revoked: usize = s.auth.set_password(&name, &b.password).await?;
    tracing::info!(user = %name, revoked_keys = revoked, "password changed");
    Ok(Json(json!({ "name": name, "revoked_keys": revoked })))
}

// ---------------------------------------------------------------------------------------------
// Resources

async fn list(State(s): State<ApiState>, kind: Kind) -> ApiResult<Json<Value>> {
    let items = s.node.automation.list(kind).await?;
    let mut out = Map::new();
    out.insert(plural(kind).to_owned(), Value::Array(items));
    Ok(Json(Value::Object(out)))
}

async fn create(
    State(s): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
    kind: Kind,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = json_body(&format!("{kind} body"), body)?;
    let created = s.node.automation.create(kind, body).await?;
    tracing::info!(
        name = created["name"].as_str().unwrap_or_default(),
        "{kind} created"
    );
    Ok((StatusCode::CREATED, Json(created)))
}

async fn get_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    kind: Kind,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.node.automation.get(kind, &name).await?))
}

async fn delete_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    kind: Kind,
) -> ApiResult<StatusCode> {
    s.node.automation.delete(kind, &name).await?;
    tracing::info!(%name, "{kind} deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Services

async fn run(
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

/// How long a run waits for the dispatcher of a node that has just become active.
const DISPATCHER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
fn finished_answer(job: &str, outcome: autogate_jobs::JobOutcome) -> ApiResult<Json<Value>> {
    match outcome {
        autogate_jobs::JobOutcome::Completed { result } => Ok(Json(
            json!({ "status": "completed", "result": result, "job_id": job }),
        )),
        autogate_jobs::JobOutcome::Error { kind, message } => {
            let status = failure_status(kind);
            let mut e = ApiError::new(status, message);
            e.job_id = Some(job.to_owned());
            Err(e)
        }
        autogate_jobs::JobOutcome::Released => Err(moved(job)),
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

/// The dispatcher stopped while the caller waited: another node is active now.
fn moved(job: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the job is still known to the cluster but this node stopped dispatching (the active node changed); ask again with GET /api/v1/jobs/{job}?wait=true"),
    );
    e.job_id = Some(job.to_owned());
    e
}

fn jobs_error(e: autogate_jobs::JobsError) -> ApiError {
    match e {
        autogate_jobs::JobsError::Automation(e) => ApiError::from(e),
        autogate_jobs::JobsError::Stopped(job) => moved(&job),
        autogate_jobs::JobsError::UnknownJob(job) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("job {job} does not exist"))
        }
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct JobQuery {
    wait: bool,
}

/// `GET /api/v1/jobs/{id}`: the record, plus `result` or `error` once it ended. `wait=true`
/// waits for the end on the active node (a standby forwards it there).
async fn job(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
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
                let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node does not dispatch jobs now (no active node, or it is starting); retry",
            );
                e.job_id = Some(id.to_owned());
                e
            })?;
        let done = dispatcher.wait(id).await.map_err(jobs_error)?;
        record = done.record;
        outcome = Some(done.outcome);
    }
    let mut v = serde_json::to_value(&record).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        match outcome {
            Some(autogate_jobs::JobOutcome::Completed { result }) => {
                m.insert("result".into(), json!(result));
            }
            Some(autogate_jobs::JobOutcome::Error { message, .. }) => {
                m.insert("error".into(), json!(message));
            }
            _ => {}
        }
    }
    Ok(v)
}

async fn inputs(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let info: autogate_automation::ServiceInfo = s.node.automation.describe_inputs(&name).await?;
    Ok(Json(json!(info)))
}

// ---------------------------------------------------------------------------------------------
// Import and export

async fn export(State(s): State<ApiState>) -> ApiResult<Response> {
    let yaml = s.node.automation.export().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        yaml,
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ImportQuery {
    check: bool,
    force: bool,
}

async fn import(
    State(s): State<ApiState>,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: String,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("import query: {}", e.body_text()),
        )
    })?;
    if body.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "import body is empty: send the YAML resource file",
        ));
    }
    let mode = ImportMode {
        check: q.check,
        force: q.force,
    };
    let report = s.node.automation.import(&body, mode).await?;
    let items: Vec<Value> = report
        .items
        .iter()
        .map(|i| {
            let outcome = match i.outcome {
                ImportOutcome::Add => "add",
                ImportOutcome::Conflict => "conflict",
                ImportOutcome::Replacement => "replacement",
            };
            json!({ "kind": i.kind.as_str(), "name": i.name, "outcome": outcome })
        })
        .collect();
    if report.written {
        tracing::info!(items = items.len(), "resources imported");
    }
    Ok(Json(json!({ "items": items, "written": report.written })))
}

// ---------------------------------------------------------------------------------------------
// Cluster views (the same as `get runners` / `inspect cluster` in local mode)

async fn runners(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let cid = &s.node.config.application.cluster_id;
    let runners = autogate_jobs::view::runners(&*s.node.store, cid)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(json!({ "runners": runners })))
}

async fn activity(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let cid = &s.node.config.application.cluster_id;
    let jobs = autogate_jobs::view::activity(&*s.node.store, cid)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn cluster_health(State(s): State<ApiState>) -> Json<Value> {
    use autogate_jobs::view::ManagerLink;
    let node = &s.node;
    // The node holding the manager link knows its state; a standby reads the active node's
    // record like the CLI does.
    let holds_link = node
        .ha
        .as_ref()
        .is_none_or(|ha| matches!(ha.current(), autogate_ha::Leadership::Active { .. }));
    // No manager configured means no link to be down.
    let link = if !node.config.connect.enabled || node.config.connect.hosts.is_empty() {
        ManagerLink::Disabled
    } else if holds_link {
        ManagerLink::Known(node.link.get().connected)
    } else {
        ManagerLink::FromRecords
    };
    Json(
        autogate_jobs::view::health(
            &*node.store,
            &node.config.application.cluster_id,
            node.config.server.distributed_execution,
            link,
        )
        .await,
    )
}

// ---------------------------------------------------------------------------------------------
// HA

fn ha_disabled() -> (StatusCode, Json<Value>) {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": "high availability is not enabled on this node (connect.server_ha_enabled = false)"
        })),
    )
}

/// `GET /api/v1/ha/status`: this node's view of the election.
async fn ha_status(State(s): State<ApiState>) -> impl IntoResponse {
    match &s.node.ha {
        Some(ha) => (StatusCode::OK, Json(json!(ha.status()))),
        None => ha_disabled(),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    to: Option<String>,
}

/// `POST /api/v1/ha/switchover {"to"?}`: planned hand-over by the active node.
async fn ha_switchover(
    State(s): State<ApiState>,
    body: Option<Json<SwitchoverBody>>,
) -> impl IntoResponse {
    let Some(ha) = &s.node.ha else {
        return ha_disabled();
    };
    let to = body.and_then(|Json(b)| b.to);
    match ha.switchover(to.clone()).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "accepted": true, "from": s.node.id.as_str(), "to": to })),
        ),
        Err(autogate_ha::SwitchoverError::Refused(reason)) => {
            (StatusCode::CONFLICT, Json(json!({ "error": reason })))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

/// `POST /api/v1/ha/pause`: maintenance; an active node hands over first.
async fn ha_pause(State(s): State<ApiState>) -> impl IntoResponse {
    match &s.node.ha {
        Some(ha) => {
            ha.pause();
            (StatusCode::ACCEPTED, Json(json!({ "paused": true })))
        }
        None => ha_disabled(),
    }
}

/// `POST /api/v1/ha/resume`: stand for election again.
async fn ha_resume(State(s): State<ApiState>) -> impl IntoResponse {
    match &s.node.ha {
        Some(ha) => {
            ha.resume();
            (StatusCode::ACCEPTED, Json(json!({ "paused": false })))
        }
        None => ha_disabled(),
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

fn schema_ref(name: &str) -> Value {
    match name {
        "text" => json!({ "text/plain": { "schema": { "type": "string" } } }),
        "yaml" => json!({ "application/yaml": { "schema": { "type": "string" } } }),
        "object" => json!({ "application/json": { "schema": { "type": "object" } } }),
        other => json!({
            "application/json": { "schema": { "$ref": format!("#/components/schemas/{other}") } }
        }),
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "The body is not JSON/YAML at all",
        401 => "Missing, unknown or expired API key",
        403 => "Disabled by configuration",
        404 => "No such resource",
        409 => "Conflict: exists already, still in use, or not possible in this state",
        415 => "Wrong content type",
        422 => "Invalid request: the message names what is wrong",
        500 => "The node failed or is misconfigured for this request",
        503 => "Not this node's to do now: no active node, store unavailable, fenced",
        _ => "",
    }
}

/// The OpenAPI 3.1 document of [`table`].
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for spec in route_specs() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(spec.summary));
        op.insert("tags".into(), json!([spec.tag]));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                spec.method.to_ascii_lowercase(),
                spec.path
                    .replace(['/', '-', '.'], "_")
                    .replace(['{', '}'], "")
            )),
        );
        let params: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .chain(
                (spec.path == "/api/v1/db/import")
                    .then(|| {
                        ["check", "force"].map(|q| {
                            json!({ "name": q, "in": "query", "required": false, "schema": { "type": "boolean", "default": false } })
                        })
                    })
                    .into_iter()
                    .flatten(),
            )
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        match &spec.body {
            RequestBody::None => {}
            RequestBody::Json(schema) => {
                op.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": schema_ref(schema) }),
                );
            }
            RequestBody::Yaml => {
                op.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": schema_ref("yaml") }),
                );
            }
        }
        let mut responses = Map::new();
        let (code, what) = spec.ok;
        let mut ok = json!({ "description": status_text(code) });
        if what != "empty" {
            ok["content"] = schema_ref(what);
        }
        responses.insert(code.to_string(), ok);
        for e in spec.errors {
            responses.insert(
                e.to_string(),
                json!({ "description": status_text(*e), "content": schema_ref("Error") }),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        if spec.access == Access::Open {
            op.insert("security".into(), json!([]));
        }
        if spec.standby == Standby::Forward {
            op.insert(
                "description".into(),
                json!("On a standby core node this request is forwarded to the active node."),
            );
        }
        let entry = paths
            .entry(spec.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(spec.method.to_ascii_lowercase(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "autogate core node API",
            "version": autogate_runtime::VERSION,
            "description": "Operator API of an autogate core node. Every /api/v1 route except health, openapi.json and login needs `Authorization: Bearer <API key>` from POST /api/v1/login."
        },
        "paths": paths,
        "security": [{ "apiKey": [] }],
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        }
    })
}

fn schemas() -> Value {
    let str_ = json!({ "type": "string" });
    json!({
        "Error": {
            "type": "object", "required": ["error"],
            "properties": { "error": str_, "detail": { "type": "object" } }
        },
        "Health": { "type": "object", "properties": {
            "node_id": str_, "cluster_id": str_, "mode": str_, "store": str_, "version": str_,
            "manager": { "type": "object" }, "ha": { "type": ["object", "null"] } } },
        "Login": { "type": "object", "required": ["username", "password"],
            "properties": { "username": str_, "password": str_ }, "additionalProperties": false },
        "ApiKey": { "type": "object", "properties": {
            "api_key": str_, "expires_at": { "type": "string", "format": "date-time" } } },
        "NewUser": { "type": "object", "required": ["name", "password"],
            "properties": { "name": str_, "password": { "type": "string", "minLength": crate::auth::MIN_PASSWORD_LEN } },
            "additionalProperties": false },
        "Password": { "type": "object", "required": ["password"],
            "properties": { "password": { "type": "string", "minLength": crate::auth::MIN_PASSWORD_LEN } },
            "additionalProperties": false },
        "PasswordChanged": { "type": "object", "properties": { "name": str_, "revoked_keys": { "type": "integer" } } },
        "User": { "type": "object", "properties": {
            "name": str_, "created": str_, "last_login": { "type": ["string", "null"] },
            "password_changed": { "type": ["string", "null"] } } },
        "UserList": { "type": "object", "properties": { "users": { "type": "array", "items": { "$ref": "#/components/schemas/User" } } } },
        "Resource": { "type": "object", "required": ["name"], "description": "A resource in the family's kebab-case shape, as in the import file",
            "properties": { "name": str_, "description": str_, "tags": { "type": "array", "items": str_ } } },
        "SecretInput": { "type": "object", "required": ["name", "value"], "additionalProperties": false,
            "properties": { "name": str_, "value": { "type": "string", "description": "plaintext; sealed by the node, never returned" },
                "description": str_, "tags": { "type": "array", "items": str_ } } },
        "ResourceList": { "type": "object", "description": "{\"<plural>\": [resources]}", "additionalProperties": { "type": "array", "items": { "$ref": "#/components/schemas/Resource" } } },
        "RunRequest": { "type": "object", "additionalProperties": false, "properties": {
            "type": { "type": "string", "enum": ["python-script", "ansible-playbook", "opentofu-plan", "executable"] },
            "inputs": { "type": "object" },
            "set": { "type": "array", "items": { "type": "string", "description": "k=v" } },
            "action": { "type": "string", "enum": ["apply", "destroy"] },
            "state": {} } },
        "RunResponse": { "type": "object", "properties": {
            "status": { "const": "completed" },
            "result": { "type": "object", "properties": {
                "stdout": str_, "stderr": str_, "return_code": { "type": "integer" },
                "start_time": str_, "end_time": str_, "elapsed_time": str_,
                "stdout_json": {}, "timed_out": { "type": "boolean" }, "state": {} } } } },
        "ServiceInfo": { "type": "object", "properties": {
            "name": str_, "type": str_, "description": str_, "tags": { "type": "array", "items": str_ },
            "repository": str_, "working_directory": str_, "decorator": str_, "schema": { "type": "object" } } },
        "ImportReport": { "type": "object", "properties": {
            "items": { "type": "array", "items": { "type": "object", "properties": {
                "kind": str_, "name": str_, "outcome": { "type": "string", "enum": ["add", "conflict", "replacement"] } } } },
            "written": { "type": "boolean" } } },
        "Switchover": { "type": "object", "properties": { "to": str_ }, "additionalProperties": false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use tower::ServiceExt;

    async fn state() -> (ApiState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = autogate_config::LoadOptions {
            env: [
                (
                    "GATEWAY_APPLICATION_WORKING_DIR".to_owned(),
                    dir.path().display().to_string(),
                ),
                ("GATEWAY_STORE_BACKEND".to_owned(), "memory".to_owned()),
            ]
            .into_iter()
            .collect(),
            home: Some(dir.path().to_path_buf()),
            etc_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let config = Arc::new(autogate_config::load(&opts).expect("config"));
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .expect("store");
        let node = Node {
            id: autogate_runtime::NodeId::with_host("test"),
            automation: autogate_automation::Automation::from_config(&config, store.clone()),
            config: config.clone(),
            store: store.clone(),
            metrics: Arc::new(autogate_runtime::Metrics::new()),
            started: std::time::Instant::now(),
            link: crate::link::LinkStatus::default(),
            jobs: crate::dispatch::Jobs::new(false, &autogate_runtime::Metrics::new()),
            ha: None,
        };
        let auth = Auth::new(store, "cluster_1", std::time::Duration::from_secs(60));
        let forwarder = Forwarder::plain();
        (
            ApiState::new(node, auth, forwarder, CancellationToken::new()),
            dir,
        )
    }

    /// The document lists exactly the table's routes.
    #[test]
    fn openapi_paths_match_the_route_table() {
        let doc = openapi_document();
        let mut in_doc = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                in_doc.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let in_table: BTreeSet<(String, String)> = route_specs()
            .into_iter()
            .map(|s| (s.method.to_owned(), s.path))
            .collect();
        assert_eq!(in_doc, in_table);
        assert_eq!(doc["openapi"], "3.1.0");
    }

    /// Every route of the table is served by the router (no fallback, no 405), and a path
    /// outside the table is not.
    #[tokio::test]
    async fn router_serves_every_route_of_the_table() {
        let (state, _dir) = state().await;
        let app = router(state);
        for spec in route_specs() {
            let path = spec.path.replace("{name}", "x");
            let req = axum::http::Request::builder()
                .method(spec.method)
                .uri(&path)
                .body(Body::empty())
                .expect("request");
            let resp = app.clone().oneshot(req).await.expect("response");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&bytes);
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{} {path}",
                spec.method
            );
            assert!(
                !text.contains("no such route"),
                "{} {path}: {text}",
                spec.method
            );
            if spec.access == Access::Key {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {path}", spec.method);
                assert!(text.contains("missing or invalid API key"), "{text}");
            }
        }
        let req = axum::http::Request::builder()
            .uri("/api/v1/nothing")
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
