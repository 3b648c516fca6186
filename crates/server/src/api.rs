//! The operator API of a core node: HTTP/JSON under `/api/v1`, plus `/healthz`, `/readyz` and
//! `/metrics` for supervisors and Prometheus.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::Node;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct ApiState {
    node: Node,
}

impl ApiState {
    pub fn new(node: Node) -> Self {
        ApiState { node }
    }
}

/// All routes of the core node API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/ha/status", get(ha_status))
        .route("/api/v1/ha/switchover", post(ha_switchover))
        .route("/api/v1/ha/pause", post(ha_pause))
        .route("/api/v1/ha/resume", post(ha_resume))
        .with_state(state)
}

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
