//! The operator API of a core node: HTTP/JSON under `/api/v1`, plus `/healthz`, `/readyz` and
//! `/metrics` for supervisors and Prometheus.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
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
