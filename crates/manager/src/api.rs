//! The REST API (`/api/v1/…`, admin token), the probes (`/healthz`, `/readyz`), `/metrics`,
//! and the route to the WebSocket endpoint.
//!
//! Every error is JSON `{"error": "<sentence>"}`; a bad request names the field at fault
//! (`certificates[1]: …`, `state: unknown state …`). Bodies are parsed by hand from JSON
//! values rather than with derived structs so those messages can name the field, which
//! serde's errors do not.
//!
//! Status codes: 201 created, 204 deleted, 400 bad input, 401 missing or wrong token, 404
//! unknown cluster, 409 exists / certificate pinned to another cluster / not connected /
//! read-only, 502 the gateway answered with a
//! JSON-RPC error (its error is in `rpc_error`), 503 the session is busy or closed mid-request,
//! 504 no answer in time.
//!
//! Service runs (`POST …/services/{name}/run`) answer in the product family's reply shape
//! instead, whatever happens: `{"status": "completed", "result": {…}}` when the program ran
//! (whatever its exit code), else `{"status": "error", "error": {"code", "message", "data"}}`
//! where `data` is the message or, for inputs the decorator refuses, `{"message",
//! "violations"}`. The HTTP status says who failed: 400 bad body, 422 inputs refused by the
//! service's decorator (or a wrong type for the service), 404 unknown cluster
//! or service, 403 service type disabled on the gateway, 409 cluster read-only or disabled, 502
//! the gateway could not run it, 503 not connected or busy, 504 no result in time.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{AdminError, ClusterPatch, Hub, RequestError};
use crate::listener::Peer;
use crate::model::{
    check_cluster_id, normalize_fingerprint, now_rfc3339, CertRecord, ClusterRecord, ClusterState,
};
use crate::runs::{RunError, RunRecord};

/// Deadline of `POST …/ping`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of `POST …/services/{name}/run` (`timeout_ms` in the body overrides it):
/// the gateways' default service timeout (one hour) plus time for the answer to travel, so a
/// run that ends at its own timeout still reports its result.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(3600 + 30);
/// Longest `timeout_ms` accepted.
const MAX_RUN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How much longer than the gateway's deadline the manager waits, at most: the gateway cancels
/// the run at the deadline and answers with a timeout error, which should reach the caller
/// rather than a bare 504. A tenth of the deadline below that, so short deadlines stay short.
const RUN_REPLY_SLACK: Duration = Duration::from_secs(5);
/// Why a read-only cluster's runs are refused (the product family's words).
const READ_ONLY: &str = "read-only clusters are discovered but not executable";
/// Most `set` items in a run request.
const MAX_SET_ITEMS: usize = 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Sessions and registry.
    pub hub: Arc<Hub>,
    /// SHA-256 of the admin token (compared in constant time, never kept in clear).
    pub token_digest: [u8; 32],
    /// `manager.max_frame_size`.
    pub max_frame_size: usize,
    /// The root shutdown token.
    pub token: CancellationToken,
    /// Where session tasks are spawned.
    pub tracker: TaskTracker,
    /// Rate limit of the log lines about refused gateway connections.
    pub refusal_log: Arc<crate::ratelimit::LogLimiter>,
    /// Liveness and frame-rate limits of gateway sessions (`[manager]`).
    pub session: crate::ws::SessionLimits,
    /// Tickets that open the page's event stream without the token in its URL.
    pub tickets: Arc<crate::web::Tickets>,
    /// Where the manager's data lives (`GET /api/v1/replicas`).
    pub store_where: StoreWhere,
}

/// Where the manager's data lives, as `GET /api/v1/replicas` shows it.
#[derive(Debug, Clone, Default)]
pub struct StoreWhere {
    /// `local` or `etcd`.
    pub backend: &'static str,
    /// The file, or the etcd endpoints.
    pub endpoints: String,
    /// The etcd key prefix (empty for `local`).
    pub prefix: String,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/clusters", get(list_clusters).post(create_cluster))
        .route(
            "/clusters/{id}",
            get(show_cluster)
                .patch(patch_cluster)
                .delete(delete_cluster),
        )
        .route("/clusters/{id}/sessions", get(sessions))
        .route(
            "/clusters/{id}/nodes/{node_id}",
            axum::routing::delete(forget_node),
        )
        .route("/clusters/{id}/ping", post(ping))
        .route("/replicas", get(replicas))
        .route("/clusters/{id}/reset-term", post(reset_term))
        .route("/events/ticket", post(crate::web::ticket))
        .route("/clusters/{id}/services", get(list_services))
        .route("/clusters/{id}/services/{name}/run", post(run_service))
        .route("/clusters/{id}/runs/{run_id}", get(get_run))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API endpoint") })
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .merge(crate::web::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

/// A JSON error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|t| {
        let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        bool::from(digest.ct_eq(&app.token_digest))
    });
    if ok {
        return next.run(req).await;
    }
    let who = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.addr.to_string())
        .unwrap_or_default();
    tracing::debug!(
        "refused API request {} {} from {who}: {}",
        req.method(),
        req.uri().path(),
        if presented.is_some() {
            "wrong admin token"
        } else {
            "no admin token"
        }
    );
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        if presented.is_some() {
            "invalid admin token"
        } else {
            "missing admin token: send Authorization: Bearer <token> (the manager's admin token file)"
        },
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok", "version": autogate_runtime::VERSION })).into_response()
}

async fn readyz(State(app): State<AppState>) -> Response {
    match app.hub.registry().store().status().await {
        Ok(_) if app.hub.replicas().healthy() => Json(json!({
            "status": "ready",
            "clusters": app.hub.registry().len(),
            "sessions_live": app.hub.live_count(),
            "replica": app.hub.replicas().id(),
        }))
        .into_response(),
        // The store answers again, but the lease is not renewed yet: no sessions until it is.
        Ok(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store: this replica's lease is not renewed yet ({}); it takes no sessions",
                app.hub.replicas().trouble().unwrap_or_default()
            ),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}; this replica takes no sessions"),
        ),
    }
}

/// `GET /api/v1/replicas`: the replicas of this manager and its store.
async fn replicas(State(app): State<AppState>) -> Response {
    let status = app.hub.registry().store().status().await;
    let replicas = app.hub.replicas();
    let me = replicas.id().to_owned();
    let list: Vec<Value> = replicas
        .list(app.hub.live_count())
        .into_iter()
        .map(|r| {
            json!({
                "replica_id": r.replica_id,
                "address": r.address,
                "started_at": r.started_at,
                "last_seen": r.last_seen,
                "sessions": r.sessions,
                "version": r.version,
                "this": r.replica_id == me,
            })
        })
        .collect();
    let (revision, healthy, problem) = match &status {
        Ok(s) => (Some(s.revision), replicas.healthy(), replicas.trouble()),
        Err(e) => (None, false, Some(e.to_string())),
    };
    Json(json!({
        "store": {
            "backend": app.store_where.backend,
            "endpoints": app.store_where.endpoints,
            "prefix": app.store_where.prefix,
            "revision": revision,
            "healthy": healthy,
            "error": problem,
        },
        "replicas": list,
    }))
    .into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let body = app.hub.metrics().registry.render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A certificate from a request, parsed and described.
#[derive(Debug, Clone)]
pub struct NewCert {
    /// SHA-256, lower-case hex.
    pub fingerprint: String,
    /// The certificate alone, re-encoded as PEM.
    pub pem: String,
    /// Subject.
    pub subject: String,
    /// End of validity.
    pub not_after: String,
}

impl NewCert {
    /// The stored form.
    pub fn to_record(&self, now: &str) -> CertRecord {
        CertRecord {
            fingerprint_sha256: self.fingerprint.clone(),
            pem: self.pem.clone(),
            subject: self.subject.clone(),
            not_after: self.not_after.clone(),
            added_at: now.to_owned(),
            last_presented_by: None,
            last_presented_at: None,
        }
    }
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Parses every certificate of the PEM texts in `field` (an array of strings).
fn parse_certs(field: &str, value: &Value) -> Result<Vec<NewCert>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("{field}: expected an array of PEM strings"))?;
    let mut out: Vec<NewCert> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let pem = item
            .as_str()
            .ok_or_else(|| format!("{field}[{i}]: expected a PEM string"))?;
        let certs = autogate_tls::parse_pem_certs(pem).map_err(|e| format!("{field}[{i}]: {e}"))?;
        for der in certs {
            let info = autogate_tls::cert_info(&der).map_err(|e| format!("{field}[{i}]: {e}"))?;
            if out.iter().any(|c| c.fingerprint == info.fingerprint_sha256) {
                continue;
            }
            out.push(NewCert {
                fingerprint: info.fingerprint_sha256,
                pem: pem_of(der.as_ref()),
                subject: info.subject,
                not_after: crate::model::format_rfc3339(info.not_after),
            });
        }
    }
    Ok(out)
}

/// A 400 message naming what is wrong with the request body.
type BadInput = String;

fn bad(message: BadInput) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, BadInput> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body must be a JSON object".to_owned()),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

fn reject_unknown(obj: &Map<String, Value>, known: &[&str]) -> Result<(), BadInput> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{}: unknown field (expected {})",
            crate::model::truncate(k, 64),
            known.join(", ")
        )),
        None => Ok(()),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, BadInput> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{field}: expected a string")),
    }
}

fn parse_state(obj: &Map<String, Value>) -> Result<Option<ClusterState>, BadInput> {
    opt_str(obj, "state")?
        .map(|s| s.parse::<ClusterState>().map_err(|e| format!("state: {e}")))
        .transpose()
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        AdminError::Exists(_) => error(StatusCode::CONFLICT, e.to_string()),
        AdminError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        AdminError::Pinned { ref cluster, .. } => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string(), "pinned_to": cluster })),
        )
            .into_response(),
        AdminError::Store(s) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {s}")),
    }
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "cluster {} is not registered",
            crate::model::truncate(id, 80)
        ),
    )
}

async fn list_clusters(State(app): State<AppState>) -> Response {
    let all: Vec<Value> = app
        .hub
        .registry()
        .list()
        .iter()
        .map(|r| app.hub.view(r))
        .collect();
    Json(Value::Array(all)).into_response()
}

async fn show_cluster(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.hub.registry().get(&id) {
        Some(rec) => Json(app.hub.view(&rec)).into_response(),
        None => not_found(&id),
    }
}

async fn create_cluster(State(app): State<AppState>, body: Bytes) -> Response {
    let obj = match body_object(&body) {
        Ok(o) => o,
        Err(m) => return bad(m),
    };
    if let Err(m) = reject_unknown(&obj, &["cluster_id", "name", "state", "certificates"]) {
        return bad(m);
    }
    let id = match opt_str(&obj, "cluster_id") {
        Ok(Some(id)) => id.to_owned(),
        Ok(None) => return error(StatusCode::BAD_REQUEST, "cluster_id: required"),
        Err(m) => return bad(m),
    };
    if let Err(e) = check_cluster_id(&id) {
        return error(StatusCode::BAD_REQUEST, format!("cluster_id: {e}"));
    }
    let name = match opt_str(&obj, "name") {
        Ok(n) => n.unwrap_or(&id).to_owned(),
        Err(m) => return bad(m),
    };
    let state = match parse_state(&obj) {
        Ok(s) => s.unwrap_or(ClusterState::Enabled),
        Err(m) => return bad(m),
    };
    let certs = match obj.get("certificates") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => match parse_certs("certificates", v) {
            Ok(c) => c,
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        },
    };
    let now = now_rfc3339();
    let rec = ClusterRecord {
        cluster_id: id,
        name,
        state,
        certificates: certs.iter().map(|c| c.to_record(&now)).collect(),
        created_at: now,
        highest_term: None,
    };
    match app.hub.create_cluster(rec).await {
        Ok(rec) => (StatusCode::CREATED, Json(app.hub.view(&rec))).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn patch_cluster(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let obj = match body_object(&body) {
        Ok(o) => o,
        Err(m) => return bad(m),
    };
    if let Err(m) = reject_unknown(
        &obj,
        &["name", "state", "add_certificates", "remove_certificates"],
    ) {
        return bad(m);
    }
    let mut patch = ClusterPatch::default();
    match opt_str(&obj, "name") {
        Ok(n) => patch.name = n.map(str::to_owned),
        Err(m) => return bad(m),
    }
    match parse_state(&obj) {
        Ok(s) => patch.state = s,
        Err(m) => return bad(m),
    }
    if let Some(v) = obj.get("add_certificates").filter(|v| !v.is_null()) {
        match parse_certs("add_certificates", v) {
            Ok(c) => patch.add = c,
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        }
    }
    if let Some(v) = obj.get("remove_certificates").filter(|v| !v.is_null()) {
        let Some(list) = v.as_array() else {
            return error(
                StatusCode::BAD_REQUEST,
                "remove_certificates: expected an array of SHA-256 fingerprints",
            );
        };
        for (i, item) in list.iter().enumerate() {
            match item.as_str().and_then(normalize_fingerprint) {
                Some(fp) => patch.remove.push(fp),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "remove_certificates[{i}]: expected a SHA-256 fingerprint (64 hex digits, colons allowed)"
                        ),
                    )
                }
            }
        }
    }
    match app.hub.patch_cluster(&id, patch).await {
        Ok(rec) => Json(app.hub.view(&rec)).into_response(),
        Err(e) => admin_error(e),
    }
}

/// `POST /clusters/{id}/reset-term`: forgets the cluster's highest term and closes its live
/// session, so its real leader is accepted again (after a node sent a term no leader can beat).
/// Answers the old term; the audit line names the client.
async fn reset_term(State(app): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let by = req
        .extensions()
        .get::<Peer>()
        .map_or_else(|| "unknown".to_owned(), |p| p.addr.to_string());
    match app.hub.reset_term(&id, &by).await {
        Ok(done) => Json(json!({
            "cluster_id": id,
            "old_term": done.old.as_ref().map(|(t, _)| *t),
            "old_term_node": done.old.as_ref().map(|(_, n)| n.clone()),
            "new_term": null,
            "closed_session_of": done.closed_node,
        }))
        .into_response(),
        Err(e) => admin_error(e),
    }
}

async fn delete_cluster(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.hub.delete_cluster(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(e),
    }
}

async fn sessions(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    if app.hub.registry().get(&id).is_none() {
        return not_found(&id);
    }
    let limit = app.hub.registry().history_limit();
    match app.hub.registry().sessions(&id, limit).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `DELETE /clusters/{id}/nodes/{node_id}`: forget a node that left the cluster (stopped or
/// lost), so it is no longer listed; 404 when no node that left has that id, 409 when the node
/// is present.
async fn forget_node(
    State(app): State<AppState>,
    Path((id, node_id)): Path<(String, String)>,
) -> Response {
    if app.hub.registry().get(&id).is_none() {
        return not_found(&id);
    }
    match app.hub.forget_node(&id, &node_id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ crate::members::ForgetError::Present(_)) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ crate::members::ForgetError::Unknown(_)) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
    }
}

fn request_error(e: RequestError) -> Response {
    let status = match e {
        RequestError::UnknownCluster(_) => StatusCode::NOT_FOUND,
        RequestError::NotConnected(_) => StatusCode::CONFLICT,
        RequestError::Busy(_) | RequestError::SessionClosed(_) => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
    };
    error(status, e.to_string())
}

async fn ping(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    // The params the product family's manager sends; gateways echo them.
    let sent = json!({ "reply": "Health test from GatewayManager" });
    match app
        .hub
        .request(&id, autogate_proto::method::PING, Some(sent), PING_TIMEOUT)
        .await
    {
        Ok(a) => match a.outcome {
            Ok(_) => Json(json!({
                "node_id": a.node_id,
                "term": a.term,
                "rtt_ms": a.rtt.as_secs_f64() * 1000.0,
            }))
            .into_response(),
            Err(rpc) => gateway_error(&id, rpc),
        },
        Err(e) => request_error(e),
    }
}

fn gateway_error(id: &str, rpc: autogate_proto::RpcError) -> Response {
    let mut rpc_error = json!({ "code": rpc.code, "message": rpc.message });
    if let Some(data) = &rpc.data {
        rpc_error["data"] = data.clone();
    }
    (
        StatusCode::BAD_GATEWAY,
        Json(json!({
            "error": format!("cluster {id} answered with error {}: {}", rpc.code, rpc.message),
            "rpc_error": rpc_error,
        })),
    )
        .into_response()
}

/// `GET /api/v1/clusters/{id}/services`: the catalog the cluster announced last.
async fn list_services(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    if app.hub.registry().get(&id).is_none() {
        return not_found(&id);
    }
    let connected = app.hub.connected(&id);
    let body = match app.hub.registry().catalog(&id) {
        Some(c) => json!({
            "cluster_id": id,
            "connected": connected,
            "services": c.services,
            "updated_at": c.updated_at,
            "node_id": c.node_id,
            "truncated": c.truncated,
            "total": c.total,
        }),
        None => json!({
            "cluster_id": id,
            "connected": connected,
            "services": [],
            "updated_at": null,
            "node_id": null,
            "truncated": false,
            "total": 0,
        }),
    };
    Json(body).into_response()
}

/// A run answer in the family's shape: `status: error` with a JSON-RPC error whose `data` is
/// the message.
fn run_error(status: StatusCode, code: i64, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        status,
        Json(json!({
            "status": autogate_proto::STATUS_ERROR,
            "error": { "code": code, "message": message, "data": message },
        })),
    )
        .into_response()
}

/// The HTTP status of a run the gateway answered with an error.
fn run_failure_status(code: i64) -> StatusCode {
    use autogate_proto as p;
    match code {
        p::INVALID_PARAMS => StatusCode::UNPROCESSABLE_ENTITY,
        p::SERVICE_NOT_FOUND => StatusCode::NOT_FOUND,
        p::NOT_ALLOWED => StatusCode::FORBIDDEN,
        p::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        p::TIMED_OUT => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Reads a run request body: `inputs` (or `params`), `set`, `type`, `action`, `state`,
/// `timeout_ms`.
fn run_body(name: &str, body: &Bytes) -> Result<(autogate_proto::ServiceRun, Duration), BadInput> {
    let obj = body_object(body)?;
    reject_unknown(
        &obj,
        &[
            "inputs",
            "params",
            "set",
            "type",
            "action",
            "state",
            "timeout_ms",
        ],
    )?;
    let object = |field: &str| match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(format!("{field}: expected a JSON object")),
    };
    let inputs = match (object("inputs")?, object("params")?) {
        (Some(_), Some(_)) => {
            return Err("params: give the inputs once, as inputs (params is its older name)".into())
        }
        (Some(i), None) | (None, Some(i)) => i,
        (None, None) => Map::new(),
    };
    let mut run = autogate_proto::ServiceRun::new(name, inputs);
    match obj.get("set") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.len() <= MAX_SET_ITEMS => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if s.contains('=') => run.set.push(s.to_owned()),
                    _ => return Err(format!("set[{i}]: expected a \"key=value\" string")),
                }
            }
        }
        Some(Value::Array(_)) => return Err(format!("set: at most {MAX_SET_ITEMS} items")),
        Some(_) => return Err("set: expected an array of \"key=value\" strings".into()),
    }
    run.service_type = opt_str(&obj, "type")?.map(str::to_owned);
    run.action = match opt_str(&obj, "action")? {
        None => None,
        Some(a @ ("apply" | "destroy" | "plan")) => Some(a.to_owned()),
        Some(other) => {
            return Err(format!(
                "action: expected apply, destroy or plan, got {:?}",
                crate::model::truncate(other, 40)
            ))
        }
    };
    run.state = obj.get("state").filter(|v| !v.is_null()).cloned();
    let timeout = match obj.get("timeout_ms") {
        None | Some(Value::Null) => RUN_TIMEOUT,
        Some(v) => match v.as_u64().filter(|ms| *ms > 0) {
            Some(ms) => Duration::from_millis(ms).min(MAX_RUN_TIMEOUT),
            None => {
                return Err("timeout_ms: expected a positive whole number of milliseconds".into())
            }
        },
    };
    run.timeout_ms = u64::try_from(timeout.as_millis()).ok();
    Ok((run, timeout))
}

async fn run_service(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    use autogate_proto as p;
    let (run, timeout) = match run_body(&name, &body) {
        Ok(r) => r,
        Err(m) => return run_error(StatusCode::BAD_REQUEST, p::INVALID_PARAMS, m),
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => match crate::runs::check_key(k) {
            Ok(()) => Some(k.to_owned()),
            Err(m) => return run_error(StatusCode::BAD_REQUEST, p::INVALID_PARAMS, m),
        },
        Some(Err(_)) => {
            return run_error(
                StatusCode::BAD_REQUEST,
                p::INVALID_PARAMS,
                "Idempotency-Key: only visible ASCII characters are allowed",
            )
        }
    };
    let Some(rec) = app.hub.registry().get(&id) else {
        return run_error(
            StatusCode::NOT_FOUND,
            p::NOT_ALLOWED,
            format!(
                "cluster {} is not registered",
                crate::model::truncate(&id, 80)
            ),
        );
    };
    match rec.state {
        ClusterState::ReadOnly => {
            let why = format!("cluster {id} is read-only: {READ_ONLY}");
            return run_error(StatusCode::CONFLICT, p::NOT_ALLOWED, why);
        }
        ClusterState::Disabled => {
            return run_error(
                StatusCode::CONFLICT,
                p::NOT_ALLOWED,
                format!("cluster {id} is disabled"),
            )
        }
        ClusterState::Enabled => {}
    }
    let runs = app.hub.runs();
    let params = autogate_proto::to_value(&run);
    let (run_id, answer) = match runs.accept(&id, &name, params, key.as_deref()).await {
        Ok(a) => a,
        Err(e) => {
            let status = match &e {
                RunError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                RunError::QueueFull { .. } | RunError::NoSession { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                RunError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if matches!(e, RunError::KeyReused { .. }) {
                tracing::warn!("refused a run of {name} on cluster {id}: {e}");
            }
            return run_error(status, p::UNAVAILABLE, e.to_string());
        }
    };
    let deadline = tokio::time::Instant::now() + timeout + (timeout / 10).min(RUN_REPLY_SLACK);
    tokio::pin!(answer);
    // When this replica stops while others live, the answer still comes (through the store,
    // from the replica the cluster moves to): the caller goes on waiting. When it is the last
    // one, nobody can answer before a restart: the caller is told at once, with the run's id.
    let mut others_answer = false;
    let record = loop {
        // A run nobody sent by the end of its hold is withdrawn (it never ran); once sent, it
        // waits for its answer until the caller's deadline.
        let hold = runs.hold_until(&run_id).map(tokio::time::Instant::from_std);
        tokio::select! {
            got = &mut answer => match got {
                Ok(record) => break record,
                Err(_) => {
                    return run_error_for(StatusCode::SERVICE_UNAVAILABLE,
                            p::UNAVAILABLE,
                            format!("the manager stopped waiting for run {run_id}"), &run_id)
                }
            },
            () = tokio::time::sleep_until(hold.unwrap_or(deadline)), if hold.is_some_and(|h| h < deadline) => {
                if runs.withdraw_unsent(&id, &run_id).await {
                    let e = RunError::NoSession {
                        cluster: id.clone(),
                        after: runs.limits().queue_timeout,
                    };
                    return run_error_for(StatusCode::SERVICE_UNAVAILABLE, p::UNAVAILABLE, e.to_string(), &run_id);
                }
                // Being sent right now: look again in a moment.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            () = app.token.cancelled(), if !others_answer => {
                if app.hub.other_replicas() {
                    others_answer = true;
                    continue;
                }
                // 504, as for a caller who stopped waiting: the run goes on, and its answer is
                // kept. Never 503, which says a run was not and will not be executed.
                let mut stopping = run_error_for(StatusCode::GATEWAY_TIMEOUT,
                        p::UNAVAILABLE,
                        format!(
                            "the manager is stopping; run {run_id} goes on: after its restart, GET /api/v1/clusters/{id}/runs/{run_id} shows its answer (or post it again with the same Idempotency-Key)"
                        ), &run_id);
                // The same request (same key) may succeed once the manager is back.
                stopping
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return stopping;
            }
            () = tokio::time::sleep_until(deadline) => {
                return run_error_for(StatusCode::GATEWAY_TIMEOUT,
                        p::TIMED_OUT,
                        format!(
                            "no answer from cluster {id} within {timeout:?}; the run goes on: GET /api/v1/clusters/{id}/runs/{run_id} shows its answer when it comes"
                        ), &run_id);
            }
        }
    };
    run_reply(&record)
}

/// A run error that names the run, so its caller can ask for it later.
fn run_error_for(
    status: StatusCode,
    code: i64,
    message: impl Into<String>,
    run_id: &str,
) -> Response {
    let message = message.into();
    (
        status,
        Json(json!({
            "status": autogate_proto::STATUS_ERROR,
            "run_id": run_id,
            "error": { "code": code, "message": message, "data": message },
        })),
    )
        .into_response()
}

/// A settled run in the family's reply shape, with its id and the node that answered.
fn run_reply(record: &RunRecord) -> Response {
    use autogate_proto as p;
    let Some(a) = &record.answer else {
        return run_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            p::INTERNAL_ERROR,
            "run settled without an answer",
        );
    };
    match a.outcome() {
        Ok(result) => Json(json!({
            "status": p::STATUS_COMPLETED,
            "run_id": record.run_id,
            "cluster_id": record.cluster_id,
            "service": record.service,
            "node_id": a.node_id,
            "result": result,
        }))
        .into_response(),
        Err(rpc) => {
            let data = rpc
                .data
                .clone()
                .unwrap_or_else(|| Value::from(rpc.message.as_str()));
            (
                run_failure_status(rpc.code),
                Json(json!({
                    "status": p::STATUS_ERROR,
                    "run_id": record.run_id,
                    "cluster_id": record.cluster_id,
                    "service": record.service,
                    "node_id": a.node_id,
                    "error": { "code": rpc.code, "message": rpc.message, "data": data },
                })),
            )
                .into_response()
        }
    }
}

/// `GET /clusters/{id}/runs/{run_id}`: one run's state, and its answer once it has one.
async fn get_run(
    State(app): State<AppState>,
    Path((id, run_id)): Path<(String, String)>,
) -> Response {
    if app.hub.registry().get(&id).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "cluster {} is not registered",
                crate::model::truncate(&id, 80)
            ),
        );
    }
    if run_id.len() > 64 || !run_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no run {} on cluster {id}",
                crate::model::truncate(&run_id, 64)
            ),
        );
    }
    match app.hub.runs().get(&id, &run_id).await {
        Ok(Some(record)) => {
            let mut v = serde_json::to_value(&record).unwrap_or(Value::Null);
            if let (Some(obj), Some(a)) = (v.as_object_mut(), &record.answer) {
                // The answer as the run's caller got it.
                let reply = match a.outcome() {
                    Ok(result) => {
                        json!({"status": autogate_proto::STATUS_COMPLETED, "node_id": a.node_id, "result": result})
                    }
                    Err(rpc) => {
                        json!({"status": autogate_proto::STATUS_ERROR, "node_id": a.node_id,
                        "error": {"code": rpc.code, "message": rpc.message, "data": rpc.data.unwrap_or(Value::Null)}})
                    }
                };
                obj.insert("answer".into(), reply);
            }
            Json(v).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no run {run_id} on cluster {id} (unknown, or older than manager.run_retention)"
            ),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn run_bodies_name_the_field_at_fault() {
        let body = Bytes::from_static(
            br#"{"params": {"a": 1}, "set": ["b=2"], "type": "executable", "timeout_ms": 1500}"#,
        );
        let (run, timeout) = run_body("svc", &body).unwrap();
        assert_eq!(run.name, "svc");
        assert_eq!(run.inputs["a"], 1);
        assert_eq!(run.set, ["b=2"]);
        assert_eq!(run.service_type.as_deref(), Some("executable"));
        assert_eq!(timeout, Duration::from_millis(1500));
        assert_eq!(run.timeout_ms, Some(1500));
        let (run, timeout) = run_body("svc", &Bytes::new()).unwrap();
        assert!(run.inputs.is_empty());
        assert_eq!(timeout, RUN_TIMEOUT);
        for (body, field) in [
            (r#"{"inputs": {}, "params": {}}"#, "params:"),
            (r#"{"inputs": 5}"#, "inputs:"),
            (r#"{"set": ["x"]}"#, "set[0]:"),
            (r#"{"set": "x=1"}"#, "set:"),
            (r#"{"action": "preview"}"#, "action:"),
            (r#"{"timeout_ms": 0}"#, "timeout_ms:"),
            (r#"{"colour": 1}"#, "colour: unknown field"),
            ("[]", "the body must be a JSON object"),
        ] {
            let err = run_body("svc", &Bytes::from(body)).unwrap_err();
            assert!(err.starts_with(field), "{body}: {err}");
        }
    }

    #[test]
    fn run_failures_map_to_http_statuses() {
        use autogate_proto as p;
        assert_eq!(run_failure_status(p::INVALID_PARAMS), 422);
        assert_eq!(run_failure_status(p::SERVICE_NOT_FOUND), 404);
        assert_eq!(run_failure_status(p::NOT_ALLOWED), 403);
        assert_eq!(run_failure_status(p::UNAVAILABLE), 503);
        assert_eq!(run_failure_status(p::TIMED_OUT), 504);
        assert_eq!(run_failure_status(p::RUN_FAILED), 502);
        assert_eq!(run_failure_status(p::METHOD_NOT_FOUND), 502);
    }

    #[test]
    fn certificates_round_trip_through_pem() {
        let c = autogate_tls::self_signed(
            autogate_tls::CertKind::Node,
            "node-1",
            &[],
            autogate_tls::Validity::days(1),
        )
        .unwrap();
        let with_junk = format!("junk before\n{}", c.cert_pem);
        let parsed = parse_certs("certificates", &json!([with_junk, c.cert_pem])).unwrap();
        assert_eq!(parsed.len(), 1, "duplicates collapse");
        let again = autogate_tls::parse_pem_certs(&parsed[0].pem).unwrap();
        assert_eq!(
            autogate_tls::fingerprint_sha256(&again[0]),
            parsed[0].fingerprint
        );
        assert_eq!(parsed[0].subject, "CN=node-1");
        let err = parse_certs("certificates", &json!(["x", "nope"])).unwrap_err();
        assert!(err.starts_with("certificates[0]: "), "{err}");
        let err = parse_certs("certificates", &json!([c.cert_pem, 5])).unwrap_err();
        assert!(err.starts_with("certificates[1]: "), "{err}");
    }
}
